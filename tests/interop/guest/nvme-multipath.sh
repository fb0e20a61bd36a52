#!/bin/sh
# nvme-multipath.sh - guest script (issue 12 item 4): the kernel's native NVMe
# multipath against two blockfabric nodes exporting one subsystem (same NQN,
# same namespace identifiers, one ANA group per node).
#
# Connects to node A ($TARGET_ADDR:$PORT) and node B (:$PORT_B), checks one
# subsystem with two paths and their ANA states, one block device; then a
# pattern writer (64 KiB O_DIRECT writes, one dd each, two alternating random
# patterns, one per pass, so a lost write shows) runs while the host test
# acts on each mark:
#   KH-MARK move      A inaccessible, B optimized (the operator moves the path)  (a)
#   KH-MARK restore   A non_optimized again
#   KH-MARK kill      SIGKILL of node B, the optimized one                      (b)
#   KH-MARK restart   B restarted from its saved config, optimized again        (c)
# After each the guest waits for the kernel to see the new ANA states / path
# states. Facts: stall_{base,a,b,c}_ms (longest gap between two completed
# writes in each phase), writes, write_errors; the pattern is verified at the end.
#
# Variables: PORT, PORT_B, NQN, TARGET_ADDR (10.0.2.2), IO_MB (8), PHASE_S (6)
. /guest/interop-lib.sh
TARGET_ADDR=${TARGET_ADDR:-10.0.2.2}
IO_MB=${IO_MB:-8}
PHASE_S=${PHASE_S:-6}
NBLK=$((IO_MB * 16))  # 64 KiB blocks

ki_fact multipath_param "$(cat /sys/module/nvme_core/parameters/multipath 2> /dev/null)"
dmesg -n 7 2> /dev/null
for p in "$PORT" "$PORT_B"; do
  kh_run nvme connect -t tcp -a "$TARGET_ADDR" -s "$p" -n "$NQN" \
    --ctrl-loss-tmo=600 --reconnect-delay=1 \
    || { ki_fail connect "nvme connect port $p"; ki_exit; }
done
kh_wait 30 kh_nvme_ns "$NQN" || { ki_fail connect "no namespace"; ki_exit; }
DEV=$(kh_nvme_ns "$NQN")
ki_pass connect "$DEV"
if dmesg | grep -q -E 'disabling ANA support|Invalid MNAN|Failed to get ANA log'; then
  ki_fail ana_enabled "$(dmesg | grep -E 'ANA|MNAN' | tail -n 2)"
else
  ki_pass ana_enabled "the kernel uses ANA on both paths"
fi

# path_of PORT: the sysfs folder of the per-path namespace (nvmeXcYnZ) of the controller on PORT
ctrl_of() {
  local _c
  for _c in /sys/class/nvme/nvme*; do
    [ "$(cat "$_c/subsysnqn" 2> /dev/null)" = "$NQN" ] || continue
    case "$(cat "$_c/address" 2> /dev/null)" in
      *trsvcid=$1,* | *trsvcid=$1) basename "$_c"; return 0 ;;
    esac
  done
  return 1
}
path_of() {
  local _c _n
  _c=$(ctrl_of "$1") || return 1
  for _n in /sys/class/nvme/$_c/nvme*c*n*; do
    [ -e "$_n/stat" ] && { echo "$_n"; return 0; }
  done
  return 1
}
ana_of() { local _p; _p=$(path_of "$1") && cat "$_p/ana_state"; }
state_of() { local _c; _c=$(ctrl_of "$1") && cat "/sys/class/nvme/$_c/state"; }
want_ana() {  # want_ana PORT STATE
  [ "$(ana_of "$1")" = "$2" ]
}
want_both() { want_ana "$PORT" "$1" && want_ana "$PORT_B" "$2"; }
# sectors written through the path of PORT (the hidden per-path disk's stat)
wsec() { local _p; _p=$(path_of "$1") && awk '{print $7}' "$_p/stat" 2> /dev/null; }
show() {  # show WHAT: both paths' states, sectors written through each, recent kernel log
  kh_log "$1: A $(state_of "$PORT") $(ana_of "$PORT") wsec $(wsec "$PORT"); B $(state_of "$PORT_B") $(ana_of "$PORT_B") wsec $(wsec "$PORT_B")"
  dmesg | grep -i -E 'nvme|ana' | grep -v -E 'Reconnecting|reconnect attempt|failed to connect' | tail -n 8
}

