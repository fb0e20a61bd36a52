"""Supervision and logging options: defaults, CLI flags, validation."""

from __future__ import annotations

import pytest

from blockfabric.actors.supervisor import Options, StartupError, Supervisor
from blockfabric.tools.cli import build_parser


def test_cli_flags_reach_the_options() -> None:
    a = build_parser().parse_args(
        ["start", "--max-restarts", "5", "--restart-window", "30", "--heartbeat-interval", "0.5",
         "--heartbeat-timeout", "4", "--log-file", "/tmp/x.log", "--log-max-mb", "8",
         "--log-count", "2"]
    )  # fmt: skip
    assert (a.max_restarts, a.restart_window, a.heartbeat_interval, a.heartbeat_timeout) == (
        5, 30.0, 0.5, 4.0,
    )  # fmt: skip
    assert (a.log_file, a.log_max_mb, a.log_count) == ("/tmp/x.log", 8.0, 2)
    d = build_parser().parse_args(["start"])
    assert (d.max_restarts, d.restart_window, d.heartbeat_interval, d.heartbeat_timeout) == (
        3, 60.0, 1.0, 10.0,
    )  # fmt: skip
    assert (d.log_file, d.log_max_mb, d.log_count, d.mem_size) == (None, 64.0, 4, 0)


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("max_restarts", -1, "--max-restarts"),
        ("heartbeat_s", 0.0, "--heartbeat-interval"),
        ("heartbeat_timeout_s", 0.5, "longer than"),
        ("log_count", -2, "--log-count"),
        ("log_max_mb", 0.0, "--log-max-mb"),
    ],
)
def test_bad_supervision_options_are_refused(field: str, value: float, why: str) -> None:
    opts = Options(name="optcheck", **{field: value})
    with pytest.raises(StartupError, match=why):
        Supervisor(opts)
