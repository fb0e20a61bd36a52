"""The batched READ fast path: a run of plain 4 KiB-class READ(10)/READ(16)
commands answered straight from the receive buffer.

An initiator at queue depth sends many SCSI Command PDUs back to back, and a
recv returns a dozen of them at once. The general path frames each into a
`Pdu`, routes it (`Connection._one`), checks it (`_scsi_cmd`, `_fast_read`),
reads the bdev through a completion callback and packs a Data-In
(`_read_data`): about twenty Python calls per command. For the commands of
one receive that are plain reads of a zero-copy bdev (`IoChannel.read_view`),
`scan` does the same work in one loop over the buffer and queues all the
Data-In PDUs with one `_send`, leaving every other PDU (and everything after
it, so order is kept) to the general path.

A command is taken only when the general path would answer it with one
Data-In PDU carrying GOOD status, read synchronously: a SCSI Command that is
not immediate, F and R set, W clear, no AHS, no data segment, the next CmdSN
with the window open and nothing waiting or aborted (`Session.next_in_order`),
an ITT not in use, LUN addressing the device's `fast_lun` accepts (no unit
attention, reservation or removal), a READ CDB without RDPROTECT, in range,
EDTL equal to the transfer and within the Block Limits maximum, a bdev that
is not staged, and a transfer that fits one Data-In PDU without digests.
Anything else stops the scan at that PDU. tests/transports/iscsi/
test_iscsi_fastread.py feeds random mixes of PDUs through both paths and
compares the bytes sent and the session state."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import pdu as P
from .datain import DATA_IN_HDR, F_FINAL_STATUS

if TYPE_CHECKING:
    from .connection import Connection

# b0, f1, (b2, b3), AHS/DataSegmentLength, LUN, ITT, EDTL, CmdSN
_CMD = struct.Struct(">BBxxIQIII")
_R10 = struct.Struct(">BIxH")  # flags, LBA, (group), transfer length
_R16 = struct.Struct(">BQI")
_M32 = 0xFFFFFFFF
_OP = P.OP_SCSI_CMD  # b0 exactly: not immediate, no reserved bit
_OP_DATA_IN = P.OP_DATA_IN
_RSVD = P.RSVD_TAG
_HDR = DATA_IN_HDR.pack


def scan(conn: Connection) -> None:
    """Answer the plain READs at the head of the reader's buffer; stop at the
    first PDU that is not one (the caller frames the rest as usual)."""
    reader = conn.reader
    v = reader._view
    pos = reader._start
    end = reader._end
    if end - pos < P.BHS_LEN:
        return
    s = conn.session
    if s is None or s.discovery:
        return
    dev = conn.env.device(s.target_name)
    if dev is None:
        return
    single = conn.datain.single
    tasks = s.tasks
    qd = s.queue_depth
    out: list[P.Buffer] = []
    lun = None
    lun_field_seen = -1
    ch = None
    n_done = 0
    while end - pos >= 48:
        b0, f1, lens, lun_field, itt, edtl, cmdsn = _CMD.unpack_from(v, pos)
        if b0 != _OP or f1 & 0xE0 != 0xC0 or lens or edtl > single or edtl & 3 or not edtl:
            break
        op = v[pos + 32]
        if op == 0x28:
            flags, lba, nb = _R10.unpack_from(v, pos + 33)
        elif op == 0x88:
            flags, lba, nb = _R16.unpack_from(v, pos + 33)
        else:
            break
        exp = s.exp_cmdsn
        if (
            cmdsn != exp
            or s._ahead
            or s._aborted_sns
            or s.max_cmdsn == (cmdsn - 1) & _M32
            or itt in tasks
        ):
            break
        if lun_field != lun_field_seen:
            # nothing but this loop runs between two commands of the scan, so
            # the LUN's state (unit attentions, reservations) cannot change
            # within it: one `fast_lun` per LUN per scan
            top = lun_field >> 48
            if top >> 8 or lun_field & 0xFFFFFFFFFFFF:
                break
            lun = dev.fast_lun(top, s.nexus)
            if lun is None or lun.stage_reads:
                break
            ch = lun.fast_channel
            if ch is None or ch.removed:
                ch = lun.channel_getter()
                if ch is None:
                    break
                lun.fast_channel = ch
            lun_field_seen = lun_field
        assert lun is not None and ch is not None
        bdev = lun.bdev
        if (
            flags & 0xE0
            or not nb
            or lba + nb > bdev.num_blocks
            or nb * bdev.block_size != edtl
            or nb > lun.max_transfer_blocks
        ):
            break
        data = ch.read_view(lba, nb)
        if data is None:
            break
        pos += 48
        # Session.next_in_order then Session.done: ExpCmdSN moves on, the
        # command is finished at once (outstanding unchanged), MaxCmdSN grows
        exp = (cmdsn + 1) & _M32
        s.exp_cmdsn = exp
        want = (exp + qd - 1 - s.outstanding - s.outstanding_immediate) & _M32
        mx = s.max_cmdsn
        if (want - mx) & _M32 <= qd and want != mx:
            s.max_cmdsn = mx = want
        sn = conn.statsn
        conn.statsn = (sn + 1) & _M32
        out.append(
            _HDR(
                _OP_DATA_IN, F_FINAL_STATUS, 0, 0, edtl, lun_field, itt, _RSVD, sn, exp, mx, 0, 0, 0
            )
        )
        out.append(data)
        n_done += 1
    if n_done:
        reader._start = pos
        conn.pdus_in += n_done
        conn.pdus_out += n_done
        conn._send(out)
