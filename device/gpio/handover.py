"""The one place where gpiozero's backend thread hands pin edges to the asyncio loop.

A gpiozero callback (`when_pressed`, `when_changed`, ...) runs on the pin factory's thread. It
only stamps the time and calls `loop.call_soon_threadsafe`; the decoder, its timers and the
event sink all run on the loop, so they need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import time

from device.gpio.debounce import Decoder, Emit

log = logging.getLogger(__name__)


class LoopFeed:
    """Runs a `Decoder` on the event loop, with a timer for its next deadline."""

    def __init__(self, decoder: Decoder, emit: Emit, loop: asyncio.AbstractEventLoop) -> None:
        self.decoder = decoder
        self._emit = emit
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._closed = False

    def edge_from_thread(self, level: bool) -> None:
        """Called by gpiozero on its thread (or by a test driving a mock pin on the loop)."""
        t = time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._on_edge, level, t)
        except RuntimeError:
            pass  # the loop is closed: the box is shutting down, the edge no longer matters

    def _on_edge(self, level: bool, t: float) -> None:
        if not self._closed:
            self._deliver(self.decoder.edge(level, t))

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            # The loop may wake a hair before the deadline; never poll earlier than it.
            self._deliver(self.decoder.poll(max(time.monotonic(), self._due)))

    def _deliver(self, events: list[object]) -> None:
        for event in events:
            self._emit(event)
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.decoder.deadline()
        if deadline is not None:
            # loop.call_at uses the loop's clock; time.monotonic() is ours, so use a delay.
            self._due = deadline
            delay = max(0.0, deadline - time.monotonic())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
