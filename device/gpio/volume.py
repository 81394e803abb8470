"""Volume from up/down buttons or a rotary encoder, in steps, never above the parents' cap."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from device.config import Config
from device.gpio.debounce import Debouncer, Emit, earliest
from device.gpio.handover import LoopFeed

#: A held volume button repeats: first after this long, then every REPEAT_S.
REPEAT_AFTER_S = 0.5
REPEAT_S = 0.25


@dataclass(frozen=True, slots=True)
class VolumeChange:
    """The volume is now `level` (0.0 to the cap); `at_limit` if a step hit 0 or the cap."""
    level: float
    t: float
    at_limit: bool = False


class VolumeControl:
    """Pure volume arithmetic: steps, clamped to [0, cap]."""

    def __init__(self, level: float, step: float, cap: float) -> None:
        self.cap = max(0.0, min(1.0, cap))
        self.step_size = step
        self.level = max(0.0, min(self.cap, level))

    def step(self, steps: int, t: float) -> VolumeChange:
        wanted = self.level + steps * self.step_size
        new = round(max(0.0, min(self.cap, wanted)), 4)
        at_limit = new <= 0.0 or new >= self.cap
        self.level = new
        return VolumeChange(new, t, at_limit)

    @classmethod
    def from_config(cls, cfg: Config) -> VolumeControl:
        return cls(cfg.audio.volume, cfg.gpio.volume_step, cfg.audio.max_volume)


class _ClickDecoder:
    """One volume button: a step on press, repeating while held."""

    def __init__(self, direction: int, control: VolumeControl, bounce_s: float) -> None:
        self._dir = direction
        self._control = control
        self._debounce = Debouncer(bounce_s, False)
        self._next_repeat: float | None = None

    def edge(self, pressed: bool, t: float) -> list[VolumeChange]:
        return self._taken(self._debounce.edge(pressed, t), t)

    def poll(self, t: float) -> list[VolumeChange]:
        out = self._taken(self._debounce.settle(t), t)
        if self._next_repeat is not None and t >= self._next_repeat:
            self._next_repeat = t + REPEAT_S
            out.append(self._control.step(self._dir, t))
        return out

    def deadline(self) -> float | None:
        return earliest(self._debounce.deadline(), self._next_repeat)

    def _taken(self, level: bool | None, t: float) -> list[VolumeChange]:
        if level is None:
            return []
        if level:
            self._next_repeat = t + REPEAT_AFTER_S
            return [self._control.step(self._dir, t)]
        self._next_repeat = None
        return []


class VolumeKnob:
    """Volume buttons or a rotary encoder per `gpio.volume_control`; `VolumeChange` into `emit`."""

    def __init__(self, cfg: Config, factory: Any, emit: Emit,
                 loop: asyncio.AbstractEventLoop | None = None,
                 control: VolumeControl | None = None) -> None:
        self.control = control or VolumeControl.from_config(cfg)
        self._loop = loop or asyncio.get_running_loop()
        self._emit = emit
        self._feeds: list[LoopFeed] = []
        self.devices: list[Any] = []
        g = cfg.gpio
        if g.volume_control == "buttons":
            from gpiozero import Button

            for pin, direction in ((g.volume_up_pin, +1), (g.volume_down_pin, -1)):
                feed = LoopFeed(_ClickDecoder(direction, self.control, g.button_bounce_ms / 1000),
                                emit, self._loop)
                button = Button(pin, pull_up=True, bounce_time=None, pin_factory=factory)
                button.when_pressed = lambda f=feed: f.edge_from_thread(True)
                button.when_released = lambda f=feed: f.edge_from_thread(False)
                self._feeds.append(feed)
                self.devices.append(button)
        elif g.volume_control == "encoder":
            from gpiozero import RotaryEncoder

            # max_steps=0: the encoder counts freely; the cap is ours, not the encoder's.
            encoder = RotaryEncoder(g.encoder_a_pin, g.encoder_b_pin, max_steps=0,
                                    pin_factory=factory)
            encoder.when_rotated_clockwise = lambda: self._step_from_thread(+1)
            encoder.when_rotated_counter_clockwise = lambda: self._step_from_thread(-1)
            self.devices.append(encoder)

    def _step_from_thread(self, direction: int) -> None:
        t = time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._step, direction, t)
        except RuntimeError:
            pass  # loop closed: shutting down

    def _step(self, direction: int, t: float) -> None:
        self._emit(self.control.step(direction, t))

    def close(self) -> None:
        for feed in self._feeds:
            feed.close()
        for device in self.devices:
            device.close()
