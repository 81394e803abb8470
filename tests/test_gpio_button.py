"""The big button at pin level: every gesture, contact bounce, and push-to-talk mode."""

from __future__ import annotations

import asyncio

from device.gpio.button import ButtonGestures, ButtonTiming
from device.gpio.factory import Gpio
from tests import gpio_helpers
from tests.gpio_helpers import chatter, config, drain, kinds

factory = gpio_helpers.factory

FAST = {"long_press_s": 0.5, "very_long_press_s": 1.0}


async def test_short_press_is_one_press_and_one_release(factory):
    with Gpio(config(**FAST), factory=factory) as gpio:
        pin = gpio.button.pin
        assert pin.state == 1, "the button is pulled up: high when not pressed"
        pin.drive_low()
        await asyncio.sleep(0.15)
        pin.drive_high()
        await asyncio.sleep(0.7)
        events = drain(gpio.queue)
    assert kinds(events) == ["press", "release"]
    assert 0.15 <= events[1].t - events[0].t < 0.5


async def test_bouncing_contacts_give_one_press_and_one_release(factory):
    with Gpio(config(**FAST), factory=factory) as gpio:
        pin = gpio.button.pin
        pin.drive_low()
        chatter(pin, 6)        # ends low: still pressed
        await asyncio.sleep(0.15)
        pin.drive_high()
        chatter(pin, 4)        # ends high: released
        await asyncio.sleep(0.15)
        events = drain(gpio.queue)
    assert kinds(events) == ["press", "release"]


async def test_instant_tap_still_reads_as_press_and_release(factory):
    # A script (or a very quick finger) may release within the debounce window.
    with Gpio(config(**FAST), factory=factory) as gpio:
        gpio.button.pin.drive_low()
        gpio.button.pin.drive_high()
        await asyncio.sleep(0.1)
        assert kinds(drain(gpio.queue)) == ["press", "release"]


async def test_press_is_delivered_at_once(factory):
    # Barge-in must not wait for the release or a debounce window.
    with Gpio(config(**FAST), factory=factory) as gpio:
        gpio.button.pin.drive_low()
        event = await asyncio.wait_for(gpio.queue.get(), 0.05)
        assert event.kind == "press"


async def test_long_press_while_held(factory):
    with Gpio(config(**FAST), factory=factory) as gpio:
        pin = gpio.button.pin
        pin.drive_low()
        await asyncio.sleep(0.75)
        pin.drive_high()
        await asyncio.sleep(0.1)
        events = drain(gpio.queue)
    assert kinds(events) == ["press", "long_press", "release"]
    assert 0.5 <= events[1].t - events[0].t < 0.75, "due at 0.5 s, before the release"


async def test_very_long_press_follows_the_long_press(factory):
    with Gpio(config(**FAST), factory=factory) as gpio:
        pin = gpio.button.pin
        pin.drive_low()
        await asyncio.sleep(1.2)
        pin.drive_high()
        await asyncio.sleep(0.1)
        events = drain(gpio.queue)
    assert kinds(events) == ["press", "long_press", "very_long_press", "release"]
    assert 1.0 <= events[2].t - events[0].t < 1.2


async def test_hold_mode_is_push_to_talk_without_long_gestures(factory):
    with Gpio(config(button_mode="hold", **FAST), factory=factory) as gpio:
        pin = gpio.button.pin
        pin.drive_low()
        await asyncio.sleep(1.2)   # a child talking for a while
        pin.drive_high()
        await asyncio.sleep(0.1)
        assert kinds(drain(gpio.queue)) == ["press", "release"]


def test_default_timings_two_and_eight_seconds():
    g = ButtonGestures(ButtonTiming())   # the shipped defaults: 2 s and 8 s, 30 ms bounce
    assert kinds(g.edge(True, 100.0)) == ["press"]
    assert g.deadline() == 102.0
    assert g.poll(101.99) == []
    assert kinds(g.poll(102.0)) == ["long_press"]
    assert g.deadline() == 108.0
    assert g.poll(107.9) == []
    assert kinds(g.poll(108.0)) == ["very_long_press"]
    assert g.deadline() is None
    assert kinds(g.edge(False, 109.0)) == ["release"]


def test_release_before_two_seconds_is_no_long_press():
    g = ButtonGestures(ButtonTiming())
    g.edge(True, 0.0)
    assert kinds(g.edge(False, 1.9)) == ["release"]
    assert g.deadline() is None and g.poll(2.5) == []
