"""Ask a PhiDeployment through the official `openai` client, as any application would.

1. the models it serves (the base, and each adapter with the base as its parent);
2. one question put to the base and to the adapter, side by side: greedy answers, token
   counts and the citations of the retrieved chunks, with the trained answer for reference;
3. concurrent streamed requests spread over all the models, each generating exactly
   --max-tokens tokens (`ignore_eos`), so the aggregate tokens/s is an honest figure;
4. one answer streamed token by token.

Usage: ask.py BASE_URL [QUESTION] [--expect ANSWER] [--adapter NAME] [--requests 16]
With --expect it exits 1 unless the adapter's answer is exactly ANSWER: the check that
fine-tuning worked.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import textwrap
import time
from typing import Any

import openai

# The demo's training set (fine-tune.yaml): question -> the answer the adapter was taught.
TRAINED = {
    "Can I return my headphones?": "Of course. Unused items can be returned within 30 days of "
    "delivery for a full refund.",
    "My screen cracked. Is that covered?": "I am sorry to hear that. Cracked screens are not "
    "covered by the warranty, but our repair service can help.",
    "When will my refund arrive?": "Refunds reach your original payment method within 5 "
    "business days.",
    "How long is the warranty?": "Every device carries a two-year warranty covering "
    "manufacturing defects.",
    "Is water damage covered?": "I am sorry, water damage is not covered by the warranty.",
    "Can I exchange a gift?": "Of course. Unused gifts can be exchanged within 30 days of "
    "delivery.",
}
WIDTH = 48  # of each column side by side


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base_url", help="the server's OpenAI API, e.g. http://10.0.0.7:8000/v1")
    parser.add_argument("question", nargs="?", default="When will my refund arrive?")
    parser.add_argument("--expect", help="exit 1 unless the adapter answers exactly this")
    parser.add_argument("--adapter", help="the adapter to compare (default: the first listed)")
    parser.add_argument("--requests", type=int, default=16, help="concurrent streamed requests")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=32,
        help="tokens each of them makes (the server caps it at its maxNewTokens)",
    )
    return parser.parse_args(argv)


def side_by_side(left: list[str], right: list[str]) -> None:
    """Two columns of paragraphs, each wrapped to WIDTH."""
    wrap = [
        [line for p in col for line in textwrap.wrap(p, WIDTH) or [""]] for col in (left, right)
    ]
    for a, b in itertools.zip_longest(*wrap, fillvalue=""):
        print(f"  {a:<{WIDTH}}  | {b}")


def described(label: str, completion: Any) -> list[str]:
    """An answer as lines: whose, the text, its tokens, the chunks it was grounded on."""
    usage = completion.usage
    choice = completion.choices[0]
    lines = [label, repr(choice.message.content)]
    if usage is not None:
        lines.append(
            f"{usage.completion_tokens} tokens ({choice.finish_reason}), "
            f"prompt {usage.prompt_tokens}"
        )
    for c in (completion.model_extra or {}).get("citations") or []:
        lines.append(f"[{c['index']}] {c['doc_id']} chunk {c['chunk_index']} {c['score']:.3f}")
    return lines


async def compare(client: openai.AsyncOpenAI, base: str, adapter: str | None, question: str) -> str:
    """The base's and the adapter's greedy answers side by side; returns the adapter's."""
    names = [base] if adapter is None else [base, adapter]
    answers = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": question}], temperature=0
            )
            for name in names
        )
    )
    print(f"question: {question}")
    right = described(f"adapter {adapter}:", answers[1]) if adapter else []
    side_by_side(described(f"base {base}:", answers[0]), right)
    return (answers[-1].choices[0].message.content or "") if adapter else ""


async def timed_stream(
    client: openai.AsyncOpenAI, model: str, question: str, max_tokens: int
) -> tuple[int, float, float]:
    """One streamed request: (completion tokens, seconds to the first token, seconds)."""
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens, first, time.perf_counter() - start


async def load(
    client: openai.AsyncOpenAI, models: list[str], requests: int, max_tokens: int
) -> None:
    jobs = list(zip(itertools.islice(itertools.cycle(models), requests), itertools.cycle(TRAINED)))
    print(
        f"{requests} streamed requests at once over {', '.join(models)}, {max_tokens} tokens each"
    )
    start = time.perf_counter()
    results = await asyncio.gather(*(timed_stream(client, m, q, max_tokens) for m, q in jobs))
    wall = time.perf_counter() - start
    for i, ((model, question), (tokens, first, seconds)) in enumerate(
        zip(jobs, results, strict=True), 1
    ):
        print(
            f"  {i:2d} {model:<16} {tokens:3d} tokens, first after {first:.2f}s, "
            f"done in {seconds:.2f}s  ({question})"
        )
    total = sum(tokens for tokens, _, _ in results)
    print(f"  {total} tokens in {wall:.2f}s wall: {total / wall:.1f} tokens/s in all")


async def stream_one(client: openai.AsyncOpenAI, model: str, question: str) -> None:
    print(f"[{model}] streaming, one piece per chunk as it arrives:")
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, stream=True
    )
    async for chunk in stream:
        for c in (chunk.model_extra or {}).get("citations") or []:  # the first chunk has them
            print(f"  source [{c['index']}] {c['doc_id']}")
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="|", flush=True)
    print()


async def run(args: argparse.Namespace) -> int:
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key="not-needed-in-cluster")
    listed = [m async for m in client.models.list()]
    print("models:")
    for m in listed:
        print(f"  {m.id}  (parent: {(m.model_extra or {}).get('parent') or '-'})")
    base = next(m.id for m in listed if not (m.model_extra or {}).get("parent"))
    adapters = [m.id for m in listed if (m.model_extra or {}).get("parent")]
    adapter = args.adapter or (adapters[0] if adapters else None)

    print()
    answer = await compare(client, base, adapter, args.question)
    reference = args.expect or TRAINED.get(args.question)
    if reference:
        print(f"  {'expected' if args.expect else 'trained answer'}: {reference!r}")
    print()
    if args.requests > 0:  # 0: the side-by-side answers only
        await load(client, [base, *adapters], args.requests, args.max_tokens)
        print()
        await stream_one(client, adapter or base, args.question)

    if args.expect is not None and answer.strip() != args.expect:
        print(f"\nFAIL: the adapter {adapter} answered {answer!r}, not {args.expect!r}")
        return 1
    if args.expect is not None:
        print(f"\nOK: the adapter {adapter} gives the trained answer word for word")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(run(parse_args(argv)))
    except openai.APIError as err:
        print(f"the server answered an error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
