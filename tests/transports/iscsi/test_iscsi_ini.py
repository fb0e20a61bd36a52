"""SPDK legacy INI config file -> RPC calls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockfabric.transports.iscsi.ini_config import ConfigFileError, parse_ini_config

GOOD = """
# SPDK iscsi.conf
[Global]
  ReactorMask 0x1
[iSCSI]
  NodeBase "iqn.2016-06.io.spdk"
  AuthFile /usr/local/etc/spdk/auth.conf
  Timeout 30
  DiscoveryAuthMethod Auto
  MaxSessions 16
  ImmediateData Yes
  ErrorRecoveryLevel 0
[AuthGroup1]
  Auth "user1" "secret1" "muser1" "msecret1"
[PortalGroup1]
  Portal DA1 127.0.0.1:3260
  Portal DA2 [::1]
[InitiatorGroup1]
  InitiatorName ANY
  Netmask 127.0.0.1/32
[Malloc]
  NumberOfLuns 2
  LunSizeInMB 64
[TargetNode1]
  TargetName disk1
  TargetAlias "Data Disk1"
  Mapping PortalGroup1 InitiatorGroup1
  AuthMethod CHAP Mutual
  AuthGroup AuthGroup1
  UseDigest Header
  LUN0 Malloc0
  LUN1 Malloc1
  QueueDepth 128
"""


def test_good_file() -> None:
    calls = parse_ini_config(GOOD, "iscsi.conf")
    methods = [m for m, _ in calls]
    assert methods == [
        "bdev_malloc_create", "bdev_malloc_create", "iscsi_set_options", "iscsi_create_auth_group",
        "iscsi_create_portal_group", "iscsi_create_initiator_group", "iscsi_create_target_node",
    ]  # fmt: skip
    assert calls[0][1] == {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}
    opts = calls[2][1]
    assert (
        opts["node_base"] == "iqn.2016-06.io.spdk"
        and opts["nop_timeout"] == 30
        and opts["max_sessions"] == 16
    )
    assert opts["disable_chap"] is False and opts["require_chap"] is False
    assert calls[4][1] == {
        "tag": 1,
        "portals": [{"host": "127.0.0.1", "port": "3260"}, {"host": "[::1]", "port": "3260"}],
    }
    tn = calls[6][1]
    assert tn["name"] == "disk1" and tn["alias_name"] == "Data Disk1" and tn["queue_depth"] == 128
    assert tn["luns"] == [
        {"bdev_name": "Malloc0", "lun_id": 0},
        {"bdev_name": "Malloc1", "lun_id": 1},
    ]
    assert tn["pg_ig_maps"] == [{"pg_tag": 1, "ig_tag": 1}]
    assert tn["require_chap"] and tn["mutual_chap"] and tn["chap_group"] == 1
    assert tn["header_digest"] and not tn["data_digest"]


@pytest.mark.parametrize(
    "body,line,msg",
    [
        ("[iSCSI]\n  Bogus 1\n", 2, "unknown key Bogus"),
        ("[iSCSI]\n  MaxSessions many\n", 2, "must be an integer"),
        ("\n\n[Foo]\n", 3, "unknown section"),
        ("Key 1\n", 1, "outside any section"),
        ("[PortalGroup1]\n Portal DA1 1.2.3.4:99999\n", 2, "port out of range"),
        (
            "[TargetNode1]\n TargetName x\n LUN0 M0\n Mapping PG1 InitiatorGroup1\n",
            4,
            "PortalGroup<N>",
        ),
        ("[TargetNode1]\n TargetName x\n Mapping PortalGroup1 InitiatorGroup1\n", 1, "has no LUN"),
        ("[TargetNode1]\n AuthMethod Maybe\n", 2, "AuthMethod"),
        ("[iSCSI]\n ImmediateData Perhaps\n", 2, "Yes or No"),
        ('[iSCSI]\n NodeBase "unterminated\n', 2, "quotation"),
        ("[iSCSI]\n[iscsi]\n", 2, "defined twice"),
    ],
)
def test_errors_name_the_line(body: str, line: int, msg: str) -> None:
    with pytest.raises(ConfigFileError) as e:
        parse_ini_config(body, "x.conf")
    assert str(e.value).startswith(f"x.conf:{line}:") and msg in str(e.value)


@given(st.text(max_size=300))
def test_fuzz_only_config_errors(body: str) -> None:
    try:
        parse_ini_config(body, "f")
    except ConfigFileError as e:
        assert str(e).startswith("f:")
