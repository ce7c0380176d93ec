"""Container entry: `python -m phiops_devcluster.node_runtime.shim SPEC.json`.

Joins the pod's network namespace, enters a new UTS namespace (hostname = pod name) and a new
PRIVATE mount namespace (as `unshare --mount --propagation private`), bind-mounts the volumes at
their mountPaths there, then execs the container's command. The host's mounts are untouched;
only an empty mount-point file or directory is created on the host when a mountPath is missing.
The process keeps its PID: the runtime's child *is* the container's main process.

Exit codes of its own: 128 when the namespaces or mounts cannot be set up, 127 when the command
cannot be executed (as container runtimes report them).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(
        _libc.mount(source.encode() if source else None, target.encode(), None, flags, None),
        f"mount {source} on {target}",
    )


def setup(spec: dict[str, Any]) -> None:
    if spec.get("netns"):
        with open(spec["netns"]) as netns:
            _check(_libc.setns(netns.fileno(), CLONE_NEWNET), "setns(net)")
        hostname = spec["hostname"].encode()
        _check(_libc.unshare(CLONE_NEWUTS), "unshare(uts)")
        _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    _check(_libc.unshare(CLONE_NEWNS), "unshare(mount)")
    _mount(None, "/", MS_REC | MS_PRIVATE)
    mounts: list[dict[str, Any]] = spec["mounts"]
    # Open every source before mounting anything: a volume mounted over /tmp must not hide a
    # later mount's source (or the image's own files) that happens to live under /tmp.
    sources = [os.open(m["source"], os.O_PATH) for m in mounts]
    kept = {path: os.open(path, os.O_PATH) for path in spec.get("imagePaths", [])}
    for mount, fd in zip(mounts, sources, strict=True):
        source, target = Path(mount["source"]), Path(mount["target"])
        if not target.exists():
            if source.is_dir():
                target.mkdir(parents=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
        _mount(f"/proc/self/fd/{fd}", str(target), MS_BIND | MS_REC)
        if mount.get("readOnly"):
            _mount(None, str(target), MS_REMOUNT | MS_BIND | MS_RDONLY)
    # What the image itself holds (this checkout's Python and sources) stays visible even
    # under a volume mounted over one of its parents.
    targets = [Path(m["target"]) for m in mounts]
    for path, fd in kept.items():
        if any(t in Path(path).parents for t in targets):
            Path(path).mkdir(parents=True, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
    for fd in [*sources, *kept.values()]:
        os.close(fd)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        setup(spec)
        os.chdir(spec["workingDir"])
    except OSError as err:
        print(f"phiops node runtime: cannot create the container: {err}", file=sys.stderr)
        sys.exit(128)
    argv: list[str] = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as err:
        print(f"phiops node runtime: cannot run {argv[0]!r}: {err}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
