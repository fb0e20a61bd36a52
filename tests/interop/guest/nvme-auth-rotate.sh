#!/bin/sh
# nvme-auth-rotate.sh - guest script (6.12 kernel): DH-HMAC-CHAP key rotation
# with the kernel host connected.  Connect with DHCHAP_SECRET (target on the
# host at TARGET_ADDR:PORT), pattern I/O, KH-MARK rotate (the host test runs
# nvmf_subsystem_set_keys to the new key), then the kernel re-authenticates
# every queue of the live controller with DHCHAP_NEW_SECRET (written to
# /sys/class/nvme/nvmeX/dhchap_secret), pattern I/O again on the same
# controller, disconnect.  With DHCHAP_WRONG_CTRL_SECRET first a connect
# that expects that controller secret must be refused by the kernel host.
. /guest/interop-lib.sh
TARGET_ADDR=${TARGET_ADDR:-10.0.2.2}
[ -z "${DHCHAP_DHGROUP:-}" ] || kh_nvme_dh_prepare $DHCHAP_DHGROUP
# the kernel refuses our controller when it expects another controller secret
if [ -n "${DHCHAP_WRONG_CTRL_SECRET:-}" ]; then
  if kh_nvme_auth_refused "$NQN" kh_nvme_tcp_connect_auth "$TARGET_ADDR" "$PORT" "$NQN" "$DHCHAP_SECRET" "$DHCHAP_WRONG_CTRL_SECRET"; then
    if grep -q 'qid 0: controller authentication failed' /tmp/kh-refused.log; then
      ki_pass wrong_ctrl_refused "$(grep 'controller authentication failed' /tmp/kh-refused.log | head -1)"
    else
      ki_fail wrong_ctrl_refused "refused, but not by the host's check: $(tr '\n' ' ' < /tmp/kh-refused.log)"
    fi
  else
    ki_fail wrong_ctrl_refused "the connect was not refused as it should"
  fi
fi
f0=$(dmesg | grep -c 'authentication failed')
DEV=$(kh_nvme_tcp_connect_auth "$TARGET_ADDR" "$PORT" "$NQN" "$DHCHAP_SECRET") || { ki_fail connect "$(dmesg | tail -5 | tr '\n' ' ')"; ki_exit; }
CTRL=$(kh_nvme_ctrl "$NQN" | head -1)
ki_pass connect "$CTRL $DEV"
ki_check pattern_before ki_pattern "$DEV" 4 4k
ki_mark rotate
sleep 4   # the host test acts on the mark at once (one RPC)
n0=$(dmesg | grep -c "$CTRL: qid 0: authenticated with hash")
printf '%s' "$DHCHAP_NEW_SECRET" > /sys/class/nvme/$CTRL/dhchap_secret || ki_fail reauth "cannot write dhchap_secret"
if kh_wait 30 sh -c "[ \$(dmesg | grep -c '$CTRL: qid 0: authenticated with hash') -gt $n0 ]"; then
  ki_pass reauth "$(dmesg | grep "$CTRL: qid 0: authenticated with hash" | tail -1)"
else
  ki_fail reauth "$(dmesg | tail -8 | tr '\n' ' ')"
fi
sleep 2   # the I/O queues re-authenticate after the admin queue
ki_fact ctrl_state "$(cat /sys/class/nvme/$CTRL/state)"
ki_fact same_ctrl "$(kh_nvme_ctrl "$NQN" | head -1)"
ki_check pattern_after ki_pattern "$DEV" 4 4k 8
ki_fact auth_failed "$(( $(dmesg | grep -c 'authentication failed') - f0 ))"   # since the refused step
if kh_run nvme disconnect -n "$NQN" >/dev/null; then ki_pass disconnect; else ki_fail disconnect; fi
ki_exit
