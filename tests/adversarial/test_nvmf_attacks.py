"""Hostile NVMe/TCP hosts against a real daemon: memory bombs, 1 000 idle
connections, slow-loris, R2Ts never answered, responses never read."""

from __future__ import annotations

from typing import Any

import attackkit as K
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_getlog_and_identify_bombs(target: K.Target) -> None:
    a = K.LogPageBomb(target)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["commands"] > 10, a.report
    assert "attacker_errors" not in a.report, a.report
    # every Identify asked more than MDTS (128 KiB): refused with a status, never served
    ok = [k for k in a.report["statuses"] if k.startswith("identify") and k.endswith(":0/0x00")]
    assert not ok, a.report


def test_1000_idle_connections(make_target: Any) -> None:
    # connect_timeout_ms: a connection without ICReq + Connect is closed after it
    target = make_target(transport_opts={"connect_timeout_ms": 2000})
    a = K.IdleConnections(target, "nvme", 1000, close_wait=3.0)
    o = K.run_scenario(target, a, attack_s=3.5)
    K.check(o)
    assert a.report["opened"] == 1000, a.report
    assert a.report["closed_by_target"] == 1000, (
        f"idle connections outlived the timeout: {a.report}"
    )


def test_slowloris(make_target: Any) -> None:
    # one byte a second keeps no connection alive past the connect timeout
    target = make_target(transport_opts={"connect_timeout_ms": 2000})
    a = K.SlowLoris(target, 40)
    o = K.run_scenario(target, a, attack_s=3.5)
    K.check(o)
    assert a.report["bytes_sent"] >= 40 * 2, a.report
    assert a.report["icreq_phase_closed_by_target"] == 20, a.report


def test_r2t_never_answered(make_target: Any) -> None:
    # h2c_data_timeout_ms: a stalled R2T fails its command and closes the connection
    target = make_target(transport_opts={"h2c_data_timeout_ms": 1500})
    a = K.R2tNoData(target)
    o = K.run_scenario(target, a, attack_s=3.0)
    K.check(o)
    assert a.report["r2ts"] > 0, a.report
    # the R2T buffers came from the pool (and went back: checked by K.check)
    assert o.pool_during_peak and o.pool_during_peak >= 32, o.line()
    assert a.report["closed_by_target"] == len(a.qs), (
        f"stalled R2Ts outlived the timeout: {a.report}"
    )


def test_responses_never_read(target: K.Target) -> None:
    a = K.NeverReadNvme(target)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["commands_sent"] > 0, a.report
