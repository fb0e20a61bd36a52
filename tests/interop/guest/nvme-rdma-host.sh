#!/bin/bash
# nvme-rdma-host.sh - GUEST_RDMA=1 guest script: blockfabric's own NVMe/RDMA
# host (this checkout and its .venv, seen at the same path) inside the guest,
# over Soft-RoCE (rxe0, 10.0.2.15).
#   MODE=bf     (issue 10, 5c) against blockfabric's RDMA target in the same
#               guest (2 reactors): perf --verify over RDMA with 2 workers
#               (2 I/O queues, one per reactor), QD 8, and a 64 KiB run
#   MODE=kernel (5b) against the kernel's nvmet-rdma target (brd namespace):
#               perf --verify over RDMA; then a blockfabric in the guest attaches
#               it (bdev_nvme_attach_controller -t rdma), bdev_get_bdevs lists
#               its namespace, it is re-exported over NVMe/TCP on 127.0.0.1 and
#               perf --verify over TCP goes through it to the kernel target
#   MODE=fault  blockfabric target (2 reactors); perf --verify over RDMA with
#               --ctrlr-loss-timeout-sec while the reactor holding perf's admin
#               queue is SIGKILLed: perf must end (no hang), report the
#               reconnects, no miscompare; the supervisor restarted the reactor
# Variables: BF_REPO (checkout), PORT (4420), MODE, PERF_T (perf seconds, 8)
. /guest/interop-lib.sh
REPO=${BF_REPO:?BF_REPO not set}
PORT=${PORT:-4420}
MODE=${MODE:-bf}
PERF_T=${PERF_T:-8}
ADDR=10.0.2.15
NQN=nqn.2016-06.io.blockfabric:rdmahost
export BLOCKFABRIC_RUN_DIR=/tmp/bfrun
export BLOCKFABRIC_REACTOR_START_TIMEOUT=120
export BLOCKFABRIC_RDMA_DEBUG=${BLOCKFABRIC_RDMA_DEBUG:-1}
mkdir -p $BLOCKFABRIC_RUN_DIR
BF="$REPO/.venv/bin/blockfabric"
PY="$REPO/.venv/bin/python"
kh_rxe_up || { ki_fail rxe "no rxe0"; ki_exit; }
cd "$REPO" || { ki_fail repo "no checkout at $REPO"; ki_exit; }

# perf_run NAME TRID ARGS...: one perf run, its output on the console, facts
# NAME_iops / NAME_ios / NAME_miscompares / NAME_errors / NAME_rc
perf_run() {
  local _n=$1 _r=$2 _rc; shift 2
  timeout 300 $BF perf -r "$_r" "$@" > /tmp/perf-$_n.log 2>&1; _rc=$?
  sed "s/^/[perf $_n] /" /tmp/perf-$_n.log
  ki_fact "${_n}_rc" "$_rc"
  ki_fact "${_n}_iops" "$(awk '$1=="Total"{printf "%d", $2}' /tmp/perf-$_n.log)"
  ki_fact "${_n}_ios" "$(sed -n 's/^verify: \([0-9]*\) miscompare(s) in \([0-9]*\) I\/Os.*/\2/p' /tmp/perf-$_n.log)"
  ki_fact "${_n}_miscompares" "$(sed -n 's/^verify: \([0-9]*\) miscompare(s).*/\1/p' /tmp/perf-$_n.log)"
  ki_fact "${_n}_errors" "$(grep -c 'I/O error' /tmp/perf-$_n.log)"
  ki_fact "${_n}_reconnects" "$(sed -n 's/^reconnect: \([0-9]*\) I\/O queue reconnect.*/\1/p' /tmp/perf-$_n.log)"
  if [ "$_rc" != 0 ]; then  # what the target(s) said meanwhile
    for _l in /tmp/bf-tgt.log /tmp/bf-host.log; do [ -f "$_l" ] && tail -n 25 "$_l" | sed "s|^|[$_l] |"; done
    dmesg | tail -n 15
  fi
  return $_rc
}

# start_bf NAME JSON MASK: a blockfabric instance from a start-up config
start_bf() {
  $BF start --name "$1" -m "$3" -s 64 --json "$2" --hugepages never --heartbeat-timeout 120 \
    > /tmp/bf-$1.log 2>&1 &
  eval "BFPID_$1=$!"
  local _i
  for _i in $(seq 1 150); do
    grep -q "blockfabric\[$1\] up" /tmp/bf-$1.log && return 0
    sleep 1
  done
  cat /tmp/bf-$1.log
  return 1
}

stop_bf() {
  local _p
  eval "_p=\$BFPID_$1"
  grep -i "traceback" -A12 /tmp/bf-$1.log | head -40
  kill -TERM "$_p" 2>/dev/null; wait "$_p"; ki_fact "stop_rc_$1" $?
}

