"""The heap trim after bursts returns freed memory to the system (glibc), measured."""

from __future__ import annotations

from phiops_operator import allocator


def test_trim_gives_freed_heap_pages_back() -> None:
    allocator.trim()
    # 40 MB in malloc's heap (blocks over pymalloc's 512 bytes, under mmap's threshold),
    # freed but for one block in 64: the survivors pin the pages, as after a burst.
    blocks = [bytearray(2000) for _ in range(20_000)]
    kept = blocks[::64]
    del blocks
    freed = allocator.rss_mb()
    assert allocator.trim() is True
    trimmed = allocator.rss_mb()
    assert freed - trimmed > 10, (freed, trimmed)
    assert len(kept) == 313
