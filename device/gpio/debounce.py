"""Contact bounce, filtered in pure code so that it behaves the same on every pin factory.

gpiozero's `bounce_time` is not simulated by MockFactory and differs between backends, so the
filter lives here, fed with (level, time) pairs: an edge is taken at once (no added latency on
a press), edges in the following `bounce_s` are ignored, and when that window ends the latest
level is taken if it differs. So a 1 ms tap still reads as a press and a release.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol


class Decoder(Protocol):
    """Turns debounced edges into events; `poll` runs when `deadline()` (monotonic s) passes."""

    def edge(self, level: bool, t: float) -> list[Any]: ...

    def poll(self, t: float) -> list[Any]: ...

    def deadline(self) -> float | None: ...


class Debouncer:
    """Leading-edge debounce with a settle check at the end of each quiet window."""

    def __init__(self, bounce_s: float, level: bool = False) -> None:
        self.bounce_s = bounce_s
        self.level = level          # the accepted level
        self._raw = level           # the last level the pin reported
        self._quiet_until = -math.inf

    def edge(self, level: bool, t: float) -> bool | None:
        """A raw edge; returns the new accepted level, or None if this was bounce."""
        self._raw = level
        if t < self._quiet_until or level == self.level:
            return None
        return self._accept(level, t)

    def settle(self, t: float) -> bool | None:
        """At the end of a quiet window: take the pin's latest level if it differs."""
        if t >= self._quiet_until and self._raw != self.level:
            return self._accept(self._raw, t)
        return None

    def deadline(self) -> float | None:
        return self._quiet_until if self._raw != self.level else None

    def _accept(self, level: bool, t: float) -> bool:
        self.level = level
        self._quiet_until = t + self.bounce_s
        return level


def earliest(*times: float | None) -> float | None:
    """The earliest of some optional deadlines."""
    real = [t for t in times if t is not None]
    return min(real) if real else None


Emit = Callable[[Any], None]
