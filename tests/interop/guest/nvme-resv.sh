#!/bin/sh
# nvme-resv.sh - guest script: NVMe reservations from the Linux 6.1 host
# (nvme-cli 2.3) against a blockfabric target on the host:
#   connect (HOSTNQN/HOSTID), resv-register, resv-acquire (Write Exclusive),
#   resv-report (EDS, JSON), writes as the holder, KH-MARK second-host: the
#   host test's second host identity (our host library) gets a reservation
#   conflict on a write, then registers itself; the guest sees two
#   registrants, resv-release, resv-register unregister, disconnect.
# Variables: PORT, NQN (required), TARGET_ADDR (10.0.2.2), KEY (0xab).
. /guest/interop-lib.sh
TARGET_ADDR=${TARGET_ADDR:-10.0.2.2}
PORT=${PORT:-4420}
KEY=${KEY:-0xab}
[ -n "${NQN:-}" ] || { ki_fail setup "NQN not set"; ki_exit; }

ns_dev() {
  local _s _n
  for _s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ "$(cat "$_s/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
    for _n in "$_s"/nvme*n*; do [ -e "$_n" ] && echo "/dev/$(basename "$_n")"; done
  done | head -1
}
have_dev() { [ -n "$(ns_dev)" ]; }
# report_field KEY: a top-level number of `nvme resv-report -o json`
report() { nvme resv-report "$DEV" -n 1 --eds -o json > /tmp/rep.json 2>/tmp/rep.err; }
report_field() { tr -d ' \n' < /tmp/rep.json | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
two_regs() { report && [ "$(report_field regctl)" = 2 ]; }

kh_log "hostnqn $(cat /etc/nvme/hostnqn) hostid $(cat /etc/nvme/hostid 2>/dev/null)"
if ! kh_run nvme connect -t tcp -a "$TARGET_ADDR" -s "$PORT" -n "$NQN"; then
  ki_fail connect "nvme connect failed"; ki_exit
fi
kh_wait 30 have_dev || { ki_fail connect "no block device"; ki_exit; }
DEV=$(ns_dev)
ki_pass connect "$DEV"

kh_run nvme id-ns "$DEV" -n 1 > /tmp/idns.log 2>&1
ki_fact rescap "$(awk '$1 == "rescap" {print $3}' /tmp/idns.log)"
kh_run nvme id-ctrl "$DEV" > /tmp/idctrl.log 2>&1
ki_fact oncs "$(awk '$1 == "oncs" {print $3}' /tmp/idctrl.log)"

ki_check resv_register kh_run nvme resv-register "$DEV" -n 1 --nrkey="$KEY" --rrega=0
ki_check resv_acquire kh_run nvme resv-acquire "$DEV" -n 1 --crkey="$KEY" --rtype=1 --racqa=0
if report; then
  cat /tmp/rep.json
  ki_pass resv_report "$(tr -d '\n' < /tmp/rep.json | cut -c1-200)"
else
  cat /tmp/rep.err; ki_fail resv_report "nvme resv-report failed"
fi
ki_fact report_rtype "$(report_field rtype)"
ki_fact report_regctl "$(report_field regctl)"
ki_fact report_json "$(tr -d ' \n' < /tmp/rep.json)"
ki_check holder_write ki_pattern "$DEV" 4 4k

# the second host identity acts on the host side, then registers itself
ki_mark second-host
if kh_wait 60 two_regs; then
  ki_pass second_registered "$(tr -d ' \n' < /tmp/rep.json | cut -c1-300)"
else
  ki_fail second_registered "regctl $(report_field regctl)"
fi
ki_check holder_write_after ki_pattern "$DEV" 4 4k 4

ki_check resv_release kh_run nvme resv-release "$DEV" -n 1 --crkey="$KEY" --rtype=1 --rrela=0
report && ki_fact released_rtype "$(report_field rtype)"
ki_mark released
ki_check resv_unregister kh_run nvme resv-register "$DEV" -n 1 --crkey="$KEY" --rrega=1
report && ki_fact final_regctl "$(report_field regctl)"

kh_run nvme disconnect -n "$NQN" > /dev/null 2>&1
if [ $? -eq 0 ]; then ki_pass disconnect; else ki_fail disconnect "nvme disconnect failed"; fi
ki_exit
