#!/bin/sh
# nvme-interop.sh - guest script: the Linux 6.1 NVMe/TCP host (nvme-tcp +
# nvme-cli 2.3) against one target, all checks in one boot:
#   discover, connect, nvme list, id-ctrl / id-ns facts, O_DIRECT pattern at
#   each of BLOCK_SIZES, namespace add/remove while connected (AEN), disconnect.
# Variables: PORT, NQN (required), TARGET_ADDR (10.0.2.2), IO_MB (64),
#   BLOCK_SIZES ("4k 128k"; an entry BS:MB overrides IO_MB), NVME_CONNECT_OPTS, DO_AEN (1),
#   PEER ("" = the target is on the host and the host test performs the
#   KH-MARK actions; "nvmet" = serve the kernel nvmet target inside this guest
#   on 127.0.0.1:$PORT and perform the actions here - validates the script).
. /guest/interop-lib.sh
TARGET_ADDR=${TARGET_ADDR:-10.0.2.2}
PORT=${PORT:-4420}
IO_MB=${IO_MB:-64}
BLOCK_SIZES=${BLOCK_SIZES:-4k 128k}
DO_AEN=${DO_AEN:-1}
PEER=${PEER:-}
CFG=/sys/kernel/config/nvmet
[ -n "${NQN:-}" ] || { ki_fail setup "NQN not set"; ki_exit; }

if [ "$PEER" = nvmet ]; then
  TARGET_ADDR=127.0.0.1
  modprobe brd rd_nr=2 rd_size=$((64 * 1024)) max_part=0 || kh_fail "modprobe brd"
  mkdir $CFG/subsystems/$NQN && echo 1 > $CFG/subsystems/$NQN/attr_allow_any_host
  mkdir $CFG/subsystems/$NQN/namespaces/1
  echo -n /dev/ram0 > $CFG/subsystems/$NQN/namespaces/1/device_path
  echo 1 > $CFG/subsystems/$NQN/namespaces/1/enable || kh_fail "nvmet namespace"
  mkdir $CFG/ports/1
  echo tcp > $CFG/ports/1/addr_trtype; echo ipv4 > $CFG/ports/1/addr_adrfam
  echo $TARGET_ADDR > $CFG/ports/1/addr_traddr; echo $PORT > $CFG/ports/1/addr_trsvcid
  ln -s $CFG/subsystems/$NQN $CFG/ports/1/subsystems/$NQN || kh_fail "nvmet port"
  kh_log "peer: kernel nvmet serving $NQN on $TARGET_ADDR:$PORT"
fi

# host_action NAME: the change the host test makes on the target (by RPC)
# when it sees "KH-MARK NAME"; with PEER=nvmet it is done here via configfs
host_action() {
  if [ "$PEER" != nvmet ]; then ki_mark "$1"; return; fi
  case $1 in
    add-ns)
      mkdir $CFG/subsystems/$NQN/namespaces/2
      echo -n /dev/ram1 > $CFG/subsystems/$NQN/namespaces/2/device_path
      echo 1 > $CFG/subsystems/$NQN/namespaces/2/enable ;;
    remove-ns)
      echo 0 > $CFG/subsystems/$NQN/namespaces/2/enable
      rmdir $CFG/subsystems/$NQN/namespaces/2 ;;
  esac
}

# namespaces of $NQN the host currently sees (block devices, one per line)
ns_list() {
  local _s _n
  for _s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ "$(cat "$_s/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
    for _n in "$_s"/nvme*n*; do [ -e "$_n" ] && echo "/dev/$(basename "$_n")"; done
  done
}
ns_count_is() { [ "$(ns_list | wc -l)" -eq "$1" ]; }
# field KEY FILE: value of "key : value" in nvme-cli's normal output
field() { awk -v k="$1" '{ n=$0; sub(/:.*/, "", n); gsub(/ /, "", n); if (n == k) { sub(/^[^:]*: ?/, ""); print; exit } }' "$2"; }

# ---- discovery
kh_log "hostnqn $(cat /etc/nvme/hostnqn), target $TARGET_ADDR:$PORT, subsystem $NQN"
kh_run nvme discover -t tcp -a "$TARGET_ADDR" -s "$PORT" > /tmp/disc.log 2>&1
rc=$?
cat /tmp/disc.log
if [ $rc -eq 0 ] && grep -q "^subnqn: *$NQN\$" /tmp/disc.log; then
  ki_pass discover "$(grep -c '^=====Discovery Log Entry' /tmp/disc.log) entries"
else
  ki_fail discover "rc=$rc, $NQN listed: $(grep -c "^subnqn: *$NQN\$" /tmp/disc.log)"
fi
ki_fact disc_entries "$(grep -c '^=====Discovery Log Entry' /tmp/disc.log)"
ki_fact disc_trsvcid "$(awk -v n="$NQN" '/^trsvcid:/{s=$2} /^subnqn:/{if ($2==n) {print s; exit}}' /tmp/disc.log)"

