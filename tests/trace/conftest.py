"""Trace tests: the durability helpers (dlib: exports, free ports) are reused."""

import sys
from pathlib import Path

_dur = str(Path(__file__).resolve().parents[1] / "durability")
if _dur not in sys.path:
    sys.path.insert(0, _dur)
