"""NVMe over FC host queue over the loopback LLD (sans-I/O) and its blocking wrapper.

`FcHostQueue` is a `HostQueue` (same command layer: CIDs, slots, the SQE
builders for read/write/connect/properties, callbacks, timeouts) whose wire
is FC-NVMe over the loopback LLD's frames (transports/fc/frame.py) instead
of NVMe/TCP PDUs:

* ``start()`` logs the host port in to the target port (LOGIN), then sends
  the link service that creates this queue's FC-NVMe connection: Create
  Association for the admin queue (qid 0; it carries the host and subsystem
  NQNs, checked by the target before any NVMe command), Create I/O
  Connection with the association id for an I/O queue. ``ic_done`` turns
  True once the LS_ACC names the connection id; an LS_RJT fails the queue
  with `FcLsRejected` (reason and explanation).
* every command is one exchange (xid = CID): a CMD IU with the connection
  id, a command sequence number, the data length and direction; write data
  goes out when the target sends a transfer-ready; read data lands where
  the caller asked; the exchange ends with the good response (success, all
  data moved) or an ERSP carrying the CQE.
* Disconnect LS on `disconnect_ls()` (the admin queue ends the association).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Any

from ..fc import frame as F
from ..fc.addr import FcName, parse_traddr
from ..nvmf import fc_iu as IU
from ..nvmf import fc_ls as LS
from ..nvmf import spec as S
from .controller import BlockingQueue
from .queue import HostQueue, Request, TransportError

LS_XID = 0x80000000  # LS exchanges are numbered apart from command exchanges
_SGL_TRANSPORT = S.SGL_TYPE_TRANSPORT
_CQE = S.CQE.unpack_from
_DLEN = struct.Struct("<I")
ST_ABORTED = S.ST_ABORT_REQ


class FcLsRejected(TransportError):
    """The target refused a link service (LS_RJT)."""

    def __init__(self, rej: LS.LsRejected) -> None:
        super().__init__(str(rej))
        self.reason = rej.reason
        self.explanation = rej.explanation
        self.ls_cmd = rej.ls_cmd


def default_host_port(hostid: bytes) -> FcName:
    """A host port name derived from the host id (IEEE registered format 5
    WWNs are what HBAs carry; a software host makes one up, stable per hostid)."""
    low = int.from_bytes(hostid[-6:], "big") & 0xFFFFFFFFFFFF
    return FcName(0x2000_0000_0000_0000 | low, 0x1000_0000_0000_0000 | low)


class FcHostQueue(HostQueue):
    def __init__(
        self,
        host: FcName,
        target: FcName,
        qid: int,
        qsize: int,
        subnqn: str = "",
        hostnqn: str = "",
        hostid: bytes = bytes(16),
        assoc_id: int = 0,
        ersp_ratio: int = 0,
        max_payload: int = 1 << 17,
    ) -> None:
        super().__init__(qid=qid, qsize=qsize)
        self.host = host
        self.target = target
        self.subnqn = subnqn
        self.hostnqn = hostnqn
        self.hostid = hostid
        self.assoc_id = assoc_id
        self.conn_id = 0
        self.ersp_ratio = ersp_ratio if ersp_ratio < qsize - 1 else 0
        self.icd_max = 0  # FC-NVMe: data always moves in data phases
        self.max_payload = max_payload
        self.freader = F.FrameReader(max_payload)
        self._rx = bytearray(1 << 17)
        self.csn = 0
        self.logged_in = False
        self.ls_done = False  # the Disconnect LS was answered
        self.rsn = 0

    # ------------------------------------------------------------ setup
    def start(self) -> None:
        self.tx.append(F.encode(F.T_LOGIN, 0, self.host.pack() + self.target.pack()))

    def _send_ls(self) -> None:
        if self.qid == 0:
            req: LS.LsRequest = LS.CreateAssociation(
                self.ersp_ratio, 0xFFFF, self.qsize - 1, self.hostid, self.hostnqn, self.subnqn
            )
        else:
            req = LS.CreateConnection(self.assoc_id, self.ersp_ratio, self.qid, self.qsize - 1)
        self.tx.append(F.encode(F.T_LS_REQ, LS_XID, LS.encode_request(req)))

    def disconnect_ls(self) -> None:
        """Ask the target to end the association (Disconnect LS)."""
        self.tx.append(
            F.encode(F.T_LS_REQ, LS_XID + 1, LS.encode_request(LS.Disconnect(self.assoc_id)))
        )

    # ------------------------------------------------------ submission
    def _emit_capsule(self, r: Request, data: Any) -> None:
        h = r.hdr
        if data is not None:
            r.wbuf = memoryview(data)
        h[47] = _SGL_TRANSPORT  # FC-NVMe: a transport SGL data block, never in-capsule
        (dlen,) = _DLEN.unpack_from(h, 40)
        if not dlen:
            flags = 0
        elif r.wbuf is not None:
            flags = IU.FLAG_WRITE
        else:
            flags = IU.FLAG_READ
        self.csn = (self.csn + 1) & 0xFFFFFFFF
        self.tx.append(F.header(F.T_CMD, r.cid, 0, IU.CMD_IU_LEN))
        self.tx.append(IU.encode_cmd_iu(self.conn_id, self.csn, dlen, flags, bytes(h[8:72])))

    # ------------------------------------------------------ receive side
    def recv_buffer(self) -> memoryview:
        return memoryview(self._rx)

    def received(self, n: int) -> int:
        return self.feed(memoryview(self._rx)[:n])

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        if self.failed is not None:
            raise self.failed
        try:
            frames = self.freader.feed(data)
        except F.FrameError as e:
            raise self._fail(f"bad frame from the target: {e}") from None
        done = 0
        for f in frames:
            done += self._frame(f)
        return done

    def _fail(self, msg: str) -> TransportError:
        self.failed = TransportError(msg)
        return self.failed

    def _frame(self, f: F.Frame) -> int:
        t = f.type
        if t == F.T_DATA:
            return self._on_data(f)
        if t == F.T_RSP:
            return self._on_rsp(f)
        if t == F.T_XFER_RDY:
            self._on_xfer_rdy(f)
            return 0
        if t == F.T_LOGIN_ACC and not self.logged_in:
            self.logged_in = True
            self._send_ls()
            return 0
        if t == F.T_LOGIN_RJT:
            raise self._fail(
                f"login refused by the target: {bytes(f.payload).decode(errors='replace')}"
            )
        if t == F.T_LS_RSP:
            self._on_ls_rsp(f)
            return 0
        if t == F.T_ABTS:
            self.tx.append(F.encode(F.T_BA_ACC, f.xid))
            r = self._slot(f.xid)
            if r is not None:
                self._complete(r, ST_ABORTED, 0)
                return 1
            return 0
        if t == F.T_LOGOUT:
            raise self._fail("the target logged the host port out")
        if t == F.T_BA_ACC:
            return 0
        raise self._fail(f"unexpected {f!r} from the target")

    def _on_ls_rsp(self, f: F.Frame) -> None:
        try:
            resp = LS.decode_response(f.payload)
        except LS.LsError as e:
            raise self._fail(f"bad LS response: {e}") from None
        if f.xid == LS_XID + 1:
            self.ls_done = True
            return
        if isinstance(resp, LS.LsRejected):
            self.failed = FcLsRejected(resp)
            raise self.failed
        if resp.conn_id is None or (self.qid == 0 and resp.assoc_id is None):
            raise self._fail("LS_ACC without the connection id")
        if self.qid == 0:
            assert resp.assoc_id is not None
            self.assoc_id = resp.assoc_id
        self.conn_id = resp.conn_id
        self.ic_done = True
        if self.on_ic is not None:
            self.on_ic()

    def _slot(self, xid: int) -> Request | None:
        if xid < len(self.slots) and self.slots[xid].busy:
            return self.slots[xid]
        return None

    def _on_xfer_rdy(self, f: F.Frame) -> None:
        r = self._slot(f.xid)
        src = r.wbuf if r is not None else None
        off, n = f.offset, f.length
        if src is None or off + n > len(src):
            raise self._fail(f"transfer-ready {off}+{n} for exchange {f.xid:#x} outside its data")
        end = off + n
        step = self.max_payload
        tx = self.tx
        while off < end:
            k = min(step, end - off)
            tx.append(F.header(F.T_DATA, f.xid, off, k))
            tx.append(src[off : off + k])
            off += k

    def _on_data(self, f: F.Frame) -> int:
        r = self._slot(f.xid)
        dst = r.rbuf if r is not None else None
        n = len(f.payload)
        if r is None or dst is None or f.offset != r.xfer or f.offset + n > len(dst):
            raise self._fail(f"data {f.offset}+{n} for exchange {f.xid:#x} outside its read buffer")
        dst[f.offset : f.offset + n] = f.payload
        r.xfer += n
        return 0

    def _on_rsp(self, f: F.Frame) -> int:
        r = self._slot(f.xid)
        if r is None:
            raise self._fail(f"response for exchange {f.xid:#x}, which is not open")
        try:
            ersp = IU.decode_response(f.payload)
        except IU.IuError as e:
            raise self._fail(f"bad response IU: {e}") from None
        want = len(r.rbuf) if r.rbuf is not None else 0
        if ersp is None:
            st = 0 if r.xfer == want else S.ST_DATA_TRANSFER_ERROR
            self._complete(r, st, 0)
            return 1
        result, _sqhd, _sqid, cid, status = _CQE(ersp.cqe, 0)
        if cid != r.cid:
            raise self._fail(f"ERSP of exchange {f.xid:#x} carries CID {cid}")
        self.rsn = ersp.rsn
        status &= 0xFFFE
        if status == 0 and r.rbuf is not None and r.xfer != want:
            status = S.ST_DATA_TRANSFER_ERROR
        self._complete(r, status, result)
        return 1


class FcBlockingQueue(BlockingQueue):
    """An `FcHostQueue` on a blocking Unix socket to the loopback target port."""

    def __init__(
        self,
        traddr: str,
        host_traddr: str,
        qid: int,
        qsize: int,
        timeout: float,
        subnqn: str = "",
        hostnqn: str = "",
        hostid: bytes = bytes(16),
        assoc_id: int = 0,
    ) -> None:
        self.timeout = timeout
        self.lock = threading.RLock()
        target = parse_traddr(traddr)
        host = parse_traddr(host_traddr)
        path = F.socket_path(target)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise ConnectionRefusedError(
                e.errno, f"no loopback FC target port {target} ({path}): {e.strerror}"
            ) from None
        self.q: FcHostQueue = FcHostQueue(
            host, target, qid, qsize, subnqn, hostnqn, hostid, assoc_id
        )
        self.q.start()
        try:
            self._run(
                lambda: self.q.ic_done,
                time.monotonic() + timeout,
                "Create Association" if qid == 0 else "Create I/O Connection",
            )
        except BaseException:
            self.sock.close()
            raise

    def disconnect(self) -> None:
        """Disconnect LS: the target tears the association down."""
        with self.lock, contextlib.suppress(OSError, TransportError, TimeoutError):
            self.q.disconnect_ls()
            self._run(lambda: self.q.ls_done, time.monotonic() + self.timeout, "Disconnect")
