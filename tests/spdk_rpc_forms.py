"""SPDK rpc.py's argument forms of every method blockfabric implements that SPDK has.

Recorded by hand from SPDK's python/spdk/cli/{app,misc,log,iobuf,sock,accel,keyring,
vmd,bdev,nvmf,iscsi}.py (master of 2025, where scripts/rpc.py builds its
parser from), one string per method:

    name        a positional argument (rpc.py's dest), in order
    name?       an optional positional (nargs="?")
    -b/--name   an option with its short and long form; "!" at the end: required
    --trtype    an option with only a long form, -i one with only a short form
    --[no-]x    a BooleanOptionalAction (--x / --no-x)

Long options are compared with "_" read as "-" (rpc.py spells a few with
underscores, e.g. --min_cntlid; both CLIs accept both). rpc.py's deprecated
spellings that it keeps next to the current ones (--enable-recv-pipe next to
--recv-pipe) are not recorded. tests/control/test_rpc_declarations.py compares
each with the method's declaration in the registry.
"""

from __future__ import annotations

SPDK_FORMS: dict[str, str] = {
    # --- app.py / misc.py / log.py ------------------------------------------
    "rpc_get_methods": "-c/--current -i/--include-aliases",
    "spdk_get_version": "",
    "framework_get_reactors": "",
    "framework_get_subsystems": "",
    "framework_get_config": "name",
    "save_config": "-i/--indent -s/--subsystems",
    "load_config": "-i/--include-aliases -j/--json-conf",
    "log_set_level": "level",
    "log_get_level": "",
    # --- trace.py -------------------------------------------------------------
    "trace_enable_tpoint_group": "name",
    "trace_disable_tpoint_group": "name",
    "trace_get_tpoint_group_mask": "",
    "trace_get_info": "",
    # --- iobuf.py / sock.py / accel.py / keyring.py / vmd.py -----------------
    "iobuf_set_options": (
        "--small-pool-count --large-pool-count --small-bufsize --large-bufsize --enable-numa"
    ),
    "iobuf_get_stats": "",
    "sock_impl_set_options": (
        "-i/--impl! -r/--recv-buf-size -s/--send-buf-size -p/--enable-placement-id "
        "--[no-]recv-pipe --[no-]quickack --[no-]zerocopy-send-server "
        "--[no-]zerocopy-send-client --zerocopy-threshold --tls-version --[no-]ktls"
    ),
    "sock_set_default_impl": "-i/--impl!",
    "accel_set_options": (
        "--small-cache-size --large-cache-size --task-count --sequence-count --buf-count"
    ),
    "keyring_file_add_key": "name path",
    "keyring_file_remove_key": "name",
    "keyring_get_keys": "-n/--name",
    "vmd_enable": "",
    # --- bdev.py ------------------------------------------------------------
    "bdev_set_options": (
        "-p/--bdev-io-pool-size -c/--bdev-io-cache-size --[no-]auto-examine "
        "--iobuf-small-cache-size --iobuf-large-cache-size"
    ),
    "bdev_wait_for_examine": "",
    "bdev_get_bdevs": "-b/--name -t/--timeout-ms",
    "bdev_get_iostat": "-c/--per-channel --reset-mode -b/--name --names",
    "bdev_malloc_create": (
        "total_size block_size -b/--name -u/--uuid -p/--physical-block-size "
        "-o/--optimal-io-boundary -m/--md-size -i/--md-interleave -t/--dif-type "
        "-d/--dif-is-head-of-md -f/--dif-pi-format -n/--numa-id"
    ),
    "bdev_malloc_delete": "name",
    "bdev_null_create": (
        "name total_size block_size -u/--uuid -p/--physical-block-size -m/--md-size "
        "-t/--dif-type -d/--dif-is-head-of-md -f/--dif-pi-format "
        "-a/--preferred-write-alignment -g/--preferred-write-granularity "
        "-s/--optimal-write-size -c/--preferred-unmap-alignment "
        "-r/--preferred-unmap-granularity"
    ),
    "bdev_null_delete": "name",
    "bdev_aio_create": "filename name block_size? -r/--readonly --fallocate -u/--uuid --no-wait",
    "bdev_aio_delete": "name",
    "bdev_nvme_attach_controller": (
        "-b/--name! -t/--trtype! -a/--traddr! -f/--adrfam -s/--trsvcid -p/--priority "
        "-n/--subnqn -q/--hostnqn -i/--hostaddr -c/--hostsvcid -r/--prchk-reftag "
        "-g/--prchk-guard -e/--hdgst -d/--ddgst --fabrics-timeout -x/--multipath "
        "--num-io-queues -l/--ctrlr-loss-timeout-sec -o/--reconnect-delay-sec "
        "-u/--fast-io-fail-timeout-sec -k/--psk -m/--max-bdevs --dhchap-key "
        "--dhchap-ctrlr-key -U/--allow-unrecognized-csi"
    ),
    "bdev_nvme_detach_controller": (
        "name -t/--trtype -a/--traddr -f/--adrfam -s/--trsvcid -n/--subnqn "
        "-i/--hostaddr -c/--hostsvcid"
    ),
    "bdev_nvme_get_controllers": "-n/--name",
    # stackable bdevs (bdevs/stack_rpc.py)
    "bdev_raid_create": (
        "-n/--name! -z/--strip-size-kb -r/--raid-level! -b/--base-bdevs! --uuid -s/--superblock"
    ),
    "bdev_raid_delete": "name",
    "bdev_raid_get_bdevs": "category",
    "bdev_raid_add_base_bdev": "raid_bdev base_bdev",
    "bdev_raid_remove_base_bdev": "name",
    "bdev_split_create": "base_bdev split_count -s/--split-size-mb",
    "bdev_split_delete": "base_bdev",
    "bdev_passthru_create": "-b/--base-bdev-name! -p/--name! -u/--uuid",
    "bdev_passthru_delete": "name",
    "bdev_delay_create": (
        "-b/--base-bdev-name! -d/--name! -u/--uuid -r/--avg-read-latency! "
        "-t/--nine-nine-read-latency! -w/--avg-write-latency! -n/--nine-nine-write-latency!"
    ),
    "bdev_delay_update_latency": "delay_bdev_name latency_type latency_us",
    "bdev_delay_delete": "name",
    "bdev_error_create": "base_name --uuid",
    "bdev_error_inject_error": (
        "name io_type error_type -n/--num -q/--queue-depth -o/--corrupt-offset -v/--corrupt-value"
    ),
    "bdev_error_delete": "name",
    # --- nvmf.py ------------------------------------------------------------
    "nvmf_set_max_subsystems": "-x/--max-subsystems!",
    "nvmf_set_config": (
        "-i/--passthru-identify-ctrlr -p/--passthru-admin-cmds -m/--poll-groups-mask "
        "-d/--discovery-filter --dhchap-digests --dhchap-dhgroups"
    ),
    "nvmf_create_transport": (
        "-t/--trtype! -g/--tgt-name -q/--max-queue-depth -m/--max-io-qpairs-per-ctrlr "
        "-c/--in-capsule-data-size -i/--max-io-size -u/--io-unit-size -a/--max-aq-depth "
        "-n/--num-shared-buffers -b/--buf-cache-size -z/--zcopy -d/--num-cqe "
        "-s/--max-srq-depth -r/--no-srq -o/--c2h-success -f/--dif-insert-or-strip "
        "-y/--sock-priority -l/--acceptor-backlog -x/--abort-timeout-sec "
        "-w/--no-wr-batching -e/--control-msg-num -M/--disable-mappable-bar0 "
        "-I/--disable-adaptive-irq -S/--disable-shadow-doorbells --acceptor-poll-rate "
        "--ack-timeout --data-wr-pool-size --disable-command-passthru --kas --min-kato"
    ),
    "nvmf_get_transports": "--trtype -t/--tgt-name",
    "nvmf_get_subsystems": "nqn? -t/--tgt-name",
    "nvmf_create_subsystem": (
        "nqn -t/--tgt-name -s/--serial-number -d/--model-number -a/--allow-any-host "
        "-m/--max-namespaces -r/--ana-reporting -i/--min_cntlid -I/--max_cntlid "
        "--max-discard-size --max-write-zeroes-size -p/--passthrough -n/--enable_nssr"
    ),
    "nvmf_delete_subsystem": "subsystem_nqn -t/--tgt-name",
    "nvmf_subsystem_add_listener": (
        "nqn -t/--trtype! -a/--traddr! -p/--tgt-name -f/--adrfam -s/--trsvcid "
        "-k/--secure-channel -n/--ana-state -S/--sock-impl"
    ),
    "nvmf_subsystem_remove_listener": (
        "nqn -t/--trtype! -a/--traddr! -p/--tgt-name -f/--adrfam -s/--trsvcid"
    ),
    "nvmf_subsystem_add_ns": (
        "nqn bdev_name -t/--tgt-name -p/--ptpl-file -n/--nsid -g/--nguid -e/--eui64 "
        "-u/--uuid -a/--anagrpid -i/--no-auto-visible -N/--hide-metadata"
    ),
    "nvmf_subsystem_remove_ns": "nqn nsid -t/--tgt-name",
    "nvmf_subsystem_add_host": ("nqn host -t/--tgt-name --psk --dhchap-key --dhchap-ctrlr-key"),
    "nvmf_subsystem_remove_host": "nqn host -t/--tgt-name",
    "nvmf_subsystem_set_keys": "nqn host -t/--tgt-name --dhchap-key --dhchap-ctrlr-key",
    "nvmf_subsystem_allow_any_host": "nqn -e/--enable -d/--disable -t/--tgt-name",
    "nvmf_subsystem_get_controllers": "nqn -t/--tgt-name",
    "nvmf_subsystem_get_qpairs": "nqn -t/--tgt-name",
    "nvmf_subsystem_get_listeners": "nqn -t/--tgt-name",
    "nvmf_subsystem_listener_set_ana_state": (
        "nqn -n/--ana-state! -t/--trtype! -a/--traddr! -p/--tgt-name -f/--adrfam "
        "-s/--trsvcid -g/--anagrpid"
    ),
    "nvmf_get_stats": "-t/--tgt-name",
    "nvmf_set_crdt": "-t1/--crdt1 -t2/--crdt2 -t3/--crdt3",
    # --- iscsi.py -----------------------------------------------------------
    "iscsi_set_options": (
        "-f/--auth-file -b/--node-base -o/--nop-timeout -n/--nop-in-interval "
        "-d/--disable-chap -r/--require-chap -m/--mutual-chap -g/--chap-group "
        "-a/--max-sessions -q/--max-queue-depth -c/--max-connections-per-session "
        "-w/--default-time2wait -v/--default-time2retain -s/--first-burst-length "
        "-i/--immediate-data -l/--error-recovery-level -p/--allow-duplicated-isid "
        "-x/--max-large-datain-per-connection -k/--max-r2t-per-connection "
        "-u/--pdu-pool-size -j/--immediate-data-pool-size -z/--data-out-pool-size"
    ),
    "iscsi_set_discovery_auth": "-d/--disable-chap -r/--require-chap -m/--mutual-chap -g/--chap-group",
    "iscsi_create_auth_group": "tag -c/--secrets",
    "iscsi_delete_auth_group": "tag",
    "iscsi_auth_group_add_secret": "tag -u/--user! -s/--secret! -m/--muser -r/--msecret",
    "iscsi_auth_group_remove_secret": "tag -u/--user!",
    "iscsi_get_auth_groups": "",
    "iscsi_get_portal_groups": "",
    "iscsi_get_initiator_groups": "",
    "iscsi_get_target_nodes": "",
    "iscsi_create_target_node": (
        "name alias_name luns pg_ig_maps queue_depth -g/--chap-group -d/--disable-chap "
        "-r/--require-chap -m/--mutual-chap -H/--header-digest -D/--data-digest"
    ),
    "iscsi_target_node_add_lun": "name bdev_name -i",
    "iscsi_target_node_set_auth": (
        "name -g/--chap-group -d/--disable-chap -r/--require-chap -m/--mutual-chap"
    ),
    "iscsi_target_node_add_pg_ig_maps": "name pg_ig_maps",
    "iscsi_target_node_remove_pg_ig_maps": "name pg_ig_maps",
    "iscsi_create_portal_group": "tag portals -p/--private -w/--wait",
    "iscsi_create_initiator_group": "tag initiators netmasks",
    "iscsi_initiator_group_add_initiators": "tag -n -m",
    "iscsi_initiator_group_remove_initiators": "tag -n -m",
    "iscsi_delete_target_node": "name",
    "iscsi_delete_portal_group": "tag",
    "iscsi_delete_initiator_group": "tag",
    "iscsi_get_connections": "",
    "iscsi_get_stats": "",
    "iscsi_get_options": "",
    # --- bdev.py: rbd ---------------------------------------------------------
    "bdev_rbd_register_cluster": (
        "name --user --config-param --config-file --key-file --core-mask"
    ),
    "bdev_rbd_unregister_cluster": "name",
    "bdev_rbd_get_clusters_info": "-b/--name",
    "bdev_rbd_create": (
        "pool_name rbd_name block_size -b/--name --user --config -c/--cluster-name "
        "-u/--uuid -r/--readonly"
    ),
    "bdev_rbd_delete": "name",
    "bdev_rbd_resize": "name new_size",
}

