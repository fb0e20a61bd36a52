"""Is a process alive? A zombie (exited, not yet reaped) is dead.

Containers whose init does not reap leave zombies of a killed instance for a
long time; everything that judges liveness (shm cleanup, the pool's reactor
slots) uses this one answer.
"""

from __future__ import annotations

import psutil


def pid_alive(pid: int, create_time: float | None = None) -> bool:
    """True if ``pid`` runs and is not a zombie (and, when ``create_time`` is
    given, is the same process: a recycled pid does not count)."""
    if pid <= 0:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None and abs(p.create_time() - create_time) >= 0.05:
            return False
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        # exists but not ours to inspect: alive unless the identity check fails
        return create_time is None
