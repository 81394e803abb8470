"""The status LEDs at pin level: each state's pattern on one LED, an RGB LED, a few LEDs."""

from __future__ import annotations

import itertools
import time

import pytest

from device.gpio.leds import DIM, STATES, StatusLights
from device.states import State
from tests import gpio_helpers
from tests.gpio_helpers import config

factory = gpio_helpers.factory


def watch(pin, seconds: float) -> list[float]:
    """The values the pin took over `seconds` (gpiozero's pattern threads drive it)."""
    pin.clear_states()
    time.sleep(seconds)
    return [s.state for s in pin.states]


def shape(values: list[float]) -> str:
    """What an eye would call the light: off, on, dim, blinking or fading."""
    distinct = set(values)
    if distinct == {0}:
        return "off"
    if distinct == {1}:
        return "on"
    if distinct == {DIM}:
        return "dim"
    if distinct <= {0, 1}:
        return "blinking"
    return "fading"


def toggles(values: list[float]) -> int:
    return sum(1 for a, b in itertools.pairwise(values) if (a > 0.5) != (b > 0.5))


# Per state: how it looks within 0.7 s, and how many on/off swaps at least (or at most).
EXPECTED = {
    "booting": ("dim", 0, 0),
    "idle": ("fading", 0, 0),        # breathe: 2 s up, 2 s down: no full swap in 0.5 s
    "connecting": ("blinking", 1, 2),   # blink: 0.5 s on, 0.5 s off
    "listening": ("on", 0, 0),
    "thinking": ("fading", 1, 3),    # pulse: 0.4 s up, 0.4 s down
    "speaking": ("fading", 3, 10),   # flicker: 0.28 s period with short fades
    "error": ("blinking", 4, 8),     # flash: 0.1 s on, 0.1 s off
    "offline": ("blinking", 1, 1),   # wink: 0.1 s on, then 2.9 s off
    "sleeping": ("off", 0, 0),
}


def test_every_state_has_a_pattern():
    assert set(EXPECTED) == set(STATES) == {s.value for s in State}


@pytest.mark.parametrize("state", STATES)
def test_single_led_pattern_per_state(factory, state):
    leds = StatusLights(config().gpio, factory)
    try:
        leds.set_state(State(state))
        values = watch(leds.pins[0], 0.7)
    finally:
        leds.close()
    look, least, most = EXPECTED[state]
    assert shape(values) == look, values
    assert least <= toggles(values) <= most, values


def test_rgb_led_shows_state_colours(factory):
    leds = StatusLights(config(led_kind="rgb").gpio, factory)
    try:
        red, green, blue = leds.pins
        assert red is factory.pin("GPIO24") and blue is factory.pin("GPIO26")
        leds.set_state("listening")
        assert (red.state, green.state, round(blue.state, 3)) == (0, 1, round(0x40 / 255, 3))
        leds.set_state("error")          # flashing red
        r, g = watch(red, 0.5), watch(green, 0.05)
        assert toggles(r) >= 3 and set(g) == {0}
        leds.set_state("sleeping")
        assert (red.state, green.state, blue.state) == (0, 0, 0)
    finally:
        leds.close()


def test_a_few_leds_show_the_same_pattern(factory):
    leds = StatusLights(config(led_kind="leds", led_pins=[12, 13]).gpio, factory)
    try:
        leds.set_state("listening")
        assert [p.state for p in leds.pins] == [1, 1]
        leds.set_state("booting")
        assert [p.state for p in leds.pins] == [DIM, DIM]
    finally:
        leds.close()


def test_active_low_led_is_inverted(factory):
    leds = StatusLights(config(led_active_high=False).gpio, factory)
    try:
        leds.set_state("listening")
        assert leds.pins[0].state == 0
        leds.set_state("sleeping")
        assert leds.pins[0].state == 1
    finally:
        leds.close()


def test_pattern_is_configurable_and_unknown_state_is_ignored(factory, caplog):
    leds = StatusLights(config(led_listening="flash").gpio, factory)
    try:
        leds.set_state("listening")
        assert toggles(watch(leds.pins[0], 0.5)) >= 3
        leds.set_state("dancing")
        assert leds.state == "listening" and "no LED pattern" in caplog.text
    finally:
        leds.close()


def test_led_pin_goes_dark_on_close(factory):
    leds = StatusLights(config().gpio, factory)
    leds.set_state("thinking")
    pin = leds.pins[0]
    leds.close()
    assert pin.state == 0 and pin.function == "input"
