#!/bin/sh
# iscsi-interop.sh - guest script: open-iscsi 2.1.8 (iscsid + iscsi_tcp) against
# one portal serving up to three targets, all checks in one boot:
#   sendtargets discovery; IQN_OPEN without CHAP: O_DIRECT pattern at each of
#   BLOCK_SIZES, logout; IQN_CHAP: wrong secret refused, one-way CHAP login +
#   I/O; IQN_MUTUAL: mutual CHAP login + I/O; IQN_OPEN again with
#   HeaderDigest/DataDigest=CRC32C: negotiated values checked + pattern.
# Variables: PORT (3260), TARGET_ADDR (10.0.2.2), IQN_OPEN (required),
#   IQN_CHAP / IQN_MUTUAL (optional; skipped when empty), CHAP_USER/CHAP_PASS
#   (initiator's secret), MCHAP_USER/MCHAP_PASS (target's secret, mutual CHAP),
#   IO_MB (64), BLOCK_SIZES ("4k 1M"), DIGEST_IO_MB (64), DIGEST_BLOCK_SIZES ("1M"),
#   DIGEST_4K_MB (16; 4 KiB pattern under digests, 0 = none: CRC32C is slow under TCG),
#   SMALL_IO_MB (4; the CHAP sessions' I/O)
. /guest/interop-lib.sh
TARGET_ADDR=${TARGET_ADDR:-10.0.2.2}
PORT=${PORT:-3260}
PORTAL=$TARGET_ADDR:$PORT
IO_MB=${IO_MB:-64}
BLOCK_SIZES=${BLOCK_SIZES:-4k 1M}
DIGEST_IO_MB=${DIGEST_IO_MB:-64}
DIGEST_BLOCK_SIZES=${DIGEST_BLOCK_SIZES:-1M}
DIGEST_4K_MB=${DIGEST_4K_MB:-16}
SMALL_IO_MB=${SMALL_IO_MB:-4}
[ -n "${IQN_OPEN:-}" ] || { ki_fail setup "IQN_OPEN not set"; ki_exit; }

kh_log "initiator $(cut -d= -f2 /etc/iscsi/initiatorname.iscsi), portal $PORTAL"
setsid iscsid -f > /tmp/iscsid.log 2>&1 &
ISCSID_PID=$!
kh_wait 10 grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix || { cat /tmp/iscsid.log; ki_fail setup "iscsid"; ki_exit; }

no_session() { iscsiadm -m session > /dev/null 2>&1; [ $? -eq 21 ]; }
finish() {
  iscsiadm -m node --logoutall=all > /dev/null 2>&1
  iscsiadm -k 0 > /dev/null 2>&1 || kill $ISCSID_PID 2> /dev/null
  kh_wait 5 sh -c "! kill -0 $ISCSID_PID" || kill -9 $ISCSID_PID 2> /dev/null
  ki_exit
}

# ---- discovery
kh_run iscsiadm -m discovery -t sendtargets -p "$PORTAL" > /tmp/disc.log 2>&1
rc=$?
cat /tmp/disc.log
ki_fact disc_targets "$(awk 'NF==2 && $1 ~ /,[0-9]+$/ {print $2}' /tmp/disc.log | sort | tr '\n' ' ')"
missing=""
for t in $IQN_OPEN ${IQN_CHAP:-} ${IQN_MUTUAL:-}; do
  awk -v t="$t" '$2==t{f=1} END{exit !f}' /tmp/disc.log || missing="$missing $t"
done
if [ $rc -eq 0 ] && [ -z "$missing" ]; then ki_pass discovery; else ki_fail discovery "rc=$rc missing:$missing"; fi

