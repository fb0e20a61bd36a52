"""The web dashboard in a real browser (issue 13 item 5): headless Chromium
loads the page during a perf run and keeps it open (DevTools protocol over a
pipe, tests/cdp_pipe.py), a screenshot is taken, and the DOM's live numbers
must move and agree with the RPC's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from bftest import missing_tool
from cdp_pipe import Browser
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


def _cell(b: Browser, cid: str) -> float:
    v = b.eval(f"(document.getElementById({cid!r}) || {{}}).textContent")
    assert v is not None, f"no #{cid} in the page"
    return float(v)


def test_dashboard_in_chromium_during_perf(target: Target, tmp_path: Path) -> None:
    """The page, left open in a real browser (DevTools protocol over a pipe),
    updates itself every second: its numbers move and match the RPC's."""
    p = target.perf(60, qd=8)
    b = Browser(chromium(), tmp_path / "profile", 1280, 900)
    try:
        target.wait_io()
        b.open(target.http_url)
        updates = "+(document.getElementById('updated').dataset.updates || 0)"
        b.wait_for(f"{updates} >= 2", timeout=60)
        before = reads(target)
        n = b.eval(updates)
        b.wait_for(f"{updates} >= {n + 1}", timeout=30)  # a snapshot taken after `before`
        after = reads(target)
        r1 = _cell(b, "reads-Malloc0")
        # the page's count is one the RPC also went through
        assert before <= r1 <= after, (before, r1, after)
        assert _cell(b, "iops-Malloc0") > 0 and _cell(b, "riops-Malloc0") > 0
        assert _cell(b, "mibs-Malloc0") > 0
        assert _cell(b, "rlat-Malloc0") > 0
        assert max(_cell(b, f"cpu-{lc}") for lc in (0, 1)) > 0
        # live: a few seconds later the counts moved, and the chart grew
        pts = "document.querySelector('#chart-iops-Malloc0 polyline').getAttribute('points')"
        n1 = len(b.eval(pts).split())
        n = b.eval(updates)
        b.wait_for(f"{updates} >= {n + 2}", timeout=30)
        r2 = _cell(b, "reads-Malloc0")
        assert r1 < r2 <= reads(target), (r1, r2)
        assert len(b.eval(pts).split()) > n1
        dom = b.dom()
        # what the page lists
        assert "nqn.2016-06.io.blockfabric:obs1" in dom
        assert f"TCP 127.0.0.1:{target.port}" in dom  # listener of the subsystem
        assert "1: Malloc0" in dom  # namespace
        assert re.search(r"<td>nvmf</td><td>nqn\.2016-06\.io\.blockfabric:obs1</td><td>nqn\.", dom)
        shot = tmp_path / "dashboard.png"
        b.screenshot(shot)
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    finally:
        b.close()
        p.kill()
        p.communicate()


def test_dashboard_dump_dom(target: Target, tmp_path: Path) -> None:
    """The same page through chromium's own --dump-dom (no DevTools): the
    script ran and filled the tables from the snapshot."""
    p = target.perf(30, qd=4)
    try:
        target.wait_io()
        dom = browse(target.http_url, tmp_path / "p", "--dump-dom")
        assert re.search(r'data-updates="[1-9]', dom), "the page did not update itself"
        assert cell(dom, "reads-Malloc0") > 0
        assert "nqn.2016-06.io.blockfabric:obs1" in dom
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
