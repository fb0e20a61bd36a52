"""Regenerate the README's screenshots of `blockfabric top` and the web
dashboard (docs/img/top.png, top.txt, dashboard.png) against a live target
under a perf load: ``.venv/bin/python scripts/screenshots.py``.

top runs in tmux (capture-pane gives its screen as text, kept as top.txt);
the text is rendered to PNG by headless Chromium as a <pre>, the dashboard
is screenshot by the same browser. Needs tmux and chromium
(scripts/install-deps.sh)."""

from __future__ import annotations

import html
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
BIN = [sys.executable, "-m", "blockfabric.tools.cli"]
NQN = "nqn.2016-06.io.blockfabric:cnode1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium(*args: str) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    with tempfile.TemporaryDirectory() as prof:
        subprocess.run(
            [exe, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={prof}",
             *args],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def main() -> int:
    IMG.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="bf-shots-"))
    env = {**os.environ, "BLOCKFABRIC_RUN_DIR": str(run)}
    rpc = f"ipc://{run}/rpc.sock"
    port, hport = free_port(), free_port()
    cfg = run / "cfg.json"
    listen = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    cfg.write_text(json.dumps({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create",
             "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}},
            {"method": "bdev_malloc_create",
             "params": {"name": "Malloc1", "num_blocks": 131072, "block_size": 512}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": True}},
            {"method": "nvmf_subsystem_add_ns",
             "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_ns",
             "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc1"}}},
            {"method": "nvmf_subsystem_add_listener",
             "params": {"nqn": NQN, "listen_address": listen}}]}]}))  # fmt: skip
    name = f"shots{os.getpid()}"
    subprocess.run([*BIN, "start", "-n", name, "-m", "0x3", "-r", rpc, "--json", str(cfg),
                    "--http", f"127.0.0.1:{hport}", "--daemon"], env=env, check=True)  # fmt: skip
    loads = []
    tmux = ["tmux", "-L", f"bf-shots-{os.getpid()}"]
    try:
        for ns, pat in ((1, "randread"), (2, "randrw")):
            trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN} ns:{ns}"
            extra = ["-M", "70"] if pat == "randrw" else []
            loads.append(subprocess.Popen(
                [*BIN, "perf", "-r", trid, "-t", "90", "-q", "16", "-w", pat, *extra,
                 "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        time.sleep(3)
        top = shlex.join([*BIN, "top", "-r", rpc, "--view", "bdevs"])
        subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "150", "-y", "14", top],
                       env={**env, "TERM": "xterm-256color"}, check=True)  # fmt: skip
        time.sleep(4)
        screens = []
        for key in ("4", "1", "3"):
            subprocess.run([*tmux, "send-keys", "-t", "top", key], check=True)
            time.sleep(2.5)
            out = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            screens.append("\n".join(ln.rstrip() for ln in out.rstrip().splitlines()))
        text = "\n\n".join(screens) + "\n"
        (IMG / "top.txt").write_text(text)
        page = run / "top.html"
        page.write_text(
            "<html><body style='margin:0;background:#111'><pre style='color:#ddd;"
            "font:13px/1.25 monospace;padding:10px;margin:0'>" + html.escape(text)
            + "</pre></body></html>"
        )  # fmt: skip
        rows = text.count("\n") + 2
        chromium(f"--window-size=1250,{int(rows * 16.25 + 24)}", f"--screenshot={IMG / 'top.png'}",
                 page.as_uri())  # fmt: skip
        chromium("--window-size=1280,1000", "--virtual-time-budget=30000",
                 f"--screenshot={IMG / 'dashboard.png'}", f"http://127.0.0.1:{hport}/")  # fmt: skip
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        for p in loads:
            p.kill()
            p.wait()
        subprocess.run([*BIN, "stop", "-n", name], env=env, capture_output=True)
        shutil.rmtree(run, ignore_errors=True)
    print(f"wrote {IMG / 'top.png'}, {IMG / 'top.txt'}, {IMG / 'dashboard.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
