#!/bin/sh
# Installs the Debian packages blockfabric's tests and benchmarks use.
#   python: what `python3 -m venv` needs
#   all:    + libiscsi-bin (iscsi-test-cu, iscsi-perf), tgt (peer target),
#             and the kernel-host interop harness (QEMU, nvme-cli, open-iscsi)
set -e
what=${1:-all}
need=""
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
pkgs="python3-venv"
[ "$what" = all ] && pkgs="$pkgs libiscsi-bin tgt procps iproute2"
for p in $pkgs; do have "$p" || need="$need $p"; done
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to apt-get install:$need" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $need
fi
if [ "$what" = all ]; then
  kh="${BLOCKFABRIC_KERNEL_HOST:-$(dirname "$0")/../../shared/interop/kernel-host}"
  if [ -x "$kh/setup.sh" ] || [ -f "$kh/setup.sh" ]; then
    bash "$kh/setup.sh" >/dev/null || echo "install-deps: kernel-host setup failed (interop tests will skip)" >&2
  else
    echo "install-deps: no kernel-host harness at $kh (interop tests will skip)" >&2
  fi
fi
