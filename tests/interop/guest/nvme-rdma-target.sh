#!/bin/bash
# nvme-rdma-target.sh - GUEST_RDMA=1 guest script: blockfabric (this checkout
# and its .venv, seen at the same path) runs inside the guest with an NVMe/RDMA
# listener on rxe0 (10.0.2.15), 2 reactors; the guest kernel's nvme-rdma host
# discovers it, connects with 2 I/O queues, writes/reads/compares a pattern,
# sees a namespace hot-added while connected, and disconnects.
# Variables: BF_REPO (checkout), PORT (4420), NQN, IO_MB (8), MODE (kernel|perf)
. /guest/interop-lib.sh
REPO=${BF_REPO:?BF_REPO not set}
PORT=${PORT:-4420}
NQN=${NQN:-nqn.2016-06.io.blockfabric:rdma1}
IO_MB=${IO_MB:-8}
ADDR=10.0.2.15
export BLOCKFABRIC_RUN_DIR=/tmp/bfrun
mkdir -p $BLOCKFABRIC_RUN_DIR
BF="$REPO/.venv/bin/blockfabric"
RPC="$BF rpc --name rdma"
kh_rxe_up || { ki_fail rxe "no rxe0"; ki_exit; }
cd "$REPO" || { ki_fail repo "no checkout at $REPO"; ki_exit; }
t0=$(cut -d' ' -f1 /proc/uptime)
DISC=nqn.2014-08.org.nvmexpress.discovery
# one start-up config: every RPC costs ~10-20 s of Python start-up under TCG
cat > /tmp/bf.json <<JEOF
{"subsystems": [
 {"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}},
  {"method": "bdev_malloc_create", "params": {"name": "Malloc1", "num_blocks": 65536, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "RDMA", "io_unit_size": 8192, "in_capsule_data_size": 4096 ${RDMA_JSON_OPTS:-}}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "$NQN", "allow_any_host": true, "serial_number": "SPDK00000000000001", "max_namespaces": 8}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$NQN", "namespace": {"bdev_name": "Malloc0"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$NQN", "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": "$ADDR", "trsvcid": "$PORT"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$DISC", "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": "$ADDR", "trsvcid": "$PORT"}}}]}
]}
JEOF
export BLOCKFABRIC_REACTOR_START_TIMEOUT=120
$BF start --name rdma -m 0x3 -s 64 --json /tmp/bf.json --hugepages never --heartbeat-timeout 120 > /tmp/bf.log 2>&1 &
BFPID=$!
up() { grep -q "blockfabric\[rdma\] up" /tmp/bf.log; }
kh_wait 150 up || { cat /tmp/bf.log; ki_fail start "blockfabric did not start"; ki_exit; }
t1=$(cut -d' ' -f1 /proc/uptime)
kh_log "blockfabric started in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s"
ki_pass start
listening() { grep -q "nvmf-rdma: reactor .* listening on" /tmp/bf.log; }
kh_wait 60 listening || { cat /tmp/bf.log; ki_fail listen "no RDMA listener"; ki_exit; }
ki_pass listen
if [ "${MODE:-kernel}" = kernel ]; then
  out=$(nvme discover -t rdma -a $ADDR -s "$PORT" 2>&1); echo "$out"
  if echo "$out" | grep -q "subnqn:.*$NQN" && echo "$out" | grep -q "trtype:.*rdma"; then
    ki_pass discover
  else
    ki_fail discover "no rdma entry for $NQN"
  fi
  DEV=$(NVME_CONNECT_OPTS="-i 2" kh_nvme_rdma_connect $ADDR "$PORT" "$NQN")
  if [ -n "$DEV" ]; then ki_pass connect "$DEV"; else ki_fail connect; cat /tmp/bf.log | tail -50; ki_exit; fi
  CTRL=$(kh_nvme_ctrl "$NQN")
  ki_fact queues "$(ls -d /sys/class/nvme/$CTRL/device 2>/dev/null; dmesg | grep -c "$CTRL: .*I/O queues\|mapped")"
  dmesg | grep -i "nvme" | tail -5
  ki_check pattern kh_pattern_io "$DEV" "$IO_MB"
  ki_check pattern-4k ki_pattern "$DEV" 1 4k 20
  $RPC nvmf_subsystem_get_qpairs "$NQN" > /tmp/qp.json; tr -d '\n ' < /tmp/qp.json; echo
  ki_fact qpairs "$(grep -c '"qid"' /tmp/qp.json)"
  ki_fact qpairs_rdma "$(grep -c '"trtype": "RDMA"' /tmp/qp.json)"
  $RPC nvmf_subsystem_add_ns "$NQN" Malloc1 >/dev/null
  hot() { ls /dev/${CTRL}n2 >/dev/null 2>&1 || ls /dev/nvme*n2 >/dev/null 2>&1; }
  if kh_wait 30 hot; then ki_pass hot-add "$(ls /dev/nvme*n2)"; else ki_fail hot-add "no second namespace"; fi
  if hot; then ki_check pattern-ns2 ki_pattern "$(ls /dev/nvme*n2 | head -1)" 2 64k; fi
  ki_check disconnect kh_run nvme disconnect -n "$NQN"
  sleep 1
  left=$($RPC nvmf_subsystem_get_qpairs "$NQN" | grep -c '"qid"')
  [ "$left" = 0 ] && ki_pass qpairs-gone || ki_fail qpairs-gone "$left left"
fi
if [ "${MODE:-kernel}" = perf ] || [ -n "${PERF_TOO:-}" ]; then
  R="trtype:RDMA adrfam:IPv4 traddr:$ADDR trsvcid:$PORT subnqn:$NQN"
  ki_check perf-verify timeout 120 $BF perf -r "$R" -q 8 -o 4096 -w randrw -t 5 --verify
fi
grep -i "error\|traceback" /tmp/bf.log | head -20
kill -TERM $BFPID; wait $BFPID; ki_fact stop_rc $?
tail -5 /tmp/bf.log
ki_exit