bf_target_json() {
  cat > /tmp/bft.json <<JEOF
{"subsystems": [
 {"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "RDMA", "io_unit_size": 8192, "in_capsule_data_size": 4096}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "$NQN", "allow_any_host": true, "serial_number": "BF00000000000001", "max_namespaces": 8}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$NQN", "namespace": {"bdev_name": "Malloc0"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$NQN", "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": "$ADDR", "trsvcid": "$PORT"}}}]}
]}
JEOF
}

R="trtype:RDMA adrfam:IPv4 traddr:$ADDR trsvcid:$PORT subnqn:$NQN"

if [ "$MODE" = bf ]; then
  bf_target_json
  start_bf tgt /tmp/bft.json 0x3 || { ki_fail start "blockfabric target did not start"; ki_exit; }
  kh_wait 60 grep -q "nvmf-rdma: reactor .* listening on" /tmp/bf-tgt.log \
    || { cat /tmp/bf-tgt.log; ki_fail listen "no RDMA listener"; ki_exit; }
  ki_pass start
  ki_check perf-verify perf_run v4k "$R" -q 8 -o 4096 -w randrw -M 50 -t "$PERF_T" -P 2 --verify
  ki_check perf-verify-64k perf_run v64k "$R" -q 4 -o 65536 -w randwrite -t 4 -P 1 --verify
  ki_check perf-read perf_run r4k "$R" -q 16 -o 4096 -w randread -t 4 -P 1
  $BF rpc --name tgt nvmf_get_stats > /tmp/stats.json 2>&1; tr -d '\n ' < /tmp/stats.json | head -c 1500; echo
  stop_bf tgt
fi

if [ "$MODE" = fault ]; then
  bf_target_json
  start_bf tgt /tmp/bft.json 0x3 || { ki_fail start "blockfabric target did not start"; ki_exit; }
  kh_wait 60 grep -q "nvmf-rdma: reactor .* listening on" /tmp/bf-tgt.log \
    || { cat /tmp/bf-tgt.log; ki_fail listen "no RDMA listener"; ki_exit; }
  ki_pass start
  # the victim: the reactor of perf's admin queue (found and killed from one
  # Python process: every start-up costs seconds under emulation)
  cat > /tmp/killer.py <<'PYEOF'
import os, signal, sys, time
from blockfabric.control.addresses import default_rpc_addr
from blockfabric.control.client import RpcClient
nqn, wait_s = sys.argv[1], float(sys.argv[2])
c = RpcClient(default_rpc_addr("tgt"), timeout=60)
end = time.monotonic() + 120
victim = None
while victim is None and time.monotonic() < end:
    qps = c.call("nvmf_subsystem_get_qpairs", {"nqn": nqn})
    io = [q for q in qps if q["qid"] > 0]
    adm = [q for q in qps if q["qid"] == 0]
    if adm and len(io) >= 2:
        victim = int(str(adm[0]["thread"]).rsplit("_", 1)[-1])
    else:
        time.sleep(0.2)
if victim is None:
    sys.exit("no admin queue pair with 2 I/O queues")
time.sleep(wait_s)
old = next(r for r in c.call("blockfabric_get_status")["reactors"] if r["id"] == victim)
os.kill(int(old["pid"]), signal.SIGKILL)
print(f"KH-FACT killed_reactor={victim}", flush=True)
while time.monotonic() < end:
    try:
        r = next(r for r in c.call("blockfabric_get_status")["reactors"] if r["id"] == victim)
        if r["pid"] != old["pid"] and r.get("state", "running") == "running":
            print(f"KH-FACT restarted_pid={r['pid']}", flush=True)
            break
    except Exception as e:  # the supervisor may be busy restarting
        print("killer:", e, flush=True)
    time.sleep(0.5)
PYEOF
  $PY /tmp/killer.py "$NQN" 4 > /tmp/killer.log 2>&1 &
  KPID=$!
  perf_run fault "$R" -q 8 -o 4096 -w randwrite -t $((PERF_T + 12)) -P 2 --verify \
    --ctrlr-loss-timeout-sec 60 --reconnect-delay-sec 0.5
  ki_fact fault_perf_rc $?
  wait $KPID
  cat /tmp/killer.log
  if grep -q restarted_pid /tmp/killer.log; then ki_pass reactor-restarted; else ki_fail reactor-restarted; fi
  grep -c "restart" /tmp/bf-tgt.log
  stop_bf tgt
fi

if [ "$MODE" = kernel ]; then
  modprobe brd rd_nr=1 rd_size=65536 || { ki_fail brd "modprobe brd"; ki_exit; }
  KNQN=nqn.2024-01.io.kernel-host:nvmet-rdma
  kh_nvmet_add rdma $ADDR "$PORT" "$KNQN" /dev/ram0 || { ki_fail nvmet "kh_nvmet_add rdma"; ki_exit; }
  ki_pass nvmet
  KR="trtype:RDMA adrfam:IPv4 traddr:$ADDR trsvcid:$PORT subnqn:$KNQN"
  ki_check perf-verify perf_run kv4k "$KR" -q 8 -o 4096 -w randrw -M 50 -t "$PERF_T" -P 2 --verify
  ki_check perf-read perf_run kr4k "$KR" -q 16 -o 4096 -w randread -t 4 -P 1
  # a blockfabric in the guest imports the kernel's namespace over RDMA and
  # serves it again over NVMe/TCP on the guest's loopback
  TPORT=4430
  TNQN=nqn.2016-06.io.blockfabric:reexport
  cat > /tmp/bfh.json <<JEOF
{"subsystems": [
 {"subsystem": "bdev", "config": [
  {"method": "bdev_nvme_attach_controller", "params": {"name": "K", "trtype": "rdma", "adrfam": "ipv4", "traddr": "$ADDR", "trsvcid": "$PORT", "subnqn": "$KNQN"}}]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "$TNQN", "allow_any_host": true, "serial_number": "BF00000000000002"}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$TNQN", "namespace": {"bdev_name": "Kn1"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$TNQN", "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$TPORT"}}}]}
]}
JEOF
  if start_bf host /tmp/bfh.json 0x3; then
    ki_pass attach
    $BF rpc --name host bdev_get_bdevs -b Kn1 > /tmp/bdevs.json 2>&1
    cat /tmp/bdevs.json | head -60
    if grep -q '"trtype": "RDMA"' /tmp/bdevs.json && grep -q '"name": "Kn1"' /tmp/bdevs.json; then
      ki_pass bdev-listed
    else
      ki_fail bdev-listed "bdev_get_bdevs has no RDMA-attached Kn1"
    fi
    TR="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$TPORT subnqn:$TNQN"
    ki_check reexport-verify perf_run tcpv "$TR" -q 8 -o 4096 -w randrw -M 50 -t "$PERF_T" -P 2 --verify
    stop_bf host
  else
    ki_fail attach "blockfabric with bdev_nvme_attach_controller -t rdma did not start"
  fi
  kh_nvmet_del "$KNQN"
