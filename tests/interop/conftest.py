"""Interop tests: make the helper modules in this folder importable (khost, peers)."""

import sys
from pathlib import Path

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)
