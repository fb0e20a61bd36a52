"""A small raw iSCSI initiator for daemon tests (not a test module).

Built on blockfabric.transports.iscsi.pdu encoders/decoders.  It logs in with
the operational keys the target negotiates (ImmediateData, InitialR2T,
FirstBurstLength, MaxBurstLength, the target's MaxRecvDataSegmentLength),
keeps several commands in flight (submit/wait by ITT), answers R2Ts with
Data-Out, sends immediate and unsolicited data when negotiated, answers
NOP-In pings and honours the MaxCmdSN window.

Load it with ``load_raw()`` from a test file (tests/transports is not on sys.path).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass, field

from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi import text

INIT_IQN = "iqn.2024-01.io.blockfabric:rawini"
GOOD, CHECK_CONDITION = 0x00, 0x02


class LoginFailed(Exception):
    def __init__(self, status: int, keys: list[tuple[str, str]]) -> None:
        super().__init__(f"login status {status:#06x} keys {keys}")
        self.status = status
        self.keys = keys


class Dropped(Exception):
    """The target closed the connection."""


@dataclass
class Result:
    itt: int
    status: int  # SCSI status (b3)
    response: int = 0
    data: bytearray = field(default_factory=bytearray)
    sense: bytes = b""
    residual: int = 0

    @property
    def sense_key(self) -> int:
        return self.sense[2] & 0xF if len(self.sense) > 2 else -1

    @property
    def asc(self) -> int:
        return self.sense[12] if len(self.sense) > 12 else -1


@dataclass
class _Cmd:
    itt: int
    data: bytes | memoryview
    got: bytearray = field(default_factory=bytearray)


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + struct.pack(">I", lba) + b"\0" + struct.pack(">H", n) + b"\0"


def write10(lba: int, n: int) -> bytes:
    return bytes([0x2A, 0]) + struct.pack(">I", lba) + b"\0" + struct.pack(">H", n) + b"\0"


REPORT_LUNS = bytes([0xA0, 0, 0, 0, 0, 0]) + struct.pack(">I", 4096) + bytes(2)
TUR = bytes(6)


def report_luns_list(data: bytes) -> list[int]:
    n = struct.unpack_from(">I", data, 0)[0] // 8 if len(data) >= 4 else 0
    return [P.lun_to_int(struct.unpack_from(">Q", data, 8 + 8 * i)[0]) for i in range(n)]


class RawIscsi:
    def __init__(self, port: int, target: str | None, timeout: float = 15.0) -> None:
        self.port = port
        self.target = target
        self.timeout = timeout
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.isid = 0x800000000000 | int.from_bytes(os.urandom(3), "big")
        self.cmdsn = 1
        self.expstatsn = 0
        self.maxcmdsn = 1
        self.itt = 0x10
        self.login_itt = 0x7
        self.hd = False
        self.dd = False
        self.keys: dict[str, str] = {}
        self.pending: dict[int, _Cmd] = {}
        self.done: dict[int, Result] = {}
        self.rejects: list[P.Pdu] = []
        self.async_events: list[P.Pdu] = []
        self.other: list[P.Pdu] = []
        self.max_data_in = 0  # largest Data-In data segment seen

    # ------------------------------------------------------------ wire
    def close(self) -> None:
        self.s.close()

    def send(self, raw: bytes) -> None:
        self.s.sendall(raw)

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            c = self.s.recv(n - len(buf))
            if not c:
                raise Dropped(f"closed by target ({len(buf)}/{n} bytes of a PDU)")
            buf += c
        return bytes(buf)

    def recv(self) -> P.Pdu:
        bhs = self._exact(P.BHS_LEN)
        p = P.Pdu(bhs)
        if p.ahs_len:
            self._exact(p.ahs_len)
        if self.hd:
            self._exact(4)
        if p.dlen:
            p.data = self._exact(p.dlen + P.pad_len(p.dlen))[: p.dlen]
            if self.dd:
                self._exact(4)
        else:
            p.data = b""
        return p

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the target closed the connection (data before EOF is skipped)."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.s.settimeout(self.timeout)

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    # ------------------------------------------------------------ login
    def login_pdu(
        self, keys: list[tuple[str, str]], csg: int, nsg: int, transit: bool = True
    ) -> P.Pdu:
        f1 = (P.F_TRANSIT if transit else 0) | (csg << 2) | (nsg if transit else 0)
        self.send(
            P.encode_request(
                P.OP_LOGIN_REQ,
                f1,
                self.isid << 16,
                self.login_itt,  # one task: the ITT stays the same for the whole login
                (0, self.cmdsn, self.expstatsn, 0, 0, 0, 0),
                text.encode(keys),
                immediate=True,
            )
        )
        r = self.recv()
        if r.opcode != P.OP_LOGIN_RESP:
            raise AssertionError(f"expected a Login Response, got opcode {r.opcode:#x}")
        self.expstatsn = r.w24 + 1
        self.maxcmdsn = r.w32
        status = r.w36 >> 16
        got = text.parse(r.data)
        if status:
            raise LoginFailed(status, got)
        self.keys.update(got)
        return r

    def login(
        self, ops: list[tuple[str, str]] | None = None, header_digest: bool = False
    ) -> dict[str, str]:
        sec = [("InitiatorName", INIT_IQN), ("AuthMethod", "None")]
        if self.target is None:
            sec.append(("SessionType", "Discovery"))
        else:
            sec += [("TargetName", self.target), ("SessionType", "Normal")]
        r = self.login_pdu(sec, 0, 1)
        if self.keys.get("AuthMethod", "None") != "None":
            raise AssertionError(f"target wants authentication: {self.keys}")
        offer = [
            ("HeaderDigest", "CRC32C" if header_digest else "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
        ]
        if self.target is not None:
            offer += [
                ("ImmediateData", "Yes"),
                ("InitialR2T", "No"),
                ("MaxBurstLength", "1048576"),
                ("FirstBurstLength", "65536"),
                ("MaxOutstandingR2T", "1"),
            ]
        override = {k for k, _ in ops or []}
        offer = [kv for kv in offer if kv[0] not in override] + list(ops or [])
        r = self.login_pdu(offer, 1, 3)
        # the target may need more round trips before it transits to full feature
        for _ in range(4):
            if r.transit and r.nsg == 3:
                break
            r = self.login_pdu([], 1, 3)
        else:
            raise AssertionError(f"login never reached full feature phase: {self.keys}")
        self.hd = self.keys.get("HeaderDigest") == "CRC32C"
        self.dd = self.keys.get("DataDigest") == "CRC32C"
        return dict(self.keys)

    # negotiated values (RFC 7143 defaults when the target did not answer)
    @property
    def immediate_data(self) -> bool:
        return self.keys.get("ImmediateData", "Yes") == "Yes"

    @property
    def initial_r2t(self) -> bool:
        return self.keys.get("InitialR2T", "Yes") == "Yes"

    @property
    def first_burst(self) -> int:
        return int(self.keys.get("FirstBurstLength", "65536"))

    @property
    def target_mrdsl(self) -> int:
        return int(self.keys.get("MaxRecvDataSegmentLength", "8192"))

    # ------------------------------------------------------------ commands
    def _data_out(
        self, itt: int, ttt: int, data: bytes | memoryview, start: int, end: int, lun: int
    ) -> None:
        seg = self.target_mrdsl
        datasn = 0
        out = []
        for off in range(start, end, seg):
            k = min(seg, end - off)
            final = 0x80 if off + k == end else 0
            out.append(
                P.encode_request(
                    P.OP_DATA_OUT,
                    final,
                    P.int_to_lun(lun),
                    itt,
                    (ttt, 0, self.expstatsn, 0, datasn, off, 0),
                    bytes(data[off : off + k]),
                    header_digest=self.hd,
                    data_digest=self.dd,
                )
            )
            datasn += 1
        self.send(b"".join(out))

    def submit(
        self,
        cdb: bytes,
        edtl: int = 0,
        read: bool = False,
        data: bytes | memoryview | None = None,
        lun: int = 0,
        timeout: float | None = None,
    ) -> int:
        # stay inside the command window the target opened
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.cmdsn > self.maxcmdsn:
            if time.monotonic() > deadline:
                raise TimeoutError(f"CmdSN window closed: cmdsn {self.cmdsn} > {self.maxcmdsn}")
            self.pump_one()
        itt = self.next_itt()
        write = data is not None
        if write:
            assert data is not None
            edtl = len(data)
        imm = b""
        if write and self.immediate_data:
            imm = bytes(data[: min(self.first_burst, self.target_mrdsl, edtl)])  # type: ignore[index]
        f1 = 0x80 | (0x40 if read else 0) | (0x20 if write else 0) | 1  # SIMPLE
        w = (edtl, self.cmdsn, self.expstatsn, *struct.unpack(">4I", cdb.ljust(16, b"\0")))
        self.cmdsn += 1
        self.pending[itt] = _Cmd(itt, data if data is not None else b"")
        self.send(
            P.encode_request(
                P.OP_SCSI_CMD,
                f1,
                P.int_to_lun(lun),
                itt,
                w,
                imm,
                header_digest=self.hd,
                data_digest=self.dd,
            )
        )
        if write and not self.initial_r2t and len(imm) < min(self.first_burst, edtl):
            assert data is not None
            self._data_out(itt, P.RSVD_TAG, data, len(imm), min(self.first_burst, edtl), lun)
        return itt

    def _status_seen(self, r: P.Pdu) -> None:
        self.expstatsn = max(self.expstatsn, (r.w24 + 1) & 0xFFFFFFFF)

    def pump_one(self) -> P.Pdu:
        r = self.recv()
        op = r.opcode
        if op in (P.OP_SCSI_RESP, P.OP_DATA_IN, P.OP_R2T, P.OP_NOP_IN, P.OP_ASYNC, P.OP_REJECT):
            self.maxcmdsn = max(self.maxcmdsn, r.w32)
        if op == P.OP_R2T:
            c = self.pending[r.itt]
            self._data_out(r.itt, r.w20, c.data, r.w40, r.w40 + r.w44, P.lun_to_int(r.lun))
        elif op == P.OP_DATA_IN:
            c = self.pending[r.itt]
            self.max_data_in = max(self.max_data_in, r.dlen)
            assert r.w40 == len(c.got), f"Data-In offset {r.w40} != {len(c.got)}"
            c.got += r.data
            if r.f1 & P.F_STATUS:
                self._status_seen(r)
                self.pending.pop(r.itt)
                self.done[r.itt] = Result(r.itt, r.b3, 0, c.got, b"", r.w44)
        elif op == P.OP_SCSI_RESP:
            self._status_seen(r)
            c = self.pending.pop(r.itt)
            sense = b""
            if len(r.data) >= 2:
                n = struct.unpack_from(">H", r.data, 0)[0]
                sense = bytes(r.data[2 : 2 + n])
            self.done[r.itt] = Result(r.itt, r.b3, r.b2, c.got, sense, r.w44)
        elif op == P.OP_NOP_IN:
            if r.itt == P.RSVD_TAG and r.w20 != P.RSVD_TAG:
                # a ping from the target: answer with the same TTT
                self.send(
                    P.encode_request(
                        P.OP_NOP_OUT,
                        0x80,
                        r.lun,
                        P.RSVD_TAG,
                        (r.w20, self.cmdsn, self.expstatsn, 0, 0, 0, 0),
                        immediate=True,
                        header_digest=self.hd,
                    )
                )
            else:
                self._status_seen(r)
        elif op == P.OP_REJECT:
            self._status_seen(r)
            self.rejects.append(r)
        elif op == P.OP_ASYNC:
            self._status_seen(r)
            self.async_events.append(r)
        else:
            self._status_seen(r)
            self.other.append(r)
        return r

    def wait(self, itt: int, timeout: float | None = None) -> Result:
        deadline = time.monotonic() + (timeout or self.timeout)
        while itt not in self.done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer for ITT {itt:#x}")
            self.pump_one()
        return self.done.pop(itt)

    def command(
        self,
        cdb: bytes,
        edtl: int = 0,
        read: bool = False,
        data: bytes | memoryview | None = None,
        lun: int = 0,
    ) -> Result:
        return self.wait(self.submit(cdb, edtl, read, data, lun))

    def clear_unit_attention(self, lun: int = 0) -> Result:
        r = self.command(TUR, lun=lun)
        for _ in range(4):
            if r.status == GOOD:
                break
            r = self.command(TUR, lun=lun)
        return r

    def logout(self) -> None:
        self.send(
            P.encode_request(
                P.OP_LOGOUT_REQ,
                0x80,
                0,
                self.next_itt(),
                (0, self.cmdsn, self.expstatsn, 0, 0, 0, 0),
                immediate=True,
                header_digest=self.hd,
            )
        )
        while True:
            if self.pump_one().opcode == P.OP_LOGOUT_RESP:
                return
