"""The shake gesture at pin level: a real shake wakes; bouncing, one tilt or slow tilts do not."""

from __future__ import annotations

import asyncio

from device.gpio.factory import Gpio
from device.gpio.shake import ShakeDetector, ShakeTiming
from tests import gpio_helpers
from tests.gpio_helpers import chatter, config, drain, flip, kinds

factory = gpio_helpers.factory

SHAKE = {"shake_enabled": True}   # defaults: 4 flips within 1.2 s, 25 ms bounce, 3 s cooldown


async def shake(pin, flips: int, gap: float) -> None:
    for _ in range(flips):
        flip(pin)
        chatter(pin, 4)   # a tilt switch chatters on every move; an even count keeps the side
        await asyncio.sleep(gap)


async def test_shaking_wakes_once(factory):
    with Gpio(config(**SHAKE), factory=factory) as gpio:
        await shake(gpio.shake.pin, 8, 0.1)   # keeps shaking past the 4th flip
        await asyncio.sleep(0.1)
        events = drain(gpio.queue)
    assert kinds(events) == ["shake"], "one shake, then the cooldown holds"


async def test_contact_bounce_alone_does_not_wake(factory):
    with Gpio(config(**SHAKE), factory=factory) as gpio:
        chatter(gpio.shake.pin, 12)   # twelve edges within microseconds
        await asyncio.sleep(0.2)
        chatter(gpio.shake.pin, 11)
        await asyncio.sleep(0.2)
        assert drain(gpio.queue) == []


async def test_a_single_tilt_does_not_wake(factory):
    with Gpio(config(**SHAKE), factory=factory) as gpio:
        await shake(gpio.shake.pin, 1, 0.3)    # set down on its side
        await shake(gpio.shake.pin, 1, 0.3)    # and picked up again
        assert drain(gpio.queue) == []


async def test_slow_tilts_are_not_a_shake(factory):
    # Four flips, but not within the window: a child turning the toy over slowly.
    with Gpio(config(shake_window_ms=300, **SHAKE), factory=factory) as gpio:
        await shake(gpio.shake.pin, 4, 0.2)
        assert drain(gpio.queue) == []


async def test_shake_is_off_by_default(factory):
    with Gpio(config(), factory=factory) as gpio:
        assert gpio.shake is None
        pin = factory.pin("GPIO27")
        await shake(pin, 8, 0.02)
        assert drain(gpio.queue) == []


async def test_shake_gesture_is_configurable(factory):
    with Gpio(config(shake_edges=6, shake_pin=4, **SHAKE), factory=factory) as gpio:
        assert gpio.shake.pin is factory.pin("GPIO4")
        await shake(gpio.shake.pin, 5, 0.05)
        assert drain(gpio.queue) == []
        await shake(gpio.shake.pin, 1, 0.05)
        assert kinds(drain(gpio.queue)) == ["shake"]


def test_cooldown_then_a_new_shake():
    d = ShakeDetector(ShakeTiming(edges=3, window_s=1.0, bounce_s=0.02, cooldown_s=2.0))
    level, out = False, []
    for t in (0.0, 0.1, 0.2, 0.3, 0.4, 2.5, 2.6, 2.7):
        level = not level
        out += [(e.kind, e.t) for e in d.edge(level, t)]
    assert out == [("shake", 0.2), ("shake", 2.7)]