# ---- connect
if ! kh_run nvme connect -t tcp -a "$TARGET_ADDR" -s "$PORT" -n "$NQN" ${NVME_CONNECT_OPTS:-}; then
  ki_fail connect "nvme connect failed"; ki_exit
fi
if ! kh_wait 30 ns_count_is 1; then
  ki_fail connect "no namespace block device: $(ns_list | tr '\n' ' ')"; ki_exit
fi
DEV=$(ns_list | head -1)
CTRL=$(kh_nvme_ctrl "$NQN" | head -1)
ki_pass connect "$CTRL $DEV"
ki_fact ctrl_count "$(kh_nvme_ctrl "$NQN" | wc -l)"
ki_fact ctrl_state "$(cat /sys/class/nvme/$CTRL/state)"
ki_fact ctrl_transport "$(cat /sys/class/nvme/$CTRL/transport)"
host_action connected

# ---- nvme list / id-ctrl / id-ns
kh_run nvme list > /tmp/list.log 2>&1; rc=$?
cat /tmp/list.log
ki_fact list_rc "$rc"
ki_fact list_line "$(grep "^$DEV " /tmp/list.log | tr -s ' ')"
ki_fact ns1_bytes "$(blockdev --getsize64 "$DEV")"
ki_fact ns1_lbs "$(blockdev --getss "$DEV")"
kh_run nvme id-ctrl /dev/$CTRL > /tmp/idctrl.log 2>&1; ki_fact idctrl_rc $?
grep -E '^(vid|ssvid|sn|mn|fr|mdts|cntlid|ver|oaes|nn|sgls|subnqn|ioccsz|iorcsz|maxcmd|kas|vwc|oncs) ' /tmp/idctrl.log
for f in vid sn mn fr mdts cntlid ver oaes nn sgls subnqn ioccsz iorcsz maxcmd kas; do
  ki_fact "idctrl_$f" "$(field $f /tmp/idctrl.log)"
done
NSID=$(cat /sys/block/${DEV#/dev/}/nsid 2>/dev/null || echo 1)
kh_run nvme id-ns /dev/$CTRL -n "$NSID" > /tmp/idns.log 2>&1; ki_fact idns_rc $?
cat /tmp/idns.log | head -n 40
for f in nsze ncap nuse nlbaf flbas nsfeat lbaf0; do
  ki_fact "idns_$f" "$(field $f /tmp/idns.log)"
done

# ---- data path
for spec in $BLOCK_SIZES; do   # "BS" or "BS:MB"
  bs=${spec%%:*}; mb=$IO_MB
  case $spec in *:*) mb=${spec#*:} ;; esac
  ki_check "pattern_$bs" ki_pattern "$DEV" "$mb" "$bs"
done

# ---- namespace attach / detach while connected (async event notices)
if [ "$DO_AEN" = 1 ]; then
  host_action add-ns
  if kh_wait 40 ns_count_is 2; then
    DEV2=$(ns_list | grep -vx "$DEV" | head -1)
    ki_fact ns2_bytes "$(blockdev --getsize64 "$DEV2" 2>/dev/null)"
    kh_run nvme list
    ki_pass aen_add "$DEV2 appeared"
    ki_check ns2_pattern ki_pattern "$DEV2" 4 128k
  else
    ki_fail aen_add "namespace count stays $(ns_list | wc -l): $(ns_list | tr '\n' ' ')"
  fi
  host_action remove-ns
  if kh_wait 40 ns_count_is 1; then
    ki_pass aen_remove "back to $(ns_list | tr '\n' ' ')"
  else
    ki_fail aen_remove "namespaces still: $(ns_list | tr '\n' ' ')"
  fi
  # the first namespace must still work after the change
  ki_check post_aen_io ki_pattern "$DEV" 4 4k 8
fi

# ---- disconnect
kh_run nvme disconnect -n "$NQN" > /tmp/disconnect.log 2>&1; rc=$?
cat /tmp/disconnect.log
if [ $rc -eq 0 ] && kh_wait 15 sh -c "! grep -qx '$NQN' /sys/class/nvme/*/subsysnqn 2>/dev/null"; then
  ki_pass disconnect "$(grep -i disconnected /tmp/disconnect.log)"
else
  ki_fail disconnect "rc=$rc, controllers left: $(kh_nvme_ctrl "$NQN" | tr '\n' ' ')"
fi
host_action disconnected

if [ "$PEER" = nvmet ]; then
  rm $CFG/ports/1/subsystems/$NQN; rmdir $CFG/ports/1
  echo 0 > $CFG/subsystems/$NQN/namespaces/1/enable
  rmdir $CFG/subsystems/$NQN/namespaces/1; rmdir $CFG/subsystems/$NQN
fi
ki_exit
