"""Operational key negotiation tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockfabric.transports.iscsi.params import (
    STAGE_FULL_FEATURE,
    STAGE_OPERATIONAL,
    STAGE_SECURITY,
    NegotiationError,
    Negotiator,
    target_values,
)


def neg(**kw: object) -> Negotiator:
    return Negotiator(target_values(**kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key,offer,answer",
    [
        ("HeaderDigest", "CRC32C,None", "CRC32C"),
        ("HeaderDigest", "None,CRC32C", "None"),
        ("DataDigest", "None", "None"),
        ("HeaderDigest", "MD5", "Reject"),
        ("MaxConnections", "8", "2"),
        ("MaxConnections", "1", "1"),
        ("MaxConnections", "0", "Reject"),
        ("InitialR2T", "No", "Yes"),
        ("InitialR2T", "Yes", "Yes"),
        ("InitialR2T", "maybe", "Reject"),
        ("ImmediateData", "Yes", "Yes"),
        ("ImmediateData", "No", "No"),
        ("MaxBurstLength", "262144", "262144"),
        ("MaxBurstLength", "16777215", "1048576"),
        ("MaxBurstLength", "511", "Reject"),
        ("MaxBurstLength", "16777216", "Reject"),
        ("MaxBurstLength", "abc", "Reject"),
        ("FirstBurstLength", "65536", "8192"),
        ("FirstBurstLength", "4096", "4096"),
        ("DefaultTime2Wait", "0", "2"),
        ("DefaultTime2Wait", "10", "10"),
        ("DefaultTime2Retain", "0", "0"),
        ("DefaultTime2Retain", "3601", "Reject"),
        ("MaxOutstandingR2T", "16", "1"),
        ("DataPDUInOrder", "No", "Yes"),
        ("DataSequenceInOrder", "No", "Yes"),
        ("ErrorRecoveryLevel", "2", "0"),
        ("IFMarker", "Yes", "No"),
        ("OFMarkInt", "2048~8192", "Irrelevant"),
        ("MaxRecvDataSegmentLength", "262144", "65536"),
        ("MaxRecvDataSegmentLength", "100", "Reject"),
        ("X-com.example.foo", "bar", "NotUnderstood"),
        ("X#vendor", "1", "NotUnderstood"),
        ("Bogus", "1", "NotUnderstood"),
    ],
)
def test_key_table(key: str, offer: str, answer: str) -> None:
    assert neg().respond([(key, offer)], STAGE_OPERATIONAL) == [(key, answer)]


def test_required_digest() -> None:
    n = neg(header_digest=True)
    assert n.respond([("HeaderDigest", "None")], STAGE_OPERATIONAL) == [("HeaderDigest", "Reject")]
    assert n.digest_required_missing() == "HeaderDigest"
    n = neg(header_digest=True)
    n.respond([("HeaderDigest", "None,CRC32C")], STAGE_OPERATIONAL)
    assert n.digest_required_missing() is None and n.conn_params().header_digest


def test_defaults_when_not_sent() -> None:
    sp = neg().session_params()
    assert (sp.max_connections, sp.initial_r2t, sp.immediate_data) == (1, True, True)
    assert (sp.max_burst_length, sp.first_burst_length, sp.max_outstanding_r2t) == (
        262144,
        65536,
        1,
    )
    cp = neg().conn_params()
    assert cp.max_xmit_dlen == 8192 and not cp.header_digest


def test_first_burst_capped_by_max_burst() -> None:
    n = Negotiator(target_values(first_burst_length=65536))
    out = n.respond([("MaxBurstLength", "4096"), ("FirstBurstLength", "65536")], STAGE_OPERATIONAL)
    assert ("FirstBurstLength", "4096") in out
    assert n.session_params().first_burst_length == 4096


def test_discovery_irrelevant_and_non_leading() -> None:
    n = Negotiator(target_values(), discovery=True)
    out = dict(
        n.respond([("InitialR2T", "Yes"), ("MaxBurstLength", "4096"), ("HeaderDigest", "None")], 1)
    )
    assert out == {
        "InitialR2T": "Irrelevant",
        "MaxBurstLength": "Irrelevant",
        "HeaderDigest": "None",
    }
    n = Negotiator(target_values(), leading=False)
    assert n.respond([("MaxConnections", "2")], 1) == [("MaxConnections", "Irrelevant")]


def test_wrong_stage() -> None:
    with pytest.raises(NegotiationError):
        neg().respond([("AuthMethod", "None")], STAGE_OPERATIONAL)
    with pytest.raises(NegotiationError):
        neg().respond([("TargetAddress", "1.2.3.4")], STAGE_SECURITY)
    assert neg().respond([("InitialR2T", "No")], STAGE_FULL_FEATURE) == [("InitialR2T", "Reject")]
    n = neg()
    assert n.respond([("MaxRecvDataSegmentLength", "4096")], STAGE_FULL_FEATURE) == [
        ("MaxRecvDataSegmentLength", "65536")
    ]
    assert n.declared["MaxRecvDataSegmentLength"] == "4096"


def test_declarations_not_answered() -> None:
    n = neg()
    out = n.respond(
        [("InitiatorName", "iqn.x"), ("InitiatorAlias", "a"), ("SessionType", "Normal")], 1
    )
    assert out == []
    assert n.declare_mrdsl() == [("MaxRecvDataSegmentLength", "65536")]
    assert n.declare_mrdsl() == []


_keys = st.sampled_from(
    ["HeaderDigest", "DataDigest", "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
     "FirstBurstLength", "MaxRecvDataSegmentLength", "ErrorRecoveryLevel", "X-a", "IFMarkInt", "Foo",
     "DefaultTime2Wait", "MaxOutstandingR2T", "InitiatorAlias"]
)  # fmt: skip
_vals = st.one_of(
    st.sampled_from(["Yes", "No", "None", "CRC32C", "0", "512", "99999999", "", "Reject"]),
    st.text(max_size=20),
)


@given(st.lists(st.tuples(_keys, _vals), max_size=12), st.booleans(), st.sampled_from([0, 1, 3]))
def test_negotiator_never_crashes(pairs: list[tuple[str, str]], disc: bool, stage: int) -> None:
    n = Negotiator(target_values(), discovery=disc)
    try:
        out = n.respond(pairs, stage)
    except NegotiationError:
        return
    sent = {k for k, _ in pairs}
    for k, v in out:
        assert k in sent and isinstance(v, str)
    sp = n.session_params()
    assert sp.first_burst_length <= sp.max_burst_length
    assert 512 <= n.conn_params().max_xmit_dlen <= 16777215
