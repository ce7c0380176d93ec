"""Answers grounded in a real knowledge base (milvus-lite + all-MiniLM-L6-v2): citations,
/v1/retrieve, and the retrieval settings of serve.json, all through the `openai` client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from phiops_serve.knowledge import KnowledgeBase
from phiops_serve.rag import Augmenter
from phiops_workload.serving import RerankConfig, ServeConfig
from transformers import AutoTokenizer

from tests.unit.embed.crossencoder import make_cross_encoder, reference_scores

from .conftest import (
    ADAPTER,
    BASE,
    SYSTEM,
    KnowledgeStore,
    TinyModels,
    client_for,
    get_json,
    retrieval_config,
    running,
    wait_until,
)
from .test_metrics import scrape, value

SHIPPING = "docs/policies/shipping.md"
QUESTION = "Which carrier delivers heavy parcels and tents?"
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
CITATION_KEYS = {"index", "source", "doc_id", "heading", "chunk_index", "score"}
# Reciprocal-rank fusion of two rankings scores at most 2/(60+1): hybrid hits are that small.
RRF_MAX = 2 / 61


@pytest.fixture(scope="module")
def rag(server: str) -> OpenAI:
    """The session server answers from the handbook (hybrid), under SYSTEM and TEMPLATE."""
    return client_for(server)


def retrieve(client: OpenAI, **body: Any) -> dict[str, Any]:
    answer: dict[str, Any] = client.post("/retrieve", body=body, cast_to=object)
    return answer


def test_a_completion_cites_the_document_that_answers(rag: OpenAI) -> None:
    completion = rag.chat.completions.create(model=ADAPTER, messages=ASK, max_tokens=4)
    cited = (completion.model_extra or {})["citations"]
    assert cited[0]["doc_id"] == SHIPPING
    assert [c["index"] for c in cited] == list(range(1, len(cited) + 1))
    assert 1 <= len(cited) <= 3  # retrieval.top_k
    assert all(set(c) == CITATION_KEYS for c in cited)
    assert cited[0]["source"] == "docs" and cited[0]["heading"]
    # The same chunks as /v1/retrieve finds, in the same order.
    found = retrieve(rag, query=QUESTION)["data"]
    assert [(c["doc_id"], c["chunk_index"]) for c in cited] == [
        (h["doc_id"], h["chunk_index"]) for h in found
    ]


def test_the_first_streamed_chunk_carries_the_citations(rag: OpenAI) -> None:
    whole = rag.chat.completions.create(model=BASE, messages=ASK, max_tokens=4, temperature=0)
    chunks = list(
        rag.chat.completions.create(
            model=BASE, messages=ASK, max_tokens=4, temperature=0, stream=True
        )
    )
    first = (chunks[0].model_extra or {}).get("citations")
    assert first == (whole.model_extra or {})["citations"]
    assert first[0]["doc_id"] == SHIPPING
    assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_retrieve_returns_the_closest_chunks(rag: OpenAI) -> None:
    answer = retrieve(rag, query=QUESTION)
    assert answer["object"] == "list"
    assert answer["collection"]
    hits = answer["data"]
    assert hits[0]["doc_id"] == SHIPPING
    assert "DHL Express" in hits[0]["text"]
    assert set(hits[0]) == {"source", "doc_id", "heading", "chunk_index", "text", "score"}
    assert len(hits) == 3  # retrieval.top_k
    assert all(0 < h["score"] <= RRF_MAX for h in hits)  # retrieval.hybrid: fused ranks


def test_retrieve_parameters_override_the_configuration(rag: OpenAI) -> None:
    assert len(retrieve(rag, query=QUESTION, top_k=1)["data"]) == 1
    dense = retrieve(rag, query=QUESTION, hybrid=False, top_k=5)["data"]
    assert dense[0]["doc_id"] == SHIPPING
    assert dense[0]["score"] > RRF_MAX  # cosine similarity, not a fused rank
    scores = [h["score"] for h in dense]
    assert scores == sorted(scores, reverse=True)
    threshold = (scores[0] + scores[1]) / 2
    kept = retrieve(rag, query=QUESTION, hybrid=False, top_k=5, score_threshold=threshold)
    assert [h["score"] for h in kept["data"]] == scores[:1]


@pytest.mark.parametrize(
    ("body", "param"),
    [({"top_k": 0}, "top_k"), ({"query": ""}, "query"), ({"hybrid": "yes"}, "hybrid")],
)
def test_retrieve_refuses_bad_input_naming_it(
    rag: OpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        retrieve(rag, **{"query": QUESTION, **body})
    assert caught.value.param == param


def test_retrieve_without_a_knowledge_base_is_404(serve_config: ServeConfig) -> None:
    with running(serve_config) as url, pytest.raises(openai.NotFoundError) as caught:
        retrieve(client_for(url), query=QUESTION)
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    assert "knowledge base" in body["message"]


def prompt_tokens(tokenizer: Any, hits: list[dict[str, Any]]) -> int:
    """Tokens of the session server's prompt for QUESTION with `hits` as its context."""
    context = "\n\n".join(
        f"[{i}] {h['doc_id']} ({h['heading']})\n{h['text']}" for i, h in enumerate(hits, 1)
    )
    system = f"{SYSTEM}\n\nSources:\n{context}\nEnd of sources."
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_the_prompt_is_the_system_prompt_then_the_template_with_numbered_chunks(
    rag: OpenAI, tiny_models: TinyModels
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.base)
    expected = prompt_tokens(tokenizer, retrieve(rag, query=QUESTION)["data"])
    completion = rag.chat.completions.create(model=BASE, messages=ASK, max_tokens=1)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected
    # The caller's own system message replaces the configured one; the context stays.
    mine: list[ChatCompletionMessageParam] = [{"role": "system", "content": "Be brief."}, *ASK]
    own = rag.chat.completions.create(model=BASE, messages=mine, max_tokens=1)
    assert own.usage is not None
    shorter = len(tokenizer(SYSTEM)["input_ids"]) - len(tokenizer("Be brief.")["input_ids"])
    assert own.usage.prompt_tokens == expected - shorter


