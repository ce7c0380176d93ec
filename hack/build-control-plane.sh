#!/usr/bin/env bash
# Builds etcd + kube-apiserver + kube-controller-manager + kube-scheduler for the local
# control plane, once, into a cache outside the checkout. Kubernetes 1.20.2 is built from
# Debian bookworm's source package (the only offline source of a control plane here), with
# the vendored reflect2/json-iterator replaced by Debian's Go-1.18-safe copies.
set -euo pipefail

K8S_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
FIX_ID="reflect2-jsoniter-debian"          # bump when the patch below changes
CACHE_ROOT="${PHIOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phiops}"
BIN_DIR="$CACHE_ROOT/control-plane-${K8S_DEB_VERSION//+/_}-$FIX_ID/bin"

say() { printf '[build-control-plane] %s\n' "$*" >&2; }

if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" \
      && -x "$BIN_DIR/kube-scheduler" && -x "$BIN_DIR/etcd" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

say "cache empty: building the control plane once (about 10 minutes on 2 cores)"
if ! grep -rqs '^Types: deb deb-src\|^Types:.*deb-src\|^deb-src .*bookworm' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  say "adding deb-src entries for bookworm"
  sudo_ tee /etc/apt/sources.list.d/phiops-deb-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
say "apt-get update"
sudo_ apt-get update -qq
say "installing build dependencies and etcd"
sudo_ apt-get install -y -qq golang-go dpkg-dev rsync jq etcd-server \
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >/dev/null

WORK=$(mktemp -d "${TMPDIR:-/tmp}/phiops-k8s-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
say "fetching the kubernetes source package $K8S_DEB_VERSION"
apt-get source -qq --download-only "kubernetes=$K8S_DEB_VERSION" >/dev/null
dpkg-source -x --no-check ./*.dsc src >/dev/null
cd src

say "replacing vendored reflect2 and json-iterator with Debian's copies"
for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  find "vendor/$pkg" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
  find "/usr/share/gocode/src/$pkg" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) \
    ! -name '*_test.go' -exec cp {} "vendor/$pkg/" \;
done

mkdir -p .go/src/k8s.io
ln -sfn "$PWD" .go/src/k8s.io/kubernetes
cd .go/src/k8s.io/kubernetes
say "compiling kube-apiserver, kube-controller-manager, kube-scheduler (the long part)"
( while sleep 60; do say "... still compiling ($(date +%T))"; done ) & ticker=$!
GOPATH="$WORK/src/.go" CGO_ENABLED=0 GOPROXY=off GOFLAGS=-mod=vendor GO111MODULE=on \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >"$WORK/build.log" 2>&1 \
  || { kill $ticker; tail -50 "$WORK/build.log" >&2; exit 1; }
kill $ticker 2>/dev/null || true

mkdir -p "$BIN_DIR.tmp"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager _output/bin/kube-scheduler "$BIN_DIR.tmp/"
cp "$(command -v etcd || echo /usr/bin/etcd)" "$BIN_DIR.tmp/etcd"
rm -rf "$BIN_DIR"; mv "$BIN_DIR.tmp" "$BIN_DIR"
say "cached in $BIN_DIR"
echo "$BIN_DIR"
