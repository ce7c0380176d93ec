"""Container entry: `python -m phiops_devcluster.node_runtime.shim SPEC.json`.

Joins the pod's network namespace, enters a new UTS namespace (hostname = pod name) and a new
PRIVATE mount namespace (as `unshare --mount --propagation private`), bind-mounts the volumes at
their mountPaths there, then execs the container's command. The host is left as it was: a
missing mountPath is created either inside a volume of the runtime's own state folder that
holds it, or in a copy-on-write layer of this namespace over its nearest existing directory (an
overlay whose upper layer is a tmpfs of this namespace, mounted on the spec's `layers` folder).
When that directory is `/`, the layered tree becomes the container's root (chroot).
The process keeps its PID: the runtime's child *is* the container's main process.

Exit codes of its own: 128 when the namespaces or mounts cannot be set up, 127 when the command
cannot be executed (as container runtimes report them).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import stat
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
ROOT = Path("/")
# What a mount point is, when a missing target below it has to be created (besides these, the
# O_PATH descriptor of a runtime's own volume mounted there: the target is created in it).
PRIVATE = -1  # a copy-on-write layer of this namespace: create the target there
HOST = -2  # the host's files: cover them with a private layer first

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(
    source: str | None, target: str, flags: int, fstype: str | None = None, data: str = ""
) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _mount_points_below(base: Path) -> list[Path]:
    """The outermost mount points strictly below `base` (a recursive bind brings the rest)."""
    points = [
        Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]))
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]
    below = [p for p in points if base in p.parents]
    return list(dict.fromkeys(p for p in below if not any(q in p.parents for q in below)))


class Targets:
    """Creates the mount targets that are missing, in this mount namespace only."""

    def __init__(self, layers: str) -> None:
        # The layers' tmpfs is mounted before any volume, which could hide the folder.
        _mount("tmpfs", layers, 0, "tmpfs", "mode=0755")
        self._layers = os.open(layers, os.O_PATH)
        self._layers_path = Path(os.path.realpath(layers))
        self._count = 0
        self._points: dict[Path, int] = {}  # mount point -> PRIVATE, HOST or a volume's fd

    def mounted(self, target: Path, own_volume: int | None) -> None:
        """Record a mount: `own_volume` is its source's fd when that is in the state folder."""
        self._points[target] = HOST if own_volume is None else own_volume

    def make(self, target: str, is_dir: bool) -> Path:
        """The real path of `target`, created first (as a directory or a file) if missing."""
        path = Path(os.path.realpath(target))
        if path.exists():
            return path
        base = path.parent
        while not base.exists():
            base = base.parent
        created = self._writable(base) / path.relative_to(base)
        if is_dir:
            created.mkdir(parents=True)
        else:
            created.parent.mkdir(parents=True, exist_ok=True)
            created.touch()
        return path

    def _writable(self, base: Path) -> Path:
        """Where new entries of the directory `base` can be made without touching the host."""
        points = [p for p in self._points if p == base or p in base.parents]
        point = max(points, key=lambda p: len(p.parts), default=None)
        if point is None or self._points[point] == HOST:
            self._cover(base)
            return base
        if self._points[point] == PRIVATE:
            return base
        # Through the volume's source: its mount may be read-only.
        return Path(_fd_path(self._points[point])) / base.relative_to(point)

    def _cover(self, base: Path) -> None:
        """Mount a copy-on-write layer over `base` and bind the mounts below it back on it."""
        below: dict[Path, int] = {}
        for point in _mount_points_below(base):
            if point == self._layers_path:  # (the new root is built inside it)
                continue
            try:
                below[point] = os.open(point, os.O_PATH)
            except OSError:  # hidden by a mount above it: not part of what `base` shows
                continue
        lower = os.open(base, os.O_PATH)
        self._count += 1
        layer = Path(_fd_path(self._layers)) / str(self._count)
        for sub in ("upper", "work", "root"):
            (layer / sub).mkdir(parents=True)
        # A mount over the process's own root would stay invisible to it: build the new root
        # aside, then enter it.
        at = layer / "root" if base == ROOT else base
        options = f"lowerdir={_fd_path(lower)},upperdir={layer}/upper,workdir={layer}/work"
        _mount("overlay", str(at), 0, "overlay", options)
        for point, fd in below.items():
            _mount(_fd_path(fd), str(at / point.relative_to(base)), MS_BIND | MS_REC)
            self._points.setdefault(point, HOST)
        self._points[base] = PRIVATE
        if base == ROOT:
            os.chdir(at)
            os.chroot(".")
        for fd in [lower, *below.values()]:
            os.close(fd)


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
    # later mount's source (or the image's own files) that happens to live under /tmp. Their
    # types are read from these descriptors for the same reason.
    sources = [os.open(m["source"], os.O_PATH) for m in mounts]
    kept = {path: os.open(path, os.O_PATH) for path in spec.get("imagePaths", [])}
    targets = Targets(spec["layers"])
    for mount, fd in zip(mounts, sources, strict=True):
        target = targets.make(mount["target"], stat.S_ISDIR(os.fstat(fd).st_mode))
        _mount(_fd_path(fd), str(target), MS_BIND | MS_REC)
        if mount.get("readOnly"):
            _mount(None, str(target), MS_REMOUNT | MS_BIND | MS_RDONLY)
        targets.mounted(target, fd if mount.get("ownVolume") else None)
    # What the image itself holds (this checkout's Python and sources) stays visible even
    # under a volume mounted over one of its parents.
    volumes = [Path(m["target"]) for m in mounts]
    for path, fd in kept.items():
        if any(v in Path(path).parents for v in volumes):
            target = targets.make(path, is_dir=True)
            _mount(_fd_path(fd), str(target), MS_BIND | MS_REC)
            targets.mounted(target, None)
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
