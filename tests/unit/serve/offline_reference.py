"""vLLM's offline engine (`vllm.LLM`) answering prompts one at a time: the reference the
server's answers are compared with. Run as a script (vLLM spawns its engine process):

    python offline_reference.py REQUEST.json ANSWER.json  (writes {"texts": [...]})

REQUEST: {"model", "adapters": {name: path}, "prompts": [{"model", "ids"}], "max_tokens",
"max_model_len"}; greedy, ignore_eos, float32, eager, as the test server runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(request_file: str, answer_file: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    request = json.loads(Path(request_file).read_text())
    adapters = request["adapters"]
    llm = LLM(
        model=request["model"],
        dtype="float32",
        enforce_eager=True,
        max_model_len=request["max_model_len"],
        enable_lora=True,
        max_loras=max(1, len(adapters)),
        max_lora_rank=16,
    )
    loras = {name: LoRARequest(name, i, path) for i, (name, path) in enumerate(adapters.items(), 1)}
    params = SamplingParams(max_tokens=request["max_tokens"], temperature=0.0, ignore_eos=True)
    texts = []
    for prompt in request["prompts"]:  # one at a time: no batch to share, no slot to mix
        out = llm.generate(
            [TokensPrompt(prompt_token_ids=prompt["ids"])],
            params,
            lora_request=loras.get(prompt["model"]),
            use_tqdm=False,
        )
        texts.append(out[0].outputs[0].text)
    Path(answer_file).write_text(json.dumps({"texts": texts}))  # vLLM logs to stdout


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
