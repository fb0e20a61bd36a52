"""Test harness for the NVMe-oF target without the lead's supervisor.

* `MemBdev`/`MemChannel`: an in-memory bdev whose reads return views of its
  storage (like malloc), optionally asynchronous (completions via call_soon).
* `FakeReactor`: a ReactorContext on an EventLoop (the loop runs in a thread
  in the end-to-end tests). Several FakeReactors may share one loop: the
  supervisor directory then really spans "reactors".
* `FakeRpc`: an RpcContext holding an NvmfState; ``call`` from reactors runs
  control.context.SUPERVISOR_OPS directly; listeners are real sockets on
  127.0.0.1 whose connections go round-robin to the reactors.
* `Client`: a raw blocking NVMe/TCP host built on pdu.py.

Everything is exposed through the ``h`` fixture (a namespace) so test files
need no imports from here.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from blockfabric.actors.loop import EPOLLIN, EventLoop
from blockfabric.bdevs.base import Bdev, IoChannel, IoStatus
from blockfabric.control.context import SUPERVISOR_OPS
from blockfabric.control.registry import REGISTRY
from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import rpc as _rpc  # noqa: F401  (registers methods)
from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf.driver import DRIVER
from blockfabric.transports.nvmf.state import NvmfState

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
HOSTID = uuid.UUID("11111111-2222-3333-4444-555555555555").bytes
SUBNQN = "nqn.2016-06.io.spdk:cnode1"


# ----------------------------------------------------------------- bdev
class MemChannel(IoChannel):
    zero_copy_reads = True  # reads hand out views of the storage, like malloc

    def __init__(self, bdev: MemBdev) -> None:
        super().__init__(bdev)
        self.mem = memoryview(bdev.storage)
        self.bs = bdev.block_size
        self.mbdev = bdev

    def _later(self, fn: Callable[[], None]) -> None:
        if self.mbdev.loop is not None:
            self.mbdev.loop.call_soon(fn)
        else:
            fn()

    def write(self, offset_blocks: int, data: memoryview, cb: Any, fua: bool = False) -> None:  # type: ignore[override]
        # the new channel contract (fua); every write's flag is recorded
        self.mbdev.fua_log.append((offset_blocks, fua))
        super().write(offset_blocks, data, cb)

    def _do_read(self, off: int, n: int, cb: Any, into: Any = None) -> None:
        view = self.mem[off * self.bs : (off + n) * self.bs]
        self._later(lambda: cb(IoStatus.SUCCESS, view))

    def _do_write(self, off: int, data: memoryview, cb: Any, fua: bool = False) -> None:
        def run() -> None:
            self.mem[off * self.bs : off * self.bs + len(data)] = data
            cb(IoStatus.SUCCESS)

        self._later(run)

    def _do_write_zeroes(self, off: int, n: int, cb: Any) -> None:
        def run() -> None:
            self.mem[off * self.bs : (off + n) * self.bs] = bytes(n * self.bs)
            self.mbdev.zeroed.append((off, n))
            cb(IoStatus.SUCCESS)

        self._later(run)


class MemBdev(Bdev):
    def __init__(
        self,
        name: str,
        num_blocks: int = 2048,
        block_size: int = 512,
        async_loop: EventLoop | None = None,
    ) -> None:
        super().__init__(name=name, block_size=block_size, num_blocks=num_blocks)
        self.storage = bytearray(num_blocks * block_size)
        self.loop = async_loop
        self.zeroed: list[tuple[int, int]] = []
        self.fua_log: list[tuple[int, bool]] = []  # (offset, fua) of every write

    def open_channel(self) -> IoChannel:
        return MemChannel(self)


# ------------------------------------------------------------- contexts
class FakeReactor:
    def __init__(self, rpc: FakeRpc, reactor_id: int, loop: EventLoop) -> None:
        self.rpc = rpc
        self.loop = loop
        self.reactor_id = reactor_id
        self.instance = "test"
        self.nvmf_config: dict[str, Any] = rpc.nvmf.snapshot()
        self.iscsi_config: dict[str, Any] = {}
        self.generation = 0
        self.channels: dict[str, IoChannel] = {}
        self.calls: list[str] = []

    def bdev(self, name: str) -> Bdev | None:
        return self.rpc.bdevs.get(name)

    def channel(self, name: str) -> IoChannel | None:
        b = self.rpc.bdevs.get(name)
        if b is None or b.removed:
            return None
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = b.open_channel()
        return ch

    def call(self, op: str, args: dict[str, Any], cb: Any, timeout: float = 5.0) -> None:
        self.calls.append(op)
        try:
            res = SUPERVISOR_OPS[op](self.rpc, self.reactor_id, args)
            ok = True
        except Exception as e:  # what the supervisor would send back
            res, ok = str(e), False
        self.loop.call_soon(lambda: cb(ok, res))

    def notify(self, op: str, args: dict[str, Any]) -> None:
        self.call(op, args, lambda ok, r: None)


class FakeRpc:
    """RpcContext: state + reactors; RPCs run on the loop thread via `rpc()`."""

    def __init__(self, nreactors: int = 1) -> None:
        self.instance = "test"
        self.state_dir = "/tmp"
        self.bdevs: dict[str, Bdev] = {}
        self.nvmf = NvmfState()
        self.iscsi = None
        self.loop = EventLoop(poll_mode="blocking")
        self.reactors = [FakeReactor(self, i, self.loop) for i in range(nreactors)]
        self.num_reactors = nreactors
        self.listeners: dict[str, socket.socket] = {}
        self._rr = 0
        self._thread: threading.Thread | None = None
        self._wake = os.eventfd(0, os.EFD_NONBLOCK)
        self._jobs: list[Any] = []
        self.loop.add_fd(self._wake, EPOLLIN, self._run_jobs)
        self.events: list[tuple[Any, str, dict[str, Any]]] = []

    # --- RpcContext -------------------------------------------------------
    def config_changed(self) -> None:
        snap = self.nvmf.snapshot()
        for r in self.reactors:
            r.nvmf_config = snap
            r.generation += 1
            DRIVER.on_config(r)

    def gather(self, op: str, args: dict[str, Any], timeout: float = 5.0) -> list[Any]:
        return [DRIVER.on_event(r, op, args) for r in self.reactors]

    def send_event(self, reactor_id: int | None, op: str, args: dict[str, Any]) -> None:
        self.events.append((reactor_id, op, args))
        for r in self.reactors:
            if reactor_id is None or r.reactor_id == reactor_id:
                self.loop.call_soon(lambda r=r: DRIVER.on_event(r, op, args))

    def add_listener(self, proto: str, addr: str, port: int, family: str = "ipv4") -> str:
        s = socket.socket(socket.AF_INET6 if family == "ipv6" else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(16)
        s.setblocking(False)
        key = f"{addr}:{s.getsockname()[1]}"
        self.listeners[key] = s

        def on_accept(ev: int) -> None:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                return
            r = self.reactors[self._rr % len(self.reactors)]
            self._rr += 1
            DRIVER.accept(r, conn, key)

        self.loop.add_fd(s.fileno(), EPOLLIN, on_accept)
        return key

    def remove_listener(self, proto: str, addr: str, port: int) -> None:
        key = f"{addr}:{port}"
        s = self.listeners.pop(key, None)
        if s is not None:
            self.loop.remove_fd(s.fileno())
            s.close()

    def remove_bdev(self, name: str) -> None:
        self.nvmf.on_bdev_removed(name)
        b = self.bdevs.pop(name, None)
        if b is not None:
            b.removed = True
        self.config_changed()

    # --- helpers ----------------------------------------------------------
    def rpc(self, method: str, params: Any = None) -> Any:
        return self.run(lambda: REGISTRY.call(self, method, params))

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the loop thread (or inline when no thread runs)."""
        if self._thread is None:
            return fn()
        done = threading.Event()
        box: list[Any] = [None, None]

        def job() -> None:
            try:
                box[0] = fn()
            except BaseException as e:  # re-raised in the caller
                box[1] = e
            done.set()

        self._jobs.append(job)
        os.eventfd_write(self._wake, 1)
        assert done.wait(10), "loop thread did not run the job"
        if box[1] is not None:
            raise box[1]
        return box[0]

    def _run_jobs(self, ev: int) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        jobs, self._jobs = self._jobs, []
        for j in jobs:
            j()

    def start(self) -> None:
        self._stop = False

        def main() -> None:
            while not self._stop:
                self.loop.run_once(0.05)

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.run(lambda: [DRIVER.shutdown(r) for r in self.reactors])
            self._stop = True
            os.eventfd_write(self._wake, 1)
            self._thread.join(5)
            self._thread = None
        else:
            for r in self.reactors:
                DRIVER.shutdown(r)
        for s in self.listeners.values():
            s.close()
        self.listeners.clear()
        self.loop.close()
        os.close(self._wake)

    def pump(self, n: int = 5) -> None:
        for _ in range(n):
            self.loop.run_once(0)