kh_wait 20 want_both optimized non-optimized
show connected
nvme list-subsys "$DEV" > /tmp/ls.txt 2>&1
cat /tmp/ls.txt
npaths=$(grep -c -E '^ *[+]- nvme[0-9]+ tcp' /tmp/ls.txt)
nsubsys=$(grep -c '^nvme-subsys' /tmp/ls.txt)
ki_fact list_paths "$npaths"
ki_fact list_subsys "$nsubsys"
ki_fact ana_a "$(ana_of "$PORT")"
ki_fact ana_b "$(ana_of "$PORT_B")"
ndev=0
for d in /dev/nvme*n*; do
  case "$d" in */nvme*c*n*) continue ;; esac
  [ -b "$d" ] && ndev=$((ndev + 1))
done
ki_fact block_devices "$ndev"
if [ "$nsubsys" = 1 ] && [ "$npaths" = 2 ] && grep -q ' live optimized' /tmp/ls.txt \
  && grep -q ' live non-optimized' /tmp/ls.txt && [ "$ndev" = 1 ]; then
  ki_pass list_subsys "one subsystem, 2 paths (optimized + non-optimized), one block device"
else
  ki_fail list_subsys "subsystems $nsubsys paths $npaths block devices $ndev"
fi
ki_mark connected

# two patterns, the whole range written with pattern 1 first (pass "-1")
dd if=/dev/urandom of=/tmp/pat0 bs=64k count="$NBLK" status=none
dd if=/dev/urandom of=/tmp/pat1 bs=64k count="$NBLK" status=none
dd if=/tmp/pat1 of="$DEV" bs=64k count="$NBLK" oflag=direct status=none \
  || { ki_fail pattern "initial write"; ki_exit; }

writer() {
  local pass=0 blk=0 up _r
  while [ ! -e /tmp/stop ]; do
    if dd if=/tmp/pat$((pass % 2)) of="$DEV" bs=64k skip="$blk" seek="$blk" count=1 \
      oflag=direct conv=notrunc status=none 2>> /tmp/w.err; then
      read -r up _r < /proc/uptime
      echo "$up" >> /tmp/w.times
    else
      read -r up _r < /proc/uptime
      echo "E $up" >> /tmp/w.times
    fi
    blk=$((blk + 1))
    [ "$blk" -ge "$NBLK" ] && { blk=0; pass=$((pass + 1)); }
    echo "$pass $blk" > /tmp/w.pos
  done
}
: > /tmp/w.times
: > /tmp/marks
mark() {  # mark NAME: note the time, then ask the host test
  local up _r
  read -r up _r < /proc/uptime
  echo "$1 $up" >> /tmp/marks
  ki_mark "$1"
}
writer &
WPID=$!
sleep "$PHASE_S"

# (a) the operator moves the optimized path to B; A is made inaccessible
mark move
if kh_wait 30 want_both inaccessible optimized; then ki_pass ana_move "A inaccessible, B optimized"; else ki_fail ana_move "A $(ana_of "$PORT") B $(ana_of "$PORT_B")"; fi
b0=$(wsec "$PORT_B")
sleep "$PHASE_S"
b1=$(wsec "$PORT_B")
show "after the move"
ki_fact moved_sectors_b "$((b1 - b0))"
mark restore
if kh_wait 30 want_both non-optimized optimized; then ki_pass ana_restore "A non-optimized"; else ki_fail ana_restore "A $(ana_of "$PORT")"; fi
sleep 2

