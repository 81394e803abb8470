"""The shake gesture from a tilt/shake switch: N debounced flips within a time window.

A tilt switch chatters for a few ms whenever it moves, and a toy set down or picked up tilts it
once or twice; neither is a shake. Chatter is one flip (debounce), and a shake needs
`shake_edges` flips within `shake_window_ms`. After a shake, a cooldown keeps continued shaking
from waking the box again and again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from device.config import GpioConfig
from device.events import ButtonEvent
from device.gpio.debounce import Debouncer, Emit
from device.gpio.handover import LoopFeed


@dataclass(frozen=True, slots=True)
class ShakeTiming:
    edges: int = 4
    window_s: float = 1.2
    bounce_s: float = 0.025
    cooldown_s: float = 3.0

    @classmethod
    def from_config(cls, cfg: GpioConfig) -> ShakeTiming:
        return cls(cfg.shake_edges, cfg.shake_window_ms / 1000, cfg.shake_bounce_ms / 1000,
                   cfg.shake_cooldown_s)


class ShakeDetector:
    """Pure shake decoder: feed `edge(level, t)`, call `poll(t)` at `deadline()`."""

    def __init__(self, timing: ShakeTiming, level: bool = False) -> None:
        self.timing = timing
        self._debounce = Debouncer(timing.bounce_s, level)
        self._flips: deque[float] = deque()
        self._quiet_until = float("-inf")

    def edge(self, level: bool, t: float) -> list[ButtonEvent]:
        return self._flip(t) if self._debounce.edge(level, t) is not None else []

    def poll(self, t: float) -> list[ButtonEvent]:
        return self._flip(t) if self._debounce.settle(t) is not None else []

    def deadline(self) -> float | None:
        return self._debounce.deadline()

    def _flip(self, t: float) -> list[ButtonEvent]:
        if t < self._quiet_until:
            return []
        self._flips.append(t)
        while self._flips and self._flips[0] < t - self.timing.window_s:
            self._flips.popleft()
        if len(self._flips) < self.timing.edges:
            return []
        self._flips.clear()
        self._quiet_until = t + self.timing.cooldown_s
        return [ButtonEvent("shake", t)]


class ShakeSwitch:
    """A tilt/shake switch on `gpiozero.DigitalInputDevice` (pulled up); shakes into `emit`."""

    def __init__(self, cfg: GpioConfig, factory: Any, emit: Emit,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        from gpiozero import DigitalInputDevice

        self.device = DigitalInputDevice(cfg.shake_pin, pull_up=True, bounce_time=None,
                                         pin_factory=factory)
        self.detector = ShakeDetector(ShakeTiming.from_config(cfg), bool(self.device.value))
        self._feed = LoopFeed(self.detector, emit, loop or asyncio.get_running_loop())
        self.device.when_activated = lambda: self._feed.edge_from_thread(True)
        self.device.when_deactivated = lambda: self._feed.edge_from_thread(False)

    @property
    def pin(self) -> Any:
        return self.device.pin

    def close(self) -> None:
        self._feed.close()
        self.device.close()
