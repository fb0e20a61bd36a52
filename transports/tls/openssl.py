"""A small ctypes binding to the system OpenSSL 3 (libssl.so.3): just what a
TLS 1.3 external-PSK endpoint over memory BIOs needs.

Why this and not another library: Python 3.11's ``ssl`` has no PSK callbacks
(3.13's cover only the SHA-256 suite); pyOpenSSL's PSK API is the TLS 1.2
``set_psk_*_callback`` one, which OpenSSL does not use for TLS 1.3 external
PSKs with an explicit cipher suite; a hand-written TLS is out of the question.
OpenSSL 3.0 (on every Debian 12) does TLS 1.3 external PSKs through
``SSL_CTX_set_psk_find_session_callback`` / ``..._use_session_callback``,
with an ``SSL_SESSION`` that carries the key and the suite. Memory BIOs keep
the socket with the reactor (sans-I/O: bytes in, bytes out).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import POINTER, c_char_p, c_int, c_long, c_size_t, c_uint64, c_void_p
from typing import Any

TLS1_3_VERSION = 0x0304
SSL_CTRL_SET_MIN_PROTO_VERSION = 123
SSL_CTRL_SET_MAX_PROTO_VERSION = 124
SSL_OP_NO_TICKET = 1 << 14
SSL_OP_NO_COMPRESSION = 1 << 17
SSL_OP_NO_RENEGOTIATION = 1 << 30
SSL_MODE_RELEASE_BUFFERS = 0x10
SSL_CTRL_MODE = 33
BIO_CTRL_PENDING = 10
SSL_ERROR_NONE = 0
SSL_ERROR_SSL = 1
SSL_ERROR_WANT_READ = 2
SSL_ERROR_WANT_WRITE = 3
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6

# int (*)(SSL *, const unsigned char *identity, size_t len, SSL_SESSION **)
FIND_SESSION_CB = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, POINTER(c_void_p))
# int (*)(SSL *, const EVP_MD *, const unsigned char **id, size_t *idlen, SSL_SESSION **)
USE_SESSION_CB = ctypes.CFUNCTYPE(
    c_int, c_void_p, c_void_p, POINTER(c_void_p), POINTER(c_size_t), POINTER(c_void_p)
)


class OpenSslMissing(RuntimeError):
    pass


def _load() -> Any:
    name = ctypes.util.find_library("ssl")
    for cand in ("libssl.so.3", name):
        if not cand:
            continue
        try:
            lib = ctypes.CDLL(cand)
        except OSError:
            continue
        if hasattr(lib, "SSL_CTX_set_psk_find_session_callback"):
            return lib
    raise OpenSslMissing("libssl.so.3 (OpenSSL 3) is not installed (Debian: libssl3)")


_SIGS: dict[str, tuple[Any, list[Any]]] = {
    "TLS_server_method": (c_void_p, []),
    "TLS_client_method": (c_void_p, []),
    "SSL_CTX_new": (c_void_p, [c_void_p]),
    "SSL_CTX_free": (None, [c_void_p]),
    "SSL_CTX_ctrl": (c_long, [c_void_p, c_int, c_long, c_void_p]),
    "SSL_CTX_set_options": (c_uint64, [c_void_p, c_uint64]),
    "SSL_CTX_set_ciphersuites": (c_int, [c_void_p, c_char_p]),
    "SSL_CTX_set_num_tickets": (c_int, [c_void_p, c_size_t]),
    "SSL_CTX_set_psk_find_session_callback": (None, [c_void_p, FIND_SESSION_CB]),
    "SSL_CTX_set_psk_use_session_callback": (None, [c_void_p, USE_SESSION_CB]),
    "SSL_new": (c_void_p, [c_void_p]),
    "SSL_set_ciphersuites": (c_int, [c_void_p, c_char_p]),
    "SSL_free": (None, [c_void_p]),
    "SSL_set_bio": (None, [c_void_p, c_void_p, c_void_p]),
    "SSL_set_accept_state": (None, [c_void_p]),
    "SSL_set_connect_state": (None, [c_void_p]),
    "SSL_do_handshake": (c_int, [c_void_p]),
    "SSL_read_ex": (c_int, [c_void_p, c_void_p, c_size_t, POINTER(c_size_t)]),
    "SSL_write_ex": (c_int, [c_void_p, c_void_p, c_size_t, POINTER(c_size_t)]),
    "SSL_get_error": (c_int, [c_void_p, c_int]),
    "SSL_shutdown": (c_int, [c_void_p]),
    "SSL_pending": (c_int, [c_void_p]),
    "SSL_get_current_cipher": (c_void_p, [c_void_p]),
    "SSL_CIPHER_get_name": (c_char_p, [c_void_p]),
    "SSL_CIPHER_find": (c_void_p, [c_void_p, c_char_p]),
    "SSL_SESSION_new": (c_void_p, []),
    "SSL_SESSION_free": (None, [c_void_p]),
    "SSL_SESSION_set1_master_key": (c_int, [c_void_p, c_void_p, c_size_t]),
    "SSL_SESSION_set_cipher": (c_int, [c_void_p, c_void_p]),
    "SSL_SESSION_set_protocol_version": (c_int, [c_void_p, c_int]),
    "SSL_session_reused": (c_int, [c_void_p]),
    "BIO_s_mem": (c_void_p, []),
    "BIO_new": (c_void_p, [c_void_p]),
    "BIO_free": (c_int, [c_void_p]),
    "BIO_write": (c_int, [c_void_p, c_void_p, c_int]),
    "BIO_read": (c_int, [c_void_p, c_void_p, c_int]),
    "BIO_ctrl": (c_long, [c_void_p, c_int, c_long, c_void_p]),
    "ERR_get_error": (ctypes.c_ulong, []),
    "ERR_clear_error": (None, []),
    "ERR_error_string_n": (None, [ctypes.c_ulong, c_char_p, c_size_t]),
    "OPENSSL_cleanse": (None, [c_void_p, c_size_t]),
}

_lib: Any = None


def lib() -> Any:
    """The bound libssl (loaded on first use; OpenSslMissing if absent)."""
    global _lib
    if _lib is None:
        lb = _load()
        for fname, (res, args) in _SIGS.items():
            fn = getattr(lb, fname)
            fn.restype = res
            fn.argtypes = args
        _lib = lb
    return _lib


def available() -> bool:
    try:
        lib()
    except OpenSslMissing:
        return False
    return True


def last_error() -> str:
    """Drain OpenSSL's error queue of this thread into one message."""
    lb = lib()
    msgs = []
    buf = ctypes.create_string_buffer(256)
    while True:
        e = lb.ERR_get_error()
        if not e:
            break
        lb.ERR_error_string_n(e, buf, len(buf))
        msgs.append(buf.value.decode(errors="replace"))
    return "; ".join(msgs) or "unknown TLS error"
