"""The node runtime's container entry (`shim`) on its own, without a control plane.

It mounts a pod's volumes in the container's private mount namespace; whatever mount points are
missing must be made there too, never on the host outside the runtime's state folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from phiops_devcluster.node_runtime.containers import IMAGE_PATHS

from tests.helpers import REPO, host_paths, remove_created

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the shim needs root (mount namespaces, overlays)"
)
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture
def under_tmp() -> Iterator[Path]:
    """A folder under /tmp, as when the checkout (and so the state folder) is cloned there."""
    path = Path(tempfile.mkdtemp(prefix="phiops-shim-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_shim(spec: dict[str, Any], folder: Path) -> subprocess.CompletedProcess[str]:
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return subprocess.run(
        [sys.executable, "-m", "phiops_devcluster.node_runtime.shim", str(spec_path)],
        env={**os.environ, "PYTHONPATH": str(REPO / "devtools")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_mount_points_are_made_in_the_container_only_under_a_volume_over_tmp(
    under_tmp: Path,
) -> None:
    # The pod's own /tmp hides every source (all under /tmp) before the later mounts are made,
    # and each of those needs a mount point the host does not have: the service-account token
    # (under /var/run -> /run), the termination file (/dev) and a new top-level folder (/).
    state, image = under_tmp / "state", under_tmp / "image"
    for folder in ("tmp", "token", "config", "layers"):
        (state / folder).mkdir(parents=True)
    (state / "token" / "token").write_text("a-token")
    (state / "config" / "greeting").write_text("hello")
    (state / "termination").write_text("")
    image.mkdir()
    (image / "entrypoint.txt").write_text("from the image")
    top = Path(f"/phiops-shim-test-{uuid.uuid4().hex[:8]}")
    mounts: list[dict[str, Any]] = [
        {"source": state / "tmp", "target": "/tmp"},
        {"source": state / "config", "target": f"{top}/config", "readOnly": True},
        {"source": state / "termination", "target": "/dev/termination-log"},
        {"source": state / "token", "target": SERVICE_ACCOUNT, "readOnly": True},
    ]
    script = "; ".join(
        [
            "import pathlib as p",
            f"print(p.Path('{SERVICE_ACCOUNT}/token').read_text())",
            f"print(p.Path('{top}/config/greeting').read_text())",
            f"print(p.Path('{image}/entrypoint.txt').read_text())",
            "p.Path('/tmp/scratch').write_text('x')",
            "p.Path('/dev/termination-log').write_text('written inside')",
            "p.Path('/dev/null').write_text('devices still work')",
        ]
    )
    before = host_paths([*(m["target"] for m in mounts), image / "entrypoint.txt"])
    try:
        done = run_shim(
            {
                "netns": None,
                "hostname": "shim-test",
                "mounts": [{**m, "source": str(m["source"]), "ownVolume": True} for m in mounts],
                "layers": str(state / "layers"),
                # As the runtime does: the Python environment stays visible too (under a
                # volume over /tmp when the checkout itself lives under /tmp).
                "imagePaths": [str(image), *IMAGE_PATHS],
                "workingDir": "/tmp",
                "argv": [sys.executable, "-c", script],
                "env": {"PATH": os.environ["PATH"]},
            },
            under_tmp,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["a-token", "hello", "from", "the", "image"]
        assert (state / "termination").read_text() == "written inside"
        assert (state / "tmp" / "scratch").read_text() == "x"
        # Nothing appeared or changed on the host at the mount targets or their parents.
        assert host_paths(before) == before
    finally:
        remove_created(before)
