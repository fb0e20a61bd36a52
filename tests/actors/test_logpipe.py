"""Reactor log lines reach the supervisor's capped, rotated log file."""

from __future__ import annotations

import logging
import os

from blockfabric.actors.logpipe import MAX_LINE, PipeHandler, PipeReader, make_handler, make_pipe


def test_pipe_lines_forwarded_through_rotating_handler(tmp_path):
    path = tmp_path / "x.log"
    h = make_handler(str(path), max_mb=0.01, count=2)  # 10 KiB files, 2 kept
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [h]
    try:
        r, w = make_pipe()
        ph = PipeHandler(w)
        ph.setFormatter(logging.Formatter("reactor7 %(message)s"))
        reader = PipeReader(r)
        for i in range(2000):
            ph.emit(logging.LogRecord("x", logging.INFO, "", 0, "line %d " + "y" * 50, (i,), None))
            if i % 100 == 0:
                reader.read()
        reader.read()
        os.close(w)
        assert reader.read() is False  # EOF
        os.close(r)
    finally:
        root.handlers[:] = saved
        h.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["x.log", "x.log.1", "x.log.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 10 * 1024 + 200
    text = path.read_text()
    assert "reactor7 line 1999 " in text  # unchanged, no second prefix
    assert reader.lines == 2000


def test_full_pipe_drops_and_counts_instead_of_blocking(tmp_path):
    r, w = make_pipe()
    os.set_blocking(w, False)
    ph = PipeHandler(w)
    rec = logging.LogRecord("x", logging.INFO, "", 0, "z" * 4000, None, None)
    for _ in range(2000):  # far beyond any pipe size: must not block
        ph.emit(rec)
    assert ph.dropped > 0
    while True:
        try:
            if not os.read(r, 1 << 20):
                break
        except BlockingIOError:
            break
    ph.emit(logging.LogRecord("x", logging.INFO, "", 0, "after", None, None))
    data = os.read(r, 1 << 20)
    assert b"dropped" in data and data.endswith(b"after\n")
    os.close(r)
    os.close(w)


def test_overlong_line_is_cut():
    r, w = make_pipe()
    got: list[str] = []
    import blockfabric.actors.logpipe as lp

    orig = lp.forward_line
    lp.forward_line = got.append  # type: ignore[assignment]
    try:
        reader = PipeReader(r)
        os.write(w, b"a" * (MAX_LINE + 10))
        reader.read()
        os.write(w, b"b\n")
        reader.read()
    finally:
        lp.forward_line = orig
        os.close(r)
        os.close(w)
    assert len(got) == 2 and len(got[0]) <= MAX_LINE + 10 and got[1] == "b"
