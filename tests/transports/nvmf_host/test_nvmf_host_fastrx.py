"""The host queue's receive fast path (CapsuleResp / C2HData straight from
the buffer) must complete commands exactly like the general path."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.queue import HostQueue, TransportError

N = 6  # reads outstanding


def _queue() -> tuple[HostQueue, list[tuple[int, int, bytes]], list[memoryview]]:
    q = HostQueue(qid=1, qsize=16)
    q.start()
    q.feed(P.encode_icresp(0, False, False, 131072))
    q.take_tx()
    done: list[tuple[int, int, bytes]] = []
    bufs = [memoryview(bytearray(1024)) for _ in range(N)]

    def cb(r: Any, status: int, result: int) -> None:
        done.append((r.ctx, status, bytes(bufs[r.ctx])))

    for i in range(N):
        q.read(1, i * 2, 2, bufs[i], cb, i)
    return q, done, bufs


def _stream(plan: list[tuple[int, str, int]]) -> bytes:
    """plan: (cid, how, status); how = 'success' | 'data+resp' | 'short' | 'resp'."""
    out: list[Any] = []
    for cid, how, status in plan:
        data = bytes([cid + 1]) * 1024
        if how == "success":
            P.encode_data(P.C2H_DATA, cid, 0, 0, data, True, True, out=out)
        elif how == "data+resp":
            P.encode_data(P.C2H_DATA, cid, 0, 0, data[:512], False, out=out)
            P.encode_data(P.C2H_DATA, cid, 0, 512, data[512:], True, out=out)
            out += P.encode_capsule_resp(cid, status, 0, 0, 1)
        elif how == "short_success":  # SUCCESS flag on half the data
            P.encode_data(P.C2H_DATA, cid, 0, 0, data[:512], True, True, out=out)
        elif how == "short":  # success claimed with half the data
            P.encode_data(P.C2H_DATA, cid, 0, 0, data[:512], True, out=out)
            out += P.encode_capsule_resp(cid, 0, 0, 0, 1)
        else:
            out += P.encode_capsule_resp(cid, status, 0, 0, 1)
    return b"".join(bytes(b) for b in out)


def _run(raw: bytes, cut: int, fast: bool) -> tuple[list[tuple[int, int, bytes]], str]:
    q, done, _ = _queue()
    if not fast:
        q._fast_rx = lambda: 0  # type: ignore[method-assign]
    err = ""
    try:
        for i in range(0, len(raw), cut):
            q.feed(raw[i : i + cut])
    except TransportError as e:
        err = str(e)
    return done, err


_how = st.sampled_from(["success", "data+resp", "short", "short_success", "resp"])
_status = st.sampled_from([0, S.ST_LBA_OUT_OF_RANGE, S.ST_INVALID_FIELD])


@settings(max_examples=60, deadline=None)
@given(
    order=st.permutations(list(range(N))),
    hows=st.lists(_how, min_size=N, max_size=N),
    statuses=st.lists(_status, min_size=N, max_size=N),
    cut=st.sampled_from([1, 13, 100, 1 << 20]),
    extra=st.sampled_from([None, 0, 99]),  # a stray completion: duplicate or unknown CID
)
def test_fast_rx_same_as_general(order, hows, statuses, cut, extra) -> None:  # type: ignore[no-untyped-def]
    plan = [(cid, hows[cid], statuses[cid]) for cid in order]
    if extra is not None:
        plan.append((extra, "resp", 0))
    raw = _stream(plan)
    fast = _run(raw, cut, True)
    assert fast == _run(raw, cut, False)
    done, err = fast
    assert sorted(c for c, _s, _d in done) == list(range(N))
    assert err if extra is not None else not err  # stray completion: protocol error
    for cid, status, data in done:
        how = hows[cid]
        if how == "success":
            assert status == 0 and data == bytes([cid + 1]) * 1024
        elif how in ("short", "short_success"):
            assert status == S.ST_DATA_TRANSFER_ERROR
        elif how == "resp" and statuses[cid] == 0:
            assert status == S.ST_DATA_TRANSFER_ERROR  # success without the data
        else:
            assert status == statuses[cid]
