"""Pods of phiops's images run the code of the checkout that holds the node runtime, even when
the editable install points at another checkout (a git worktree beside the main one)."""

from __future__ import annotations

from pathlib import Path

from phiops_devcluster.node_runtime.containers import IMAGE_ENV, PHIOPS_ENTRYPOINTS

from tests.helpers import REPO


def test_every_entrypoint_is_found_first_in_this_checkout() -> None:
    folders = [Path(p) for p in IMAGE_ENV["PYTHONPATH"].split(":")]
    assert folders and all(folder.is_relative_to(REPO) for folder in folders)
    for module in PHIOPS_ENTRYPOINTS.values():
        assert any((folder / module / "__main__.py").is_file() for folder in folders), module
    assert any((folder / "phiops_workload").is_dir() for folder in folders)  # the contracts
