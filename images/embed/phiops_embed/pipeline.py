"""Embedding on an accelerator without waiting for the tokenizer.

`SentenceTransformer.encode` tokenises each batch on the calling thread and then waits for
the model's result before it tokenises the next: on an H200, MiniLM spent most of its time
tokenising (1,414 chunks/s in float32, fewer in float16). Here batches of similar length
(padding wasted on one long text is compute lost) are tokenised by a thread ahead of the
model, the fast tokenizer releasing the GIL, while the accelerator runs the batch before;
results stay on the device until the end, so nothing waits for a copy between batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# Batches tokenised ahead of the one the model runs: enough to hide a slow batch.
AHEAD = 4
# One thread: the fast tokenizer spreads a batch over the cores itself, and two threads
# calling one tokenizer race on its padding settings ("Already borrowed").
TOKENIZER_THREADS = 1


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of `texts` in batches of `batch_size`, longest first (characters stand in for
    tokens, as in sentence-transformers): each batch pads to little more than its own texts,
    and a batch too big for memory fails at once, not at the end."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def embed_ahead(
    model: Any, texts: Sequence[str], batch_size: int, device: str
) -> npt.NDArray[np.float32]:
    """Unit vectors of `texts` in their order, from a SentenceTransformer `model` already on
    `device` (in the dtype it should compute in)."""
    import numpy as np
    import torch

    batches = length_sorted_batches(texts, batch_size)
    if not batches:
        return np.zeros((0, model.get_embedding_dimension() or 0), dtype=np.float32)
    pin = device.startswith("cuda")
    # sentence-transformers 6 renamed `tokenize` to `preprocess` (the serve image allows 5).
    tokenize = getattr(model, "preprocess", None) or model.tokenize

    def features(batch: list[int]) -> dict[str, Any]:
        tokens: dict[str, Any] = tokenize([texts[i] for i in batch])
        if pin:
            tokens = {
                k: tensor.pin_memory() if torch.is_tensor(tensor) else tensor
                for k, tensor in tokens.items()
            }
        return tokens

    pending: deque[tuple[list[int], Future[dict[str, Any]]]] = deque()
    order: list[int] = []
    outputs = []
    with ThreadPoolExecutor(TOKENIZER_THREADS) as pool, torch.inference_mode():
        queued = iter(batches)
        for batch in queued:
            pending.append((batch, pool.submit(features, batch)))
            if len(pending) > AHEAD:
                break
        while pending:
            batch, ready = pending.popleft()
            following = next(queued, None)
            if following is not None:
                pending.append((following, pool.submit(features, following)))
            inputs = {
                k: tensor.to(device, non_blocking=pin) if torch.is_tensor(tensor) else tensor
                for k, tensor in ready.result().items()
            }
            vectors = model(inputs)["sentence_embedding"].float()
            outputs.append(torch.nn.functional.normalize(vectors, dim=1))
            order.extend(batch)
        stacked = torch.cat(outputs).cpu().numpy()
    result = np.empty_like(stacked)
    result[np.asarray(order)] = stacked
    return result
