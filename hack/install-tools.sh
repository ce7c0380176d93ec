#!/usr/bin/env bash
# Offline tools the chart tests use (tests/chart): promtool, from Debian's `prometheus` package,
# and a Lua interpreter for the Argo CD health checks. Idempotent: installs only what is missing,
# never starts a service. Run as root or with sudo; `hack/setup.sh` calls it.
set -euo pipefail

say() { printf '[install-tools] %s\n' "$*" >&2; }
sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

have_lua() {
  command -v lua5.4 >/dev/null || command -v lua5.3 >/dev/null || command -v lua >/dev/null
}

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
have_lua || missing+=(lua5.4)
if ((${#missing[@]} == 0)); then
  exit 0
fi

say "installing ${missing[*]} (Debian packages)"
sudo_ apt-get update -qq
# --no-install-recommends: promtool is all the tests need from `prometheus`. A policy-rc.d
# (exit 101) keeps the package's postinst from starting a Prometheus server; an existing one
# is left alone and restored.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | sudo_ tee "$policy" >/dev/null
  sudo_ chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if ((created_policy)); then sudo_ rm -f "$policy"; fi; }
trap cleanup EXIT
DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
command -v promtool >/dev/null || { say "promtool still missing after install"; exit 1; }
have_lua || { say "no Lua interpreter after install"; exit 1; }
say "ready: $(promtool --version 2>&1 | head -n1); $(command -v lua5.4 || command -v lua5.3 || command -v lua)"
