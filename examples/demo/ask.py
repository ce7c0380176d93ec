"""Ask a PhiDeployment a question with the official `openai` client; print the answer of the
base model and of each adapter, with the citations. Usage: ask.py BASE_URL QUESTION"""

from __future__ import annotations

import sys

import openai


def main(base_url: str, question: str) -> int:
    client = openai.OpenAI(base_url=base_url, api_key="not-needed-in-cluster", max_retries=2)
    models = list(client.models.list())
    print("models:", ", ".join(f"{m.id} (parent {m.model_extra.get('parent')})" for m in models))
    print(f"question: {question}")
    for model in models:
        completion = client.chat.completions.create(
            model=model.id,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=24,
        )
        usage = completion.usage
        print(f"\n[{model.id}] {completion.choices[0].message.content!r}")
        if usage is not None:
            print(f"  tokens: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion")
        for citation in (completion.model_extra or {}).get("citations") or []:
            print(
                f"  [{citation['index']}] {citation['doc_id']} "
                f"(chunk {citation['chunk_index']}, score {citation['score']:.3f})"
            )
    print("\nstreaming the adapter's answer:", end=" ", flush=True)
    stream = client.chat.completions.create(
        model=models[-1].id,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=24,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
