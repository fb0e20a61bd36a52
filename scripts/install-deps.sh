#!/bin/sh
# Installs the Debian packages blockfabric's tests and benchmarks use.
#   python: what `python3 -m venv` needs
#   all:    + libiscsi-bin (iscsi-test-cu, iscsi-perf), tgt (peer target),
#             and the kernel-host interop harness (QEMU, nvme-cli, open-iscsi:
#             its setup.sh installs them; the harness itself is not in this
#             repository, see BLOCKFABRIC_KERNEL_HOST). The fuzz harnesses' atheris
#             is a Python package (the test and fuzz extras), wheels for x86_64.
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
    bash "$kh/setup.sh" >/dev/null || echo "install-deps: kernel-host setup failed (its interop tests skip, and FAIL under CI=true)" >&2
  else
    echo "install-deps: no kernel-host harness at $kh (set BLOCKFABRIC_KERNEL_HOST; its interop tests skip, and FAIL under CI=true)" >&2
  fi
fi
