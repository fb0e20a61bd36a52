"""`blockfabric top`: a live terminal view of a running target (spdk_top is
the model), over the RPC socket.

Views: reactors (busy %, polls, connections), targets (NVMe-oF subsystems and
iSCSI target nodes), connections (qpairs / iSCSI connections per host), bdevs
(IOPS, MiB/s, latency). Keys: 1-4 or Tab switch view, s next sort column,
r reverse the order, q quit. ``--once`` prints every view (or ``--view``)
as text from two snapshots ``--interval`` apart and exits.

curses from the standard library: a table that redraws once a second needs
nothing more, and it is there on every Python.
"""

from __future__ import annotations

import argparse
import curses
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..control import observe

VIEWS = ("reactors", "targets", "connections", "bdevs")


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]]  # cells: str, int or float
    numeric: set[int]  # right-aligned columns


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def build(view: str, prev: dict[str, Any] | None, cur: dict[str, Any]) -> Table:
    """The table of ``view`` between two snapshots (rates need ``prev``)."""
    rt = observe.rates(prev, cur)
    if view == "reactors":
        conns = observe.reactor_connections(cur)
        groups = (cur.get("nvmf_stats") or {}).get("poll_groups", [])
        prev_groups = ((prev or {}).get("nvmf_stats") or {}).get("poll_groups", [])
        dt = rt["interval_s"]
        rows: list[list[Any]] = []
        for i, r in enumerate((cur.get("reactors") or {}).get("reactors", [])):
            lc = r["lcore"]
            rr = rt["reactors"].get(lc, {})
            done = int(groups[i].get("completed_nvme_io", 0)) if i < len(groups) else 0
            before = int(prev_groups[i].get("completed_nvme_io", 0)) if i < len(prev_groups) else 0
            rows.append(
                [
                    lc,
                    r.get("pid", ""),
                    round(rr.get("busy_pct", 0.0), 1),
                    round(rr.get("cpu_pct", 0.0), 1),
                    int(round(rr.get("polls_s", 0.0))),
                    r.get("busy", 0) + r.get("idle", 0),
                    int(round((done - before) / dt)) if dt > 0 and prev else 0,
                    conns.get(i, 0),
                    r.get("poll_mode", ""),
                    r.get("restarts", 0) or 0,
                    r.get("state", ""),
                ]
            )
        return Table(
            "Reactors",
            ["LCORE", "PID", "BUSY%", "CPU%", "POLLS/s", "POLLS", "NVME_IO/s", "CONNS", "POLL",
             "RESTARTS", "STATE"],
            rows,
            {0, 1, 2, 3, 4, 5, 6, 7, 9},
        )  # fmt: skip
    if view == "targets":
        stats = observe.bdev_stats(cur)
        hosts = observe.hosts(cur)
        rows = []
        for s in cur.get("subsystems") or []:
            nss = s.get("namespaces", [])
            iops = sum(rt["bdevs"].get(n["bdev_name"], {}).get("iops", 0.0) for n in nss)
            nconn = sum(h["connections"] for h in hosts if h["target"] == s["nqn"])
            rows.append(
                ["nvmf", s["nqn"], len(nss), ",".join(n["bdev_name"] for n in nss), nconn,
                 int(round(iops))]
            )  # fmt: skip
        for t in cur.get("target_nodes") or []:
            lus = t.get("luns", [])
            iops = sum(rt["bdevs"].get(lu["bdev_name"], {}).get("iops", 0.0) for lu in lus)
            nconn = sum(h["connections"] for h in hosts if h["target"] == t["name"])
            rows.append(
                ["iscsi", t["name"], len(lus), ",".join(lu["bdev_name"] for lu in lus), nconn,
                 int(round(iops))]
            )  # fmt: skip
        del stats
        return Table(
            "Subsystems and target nodes",
            ["PROTO", "NAME", "NS/LUNS", "BDEVS", "CONNS", "IOPS"],
            rows,
            {2, 4, 5},
        )
    if view == "connections":
        rows = [
            [h["proto"], h["target"], h["host"], h["address"], h["connections"], h["reactors"]]
            for h in observe.hosts(cur)
        ]
        return Table(
            "Connections per host",
            ["PROTO", "TARGET", "HOST", "ADDRESS", "QPAIRS/CONNS", "REACTORS"],
            rows,
            {4},
        )
    rows = []
    stats = observe.bdev_stats(cur)
    for name, r in rt["bdevs"].items():
        b = stats[name]
        rows.append(
            [
                name,
                int(round(r["iops"])),
                int(round(r["read_iops"])),
                int(round(r["write_iops"])),
                round(r["mibs"], 2),
                round(r["read_lat_us"], 1),
                round(r["write_lat_us"], 1),
                b["num_read_ops"],
                b["num_write_ops"],
            ]
        )
    return Table(
        "Block devices",
        ["BDEV", "IOPS", "READ/s", "WRITE/s", "MiB/s", "RD_LAT_us", "WR_LAT_us", "READS",
         "WRITES"],
        rows,
        {1, 2, 3, 4, 5, 6, 7, 8},
    )  # fmt: skip


def sort_rows(t: Table, col: int, reverse: bool) -> None:
    def key(row: list[Any]) -> tuple[int, Any]:
        v = row[col] if col < len(row) else ""
        return (0, v) if isinstance(v, (int, float)) else (1, str(v))

    t.rows.sort(key=key, reverse=reverse)


