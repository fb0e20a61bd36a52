"""A small threaded NVMe/TCP target built from pdu.py, for host tests that
must run before (or without) the real blockfabric target. One namespace of
RAM; only what the host library uses."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Any

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec as S

SUBNQN = "nqn.2016-06.io.blockfabric:fake"
ICD = 8192


class FakeTarget:
    def __init__(
        self,
        num_blocks: int = 2048,
        block_size: int = 512,
        maxh2c: int = 16384,
        c2h_chunk: int = 8192,
        success_flag: bool = False,
        port: int = 0,
    ) -> None:
        self.bs = block_size
        self.nblocks = num_blocks
        self.mem = bytearray(num_blocks * block_size)
        self.maxh2c = maxh2c
        self.c2h_chunk = c2h_chunk
        self.success_flag = success_flag
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.ctrls: dict[int, dict[str, Any]] = {}
        self.next_cntlid = 1
        self.conns: list[socket.socket] = []
        self.commands: list[int] = []  # opcodes seen (admin and I/O)
        self.stopped = False
        self.corrupt_reads = False  # flip a byte in every read (verify tests)
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def close(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):
            self.lsock.shutdown(socket.SHUT_RDWR)
        self.lsock.close()
        for c in list(self.conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
                c.close()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    # ------------------------------------------------------------------
    def _serve(self, c: socket.socket) -> None:
        rd = P.PduReader(role=P.CONTROLLER)
        st: dict[str, Any] = {"hd": False, "dd": False, "qid": None, "ctrl": None, "pending": {}}
        try:
            while True:
                buf = rd.get_buffer()
                n = c.recv_into(buf)
                del buf
                if n == 0:
                    return
                rd.commit(n)
                for pdu in rd.pdus():
                    out = self._handle(rd, st, pdu)
                    if out:
                        c.sendall(b"".join(bytes(b) for b in out))
        except (OSError, P.PduError):
            return
        finally:
            with contextlib.suppress(OSError):
                c.close()

    def _resp(self, st: dict[str, Any], cid: int, status: int = 0, result: int = 0) -> list[Any]:
        return P.encode_capsule_resp(cid, status, result, hdgst=st["hd"])

    def _handle(self, rd: P.PduReader, st: dict[str, Any], pdu: P.Pdu) -> list[Any]:
        if pdu.type == P.ICREQ:
            _pfv, _hpda, hd, dd, _ = P.parse_ic(pdu.hdr)
            st["hd"], st["dd"] = bool(hd), bool(dd)
            rd.ic_done = True
            rd.hdgst, rd.ddgst = st["hd"], st["dd"]
            return [P.encode_icresp(0, st["hd"], st["dd"], self.maxh2c)]
        if pdu.type == P.H2C_DATA:
            cid, _ttag, off, dl = P.parse_data_hdr(pdu.hdr)
            slba, buf, need = st["pending"][cid]
            buf[off : off + dl] = pdu.data
            need -= dl
            if need:
                st["pending"][cid] = (slba, buf, need)
                return []
            del st["pending"][cid]
            return self._write_done(st, cid, slba, buf)
        if pdu.type != P.CAPSULE_CMD:
            return []
        sqe = S.unpack_sqe(pdu.hdr, 8)
        self.commands.append(sqe.opcode)
        if st["qid"] is None or st["qid"] == 0:
            return self._admin(st, sqe, pdu)
        return self._io(st, sqe, pdu)

    def _data_out(self, st: dict[str, Any], cid: int, data: bytes) -> list[Any]:
        out: list[Any] = []
        for off in range(0, len(data), self.c2h_chunk):
            chunk = data[off : off + self.c2h_chunk]
            last = off + len(chunk) >= len(data)
            P.encode_data(
                P.C2H_DATA,
                cid,
                0,
                off,
                chunk,
                last=last,
                success=last and self.success_flag,
                hdgst=st["hd"],
                ddgst=st["dd"],
                out=out,
            )
        if not self.success_flag:
            out += self._resp(st, cid)
        return out

    def _admin(self, st: dict[str, Any], sqe: S.Sqe, pdu: P.Pdu) -> list[Any]:
        cid = sqe.cid
        if sqe.opcode == S.FABRICS_OPCODE:
            fct = sqe.nsid & 0xFF
            if fct == S.FCTYPE_CONNECT:
                _recfmt, qid, sqsize, _cattr, kato = struct.unpack_from("<HHHBxI", pdu.hdr, 8 + 40)
                d = bytes(pdu.data or b"")
                if S.cstr(d, 256, 256).decode() not in (SUBNQN, S.NVME_DISC_SUBSYS_NAME):
                    return self._resp(st, cid, S.ST_CONNECT_INVALID_PARAM, S.connect_ipo(256, True))
                with self.lock:
                    if qid == 0:
                        cntlid = self.next_cntlid
                        self.next_cntlid += 1
                        self.ctrls[cntlid] = {"cc": 0, "kato": kato}
                    else:
                        cntlid = struct.unpack_from("<H", d, 16)[0]
                        if cntlid not in self.ctrls:
                            return self._resp(
                                st, cid, S.ST_CONNECT_INVALID_PARAM, S.connect_ipo(16, True)
                            )
                st["qid"], st["ctrl"] = qid, cntlid
                return self._resp(st, cid, 0, cntlid)
            ctrl = self.ctrls[st["ctrl"]]
            if fct == S.FCTYPE_PROPERTY_GET:
                _a, off = struct.unpack_from("<B3xI", pdu.hdr, 8 + 40)
                v = {
                    S.PROP_CAP: 127 | (1 << 24),
                    S.PROP_VS: S.NVME_VS_1_3,
                    S.PROP_CC: ctrl["cc"],
                    S.PROP_CSTS: (ctrl["cc"] & 1)
                    | (S.CSTS_SHST_CMPLT if ctrl["cc"] & S.CC_SHN_MASK else 0),
                }
                return self._resp(st, cid, 0, v.get(off, 0))
            if fct == S.FCTYPE_PROPERTY_SET:
                _a, off, val = struct.unpack_from("<B3xIQ", pdu.hdr, 8 + 40)
                if off == S.PROP_CC:
                    ctrl["cc"] = val
                return self._resp(st, cid)
            return self._resp(st, cid, S.ST_INVALID_OPCODE)
        if sqe.opcode == S.ADMIN_IDENTIFY:
            cns = sqe.cdw10 & 0xFF
            b = bytearray(4096)
            if cns == S.CNS_CTRL:
                b[4:24] = S.fixed_ascii("FAKE0001", 20)
                b[24:64] = S.fixed_ascii("fake target", 40)
                struct.pack_into("<H", b, 78, st["ctrl"])
                struct.pack_into("<H", b, 514, 127)
                struct.pack_into("<I", b, 516, 1)
                sn = SUBNQN.encode()
                b[768 : 768 + len(sn)] = sn
                struct.pack_into("<II", b, 1792, (ICD + 64) // 16, 1)
            elif cns == S.CNS_NS:
                if sqe.nsid != 1:
                    return self._resp(st, cid, S.ST_INVALID_NS)
                struct.pack_into("<QQQ", b, 0, self.nblocks, self.nblocks, self.nblocks)
                struct.pack_into("<I", b, 128, (self.bs.bit_length() - 1) << 16)
            elif cns == S.CNS_ACTIVE_NS_LIST:
                struct.pack_into("<I", b, 0, 1)
            else:
                return self._resp(st, cid, S.ST_INVALID_FIELD)
            return self._data_out(st, cid, bytes(b))
        if sqe.opcode == S.ADMIN_SET_FEATURES and sqe.cdw10 & 0xFF == S.FID_NUM_QUEUES:
            return self._resp(st, cid, 0, (3 << 16) | 3)
        if sqe.opcode == S.ADMIN_GET_FEATURES:
            return self._resp(st, cid, 0, 0x1234 if sqe.cdw10 & 0xFF == S.FID_KATO else 0)
        if sqe.opcode == S.ADMIN_KEEP_ALIVE:
            return self._resp(st, cid)
        if sqe.opcode == S.ADMIN_GET_LOG_PAGE and sqe.cdw10 & 0xFF == S.LID_DISCOVERY:
            numd = ((sqe.cdw10 >> 16) | (sqe.cdw11 << 16)) + 1
            off = sqe.cdw12 | (sqe.cdw13 << 32)
            log = bytearray(2048)
            struct.pack_into("<QQH", log, 0, 5, 1, 0)
            struct.pack_into(
                "<BBBBHHHH",
                log,
                1024,
                S.TRTYPE_TCP,
                S.ADRFAM_IPV4,
                S.SUBTYPE_NVME,
                0,
                1,
                0xFFFF,
                128,
                0,
            )
            log[1024 + 32 : 1024 + 36] = b"4420"
            log[1024 + 512 : 1024 + 521] = b"127.0.0.1"  # TRADDR (bytes 767:512)
            log[1024 + 256 : 1024 + 256 + len(SUBNQN)] = SUBNQN.encode()  # SUBNQN (511:256)
            return self._data_out(st, cid, bytes(log[off : off + numd * 4]).ljust(numd * 4, b"\0"))
        return self._resp(st, cid, S.ST_INVALID_OPCODE)

    def _io(self, st: dict[str, Any], sqe: S.Sqe, pdu: P.Pdu) -> list[Any]:
        cid = sqe.cid
        slba = sqe.cdw10 | (sqe.cdw11 << 32)
        nlb = (sqe.cdw12 & 0xFFFF) + 1
        bs = self.bs
        if sqe.opcode in (S.IO_READ, S.IO_WRITE, S.IO_WRITE_ZEROES) and slba + nlb > self.nblocks:
            return self._resp(st, cid, S.ST_LBA_OUT_OF_RANGE)
        if sqe.opcode == S.IO_READ:
            data = bytearray(self.mem[slba * bs : (slba + nlb) * bs])
            if self.corrupt_reads:
                data[100] ^= 0x40
            return self._data_out(st, cid, bytes(data))
        if sqe.opcode == S.IO_WRITE:
            if pdu.data is not None:
                return self._write_done(st, cid, slba, bytes(pdu.data))
            length = S.unpack_sgl(sqe.dptr).length
            st["pending"][cid] = (slba, bytearray(length), length)
            return P.encode_r2t(cid, 3, 0, length, hdgst=st["hd"])
        if sqe.opcode == S.IO_WRITE_ZEROES:
            self.mem[slba * bs : (slba + nlb) * bs] = bytes(nlb * bs)
            return self._resp(st, cid)
        if sqe.opcode == S.IO_DSM:
            d = bytes(pdu.data or b"")
            for i in range((sqe.cdw10 & 0xFF) + 1):
                _a, n, s = struct.unpack_from("<IIQ", d, 16 * i)
                self.mem[s * bs : (s + n) * bs] = bytes(n * bs)
            return self._resp(st, cid)
        if sqe.opcode == S.IO_FLUSH:
            return self._resp(st, cid)
        return self._resp(st, cid, S.ST_INVALID_OPCODE)

    def _write_done(
        self, st: dict[str, Any], cid: int, slba: int, data: bytes | bytearray
    ) -> list[Any]:
        self.mem[slba * self.bs : slba * self.bs + len(data)] = data
        return self._resp(st, cid)
