"""A per-minute cap on Live API connections.

Backoff spaces the retries of one failing session; this caps every connection the box opens
(all sessions, goAway switches included), so no fault or bug can turn into a retry storm
against a key the parents pay for. Connections beyond the cap wait; none is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

WINDOW_S = 60.0


class ConnectLimiter:
    """At most `per_minute` connects in any sliding 60 s window."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._clock = clock
        self._times: deque[float] = deque()
        self.waited_s = 0.0  # total time connects were held back, for status and tests

    def wait_time(self) -> float:
        """Seconds until one more connect is allowed (0 when it is allowed now)."""
        now = self._clock()
        while self._times and now - self._times[0] >= WINDOW_S:
            self._times.popleft()
        if len(self._times) < self.per_minute:
            return 0.0
        return self._times[0] + WINDOW_S - now

    async def acquire(self) -> None:
        """Wait until a connect is allowed, then count it."""
        delay = self.wait_time()
        if delay > 0:
            log.warning("Live API: %d connections in the last minute; waiting %.0f s before "
                        "the next", self.per_minute, delay,
                        extra={"TALKIE_EVENT": "connect_limited"})
        while delay > 0:
            self.waited_s += delay
            await asyncio.sleep(delay)
            delay = self.wait_time()
        self._times.append(self._clock())
