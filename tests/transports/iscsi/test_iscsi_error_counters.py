"""The iSCSI error counters behind the Prometheus metrics (issue 13): Reject
PDUs and data digest errors are counted per connection (iscsi_get_stats adds
them up per reactor, including connections already gone)."""

from __future__ import annotations

from typing import Any

from blockfabric.transports.iscsi import pdu as P


def test_reject_counted(harness: Any) -> None:
    harness.login()
    # ERL 0: a SNACK is rejected
    out = harness.feed(P.encode_request(P.OP_SNACK, 0x80, 0, harness.next_itt(), (0,) * 7))
    assert [p.opcode for p in out] == [P.OP_REJECT]
    assert harness.conn.stats["rejects"] == 1
    assert harness.conn.stats["digest_errors"] == 0


def test_data_digest_error_counted(kit: Any) -> None:
    h = kit.Harness()
    h.login()  # the harness negotiates no digests: turn the data digest on after it
    cp = h.conn.cp
    cp.data_digest = True
    h.conn.reader.set_limits(cp.max_recv_dlen, cp.header_digest, True)
    # a NOP-Out with 4 bytes of ping data and a wrong data digest: rejected, not fatal
    raw = bytearray(
        b"".join(
            bytes(b)
            for b in P.encode(P.OP_NOP_OUT | 0x40, 0x80, 0, 0, 0, h.next_itt(),
                              (0xFFFFFFFF, h.cmdsn, 0, 0, 0, 0, 0), b"ping", False, True,
                              True)
        )
    )  # fmt: skip
    raw[-1] ^= 0xFF
    n = len(h.out)
    h.conn.feed(bytes(raw))
    assert h.conn.stats["digest_errors"] == 1
    assert h.conn.stats["rejects"] == 1
    assert len(h.out) > n and h.conn.state == "ffp"
