#!/bin/sh
# reactor-kill-io.sh - guest script: a kernel host (PROTO=nvme: nvme-tcp with
# ctrl_loss_tmo / reconnect_delay; PROTO=iscsi: open-iscsi session recovery
# with replacement_timeout) writes an IO_MB MiB O_DIRECT pattern with dd
# while the host test SIGKILLs the target's reactor(s) (on "KH-MARK kill");
# the kernel must reconnect, dd must complete, and the pattern must read back
# byte for byte. Facts: reconnects seen in the kernel log.
#
# Variables: PROTO, PORT, TARGET_ADDR (10.0.2.2), NQN / IQN, IO_MB (48),
#   BS (64k), CTRL_LOSS_TMO (120), RECONNECT_DELAY (1), REPLACEMENT_TIMEOUT (120)
. /guest/interop-lib.sh
TARGET_ADDR=${TARGET_ADDR:-10.0.2.2}
PROTO=${PROTO:-nvme}
IO_MB=${IO_MB:-48}
BS=${BS:-64k}
CTRL_LOSS_TMO=${CTRL_LOSS_TMO:-120}
RECONNECT_DELAY=${RECONNECT_DELAY:-1}
REPLACEMENT_TIMEOUT=${REPLACEMENT_TIMEOUT:-120}

DEV=
if [ "$PROTO" = nvme ]; then
  kh_run nvme connect -t tcp -a "$TARGET_ADDR" -s "$PORT" -n "$NQN" \
    --ctrl-loss-tmo="$CTRL_LOSS_TMO" --reconnect-delay="$RECONNECT_DELAY" \
    || { ki_fail connect "nvme connect"; ki_exit; }
  kh_wait 30 kh_nvme_ns "$NQN" || { ki_fail connect "no namespace"; ki_exit; }
  DEV=$(kh_nvme_ns "$NQN")
  CTRL=$(kh_nvme_ctrl "$NQN" | head -1)
  ki_fact ctrl "$CTRL"
else
  setsid iscsid -f > /tmp/iscsid.log 2>&1 &
  kh_wait 10 grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix || { cat /tmp/iscsid.log; ki_fail connect "iscsid"; ki_exit; }
  kh_run iscsiadm -m discovery -t sendtargets -p "$TARGET_ADDR:$PORT" > /tmp/disc.log 2>&1
  cat /tmp/disc.log
  tpgt=$(awk -v t="$IQN" '$2==t{print $1; exit}' /tmp/disc.log); tpgt=${tpgt##*,}
  iscsiadm -m node -o delete -T "$IQN" > /dev/null 2>&1
  iscsiadm -m node -o new -T "$IQN" -p "$TARGET_ADDR:$PORT,${tpgt:-1}" > /dev/null
  iscsiadm -m node -T "$IQN" -p "$TARGET_ADDR:$PORT" -o update \
    -n node.session.timeo.replacement_timeout -v "$REPLACEMENT_TIMEOUT"
  kh_run iscsiadm -m node -T "$IQN" -p "$TARGET_ADDR:$PORT" --login || { tail /tmp/iscsid.log; ki_fail connect "login"; ki_exit; }
  kh_wait 30 kh_iscsi_disks || { ki_fail connect "no SCSI disk"; ki_exit; }
  DEV=$(kh_iscsi_disks | head -1)
  # the disk's command timeout must outlast the recovery
  echo 180 > /sys/block/${DEV#/dev/}/device/timeout 2> /dev/null
fi
ki_pass connect "$DEV"

dd if=/dev/urandom of=/tmp/pat bs=1M count="$IO_MB" status=none
printf 'BLOCKFABRIC-REACTOR-KILL %s ' "$(date +%s)" | dd of=/tmp/pat conv=notrunc status=none
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/tmp/pat of="$DEV" bs="$BS" oflag=direct conv=fsync status=none 2> /tmp/dd.err &
DD=$!
sleep 1
kill -0 $DD 2> /dev/null || kh_log "dd ended before the kill (too fast): raise IO_MB"
ki_fact dd_running_at_kill "$(kill -0 $DD 2> /dev/null && echo 1 || echo 0)"
ki_mark kill
wait $DD; rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
cat /tmp/dd.err
kh_log "dd of ${IO_MB} MiB took $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
if [ $rc -eq 0 ]; then ki_pass dd_write "rc=0"; else ki_fail dd_write "dd rc=$rc"; fi

if [ "$PROTO" = nvme ]; then
  n=$(dmesg | grep -c 'Successfully reconnected')
  ki_fact reconnects "$n"
  if [ "$n" -ge 1 ]; then ki_pass reconnected "$n reconnect(s)"; else ki_fail reconnected "no reconnect in the kernel log"; fi
  ki_fact ctrl_state "$(cat /sys/class/nvme/$CTRL/state 2> /dev/null)"
else
  n=$(dmesg | grep -c -E 'detected conn error|conn error')
  ki_fact conn_errors "$n"
  iscsiadm -m session -P 1 > /tmp/sess.log 2>&1
  grep -E 'State|Target' /tmp/sess.log
  if [ "$n" -ge 1 ] && grep -q 'Session State: LOGGED_IN' /tmp/sess.log; then
    ki_pass reconnected "$n connection error(s), session LOGGED_IN"
  else
    ki_fail reconnected "conn errors $n, $(grep 'Session State' /tmp/sess.log)"
  fi
fi
dmesg | grep -E 'nvme|connection|session|recover' | tail -n 15

sync; echo 3 > /proc/sys/vm/drop_caches
dd if="$DEV" of=/tmp/rb bs=1M count="$IO_MB" iflag=direct status=none
if cmp /tmp/pat /tmp/rb; then ki_pass pattern "$IO_MB MiB verified"; else ki_fail pattern "md5 w=$(md5sum < /tmp/pat | cut -c1-32) r=$(md5sum < /tmp/rb | cut -c1-32)"; fi
rm -f /tmp/pat /tmp/rb

if [ "$PROTO" = nvme ]; then
  kh_run nvme disconnect -n "$NQN" > /dev/null
else
  iscsiadm -m node --logoutall=all > /dev/null 2>&1
  iscsiadm -k 0 > /dev/null 2>&1
fi
ki_exit
