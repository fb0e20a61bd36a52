"""Test helpers: a real blockfabric daemon driven through its CLI and RPC."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BIN = [sys.executable, "-m", "blockfabric.tools.cli"]
_seq = itertools.count()


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def missing_tool(reason: str) -> None:
    """Skip a test whose external tool is missing; under CI (which installs
    every tool) fail instead, so a skip never reads as a pass."""
    import pytest

    if under_ci():
        pytest.fail(f"CI=true and {reason}: scripts/install-deps.sh all installs it")
    pytest.skip(reason)


def shm_objects(instance: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if f"blockfabric.{instance}." in n)


class Daemon:
    def __init__(
        self, run_dir: Path, name: str, mask: str = "0x1", extra: list[str] | None = None
    ) -> None:
        self.run_dir = run_dir
        self.name = name
        self.mask = mask
        self.rpc_addr = f"ipc://{run_dir}/{name}.rpc.sock"
        self.extra = extra or []
        self.env = {
            **os.environ,
            "BLOCKFABRIC_RUN_DIR": str(run_dir),
            "BLOCKFABRIC_LOG_LEVEL": "INFO",
        }
        self.started = False

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [*BIN, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"blockfabric {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
            )
        return p

    def start(self) -> Daemon:
        args = [
            "start",
            "--name",
            self.name,
            "-m",
            self.mask,
            "-r",
            self.rpc_addr,
            "--daemon",
            *self.extra,
        ]
        if (
            not any(a in self.extra for a in ("--json", "-c", "--config"))
            and "--default" not in self.extra
        ):
            args.append("--empty")
        args = [a for a in args if a != "--default"]
        self.cli(*args)
        self.started = True
        return self

    def rpc(self, method: str, params: Any = None, timeout: float = 30.0) -> Any:
        from blockfabric.control.client import RpcClient

        with RpcClient(self.rpc_addr, timeout=timeout) as c:
            return c.call(method, params)

    def status(self) -> dict[str, Any]:
        import json

        return json.loads(
            self.cli("status", "--name", self.name, "-r", self.rpc_addr, "--json").stdout
        )

    def pids(self) -> list[int]:
        st = self.rpc("blockfabric_get_status")
        return [st["pid"], *[r["pid"] for r in st["reactors"]]]

    def log(self) -> str:
        p = self.run_dir / f"{self.name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        if self.started:
            self.cli("stop", "--name", self.name, check=False)
            self.started = False
