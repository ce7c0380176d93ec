"""`POST /v1/retrieve`: the knowledge base's closest chunks to a query, as the chat would
put them into its prompt (useful to debug answers and to build clients of one's own)."""

from __future__ import annotations

from aiohttp import web

from phiops_serve.errors import ApiError, unavailable
from phiops_serve.knowledge import KnowledgeBase, KnowledgeUnavailable
from phiops_serve.validation import json_body, parse_retrieve

KNOWLEDGE: web.AppKey[KnowledgeBase | None] = web.AppKey("knowledge")


async def retrieve(request: web.Request) -> web.Response:
    knowledge = request.app[KNOWLEDGE]
    if knowledge is None:
        raise ApiError(
            404,
            "this server has no knowledge base configured",
            code="knowledge_base_not_found",
        )
    ask = parse_retrieve(await json_body(request))
    try:
        hits = await knowledge.search(ask.query, ask.top_k, ask.hybrid, ask.score_threshold)
    except KnowledgeUnavailable as err:
        raise unavailable(str(err)) from None
    fields = ("source", "doc_id", "heading", "chunk_index", "text", "score")
    return web.json_response(
        {
            "object": "list",
            "data": [hit.model_dump(include=set(fields)) for hit in hits],
            "collection": knowledge.config.collection,
        }
    )
