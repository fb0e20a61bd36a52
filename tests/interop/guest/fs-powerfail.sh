#!/bin/sh
# fs-powerfail.sh - guest script (GUEST_HOSTROOT=1: the host's e2fsprogs and
# python3 on the guest kernel): ext4 on a blockfabric volume across a power loss.
#
#   PHASE=write  connect (PROTO=nvme|iscsi), mkfs.ext4, mount, write FILES
#                files of FILE_KB KiB, each fsync()ed (file, then its
#                directory); print their sha256 (KH-FACT sum_NAME=...); then
#                UNSYNCED_MB MiB with O_DIRECT and no flush (it reaches only
#                the target's volatile cache); print "KH-MARK power-loss" and
#                wait. The host test kills this VM (a host losing power: its
#                page cache is gone, no unmount, no final flush) and then
#                power-fails the target's write cache.
#   PHASE=check  connect, mount (the kernel replays the journal), compare
#                every file listed in /guest/sums.txt ("NAME SHA256" lines),
#                umount, e2fsck -fn (must be clean).
#
# Variables: PROTO, PORT, TARGET_ADDR (10.0.2.2), NQN (nvme) or IQN (iscsi),
#   FILES (24), FILE_KB (96), UNSYNCED_MB (4).
. /guest/interop-lib.sh
TARGET_ADDR=${TARGET_ADDR:-10.0.2.2}
PROTO=${PROTO:-nvme}
FILES=${FILES:-24}
FILE_KB=${FILE_KB:-96}
UNSYNCED_MB=${UNSYNCED_MB:-4}
MNT=/mnt/bf
PHASE=${PHASE:-write}

modprobe ext4 2> /dev/null
grep -qw ext4 /proc/filesystems || { ki_fail setup "no ext4 in this kernel"; ki_exit; }
for t in mkfs.ext4 e2fsck python3 sha256sum; do
  command -v $t > /dev/null 2>&1 || { ki_fail setup "$t missing (GUEST_HOSTROOT=1 needed)"; ki_exit; }
done

# ---- connect: DEV is the exported volume
DEV=
if [ "$PROTO" = nvme ]; then
  kh_run nvme connect -t tcp -a "$TARGET_ADDR" -s "$PORT" -n "$NQN" ${NVME_CONNECT_OPTS:-} \
    || { ki_fail connect "nvme connect"; ki_exit; }
  kh_wait 30 kh_nvme_ns "$NQN" || { ki_fail connect "no namespace"; ki_exit; }
  DEV=$(kh_nvme_ns "$NQN")
else
  mkdir -p /run/lock/iscsi
  setsid iscsid -f > /tmp/iscsid.log 2>&1 &
  kh_wait 10 grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix || { cat /tmp/iscsid.log; ki_fail connect "iscsid"; ki_exit; }
  kh_run iscsiadm -m discovery -t sendtargets -p "$TARGET_ADDR:$PORT" > /tmp/disc.log 2>&1
  cat /tmp/disc.log
  tpgt=$(awk -v t="$IQN" '$2==t{print $1; exit}' /tmp/disc.log); tpgt=${tpgt##*,}
  iscsiadm -m node -o delete -T "$IQN" > /dev/null 2>&1
  iscsiadm -m node -o new -T "$IQN" -p "$TARGET_ADDR:$PORT,${tpgt:-1}" > /dev/null
  kh_run iscsiadm -m node -T "$IQN" -p "$TARGET_ADDR:$PORT" --login || { tail /tmp/iscsid.log; ki_fail connect "login"; ki_exit; }
  kh_wait 30 kh_iscsi_disks || { ki_fail connect "no SCSI disk"; ki_exit; }
  DEV=$(kh_iscsi_disks | head -1)
fi
B=${DEV#/dev/}
ki_pass connect "$DEV"
ki_fact write_cache "$(cat /sys/block/$B/queue/write_cache 2>/dev/null)"
ki_fact fua "$(cat /sys/block/$B/queue/fua 2>/dev/null)"

if [ "$PHASE" = write ]; then
  kh_run mkfs.ext4 -F -q -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$DEV" \
    && ki_pass mkfs || { ki_fail mkfs "mkfs.ext4 $DEV"; ki_exit; }
  mkdir -p $MNT
  kh_run mount -t ext4 -o barrier=1 "$DEV" $MNT || { ki_fail mount "mount"; ki_exit; }
  ki_pass mount "$(grep " $MNT " /proc/mounts)"
  # every file: write, fsync(file), fsync(directory); then its checksum
  python3 - "$MNT/synced" "$FILES" "$FILE_KB" << 'EOF' > /tmp/sums.log 2>&1
import hashlib, os, sys
d, n, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.mkdir(d)
dfd = os.open(os.path.dirname(d), os.O_RDONLY)
os.fsync(dfd)
os.close(dfd)
dfd = os.open(d, os.O_RDONLY)
for i in range(n):
    name = f"f{i:03d}"
    data = os.urandom(kb * 1024 + i * 517)  # sizes not block multiples
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.fsync(dfd)
    print(f"KH-FACT sum_{name}={hashlib.sha256(data).hexdigest()}", flush=True)
os.close(dfd)
print("synced-all", flush=True)
EOF
  rc=$?
  cat /tmp/sums.log
  if [ $rc -eq 0 ] && grep -q synced-all /tmp/sums.log; then ki_pass fsync_files "$FILES files"; else ki_fail fsync_files "rc=$rc"; fi
  # unsynced data: a file whose data goes to the device (O_DIRECT) with no
  # flush, plus dirty metadata in this guest's page cache - both may be lost
  dd if=/dev/urandom of=$MNT/unsynced bs=1M count="$UNSYNCED_MB" oflag=direct status=none \
    && ki_pass unsynced_write || ki_fail unsynced_write "dd"
  kh_log "$(df -k $MNT | tail -1)"
  ki_mark power-loss
  sleep 600   # the host test kills the VM here
  ki_fail power-loss "the VM was not killed"
  ki_exit
fi

# ---- PHASE=check
mkdir -p $MNT
if kh_run mount -t ext4 "$DEV" $MNT; then
  ki_pass mount "$(dmesg | grep -E 'EXT4-fs .*(recovery|mounted)' | tail -3 | tr '\n' ' ')"
else
  dmesg | tail -n 20; ki_fail mount "mount after the power loss"; ki_exit
fi
ok=0; bad=""
while read -r name sum; do
  [ -n "$name" ] || continue
  got=$(sha256sum "$MNT/synced/$name" 2> /dev/null | cut -d' ' -f1)
  if [ "$got" = "$sum" ]; then ok=$((ok + 1)); else bad="$bad $name"; fi
done < /guest/sums.txt
ki_fact files_ok "$ok"
if [ -z "$bad" ] && [ "$ok" -gt 0 ]; then ki_pass files_intact "$ok fsync()ed files"; else ki_fail files_intact "lost or changed:$bad"; fi
ls -la $MNT $MNT/synced | head -n 40
kh_run umount $MNT || ki_fail umount "umount"
kh_run e2fsck -fn "$DEV" > /tmp/fsck.log 2>&1; rc=$?
cat /tmp/fsck.log
ki_fact fsck_rc "$rc"
if [ $rc -eq 0 ]; then ki_pass fsck "clean"; else ki_fail fsck "e2fsck -fn rc=$rc"; fi
if [ "$PROTO" = nvme ]; then
  kh_run nvme disconnect -n "$NQN" > /dev/null
else
  iscsiadm -m node --logoutall=all > /dev/null 2>&1
  iscsiadm -k 0 > /dev/null 2>&1
fi
ki_exit
