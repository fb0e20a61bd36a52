"""FC-NVMe target state: associations, connections, exchanges (fc_assoc.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.transports.nvmf import fc_assoc as A
from blockfabric.transports.nvmf import fc_iu as IU
from blockfabric.transports.nvmf import fc_ls as LS

SUB = "nqn.2016-06.io.spdk:cnode1"
HOST = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001"


def check(sub: str, host: str) -> tuple[int, int, str] | None:
    if sub != SUB:
        return (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_SUBNQN, "no such subsystem")
    if host.endswith("evil"):
        return (LS.RJT_RC_INV_HOST, LS.RJT_EXP_INV_HOSTNQN, "host not allowed")
    return None


def nexus(**kw: int) -> A.FcNexus:
    return A.FcNexus(A.NexusLimits(**kw), check)


def cass(
    nx: A.FcNexus, sub: str = SUB, host: str = HOST, sqsize: int = 31, ersp: int = 8
) -> LS.LsResponse:
    req = LS.CreateAssociation(ersp, 0xFFFF, sqsize, bytes(16), host, sub)
    return LS.decode_response(nx.handle_ls(LS.encode_request(req)).response)


def cioc(nx: A.FcNexus, aid: int, qid: int = 1, sqsize: int = 127, ersp: int = 8) -> LS.LsResponse:
    req = LS.CreateConnection(aid, ersp, qid, sqsize)
    return LS.decode_response(nx.handle_ls(LS.encode_request(req)).response)


def rejected(r: LS.LsResponse) -> tuple[int, int]:
    assert isinstance(r, LS.LsRejected), r
    return r.reason, r.explanation


def test_association_life() -> None:
    nx = nexus()
    acc = cass(nx)
    assert isinstance(acc, LS.LsAccept) and acc.assoc_id and acc.conn_id == acc.assoc_id
    aid = acc.assoc_id
    assert nx.conn(acc.conn_id) is not None and nx.conn(acc.conn_id).qid == 0  # type: ignore[union-attr]
    for q in (1, 2):
        r = cioc(nx, aid, q)
        assert isinstance(r, LS.LsAccept) and r.conn_id == aid | q
    assert len(nx.assocs[aid].connections) == 3
    out = nx.handle_ls(LS.encode_request(LS.Disconnect(aid)))
    assert isinstance(LS.decode_response(out.response), LS.LsAccept)
    assert sorted(c.qid for c in out.removed) == [0, 1, 2]
    assert not nx.assocs and not nx.conns
    # the association is gone: a second Disconnect and a CIOC are refused
    assert rejected(
        LS.decode_response(nx.handle_ls(LS.encode_request(LS.Disconnect(aid))).response)
    ) == (
        LS.RJT_RC_INV_ASSOC,
        LS.RJT_EXP_NONE,
    )
    assert rejected(cioc(nx, aid, 3))[0] == LS.RJT_RC_INV_ASSOC


def test_cass_rejects() -> None:
    nx = nexus(max_associations=1, max_aq_depth=32)
    assert rejected(cass(nx, sub="nqn.2016-06.io.spdk:other")) == (
        LS.RJT_RC_INV_PARAM,
        LS.RJT_EXP_INV_SUBNQN,
    )
    assert rejected(cass(nx, host=HOST + "evil")) == (LS.RJT_RC_INV_HOST, LS.RJT_EXP_INV_HOSTNQN)
    assert rejected(cass(nx, sqsize=0)) == (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_SQSIZE)
    assert rejected(cass(nx, sqsize=32)) == (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_SQSIZE)
    assert rejected(cass(nx, sqsize=8, ersp=8)) == (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_ERSP_RAT)
    assert isinstance(cass(nx), LS.LsAccept)
    assert rejected(cass(nx)) == (LS.RJT_RC_UNAB, LS.RJT_EXP_INSUF_RES)
    assert not any(a.assoc_id == 0 for a in nx.assocs.values())


def test_cioc_rejects() -> None:
    nx = nexus(max_qpairs_per_ctrlr=3, max_queue_depth=128)
    aid = cass(nx).assoc_id  # type: ignore[union-attr]
    assert rejected(cioc(nx, aid ^ (1 << 20))) == (LS.RJT_RC_INV_ASSOC, LS.RJT_EXP_NONE)
    assert rejected(cioc(nx, aid, qid=0)) == (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_QUEUE_ID)
    assert rejected(cioc(nx, aid, qid=3)) == (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_QUEUE_ID)
    assert rejected(cioc(nx, aid, sqsize=128)) == (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_SQSIZE)
    assert isinstance(cioc(nx, aid, qid=1), LS.LsAccept)
    assert rejected(cioc(nx, aid, qid=1)) == (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_QUEUE_ID)


def test_association_ids_are_nexus_local() -> None:
    a, b = nexus(), nexus()
    aid = cass(a).assoc_id  # type: ignore[union-attr]
    assert rejected(cioc(b, aid))[0] == LS.RJT_RC_INV_ASSOC


def _cmd(dlen: int = 4096, flags: int = IU.FLAG_WRITE) -> IU.CmdIu:
    return IU.CmdIu(1, 1, dlen, flags, bytes(64))


def test_exchange_write_path() -> None:
    nx = nexus()
    acc = cass(nx, sqsize=3, ersp=2)
    c = nx.conn(acc.conn_id)  # type: ignore[union-attr,arg-type]
    assert c is not None
    x = c.open_exchange(7, _cmd())
    with pytest.raises(A.ExchangeError):
        c.open_exchange(7, _cmd())  # exchange ids are unique while open
    with pytest.raises(A.ExchangeError):
        x.accept_data(0, 512)  # no transfer-ready yet
    x.to(A.XState.DATA_OUT)
    x.accept_data(0, 1024)
    with pytest.raises(A.ExchangeError):
        x.accept_data(2048, 512)  # out of order
    with pytest.raises(A.ExchangeError):
        x.accept_data(1024, 4096)  # past the command's length
    x.accept_data(1024, 3072)
    x.to(A.XState.EXECUTING)
    with pytest.raises(A.ExchangeError):
        x.to(A.XState.DATA_OUT)
    cqe = bytes(16)
    assert c.response(x, cqe, 0, 4096, False) == IU.GOOD_RSP  # 1st completion, ratio 2
    assert not c.exchanges
    x2 = c.open_exchange(8, _cmd(0, 0))
    ersp = IU.decode_response(c.response(x2, cqe, 0, 0, False))  # 2nd: ratio reached
    assert ersp is not None and ersp.rsn == 1
    x3 = c.open_exchange(9, _cmd(0, 0))
    ersp = IU.decode_response(c.response(x3, cqe, 0, 0, True))  # forced (fabrics command)
    assert ersp is not None and ersp.rsn == 2


def test_exchange_limit_and_abort() -> None:
    nx = nexus()
    acc = cass(nx, sqsize=3, ersp=1)
    c = nx.conn(acc.conn_id)  # type: ignore[union-attr,arg-type]
    assert c is not None
    xs = [c.open_exchange(i, _cmd()) for i in range(4)]  # sqsize 3 = 4 entries
    with pytest.raises(A.ExchangeError, match="outstanding"):
        c.open_exchange(99, _cmd())
    gone = nx.drop_all()
    assert gone == [c] and all(x.state is A.XState.ABORTED for x in xs)
    assert not nx.conns and not nx.assocs


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 200)), max_size=30))
def test_ls_sequences_keep_invariants(ops: list[tuple[int, int, int]]) -> None:
    """Any sequence of CASS/CIOC/DISC (valid or not): every request answered,
    the tables stay consistent and bounded."""
    nx = nexus(max_associations=3, max_qpairs_per_ctrlr=4)
    ids: list[int] = [0]
    for op, pick, val in ops:
        aid = ids[pick % len(ids)]
        if op == 0:
            r = cass(nx, sqsize=val % 40, ersp=val % 5)
            if isinstance(r, LS.LsAccept):
                assert r.assoc_id is not None
                ids.append(r.assoc_id)
        elif op == 1:
            cioc(nx, aid, qid=val % 6, sqsize=val, ersp=val % 3)
        else:
            nx.handle_ls(LS.encode_request(LS.Disconnect(aid)))
        assert len(nx.assocs) <= 3
        assert sum(len(a.connections) for a in nx.assocs.values()) == len(nx.conns)
        for a in nx.assocs.values():
            assert 0 in a.connections and len(a.connections) <= 4
