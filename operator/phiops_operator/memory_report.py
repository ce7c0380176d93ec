"""Where the operator's memory goes: an opt-in report for profiling, off in production.

With `PHIOPS_MEMORY_REPORT=<file>` set, SIGUSR1 appends a report to that file: RSS, Python's
own allocated blocks, the deep size of each structure that grows with the resources (Kopf's
per-object memories, the controller's bodies, the object store, the child cache, the queue,
metrics series), the commonest object types, and how much RSS `malloc_trim` gave back. With
Python's `PYTHONTRACEMALLOC=<frames>` set too, also the biggest allocation sites (slow: for
small runs only). `benchmarks/bench_operator.py --memory-report FILE` sets the first and
sends the signal before and after its resources.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import os
import signal
import sys
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from phiops_operator.allocator import rss_mb, trim

ENV = "PHIOPS_MEMORY_REPORT"
TOP = 25
# Followed when sizing; anything else (modules, classes, functions, clients) is not ours.
LEAVES = (str, bytes, int, float, bool, type(None))
CONTAINERS = (dict, list, tuple, set, frozenset)


def install() -> None:
    """Answer SIGUSR1 with a report when the environment asks for one; else do nothing."""
    target = os.environ.get(ENV)
    if target:
        signal.signal(signal.SIGUSR1, lambda *_: write(Path(target)))


def deep_size(roots: Iterable[Any], seen: set[int]) -> int:
    """Bytes of `roots` and what they hold: containers, strings, numbers and the fields of
    phiops's and Kopf's own objects; each object counted once across calls (`seen`)."""
    total, stack = 0, list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, CONTAINERS):
            stack.extend(obj)
        elif not isinstance(obj, LEAVES):
            module = type(obj).__module__ or ""
            if module.startswith(("kopf", "phiops_operator")):
                if dataclasses.is_dataclass(obj):
                    stack.extend(getattr(obj, f.name, None) for f in dataclasses.fields(obj))
                elif hasattr(obj, "__dict__"):
                    stack.append(vars(obj))
    return total


def _instances(qualname: str) -> list[Any]:
    return [o for o in gc.get_objects() if type(o).__qualname__ == qualname]


def structures() -> list[tuple[str, int, int]]:
    """(what, how many, bytes) for the structures that grow with the resources."""
    from prometheus_client import REGISTRY

    controllers = _instances("Controller")
    # Shared objects every per-object memo refers to: counted under nobody.
    seen: set[int] = set()
    for controller in controllers:
        seen.update(id(v) for v in controller.memo.values())
        seen.update((id(controller.memo), id(controller), id(controller.settings)))
    found: list[tuple[str, int, int]] = []

    def add(what: str, roots: list[Any], count: int | None = None) -> None:
        found.append((what, len(roots) if count is None else count, deep_size(roots, seen)))

    for c in controllers:
        add("controller: resource bodies", list(c.bodies.values()))
        add("controller: per-resource memos", list(c.memos.values()))
        add("controller: per-resource loggers", list(c.loggers.values()))
        add("controller: input references", [c._inputs, c._users], len(c._inputs))
        add("controller: work queue", [vars(c.queue)], len(c.queue._keys))
        if c.objects is not None:
            add("object store", [c.objects._objects, c.objects._deleted], len(c.objects))
        add("child cache", [c.kube.children._entries], len(c.kube.children))
    add("kopf: per-object memories", _instances("ResourceMemory"))
    add("kopf: per-object streams", _instances("Stream"))
    series = [m for metric in REGISTRY.collect() for m in metric.samples]
    add("metrics samples", series)
    tasks = [t for t in gc.get_objects() if type(t).__name__ == "Task"]
    found.append(("asyncio tasks", len(tasks), 0))
    return found


def report() -> str:
    gc.collect()
    out = [
        f"== memory report at {time.strftime('%H:%M:%S')}: RSS {rss_mb():.1f} MB,"
        f" Python blocks {sys.getallocatedblocks()}"
    ]
    for what, count, size in structures():
        out.append(f"{size / 2**20:8.2f} MB {count:8d}  {what}")
    counts: collections.Counter[str] = collections.Counter(
        type(obj).__qualname__ for obj in gc.get_objects()
    )
    out.append("gc objects by type: " + ", ".join(f"{t} {n}" for t, n in counts.most_common(20)))
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out.append(f"traced now {current / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB; by line:")
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:TOP]:
            out.append(f"{stat.size / 2**20:8.2f} MB {stat.count:8d}  {stat.traceback[0]}")
    before = rss_mb()
    trim()
    out.append(f"malloc_trim: RSS {before:.1f} -> {rss_mb():.1f} MB")
    return "\n".join(out) + "\n"


def write(path: Path) -> None:
    with path.open("a") as out:
        out.write(report())
