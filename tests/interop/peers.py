"""Peer targets the interop tests compare blockfabric with: Debian's tgtd (host).

Tgtd(port, targets) runs `tgtd -f -C PORT --iscsi portal=127.0.0.1:PORT` on a
private management socket (/run/tgtd/socket.PORT, never a system tgtd's),
LUN 1 of every target backed by a RAM file in /dev/shm; stop() kills only the
PID started here and removes the files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TgtTarget:
    iqn: str
    size_mb: int = 64
    chap_user: str | None = None  # initiator must authenticate (incoming account)
    chap_pass: str | None = None
    mutual_user: str | None = None  # target authenticates too (outgoing account)
    mutual_pass: str | None = None
    # tgtd offers HeaderDigest/DataDigest=None only unless told otherwise
    digests: str = "None,CRC32C"


@dataclass
class Tgtd:
    port: int
    targets: list[TgtTarget]
    proc: subprocess.Popen[bytes] | None = None
    images: list[Path] = field(default_factory=list)
    log_path: Path | None = None

    control: int = 0

    def adm(self, *args: str) -> str:
        p = subprocess.run(
            ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if p.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)}: rc={p.returncode} {p.stdout}{p.stderr}")
        return p.stdout

    def start(self) -> Tgtd:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Tgtd:
        self.log_path = Path(f"/tmp/bf-interop-tgtd-{self.port}.log")
        log = self.log_path.open("wb")
        # tgtd's management socket number (/run/tgtd/socket.N) must be < 32768
        self.control = 1000 + self.port % 30000
        while Path(f"/run/tgtd/socket.{self.control}").exists():
            self.control += 1
        self.proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        for _ in range(100):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tgtd exited {self.proc.returncode}: {self.log_path.read_text()}"
                )
            try:
                self.adm("--mode", "target", "--op", "show")
                break
            except RuntimeError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"tgtd on control socket {self.control} never answered")
        accounts: set[str] = set()  # accounts are global to a tgtd
        for tid, t in enumerate(self.targets, start=1):
            img = Path(f"/dev/shm/bf-interop-tgt-{self.port}-{tid}.img")
            with img.open("wb") as f:
                f.truncate(t.size_mb << 20)
            self.images.append(img)
            tid_s = str(tid)
            self.adm("--mode", "target", "--op", "new", "--tid", tid_s, "-T", t.iqn)
            self.adm(
                "--mode", "logicalunit", "--op", "new", "--tid", tid_s, "--lun", "1", "-b", str(img)
            )
            self.adm("--mode", "target", "--op", "bind", "--tid", tid_s, "-I", "ALL")
            for key in ("HeaderDigest", "DataDigest"):
                self.adm(
                    "--mode",
                    "target",
                    "--op",
                    "update",
                    "--tid",
                    tid_s,
                    "--name",
                    key,
                    "--value",
                    t.digests,
                )
            for user, pw, extra in (
                (t.chap_user, t.chap_pass, []),
                (t.mutual_user, t.mutual_pass, ["--outgoing"]),
            ):
                if not user:
                    continue
                if user not in accounts:
                    accounts.add(user)
                    self.adm(
                        "--mode", "account", "--op", "new", "--user", user, "--password", pw or ""
                    )
                self.adm(
                    "--mode", "account", "--op", "bind", "--tid", tid_s, "--user", user, *extra
                )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None
        for img in self.images:
            img.unlink(missing_ok=True)
        self.images.clear()

    def __enter__(self) -> Tgtd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
