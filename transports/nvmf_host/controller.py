"""NVMe/TCP host controller: socket glue around the sans-I/O `HostQueue`.

* `Controller`: blocking (plain sockets), for tools, tests and the
  supervisor's admin queue: connect, properties, enable/shutdown, Identify,
  Get Log Page (with discovery log parsing), features, keep-alive, and
  synchronous I/O on its own I/O queues.
* `LoopQueue`: a non-blocking I/O queue pair driven by an `EventLoop`
  (reactors): connect, ICReq, Fabrics Connect and I/O without blocking.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
import time
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...control.keyring import TlsPsk
from ..nvmf import spec as S
from ..nvmf.auth_host import AuthFailed
from ..tls.psk import PskEntry, derive
from . import auth
from .auth import HostAuthConfig
from .queue import (
    ST_ABORTED_BY_HOST,
    ST_HOST_PATH_ERROR,
    Completion,
    HostQueue,
    NvmeStatusError,
    Request,
    TransportError,
    advance,
)

DEFAULT_HOSTNQN_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:"
IOV_MAX = 512


def default_hostnqn(hostid: bytes) -> str:
    return DEFAULT_HOSTNQN_PREFIX + str(uuid_mod.UUID(bytes=hostid))


def _sock_opts(s: socket.socket) -> None:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _tls_wrap(sock: socket.socket, entry: PskEntry, timeout: float) -> Any:
    """TLS 1.3 handshake with the PSK ``entry`` on a connected socket; the
    wrapper the queue uses from now on (tls_sock.py)."""
    from .tls_sock import TlsSocket

    ts = TlsSocket(sock, entry)
    try:
        ts.handshake(timeout)
    except BaseException:
        ts.close()
        raise
    return ts


def send_all_nb(sock: socket.socket, bufs: list[Any]) -> list[Any]:
    """Send as much of ``bufs`` as the socket takes now; return the rest."""
    while bufs:
        try:
            n = sock.sendmsg(bufs[:IOV_MAX])
        except (BlockingIOError, InterruptedError):
            return bufs
        bufs = advance(bufs, n)
    return bufs


# ------------------------------------------------------------ data shapes
@dataclass
class IdentifyController:
    vid: int
    sn: str
    mn: str
    fr: str
    mdts: int
    cntlid: int
    ver: int
    kas: int  # keep-alive granularity, 100 ms units
    maxcmd: int
    nn: int
    subnqn: str
    ioccsz: int
    iorcsz: int
    icdoff: int
    raw: bytes

    @property
    def icd_max(self) -> int:
        """In-capsule data bytes an I/O command may carry."""
        return max(0, self.ioccsz * 16 - 64)

    @classmethod
    def parse(cls, b: bytes) -> IdentifyController:
        def txt(off: int, n: int) -> str:
            return b[off : off + n].decode("ascii", "replace").rstrip(" \0")

        return cls(
            vid=S.u16(b, 0),
            sn=txt(4, 20),
            mn=txt(24, 40),
            fr=txt(64, 8),
            mdts=b[77],
            cntlid=S.u16(b, 78),
            ver=S.u32(b, 80),
            kas=S.u16(b, 320),
            maxcmd=S.u16(b, 514),
            nn=S.u32(b, 516),
            subnqn=S.cstr(b, 768, 256).decode("utf-8", "replace"),
            ioccsz=S.u32(b, 1792),
            iorcsz=S.u32(b, 1796),
            icdoff=S.u16(b, 1800),
            raw=bytes(b),
        )


@dataclass
class IdentifyNamespace:
    nsze: int
    ncap: int
    nuse: int
    flbas: int
    block_size: int
    nguid: bytes
    eui64: bytes
    raw: bytes

    @classmethod
    def parse(cls, b: bytes) -> IdentifyNamespace:
        flbas = b[26]
        lbaf = S.u32(b, 128 + 4 * (flbas & 0xF))
        lbads = (lbaf >> 16) & 0xFF
        return cls(
            nsze=S.u64(b, 0),
            ncap=S.u64(b, 8),
            nuse=S.u64(b, 16),
            flbas=flbas,
            block_size=(1 << lbads) if lbads else 0,
            nguid=bytes(b[104:120]),
            eui64=bytes(b[120:128]),
            raw=bytes(b),
        )


@dataclass
class ResvReport:
    """A Reservation Report: generation, type, PTPL state and per
    registered controller (cntlid, holds the reservation, host id, key)."""

    gen: int
    rtype: int
    ptpls: bool
    regs: list[tuple[int, bool, bytes, int]]

    @classmethod
    def parse(cls, b: bytes, eds: bool) -> ResvReport:
        gen, rtype, regctl = struct.unpack_from("<IBH", b, 0)
        ptpls = bool(b[9] & 1)
        off, size = (64, 64) if eds else (24, 24)
        regs = []
        for i in range(regctl):
            e = b[off + i * size : off + (i + 1) * size]
            if len(e) < size:
                break
            cntlid, rcsts = struct.unpack_from("<HB", e, 0)
            if eds:
                (key,) = struct.unpack_from("<Q", e, 8)
                hid = bytes(e[16:32])
            else:
                hid = bytes(e[8:16])
                (key,) = struct.unpack_from("<Q", e, 16)
            regs.append((cntlid, bool(rcsts & 1), hid, key))
        return cls(gen, rtype, ptpls, regs)


@dataclass
class DiscoveryEntry:
    trtype: int
    adrfam: int
    subtype: int
    treq: int
    portid: int
    cntlid: int
    asqsz: int
    eflags: int
    trsvcid: str
    traddr: str
    subnqn: str


def parse_discovery_log(b: bytes) -> tuple[int, list[DiscoveryEntry]]:
    """(genctr, entries) of a Discovery Log Page (1024-byte header + records)."""
    if len(b) < 1024:
        raise ValueError("discovery log shorter than its 1024-byte header")
    genctr, numrec = struct.unpack_from("<QQ", b, 0)
    out = []
    for i in range(int(numrec)):
        o = 1024 * (i + 1)
        if o + 1024 > len(b):
            break
        trtype, adrfam, subtype, treq, portid, cntlid, asqsz, eflags = struct.unpack_from(
            "<BBBBHHHH", b, o
        )

        def s(off: int, n: int, o: int = o) -> str:
            return S.cstr(b, o + off, n).decode("utf-8", "replace").strip()

        out.append(
            DiscoveryEntry(
                trtype,
                adrfam,
                subtype,
                treq,
                portid,
                cntlid,
                asqsz,
                eflags,
                s(32, 32),  # TRSVCID
                s(512, 256),  # TRADDR
                s(256, 256),  # SUBNQN
            )
        )
    return int(genctr), out


# --------------------------------------------------------- blocking queue
LID_ANA = 0x0C


@dataclass
class AnaGroup:
    grpid: int
    chgcnt: int
    state: int  # 1 optimized, 2 non-optimized, 3 inaccessible, 4 persistent loss, 0xF change
    nsids: list[int]


@dataclass
class AnaLog:
    chgcnt: int
    groups: list[AnaGroup]

    def state_of(self, grpid: int) -> int | None:
        return next((g.state for g in self.groups if g.grpid == grpid), None)


def parse_ana_log(b: bytes) -> AnaLog:
    """The ANA log page: 16-byte header, 32-byte group descriptors each
    followed by its NSIDs (bounded by the buffer read)."""
    chgcnt, ngrps = struct.unpack_from("<QH", b, 0)
    groups: list[AnaGroup] = []
    off = 16
    for _ in range(ngrps):
        if off + 32 > len(b):
            raise ValueError("ANA log page truncated (group descriptor)")
        grpid, nnsid, gcc, state = struct.unpack_from("<IIQB", b, off)
        off += 32
        if off + 4 * nnsid > len(b):
            raise ValueError("ANA log page truncated (NSID list)")
        nsids = list(struct.unpack_from(f"<{nnsid}I", b, off))
        off += 4 * nnsid
        groups.append(AnaGroup(grpid, gcc, state & 0xF, nsids))
    return AnaLog(chgcnt, groups)


class BlockingQueue:
    """A `HostQueue` on a blocking socket: one command at a time or many."""

    def __init__(
        self,
        traddr: str,
        trsvcid: int | str,
        qid: int,
        qsize: int,
        hdgst: bool,
        ddgst: bool,
        timeout: float,
        tls: PskEntry | None = None,
    ) -> None:
        self.timeout = timeout
        self.lock = threading.RLock()
        self.sock: Any = socket.create_connection((traddr, int(trsvcid)), timeout=timeout)
        _sock_opts(self.sock)
        if tls is not None:
            self.sock = _tls_wrap(self.sock, tls, timeout)
        self.q = HostQueue(qid=qid, qsize=qsize, hdgst=hdgst, ddgst=ddgst)
        self.q.start()
        try:
            self._run(lambda: self.q.ic_done, time.monotonic() + timeout, "ICResp")
        except BaseException:
            self.sock.close()
            raise

    def _flush(self) -> None:
        bufs = self.q.take_tx()
        while bufs:
            n = self.sock.sendmsg(bufs[:IOV_MAX])
            bufs = advance(bufs, n)

    def _run(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        q = self.q
        try:
            self._flush()
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {what} within {self.timeout:g} s")
                self.sock.settimeout(left)
                buf = q.recv_buffer()
                try:
                    n = self.sock.recv_into(buf)
                except TimeoutError:
                    raise TimeoutError(f"no answer to {what} within {self.timeout:g} s") from None
                finally:
                    del buf
                if n == 0:
                    raise TransportError("connection closed by the controller")
                q.received(n)
                if q.tx:
                    self._flush()
        except TransportError:
            with contextlib.suppress(OSError):
                self._flush()  # the H2CTermReq, if any
            raise
        except OSError as e:
            raise TransportError(f"connection lost: {e}") from e

    def execute(
        self,
        submit: Callable[[Completion], Request],
        what: str = "command",
        timeout: float | None = None,
    ) -> int:
        """Submit one command and wait for it; returns CQE DW0/DW1, raises
        NvmeStatusError for a failed status."""
        box: list[int] = []

        def cb(_r: Request, status: int, result: int) -> None:
            box.extend((status, result))

        with self.lock:
            submit(cb)
            self._run(lambda: bool(box), time.monotonic() + (timeout or self.timeout), what)
        if box[0]:
            raise NvmeStatusError(box[0], what)
        return box[1]

    def wait_all(self, timeout: float | None = None) -> None:
        with self.lock:
            self._run(
                lambda: self.q.outstanding == 0, time.monotonic() + (timeout or self.timeout), "I/O"
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------- the controller
class Controller:
    """A host's view of one remote NVMe-oF controller (blocking)."""

    def __init__(
        self,
        traddr: str,
        trsvcid: int | str,
        subnqn: str,
        hostnqn: str | None = None,
        hostid: bytes | None = None,
        kato_ms: int = 0,
        hdgst: bool = False,
        ddgst: bool = False,
        nr_io_queues: int = 1,
        io_queue_size: int = 128,
        timeout: float = 10.0,
        keepalive_thread: bool = True,
        trtype: str = "tcp",
        host_traddr: str | None = None,
        psk: TlsPsk | None = None,
        dhchap: HostAuthConfig | None = None,
    ) -> None:
        """``psk``: a configured TLS PSK (keyring); the queues then speak
        TLS 1.3 with the PSK derived for (host NQN, subsystem NQN).
        ``dhchap``: DH-HMAC-CHAP secrets (auth.HostAuthConfig): every queue
        authenticates after its Connect when the controller asks (AUTHREQ.ATR)
        or a controller key is set (the host then authenticates the controller)."""
        self.trtype = trtype.lower()
        if self.trtype not in ("tcp", "fc", "rdma"):
            raise ValueError(f"trtype {trtype!r} is not supported by this host (TCP, RDMA, FC)")
        self.host_traddr = host_traddr
        self.assoc_id = 0  # FC: the association of the admin queue
        self.traddr = traddr
        self.trsvcid = str(trsvcid)
        self.subnqn = subnqn
        self.hostid = hostid or uuid_mod.uuid4().bytes
        self.hostnqn = hostnqn or default_hostnqn(self.hostid)
        self.tls: PskEntry | None = None
        if psk is not None:
            if self.trtype != "tcp":
                raise ValueError("a TLS PSK is for the TCP transport only")
            self.tls = derive(psk, self.hostnqn, subnqn)
        self.kato_ms = kato_ms
        self.hdgst = hdgst
        self.ddgst = ddgst
        self.nr_io_queues = nr_io_queues
        self.io_queue_size = io_queue_size
        self.timeout = timeout
        self.keepalive_thread = keepalive_thread
        self.admin: BlockingQueue | None = None
        self.io: list[BlockingQueue] = []
        self.cntlid = 0xFFFF
        self.cap = 0
        self.vs = 0
        self.id_ctrl: IdentifyController | None = None
        self._ka_stop = threading.Event()
        self._ka: threading.Thread | None = None
        self.last_error: str = ""
        self.dhchap = dhchap
        self.auth_result: dict[int, tuple[str, str]] = {}  # qid -> (digest, dhgroup)

    # ------------------------------------------------------ connect
    def _open_queue(self, qid: int, qsize: int) -> BlockingQueue:
        if self.trtype == "fc":
            from .fc import FcBlockingQueue, default_host_port

            if self.host_traddr is None:
                self.host_traddr = default_host_port(self.hostid).traddr
            bq = FcBlockingQueue(
                self.traddr,
                self.host_traddr,
                qid,
                qsize,
                self.timeout,
                self.subnqn,
                self.hostnqn,
                self.hostid,
                self.assoc_id,
            )
            if qid == 0:
                self.assoc_id = bq.q.assoc_id
            return bq
        if self.trtype == "rdma":
            from .rdma_verbs import RdmaBlockingQueue

            return RdmaBlockingQueue(
                self.traddr,
                self.trsvcid,
                qid,
                qsize,
                self.timeout,
                cntlid=self.cntlid if qid else 0,
                icd_cap=min(self.icd_max, 8192) if qid else 0,
            )
        return BlockingQueue(
            self.traddr, self.trsvcid, qid, qsize, self.hdgst, self.ddgst, self.timeout, self.tls
        )

    def connect(self, enable: bool = True) -> Controller:
        a = self._open_queue(0, 32)
        self.admin = a
        try:
            res = a.execute(
                lambda cb: a.q.connect(
                    self.subnqn, self.hostnqn, self.hostid, 0xFFFF, self.kato_ms, cb
                ),
                "Connect",
            )
            self.cntlid = res & 0xFFFF
            self._maybe_authenticate(a, res)
            self.cap = self.property_get(S.PROP_CAP, True)
            self.vs = self.property_get(S.PROP_VS)
            if enable:
                self.enable()
                self.id_ctrl = self.identify_controller()
                if self.subnqn != S.NVME_DISC_SUBSYS_NAME:
                    self.create_io_queues(self.nr_io_queues)
        except BaseException:
            self.close(shutdown=False)
            raise
        if self.kato_ms and self.keepalive_thread:
            self._ka = threading.Thread(
                target=self._keepalive_loop, name="nvme-keepalive", daemon=True
            )
            self._ka.start()
        return self

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    @property
    def mqes(self) -> int:
        return (self.cap & 0xFFFF) + 1

    @property
    def icd_max(self) -> int:
        return self.id_ctrl.icd_max if self.id_ctrl else 0

    def _admin(self) -> BlockingQueue:
        if self.admin is None:
            raise TransportError("controller not connected")
        return self.admin

    def connect_io_queue(self, qid: int, qsize: int | None = None) -> BlockingQueue:
        qs = min(qsize or self.io_queue_size, self.mqes)
        bq = self._open_queue(qid, qs)
        try:
            res = bq.execute(
                lambda cb: bq.q.connect(self.subnqn, self.hostnqn, self.hostid, self.cntlid, 0, cb),
                f"Connect I/O queue {qid}",
            )
            self._maybe_authenticate(bq, res)
        except BaseException:
            bq.close()
            raise
        bq.q.icd_max = self.icd_max
        return bq

    def _maybe_authenticate(self, bq: BlockingQueue, connect_result: int) -> None:
        need = auth.required(connect_result)
        if self.dhchap is None:
            if need:
                raise AuthFailed("the controller requires DH-HMAC-CHAP and no key was given")
            return
        if need or self.dhchap.ctrl_key is not None:
            self.authenticate(bq)

    def authenticate(self, bq: BlockingQueue | None = None) -> tuple[str, str]:
        """One DH-HMAC-CHAP transaction on ``bq`` (default: the admin queue;
        called again it is a re-authentication). Returns (digest, DH group);
        raises AuthFailed when refused."""
        if self.dhchap is None:
            raise AuthFailed("no DH-HMAC-CHAP key configured", by_controller=False)
        bq = bq or self._admin()
        ha = self.dhchap.transaction(self.hostnqn, self.subnqn)
        box: list[BaseException | None] = []
        with bq.lock:
            auth.drive(bq.q, ha, box.append)
            bq._run(lambda: bool(box), time.monotonic() + bq.timeout, "DH-HMAC-CHAP")
        if box[0] is not None:
            raise box[0]
        got = (ha.digest, ha.dhgroup_name)
        self.auth_result[bq.q.qid] = got
        return got

    def create_io_queues(self, n: int) -> None:
        if n <= 0:
            return
        got = self.set_features(S.FID_NUM_QUEUES, ((n - 1) << 16) | (n - 1))
        n = min(n, (got & 0xFFFF) + 1, ((got >> 16) & 0xFFFF) + 1)
        for qid in range(1, n + 1):
            self.io.append(self.connect_io_queue(qid))

    # ------------------------------------------------------ properties
    def property_get(self, offset: int, size8: bool = False) -> int:
        a = self._admin()
        v = a.execute(lambda cb: a.q.property_get(offset, size8, cb), f"Property Get {offset:#x}")
        return v if size8 else v & 0xFFFFFFFF

    def property_set(self, offset: int, value: int, size8: bool = False) -> None:
        a = self._admin()
        a.execute(
            lambda cb: a.q.property_set(offset, value, size8, cb), f"Property Set {offset:#x}"
        )

    def _wait_csts(self, mask: int, want: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            csts = self.property_get(S.PROP_CSTS)
            if csts & S.CSTS_CFS:
                raise TransportError("controller fatal status (CSTS.CFS)")
            if csts & mask == want:
                return csts
            if time.monotonic() > deadline:
                raise TimeoutError(f"CSTS {csts:#x} did not reach {want:#x} under mask {mask:#x}")
            time.sleep(0.005)

    def enable(self) -> None:
        # CC: IOSQES 6 (64 B), IOCQES 4 (16 B), EN
        cc = (6 << 16) | (4 << 20) | S.CC_EN
        self.property_set(S.PROP_CC, cc)
        to = max(0.5, ((self.cap >> 24) & 0xFF) * 0.5)
        self._wait_csts(S.CSTS_RDY, S.CSTS_RDY, min(to, self.timeout * 3))

    def shutdown(self) -> None:
        cc = self.property_get(S.PROP_CC)
        self.property_set(S.PROP_CC, (cc & ~S.CC_SHN_MASK) | (1 << S.CC_SHN_SHIFT))
        self._wait_csts(0x3 << S.CSTS_SHST_SHIFT, S.CSTS_SHST_CMPLT, 5.0)

    # ------------------------------------------------------ admin commands
    def admin_cmd(
        self,
        opcode: int,
        nsid: int = 0,
        cdws: tuple[int, ...] = (),
        read_len: int = 0,
        write: bytes | None = None,
        what: str = "",
    ) -> tuple[int, bytearray | None]:
        a = self._admin()
        buf = bytearray(read_len) if read_len else None
        c = tuple(cdws) + (0,) * (6 - len(cdws))
        res = a.execute(
            lambda cb: a.q.submit(opcode, nsid, c, cb, read_into=buf, write_from=write),  # type: ignore[arg-type]  # submit returns the queue's token, execute only needs the call
            what or f"admin opcode {opcode:#x}",
        )
        return res, buf

    def identify(self, cns: int, nsid: int = 0, cntid: int = 0, csi: int = 0) -> bytes:
        _, b = self.admin_cmd(
            S.ADMIN_IDENTIFY,
            nsid,
            (cns | (cntid << 16), csi << 24),
            4096,
            what=f"Identify CNS {cns:#x}",
        )
        assert b is not None
        return bytes(b)

    def identify_controller(self) -> IdentifyController:
        return IdentifyController.parse(self.identify(S.CNS_CTRL))

    def identify_namespace(self, nsid: int) -> IdentifyNamespace:
        return IdentifyNamespace.parse(self.identify(S.CNS_NS, nsid))

    def active_namespaces(self) -> list[int]:
        b = self.identify(S.CNS_ACTIVE_NS_LIST, 0)
        ids = struct.unpack("<1024I", b)
        return [i for i in ids if i]

    def get_log_page(
        self, lid: int, length: int, offset: int = 0, nsid: int = 0xFFFFFFFF, lsp: int = 0
    ) -> bytes:
        out = bytearray()
        chunk = 4096 * 4
        while len(out) < length:
            n = min(chunk, length - len(out))
            numd = n // 4 - 1
            off = offset + len(out)
            _, b = self.admin_cmd(
                S.ADMIN_GET_LOG_PAGE,
                nsid,
                (
                    lid | (lsp << 8) | ((numd & 0xFFFF) << 16),
                    numd >> 16,
                    off & 0xFFFFFFFF,
                    off >> 32,
                ),
                n,
                what=f"Get Log Page {lid:#x}",
            )
            assert b is not None
            out += b
        return bytes(out)

    def ana_log(self, rgo: bool = False, length: int = 4096) -> AnaLog:
        """The ANA log page (LID 0Ch) of this path; ``rgo``: groups only (no NSIDs)."""
        return parse_ana_log(self.get_log_page(LID_ANA, length, lsp=1 if rgo else 0))

    def async_event_request(self) -> list[int]:
        """Submit an Asynchronous Event Request without waiting; returns the
        box [status, dw0] its completion fills (see `wait_async_event`)."""
        a = self._admin()
        box: list[int] = []

        def cb(_r: Request, status: int, result: int) -> None:
            box.extend((status, result))

        with a.lock:
            a.q.submit(S.ADMIN_ASYNC_EVENT, 0, (0, 0, 0, 0, 0, 0), cb)
            a._flush()
        return box

    def wait_async_event(self, box: list[int], timeout: float | None = None) -> int:
        """Wait for the AER of ``box`` to complete; returns its DW0 (event
        type bits 2:0, information 15:8, log page 23:16)."""
        a = self._admin()
        with a.lock:
            a._run(
                lambda: bool(box),
                time.monotonic() + (timeout or self.timeout),
                "Asynchronous Event Request",
            )
        if box[0]:
            raise NvmeStatusError(box[0], "Asynchronous Event Request")
        return box[1] & 0xFFFFFFFF

    def discovery_log(self) -> tuple[int, list[DiscoveryEntry]]:
        hdr = self.get_log_page(S.LID_DISCOVERY, 1024, nsid=0)
        numrec = struct.unpack_from("<Q", hdr, 8)[0]
        full = self.get_log_page(S.LID_DISCOVERY, 1024 * (1 + int(min(numrec, 1024))), nsid=0)
        return parse_discovery_log(full)

    def get_features(self, fid: int, nsid: int = 0, sel: int = 0) -> int:
        res, _ = self.admin_cmd(
            S.ADMIN_GET_FEATURES, nsid, (fid | (sel << 8),), what=f"Get Features {fid:#x}"
        )
        return res & 0xFFFFFFFF

    def set_features(self, fid: int, value: int, nsid: int = 0) -> int:
        res, _ = self.admin_cmd(
            S.ADMIN_SET_FEATURES, nsid, (fid, value), what=f"Set Features {fid:#x}"
        )
        return res & 0xFFFFFFFF

    def keep_alive(self) -> None:
        self.admin_cmd(S.ADMIN_KEEP_ALIVE, what="Keep Alive")

    def _keepalive_loop(self) -> None:
        period = max(0.1, self.kato_ms / 2000)
        while not self._ka_stop.wait(period):
            try:
                self.keep_alive()
            except Exception as e:  # noqa: BLE001 - remembered for the caller
                self.last_error = f"keep-alive failed: {e}"
                return

    # ------------------------------------------------------ I/O (sync)
    def _ioq(self, q: int) -> BlockingQueue:
        if not self.io:
            raise TransportError("no I/O queue connected")
        return self.io[q % len(self.io)]

    def read(self, nsid: int, slba: int, nlb: int, block_size: int, q: int = 0) -> bytes:
        bq = self._ioq(q)
        buf = memoryview(bytearray(nlb * block_size))
        bq.execute(lambda cb: bq.q.read(nsid, slba, nlb, buf, cb), f"Read LBA {slba}")
        return bytes(buf)

    def write(
        self, nsid: int, slba: int, data: bytes, block_size: int, q: int = 0, fua: bool = False
    ) -> None:
        bq = self._ioq(q)
        mv = memoryview(data)
        bq.execute(
            lambda cb: bq.q.write(nsid, slba, len(data) // block_size, mv, cb, fua=fua),
            f"Write LBA {slba}",
        )

    def flush(self, nsid: int, q: int = 0) -> None:
        bq = self._ioq(q)
        bq.execute(lambda cb: bq.q.submit(S.IO_FLUSH, nsid, cb=cb), "Flush")

    def write_zeroes(self, nsid: int, slba: int, nlb: int, q: int = 0) -> None:
        bq = self._ioq(q)
        c = (slba & 0xFFFFFFFF, slba >> 32, nlb - 1, 0, 0, 0)
        bq.execute(lambda cb: bq.q.submit(S.IO_WRITE_ZEROES, nsid, c, cb), "Write Zeroes")

    def deallocate(self, nsid: int, ranges: list[tuple[int, int]], q: int = 0) -> None:
        """Dataset Management, Deallocate: ranges of (slba, nlb)."""
        if not 1 <= len(ranges) <= 256:
            raise ValueError("1..256 ranges")
        data = b"".join(struct.pack("<IIQ", 0, n, s) for s, n in ranges)
        bq = self._ioq(q)
        bq.execute(
            lambda cb: bq.q.submit(
                S.IO_DSM, nsid, (len(ranges) - 1, 1 << 2, 0, 0, 0, 0), cb, write_from=data
            ),
            "Dataset Management",
        )

    # ------------------------------------------------------ reservations
    def _resv(self, opcode: int, nsid: int, cdw10: int, data: bytes, q: int, what: str) -> int:
        bq = self._ioq(q)
        c = (cdw10, 0, 0, 0, 0, 0)
        return bq.execute(lambda cb: bq.q.submit(opcode, nsid, c, cb, write_from=data), what)

    def resv_register(
        self,
        nsid: int,
        action: int,
        crkey: int = 0,
        nrkey: int = 0,
        iekey: bool = False,
        cptpl: int = 0,
        q: int = 0,
    ) -> None:
        """Reservation Register: action 0 register, 1 unregister, 2 replace;
        cptpl 0 no change, 2 clear PTPL, 3 set PTPL."""
        cdw10 = (action & 7) | (0x8 if iekey else 0) | ((cptpl & 3) << 30)
        data = struct.pack("<QQ", crkey, nrkey)
        self._resv(S.IO_RESV_REGISTER, nsid, cdw10, data, q, "Reservation Register")

    def resv_acquire(
        self,
        nsid: int,
        action: int,
        rtype: int,
        crkey: int,
        prkey: int = 0,
        iekey: bool = False,
        q: int = 0,
    ) -> None:
        """Reservation Acquire: action 0 acquire, 1 preempt, 2 preempt and abort."""
        cdw10 = (action & 7) | (0x8 if iekey else 0) | ((rtype & 0xFF) << 8)
        data = struct.pack("<QQ", crkey, prkey)
        self._resv(S.IO_RESV_ACQUIRE, nsid, cdw10, data, q, "Reservation Acquire")

    def resv_release(
        self, nsid: int, action: int, rtype: int, crkey: int, iekey: bool = False, q: int = 0
    ) -> None:
        """Reservation Release: action 0 release, 1 clear."""
        cdw10 = (action & 7) | (0x8 if iekey else 0) | ((rtype & 0xFF) << 8)
        self._resv(
            S.IO_RESV_RELEASE, nsid, cdw10, struct.pack("<Q", crkey), q, "Reservation Release"
        )

    def resv_report(
        self, nsid: int, eds: bool = True, length: int = 4096, q: int = 0
    ) -> ResvReport:
        """Reservation Report (EDS: the extended structure, 128-bit host ids)."""
        bq = self._ioq(q)
        buf = bytearray(length)
        c = (length // 4 - 1, 1 if eds else 0, 0, 0, 0, 0)
        bq.execute(
            lambda cb: bq.q.submit(S.IO_RESV_REPORT, nsid, c, cb, read_into=buf),
            "Reservation Report",
        )
        return ResvReport.parse(bytes(buf), eds)

    def set_host_id(self, hostid: bytes) -> None:
        """Set Features Host Identifier: 8 bytes (64-bit) or 16 (EXHID)."""
        if len(hostid) not in (8, 16):
            raise ValueError("a host identifier has 8 or 16 bytes")
        self.admin_cmd(
            S.ADMIN_SET_FEATURES,
            0,
            (S.FID_HOST_ID, 1 if len(hostid) == 16 else 0),
            write=hostid,
            what="Set Features Host Identifier",
        )

    def get_host_id(self, extended: bool = True) -> bytes:
        n = 16 if extended else 8
        _, b = self.admin_cmd(
            S.ADMIN_GET_FEATURES,
            0,
            (S.FID_HOST_ID, 1 if extended else 0),
            n,
            what="Get Features Host Identifier",
        )
        assert b is not None
        return bytes(b)

    def resv_notification(self, rae: bool = False) -> tuple[int, int, int, int]:
        """The next Reservation Notification log page (LID 80h): (log page
        count, type (0 empty, 1 registration preempted, 2 reservation
        released, 3 reservation preempted), available after it, nsid)."""
        _, b = self.admin_cmd(
            S.ADMIN_GET_LOG_PAGE,
            0xFFFFFFFF,
            (S.LID_RESV_NOTIFICATION | (0x8000 if rae else 0) | ((64 // 4 - 1) << 16),),
            64,
            what="Get Log Page 80h",
        )
        assert b is not None
        count, ntype, avail, nsid = struct.unpack_from("<QBBxxI", b, 0)
        return count, ntype, avail, nsid

    # ------------------------------------------------------ teardown
    def close(self, shutdown: bool = True) -> None:
        self._ka_stop.set()
        if self._ka is not None and self._ka is not threading.current_thread():
            self._ka.join(2)
        for bq in self.io:
            bq.close()
        self.io = []
        if self.admin is not None:
            if shutdown:
                with contextlib.suppress(Exception):
                    self.admin.timeout = min(self.admin.timeout, 2.0)
                    self.shutdown()
            disconnect = getattr(self.admin, "disconnect", None)
            if disconnect is not None:  # FC: end the association (Disconnect LS)
                disconnect()
            self.admin.close()
            self.admin = None


# ------------------------------------------------------ event-loop queue
class LoopQueue:
    """A non-blocking I/O queue pair driven by an `actors.loop.EventLoop`.

    ``on_ready()`` runs once Connect succeeded; ``on_fail(reason)`` once the
    connection is lost (outstanding commands are then completed with Host
    Pathing Error first). Sends are batched: commands submitted in one loop
    iteration leave in one ``sendmsg``.
    """

    def __init__(
        self,
        loop: Any,
        traddr: str,
        trsvcid: int | str,
        subnqn: str,
        hostnqn: str,
        hostid: bytes,
        cntlid: int,
        qid: int,
        qsize: int,
        hdgst: bool,
        ddgst: bool,
        icd_max: int,
        on_ready: Callable[[], Any],
        on_fail: Callable[[str], Any],
        timeout: float = 10.0,
        fc: tuple[str, int] | None = None,
        tls: PskEntry | None = None,
        dhchap: HostAuthConfig | None = None,
    ) -> None:
        """``fc``: (host port traddr, association id): an FC-NVMe I/O queue over
        the loopback FC LLD (``traddr`` is the target port ``nn-0x..:pn-0x..``).
        ``dhchap``: the queue authenticates (DH-HMAC-CHAP) after its Connect
        when the controller asks or a controller key is set; ``on_ready`` runs
        after that."""
        self.dhchap = dhchap
        from ...runtime.loop import EPOLLOUT

        self.loop = loop
        if fc is not None:
            from ..fc import frame as fc_frame
            from ..fc.addr import parse_traddr
            from .fc import FcHostQueue

            target = parse_traddr(traddr)
            self.q: HostQueue = FcHostQueue(
                parse_traddr(fc[0]), target, qid, qsize, subnqn, hostnqn, hostid, fc[1]
            )
            where: Any = fc_frame.socket_path(target)
            self.sock: Any = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.q = HostQueue(qid=qid, qsize=qsize, hdgst=hdgst, ddgst=ddgst)
            where = (traddr, int(trsvcid))
            fam = socket.AF_INET6 if ":" in traddr else socket.AF_INET
            self.sock = socket.socket(fam, socket.SOCK_STREAM)
            _sock_opts(self.sock)
        self.tls = tls
        self.timeout = timeout
        self.icd_max = icd_max
        self.on_ready = on_ready
        self.on_fail = on_fail
        self.subnqn, self.hostnqn, self.hostid, self.cntlid = subnqn, hostnqn, hostid, cntlid
        self.ready = False
        self.closed = False
        self._pending: list[Any] = []
        self._flush_scheduled = False
        self._want_out = False
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        err = self.sock.connect_ex(where)
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            self.closed = True
            raise TransportError(f"cannot connect to {traddr}:{trsvcid}: {os.strerror(err)}")
        self._connecting = True
        loop.add_fd(self.fd, EPOLLOUT, self._on_event)
        self._timer = loop.call_later(timeout, self._connect_timeout)

    def _connect_timeout(self) -> None:
        if not self.ready:
            self._fail("connect timed out")

    def _on_event(self, ev: int) -> None:
        from ...runtime.loop import EPOLLERR, EPOLLHUP, EPOLLIN

        if self.closed:
            return
        if self._connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(f"connect failed: {os.strerror(err)}")
                return
            self._connecting = False
            if self.tls is not None:
                # the handshake blocks this loop for its round trips (bounded
                # by the timeout); then the queue runs non-blocking over TLS
                try:
                    self.sock.setblocking(True)
                    self.sock = _tls_wrap(self.sock, self.tls, self.timeout)
                    self.sock.setblocking(False)
                except (OSError, TransportError) as e:
                    self._fail(str(e))
                    return
            self.loop.modify_fd(self.fd, EPOLLIN)
            self.q.on_ic = self._after_ic
            self.q.start()
            self._flush()
            return
        if ev & EPOLLIN or ev & (EPOLLERR | EPOLLHUP):
            self._recv()
        if self.closed:
            return
        if self._want_out:
            self._flush()

    def _after_ic(self) -> None:
        def ready() -> None:
            self.q.icd_max = self.icd_max
            self.ready = True
            self._timer.cancel()
            self.on_ready()

        def authenticated(err: BaseException | None) -> None:
            if err is not None:
                self._fail(f"I/O queue {self.q.qid}: DH-HMAC-CHAP: {err}")
            elif not self.closed:
                ready()

        def done(_r: Request, status: int, res: int) -> None:
            if status:
                from .queue import status_str

                self._fail(f"Connect I/O queue {self.q.qid} failed: {status_str(status)}")
                return
            try:
                need = auth.required(res)
            except AuthFailed as e:
                return self._fail(str(e))
            cfg = self.dhchap
            if cfg is None:
                if need:
                    self._fail(f"I/O queue {self.q.qid}: the controller requires DH-HMAC-CHAP")
                else:
                    ready()
                return
            if not need and cfg.ctrl_key is None:
                return ready()
            auth.drive(self.q, cfg.transaction(self.hostnqn, self.subnqn), authenticated)

        self.q.connect(self.subnqn, self.hostnqn, self.hostid, self.cntlid, 0, done)

    def _recv(self) -> None:
        q = self.q
        sock = self.sock
        while True:
            buf = q.recv_buffer()
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                del buf
                self._fail(f"connection lost: {e}")
                return
            del buf
            if n == 0:
                self._fail("connection closed by the controller")
                return
            try:
                q.received(n)
            except TransportError as e:
                self._flush_now()
                self._fail(str(e))
                return
            if self.closed:
                return
        if q.tx:
            self._flush()

    def kick(self) -> None:
        """Called after submitting: send everything queued at the end of
        this loop iteration (one syscall for many capsules)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush_now(self) -> None:
        with contextlib.suppress(OSError):
            send_all_nb(self.sock, self._pending + self.q.take_tx())

    def _flush(self) -> None:
        from ...runtime.loop import EPOLLIN, EPOLLOUT

        self._flush_scheduled = False
        if self.closed:
            return
        bufs = self._pending + self.q.take_tx() if self._pending else self.q.take_tx()
        try:
            if self.tls is not None:
                self.sock.flush()  # ciphertext the socket did not take last time
            self._pending = send_all_nb(self.sock, bufs)
        except OSError as e:
            self._fail(f"send failed: {e}")
            return
        want = bool(self._pending) or bool(getattr(self.sock, "backlog", None))
        if want != self._want_out:
            self._want_out = want
            self.loop.modify_fd(self.fd, EPOLLIN | (EPOLLOUT if want else 0))

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.close()
        self.q.abort_all(ST_HOST_PATH_ERROR)
        self.on_fail(reason)

    def abort_expired(self, timeout_s: float) -> int:
        """Commands older than ``timeout_s``: the queue pair is reset (the
        controller may still own their CIDs)."""
        exp = self.q.expired(time.perf_counter_ns(), int(timeout_s * 1e9))
        if exp:
            self.close()
            self.q.abort_all(ST_ABORTED_BY_HOST)
            self.on_fail(f"{len(exp)} command(s) timed out")
        return len(exp)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ready = False
        self._timer.cancel()
        self.loop.remove_fd(self.fd)
        with contextlib.suppress(OSError):
            self.sock.close()
