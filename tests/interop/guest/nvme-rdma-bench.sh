#!/bin/bash
# nvme-rdma-bench.sh - GUEST_RDMA=1: the kernel nvme-rdma host reads from
# blockfabric's NVMe/RDMA target and from the kernel nvmet-rdma target in the
# same guest run, same host tool (rdma-randread.py: 32 threads of O_DIRECT
# 4 KiB preadv at random offsets = QD32, the guest userland has no fio; then
# 128 KiB sequential O_DIRECT reads, QD1). Prints KH-FACT <target>_<test>=N.
# Variables: BF_REPO, SECS (seconds per measurement, 15), SEQ_MB (MiB written first, 16)
. /guest/interop-lib.sh
REPO=${BF_REPO:?}
ADDR=10.0.2.15
SECS=${SECS:-15}
SEQ_MB=${SEQ_MB:-16}
BFNQN=nqn.2016-06.io.blockfabric:bench
KNQN=nqn.2024-01.io.kernel-host:rdma-bench
export BLOCKFABRIC_RUN_DIR=/tmp/bfrun BLOCKFABRIC_REACTOR_START_TIMEOUT=120
mkdir -p $BLOCKFABRIC_RUN_DIR
kh_rxe_up || { ki_fail rxe; ki_exit; }
cat > /tmp/bf.json <<JEOF
{"subsystems": [
 {"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "RDMA"}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "$BFNQN", "allow_any_host": true, "serial_number": "BF1"}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$BFNQN", "namespace": {"bdev_name": "Malloc0"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$BFNQN", "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": "$ADDR", "trsvcid": "4420"}}}]}
]}
JEOF
cd "$REPO" || exit 1
"$REPO/.venv/bin/blockfabric" start --name bench -m 0x3 -s 64 --json /tmp/bf.json --hugepages never \
  --poll-mode ${POLL_MODE:-adaptive} --heartbeat-timeout 120 > /tmp/bf.log 2>&1 &
BFPID=$!
listening() { grep -q "nvmf-rdma: reactor .* listening on" /tmp/bf.log; }
kh_wait 200 listening || { cat /tmp/bf.log; ki_fail bf-start; ki_exit; }
ki_pass bf-start
modprobe brd rd_nr=1 rd_size=65536 || { ki_fail brd; ki_exit; }
kh_nvmet_add rdma $ADDR 4421 $KNQN /dev/ram0 || { ki_fail nvmet; ki_exit; }
ki_pass nvmet

measure() {  # NAME PORT NQN
  local name=$1 dev t0 t1 i pids
  dev=$(kh_nvme_rdma_connect $ADDR "$2" "$3") || { ki_fail "$name-connect"; return 1; }
  dd if=/dev/urandom of="$dev" bs=1M count=$SEQ_MB oflag=direct status=none
  r=$("$REPO/.venv/bin/python" "$REPO/tests/interop/guest/rdma-randread.py" "$dev" 4096 32 "$SECS")
  kh_log "$name 4k randread QD32: $r"
  ki_fact "${name}_randread_4k_iops" "$(echo "$r" | sed 's/.*iops=\([0-9.]*\).*/\1/')"
  r=$("$REPO/.venv/bin/python" "$REPO/tests/interop/guest/rdma-randread.py" "$dev" 131072 1 "$SECS" seq)
  kh_log "$name 128k seqread QD1: $r"
  ki_fact "${name}_seqread_128k_mibs" "$(echo "$r" | sed 's/.*mibs=\([0-9.]*\).*/\1/')"
  nvme disconnect -n "$3" >/dev/null
  ki_pass "$name"
}
measure kernel 4421 $KNQN
measure blockfabric 4420 $BFNQN
measure kernel2 4421 $KNQN
kill -TERM $BFPID; wait $BFPID
kh_nvmet_del $KNQN
ki_exit