def setup_target(
    rpc: FakeRpc, port_listener: bool = True, bdev_blocks: int = 2048, **topts: Any
) -> str:
    rpc.bdevs["Malloc0"] = MemBdev("Malloc0", bdev_blocks)
    rpc.rpc("nvmf_create_transport", {"trtype": "tcp", **topts})
    rpc.rpc(
        "nvmf_create_subsystem", {"nqn": SUBNQN, "allow_any_host": True, "serial_number": "SPDK001"}
    )
    rpc.rpc("nvmf_subsystem_add_ns", {"nqn": SUBNQN, "namespace": {"bdev_name": "Malloc0"}})
    key = ""
    if port_listener:
        rpc.rpc(
            "nvmf_subsystem_add_listener",
            {
                "nqn": SUBNQN,
                "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "0"},
            },
        )
        key = rpc.nvmf.subsystems[SUBNQN]["listeners"][0]["key"]
    return key


# --------------------------------------------------------------- raw host
class TermReq(Exception):
    def __init__(self, fes: int, fei: int) -> None:
        super().__init__(f"C2HTermReq FES {fes:#x} FEI {fei}")
        self.fes = fes
        self.fei = fei


class Client:
    def __init__(
        self, addr: tuple[str, int], hdgst: bool = False, ddgst: bool = False, timeout: float = 5.0
    ) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.reader = P.PduReader(P.HOST)
        self.hdgst = hdgst
        self.ddgst = ddgst
        self.cid = 0
        self.maxh2cdata = 0
        self.pending: list[P.Pdu] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, bufs: list[Any] | bytes) -> None:
        if isinstance(bufs, bytes | bytearray):
            bufs = [bufs]
        self.sock.sendall(b"".join(bytes(b) for b in bufs))

    def recv_pdu(self) -> P.Pdu:
        while not self.pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed by target")
            for p in self.reader.feed(data):
                # keep copies: the reader may reuse its buffer
                self.pending.append(
                    P.Pdu(
                        p.type,
                        p.flags,
                        p.hlen,
                        p.pdo,
                        p.plen,
                        memoryview(bytes(p.hdr)),
                        None if p.data is None else memoryview(bytes(p.data)),
                        p.ddgst_ok,
                    )
                )
        pdu = self.pending.pop(0)
        if pdu.type == P.C2H_TERM_REQ:
            raise TermReq(*P.parse_term(pdu.hdr))
        return pdu

    def is_closed(self, timeout: float = 2.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def icreq(self, hpda: int = 0, maxr2t: int = 0) -> tuple[int, int, int, int, int]:
        self.send(P.encode_icreq(hpda, self.hdgst, self.ddgst, maxr2t))
        pdu = self.recv_pdu()
        assert pdu.type == P.ICRESP
        ic = P.parse_ic(pdu.hdr)
        self.maxh2cdata = ic[4]
        self.reader.ic_done = True
        self.reader.hdgst = bool(ic[2])
        self.reader.ddgst = bool(ic[3])
        return ic

    def next_cid(self) -> int:
        self.cid = (self.cid + 1) & 0xFFFF
        return self.cid

    def submit(
        self,
        opcode: int,
        nsid: int = 0,
        cdws: tuple[int, ...] = (0, 0, 0, 0, 0, 0),
        data: bytes | None = None,
        read_len: int = 0,
        incapsule: bool = True,
        flags: int = spec.PSDT_SGL << 6,
        cid: int | None = None,
    ) -> int:
        cid = self.next_cid() if cid is None else cid
        cd = tuple(cdws) + (0,) * (6 - len(cdws))
        if data is not None and incapsule:
            sgl = spec.pack_sgl(0, len(data), spec.SGL_TYPE_INCAPSULE)
            sqe = spec.pack_sqe(opcode, cid, nsid, cd, sgl, flags)  # type: ignore[arg-type]
            self.send(P.encode_capsule_cmd(sqe, data, self.hdgst, self.ddgst))
        else:
            length = len(data) if data is not None else read_len
            sgl = spec.pack_sgl(0, length, spec.SGL_TYPE_TRANSPORT)
            sqe = spec.pack_sqe(opcode, cid, nsid, cd, sgl, flags)  # type: ignore[arg-type]
            self.send(P.encode_capsule_cmd(sqe, None, self.hdgst, self.ddgst))
        return cid

    def wait(self, cid: int, data: bytes | None = None) -> tuple[spec.Cqe, bytes]:
        """Answer R2Ts for ``cid`` with ``data``, collect C2HData, return (cqe, data)."""
        got = bytearray()
        while True:
            pdu = self.recv_pdu()
            if pdu.type == P.R2T:
                cccid, ttag, off, ln = P.parse_data_hdr(pdu.hdr)
                assert cccid == cid and data is not None
                pos = off
                while pos < off + ln:
                    n = min(self.maxh2cdata, off + ln - pos)
                    last = pos + n == off + ln
                    self.send(
                        P.encode_data(
                            P.H2C_DATA,
                            cid,
                            ttag,
                            pos,
                            data[pos : pos + n],
                            last=last,
                            hdgst=self.hdgst,
                            ddgst=self.ddgst,
                        )
                    )
                    pos += n
            elif pdu.type == P.C2H_DATA:
                cccid, _ttag, off, ln = P.parse_data_hdr(pdu.hdr)
                assert cccid == cid
                assert pdu.ddgst_ok
                assert off == len(got)
                got += bytes(pdu.data)  # type: ignore[arg-type]
                if pdu.flags & P.FLAG_DATA_SUCCESS:
                    return spec.Cqe(0, 0, 0, cid, 0), bytes(got)
            elif pdu.type == P.CAPSULE_RESP:
                cqe = spec.unpack_cqe(pdu.hdr, 8)
                if cqe.cid != cid:
                    self.pending.append(pdu)  # someone else's (e.g. an AER)
                    if len(self.pending) > 64:
                        raise AssertionError("lost completion")
                    continue
                return cqe, bytes(got)

    def cmd(self, opcode: int, **kw: Any) -> tuple[spec.Cqe, bytes]:
        data = kw.get("data")
        cid = self.submit(opcode, **kw)
        return self.wait(cid, data)

    # --- fabrics --------------------------------------------------------
    def connect(
        self,
        subnqn: str = SUBNQN,
        hostnqn: str = HOSTNQN,
        qid: int = 0,
        sqsize: int = 31,
        kato: int = 0,
        cntlid: int = 0xFFFF,
        hostid: bytes = HOSTID,
        cattr: int = 0,
        incapsule: bool = True,
    ) -> spec.Cqe:
        data = bytearray(1024)
        data[0:16] = hostid
        struct.pack_into("<H", data, 16, cntlid)
        s = subnqn.encode()
        data[256 : 256 + len(s)] = s
        h = hostnqn.encode()
        data[512 : 512 + len(h)] = h
        cdw10 = qid << 16
        cdw11 = sqsize | (cattr << 16)
        cqe, _ = self.cmd(
            spec.FABRICS_OPCODE,
            nsid=spec.FCTYPE_CONNECT,
            cdws=(cdw10, cdw11, kato),
            data=bytes(data),
            incapsule=incapsule,
        )
        return cqe

    def prop_set(self, offset: int, value: int) -> spec.Cqe:
        return self.cmd(
            spec.FABRICS_OPCODE,
            nsid=spec.FCTYPE_PROPERTY_SET,
            cdws=(0, offset, value & 0xFFFFFFFF, value >> 32),
        )[0]

    def prop_get(self, offset: int, size8: bool = False) -> spec.Cqe:
        return self.cmd(
            spec.FABRICS_OPCODE, nsid=spec.FCTYPE_PROPERTY_GET, cdws=(int(size8), offset)
        )[0]

    def enable(self) -> None:
        cqe = self.prop_set(spec.PROP_CC, 1 | (6 << 16) | (4 << 20))
        assert cqe.status == 0
        assert self.prop_get(spec.PROP_CSTS).result & 1

    def admin_setup(self, subnqn: str = SUBNQN, hostnqn: str = HOSTNQN, kato: int = 0) -> int:
        self.icreq()
        cqe = self.connect(subnqn, hostnqn, kato=kato)
        assert cqe.status == 0, spec.split_status(cqe.status)
        self.enable()
        return cqe.result & 0xFFFF

    def identify(self, cns: int, nsid: int = 0, csi: int = 0) -> tuple[spec.Cqe, bytes]:
        return self.cmd(spec.ADMIN_IDENTIFY, nsid=nsid, cdws=(cns, csi << 24), read_len=4096)

    def get_log(
        self, lid: int, length: int, offset: int = 0, nsid: int = 0xFFFFFFFF, rae: bool = False
    ) -> tuple[spec.Cqe, bytes]:
        numd = length // 4 - 1
        cdw10 = lid | (int(rae) << 15) | ((numd & 0xFFFF) << 16)
        return self.cmd(
            spec.ADMIN_GET_LOG_PAGE,
            nsid=nsid,
            cdws=(cdw10, numd >> 16, offset & 0xFFFFFFFF, offset >> 32),
            read_len=length,
        )

    def write(self, nsid: int, slba: int, data: bytes, incapsule: bool | None = None) -> spec.Cqe:
        nlb = len(data) // 512 - 1
        inc = len(data) <= 4096 if incapsule is None else incapsule
        return self.cmd(
            spec.IO_WRITE,
            nsid=nsid,
            cdws=(slba & 0xFFFFFFFF, slba >> 32, nlb),
            data=data,
            incapsule=inc,
        )[0]

    def read(self, nsid: int, slba: int, nbytes: int) -> tuple[spec.Cqe, bytes]:
        nlb = nbytes // 512 - 1
        return self.cmd(
            spec.IO_READ, nsid=nsid, cdws=(slba & 0xFFFFFFFF, slba >> 32, nlb), read_len=nbytes
        )


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@pytest.fixture
def h() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        MemBdev=MemBdev,
        FakeRpc=FakeRpc,
        FakeReactor=FakeReactor,
        Client=Client,
        TermReq=TermReq,
        setup_target=setup_target,
        wait_for=wait_for,
        HOSTNQN=HOSTNQN,
        HOSTID=HOSTID,
        SUBNQN=SUBNQN,
    )


@pytest.fixture
def target(h: types.SimpleNamespace):  # type: ignore[no-untyped-def]
    """A running in-process target: (rpc, (addr, port))."""
    rpc = FakeRpc(nreactors=2)
    rpc.start()
    try:
        key = setup_target(rpc)
        host, _, port = key.rpartition(":")
        yield rpc, (host, int(port))
    finally:
        rpc.stop()