# (b) the optimized node B is SIGKILLed: I/O continues on A
mark kill
if kh_wait 30 sh -c "[ \"\$(cat /sys/class/nvme/$(ctrl_of "$PORT_B")/state)\" != live ]"; then
  ki_pass path_down "B: $(state_of "$PORT_B")"
else
  ki_fail path_down "B still $(state_of "$PORT_B")"
fi
a0=$(wsec "$PORT")
sleep "$PHASE_S"
a1=$(wsec "$PORT")
show "after the kill"
ki_fact failover_sectors_a "$((a1 - a0))"

# (c) B comes back (same ports, saved config) and is optimized again
mark restart
if kh_wait 60 sh -c "[ \"\$(cat /sys/class/nvme/$(ctrl_of "$PORT_B")/state)\" = live ]" \
  && kh_wait 30 want_both non-optimized optimized; then
  ki_pass path_back "B live and optimized, A non-optimized"
else
  ki_fail path_back "B $(state_of "$PORT_B") $(ana_of "$PORT_B"), A $(ana_of "$PORT")"
fi
b0=$(wsec "$PORT_B")
sleep "$PHASE_S"
b1=$(wsec "$PORT_B")
show "after the restart"
ki_fact back_sectors_b "$((b1 - b0))"
mark end
touch /tmp/stop
wait $WPID
cat /tmp/w.err 2> /dev/null | tail -n 5

errs=$(grep -c '^E' /tmp/w.times)
writes=$(grep -c -v '^E' /tmp/w.times)
ki_fact writes "$writes"
ki_fact write_errors "$errs"
if [ "$errs" = 0 ] && [ "$writes" -gt 0 ]; then ki_pass no_io_error "$writes writes"; else ki_fail no_io_error "$errs of $((writes + errs)) writes failed"; fi
# longest gap between two completed writes, per phase (the window of the later one)
awk 'NR == FNR { m[++n] = $2; name[n] = $1; next }
     /^E/ { next }
     { t = $1; if (prev != "") { g = t - prev; ph = "base";
         for (i = 1; i <= n; i++) if (t >= m[i]) ph = name[i];
         if (g > max[ph]) max[ph] = g }
       prev = t }
     END { printf "KH-FACT stall_base_ms=%d\n", max["base"] * 1000;
           printf "KH-FACT stall_a_ms=%d\n", (max["move"] > max["restore"] ? max["move"] : max["restore"]) * 1000;
           printf "KH-FACT stall_b_ms=%d\n", max["kill"] * 1000;
           printf "KH-FACT stall_c_ms=%d\n", max["restart"] * 1000 }' /tmp/marks /tmp/w.times
cat /tmp/marks

# verify: blocks before the writer's position hold this pass's pattern, the rest the last one's
read -r pass blk < /tmp/w.pos
cur=/tmp/pat$((pass % 2))
old=/tmp/pat$(((pass + 1) % 2))
dd if="$cur" of=/tmp/exp bs=64k count="$blk" status=none
dd if="$old" of=/tmp/exp bs=64k skip="$blk" seek="$blk" count=$((NBLK - blk)) status=none
sync; echo 3 > /proc/sys/vm/drop_caches
dd if="$DEV" of=/tmp/rb bs=64k count="$NBLK" iflag=direct status=none
if cmp /tmp/exp /tmp/rb; then
  ki_pass pattern "$IO_MB MiB verified (pass $pass, block $blk)"
else
  ki_fail pattern "mismatch (pass $pass, block $blk)"
fi
nvme list-subsys "$DEV" 2>&1
rm -f /tmp/pat0 /tmp/pat1 /tmp/exp /tmp/rb
kh_run nvme disconnect -n "$NQN" > /dev/null
ki_exit
