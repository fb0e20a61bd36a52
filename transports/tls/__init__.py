"""NVMe/TCP TLS 1.3 with pre-shared keys (issue 11 item 2): the PSK identity and
derivation (psk.py), a small binding to the system OpenSSL (openssl.py) and
the sans-I/O record layer the target's and the host's sockets use (engine.py).
"""
