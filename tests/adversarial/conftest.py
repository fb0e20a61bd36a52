"""Adversarial end-to-end tests: hostile hosts against a real daemon (issue 8 item 6).

Every test starts its own daemon (one reactor, a 64 MiB malloc bdev over
NVMe/TCP and iSCSI, a 64 MiB buffer pool), runs a well-behaved host alone and
then next to one attack, and prints the RSS bound and peak, the host's IOPS
alone and during the attack, and the pool's buffers in use before and after.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attackkit  # noqa: E402


@pytest.fixture
def make_target(daemon_factory: Any) -> Iterator[Any]:
    """make_target(transport_opts=None, iscsi_opts=None) -> a started attackkit.Target."""
    made: list[attackkit.Target] = []

    def make(**kw: Any) -> attackkit.Target:
        t = attackkit.start_target(daemon_factory(mask="0x1"), **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        log = t.daemon.log()
        t.daemon.stop()
        assert "Traceback" not in log, f"traceback in the daemon log:\n{log[-4000:]}"


@pytest.fixture
def target(make_target: Any) -> attackkit.Target:
    return make_target()  # type: ignore[no-any-return]
