"""Keep the daemon's native memory flat: fewer glibc malloc arenas.

glibc gives threads their own malloc arenas, up to 8 per core. The daemon's threads come and
go: a PortAudio thread per device (re)open, libpulse's own thread per stream, asyncio's
executor, the history writer. A new thread can land in an arena nobody used for a while, and
what threads free there stays resident in it. In the chaos soak (tests/soak_box.py, 20
minutes, seed 7) RSS kept rising with the default while the Python heap stayed flat
(tracemalloc); with two arenas, glibc's in-use and arena totals were flat after the third
minute and RSS rose 0.06 MB a minute in minutes 8-13 against 0.17 with the default.

Two arenas: the main thread's and one more, which the other threads share (and the main
one, when it is busy). They allocate little (a few KB of numpy per audio block), so they
seldom wait on a lock.
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8   # malloc.h
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; call before the first thread starts (threads already
    running keep theirs). False where the C library is not glibc (nothing to tune there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # (called before logging is set up: nothing to log)
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
