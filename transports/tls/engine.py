"""The TLS record layer of one NVMe/TCP connection, sans-I/O: ciphertext in
(``feed``), plaintext out (``read_into``), plaintext in (``write``),
ciphertext out (``take_output``). TLS 1.3 only, the two NVMe/TCP suites,
external PSKs only (no certificates, no session tickets, no renegotiation).

The server side finds the PSK by the identity the client sends
(``lookup(identity) -> PskEntry | None``); an unknown identity makes the
handshake fail (the server has no certificate to fall back on). The client
offers the one identity and key of its ``PskEntry``, and only its suite.

Copies: OpenSSL's memory BIOs copy ciphertext in and out, and SSL_read
copies plaintext into the caller's buffer (the PDU reader's own buffer, so
no further copy); output buffers of one flush are joined and encrypted in
one SSL_write (records of up to 16 KiB, one sendmsg for all of them).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from ctypes import c_size_t, c_void_p
from typing import Any

from . import openssl as O
from .psk import SUITES, PskEntry, cipher_id

Lookup = Callable[[bytes], PskEntry | None]
BIG_WRITE = 8192  # buffers at least this large are encrypted without joining


class TlsError(Exception):
    """The TLS connection failed (handshake refused, bad record, ...)."""


class TlsClosed(TlsError):
    """The peer sent close_notify."""


_CTX: dict[bool, int] = {}
_ENGINES: dict[int, TlsEngine] = {}  # SSL* -> engine (the callbacks find theirs)


@O.FIND_SESSION_CB
def _find_session(ssl: int, ident: int, ident_len: int, sess_out: Any) -> int:
    sess_out[0] = None
    eng = _ENGINES.get(ssl)
    if eng is None or eng.lookup is None:
        return 0
    try:
        identity = ctypes.string_at(ident, ident_len)
        entry = eng.lookup(identity)
    except Exception as e:  # a broken lookup refuses, never crashes the reactor
        eng.refusal = f"PSK lookup failed: {e}"
        return 0
    if entry is None:
        eng.refusal = f"no PSK for identity {identity[:200].decode('utf-8', 'replace')!r}"
        return 1  # not found: the handshake continues without a PSK and fails
    sess = _session(ssl, entry)
    if not sess:
        return 0
    eng.entry = entry
    sess_out[0] = sess
    return 1


@O.USE_SESSION_CB
def _use_session(ssl: int, md: int, id_out: Any, idlen_out: Any, sess_out: Any) -> int:
    eng = _ENGINES.get(ssl)
    if eng is None or eng.entry is None or eng._ident_buf is None:
        return 0
    sess = _session(ssl, eng.entry)
    if not sess:
        return 0
    id_out[0] = ctypes.cast(eng._ident_buf, c_void_p).value
    idlen_out[0] = len(eng._ident_buf) - 1
    sess_out[0] = sess
    return 1


def _session(ssl: int, entry: PskEntry) -> int | None:
    lb = O.lib()
    cipher = lb.SSL_CIPHER_find(ssl, cipher_id(entry.suite))
    if not cipher:
        return None
    sess = lb.SSL_SESSION_new()
    if not sess:
        return None
    ok = (
        lb.SSL_SESSION_set1_master_key(sess, entry.key, len(entry.key)) == 1
        and lb.SSL_SESSION_set_cipher(sess, cipher) == 1
        and lb.SSL_SESSION_set_protocol_version(sess, O.TLS1_3_VERSION) == 1
    )
    if not ok:
        lb.SSL_SESSION_free(sess)
        return None
    return int(sess)


def _ctx(server: bool) -> int:
    c = _CTX.get(server)
    if c is not None:
        return c
    lb = O.lib()
    ctx = lb.SSL_CTX_new(lb.TLS_server_method() if server else lb.TLS_client_method())
    if not ctx:
        raise TlsError(f"SSL_CTX_new: {O.last_error()}")
    lb.SSL_CTX_ctrl(ctx, O.SSL_CTRL_SET_MIN_PROTO_VERSION, O.TLS1_3_VERSION, None)
    lb.SSL_CTX_ctrl(ctx, O.SSL_CTRL_SET_MAX_PROTO_VERSION, O.TLS1_3_VERSION, None)
    lb.SSL_CTX_set_options(
        ctx, O.SSL_OP_NO_TICKET | O.SSL_OP_NO_COMPRESSION | O.SSL_OP_NO_RENEGOTIATION
    )
    if lb.SSL_CTX_set_ciphersuites(ctx, ":".join(SUITES).encode()) != 1:
        raise TlsError(f"SSL_CTX_set_ciphersuites: {O.last_error()}")
    lb.SSL_CTX_set_num_tickets(ctx, 0)
    if server:
        lb.SSL_CTX_set_psk_find_session_callback(ctx, _find_session)
    else:
        lb.SSL_CTX_set_psk_use_session_callback(ctx, _use_session)
    _CTX[server] = ctx
    return int(ctx)


def _cbuf(buf: Any, n: int) -> Any:
    """Something ctypes passes as a pointer to ``buf``'s bytes (no copy when
    the buffer is writable, a copy of a read-only one)."""
    if isinstance(buf, bytes):
        return buf
    try:
        return (ctypes.c_char * n).from_buffer(buf)
    except (TypeError, ValueError):
        return bytes(buf)


class TlsEngine:
    """One TLS 1.3 PSK connection (server: ``lookup``; client: ``entry``)."""

    def __init__(
        self,
        server: bool,
        lookup: Lookup | None = None,
        entry: PskEntry | None = None,
    ) -> None:
        self._ssl: int | None = None
        if server == (lookup is None) or (not server and entry is None):
            raise ValueError("a server engine takes lookup=, a client engine entry=")
        lb = O.lib()
        self.server = server
        self.lookup = lookup
        self.entry = entry  # client: what it offers; server: what it found
        self.refusal = ""
        self.done = False
        self.closed = False
        self._ident_buf = (
            ctypes.create_string_buffer(entry.identity.encode()) if entry is not None else None
        )
        ssl = lb.SSL_new(_ctx(server))
        if not ssl:
            raise TlsError(f"SSL_new: {O.last_error()}")
        self._ssl = int(ssl)
        rbio, wbio = lb.BIO_new(lb.BIO_s_mem()), lb.BIO_new(lb.BIO_s_mem())
        lb.SSL_set_bio(ssl, rbio, wbio)  # the SSL owns both BIOs now
        self._rbio, self._wbio = rbio, wbio
        _ENGINES[int(ssl)] = self
        if server:
            lb.SSL_set_accept_state(ssl)
        else:
            assert entry is not None
            lb.SSL_set_ciphersuites(ssl, entry.suite.encode())
            lb.SSL_set_connect_state(ssl)

    # -- the state --------------------------------------------------------------
    @property
    def identity(self) -> str | None:
        return self.entry.identity if self.entry is not None and self.done else None

    @property
    def cipher(self) -> str:
        if self._ssl is None:
            return ""
        lb = O.lib()
        c = lb.SSL_get_current_cipher(self._ssl)
        return lb.SSL_CIPHER_get_name(c).decode() if c else ""

    def _check(self, rc: int, what: str) -> bool:
        """False: wants more input; raises on failure."""
        lb = O.lib()
        err = lb.SSL_get_error(self._ssl, rc)
        if err in (O.SSL_ERROR_WANT_READ, O.SSL_ERROR_WANT_WRITE):
            return False
        if err == O.SSL_ERROR_ZERO_RETURN:
            self.closed = True
            raise TlsClosed("peer closed the TLS session")
        msg = O.last_error() if err == O.SSL_ERROR_SSL else f"{what}: error {err}"
        if self.refusal:
            msg = f"{self.refusal} ({msg})"
        raise TlsError(msg)

    # -- bytes in, bytes out -----------------------------------------------------
    def feed(self, data: Any) -> None:
        """Ciphertext received from the peer."""
        n = len(data)
        if not n or self._ssl is None:
            return
        lb = O.lib()
        if lb.BIO_write(self._rbio, _cbuf(data, n), n) != n:
            raise TlsError("BIO_write failed")

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete."""
        if self.done:
            return True
        if self._ssl is None:
            raise TlsError("TLS engine closed")
        lb = O.lib()
        lb.ERR_clear_error()
        rc = lb.SSL_do_handshake(self._ssl)
        if rc == 1:
            if self.entry is None:  # server: completed without our PSK
                raise TlsError(self.refusal or "handshake completed without a PSK")
            self.done = True
            return True
        self._check(rc, "handshake")
        return False

    def read_into(self, buf: Any) -> int:
        """Plaintext into ``buf`` (a writable buffer); 0: none decrypted yet."""
        if self._ssl is None:
            raise TlsError("TLS engine closed")
        n = len(buf)
        got = c_size_t(0)
        lb = O.lib()
        lb.ERR_clear_error()
        rc = lb.SSL_read_ex(self._ssl, (ctypes.c_char * n).from_buffer(buf), n, ctypes.byref(got))
        if rc == 1:
            return got.value
        self._check(rc, "read")
        return 0

    def write(self, bufs: Sequence[Any]) -> int:
        """Encrypt plaintext buffers; returns the bytes taken. Small buffers
        (PDU headers, responses) are joined so that they share a record;
        a large one (read data) is encrypted in place, not copied first."""
        if self._ssl is None:
            raise TlsError("TLS engine closed")
        total = 0
        small: list[Any] = []
        for b in bufs:
            n = len(b)
            if n >= BIG_WRITE:
                if small:
                    total += self._write1(b"".join(small))
                    small = []
                total += self._write1(b)
            elif n:
                small.append(b)
        if small:
            total += self._write1(small[0] if len(small) == 1 else b"".join(small))
        return total

    def _write1(self, data: Any) -> int:
        n = len(data)
        lb = O.lib()
        lb.ERR_clear_error()
        done = c_size_t(0)
        rc = lb.SSL_write_ex(self._ssl, _cbuf(data, n), n, ctypes.byref(done))
        if rc != 1:
            self._check(rc, "write")
            raise TlsError("write refused before the handshake completed")
        return n

    def has_input(self) -> bool:
        """Received bytes not yet read out (decrypted or still ciphertext)."""
        if self._ssl is None:
            return False
        lb = O.lib()
        return (
            lb.SSL_pending(self._ssl) > 0
            or lb.BIO_ctrl(self._rbio, O.BIO_CTRL_PENDING, 0, None) > 0
        )

    def pending_output(self) -> int:
        if self._ssl is None:
            return 0
        return int(O.lib().BIO_ctrl(self._wbio, O.BIO_CTRL_PENDING, 0, None))

    def take_output(self) -> bytearray:
        """Ciphertext to send to the peer (empty when none)."""
        n = self.pending_output()
        if not n:
            return bytearray()
        out = bytearray(n)
        got = O.lib().BIO_read(self._wbio, (ctypes.c_char * n).from_buffer(out), n)
        if got != n:
            del out[max(got, 0) :]
        return out

    def close_notify(self) -> None:
        if self._ssl is not None and self.done:
            O.lib().SSL_shutdown(self._ssl)

    def free(self) -> None:
        ssl, self._ssl = self._ssl, None
        if ssl is not None:
            _ENGINES.pop(ssl, None)
            O.lib().SSL_free(ssl)

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # noqa: BLE001 - interpreter shutdown: modules already gone
            pass
