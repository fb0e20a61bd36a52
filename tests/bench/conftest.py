"""The bench package lives at the repository root, not under tests/ (whose
folder of the same name would otherwise shadow it on pythonpath)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.modules.pop("bench", None)  # a namespace package picked up from tests/bench
