"""Hostile iSCSI initiators against a real daemon: immediate-command floods,
oversized login keys, responses never read, 1 000 idle connections."""

from __future__ import annotations

from typing import Any

import attackkit as K
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_immediate_command_flood(target: K.Target) -> None:
    a = K.ImmediateFlood(target)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["commands_sent"] > 0, a.report


def test_oversized_login_keys(target: K.Target) -> None:
    a = K.OversizedLogin(target)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["logins"] >= 3, a.report
    # every kind of oversized login ends in a refusal, never in a full feature session
    for kind in ("bigvalue", "manykeys", "endless"):
        verdicts = {
            k.split(":", 1)[1].split(" 0x")[0] for k in a.report["outcomes"] if k.startswith(kind)
        }
        assert verdicts and verdicts <= {"closed", "login failed"}, a.report
    # ... and the target refuses the endless text before 1 MiB of it arrived
    assert a.report["max_kib_sent"]["endless"] < 1024, a.report


def test_responses_never_read(target: K.Target) -> None:
    a = K.NeverReadIscsi(target)
    o = K.run_scenario(target, a)
    K.check(o)
    assert a.report["commands_sent"] > 0, a.report


def test_1000_idle_connections(make_target: Any) -> None:
    # login_timeout (seconds, checked by a 1 s timer): no login, no connection
    target = make_target(iscsi_opts={"login_timeout": 2})
    a = K.IdleConnections(target, "iscsi", 1000, close_wait=3.0)
    o = K.run_scenario(target, a, attack_s=3.5)
    K.check(o)
    assert a.report["opened"] == 1000, a.report
    assert a.report["closed_by_target"] == 1000, (
        f"idle connections outlived the timeout: {a.report}"
    )


def test_r2t_never_answered(make_target: Any) -> None:
    # data_out_timeout (seconds): a stalled R2T fails its command and drops the connection
    target = make_target(iscsi_opts={"data_out_timeout": 2})
    a = K.R2tNoDataIscsi(target)
    o = K.run_scenario(target, a, attack_s=3.5)
    K.check(o)
    assert a.report["r2ts"] > 0, a.report
    assert a.report["closed_by_target"] == len(a.inis), (
        f"stalled R2Ts outlived the timeout: {a.report}"
    )
