"""Helpers of the observability tests: a real daemon with one malloc namespace over NVMe/TCP (ephemeral port),
``--metrics`` and ``--http`` on ephemeral loopback ports, and a perf run
against it: the load the observability tests look at."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bftest import BIN, Daemon

NQN = "nqn.2016-06.io.blockfabric:obs1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def target_config(port: int, blocks: int = 32768) -> dict[str, Any]:
    return {
        "subsystems": [
            {
                "subsystem": "bdev",
                "config": [
                    {
                        "method": "bdev_malloc_create",
                        "params": {"name": "Malloc0", "num_blocks": blocks, "block_size": 512},
                    }
                ],
            },
            {
                "subsystem": "nvmf",
                "config": [
                    {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
                    {
                        "method": "nvmf_create_subsystem",
                        "params": {"nqn": NQN, "allow_any_host": True},
                    },
                    {
                        "method": "nvmf_subsystem_add_ns",
                        "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}},
                    },
                    {
                        "method": "nvmf_subsystem_add_listener",
                        "params": {
                            "nqn": NQN,
                            "listen_address": {
                                "trtype": "tcp",
                                "adrfam": "ipv4",
                                "traddr": "127.0.0.1",
                                "trsvcid": str(port),
                            },
                        },
                    },
                ],
            },
        ]
    }


@dataclass
class Target:
    daemon: Daemon
    port: int
    metrics_url: str
    http_url: str

    def trid(self) -> str:
        return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{self.port} subnqn:{NQN}"

    def perf(
        self, seconds: float, qd: int = 8, pattern: str = "randread", json_out: Path | None = None
    ) -> subprocess.Popen[str]:
        args = [*BIN, "perf", "-r", self.trid(), "-t", str(seconds), "-q", str(qd),
                "-w", pattern, "-P", "1", "--quiet"]  # fmt: skip
        if pattern in ("randrw", "rw"):
            args += ["-M", "70"]
        if json_out is not None:
            args += ["--json", str(json_out)]
        return subprocess.Popen(
            args, env=self.daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_io(self, timeout: float = 30.0) -> None:
        """Until the bdev has seen I/O (the perf run connected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.daemon.rpc("bdev_get_iostat", {"name": "Malloc0"})["bdevs"][0]
            if b["num_read_ops"] + b["num_write_ops"] > 0:
                return
            time.sleep(0.2)
        raise AssertionError("no I/O reached Malloc0")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus text page parsed by prometheus_client: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(sm: dict[Any, float], name: str, **labels: str) -> float:
    return sm[(name, tuple(sorted(labels.items())))]


def get(url: str, timeout: float = 30.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def finish(p: subprocess.Popen[str], timeout: float = 120.0) -> None:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"perf failed ({p.returncode}):\n{out}\n{err}"


@pytest.fixture
def target(daemon_factory: Any, run_dir: Path) -> Iterator[Target]:
    port, mport, hport = free_port(), free_port(), free_port()
    cfg = run_dir / "obs.json"
    cfg.write_text(json.dumps(target_config(port)))
    d = daemon_factory(
        "0x3",
        ["--json", str(cfg), "--metrics", f"127.0.0.1:{mport}", "--http", f"127.0.0.1:{hport}"],
    ).start()
    yield Target(d, port, f"http://127.0.0.1:{mport}/metrics", f"http://127.0.0.1:{hport}/")
    d.stop()
