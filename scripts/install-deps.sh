#!/bin/sh
# Installs the Debian packages blockfabric's tests and benchmarks use.
#   python: what `python3 -m venv` needs
#   all:    + libiscsi-bin (iscsi-test-cu, iscsi-perf), tgt (peer target),
#             iperf3 (the benchmarks' loopback ceiling, bench/systems.py),
#             and the kernel-host interop harness (QEMU, nvme-cli, open-iscsi:
#             its setup.sh installs them; the harness itself is not in this
#             repository, see BLOCKFABRIC_KERNEL_HOST). The fuzz harnesses' atheris
#             is a Python package (the test and fuzz extras), wheels for x86_64.
#             + rdma-core ibverbs-providers python3-pyverbs rdmacm-utils (the
#             NVMe/RDMA transport; optional at run time), then pyverbs-link
#   pyverbs-link [VENV]: make Debian's pyverbs (/usr/lib/python3/dist-packages,
#             built for one CPython 3.x SOABI) importable from VENV (.venv): a
#             symlink in its site-packages when the venv's interpreter has the
#             same SOABI, otherwise a note (nvmf_create_transport -t RDMA then
#             refuses with the package name)
#             + tmux (the test of `blockfabric top` runs it in a real terminal)
#             + chromium (the web dashboard's test loads it in headless Chromium)
#             + Ceph for the RBD bdev and its tests (ceph-mon, ceph-osd, ceph-common
#             for the rbd/ceph tools, python3-rados + python3-rbd: the bindings).
#   rbd:      only the Ceph part.
# The Ceph bindings are Debian's, built for the system python3 (3.11): the
# script links just their two extension modules (rados, rbd) into the venv
# ($VENV, default .venv next to scripts/) so nothing else of the system's
# site-packages shadows the venv's own packages.
set -e
what=${1:-all}
pyverbs_link() {
  venv=${1:-.venv}
  src=/usr/lib/python3/dist-packages/pyverbs
  [ -x "$venv/bin/python" ] || { echo "install-deps: no venv at $venv" >&2; return 0; }
  [ -d "$src" ] || { echo "install-deps: $src missing (apt-get install python3-pyverbs): no RDMA transport" >&2; return 0; }
  sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  soabi=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("SOABI"))')
  if ! ls "$src"/base."$soabi".so >/dev/null 2>&1; then
    echo "install-deps: Debian's pyverbs is not built for $soabi ($venv): no RDMA transport" >&2
    return 0
  fi
  [ -e "$sp/pyverbs" ] || ln -s "$src" "$sp/pyverbs"
  "$venv/bin/python" -c 'import pyverbs.cmid' && echo "install-deps: pyverbs linked into $venv"
}
if [ "$what" = pyverbs-link ]; then pyverbs_link "${2:-.venv}"; exit 0; fi
need=""
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
pkgs="python3-venv"
[ "$what" = all ] && pkgs="$pkgs libiscsi-bin tgt iperf3 procps iproute2 rdma-core ibverbs-providers python3-pyverbs rdmacm-utils tmux chromium gcc libc6-dev"
ceph_pkgs="ceph-mon ceph-osd ceph-common python3-rados python3-rbd"
{ [ "$what" = all ] || [ "$what" = rbd ]; } && pkgs="$pkgs $ceph_pkgs"
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
    # the 6.12 kernel of bookworm-backports (DH-HMAC-CHAP host) for
    # tests/interop/test_kernel_nvme_auth.py: a 106 MB package, fetched once
    KH_KERNEL_SUITE=bookworm-backports bash "$kh/setup.sh" >/dev/null || echo "install-deps: kernel-host setup of the 6.12 kernel failed (the DH-HMAC-CHAP interop test FAILS under CI=true)" >&2
  else
    echo "install-deps: no kernel-host harness at $kh (set BLOCKFABRIC_KERNEL_HOST; its interop tests skip, and FAIL under CI=true)" >&2
  fi
fi
if [ "$what" = all ] || [ "$what" = rbd ]; then
  venv="${VENV:-$(dirname "$0")/../.venv}"
  if [ -x "$venv/bin/python" ]; then
    sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
    soabi=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("SOABI"))')
    for m in rados rbd; do
      so=/usr/lib/python3/dist-packages/$m.$soabi.so
      if [ -f "$so" ]; then
        ln -sf "$so" "$sp/"
      else
        echo "install-deps: no $so for the venv's python ($soabi): the RBD bdev and its tests need python3-$m built for it" >&2
      fi
    done
    "$venv/bin/python" -c 'import rados, rbd' 2>/dev/null ||
      echo "install-deps: the venv cannot import rados/rbd (the RBD tests FAIL under CI=true)" >&2
  fi
fi
if [ "$what" = all ]; then
  pyverbs_link "$(dirname "$0")/../.venv"
fi
