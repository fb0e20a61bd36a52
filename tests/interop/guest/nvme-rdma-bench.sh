#!/bin/bash
# nvme-rdma-bench.sh - GUEST_RDMA=1: the kernel nvme-rdma host reads from
# blockfabric's NVMe/RDMA target and from the kernel nvmet-rdma target in the
# same guest run, same host tool: 32 parallel O_DIRECT dd readers of 4 KiB
# blocks at random offsets (QD ~32; the guest userland has no fio), and one
# 128 KiB sequential O_DIRECT read. Prints KH-FACT <target>_<test>=IOPS|MiB/s.
# Variables: BF_REPO, SECS_4K (reads per reader: N4K, default 64), SEQ_MB (32)
. /guest/interop-lib.sh
REPO=${BF_REPO:?}
ADDR=10.0.2.15
N4K=${N4K:-64}
SEQ_MB=${SEQ_MB:-32}
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
  t0=$(date +%s.%N); pids=""
  for i in $(seq 0 31); do
    ( r=$RANDOM; for j in $(seq 1 $N4K); do
        dd if="$dev" of=/dev/null bs=4k count=1 skip=$(( (r * 31 + j * 977 + i * 131) % 8192 )) iflag=direct status=none
      done ) &
    pids="$pids $!"
  done
  wait $pids
  t1=$(date +%s.%N)
  ki_fact "${name}_randread_4k_iops" "$(awk -v a="$t0" -v b="$t1" -v n=$((32 * N4K)) 'BEGIN{printf "%.0f", n/(b-a)}')"
  t0=$(date +%s.%N)
  dd if="$dev" of=/dev/null bs=128k count=$(( SEQ_MB * 8 )) iflag=direct status=none
  t1=$(date +%s.%N)
  ki_fact "${name}_seqread_128k_mibs" "$(awk -v a="$t0" -v b="$t1" -v m=$SEQ_MB 'BEGIN{printf "%.1f", m/(b-a)}')"
  nvme disconnect -n "$3" >/dev/null
  ki_pass "$name"
}
measure kernel 4421 $KNQN
measure blockfabric 4420 $BFNQN
measure kernel2 4421 $KNQN
kill -TERM $BFPID; wait $BFPID
kh_nvmet_del $KNQN
ki_exit
