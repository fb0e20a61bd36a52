"""The web dashboard in a real browser (issue 13 item 5): headless Chromium
loads the page during a perf run, a screenshot is taken, and the DOM's live
numbers must move between two loads and agree with the RPC's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from bftest import missing_tool
from obs_helpers import Target, get


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    missing_tool("chromium is not installed (Debian package chromium)")
    raise AssertionError("unreachable")


def browse(url: str, profile: Path, *args: str, budget_ms: int = 5000) -> str:
    p = subprocess.run(
        [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, f"chromium failed ({p.returncode}): {p.stderr[-2000:]}"
    return p.stdout


def cell(dom: str, cid: str) -> float:
    m = re.search(rf'id="{re.escape(cid)}">([^<]*)<', dom)
    assert m, f"no #{cid} in the page:\n{dom[:3000]}"
    return float(m.group(1))


def reads(t: Target) -> int:
    return int(t.daemon.rpc("bdev_get_iostat", {"name": "Malloc0"})["bdevs"][0]["num_read_ops"])


def test_dashboard_in_chromium_during_perf(target: Target, tmp_path: Path) -> None:
    p = target.perf(40, qd=8)
    try:
        target.wait_io()
        before = reads(target)
        dom1 = browse(target.http_url, tmp_path / "p1", "--dump-dom")
        after = reads(target)
        m = re.search(r'data-updates="(\d+)"', dom1)
        assert m and int(m.group(1)) >= 2, "the page did not update itself"
        r1 = cell(dom1, "reads-Malloc0")
        # the page's count is one the RPC also went through
        assert before <= r1 <= after, (before, r1, after)
        assert cell(dom1, "iops-Malloc0") > 0 and cell(dom1, "riops-Malloc0") > 0
        assert cell(dom1, "mibs-Malloc0") > 0
        assert cell(dom1, "rlat-Malloc0") > 0
        # the chart drew more than one point
        pts = re.search(r'id="chart-iops-Malloc0".*?points="([^"]*)"', dom1, re.S)
        assert pts and len(pts.group(1).split()) >= 1
        # what the page lists
        assert "nqn.2016-06.io.blockfabric:obs1" in dom1
        assert f"TCP 127.0.0.1:{target.port}" in dom1  # listener of the subsystem
        assert "1: Malloc0" in dom1  # namespace
        assert re.search(r"<td>nvmf</td><td>nqn\.2016-06\.io\.blockfabric:obs1</td><td>nqn\.", dom1)
        busy = [cell(dom1, f"cpu-{lc}") for lc in (0, 1)]
        assert max(busy) > 0, busy
        time.sleep(1.5)
        dom2 = browse(target.http_url, tmp_path / "p2", "--dump-dom")
        r2 = cell(dom2, "reads-Malloc0")
        assert r2 > r1, f"the numbers did not move: {r1} -> {r2}"
        assert r2 <= reads(target)
        shot = tmp_path / "dashboard.png"
        browse(target.http_url, tmp_path / "p3", f"--screenshot={shot}", "--window-size=1280,900")
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    finally:
        p.kill()
        p.communicate()


def test_dashboard_loads_nothing_from_elsewhere(target: Target) -> None:
    """No CDN: every src/href of the page is a path of this server."""
    _s, ctype, body = get(target.http_url)
    html = body.decode()
    assert ctype.startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
    for r in refs:
        status, _c, _b = get(target.http_url.rstrip("/") + r)
        assert status == 200
    js = get(target.http_url + "dashboard.js")[2].decode()
    assert "http://" not in js.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in js
    view = json.loads(get(target.http_url + "api/snapshot")[2])
    assert [b["name"] for b in view["bdevs"]] == ["Malloc0"]
    assert {r["lcore"] for r in view["reactors"]} == {0, 1}
