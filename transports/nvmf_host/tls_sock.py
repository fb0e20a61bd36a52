"""NVMe/TCP host over TLS 1.3: a socket-like wrapper that puts the TLS engine
(transports/tls) between the host queue pair and the TCP socket.

`TlsSocket` offers what the host's queues use of a socket (``sendmsg``,
``recv_into``, ``recv``, ``settimeout``, ``setblocking``, ``fileno``,
``close``), so `BlockingQueue` and `LoopQueue` run unchanged over it.
``sendmsg`` encrypts everything it is given (one SSL_write) and reports it
all taken; ciphertext the socket did not take waits in ``backlog`` and goes
out on the next ``sendmsg``/``flush`` (LoopQueue watches ``backlog`` for
EPOLLOUT). ``recv_into`` returns decrypted bytes.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from ..tls.engine import TlsClosed, TlsEngine, TlsError
from ..tls.psk import PskEntry

RECV_SIZE = 1 << 18


class TlsHandshakeError(ConnectionError):
    """The TLS handshake failed (wrong or unknown key, a plain listener, ...)."""


class TlsSocket:
    def __init__(self, sock: socket.socket, entry: PskEntry) -> None:
        self.sock = sock
        self.tls = TlsEngine(server=False, entry=entry)
        self.backlog = bytearray()
        self._rbuf = bytearray(RECV_SIZE)
        self._eof = False
        self._maybe = True  # SSL_read may find plaintext (input fed since it last had none)

    # -- the handshake (blocking, with a deadline) -------------------------------
    def handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        sock = self.sock
        was = sock.gettimeout()
        try:
            while True:
                try:
                    done = self.tls.handshake()
                except TlsError as e:
                    raise TlsHandshakeError(f"TLS handshake failed: {e}") from None
                self._send_blocking(self.tls.take_output(), deadline)
                if done:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TlsHandshakeError("TLS handshake timed out")
                sock.settimeout(left)
                try:
                    n = sock.recv_into(self._rbuf)
                except TimeoutError:
                    raise TlsHandshakeError("TLS handshake timed out") from None
                except OSError as e:
                    raise TlsHandshakeError(f"TLS handshake failed: {e}") from None
                if n == 0:
                    raise TlsHandshakeError(
                        "TLS handshake failed: the controller closed the connection "
                        "(no TLS on this listener, or the key was refused)"
                    )
                self.tls.feed(memoryview(self._rbuf)[:n])
                self._maybe = True
        finally:
            sock.settimeout(was)

    def _send_blocking(self, data: bytes | bytearray, deadline: float) -> None:
        mv = memoryview(data)
        while mv:
            left = max(deadline - time.monotonic(), 0.001)
            self.sock.settimeout(left)
            n = self.sock.send(mv)
            mv = mv[n:]

    @property
    def cipher(self) -> str:
        return self.tls.cipher

    # -- the socket interface the host queues use ------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, t: float | None) -> None:
        self.sock.settimeout(t)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def getsockopt(self, *a: Any) -> Any:
        return self.sock.getsockopt(*a)

    def setsockopt(self, *a: Any) -> Any:
        return self.sock.setsockopt(*a)

    def flush(self) -> None:
        """Send backlogged ciphertext as far as the socket takes it (a blocking
        socket: all of it)."""
        while self.backlog:
            try:
                n = self.sock.send(self.backlog)
            except (BlockingIOError, InterruptedError):
                return
            del self.backlog[:n]

    def sendmsg(self, bufs: list[Any], *_: Any) -> int:
        try:
            n = self.tls.write(bufs)
        except TlsError as e:
            raise ConnectionError(f"TLS: {e}") from None
        self.backlog += self.tls.take_output()
        self.flush()
        return n

    def recv_into(self, buf: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self.backlog:  # a load loop that only sends when it has new commands
            self.flush()
        mv = memoryview(buf)
        if nbytes:
            mv = mv[:nbytes]
        while True:
            if self._maybe:  # OpenSSL may hold input: a poll loop skips SSL_read when not
                try:
                    got = self.tls.read_into(mv)
                except TlsClosed:
                    return 0
                except TlsError as e:
                    raise ConnectionError(f"TLS: {e}") from None
                if got:
                    return got
                self._maybe = False
            if self._eof:
                return 0
            n = self.sock.recv_into(self._rbuf)  # BlockingIOError / timeout pass through
            if n == 0:
                self._eof = True
                return 0
            self.tls.feed(memoryview(self._rbuf)[:n])
            self._maybe = True

    def recv(self, n: int, flags: int = 0) -> bytes:
        if flags & socket.MSG_PEEK:
            # liveness probe (the nvme bdev's admin watch): readable ciphertext
            # or EOF of the TCP socket, not plaintext
            return self.sock.recv(n, flags)
        buf = bytearray(n)
        got = self.recv_into(buf)
        return bytes(buf[:got])

    def close(self) -> None:
        try:
            self.tls.close_notify()
            ct = self.tls.take_output()
            if ct:
                self.sock.send(ct, socket.MSG_DONTWAIT)
        except (OSError, TlsError):
            pass
        self.sock.close()
        self.tls.free()

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)
