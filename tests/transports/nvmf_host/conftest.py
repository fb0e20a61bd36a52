from __future__ import annotations

import os
import sys

# the fake target sits next to the tests (pytest runs with --import-mode=importlib)
sys.path.insert(0, os.path.dirname(__file__))
