"""RPC floods: many concurrent clients on the ZeroMQ and the SPDK Unix sockets.
The supervisor's RSS stays bounded, data-path I/O goes on, RPC still answers."""

from __future__ import annotations

import attackkit as K
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _latency(t: K.Target) -> dict[str, float]:
    return {"rpc_latency_during_s": round(K.rpc_latency(t, 3), 3)}


def test_zmq_rpc_flood(target: K.Target) -> None:
    a = K.ZmqRpcFlood(target, 200)
    o = K.run_scenario(target, a, watch_supervisor=True, during=lambda: _latency(target))
    K.check(o)
    assert a.report["requests_sent"] > 200, a.report
    assert o.extra["rpc_latency_during_s"] < 10, o.extra
    assert K.rpc_latency(target) < 1.0


def test_spdk_unix_rpc_flood(target: K.Target) -> None:
    a = K.SpdkRpcFlood(target, 200)
    o = K.run_scenario(target, a, watch_supervisor=True, during=lambda: _latency(target))
    K.check(o)
    assert a.report["bytes_sent"] > 0, a.report
    assert o.extra["rpc_latency_during_s"] < 10, o.extra
    assert K.rpc_latency(target) < 1.0