def render_text(t: Table, sort_col: int = 0) -> list[str]:
    widths = [len(h) + (1 if i == sort_col else 0) for i, h in enumerate(t.headers)]
    cells = [[_fmt(v) for v in row] for row in t.rows]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(vals: list[str]) -> str:
        return "  ".join(
            v.rjust(widths[i]) if i in t.numeric else v.ljust(widths[i]) for i, v in enumerate(vals)
        ).rstrip()

    heads = [h + ("*" if i == sort_col else "") for i, h in enumerate(t.headers)]
    out = [t.title, line(heads)]
    out += [line(r) for r in cells] or ["(none)"]
    return out


def _client_call(a: argparse.Namespace) -> Any:
    from ..control.addresses import default_rpc_addr
    from ..control.client import RpcClient

    client = RpcClient(a.rpc_socket or default_rpc_addr(a.name), timeout=a.timeout)
    return client


def run_once(a: argparse.Namespace) -> int:
    c = _client_call(a)
    try:
        prev = observe.collect(c.call)
        time.sleep(a.interval)
        cur = observe.collect(c.call)
    finally:
        c.close()
    views = [a.view] if a.view else list(VIEWS)
    for i, v in enumerate(views):
        t = build(v, prev, cur)
        sort_rows(t, 0, False)
        if i:
            print()
        print("\n".join(render_text(t)))
    if cur["errors"] and len(cur["errors"]) == len(observe._PLAIN):
        print(
            f"blockfabric top: target not answering: {next(iter(cur['errors'].values()))}",
            file=sys.stderr,
        )
        return 1
    return 0


class _Screen:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.view = VIEWS.index(a.view) if a.view else 0
        self.sort_col: dict[str, int] = {}
        self.reverse: dict[str, bool] = {}
        self.prev: dict[str, Any] | None = None
        self.cur: dict[str, Any] | None = None
        self.error = ""

    def draw(self, scr: Any) -> None:
        scr.erase()
        h, w = scr.getmaxyx()
        name = VIEWS[self.view]
        tabs = "  ".join(
            f"[{i + 1}:{v}]" if i == self.view else f" {i + 1}:{v} " for i, v in enumerate(VIEWS)
        )
        self._put(scr, 0, f"blockfabric top  {tabs}", curses.A_BOLD)
        stamp = time.strftime("%H:%M:%S")
        self._put(scr, 1, f"{stamp}  1-4/Tab: view  s: sort  r: reverse  q: quit  {self.error}")
        if self.cur is None:
            self._put(scr, 3, "waiting for the target...")
            scr.refresh()
            return
        t = build(name, self.prev, self.cur)
        col = self.sort_col.get(name, 0) % len(t.headers)
        rev = self.reverse.get(name, name in ("bdevs", "reactors") and col > 0)
        sort_rows(t, col, rev)
        lines = render_text(t, col)
        self._put(scr, 3, lines[0], curses.A_BOLD)
        self._put(scr, 4, lines[1], curses.A_REVERSE)
        for i, ln in enumerate(lines[2:]):
            if 5 + i >= h - 1:
                break
            self._put(scr, 5 + i, ln)
        del w
        scr.refresh()

    @staticmethod
    def _put(scr: Any, y: int, text: str, attr: int = 0) -> None:
        h, w = scr.getmaxyx()
        if y < h:
            try:
                scr.addnstr(y, 0, text, max(w - 1, 0), attr)
            except curses.error:
                pass

    def key(self, k: int) -> bool:
        """False: quit."""
        name = VIEWS[self.view]
        if k in (ord("q"), ord("Q"), 27):
            return False
        if ord("1") <= k <= ord(str(len(VIEWS))):
            self.view = k - ord("1")
        elif k == 9:  # Tab
            self.view = (self.view + 1) % len(VIEWS)
        elif k == ord("s"):
            self.sort_col[name] = self.sort_col.get(name, 0) + 1
            self.reverse.pop(name, None)
        elif k == ord("r"):
            col = self.sort_col.get(name, 0)
            default = name in ("bdevs", "reactors") and col > 0
            self.reverse[name] = not self.reverse.get(name, default)
        return True

    def main(self, scr: Any) -> int:
        curses.curs_set(0)
        scr.timeout(100)
        c = _client_call(self.a)
        next_at = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_at:
                    next_at = now + self.a.interval
                    try:
                        snap = observe.collect(c.call)
                        self.prev, self.cur = self.cur, snap
                        errs = snap["errors"]
                        self.error = (
                            f"target not answering: {next(iter(errs.values()))}"
                            if len(errs) == len(observe._PLAIN)
                            else ""
                        )
                    except Exception as e:
                        self.error = f"error: {e}"
                    self.draw(scr)
                k = scr.getch()
                if k == -1:
                    continue
                if not self.key(k):
                    return 0
                self.draw(scr)
        finally:
            c.close()


def run(a: argparse.Namespace) -> int:
    if a.interval <= 0:
        print("blockfabric top: --interval must be > 0", file=sys.stderr)
        return 2
    if a.once:
        return run_once(a)
    scr = _Screen(a)
    try:
        return int(curses.wrapper(scr.main))
    except KeyboardInterrupt:
        return 0


def register(sub: Any) -> None:
    p = sub.add_parser("top", help="live view of reactors, targets, connections, bdevs")
    p.add_argument(
        "--name",
        "-n",
        default=os.environ.get("BLOCKFABRIC_NAME", "default"),
        help="instance name (default: %(default)s)",
    )
    p.add_argument("-r", "--rpc-socket", default=None, metavar="RPC_ADDR")
    p.add_argument(
        "-d", "--interval", type=float, default=1.0, help="refresh every SECONDS (default 1)"
    )
    p.add_argument("--view", choices=VIEWS, default=None, help="the view to start with / print")
    p.add_argument(
        "--once", action="store_true", help="print the views once (two snapshots) and exit"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="RPC timeout in seconds")
    p.set_defaults(func=run)