# Arguments of SPDK's form that blockfabric does not declare, each with why.
# The server answers -32602 "unknown parameter" when one is sent (refused,
# never silently ignored).
NOT_DECLARED: dict[tuple[str, str], str] = {
    ("bdev_rbd_create", "-r/--readonly"): "read-only RBD bdevs are not implemented",
    ("save_config", "-s/--subsystems"): "save_config always writes every subsystem",
    ("bdev_get_iostat", "--reset-mode"): "iostat counters are not resettable",
    ("bdev_get_iostat", "--names"): "one bdev (-b) or all",
    ("bdev_malloc_create", "-n/--numa-id"): "no NUMA placement of shared memory",
    ("bdev_malloc_create", "-f/--dif-pi-format"): "no protection information (md_size 0 only)",
    ("bdev_null_create", "-a/--preferred-write-alignment"): "no write-hint geometry",
    ("bdev_null_create", "-g/--preferred-write-granularity"): "no write-hint geometry",
    ("bdev_null_create", "-s/--optimal-write-size"): "no write-hint geometry",
    ("bdev_null_create", "-c/--preferred-unmap-alignment"): "no unmap-hint geometry",
    ("bdev_null_create", "-r/--preferred-unmap-granularity"): "no unmap-hint geometry",
    ("bdev_aio_create", "--no-wait"): "RWF_NOWAIT is not used",
    ("bdev_nvme_attach_controller", "-m/--max-bdevs"): "no limit on namespaces per controller",
    ("bdev_nvme_attach_controller", "-U/--allow-unrecognized-csi"): "NVM command set only",
    ("nvmf_create_subsystem", "--max-discard-size"): "no per-subsystem discard limit",
    ("nvmf_create_subsystem", "--max-write-zeroes-size"): "no per-subsystem write-zeroes limit",
}

# Methods blockfabric has and SPDK's rpc.py does not (extensions), or that
# SPDK's current rpc.py no longer has (scsi_set_options: only in old configs).
NOT_IN_SPDK = {
    "blockfabric_get_status",
    "framework_set_poll_mode",
    "framework_ping",
    "bdev_wcache_create",
    "bdev_wcache_delete",
    "bdev_wcache_power_fail",
    "scsi_set_options",
}
