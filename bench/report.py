"""Rendering of suite results: stdout tables, BENCHMARKS.md, the IOPS/QD plot.

Pure functions of the results dict (see suite.py for its shape), so they are
tested from a canned dict without running anything.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# Published figures for SPDK on these machines (issue 15: SPDK v26.05 nvmf_tgt and
# iscsi_tgt on one core, driven by C load generators, 2026-12-01): reference
# only, never measured in the same run as blockfabric.
SPDK_NVMF_REF: dict[str, dict[str, float]] = {
    "rr4k_qd1": {"iops": 70_652},
    "rr4k_qd32": {"iops": 396_125},
    "rr4k_qd128": {"iops": 400_037},
    "rw4k_qd32": {"iops": 326_583},
    "sr128k_qd16": {"mib_s": 3_106, "iops": 3_106 * 8},
}
SPDK_ISCSI_REF: dict[str, dict[str, float]] = {"rr4k_qd32": {"iops": 209_606}}
# issue 15's targets for one reactor, per-command submission
NVMF_TARGETS: dict[str, dict[str, float]] = {
    "rr4k_qd1": {"iops": 50_000},
    "rr4k_qd32": {"iops": 200_000},
    "rw4k_qd32": {"iops": 160_000},
    "sr128k_qd16": {"mib_s": 3_000},
}

METRICS = (
    "iops",
    "mib_s",
    "lat_us",
    "target_cpu_pct",
    "load_cpu_pct",
    "other_cpu_pct",
    "cpu_us_per_io",
)


def median_of(reps: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median of every metric over the successful repetitions."""
    ok = [r for r in reps if r.get("ok")]
    out: dict[str, float | None] = {}
    for k in METRICS:
        vals = [float(r[k]) for r in ok if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    return out


def _n(v: float | None, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def _cpu(m: dict[str, Any]) -> str:
    t, ld = m.get("target_cpu_pct"), m.get("load_cpu_pct")
    if t is None and ld is None:
        return "-"
    return f"{_n(t, '.0f')}/{_n(ld, '.0f')}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def _cell(row: dict[str, Any] | None, key: str, fmt: str = ",.0f") -> str:
    if row is None:
        return "not run"
    if row["status"] == "n/a":
        return "n/a"
    if row["status"] != "ok":
        return "FAILED"
    v = row["median"].get(key)
    if key == "lat_us" and v is not None and row.get("lat_source") == "derived":
        return format(v, ".1f") + "*"
    return _n(v, fmt)


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _med(row: dict[str, Any] | None, key: str) -> float | None:
    if row is None or row["status"] != "ok":
        return None
    v = row["median"].get(key)
    return None if v is None else float(v)


def table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def _workloads(sec: dict[str, Any]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for r in sec.get("rows", []):
        seen.setdefault(r["workload"], r.get("label", r["workload"]))
    return list(seen.items())


def ceiling_mib(results: dict[str, Any]) -> float | None:
    sec = results.get("sections", {}).get("ceiling")
    if not sec:
        return None
    return _med(_row(sec.get("rows", []), system="loopback"), "mib_s")


def iscsi_table(results: dict[str, Any], markdown: bool) -> str:
    sec = results["sections"]["iscsi"]
    rows = sec.get("rows", [])
    hdr = [
        "workload",
        "tgt IOPS",
        "tgt MiB/s",
        "tgt lat us",
        "tgt CPU t/l %",
        "bf IOPS",
        "bf MiB/s",
        "bf lat us",
        "bf CPU t/l %",
        "bf/tgt",
        "SPDK iscsi_tgt ref",
    ]
    out = []
    for key, label in _workloads(sec):
        t = _row(rows, system="tgt", workload=key)
        b = _row(rows, system="blockfabric", workload=key)
        ref = SPDK_ISCSI_REF.get(key, {}).get("iops")
        out.append(
            [
                label,
                _cell(t, "iops"),
                _cell(t, "mib_s"),
                _cell(t, "lat_us", ".1f"),
                _cpu(t["median"]) if t and t["status"] == "ok" else "-",
                _cell(b, "iops"),
                _cell(b, "mib_s"),
                _cell(b, "lat_us", ".1f"),
                _cpu(b["median"]) if b and b["status"] == "ok" else "-",
                _ratio(_med(b, "iops"), _med(t, "iops")),
                _n(ref) if ref else "-",
            ]
        )
    return table(hdr, out, markdown)


def _nvmf_row(rows: list[dict[str, Any]], key: str, **mode: str) -> dict[str, Any] | None:
    """The row of one submission/poll mode; results from before the modes
    existed have one row per workload (batch submission, busy reactor)."""
    r = _row(rows, system="blockfabric", workload=key, **mode)
    if r is None and mode == {"submission": "batch", "poll": "busy"}:
        r = _row(rows, system="blockfabric", workload=key, submission=None)
    return r


def _target(key: str, iops: float | None, mib: float | None) -> str:
    t = NVMF_TARGETS.get(key)
    if not t:
        return "-"
    if "mib_s" in t:
        got, want, unit = mib, t["mib_s"], " MiB/s"
    else:
        got, want, unit = iops, t["iops"], ""
    if got is None:
        return f">= {want:,.0f}{unit}"
    return f">= {want:,.0f}{unit}: {'met' if got >= want else f'{got / want:.2f}x'}"


def nvmf_table(results: dict[str, Any], markdown: bool) -> str:
    sec = results["sections"]["nvmf"]
    rows = sec.get("rows", [])
    ceil = ceiling_mib(results)
    hdr = [
        "workload",
        "bf IOPS",
        "bf MiB/s",
        "bf lat us",
        "bf CPU t/l %",
        "adaptive IOPS",
        "CPU us/IO (adaptive)",
        "batch IOPS",
        "% of loopback ceiling",
        "SPDK ref IOPS",
        "SPDK ref MiB/s",
        "bf/SPDK ref",
        "target (issue 15)",
    ]
    out = []
    for key, label in _workloads(sec):
        b = _nvmf_row(rows, key, submission="per-command", poll="busy")
        ad = _nvmf_row(rows, key, submission="per-command", poll="adaptive")
        ba = _nvmf_row(rows, key, submission="batch", poll="busy")
        ref = SPDK_NVMF_REF.get(key, {})
        mib = _med(b, "mib_s")
        pct = (
            f"{100 * mib / ceil:.1f}%"
            if (mib is not None and ceil and key.startswith("sr128k"))
            else "-"
        )
        ref_mib = ref.get("mib_s")
        out.append(
            [
                label,
                _cell(b, "iops"),
                _cell(b, "mib_s"),
                _cell(b, "lat_us", ".1f"),
                _cpu(b["median"]) if b and b["status"] == "ok" else "-",
                _cell(ad, "iops") if ad else "-",
                _cell(ad, "cpu_us_per_io", ".2f") if ad else "-",
                _cell(ba, "iops") if ba else "-",
                pct,
                _n(ref.get("iops")),
                _n(ref_mib) if ref_mib else "-",
                _ratio(_med(b, "iops"), ref.get("iops")),
                _target(key, _med(b, "iops"), mib),
            ]
        )
    return table(hdr, out, markdown)


def ceiling_table(results: dict[str, Any], markdown: bool) -> str:
    r = _row(results["sections"]["ceiling"].get("rows", []), system="loopback")
    hdr = ["stream", "MiB/s", "receiver CPU %", "sender CPU %"]
    if r is None:
        return table(hdr, [["iperf3, 128 KiB writes, 1 TCP stream", "not run", "-", "-"]], markdown)
    m = r["median"]
    return table(
        hdr,
        [
            [
                "iperf3, 128 KiB writes, 1 TCP stream",
                _cell(r, "mib_s"),
                _n(m.get("target_cpu_pct"), ".0f"),
                _n(m.get("load_cpu_pct"), ".0f"),
            ]
        ],
        markdown,
    )


def scaling_table(results: dict[str, Any], markdown: bool) -> str:
    rows = results["sections"]["scaling"].get("rows", [])
    hdr = [
        "reactors",
        "mask",
        "target CPUs",
        "load CPUs",
        "workers",
        "IOPS",
        "MiB/s",
        "target CPU %",
        "load CPU %",
        "shares CPUs",
        "vs 1 reactor",
    ]
    base = _med(_row(rows, reactors=1), "iops")
    out = []
    for r in rows:
        m = r.get("median", {})
        out.append(
            [
                str(r["reactors"]),
                r.get("mask", "-"),
                r.get("target_cpus", "-"),
                r.get("load_cpus", "-"),
                str(r.get("workers", "-")),
                _cell(r, "iops"),
                _cell(r, "mib_s"),
                _n(m.get("target_cpu_pct"), ".0f") if r["status"] == "ok" else "-",
                _n(m.get("load_cpu_pct"), ".0f") if r["status"] == "ok" else "-",
                "yes" if r.get("shared_cpus") else "no",
                _ratio(_med(r, "iops"), base),
            ]
        )
    return table(hdr, out, markdown)


def profile_table(results: dict[str, Any], markdown: bool) -> str:
    prof = results["sections"]["profile"]
    hdr = ["#", "function (file:first line)", "self %", "samples"]
    if prof.get("status") != "ok":
        return table(hdr, [["-", f"FAILED: {prof.get('error', '')}", "-", "-"]], markdown)
    out = [
        [
            str(i + 1),
            (f"`{t['function']}`" if markdown else t["function"]),
            f"{t['self_pct']:.1f}",
            str(t["samples"]),
        ]
        for i, t in enumerate(prof.get("top", []))
    ]
    return table(hdr, out, markdown)


def failures(sec: dict[str, Any]) -> list[str]:
    """One line per distinct failure; rows failing the same way are grouped."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in sec.get("rows", []):
        who = f"{r['system']} {r.get('proto', '')}".strip()
        label = r.get("label", r["workload"])
        if r["status"] in ("failed", "n/a") and r.get("error"):
            kind = "FAILED" if r["status"] == "failed" else "n/a"
            groups.setdefault((kind, who, r["error"]), []).append(label)
        for i, rep in enumerate(r.get("reps", [])):
            if r["status"] == "ok" and not rep.get("ok"):
                groups.setdefault(("rep failed", who, str(rep.get("error"))), []).append(
                    f"{label} rep {i + 1}"
                )
    return [
        f"{kind}: {who} ({', '.join(labels)}): {err}" for (kind, who, err), labels in groups.items()
    ]


def interference(sec: dict[str, Any]) -> str | None:
    """How much CPU other processes took on the benchmark CPUs during the runs."""
    vals = [
        float(rep["other_cpu_pct"])
        for r in sec.get("rows", [])
        for rep in r.get("reps", [])
        if rep.get("ok") and rep.get("other_cpu_pct") is not None
    ]
    if not vals:
        return None
    return (
        f"CPU used on the benchmark CPUs by processes other than target and load during the runs: "
        f"median {statistics.median(vals):.0f}%, max {max(vals):.0f}% of one core"
        + (" (numbers disturbed by other work on this machine)" if max(vals) > 10 else "")
    )


SECTION_TITLES = {
    "ceiling": "Loopback ceiling (iperf3)",
    "iscsi": "iSCSI: blockfabric vs tgt (same run)",
    "nvmf": "NVMe/TCP: blockfabric (same run) vs SPDK nvmf_tgt (reference, NOT same run)",
    "scaling": "Scaling: blockfabric NVMe/TCP, 4 KiB rand read QD32, 1 vs 2+ reactors",
    "profile": "Profile: blockfabric reactor during 4 KiB rand read QD32, per-command submission (py-spy)",
}
TABLES = {
    "ceiling": ceiling_table,
    "iscsi": iscsi_table,
    "nvmf": nvmf_table,
    "scaling": scaling_table,
    "profile": profile_table,
}
ORDER = ("ceiling", "iscsi", "nvmf", "scaling", "profile")


def text_report(results: dict[str, Any], only: list[str] | None = None) -> str:
    parts = []
    for name in ORDER:
        if name not in results.get("sections", {}) or (only and name not in only):
            continue
        parts.append(f"== {SECTION_TITLES[name]}")
        parts.append(TABLES[name](results, False))
        for f in failures(results["sections"][name]):
            parts.append("  " + f)
        for n in results["sections"][name].get("notes", []):
            parts.append("  note: " + n)
        if itf := interference(results["sections"][name]):
            parts.append("  note: " + itf)
        parts.append("")
    parts.append(
        "t/l = CPU % (of one core) used by target / load generator; lat marked * = QD/IOPS "
        "(Little's law), else reported by the load generator."
    )
    return "\n".join(parts)


def _meta_line(m: dict[str, Any]) -> str:
    mode = "quick" if m.get("quick") else "full"
    return (
        f"run {m.get('started', '?')} ({mode}: {m.get('reps', '?')} repetition(s) of "
        f"{m.get('duration_s', '?')} s, median reported; target CPUs {m.get('cpus_target', '?')}, "
        f"load CPUs {m.get('cpus_load', '?')})"
    )


def _disturbed_warning(results: dict[str, Any]) -> list[str]:
    vals = [
        float(rep["other_cpu_pct"])
        for sec in results.get("sections", {}).values()
        for r in sec.get("rows", [])
        for rep in r.get("reps", [])
        if rep.get("ok") and rep.get("other_cpu_pct") is not None
    ]
    if not vals or statistics.median(vals) <= 10:
        return []
    return [
        f"**Caveat: other processes used a median {statistics.median(vals):.0f}% of a core on the "
        "benchmark CPUs during these runs (see the per-section notes), so absolute numbers are "
        "low and noisy; rerun on an idle machine before drawing conclusions.**",
        "",
    ]


# Benchmarks run on their own (not by `python -m bench`) keep their latest
# table in bench/results/NAME.md; BENCHMARKS.md carries each of them as a section.
STANDALONE = (
    ("cload", "NVMe/TCP under a C load generator (per-command submission, same run)"),
    ("attacks", "Hostile hosts: a well-behaved host next to each attack"),
    ("recovery", "Recovery after a reactor kill"),
    ("rbd", "Ceph RBD: blockfabric NVMe/TCP on an RBD image vs `rbd bench` (same run)"),
    ("fuzz", "Coverage-guided fuzzing"),
    ("stack", "Stackable bdevs: cost on the malloc path"),
    ("resv", "NVMe reservations: cost of a held reservation (same run)"),
    ("tls", "NVMe/TCP with TLS 1.3: cost against plain TCP (same run)"),
    ("trace", "Tracing: cost on the NVMe/TCP data path"),
    ("metrics", "Observability: cost of a metrics scrape every second"),
    ("auth", "DH-HMAC-CHAP: cost of in-band authentication (same run)"),
    ("rdma", "NVMe/RDMA target: blockfabric vs the kernel's nvmet-rdma (QEMU guest, Soft-RoCE)"),
    ("rdma_host", "NVMe/RDMA host: blockfabric perf vs the kernel's nvme-rdma host (same target)"),
    ("multipath", "NVMe-oF multipath: the longest I/O stall the Linux host saw during failover"),
)


def _standalone_sections(results_dir: Path | None = None) -> list[str]:
    d = results_dir or Path(__file__).parent / "results"
    out: list[str] = []
    for name, title in STANDALONE:
        f = d / f"{name}.md"
        if not f.is_file():
            continue
        body = f.read_text().strip().splitlines()
        if body and body[0].startswith("#"):
            body = body[1:]  # the file's own title: the section title replaces it
        out += [f"## {title}", "", *[("#" + ln if ln.startswith("#") else ln) for ln in body], ""]
    return out


def markdown_report(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    mach = meta.get("machine", {})
    ver = meta.get("versions", {})
    secs = results.get("sections", {})
    md = [
        "# blockfabric benchmarks",
        "",
        "Generated by `python -m bench` (bench/__main__.py; `make bench ARGS=...`). "
        "Every system runs on the same machine in one suite run, one at a time, under the same "
        "conditions: target pinned to the target CPU(s), load generator pinned to the load CPU(s) "
        "(taskset), a 256 MiB RAM-backed LUN (blockfabric Malloc bdev in POSIX shared memory; tgt: "
        "a preallocated file in /dev/shm), 512-byte blocks, the same duration; each measurement "
        "is repeated and the median is reported. Raw numbers: bench/results/*.json.",
        "",
        f"Last suite invocation: `{meta.get('argv', 'python -m bench')}`, {_meta_line(meta)}.",
        "",
        *_disturbed_warning(results),
        "## Machine",
        "",
        f"- CPU: {mach.get('cpu_model', '?')}, {mach.get('cpus', '?')} CPUs "
        f"({mach.get('virtualization', 'bare metal?')})",
        f"- memory: {mach.get('mem_gib', '?')} GiB; kernel {mach.get('kernel', '?')}",
        "",
        "## Versions",
        "",
    ]
    md += [f"- {k}: {v}" for k, v in ver.items()]
    md += [
        "",
        "Columns: `t/l` = CPU use in % of one core of the target processes / the load "
        "generator during the run (psutil/rusage deltas; blockfabric reactors busy-poll, so "
        "their CPU is ~100% of an otherwise idle core whatever the load — the load CPU column shows whether the load "
        "generator was the limit). Latency marked `*` is derived as QD/IOPS (Little's law; "
        "iscsi-perf prints no latency), otherwise it is the mean the load generator reported.",
        "",
    ]
    for name in ORDER:
        if name not in secs:
            continue
        sec = secs[name]
        md += [f"## {SECTION_TITLES[name]}", ""]
        if sec.get("meta") and sec["meta"].get("started") != meta.get("started"):
            sm = sec["meta"]
            md += [
                f"_From an earlier invocation: {_meta_line(sm)} on "
                f"{sm.get('machine', {}).get('cpu_model', '?')}, "
                f"{sm.get('machine', {}).get('cpus', '?')} CPUs._",
                "",
            ]
        md += [TABLES[name](results, True), ""]
        fl = failures(sec)
        notes = list(sec.get("notes", []))
        if itf := interference(sec):
            notes.append(itf)
        if fl or notes:
            md += [f"- {x}" for x in (*notes, *fl)] + [""]
    if "nvmf" in secs or "iscsi" in secs:
        md += [
            "SPDK reference figures (issue 15: SPDK v26.05 on one core of these machines, "
            "driven by C load generators, 2026-12-01; not in this run): nvmf_tgt 4 KiB "
            "randread 70 652 IOPS at QD1, 396 125 at QD32, 400 037 at QD128, randwrite "
            "326 583 at QD32, 3 106 MiB/s at 128 KiB QD16; iscsi_tgt 209 606 IOPS at QD32 "
            "with iscsi-perf. There is no NVMe/TCP peer target installable here (no SPDK "
            "package, no nvmet kernel module), so the NVMe/TCP table compares against the "
            "loopback ceiling (iperf3, same run) and these references.",
            "",
        ]
    if results.get("plot"):
        md += ["## IOPS against queue depth", "", f"![IOPS vs QD]({results['plot']})", ""]
    md += _standalone_sections()
    with_cmds = [n for n in ORDER if secs.get(n, {}).get("commands")]
    if with_cmds:
        md += [
            "## Exact commands run",
            "",
            "DIR is a private temporary run directory; `rpc METHOD JSON` is a JSON-RPC call "
            "to the instance (`python -m blockfabric.tools.cli rpc -s ADDR METHOD` or "
            "`RpcClient(addr).call`); ports are ephemeral ones picked at run time; FILE is a "
            "temporary JSON result file.",
            "",
        ]
        for n in with_cmds:
            md += [f"{SECTION_TITLES[n]}:", "", "```"] + list(secs[n]["commands"]) + ["```", ""]
    return "\n".join(md)


def plot(results: dict[str, Any], path: Path) -> bool:
    """IOPS vs QD for 4 KiB random read, one line per system. False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = results.get("sections", {})
    qds = {"rr4k_qd1": 1, "rr4k_qd32": 32, "rr4k_qd128": 128}
    series: list[tuple[str, list[tuple[int, float]], str]] = []
    for sec_name, system, label in (
        ("iscsi", "tgt", "tgt iSCSI"),
        ("iscsi", "blockfabric", "blockfabric iSCSI"),
        ("nvmf", "blockfabric", "blockfabric NVMe/TCP"),
    ):
        rows = secs.get(sec_name, {}).get("rows", [])
        pts = [
            (qd, v)
            for k, qd in qds.items()
            if (v := _med(_row(rows, system=system, workload=k), "iops")) is not None
        ]
        if pts:
            series.append((label, pts, "-o"))
    if not series:
        return False
    series.append(
        (
            "SPDK nvmf_tgt (reference, not same run)",
            [(qd, SPDK_NVMF_REF[k]["iops"]) for k, qd in qds.items()],
            "--s",
        )
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts, style in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    ax.plot(
        [32],
        [SPDK_ISCSI_REF["rr4k_qd32"]["iops"]],
        "^",
        color="gray",
        label="SPDK iscsi_tgt (reference, not same run)",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(qds.values()), [str(q) for q in qds.values()])
    ax.set_xlabel("queue depth")
    ax.set_ylabel("IOPS (4 KiB random read)")
    ax.set_title("IOPS vs queue depth (target on 1 core, load on another)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
