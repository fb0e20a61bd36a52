# interop-lib.sh - helpers shared by the blockfabric interop guest scripts
# (busybox ash).  Copied into the guest as /guest/interop-lib.sh; sources the
# harness's /guest/lib.sh.  Every check prints one machine-readable line that
# tests/interop/khost.py parses from the console:
#   KH-RESULT <name> PASS|FAIL <detail>   one per check
#   KH-FACT <key>=<value>                 values the host test asserts on
#   KH-MARK <name>                        asks the host test to act (RPC), then
#                                         the guest polls for the effect
. /guest/lib.sh

KI_FAILS=0
ki_pass() { echo "KH-RESULT $1 PASS ${2:-}"; }
ki_fail() { echo "KH-RESULT $1 FAIL ${2:-}"; KI_FAILS=$((KI_FAILS + 1)); }
# ki_check NAME CMD...: run CMD, report NAME as PASS/FAIL from its status
ki_check() {
  local _n=$1; shift
  if "$@"; then ki_pass "$_n"; return 0; fi
  ki_fail "$_n" "command failed: $*"; return 1
}
ki_fact() { echo "KH-FACT $1=$2"; }
ki_mark() { echo "KH-MARK $1"; }
ki_exit() {
  echo "KH-DONE fails=$KI_FAILS"
  [ "$KI_FAILS" -eq 0 ] && exit 0
  dmesg | tail -n 40
  exit 1
}

# ki_pattern DEV MB BS [OFFSET_MB]: MB MiB of random data written with dd
# bs=BS oflag=direct, caches dropped, read back with bs=BS iflag=direct, cmp.
ki_pattern() {
  local _dev=$1 _mb=$2 _bs=$3 _off=${4:-0} _t0 _t1 _t2 _cnt _skip _bytes
  [ -b "$_dev" ] || { echo "[guest] $_dev is not a block device"; return 1; }
  case $_bs in
    *k) _bytes=$(( ${_bs%k} * 1024 )) ;;
    *M) _bytes=$(( ${_bs%M} * 1048576 )) ;;
    *) _bytes=$_bs ;;
  esac
  _cnt=$(( _mb * 1048576 / _bytes ))
  _skip=$(( _off * 1048576 / _bytes ))
  dd if=/dev/urandom of=/tmp/ki-pat bs=1M count="$_mb" status=none || return 1
  printf 'BLOCKFABRIC-INTEROP %s %s bs=%s ' "$(date +%s)" "$_dev" "$_bs" | dd of=/tmp/ki-pat conv=notrunc status=none
  _t0=$(cut -d' ' -f1 /proc/uptime)
  dd if=/tmp/ki-pat of="$_dev" bs="$_bytes" seek="$_skip" count="$_cnt" oflag=direct conv=fsync status=none \
    || { echo "[guest] dd write bs=$_bs to $_dev failed"; rm -f /tmp/ki-pat; return 1; }
  _t1=$(cut -d' ' -f1 /proc/uptime)
  sync; echo 3 > /proc/sys/vm/drop_caches
  dd if="$_dev" of=/tmp/ki-rb bs="$_bytes" skip="$_skip" count="$_cnt" iflag=direct status=none \
    || { echo "[guest] dd read bs=$_bs from $_dev failed"; rm -f /tmp/ki-pat /tmp/ki-rb; return 1; }
  _t2=$(cut -d' ' -f1 /proc/uptime)
  kh_log "pattern ${_mb}MiB bs=$_bs on $_dev: write $(awk -v a="$_t0" -v b="$_t1" 'BEGIN{printf "%.2f", b-a}')s read $(awk -v a="$_t1" -v b="$_t2" 'BEGIN{printf "%.2f", b-a}')s"
  if cmp /tmp/ki-pat /tmp/ki-rb; then rm -f /tmp/ki-pat /tmp/ki-rb; return 0; fi
  echo "[guest] pattern mismatch bs=$_bs: md5 w=$(md5sum < /tmp/ki-pat | cut -c1-32) r=$(md5sum < /tmp/ki-rb | cut -c1-32)"
  rm -f /tmp/ki-pat /tmp/ki-rb
  return 1
}
