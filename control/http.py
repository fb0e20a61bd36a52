"""The supervisor's read-only HTTP servers: ``/metrics`` (Prometheus,
``start --metrics ADDR``) and the web dashboard (``start --http ADDR``).

They run in a thread of the supervisor, off the data path, and take their
data the way any RPC client does: over the instance's own RPC socket (one
client per server, calls serialised by a lock), so the supervisor's event
loop stays single-threaded. Only GET and HEAD are served; everything else is
405. ``HttpServers.close`` (supervisor shutdown) stops them.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import metrics, observe
from .client import RpcClient

log = logging.getLogger("blockfabric.http")

DEFAULT_HOST = "127.0.0.1"
# bounds: what any number of HTTP clients can make the supervisor do
MAX_CLIENTS = 16  # connections served at once; more are closed at accept
IDLE_TIMEOUT_S = 15.0  # an idle or slow client is dropped after this
MIN_SNAPSHOT_AGE_S = 0.5  # scrapes closer together share one snapshot


def parse_bind(spec: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (loopback) -> (host, port)."""
    s = spec.strip()
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, s
    host = host.strip("[]") or DEFAULT_HOST
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"bad address {spec!r}: want HOST:PORT or PORT") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"bad address {spec!r}: port out of range")
    return host, p


class _Source:
    """Snapshots over the instance's RPC socket."""

    def __init__(self, rpc_addr: str) -> None:
        self.rpc_addr = rpc_addr
        self._lock = threading.Lock()
        self._client: RpcClient | None = None
        self._last: dict[str, Any] | None = None
        self._last_done = 0.0

    def _call(self, method: str, params: Any) -> Any:
        if self._client is None:
            self._client = RpcClient(self.rpc_addr, timeout=15.0)
        try:
            return self._client.call(method, params)
        except Exception:
            c, self._client = self._client, None
            c.close()  # a timed-out request socket cannot be reused
            raise

    def snapshot(self) -> dict[str, Any]:
        """A fresh snapshot, or the last one when it is younger than
        MIN_SNAPSHOT_AGE_S: however many clients scrape however often, the
        reactors are asked at most twice a second."""
        with self._lock:
            last = self._last
            if last is not None and time.monotonic() - self._last_done < MIN_SNAPSHOT_AGE_S:
                return last
            self._last = observe.collect(self._call)
            self._last_done = time.monotonic()
            return self._last

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def dashboard_view(snap: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard page shows, as JSON (its script computes rates)."""
    status = snap.get("status") or {}
    conns = observe.reactor_connections(snap)
    return {
        "time": snap["time"],
        "instance": status.get("instance"),
        "listeners": status.get("listeners", []),
        "bdevs": list(observe.bdev_stats(snap).values()),
        "subsystems": [
            {
                "nqn": s.get("nqn"),
                "subtype": s.get("subtype"),
                "listen_addresses": s.get("listen_addresses", []),
                "namespaces": [
                    {"nsid": n.get("nsid"), "bdev_name": n.get("bdev_name")}
                    for n in s.get("namespaces", [])
                ],
                "allow_any_host": s.get("allow_any_host"),
                "hosts": s.get("hosts", []),
            }
            for s in snap.get("subsystems") or []
        ],
        "hosts": observe.hosts(snap),
        "target_nodes": [
            {"name": t.get("name"), "alias_name": t.get("alias_name"), "luns": t.get("luns", [])}
            for t in snap.get("target_nodes") or []
        ],
        "iscsi_connections": snap.get("iscsi_connections") or [],
        "reactors": [
            {
                "lcore": r.get("lcore"),
                "pid": r.get("pid"),
                "busy": r.get("busy", 0),
                "idle": r.get("idle", 0),
                "cpu_s": float(r.get("cpu_user_s", 0.0)) + float(r.get("cpu_sys_s", 0.0)),
                "restarts": r.get("restarts", 0),
                "state": r.get("state", ""),
                "connections": conns.get(i, 0),
            }
            for i, r in enumerate((snap.get("reactors") or {}).get("reactors", []))
        ],
        "errors": snap.get("errors", {}),
    }


def _handler(src: _Source, routes: set[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "blockfabric"
        protocol_version = "HTTP/1.1"
        timeout = IDLE_TIMEOUT_S  # socket timeout: idle keep-alive clients go

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http %s: " + format, self.client_address[0], *args)

        def _send(self, code: int, ctype: str, body: bytes, head: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _get(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics" and "metrics" in routes:
                    body = metrics.render(src.snapshot())
                    return self._send(200, metrics.CONTENT_TYPE, body, head)
                if "dashboard" in routes:
                    from . import dashboard_page

                    if path in ("/", "/index.html"):
                        return self._send(
                            200, "text/html; charset=utf-8", dashboard_page.HTML.encode(), head
                        )
                    if path == "/dashboard.js":
                        return self._send(
                            200,
                            "text/javascript; charset=utf-8",
                            dashboard_page.SCRIPT.encode(),
                            head,
                        )
                    if path == "/api/snapshot":
                        body = json.dumps(dashboard_view(src.snapshot())).encode()
                        return self._send(200, "application/json", body, head)
            except Exception as e:
                log.warning("http %s: %s", path, e)
                return self._send(503, "text/plain", f"target not answering: {e}\n".encode(), head)
            self._send(404, "text/plain", b"not found\n", head)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._get(False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._get(True)

        def _refuse(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815  (read-only)

    return Handler


class _Server(ThreadingHTTPServer):
    """At most MAX_CLIENTS connections served at once (a thread each)."""

    daemon_threads = True

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(*a, **kw)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("http: more than %d clients, closing %s", MAX_CLIENTS, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpServers:
    """The metrics and dashboard servers of one instance (either may be
    absent; the same address serves both)."""

    def __init__(self, rpc_addr: str, metrics_at: str | None, http_at: str | None) -> None:
        self.src = _Source(rpc_addr)
        wanted: dict[tuple[str, int], set[str]] = {}
        if metrics_at:
            wanted.setdefault(parse_bind(metrics_at), set()).add("metrics")
        if http_at:
            wanted.setdefault(parse_bind(http_at), set()).add("dashboard")
        self.servers: list[tuple[ThreadingHTTPServer, threading.Thread, set[str]]] = []
        try:
            for addr, routes in wanted.items():
                cls = _Server6 if ":" in addr[0] else _Server
                srv = cls(addr, _handler(self.src, routes))
                t = threading.Thread(
                    target=srv.serve_forever,
                    kwargs={"poll_interval": 0.2},
                    name=f"http-{'+'.join(sorted(routes))}",
                    daemon=True,
                )
                self.servers.append((srv, t, routes))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _bound(srv: ThreadingHTTPServer) -> tuple[str, int]:
        host, port = srv.server_address[:2]
        return (host.decode() if isinstance(host, bytes) else str(host)), int(port)

    def start(self) -> None:
        for srv, t, routes in self.servers:
            t.start()
            host, port = self._bound(srv)
            log.info("http: %s at http://%s:%s/", "+".join(sorted(routes)), host, port)

    def addresses(self) -> dict[str, str]:
        """route -> ``HOST:PORT`` actually bound (port 0 resolved)."""
        out = {}
        for srv, _t, routes in self.servers:
            host, port = self._bound(srv)
            for r in routes:
                out[r] = f"{host}:{port}"
        return out

    def close(self) -> None:
        for srv, t, _r in self.servers:
            if t.is_alive():
                srv.shutdown()
            srv.server_close()
        self.servers = []
        self.src.close()
