"""``blockfabric trace``: decode tracepoint rings (SPDK's spdk_trace is the model).

Sources: a live instance's segment (``-n NAME``, or ``-s NAME`` as spdk_trace
spells it), a leftover segment or a saved file (``-f FILE``: the segment
itself, e.g. /dev/shm/blockfabric.NAME.trace after a SIGKILL, or what
``blockfabric trace record`` wrote).

Output: every event in time order (the rings merged by their monotonic
timestamps) with the time relative to the first one, the ring (reactor N,
supervisor), the tracepoint, the object and its arguments; ``--request``
follows requests (one object, or one object's command id) from first to last
event with the latency of each phase; ``--slowest N`` lists the N slowest
requests with their phases; ``--summary`` counts events per tracepoint and
gives latency percentiles per phase. ``blockfabric trace record -f FILE``
copies the rings to FILE continuously (spdk_trace_record) until Ctrl-C,
SIGTERM, ``--duration`` or the instance's end.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..shm import trace as tr

REC_MAGIC = b"BFTRREC1"
_BLK = struct.Struct("<4sIII")  # b"BLK1", ring, count, pad
_BLK_MAGIC = b"BLK1"


# ----------------------------------------------------------------- sources ---
def load_file(path: str) -> tr.Snapshot:
    """A trace segment file or a ``trace record`` file."""
    with open(path, "rb") as f:
        head = f.read(len(REC_MAGIC))
        if head == REC_MAGIC:
            return _load_recording(f, path)
    data = tr.read_file_bytes(path)
    return tr.snapshot(data, path)


def _load_recording(f: Any, path: str) -> tr.Snapshot:
    (hlen,) = struct.unpack("<I", f.read(4))
    if not 64 <= hlen <= 1 << 20:
        raise ValueError(f"{path}: corrupt recording header")
    hdr = f.read(hlen)
    h = tr.Header.parse(hdr, full=False)
    rings = [tr.ring_info(hdr, i) for i in range(h.rings)]
    seen: dict[tuple[int, int], tr.Record] = {}
    torn = 0
    while True:
        b = f.read(_BLK.size)
        if len(b) < _BLK.size:
            break
        magic, ring, count, _ = _BLK.unpack(b)
        if magic != _BLK_MAGIC or count > tr.MAX_ENTRIES or ring >= h.rings:
            torn += 1
            break  # a block the recorder died writing
        raw = f.read(count * tr.RECORD_SIZE)
        if len(raw) < count * tr.RECORD_SIZE:
            torn += 1
            break
        for s, ts, tp, _p, a0, obj, a1, a2, a3, s2 in tr.REC.iter_unpack(raw):
            if s != s2:
                torn += 1
                continue
            seen[(ring, s)] = tr.Record(ring, s, ts, tp, obj, a0, a1, a2, a3)
    recs = sorted(seen.values(), key=lambda r: (r.ts, r.ring, r.seq))
    return tr.Snapshot(h, rings, recs, torn, path)


def load_live(instance: str) -> tr.Snapshot:
    seg = tr.open_live(instance)
    try:
        return tr.snapshot(seg.buf, seg.path)
    finally:
        tr.close_quietly(seg)


# ---------------------------------------------------------------- requests ---
@dataclass
class Req:
    ring: int
    obj: int
    tag: int  # CID / ITT
    group: str
    events: list[tr.Record] = field(default_factory=list)
    phases: dict[str, int] = field(default_factory=dict)  # phase -> first ts
    order: list[str] = field(default_factory=list)  # phases in the order seen
    done: bool = False
    gap: bool = False  # records of its ring between its first and last event are missing
    lba: int = 0
    length: int = 0
    opc: int = 0

    @property
    def complete(self) -> bool:
        """Ended, its start is in the trace (not overwritten) and no record
        of its ring between its first and last event was lost."""
        return self.done and "REQ_NEW" in self.phases and not self.gap

    @property
    def key(self) -> str:
        return f"{self.ring}:{self.obj}:{self.tag}"

    @property
    def start(self) -> int:
        return self.events[0].ts

    @property
    def end(self) -> int:
        return self.events[-1].ts

    @property
    def latency_ns(self) -> int:
        return self.end - self.start

    def phase_deltas(self) -> list[tuple[str, int]]:
        """(phase, ns since the previous phase) in order; the first is 0."""
        out = []
        prev = None
        for p in self.order:
            t = self.phases[p]
            out.append((p, 0 if prev is None else t - prev))
            prev = t
        return out


def _ends(r: tr.Record, phase: str) -> bool:
    if phase == "RESP_SENT":
        return True
    return phase == "DATA_SENT" and r.a3 == 1  # data carried the completion


def requests(records: Iterable[tr.Record]) -> list[Req]:
    """Group request tracepoints into requests: key (ring, object, CID/ITT);
    a request starts at its PDU or its parsing and ends when its response
    (or data carrying the status) is queued. A command id reused before the
    previous command's end was traced starts a new request (the old one is
    kept, unfinished)."""
    open_: dict[tuple[int, int, int], Req] = {}
    out: list[Req] = []
    records = list(records)
    seqs: dict[int, list[int]] = {}
    for r in records:
        seqs.setdefault(r.ring, []).append(r.seq)
    for v in seqs.values():
        v.sort()
    for r in records:
        tp = tr.TPOINTS.get(r.tpoint)
        if tp is None or not tp.phase:
            continue
        key = (r.ring, r.obj, r.a0)
        q = open_.get(key)
        ph = tp.phase
        if q is not None and (
            (ph == "REQ_NEW" and "REQ_NEW" in q.phases) or (ph == "PDU_RECV" and q.done)
        ):
            q = None
        if q is None:
            q = Req(r.ring, r.obj, r.a0, tp.group)
            open_[key] = q
            out.append(q)
        q.events.append(r)
        if ph not in q.phases:
            q.phases[ph] = r.ts
            q.order.append(ph)
        if ph == "REQ_NEW":
            q.lba, q.length, q.opc = r.a1, r.a2, r.a3
        if _ends(r, ph):
            q.done = True
            del open_[key]
    for q in out:
        lo, hi = q.events[0].seq, q.events[-1].seq
        v = seqs[q.ring]
        q.gap = bisect.bisect_right(v, hi) - bisect.bisect_left(v, lo) != hi - lo + 1
    return out


def percentiles(vals: list[int], ps: Iterable[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    if not vals:
        return {}
    v = sorted(vals)
    out = {}
    for p in ps:
        i = min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))
        out[f"p{p:g}"] = v[i] / 1000
    out["max"] = v[-1] / 1000
    out["mean"] = sum(v) / len(v) / 1000
    return out


def summary(snap: tr.Snapshot) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in snap.records:
        counts[r.name] = counts.get(r.name, 0) + 1
    reqs = [q for q in requests(snap.records) if q.complete]
    phases: dict[str, list[int]] = {}
    for q in reqs:
        for p, d in q.phase_deltas()[1:]:
            phases.setdefault(p, []).append(d)
    per_ring = {i.label: 0 for i in snap.rings}
    for r in snap.records:
        per_ring[snap.rings[r.ring].label] = per_ring.get(snap.rings[r.ring].label, 0) + 1
    return {
        "source": snap.source,
        "events": len(snap.records),
        "torn_or_overwritten": snap.torn,
        "span_us": (snap.records[-1].ts - snap.records[0].ts) / 1000 if snap.records else 0,
        "events_per_ring": per_ring,
        "counts": dict(sorted(counts.items())),
        "requests": len(reqs),
        "latency_us": {
            "total": percentiles([q.latency_ns for q in reqs]),
            **{p: percentiles(phases[p]) for p in tr.PHASES if p in phases},
        },
    }


# ------------------------------------------------------------------ output ---
def _obj_label(r: tr.Record) -> str:
    tp = r.tp
    return f"{tp.obj if tp else 'obj'} {r.obj}"


def describe(r: tr.Record, names: dict[tuple[int, int], str] | None = None) -> str:
    tp = r.tp
    if tp is None:
        return f"obj {r.obj} a0 {r.a0} a1 {r.a1} a2 {r.a2} a3 {r.a3}"
    parts = [_obj_label(r)]
    if names and tp.obj == "channel" and (r.ring, r.obj) in names:
        parts[0] += f" ({names[(r.ring, r.obj)]})"
    if tp.string:
        parts.append(tr.unpack_name(r.a1, r.a2, r.a3))
    vals = (r.a0, r.a1, r.a2, r.a3)
    for nm, v in zip(tp.args, vals, strict=False):
        if nm:
            parts.append(f"{nm} {v:#x}" if nm in ("opc", "type", "cdb0", "status") else f"{nm} {v}")
    return "  ".join(parts)


def channel_names(records: Iterable[tr.Record]) -> dict[tuple[int, int], str]:
    return {
        (r.ring, r.obj): tr.unpack_name(r.a1, r.a2, r.a3)
        for r in records
        if r.tpoint == tr.TP_BDEV_OPEN
    }


def print_events(snap: tr.Snapshot, recs: list[tr.Record], out: Any = sys.stdout) -> None:
    if not recs:
        print("no trace events", file=out)
        return
    t0 = recs[0].ts
    names = channel_names(snap.records)
    print(f"{'TIME(us)':>13}  {'RING':<12} {'TPOINT':<22} DETAILS", file=out)
    for r in recs:
        label = snap.rings[r.ring].label if r.ring < len(snap.rings) else f"ring {r.ring}"
        print(
            f"{(r.ts - t0) / 1000:13.3f}  {label:<12} {r.name:<22} {describe(r, names)}", file=out
        )


def print_request(q: Req, snap: tr.Snapshot, out: Any = sys.stdout) -> None:
    label = snap.rings[q.ring].label if q.ring < len(snap.rings) else f"ring {q.ring}"
    tag = "itt" if q.group == "iscsi_conn" else "cid"
    state = "" if q.done else "  (unfinished)"
    print(
        f"request {q.key}: {label} {q.group} object {q.obj} {tag} {q.tag} opc {q.opc:#x} "
        f"lba {q.lba} len {q.length}: {q.latency_ns / 1000:.3f} us{state}",
        file=out,
    )
    for r in q.events:
        print(f"  {(r.ts - q.start) / 1000:11.3f} us  {r.name:<22} {describe(r)}", file=out)
    deltas = q.phase_deltas()[1:]
    if deltas:
        print(
            "  phases: " + ", ".join(f"{p} +{d / 1000:.3f}" for p, d in deltas) + " (us)", file=out
        )


def _match(q: Req, spec: str) -> bool:
    parts = spec.split(":")
    try:
        nums = [int(p, 0) for p in parts]
    except ValueError:
        raise SystemExit(f"--request: use OBJ, OBJ:CID or RING:OBJ:CID, not {spec!r}") from None
    if len(nums) == 1:
        return q.obj == nums[0]
    if len(nums) == 2:
        return (q.obj, q.tag) == (nums[0], nums[1])
    return (q.ring, q.obj, q.tag) == (nums[0], nums[1], nums[2])


def _source(a: argparse.Namespace) -> tr.Snapshot:
    if a.file:
        return load_file(a.file)
    return load_live(a.shm_name or a.name)


def cmd_trace(a: argparse.Namespace) -> int:
    try:
        snap = _source(a)
    except (OSError, ValueError) as e:
        print(f"blockfabric trace: {e}", file=sys.stderr)
        return 1
    recs = snap.records
    if a.ring is not None:
        recs = [r for r in recs if r.ring == a.ring]
    if a.group:
        want = {tr.GROUP_ALIASES.get(g, g) for g in a.group.split(",")}
        recs = [r for r in recs if r.group in want]
    if a.summary:
        s = summary(tr.Snapshot(snap.header, snap.rings, recs, snap.torn, snap.source))
        if a.json:
            print(json.dumps(s, indent=1))
        else:
            _print_summary(s)
        return 0
    if a.request or a.slowest:
        reqs = requests(recs)
        if a.request:
            reqs = [q for q in reqs if _match(q, a.request)]
        else:
            reqs = sorted((q for q in reqs if q.complete), key=lambda q: -q.latency_ns)[: a.slowest]
        if a.json:
            print(json.dumps([_req_json(q) for q in reqs], indent=1))
            return 0
        if not reqs:
            print("no matching requests")
        for q in reqs:
            print_request(q, snap)
        return 0
    if a.last:
        by: dict[int, list[tr.Record]] = {}
        for r in recs:
            by.setdefault(r.ring, []).append(r)
        keep = {id(r) for lst in by.values() for r in lst[-a.last :]}
        recs = [r for r in recs if id(r) in keep]
    if a.json:
        print(json.dumps([_rec_json(r, snap) for r in recs]))
        return 0
    print(
        f"# {snap.source}: {len(snap.rings)} rings x {snap.header.entries} entries, "
        f"group mask {snap.header.mask:#x}, {len(recs)} events"
        + (f", {snap.torn} torn/overwritten slots skipped" if snap.torn else "")
    )
    print_events(snap, recs)
    return 0


def _rec_json(r: tr.Record, snap: tr.Snapshot) -> dict[str, Any]:
    return {
        "ring": r.ring,
        "role": snap.rings[r.ring].label if r.ring < len(snap.rings) else "",
        "seq": r.seq,
        "ts_ns": r.ts,
        "tpoint": r.name,
        "group": r.group,
        "obj": r.obj,
        "args": [r.a0, r.a1, r.a2, r.a3],
    }


def _req_json(q: Req) -> dict[str, Any]:
    return {
        "key": q.key,
        "ring": q.ring,
        "obj": q.obj,
        "tag": q.tag,
        "group": q.group,
        "done": q.done,
        "complete": q.complete,
        "opc": q.opc,
        "lba": q.lba,
        "len": q.length,
        "latency_us": q.latency_ns / 1000,
        "phases": [{"phase": p, "us": d / 1000} for p, d in q.phase_deltas()],
        "events": [{"tpoint": r.name, "ts_ns": r.ts} for r in q.events],
    }


def _print_summary(s: dict[str, Any]) -> None:
    print(
        f"# {s['source']}: {s['events']} events over {s['span_us']:.1f} us, "
        f"{s['requests']} complete requests, {s['torn_or_overwritten']} torn/overwritten skipped"
    )
    for ring, n in s["events_per_ring"].items():
        print(f"  {ring:<12} {n} events")
    print(f"{'TPOINT':<24} {'COUNT':>9}")
    for k, v in s["counts"].items():
        print(f"{k:<24} {v:>9}")
    lat = s["latency_us"]
    if lat.get("total"):
        cols = ("p50", "p90", "p99", "p99.9", "max", "mean")
        print(f"{'PHASE (us since previous)':<26}" + "".join(f"{c:>10}" for c in cols))
        for p, d in lat.items():
            print(f"{p:<26}" + "".join(f"{d.get(c, 0):>10.2f}" for c in cols))


# ------------------------------------------------------------------ record ---
_stop = False


def _on_stop(_s: int, _f: Any) -> None:
    global _stop
    _stop = True


def record(instance: str, path: str, interval: float, duration: float | None) -> int:
    """Copy new records of every ring to ``path`` until stopped; returns
    how many were written. Records overwritten between two copies are
    counted as lost (a larger --num-trace-entries or a shorter interval
    keeps them)."""
    global _stop
    _stop = False
    seg = tr.open_live(instance)
    old = [signal.signal(s, _on_stop) for s in (signal.SIGINT, signal.SIGTERM)]
    written = lost = 0
    try:
        h = tr.Header.parse(seg.buf)
        hdr_len = tr.header_size(h.rings)
        last = [0] * h.rings
        deadline = None if duration is None else time.monotonic() + duration
        with open(path, "wb") as f:
            f.write(REC_MAGIC + struct.pack("<I", hdr_len) + bytes(seg.buf[:hdr_len]))
            while True:
                owners_alive = False
                for i in range(h.rings):
                    info = tr.ring_info(seg.buf, i)
                    alive = bool(info.pid) and tr._ring_alive(info)
                    owners_alive |= alive
                    recs, _torn = tr.read_ring(seg.buf, h, i, after=last[i], live=alive)
                    if not recs:
                        continue
                    if last[i] and recs[0].seq > last[i] + 1:
                        lost += recs[0].seq - last[i] - 1
                    raw = b"".join(
                        tr.REC.pack(r.seq, r.ts, r.tpoint, 0, r.a0, r.obj, r.a1, r.a2, r.a3, r.seq)
                        for r in recs
                    )
                    f.write(_BLK.pack(_BLK_MAGIC, i, len(recs), 0) + raw)
                    last[i] = recs[-1].seq
                    written += len(recs)
                f.flush()
                if _stop or (deadline is not None and time.monotonic() >= deadline):
                    break
                if not owners_alive:
                    break  # the instance is gone: its rings change no more
                time.sleep(interval)
    finally:
        for s, h_ in zip((signal.SIGINT, signal.SIGTERM), old, strict=True):
            signal.signal(s, h_)
        tr.close_quietly(seg)
    print(f"recorded {written} events to {path}" + (f" ({lost} lost)" if lost else ""))
    return written


def cmd_record(a: argparse.Namespace) -> int:
    try:
        record(a.shm_name or a.name, a.file, a.interval, a.duration)
    except (OSError, ValueError) as e:
        print(f"blockfabric trace record: {e}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "trace",
        help="decode tracepoint rings (live, leftover or recorded); `trace record` copies them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = os.environ.get("BLOCKFABRIC_NAME", "default")
    p.add_argument("-n", "--name", default=default, help="instance name (default: %(default)s)")
    p.add_argument("-s", dest="shm_name", default=None, metavar="NAME", help="same as -n")
    p.add_argument("-f", "--file", default=None, help="decode this segment or recording instead")
    p.add_argument("--request", default=None, metavar="OBJ[:CID]", help="follow request(s)")
    p.add_argument("--slowest", type=int, default=0, metavar="N", help="the N slowest requests")
    p.add_argument("--summary", action="store_true", help="counts and latency percentiles")
    p.add_argument("--last", type=int, default=0, metavar="N", help="last N events of each ring")
    p.add_argument("--ring", type=int, default=None, help="only this ring (reactor id)")
    p.add_argument("--group", default=None, help="only these tpoint groups (comma list)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_trace)
    sub = p.add_subparsers(dest="trace_cmd", metavar="{record}")
    r = sub.add_parser("record", help="copy the rings to a file continuously (spdk_trace_record)")
    r.add_argument("-n", "--name", default=default, help="instance name (default: %(default)s)")
    r.add_argument("-s", dest="shm_name", default=None, metavar="NAME", help="same as -n")
    r.add_argument("-f", "--file", required=True, help="output file")
    r.add_argument("--interval", type=float, default=0.1, help="seconds between copies")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    r.set_defaults(func=cmd_record)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="blockfabric")
    register(ap.add_subparsers(dest="cmd", required=True))
    a = ap.parse_args(argv)
    return int(a.func(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
