"""Stream the documents of every source as raw bytes: local folders, http urls, git repos.

A document that cannot be read becomes a `SourceDocument` with an `error` (reported, never
fatal); a source that cannot be reached at all (missing folder, failed clone) raises
`SourceNotFound`. Only documents of this pod's shard are yielded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from phiops_workload.knowledge import ShardConfig, SourceConfig

log = logging.getLogger(__name__)

# A document larger than this is skipped and reported: it is almost certainly not prose.
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
HTTP_TIMEOUT_SECONDS = 30.0
GIT_TIMEOUT_SECONDS = 600.0


class SourceNotFound(Exception):
    """A configured source is missing or unreachable as a whole."""


@dataclass(frozen=True)
class SourceDocument:
    doc_id: str
    """`<source>/<relative path or url>`: stable across syncs, the key of incremental sync."""
    source: str
    name: str
    """Path (or url) used for format detection by extension."""
    data: bytes = b""
    content_type: str | None = None
    error: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def shard_of(doc_id: str, count: int) -> int:
    """Stable across processes and Python versions (unlike `hash()`)."""
    digest = hashlib.sha256(doc_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(1, count)


def in_shard(doc_id: str, shard: ShardConfig) -> bool:
    return shard.count <= 1 or shard_of(doc_id, shard.count) == shard.index


def check_sources(sources: list[SourceConfig]) -> None:
    """Fail fast, before anything is written, when a mounted source is missing."""
    for source in sources:
        if source.kind in ("configMap", "persistentVolumeClaim"):
            if not source.local_path:
                raise SourceNotFound(f"source {source.name!r} has no local path to read")
            if not Path(source.local_path).is_dir():
                raise SourceNotFound(
                    f"source {source.name!r}: folder {source.local_path} does not exist "
                    f"(is the {source.kind} mounted?)"
                )
        elif source.kind == "git" and not source.git_url:
            raise SourceNotFound(f"source {source.name!r} has no git url")


def iter_documents(sources: list[SourceConfig], shard: ShardConfig) -> Iterator[SourceDocument]:
    for source in sources:
        if source.kind in ("configMap", "persistentVolumeClaim"):
            assert source.local_path is not None  # checked by check_sources
            yield from _walk(source, Path(source.local_path), shard)
        elif source.kind == "http":
            yield from _fetch_urls(source, shard)
        else:
            yield from _clone_and_walk(source, shard)


# -- local folders ----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`**/` spans any number of folders, `*` and `?` stay within one path segment."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(relative: str, include: list[str], exclude: list[str]) -> bool:
    def any_match(patterns: list[str]) -> bool:
        return any(_glob_regex(p.lstrip("/")).match(relative) for p in patterns)

    return any_match(include) and not any_match(exclude)


def _walk(source: SourceConfig, root: Path, shard: ShardConfig) -> Iterator[SourceDocument]:
    for relative, path in _list_files(root):
        if not matches(relative, source.include, source.exclude):
            continue
        doc_id = f"{source.name}/{relative}"
        if not in_shard(doc_id, shard):
            continue
        yield _read_file(source.name, doc_id, relative, path)


def _list_files(root: Path) -> list[tuple[str, Path]]:
    """Sorted (relative posix path, path) of regular files below root.

    ConfigMap volumes hold `..data` and `..<timestamp>` folders beside symlinks to them:
    anything starting with `..` is kubelet bookkeeping, not a document. Symlinked files
    are followed (that is how ConfigMap keys appear), symlinked folders are not (no loops).
    """
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".."))
        for name in files:
            if name.startswith(".."):
                continue
            path = Path(folder) / name
            if path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _read_file(source: str, doc_id: str, relative: str, path: Path) -> SourceDocument:
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            error = f"{size} bytes is over the {MAX_DOCUMENT_BYTES} byte limit"
            return SourceDocument(doc_id, source, relative, error=error)
        return SourceDocument(doc_id, source, relative, data=path.read_bytes())
    except OSError as err:
        return SourceDocument(doc_id, source, relative, error=f"cannot read: {err}")


# -- http -------------------------------------------------------------------------------------


def _fetch_urls(source: SourceConfig, shard: ShardConfig) -> Iterator[SourceDocument]:
    for url in source.urls:
        doc_id = f"{source.name}/{url}"
        if in_shard(doc_id, shard):
            yield fetch_url(source.name, doc_id, url)


def fetch_url(source: str, doc_id: str, url: str) -> SourceDocument:
    name = urllib.parse.urlsplit(url).path or url
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        return SourceDocument(doc_id, source, name, error=f"unsupported url scheme {scheme!r}")
    request = urllib.request.Request(url, headers={"User-Agent": "phiops-embed"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            data = response.read(MAX_DOCUMENT_BYTES + 1)
            content_type = response.headers.get("Content-Type")
    except (urllib.error.URLError, OSError, ValueError) as err:
        # One unreachable page must not stop the others; its stored chunks are kept.
        return SourceDocument(doc_id, source, name, error=f"cannot fetch {url}: {err}")
    if len(data) > MAX_DOCUMENT_BYTES:
        error = f"{url} is over the {MAX_DOCUMENT_BYTES} byte limit"
        return SourceDocument(doc_id, source, name, error=error)
    return SourceDocument(doc_id, source, name, data=data, content_type=content_type)


# -- git --------------------------------------------------------------------------------------


def _clone_and_walk(source: SourceConfig, shard: ShardConfig) -> Iterator[SourceDocument]:
    assert source.git_url is not None
    with tempfile.TemporaryDirectory(prefix="phiops-git-") as tmp:
        checkout = Path(tmp) / "repo"
        clone(source.git_url, source.git_ref, checkout)
        root = (checkout / source.git_subpath).resolve()
        if not root.is_relative_to(checkout.resolve()) or not root.is_dir():
            raise SourceNotFound(
                f"source {source.name!r}: {source.git_subpath!r} is not a folder of "
                f"{source.git_url} at {source.git_ref}"
            )
        # The walk excludes .git: its objects are not documents.
        spec = source.model_copy(update={"exclude": [*source.exclude, ".git/**"]})
        yield from _walk(spec, root, shard)


def clone(url: str, ref: str, target: Path) -> None:
    """A shallow fetch of one ref; works for branches, tags and (where served) commit ids."""
    target.mkdir(parents=True)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    steps = [
        ["git", "init", "--quiet"],
        ["git", "remote", "add", "origin", url],
        ["git", "fetch", "--quiet", "--depth", "1", "origin", ref],
        ["git", "checkout", "--quiet", "FETCH_HEAD"],
    ]
    for step in steps:
        try:
            subprocess.run(
                step,
                cwd=target,
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_SECONDS,
            )
        except subprocess.CalledProcessError as err:
            raise SourceNotFound(
                f"git {step[1]} of {url} at {ref!r} failed: {err.stderr.strip()[-500:]}"
            ) from err
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SourceNotFound(f"git {step[1]} of {url} at {ref!r} failed: {err}") from err
    log.info("fetched %s at %s", url, ref)
