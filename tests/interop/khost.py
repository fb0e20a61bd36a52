"""Drive the kernel-host QEMU harness (/work/shared/interop/kernel-host) from tests.

The harness boots Debian's 6.1 kernel with nvme-cli and open-iscsi and runs a
guest script against a target on the host loopback (host 127.0.0.1:PORT is
10.0.2.2:PORT in the guest).  Guest scripts in tests/interop/guest/ print
machine-readable console lines (see guest/interop-lib.sh):

  KH-RESULT <name> PASS|FAIL <detail>
  KH-FACT <key>=<value>
  KH-MARK <name>        the host test reacts (e.g. adds a namespace by RPC)

Public API:
  harness_dir() -> Path | None
  require_harness() -> Path                      pytest.skip with the reason when absent
  require_tools(*names) -> None                  pytest.skip naming the missing tool
  free_port() -> int
  run_guest(script, env=..., files=..., timeout=..., on_mark=..., on_line=...) -> GuestRun
  GuestRun.rc / .output / .seconds / .results / .facts / .marks / .failed() / .summary()
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GUEST_DIR = Path(__file__).resolve().parent / "guest"
INTEROP_LIB = GUEST_DIR / "interop-lib.sh"
REPO = Path(__file__).resolve().parents[2]

# variables run-guest.sh exports on its own; everything else goes via GUEST_VARS
_BUILTIN_VARS = set(
    "PORT NQN IQN LUN TARGET_ADDR IO_MB IO_OFFSET_MB HOSTNQN HOSTID INITIATOR_IQN "
    "CHAP_USER CHAP_PASS NVME_CONNECT_OPTS DISCOVER VERBOSE SIZE_MB HOLD_SECONDS GUEST_LOGLEVEL".split()
)
_HOST_VARS = {
    "GUEST_TIMEOUT", "GUEST_SCRIPT_TIMEOUT", "GUEST_ACCEL", "GUEST_CPU", "GUEST_MEM", "GUEST_SMP",
    "GUEST_NIC", "GUEST_HOSTFWD", "GUEST_BOOT_VERBOSE", "GUEST_DEFAULT_ROUTE", "GUEST_APPEND",
    "GUEST_LOG", "GUEST_VARS", "KH_CACHE", "KH_NO_SETUP",
}  # fmt: skip

_RESULT_RE = re.compile(r"KH-RESULT (\S+) (PASS|FAIL) ?(.*)$")
_FACT_RE = re.compile(r"KH-FACT ([A-Za-z0-9_]+)=(.*)$")
_MARK_RE = re.compile(r"KH-MARK (\S+)\s*$")

_setup_checked: dict[Path, str | None] = {}


def harness_dir() -> Path | None:
    """The kernel-host folder: $BLOCKFABRIC_KERNEL_HOST or <repo>/../shared/interop/kernel-host."""
    env = os.environ.get("BLOCKFABRIC_KERNEL_HOST")
    d = Path(env) if env else REPO.parent / "shared" / "interop" / "kernel-host"
    return d if (d / "run-guest.sh").is_file() else None


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None and not Path(f"/usr/sbin/{n}").exists()]
    if missing:
        pytest.skip(
            f"external tool(s) not installed: {', '.join(missing)} (scripts/install-deps.sh)"
        )


def require_harness() -> Path:
    """Locate the harness and make sure setup.sh succeeded (once per process), else skip."""
    d = harness_dir()
    if d is None:
        where = os.environ.get("BLOCKFABRIC_KERNEL_HOST") or str(
            REPO.parent / "shared/interop/kernel-host"
        )
        pytest.skip(f"kernel-host harness not found at {where} (set BLOCKFABRIC_KERNEL_HOST)")
    require_tools("qemu-system-x86_64")
    if d not in _setup_checked:
        try:
            p = subprocess.run([str(d / "setup.sh")], capture_output=True, text=True, timeout=600)
            _setup_checked[d] = (
                None if p.returncode == 0 else f"rc={p.returncode}: {(p.stdout + p.stderr)[-800:]}"
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            _setup_checked[d] = str(e)
    err = _setup_checked[d]
    if err is not None:
        pytest.skip(f"kernel-host setup.sh failed ({d}): {err}")
    return d


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GuestRun:
    rc: int
    output: str
    seconds: float
    results: dict[str, tuple[bool, str]] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    marks: list[str] = field(default_factory=list)
    mark_errors: list[str] = field(default_factory=list)

    def failed(self) -> dict[str, str]:
        return {k: v for k, (ok, v) in self.results.items() if not ok}

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-n:])

    def summary(self) -> str:
        lines = [f"guest rc={self.rc} after {self.seconds:.1f}s"]
        lines += [f"  {k}: {'PASS' if ok else 'FAIL'} {d}" for k, (ok, d) in self.results.items()]
        lines += [f"  host action error: {e}" for e in self.mark_errors]
        return "\n".join(lines)

    def explain(self) -> str:
        """Failure message: per-check results, then the console tail as evidence."""
        return f"{self.summary()}\n----- console tail -----\n{self.tail()}"

    def require(self, *names: str) -> None:
        missing = [n for n in names if n not in self.results]
        bad = {n: self.results[n][1] for n in names if n in self.results and not self.results[n][0]}
        assert not missing and not bad, f"missing {missing}, failed {bad}\n{self.explain()}"


def _parse_line(run: GuestRun, line: str) -> str | None:
    if m := _RESULT_RE.search(line):
        run.results[m.group(1)] = (m.group(2) == "PASS", m.group(3).strip())
    elif m := _FACT_RE.search(line):
        run.facts[m.group(1)] = m.group(2).rstrip()
    elif m := _MARK_RE.search(line):
        run.marks.append(m.group(1))
        return m.group(1)
    return None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def run_guest(
    script: str | Path,
    env: Mapping[str, str | int] | None = None,
    files: Iterable[str | Path] = (),
    timeout: float = 300,
    on_mark: Mapping[str, Callable[[], None]] | None = None,
    on_line: Callable[[str], None] | None = None,
    log_path: Path | None = None,
) -> GuestRun:
    """Boot the guest with SCRIPT (a path, or a name in tests/interop/guest/), stream the console.

    env: variables for the guest (names run-guest.sh does not know are added to
    GUEST_VARS) and for run-guest.sh (GUEST_*).  interop-lib.sh is always added.
    on_mark: callbacks run (in this thread, while the guest keeps going) when
    the guest prints "KH-MARK <name>"; an exception is recorded, not raised, so
    the guest run and its cleanup always finish.  The whole process group
    (run-guest.sh, timeout, qemu) is killed if it outlives timeout+30 s.
    """
    hd = require_harness()
    script = Path(script)
    if not script.is_file():
        script = GUEST_DIR / script
    env = {k: str(v) for k, v in (env or {}).items()}
    penv = dict(os.environ)
    extra_vars = [k for k in env if k not in _BUILTIN_VARS and k not in _HOST_VARS]
    penv.update(env)
    penv["GUEST_TIMEOUT"] = env.get("GUEST_TIMEOUT", str(int(timeout)))
    penv["GUEST_VARS"] = " ".join([*penv.get("GUEST_VARS", "").split(), *extra_vars])
    argv = [str(hd / "run-guest.sh"), str(script), str(INTEROP_LIB), *map(str, files)]
    run = GuestRun(rc=-1, output="", seconds=0.0)
    out: list[str] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = t0 + float(penv["GUEST_TIMEOUT"]) + 30
    # a silent, hung guest would block readline(): a watchdog kills the group
    watchdog = threading.Timer(deadline - t0 + 5, _killpg, (proc.pid, signal.SIGKILL))
    watchdog.daemon = True
    watchdog.start()
    try:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").replace("\r", "").rstrip("\n")
            out.append(line)
            if on_line:
                on_line(line)
            mark = _parse_line(run, line)
            if mark and on_mark and mark in on_mark:
                try:
                    on_mark[mark]()
                except Exception as e:  # noqa: BLE001 - reported in the test failure
                    run.mark_errors.append(f"{mark}: {type(e).__name__}: {e}")
            if time.monotonic() > deadline:
                out.append("khost: deadline passed, killing the guest")
                break
        try:
            run.rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.rc = 124
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            # run-guest.sh kills qemu on TERM; the group kill covers timeout + qemu too
            for sig in (signal.SIGTERM, signal.SIGKILL):
                _killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if run.rc == -1:
                run.rc = 124
        if proc.stdout:
            proc.stdout.close()
    run.seconds = time.monotonic() - t0
    run.output = "\n".join(out)
    if log_path is not None:
        log_path.write_text(run.output)
    return run
