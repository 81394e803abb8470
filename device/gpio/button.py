"""The big button: debounced edges turned into gestures, delivered into asyncio.

Gestures (`device.events.ButtonEvent.kind`):

- ``press``: at once on the press edge (wake, or barge in while the toy speaks);
- ``release``: on the release edge (the end of a push-to-talk turn in ``hold`` mode);
- ``long_press``: still held after ``long_press_s`` (end the conversation; tap mode only);
- ``very_long_press``: still held after ``very_long_press_s`` (say the box's status; tap mode
  only; it comes after the ``long_press`` of the same hold).

In ``hold`` mode a child holds the button while talking, so long holds are turns, not gestures.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from device.config import GpioConfig
from device.events import ButtonEvent
from device.gpio.debounce import Debouncer, Emit, earliest
from device.gpio.handover import LoopFeed


@dataclass(frozen=True, slots=True)
class ButtonTiming:
    """How edges become gestures; seconds."""
    bounce_s: float = 0.03
    long_s: float = 2.0
    very_long_s: float = 8.0
    mode: Literal["tap", "hold"] = "tap"

    @classmethod
    def from_config(cls, cfg: GpioConfig) -> ButtonTiming:
        return cls(cfg.button_bounce_ms / 1000, cfg.long_press_s, cfg.very_long_press_s,
                   "hold" if cfg.button_mode == "hold" else "tap")


class ButtonGestures:
    """Pure gesture decoder: feed `edge(pressed, t)`, call `poll(t)` at `deadline()`."""

    def __init__(self, timing: ButtonTiming) -> None:
        self.timing = timing
        self._debounce = Debouncer(timing.bounce_s, False)
        self._pressed_at: float | None = None
        self._held_events = 0  # how many of long/very long this hold has sent

    @property
    def pressed(self) -> bool:
        return self._debounce.level

    def edge(self, pressed: bool, t: float) -> list[ButtonEvent]:
        return self._taken(self._debounce.edge(pressed, t), t)

    def poll(self, t: float) -> list[ButtonEvent]:
        out = self._taken(self._debounce.settle(t), t)
        hold = self._hold_deadline()
        while hold is not None and t >= hold:
            kinds: tuple[Any, ...] = ("long_press", "very_long_press")
            out.append(ButtonEvent(kinds[self._held_events], t))
            self._held_events += 1
            hold = self._hold_deadline()
        return out

    def deadline(self) -> float | None:
        return earliest(self._debounce.deadline(), self._hold_deadline())

    def _taken(self, level: bool | None, t: float) -> list[ButtonEvent]:
        if level is None:
            return []
        if level:
            self._pressed_at, self._held_events = t, 0
            return [ButtonEvent("press", t)]
        self._pressed_at = None
        return [ButtonEvent("release", t)]

    def _hold_deadline(self) -> float | None:
        if self._pressed_at is None or self.timing.mode == "hold" or self._held_events >= 2:
            return None
        after = (self.timing.long_s, self.timing.very_long_s)[self._held_events]
        return self._pressed_at + after


class BigButton:
    """The big button on `gpiozero.Button` (pulled up, wired to ground), gestures into `emit`.

    Build it inside the running loop; `emit` is called on the loop (e.g. a queue's put).
    """

    def __init__(self, cfg: GpioConfig, factory: Any, emit: Emit,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        from gpiozero import Button

        self.gestures = ButtonGestures(ButtonTiming.from_config(cfg))
        self._feed = LoopFeed(self.gestures, emit, loop or asyncio.get_running_loop())
        self.device = Button(cfg.button_pin, pull_up=True, bounce_time=None, pin_factory=factory)
        self.device.when_pressed = lambda: self._feed.edge_from_thread(True)
        self.device.when_released = lambda: self._feed.edge_from_thread(False)

    @property
    def pin(self) -> Any:
        """The gpiozero pin (a MockPin off the Pi: `drive_low()` presses)."""
        return self.device.pin

    def close(self) -> None:
        self._feed.close()
        self.device.close()
