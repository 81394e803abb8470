"""A timed script of pin events, played on mock pins: try the box's gestures without a Pi.

One event per line: a time in seconds from the start, an action, and what it acts on. `#`
starts a comment. Times must not go backwards.

    # seconds  action   target        [argument]
    0.5        press    button                    # pull the pin low (buttons wire to ground)
    0.6        release  button
    1.0        tap      button        0.1         # press, release after 0.1 s (default 0.1)
    3.0        hold     button        2.5         # press, release after 2.5 s (a long press)
    6.0        flip     shake                     # the tilt switch changes side once
    7.0        shake    shake         6  0.1      # 6 flips, 0.1 s apart (defaults 6 and 0.1)
    9.0        turn     encoder       +3          # 3 detents clockwise (- for counter-clockwise)
    9.5        tap      volume_up

Targets: button, shake, volume_up, volume_down, encoder; each is the BCM pin the config names.
The player drives the pins at pin level (`drive_low()`/`drive_high()`), as a finger would.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.config import GpioConfig
from device.errors import TalkieError

TARGETS = ("button", "shake", "volume_up", "volume_down", "encoder")
ACTIONS = ("press", "release", "tap", "hold", "flip", "shake", "turn")
#: Time between the quadrature edges of one encoder detent.
ENCODER_EDGE_S = 0.005


class ScriptError(TalkieError, ValueError):
    """An events script that cannot be read; the message names the line and the fix."""


@dataclass(frozen=True, slots=True)
class PinStep:
    """At `t` seconds from the start, drive pin `pin` ('button', 'encoder_a', ...) to `high`.

    `high=None` flips the pin to the other level."""
    t: float
    pin: str
    high: bool | None


def parse(text: str, source: str = "<events>") -> list[PinStep]:
    """Read a script into pin steps, sorted by time."""
    steps: list[PinStep] = []
    last = 0.0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{n}"
        words = line.split()
        if len(words) < 3:
            raise ScriptError(f"{where}: {line!r} needs a time, an action and a target, "
                              f"e.g. '0.5 press button'")
        t = _number(words[0], where, "time")
        if t < last:
            raise ScriptError(f"{where}: time {t} is before the line above ({last}); "
                              f"keep the lines in time order")
        last = t
        action, target, args = words[1].lower(), words[2].lower(), words[3:]
        if action not in ACTIONS:
            raise ScriptError(f"{where}: unknown action {action!r}; use one of "
                              + ", ".join(ACTIONS))
        if target not in TARGETS:
            raise ScriptError(f"{where}: unknown target {target!r}; use one of "
                              + ", ".join(TARGETS))
        steps.extend(_expand(t, action, target, args, where))
    return sorted(steps, key=lambda s: s.t)  # stable: same-time steps keep their order


def load(path: str | os.PathLike[str]) -> list[PinStep]:
    """Read a script file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(f"{path}: cannot read the events script ({e.__class__.__name__}); "
                          f"check the path") from None
    return parse(text, str(path))


def _expand(t: float, action: str, target: str, args: list[str], where: str) -> list[PinStep]:
    if action == "turn":
        if target != "encoder" or len(args) != 1:
            raise ScriptError(f"{where}: write a turn as 'T turn encoder +N' or '-N'")
        detents = int(_number(args[0], where, "detent count"))
        # Clockwise, A leads B: A low, B low, A high, B high (pulled-up encoder, gpiozero's order).
        first, second = ("encoder_a", "encoder_b") if detents > 0 else ("encoder_b", "encoder_a")
        out, dt = [], t
        for _ in range(abs(detents)):
            for pin, high in ((first, False), (second, False), (first, True), (second, True)):
                out.append(PinStep(dt, pin, high))
                dt += ENCODER_EDGE_S
        return out
    if target == "encoder":
        raise ScriptError(f"{where}: the encoder only turns; write 'T turn encoder +N'")
    if action == "press":
        return [PinStep(t, target, False)]
    if action == "release":
        return [PinStep(t, target, True)]
    if action in ("tap", "hold"):
        held = _number(args[0], where, "duration") if args else 0.1
        return [PinStep(t, target, False), PinStep(t + held, target, True)]
    if action == "flip":
        return [PinStep(t, target, None)]
    # shake: a run of flips
    count = int(_number(args[0], where, "flip count")) if args else 6
    gap = _number(args[1], where, "gap") if len(args) > 1 else 0.1
    return [PinStep(t + i * gap, target, None) for i in range(count)]


def _number(word: str, where: str, what: str) -> float:
    try:
        value = float(word)
    except ValueError:
        raise ScriptError(f"{where}: {what} {word!r} is not a number; write e.g. 0.5") from None
    if value < 0 and what != "detent count":
        raise ScriptError(f"{where}: {what} {word!r} is negative; times count from 0")
    return value


def script_pins(cfg: GpioConfig, factory: Any) -> dict[str, Any]:
    """The mock pins a script may drive, by name, from the factory the devices use."""
    from gpiozero.pins.mock import MockFactory

    if not isinstance(factory, MockFactory):
        raise ScriptError("an events script drives mock pins, but the box is on real pins; "
                          "set [gpio] pin_factory = \"mock\" (talkie simulate does) to use one")
    numbers = {"button": cfg.button_pin, "shake": cfg.shake_pin,
               "volume_up": cfg.volume_up_pin, "volume_down": cfg.volume_down_pin,
               "encoder_a": cfg.encoder_a_pin, "encoder_b": cfg.encoder_b_pin}
    return {name: factory.pin(f"GPIO{n}") for name, n in numbers.items()}


async def play(steps: list[PinStep], pins: dict[str, Any], *,
               start: float | None = None) -> None:
    """Drive `pins` through `steps` at their times (from `start`, default now; monotonic s)."""
    t0 = time.monotonic() if start is None else start
    for step in steps:
        delay = t0 + step.t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pin = pins[step.pin]
        high = (not pin.state) if step.high is None else step.high
        if high:
            pin.drive_high()
        else:
            pin.drive_low()


async def play_on(gpio: Any, steps: list[PinStep]) -> None:
    """Play `steps` on the pins of a running `device.gpio.factory.Gpio` (mock pins)."""
    await play(steps, script_pins(gpio.cfg.gpio, gpio.factory))
