"""Sources: folders (ConfigMap layout included), http, git; shards partition the documents."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from phiops_embed.sources import (
    SourceNotFound,
    check_sources,
    iter_documents,
    matches,
    shard_of,
)
from phiops_workload.knowledge import ShardConfig, SourceConfig

ALL = ShardConfig()


def test_globs() -> None:
    assert matches("a/b/c.md", ["**/*.md"], [])
    assert matches("c.md", ["**/*.md"], [])
    assert not matches("a/c.md", ["*.md"], [])
    assert not matches("drafts/x.md", ["**/*"], ["drafts/**"])
    assert matches("x.pdf", ["**/*.md", "*.pdf"], ["**/*.md"])


def test_folder_walk_with_globs(docs: Path) -> None:
    source = SourceConfig(
        name="docs",
        kind="persistentVolumeClaim",
        local_path=str(docs),
        include=["**/*.md", "**/*.html"],
        exclude=["policies/shipping.md"],
    )
    ids = [d.doc_id for d in iter_documents([source], ALL)]
    assert ids == ["docs/policies/refunds.md", "docs/security.html", "docs/warranty.md"]


def test_configmap_volume_layout(tmp_path: Path) -> None:
    """Kubelet's ConfigMap volume: keys are symlinks into a `..data` -> `..<ts>` folder."""
    mount = tmp_path / "cm"
    stamp = mount / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    (stamp / "faq.md").write_text("# FAQ\n\nAnswers.")
    (stamp / "intro.txt").write_text("Hello.")
    os.symlink(stamp.name, mount / "..data")
    for key in ("faq.md", "intro.txt"):
        os.symlink(f"..data/{key}", mount / key)
    source = SourceConfig(name="cm", kind="configMap", local_path=str(mount))
    docs = list(iter_documents([source], ALL))
    assert [(d.doc_id, d.data) for d in docs] == [
        ("cm/faq.md", b"# FAQ\n\nAnswers."),
        ("cm/intro.txt", b"Hello."),
    ]


def test_missing_folder_is_source_not_found(tmp_path: Path) -> None:
    source = SourceConfig(name="gone", kind="configMap", local_path=str(tmp_path / "nope"))
    with pytest.raises(SourceNotFound, match="gone"):
        check_sources([source])


def test_shards_partition_the_documents_stably() -> None:
    ids = [f"docs/file-{i}.md" for i in range(300)]
    for count in (2, 3, 5):
        groups = [{d for d in ids if shard_of(d, count) == i} for i in range(count)]
        assert sum(len(g) for g in groups) == len(ids)
        assert set().union(*groups) == set(ids)
        assert all(len(g) > len(ids) / count / 2 for g in groups)  # roughly even
    # Stable across processes (each pod is one): a sha256, not Python's salted hash().
    here = [shard_of(d, 4) for d in ids[:20]]
    script = "from phiops_embed.sources import shard_of\n" + (
        f"print([shard_of(d, 4) for d in {ids[:20]!r}])"
    )
    for seed in ("1", "2"):
        there = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert there.strip() == repr(here)


def test_shard_selection_in_iteration(docs: Path) -> None:
    source = SourceConfig(name="docs", kind="persistentVolumeClaim", local_path=str(docs))
    every = {d.doc_id for d in iter_documents([source], ALL)}
    parts = [
        {d.doc_id for d in iter_documents([source], ShardConfig(index=i, count=2))}
        for i in range(2)
    ]
    assert parts[0] | parts[1] == every and not parts[0] & parts[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/page":
            body = b"<html><body><h1>Hours</h1><p>Open at ten.</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
        else:
            body = b"no"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_http_urls_are_fetched_and_failures_reported(http_base: str) -> None:
    source = SourceConfig(
        name="web", kind="http", urls=[f"{http_base}/page", f"{http_base}/missing"]
    )
    page, missing = iter_documents([source], ALL)
    assert page.doc_id == f"web/{http_base}/page"
    assert page.content_type == "text/html; charset=utf-8" and b"Open at ten" in page.data
    assert missing.error is not None and "404" in missing.error


def test_git_source_at_a_ref_and_subpath(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "guide.md").write_text("# Guide\n\nRelease notes.")
    (repo / "code.py").write_text("print(1)")

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "--quiet", "--initial-branch", "main")
    git("add", ".")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "--quiet", "-m", "x")
    git("tag", "v1")
    source = SourceConfig(
        name="git", kind="git", git_url=repo.as_uri(), git_ref="v1", git_subpath="docs"
    )
    docs = list(iter_documents([source], ALL))
    assert [(d.doc_id, d.data) for d in docs] == [("git/guide.md", b"# Guide\n\nRelease notes.")]
    missing = source.model_copy(update={"git_ref": "no-such-branch"})
    with pytest.raises(SourceNotFound, match="no-such-branch"):
        list(iter_documents([missing], ALL))
