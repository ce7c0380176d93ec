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


def test_file_and_nested_mount_points_stay_in_the_container(under_tmp: Path) -> None:
    # Mount targets that the first test does not reach: a file (as a subPath or a custom
    # terminationMessagePath) in a missing folder below an existing host folder (/etc), a target
    # below a host volume (a hostPath: the host's own files, not the runtime's), and one below
    # one of the runtime's own volumes (made in that volume, inside the state folder).
    state, host_volume = under_tmp / "state", under_tmp / "host-volume"
    for folder in ("config", "data", "layers"):
        (state / folder).mkdir(parents=True)
    host_volume.mkdir()
    (state / "config" / "greeting").write_text("hello")
    (state / "settings.ini").write_text("[main]")
    (state / "termination").write_text("")
    tag = uuid.uuid4().hex[:8]
    etc, var = Path(f"/etc/phiops-shim-test-{tag}"), Path(f"/var/lib/phiops-shim-test-{tag}")
    top = Path(f"/phiops-shim-test-{tag}")
    mounts: list[dict[str, Any]] = [
        {"source": state / "settings.ini", "target": f"{etc}/settings.ini", "readOnly": True},
        {"source": state / "termination", "target": f"{var}/log/termination"},
        {"source": host_volume, "target": f"{top}/host", "ownVolume": False},
        {"source": state / "config", "target": f"{top}/host/nested/config", "readOnly": True},
        {"source": state / "data", "target": f"{top}/data", "readOnly": True},
        {"source": state / "config", "target": f"{top}/data/deeper/config", "readOnly": True},
    ]
    script = "; ".join(
        [
            "import pathlib as p",
            f"print(p.Path('{etc}/settings.ini').read_text())",
            f"print(p.Path('{top}/host/nested/config/greeting').read_text())",
            f"print(p.Path('{top}/data/deeper/config/greeting').read_text())",
            f"p.Path('{var}/log/termination').write_text('custom path')",
        ]
    )
    targets = [m["target"] for m in mounts]
    before = host_paths([*targets, host_volume / "nested"])
    try:
        done = run_shim(
            {
                "netns": None,
                "hostname": "shim-test",
                "mounts": [{"ownVolume": True, **m, "source": str(m["source"])} for m in mounts],
                "layers": str(state / "layers"),
                "imagePaths": IMAGE_PATHS,
                "workingDir": "/",
                "argv": [sys.executable, "-c", script],
                "env": {"PATH": os.environ["PATH"]},
            },
            under_tmp,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["[main]", "hello", "hello"]
        assert (state / "termination").read_text() == "custom path"
        # Nothing appeared on the host, not even in the host volume; the mount point below the
        # runtime's own volume was made in it (the state folder is the runtime's to write).
        assert host_paths(before) == before
        assert list(host_volume.iterdir()) == []
        assert (state / "data" / "deeper" / "config").is_dir()
    finally:
        remove_created(before)