fi
if [ "$MODE" = bench ]; then
  # bench row (bench/rdma_host.py): our host vs the kernel's nvme-rdma host,
  # same target (kernel nvmet-rdma, brd), same guest run; kernel host twice
  SECS=${SECS:-15}
  modprobe brd rd_nr=1 rd_size=65536 || { ki_fail brd "modprobe brd"; ki_exit; }
  KNQN=nqn.2024-01.io.kernel-host:rdma-host-bench
  kh_nvmet_add rdma $ADDR "$PORT" "$KNQN" /dev/ram0 || { ki_fail nvmet "kh_nvmet_add rdma"; ki_exit; }
  dd if=/dev/urandom of=/dev/ram0 bs=1M count=32 status=none
  ki_pass nvmet
  KR="trtype:RDMA adrfam:IPv4 traddr:$ADDR trsvcid:$PORT subnqn:$KNQN"
  kernel_host() {  # NAME
    local dev r
    dev=$(kh_nvme_rdma_connect $ADDR "$PORT" "$KNQN") || { ki_fail "$1-connect"; return 1; }
    r=$($PY "$REPO/tests/interop/guest/rdma-randread.py" "$dev" 4096 32 "$SECS")
    kh_log "$1 4k randread QD32: $r"
    ki_fact "${1}_randread_4k_iops" "$(echo "$r" | sed 's/.*iops=\([0-9.]*\).*/\1/')"
    r=$($PY "$REPO/tests/interop/guest/rdma-randread.py" "$dev" 131072 1 "$SECS" seq)
    kh_log "$1 128k seqread QD1: $r"
    ki_fact "${1}_seqread_128k_mibs" "$(echo "$r" | sed 's/.*mibs=\([0-9.]*\).*/\1/')"
    nvme disconnect -n "$KNQN" >/dev/null
    ki_pass "$1"
  }
  kernel_host kernel
  if perf_run b4k "$KR" -q 32 -o 4096 -w randread -t "$SECS" -P 1; then
    ki_fact blockfabric_randread_4k_iops "$(awk '$1=="Total"{print $2}' /tmp/perf-b4k.log)"
    ki_pass blockfabric-4k
  else
    ki_fail blockfabric-4k
  fi
  if perf_run b128k "$KR" -q 1 -o 131072 -w read -t "$SECS" -P 1; then
    ki_fact blockfabric_seqread_128k_mibs "$(awk '$1=="Total"{print $3}' /tmp/perf-b128k.log)"
    ki_pass blockfabric-128k
  else
    ki_fail blockfabric-128k
  fi
  kernel_host kernel2
  kh_nvmet_del "$KNQN"
fi
ki_exit
