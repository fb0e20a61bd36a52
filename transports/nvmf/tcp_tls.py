"""NVMe/TCP over TLS 1.3 on the target: the record layer between a secure
listener's sockets and the PDU codec (issue 11 item 2).

A listener added with ``--secure-channel`` takes only TLS: the first bytes
must be a TLS ClientHello offering a PSK identity ``NVMe0Rhh HOSTNQN SUBNQN``
that ``nvmf_subsystem_add_host --psk`` configured (the snapshot's
``tls_psks``: identity -> derived TLS PSK and suite, made in the supervisor).
A plain ICReq, an unknown identity or a wrong key fails the handshake and
the connection is closed. After the handshake the queue pair knows the
(host NQN, subsystem NQN) the PSK was derived for, and Connect refuses any
other pair (fabrics.connect).

`TlsTcpConnection` is chosen per connection at accept (driver.py); plain
connections keep `TcpConnection`'s path untouched. The TLS path copies:
ciphertext into a receive buffer and into OpenSSL's memory BIO, plaintext
into the PDU reader's buffer; a flush's output buffers are encrypted in one
SSL_write and leave in one sendmsg (engine.py).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from ..tls.engine import TlsClosed, TlsEngine, TlsError
from ..tls.psk import PskEntry, PskError, parse_identity
from .core import NvmfTarget
from .driver import RECV_BATCH, TcpConnection
from .tcp import TcpQpair

log = logging.getLogger(__name__)

RECV_SIZE = 1 << 18


def secure_listener(target: NvmfTarget, listener: str) -> bool:
    """Whether a subsystem listens on ``listener`` with --secure-channel."""
    for ss in target.subsystems.values():
        for li in ss.listeners:
            if li.get("secure_channel") and li.get("key") == listener:
                return True
    return False


def _psk_table(target: NvmfTarget) -> dict[str, Any]:
    snap = getattr(target.ctx, "nvmf_config", None) or {}
    return dict(snap.get("tls_psks") or {})


class TlsTcpConnection(TcpConnection):
    """A `TcpConnection` whose bytes go through a TLS engine."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.tls = TlsEngine(server=True, lookup=self._lookup)
        self.rbuf = bytearray(RECV_SIZE)
        super().__init__(*args, **kw)

    def _lookup(self, identity: bytes) -> PskEntry | None:
        try:
            suite, _host, _sub = parse_identity(identity)
        except PskError as e:
            self.tls.refusal = str(e)
            return None
        found = _psk_table(self.qp.target).get(identity.decode())
        if found is None or found.get("suite") != suite:
            return None
        return PskEntry(identity.decode(), suite, bytes(found["key"]))

    # -- input ---------------------------------------------------------------------
    def _read(self) -> None:
        recv_into = self.sock.recv_into
        rbuf = self.rbuf
        for _ in range(RECV_BATCH):
            try:
                n = recv_into(rbuf)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                log.debug("nvmf-tcp-tls %s: recv failed: %s", self.qp.peer, e)
                self.close()
                return
            if n == 0:
                self.close()
                return
            try:
                self.tls.feed(memoryview(rbuf)[:n])
                if not self.tls.done and not self._handshake():
                    continue
                self._drain()
            except TlsClosed:
                self.close()
                return
            except TlsError as e:
                self._refuse(str(e))
                return
            if self.closed or self.qp.want_close or self.qp.paused or n < len(rbuf):
                break
        self._flush()

    def _handshake(self) -> bool:
        done = self.tls.handshake()
        if not done:
            self._push_cipher()
            return False
        entry = self.tls.entry
        assert entry is not None
        _suite, host, sub = parse_identity(entry.identity.encode())
        self.qp.tls_peer = (host, sub)
        log.info(
            "nvmf-tcp-tls %s: TLS 1.3 %s as %s for %s", self.qp.peer, self.tls.cipher, host, sub
        )
        return True

    def _drain(self) -> int:
        """Decrypted bytes -> the PDU reader, while the queue pair takes them."""
        qp = self.qp
        total = 0
        self.reading = True
        try:
            while not (self.closed or qp.want_close or qp.paused):
                buf = qp.get_buffer()
                try:
                    got = self.tls.read_into(buf)
                finally:
                    del buf
                if not got:
                    break
                total += got
                qp.received(got)
        finally:
            self.reading = False
        return total

    def _refuse(self, why: str) -> None:
        log.warning("nvmf-tcp-tls %s: TLS refused: %s", self.qp.peer, why)
        self._push_cipher()  # the alert, if OpenSSL made one
        self._final_close()

    # -- output ----------------------------------------------------------------------
    def _push_cipher(self) -> None:
        ct = self.tls.take_output()
        if ct:
            self.out.push((ct,), len(ct))

    def _send(self) -> None:
        qp = self.qp
        if qp.out and self.tls.done:
            bufs = qp.take_output()
            try:
                self.tls.write(bufs)
            except TlsError as e:
                self._refuse(str(e))
                return
            finally:
                # OpenSSL copied the plaintext: pool buffers may go now
                if qp._held:
                    qp.sent_upto(qp.taken_total)
        self._push_cipher()
        try:
            self.out.flush()
        except OSError as e:
            log.debug("nvmf-tcp-tls %s: send failed: %s", qp.peer, e)
            self.close()

    def _flush(self) -> None:
        super()._flush()
        # resumed after a pause: plaintext OpenSSL still holds is not signalled
        # by the socket any more, so hand it over now
        while (
            not self.closed
            and self.tls.done
            and not self.qp.paused
            and not self.qp.want_close
            and self.tls.has_input()
        ):
            try:
                got = self._drain()
            except TlsError:
                self.close()
                return
            super()._flush()
            if not got:  # only a partial record is buffered: wait for the socket
                break

    def _qp_closed(self, qp: TcpQpair) -> None:
        if not self.closed:
            if qp.out and self.tls.done:
                try:
                    self.tls.write(qp.take_output())
                except TlsError:
                    pass
            self._push_cipher()
            self.ctx.loop.call_soon(self._final_close)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.tls.close_notify()
            ct = self.tls.take_output()
            if ct:
                self.sock.send(ct, socket.MSG_DONTWAIT)
        except (OSError, TlsError):
            pass
        super().close()
        self.tls.free()