# node_new IQN: node record for IQN on $PORTAL with the discovered TPGT
node_new() {
  local _line _tpgt=1
  _line=$(awk -v t="$1" '$2==t{print $1; exit}' /tmp/disc.log)
  [ -n "$_line" ] && _tpgt=${_line##*,}
  iscsiadm -m node -o delete -T "$1" > /dev/null 2>&1
  iscsiadm -m node -o new -T "$1" -p "$PORTAL,$_tpgt" > /dev/null
}
node_set() { iscsiadm -m node -T "$1" -p "$PORTAL" -o update -n "$2" -v "$3"; }
# session_io NAME IQN MB "BS...": login (node already configured), find the
# disk, pattern at each BS, logout; results NAME_login NAME_bs NAME_logout
session_io() {
  local _n=$1 _iqn=$2 _mb=$3 _bss=$4 _dev _bs
  if ! kh_run iscsiadm -m node -T "$_iqn" -p "$PORTAL" --login; then
    tail -n 5 /tmp/iscsid.log; ki_fail "${_n}_login" "iscsiadm --login failed"; return 1
  fi
  if ! kh_wait 30 kh_iscsi_disks; then
    iscsiadm -m session -P 3; ki_fail "${_n}_login" "no SCSI disk appeared"
    iscsiadm -m node -T "$_iqn" -p "$PORTAL" --logout; return 1
  fi
  _dev=$(kh_iscsi_disks | head -1)
  ki_pass "${_n}_login" "$_dev"
  iscsiadm -m session -P 2 > /tmp/sess.log 2>&1
  grep -E 'Target:|HeaderDigest|DataDigest|MaxRecvDataSegmentLength|MaxBurstLength|FirstBurstLength|ImmediateData|InitialR2T|CHAP' /tmp/sess.log
  ki_fact "${_n}_header_digest" "$(awk '/HeaderDigest:/{print $2; exit}' /tmp/sess.log)"
  ki_fact "${_n}_data_digest" "$(awk '/DataDigest:/{print $2; exit}' /tmp/sess.log)"
  ki_fact "${_n}_bytes" "$(blockdev --getsize64 "$_dev")"
  ki_fact "${_n}_vendor" "$(cat /sys/block/${_dev#/dev/}/device/vendor 2>/dev/null | tr -s ' ')"
  ki_fact "${_n}_model" "$(cat /sys/block/${_dev#/dev/}/device/model 2>/dev/null | tr -s ' ')"
  for _bs in $_bss; do ki_check "${_n}_pattern_$_bs" ki_pattern "$_dev" "$_mb" "$_bs"; done
  [ "$_n" = digest ] && [ "${DIGEST_4K_MB:-0}" -gt 0 ] && \
    ki_check "${_n}_pattern_4k" ki_pattern "$_dev" "$DIGEST_4K_MB" 4k
  if kh_run iscsiadm -m node -T "$_iqn" -p "$PORTAL" --logout && kh_wait 10 no_session; then
    ki_pass "${_n}_logout"
  else
    ki_fail "${_n}_logout" "session left: $(iscsiadm -m session 2>&1)"
  fi
}

# ---- no CHAP, no digests
node_new "$IQN_OPEN"
session_io plain "$IQN_OPEN" "$IO_MB" "$BLOCK_SIZES"

# ---- one-way CHAP: a wrong secret is refused, the right one logs in
if [ -n "${IQN_CHAP:-}" ]; then
  node_new "$IQN_CHAP"
  node_set "$IQN_CHAP" node.session.auth.authmethod CHAP
  node_set "$IQN_CHAP" node.session.auth.username "$CHAP_USER"
  node_set "$IQN_CHAP" node.session.auth.password "wrong-$CHAP_PASS"
  kh_run iscsiadm -m node -T "$IQN_CHAP" -p "$PORTAL" --login; rc=$?
  if [ $rc -ne 0 ] && no_session; then ki_pass chap_bad_secret "refused, iscsiadm rc=$rc"
  else ki_fail chap_bad_secret "login with a wrong secret: rc=$rc"; iscsiadm -m node --logoutall=all; fi
  node_set "$IQN_CHAP" node.session.auth.password "$CHAP_PASS"
  session_io chap "$IQN_CHAP" "$SMALL_IO_MB" "1M"
fi

# ---- mutual CHAP (the target proves itself with MCHAP_USER/MCHAP_PASS)
if [ -n "${IQN_MUTUAL:-}" ]; then
  node_new "$IQN_MUTUAL"
  node_set "$IQN_MUTUAL" node.session.auth.authmethod CHAP
  node_set "$IQN_MUTUAL" node.session.auth.username "$CHAP_USER"
  node_set "$IQN_MUTUAL" node.session.auth.password "$CHAP_PASS"
  node_set "$IQN_MUTUAL" node.session.auth.username_in "$MCHAP_USER"
  node_set "$IQN_MUTUAL" node.session.auth.password_in "$MCHAP_PASS"
  session_io mutual "$IQN_MUTUAL" "$SMALL_IO_MB" "1M"
fi

# ---- header + data digests (CRC32C) on the open target
node_new "$IQN_OPEN"
node_set "$IQN_OPEN" node.conn[0].iscsi.HeaderDigest CRC32C
node_set "$IQN_OPEN" node.conn[0].iscsi.DataDigest CRC32C
session_io digest "$IQN_OPEN" "$DIGEST_IO_MB" "$DIGEST_BLOCK_SIZES"

finish
