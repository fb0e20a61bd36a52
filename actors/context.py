"""The reactor's side of `ReactorContext`, the interface protocol code runs on.

The Protocol is declared in transports/context.py, below the actors, so that
transports are written against it without importing a reactor (layers point
one way: shm <- bdevs <- transports <- actors <- tools). `Reactor` in
actors/reactor.py implements it; the names are re-exported here.
"""

from __future__ import annotations

from ..transports.context import ReactorContext as ReactorContext
from ..transports.context import ReplyCallback as ReplyCallback