def test_the_lowest_ranked_chunks_give_way_to_the_answers_max_tokens(
    rag: OpenAI, server: str, tiny_models: TinyModels, serve_config: ServeConfig
) -> None:
    hits = retrieve(rag, query=QUESTION)["data"]
    order = [(h["doc_id"], h["chunk_index"]) for h in hits]
    assert len(order) == 3
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.base)
    sizes = [prompt_tokens(tokenizer, hits[:n]) for n in range(4)]
    limit = serve_config.engine.max_model_len
    assert limit is not None and limit - sizes[3] <= serve_config.max_new_tokens

    def cited(max_tokens: int) -> list[tuple[str, int]]:
        """The citations of a streamed answer, read from its first chunk; closing the stream
        then stops the generation."""
        stream = rag.chat.completions.create(
            model=BASE, messages=ASK, max_tokens=max_tokens, stream=True
        )
        with stream:
            first = next(iter(stream))
        return [(c["doc_id"], c["chunk_index"]) for c in (first.model_extra or {})["citations"]]

    before = scrape(server)
    assert cited(limit - sizes[3]) == order
    assert cited(limit - sizes[3] + 1) == order[:2]
    room_for_one = min(limit - sizes[1], serve_config.max_new_tokens)  # which caps max_tokens
    assert room_for_one > limit - sizes[2]
    assert cited(room_for_one) == order[:1]
    name = "phiops_serve_context_chunks_dropped_total"
    assert value(scrape(server), name, model=BASE) - value(before, name, model=BASE) == 3


async def test_without_citations_the_answer_is_grounded_but_cites_nothing(
    serve_config: ServeConfig, knowledge_store: KnowledgeStore
) -> None:
    retrieval = retrieval_config(knowledge_store, citations=False, top_k=2, hybrid=False)
    config = serve_config.model_copy(update={"retrieval": retrieval})
    knowledge = KnowledgeBase(retrieval, retry_seconds=0.2)
    await knowledge.open()
    try:
        question = [{"role": "user", "content": QUESTION}]
        grounding = await Augmenter(config, knowledge).prepare(question)
    finally:
        knowledge.close()
    assert grounding.citations is None
    assert SHIPPING in grounding.messages[0]["content"]  # the context is still there
    # Dense search (hybrid off): cosine scores; retrieval still grounds the answer.
    with running(config) as url:
        wait_until(lambda: get_json(f"{url}/readyz")[1]["retrieval"]["ready"], 60, "retrieval")
        hits = retrieve(client_for(url), query=QUESTION)["data"]
    assert len(hits) == 2 and hits[0]["score"] > RRF_MAX


async def test_the_configured_reranker_orders_what_the_server_retrieves(
    knowledge_store: KnowledgeStore, tmp_path: Path
) -> None:
    """serve.json's retrieval.rerank loads the CrossEncoder and its scores order the hits
    (a tiny random one made here: its order, not its sense, is what is checked)."""
    model = make_cross_encoder(tmp_path / "cross-encoder", seed=1)
    plain = retrieval_config(knowledge_store, top_k=6, neighbors=0)
    ranked = retrieval_config(
        knowledge_store,
        top_k=2,
        neighbors=0,
        rerank=RerankConfig(model=str(model), candidates=6),
    )
    before = KnowledgeBase(plain, retry_seconds=0.2)
    after = KnowledgeBase(ranked, retry_seconds=0.2)
    await before.open()
    await after.open()
    try:
        candidates = await before.search(QUESTION)
        hits = await after.search(QUESTION)
    finally:
        before.close()
        after.close()
    logits = reference_scores(model, QUESTION, [h.text for h in candidates])
    best = sorted(range(len(candidates)), key=lambda i: -logits[i])[:2]
    assert best != [0, 1]  # the model disagrees with the search's own order here
    assert [(h.doc_id, h.chunk_index) for h in hits] == [
        (candidates[i].doc_id, candidates[i].chunk_index) for i in best
    ]
