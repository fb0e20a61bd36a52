"""Login state machine: scripted sequences, refusal classes, CHAP, discovery."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi import text


def status(r: P.Pdu) -> int:
    return r.w36 >> 16


def keys(r: P.Pdu) -> dict[str, str]:
    return dict(text.parse(r.data))


BASE = [("InitiatorName", "iqn.1994-05.com.redhat:client"), ("SessionType", "Normal")]


def _first(kit: Any, h: Any, extra: list[tuple[str, str]], **kw: Any) -> P.Pdu:
    return h.feed(kit.login_req(BASE + extra, **kw))[0]


def test_open_iscsi_style_login(kit: Any) -> None:
    h = kit.Harness()
    r = _first(
        kit, h, [("TargetName", kit.TARGET), ("AuthMethod", "CHAP,None")], csg=0, nsg=1, expstatsn=0
    )
    assert status(r) == 0 and r.transit and r.csg == 0 and r.nsg == 1
    k = keys(r)
    assert (
        k["AuthMethod"] == "None"
        and k["TargetPortalGroupTag"] == "1"
        and k["TargetAlias"] == "Data Disk1"
    )
    assert r.tsih == 0 and r.isid == kit.ISID
    ops = [
        ("HeaderDigest", "None"), ("DataDigest", "None"), ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"), ("OFMarker", "No"), ("ErrorRecoveryLevel", "0"), ("InitialR2T", "No"),
        ("ImmediateData", "Yes"), ("MaxBurstLength", "16776192"), ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"), ("MaxConnections", "1"), ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"), ("MaxRecvDataSegmentLength", "262144"), ("X-com.example.vendor", "1"),
    ]  # fmt: skip
    r2 = h.feed(kit.login_req(ops, csg=1, nsg=3))[0]
    assert status(r2) == 0 and r2.transit and r2.nsg == 3 and r2.tsih != 0
    k = keys(r2)
    assert k["MaxRecvDataSegmentLength"] == "65536"
    assert (
        k["InitialR2T"] == "Yes"
        and k["MaxBurstLength"] == "1048576"
        and k["FirstBurstLength"] == "8192"
    )
    assert k["X-com.example.vendor"] == "NotUnderstood"
    assert r2.w24 == r.w24 + 1  # StatSN advances per login response
    assert h.conn.state == "ffp" and h.conn.cp.max_xmit_dlen == 262144
    assert h.conn.reader.max_recv_dlen == 65536


def test_unknown_target(kit: Any) -> None:
    h = kit.Harness()
    r = _first(kit, h, [("TargetName", "iqn.2016-06.io.blockfabric:nope")], csg=0, nsg=1)
    assert status(r) == 0x0203 and h.closed


def test_netmask_refusal(kit: Any) -> None:
    h = kit.Harness(peer="10.1.2.3")
    r = _first(kit, h, [("TargetName", kit.TARGET)], csg=0, nsg=1)
    assert status(r) == 0x0202 and h.closed


def test_initiator_name_refusal_and_deny_entry(kit: Any) -> None:
    st = kit.make_state(initiators=["iqn.2000-01.com.other:host"])
    h = kit.Harness(st)
    assert status(_first(kit, h, [("TargetName", kit.TARGET)], csg=0, nsg=1)) == 0x0202
    st = kit.make_state(initiators=["!iqn.1994-05.com.redhat:client", "ANY"])
    h = kit.Harness(st)
    assert status(_first(kit, h, [("TargetName", kit.TARGET)], csg=0, nsg=1)) == 0x0202


def test_missing_keys_version_and_session_type(kit: Any) -> None:
    h = kit.Harness()
    assert status(h.feed(kit.login_req([("TargetName", kit.TARGET)], csg=0, nsg=1))[0]) == 0x0207
    h = kit.Harness()
    assert status(_first(kit, h, [], csg=0, nsg=1)) == 0x0207
    h = kit.Harness()
    assert status(_first(kit, h, [("TargetName", kit.TARGET)], csg=0, nsg=1, vmin=1)) == 0x0205
    h = kit.Harness()
    r = h.feed(
        kit.login_req([("InitiatorName", "iqn.x:y"), ("SessionType", "Weird")], csg=0, nsg=1)
    )[0]
    assert status(r) == 0x0209


def test_bad_stage_transitions(kit: Any) -> None:
    h = kit.Harness()
    assert (
        status(_first(kit, h, [("TargetName", kit.TARGET)], csg=1, nsg=1)) == 0x0200
    )  # NSG <= CSG
    h = kit.Harness()
    assert status(_first(kit, h, [("TargetName", kit.TARGET)], csg=0, nsg=2)) == 0x0200
    h = kit.Harness()
    _first(kit, h, [("TargetName", kit.TARGET)], csg=0, nsg=1)
    # security keys in the operational stage
    assert status(h.feed(kit.login_req([("AuthMethod", "None")], csg=1, nsg=3))[0]) == 0x0200


def test_unknown_tsih(kit: Any) -> None:
    h = kit.Harness()
    assert status(_first(kit, h, [("TargetName", kit.TARGET)], csg=0, nsg=1, tsih=77)) == 0x020A


def test_continued_login_text(kit: Any) -> None:
    h = kit.Harness()
    blob = text.encode(BASE + [("TargetName", kit.TARGET), ("AuthMethod", "None")])
    half = len(blob) // 2
    f1 = 0x40 | (0 << 2)
    req1 = P.encode_request(
        P.OP_LOGIN_REQ, f1, kit.ISID << 16, 1, (0, 1, 0, 0, 0, 0, 0), blob[:half]
    )
    r = h.feed(req1)[0]
    assert status(r) == 0 and not r.transit and r.dlen == 0
    req2 = P.encode_request(
        P.OP_LOGIN_REQ, 0x80 | 1, kit.ISID << 16, 1, (0, 1, 0, 0, 0, 0, 0), blob[half:]
    )
    r = h.feed(req2)[0]
    assert status(r) == 0 and r.transit and keys(r)["AuthMethod"] == "None"


def _chap_state(kit: Any, mutual: bool = False) -> Any:
    st = kit.make_state()
    st.add_auth_group(
        1, [{"user": "alice", "secret": "s3cret", "muser": "tgt", "msecret": "m3cret"}]
    )
    st.set_target_auth(kit.TARGET, False, True, mutual, 1)
    return st


def test_chap_required_refuses_none(kit: Any) -> None:
    h = kit.Harness(_chap_state(kit))
    r = _first(kit, h, [("TargetName", kit.TARGET), ("AuthMethod", "None")], csg=0, nsg=1)
    assert status(r) == 0x0201
    # skipping the security stage does not help
    h = kit.Harness(_chap_state(kit))
    assert status(_first(kit, h, [("TargetName", kit.TARGET)], csg=1, nsg=3)) == 0x0201


def _chap_login(kit: Any, h: Any, secret: str, mutual: bool = False) -> P.Pdu:
    r = _first(
        kit,
        h,
        [("TargetName", kit.TARGET), ("AuthMethod", "CHAP,None")],
        csg=0,
        nsg=1,
        transit=False,
    )
    assert status(r) == 0 and keys(r)["AuthMethod"] == "CHAP"
    r = h.feed(kit.login_req([("CHAP_A", "5")], csg=0, nsg=1, transit=False))[0]
    k = keys(r)
    ident, chal = int(k["CHAP_I"]), bytes.fromhex(k["CHAP_C"][2:])
    resp = hashlib.md5(bytes([ident]) + secret.encode() + chal).hexdigest()
    extra = [("CHAP_I", "9"), ("CHAP_C", "0x" + "ab" * 16)] if mutual else []
    return h.feed(
        kit.login_req([("CHAP_N", "alice"), ("CHAP_R", "0x" + resp)] + extra, csg=0, nsg=1)
    )[0]


def test_chap_login_one_way_and_wrong_secret(kit: Any) -> None:
    h = kit.Harness(_chap_state(kit))
    r = _chap_login(kit, h, "s3cret")
    assert status(r) == 0 and r.transit and r.nsg == 1
    h = kit.Harness(_chap_state(kit))
    assert status(_chap_login(kit, h, "wrong")) == 0x0201


def test_chap_mutual(kit: Any) -> None:
    h = kit.Harness(_chap_state(kit, mutual=True))
    r = _chap_login(kit, h, "s3cret", mutual=True)
    assert status(r) == 0
    k = keys(r)
    assert k["CHAP_N"] == "tgt"
    assert k["CHAP_R"] == "0x" + hashlib.md5(bytes([9]) + b"m3cret" + b"\xab" * 16).hexdigest()
    h = kit.Harness(_chap_state(kit, mutual=True))
    assert status(_chap_login(kit, h, "s3cret", mutual=False)) == 0x0201


def test_required_digest_not_negotiated(kit: Any) -> None:
    st = kit.make_state()
    st.target_nodes[kit.TARGET].header_digest = True
    h = kit.Harness(st)
    _first(kit, h, [("TargetName", kit.TARGET), ("AuthMethod", "None")], csg=0, nsg=1)
    r = h.feed(kit.login_req([("HeaderDigest", "None")], csg=1, nsg=3))[0]
    assert status(r) == 0x0200
    h = kit.Harness(st)
    _first(kit, h, [("TargetName", kit.TARGET), ("AuthMethod", "None")], csg=0, nsg=1)
    r = h.feed(kit.login_req([("HeaderDigest", "CRC32C,None")], csg=1, nsg=3))[0]
    assert status(r) == 0 and h.conn.cp.header_digest and h.conn.reader.header_digest


def test_discovery_session_sendtargets(kit: Any) -> None:
    st = kit.make_state()
    st.add_initiator_group(3, ["iqn.2000-01.com.other:host"], ["ANY"])
    st.create_target_node("hidden", "", {0: "Malloc1"}, [(1, 3)], 32)
    h = kit.Harness(st)
    r = h.feed(
        kit.login_req(
            [("InitiatorName", kit.INIT), ("SessionType", "Discovery"), ("AuthMethod", "None")],
            csg=0,
            nsg=1,
        )
    )[0]
    assert status(r) == 0 and "TargetPortalGroupTag" not in keys(r)
    r = h.feed(kit.login_req([("HeaderDigest", "None"), ("MaxBurstLength", "1024")], csg=1, nsg=3))[
        0
    ]
    assert keys(r)["MaxBurstLength"] == "Irrelevant"
    assert h.conn.session.discovery
    r = h.feed(
        P.encode_request(
            P.OP_TEXT_REQ, 0x80, 0, 5, (P.RSVD_TAG, 1, 0, 0, 0, 0, 0), b"SendTargets=All\0"
        )
    )[0]
    assert r.opcode == P.OP_TEXT_RESP
    assert text.parse(r.data) == [("TargetName", kit.TARGET), ("TargetAddress", "127.0.0.1:3260,1")]
    # SCSI commands are not allowed in a discovery session
    r = h.feed(P.encode_request(P.OP_SCSI_CMD, 0x81, 0, 6, (0, 2, 0, 0, 0, 0, 0)))[0]
    assert r.opcode == P.OP_REJECT


def test_wildcard_portal_reports_local_address(kit: Any) -> None:
    from blockfabric.transports.iscsi.discovery import send_targets
    from blockfabric.transports.iscsi.nodes import ConfigView
    from blockfabric.transports.iscsi.state import Portal

    st = kit.make_state()
    st.add_portal_group(5, [Portal("0.0.0.0", "3261", "0.0.0.0:3261"), Portal("[::1]", "3262")])
    st.add_pg_ig_maps(kit.TARGET, [(5, 2)])
    out = send_targets(ConfigView(st.snapshot()), "All", kit.INIT, "127.0.0.1", "192.168.7.7")
    assert ("TargetAddress", "192.168.7.7:3261,5") in out and (
        "TargetAddress",
        "[::1]:3262,5",
    ) in out
    assert send_targets(ConfigView(st.snapshot()), kit.TARGET, kit.INIT, "127.0.0.1", "x")[0] == (
        "TargetName",
        kit.TARGET,
    )
    assert send_targets(ConfigView(st.snapshot()), "All", kit.INIT, "10.0.0.1", "x") == []


_k = st.sampled_from(
    ["InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A", "CHAP_N", "CHAP_R", "HeaderDigest",
     "MaxRecvDataSegmentLength", "X-foo", "TargetAddress", "MaxConnections", "FirstBurstLength"]
)  # fmt: skip
_v = st.one_of(
    st.sampled_from(
        [
            "iqn.2016-06.io.blockfabric:disk1",
            "Normal",
            "Discovery",
            "None",
            "CHAP",
            "5",
            "0x00",
            "512",
            "",
        ]
    ),
    st.text(alphabet="abcxyz0123456789:.,-", max_size=12),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.lists(st.tuples(_k, _v), max_size=8, unique_by=lambda kv: kv[0]), min_size=1, max_size=4
    ),
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans(), st.booleans()),
        min_size=4,
        max_size=4,
    ),
)
def test_login_fuzz_answers_are_well_formed(
    kit: Any, steps: list[list[tuple[str, str]]], flags: list[Any]
) -> None:
    h = kit.Harness()
    for pairs, (csg, nsg, t, c) in zip(steps, flags, strict=False):
        out = h.feed(kit.login_req(pairs, csg=csg, nsg=nsg, transit=t, cont=c and not t))
        if h.conn.state != "login":
            break
        assert len(out) == 1
        r = out[0]
        assert r.opcode == P.OP_LOGIN_RESP and r.itt == 1
        text.parse(r.data)  # well-formed text
        cls = r.w36 >> 24
        assert cls in (0, 2, 3)
        if cls:
            assert h.closed
            break
