"""Persist Through Power Loss: a namespace's reservation state in its own
file (``nvmf_subsystem_add_ns ... --ptpl-file PATH``), written durably
(temporary file, fsync, rename, fsync of the folder: transports/resv_common)
after every change while PTPL is active, and once more when PTPL is cleared
(so a restart does not bring back what the host asked to forget). Read back
when the namespace is added (at start-up the saved configuration adds it).

The JSON follows SPDK's PTPL file where the two meet (``ptpl``, ``rtype``,
``registrants`` with ``rkey``), with host identifiers in hex (``host_id``,
8 or 16 bytes) and the generation counter added.
"""

from __future__ import annotations

import json
import logging
import os

from ..resv_common import durable_replace
from .reservation import NsResv

log = logging.getLogger(__name__)


def load(path: str) -> NsResv:
    """The state saved in ``path`` (empty when there is none). A damaged
    file is logged and ignored: it must not keep the namespace from being
    added."""
    st = NsResv(ptpl_capable=True)
    if not os.path.exists(path):
        return st
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        got = NsResv.from_json(d)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        log.warning("nvmf: PTPL file %s is unreadable (%s): starting without reservations", path, e)
        return st
    got.ptpl_capable = True
    return got


def save(path: str, st: NsResv) -> None:
    durable_replace(path, json.dumps(st.to_json(), indent=1).encode())
