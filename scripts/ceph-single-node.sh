#!/bin/sh
# A throw-away single-node Ceph cluster (Debian 12's ceph 16) for trying
# blockfabric's RBD bdev and for its tests: one ceph-mon and one ceph-osd
# (bluestore on a sparse file), bound to 127.0.0.1, everything (config,
# keyring, data, logs, pid files, admin sockets) inside one folder. No ceph-mgr:
# librbd I/O, `rbd create/resize/bench` and pool commands do not need one.
#
#   scripts/ceph-single-node.sh up      DIR [POOL [IMAGE SIZE_MB]]   create (first time) or restart, wait until I/O works
#   scripts/ceph-single-node.sh stop    DIR                          stop the daemons, keep the data (up restarts them)
#   scripts/ceph-single-node.sh destroy DIR                          stop and delete DIR
#   scripts/ceph-single-node.sh status  DIR
#
# After `up`, DIR/ceph.conf and DIR/keyring (client.admin) are what
# `bdev_rbd_register_cluster NAME --config-file DIR/ceph.conf --key-file DIR/keyring`
# takes. CEPH_MON_PORT chooses the monitor port (default: a free one).
# Memory: the OSD's caches are capped (~300-400 MiB RSS together with the monitor).
set -eu
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,18p' "$0" >&2; exit 2; }
for t in ceph-mon ceph-osd ceph monmaptool ceph-authtool; do
  command -v "$t" >/dev/null 2>&1 || { echo "ceph-single-node: $t not found (apt-get install ceph-mon ceph-osd ceph-common)" >&2; exit 3; }
done
conf="$dir/ceph.conf"
C="ceph -c $conf --connect-timeout 10"

pids() { cat "$dir"/run/*.pid 2>/dev/null || true; }

stop() {
  for p in $(pids); do kill "$p" 2>/dev/null || true; done
  i=0
  while [ $i -lt 100 ]; do
    alive=""
    for p in $(pids); do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
    [ -z "$alive" ] && break
    sleep 0.1; i=$((i + 1))
  done
  for p in $(pids); do kill -9 "$p" 2>/dev/null || true; done
  rm -f "$dir"/run/*.pid
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

create() {
  mkdir -p "$dir/mon" "$dir/osd" "$dir/run" "$dir/log"
  port=${CEPH_MON_PORT:-$(free_port)}
  fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
mon initial members = a
public network = 127.0.0.1/32
ms bind msgr2 = false
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
log to stderr = false
err to stderr = false
mon cluster log file = $dir/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
[mon]
mon data = $dir/mon/\$cluster-\$id
[osd]
osd data = $dir/osd/\$cluster-\$id
keyring = $dir/osd/\$cluster-\$id/keyring
osd objectstore = bluestore
bluestore block path = $dir/osd/\$cluster-\$id/block.img
bluestore block create = true
bluestore block size = 4294967296
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096
osd max object name len = 256
osd max object namespace len = 64
osd op num shards = 1
osd op num threads per shard = 2
EOF
  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$dir/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$port]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring"
  ceph-mon -c "$conf" -i a
  osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  id=$($C osd new "$osd_uuid")
  mkdir -p "$dir/osd/ceph-$id"
  ceph-authtool --create-keyring "$dir/osd/ceph-$id/keyring" --gen-key -n "osd.$id" >/dev/null
  $C auth add "osd.$id" osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
    -i "$dir/osd/ceph-$id/keyring" >/dev/null 2>&1
  ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$osd_uuid" >"$dir/log/osd-mkfs.log" 2>&1 ||
    { cat "$dir/log/osd-mkfs.log" >&2; exit 1; }
  $C osd crush add "osd.$id" 1.0 host=localhost root=default >/dev/null 2>&1 || true
  ceph-osd -c "$conf" -i "$id"
}

restart() {
  ceph-mon -c "$conf" -i a
  for d in "$dir"/osd/ceph-*; do
    ceph-osd -c "$conf" -i "${d##*-}"
  done
}

wait_up() {
  i=0
  until $C osd stat 2>/dev/null | grep -q "1 up"; do
    i=$((i + 1)); [ $i -gt 120 ] && { echo "ceph-single-node: OSD not up after 60 s" >&2; exit 1; }
    sleep 0.5
  done
}

case "$cmd" in
up)
  if [ -f "$conf" ]; then stop; restart; else create; fi
  wait_up
  pool=${3:-}
  if [ -n "$pool" ]; then
    $C osd pool ls | grep -qx "$pool" || {
      $C osd pool create "$pool" 8 8 >/dev/null 2>&1
      $C osd pool application enable "$pool" rbd >/dev/null 2>&1
    }
    image=${4:-}
    if [ -n "$image" ]; then
      rbd -c "$conf" info "$pool/$image" >/dev/null 2>&1 ||
        rbd -c "$conf" create --size "${5:-256}" "$pool/$image"
    fi
    # a write that completes proves the PGs are active
    i=0
    until timeout 10 rados -c "$conf" -p "$pool" put _bf_probe "$conf" 2>/dev/null; do
      i=$((i + 1)); [ $i -gt 60 ] && { echo "ceph-single-node: pool $pool not writable" >&2; exit 1; }
      sleep 0.5
    done
    rados -c "$conf" -p "$pool" rm _bf_probe >/dev/null 2>&1 || true
  fi
  echo "ceph up: config $conf keyring $dir/keyring"
  ;;
stop) stop ;;
destroy)
  stop
  rm -rf "$dir"
  ;;
status) $C -s ;;
*) echo "ceph-single-node: unknown command $cmd" >&2; exit 2 ;;
esac
