"""The command router of the NVMe-oF core: a command whose data is here goes
to fabrics (Connect, Property Get/Set, Authentication Send/Receive), admin (admin queue of a connected
controller) or io (I/O queues); anything else before Connect is a Command
Sequence Error. Transport-neutral: every transport's queue pair reaches it
through ``QueuePair.execute``."""

from __future__ import annotations

from . import admin, auth, fabrics, io, spec
from .request import Request


def dispatch(req: Request) -> None:
    """Route a command whose data (if any) has arrived."""
    qp = req.qp
    if req.opcode == spec.FABRICS_OPCODE:
        fabrics.execute(req)
    elif qp.auth is not None and not auth.gate(req):
        return  # DH-HMAC-CHAP: Authentication Required until the queue authenticated
    elif qp.qid > 0:
        io.execute(req)
    elif qp.qid == 0 and qp.ctrl is not None:
        admin.execute(req)
    else:
        # no Connect yet: only the fabrics Connect command is allowed
        qp.complete(req, spec.ST_CMD_SEQ_ERROR)
