"""Data-In packing (RFC 7143 11.7): a READ's data cut into Data-In PDUs of at
most the initiator's MaxRecvDataSegmentLength, with the F bit at the end of
every MaxBurstLength sequence and, when there is no sense data, the status
collapsed into the last PDU (S bit, StatSN, residual).

One implementation for every READ: the generic path (data from the SCSI core,
any number of pieces) and the fast path (one bdev buffer) both call
`DataInPacker.pack`. The common case of the fast path, one PDU without
digests or padding, is a branch inside it that packs the header in one
``struct.pack`` call; it gives the same bytes as the general loop (a test
compares them)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from . import pdu as P

# a Data-In BHS (the layout of pdu.encode's header), packed in one call
# (also by fastread.py, the batched READ path)
DATA_IN_HDR = struct.Struct(">4BIQ8I")
F_FINAL_STATUS = P.F_FINAL | P.F_STATUS
_HDR = DATA_IN_HDR
_FS = F_FINAL_STATUS


class DataInPacker:
    """The Data-In limits of one connection; `configure` follows negotiation."""

    __slots__ = ("maxlen", "burst", "hd", "dd", "single")

    # ``single`` is the longest transfer packed by the one-PDU branch (0: the
    # branch is off, as with digests; the tests turn it off to compare)

    def __init__(self) -> None:
        self.maxlen = 8192
        self.burst = 262144
        self.hd = False
        self.dd = False
        self.single = 0

    def configure(self, max_xmit_dlen: int, max_burst: int, hd: bool, dd: bool) -> None:
        self.maxlen = max(512, max_xmit_dlen)
        self.burst = max(1, max_burst)
        self.hd = hd
        self.dd = dd
        # the longest transfer that goes as one PDU packed without pdu.encode
        self.single = 0 if hd or dd else min(self.maxlen, self.burst)

    def pack(
        self,
        itt: int,
        lun_field: int,
        data: Sequence[P.Buffer],
        total: int,
        status: int,
        flags: int,
        residual: int,
        collapse: bool,
        statsn: int,
        exp: int,
        mx: int,
    ) -> list[list[P.Buffer]]:
        """The PDUs (each a buffer list) carrying the first ``total`` bytes of
        ``data``. With ``collapse`` the last one carries the status and
        ``statsn`` (the caller then advances its StatSN); the others carry
        StatSN 0 (RFC 7143 11.7.4)."""
        if total <= self.single and not total & 3 and len(data) == 1:
            d = data[0]
            if len(d) != total:
                d = memoryview(d).cast("B")[:total]
            if collapse:
                return [
                    [
                        _HDR.pack(
                            P.OP_DATA_IN,
                            _FS | flags,
                            0,
                            status,
                            total,
                            lun_field,
                            itt,
                            P.RSVD_TAG,
                            statsn,
                            exp,
                            mx,
                            0,
                            0,
                            residual,
                        ),
                        d,
                    ]
                ]
        maxlen = self.maxlen
        burst = self.burst
        out: list[list[P.Buffer]] = []
        off = 0
        datasn = 0
        pieces = iter(data)
        cur: memoryview = memoryview(b"")
        while off < total:
            n = min(maxlen, total - off, burst - (off % burst))
            chunk: list[memoryview] = []
            need = n
            while need:
                if not len(cur):
                    cur = memoryview(next(pieces)).cast("B")
                    continue
                take = cur[:need]
                chunk.append(take)
                cur = cur[len(take) :]
                need -= len(take)
            last = off + n >= total
            f1 = 0
            if last or (off + n) % burst == 0:
                f1 |= P.F_FINAL
            if last and collapse:
                f1 |= P.F_STATUS | flags
                w = (P.RSVD_TAG, statsn, exp, mx, datasn, off, residual)
                b3 = status
            else:
                w = (P.RSVD_TAG, 0, exp, mx, datasn, off, 0)
                b3 = 0
            out.append(
                P.encode(P.OP_DATA_IN, f1, 0, b3, lun_field, itt, w, chunk, self.hd, self.dd)
            )
            datasn += 1
            off += n
        return out
