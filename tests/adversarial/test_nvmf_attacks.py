"""Hostile NVMe/TCP hosts against a real daemon: memory bombs, 1 000 idle
connections, slow-loris, R2Ts never answered, responses never read."""

from __future__ import annotations

import attackkit as K
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_getlog_and_identify_bombs(target: K.Target) -> None:
    a = K.LogPageBomb(target)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["commands"] > 10, a.report
    assert "attacker_errors" not in a.report, a.report


def test_1000_idle_connections(target: K.Target) -> None:
    a = K.IdleConnections(target, "nvme", 1000)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["opened"] == 1000, a.report


def test_slowloris(target: K.Target) -> None:
    a = K.SlowLoris(target, 40)
    o = K.run_scenario(target, a, attack_s=3.5)
    K.check(o)
    assert a.report["bytes_sent"] >= 40 * 3, a.report


def test_r2t_never_answered(target: K.Target) -> None:
    a = K.R2tNoData(target)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["r2ts"] > 0, a.report


def test_responses_never_read(target: K.Target) -> None:
    a = K.NeverReadNvme(target)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["commands_sent"] > 0, a.report
