"""Volume buttons and the rotary encoder at pin level, never above the parents' cap."""

from __future__ import annotations

import asyncio

from device.config import Config
from device.gpio.factory import Gpio
from device.gpio.volume import VolumeControl
from tests import gpio_helpers
from tests.gpio_helpers import drain

factory = gpio_helpers.factory


def cfg(control: str, volume: float = 0.5, max_volume: float = 0.7) -> Config:
    return Config().replace(gpio={"pin_factory": "mock", "volume_control": control},
                            audio={"volume": volume, "max_volume": max_volume})


async def tap(pin, held: float = 0.05) -> None:
    pin.drive_low()
    await asyncio.sleep(held)
    pin.drive_high()
    await asyncio.sleep(0.05)


async def test_buttons_step_the_volume_up_to_the_cap(factory):
    with Gpio(cfg("buttons"), factory=factory) as gpio:
        up, down = factory.pin("GPIO22"), factory.pin("GPIO23")
        for _ in range(3):
            await tap(up)
        await tap(down)
        levels = [(c.level, c.at_limit) for c in drain(gpio.queue)]
    assert levels == [(0.6, False), (0.7, True), (0.7, True), (0.6, False)]


async def test_held_button_repeats(factory):
    with Gpio(cfg("buttons", volume=0.7, max_volume=1.0), factory=factory) as gpio:
        await tap(factory.pin("GPIO23"), held=0.9)   # 1 step, then repeats at 0.5 s and 0.75 s
        levels = [c.level for c in drain(gpio.queue)]
    assert levels == [0.6, 0.5, 0.4]


async def test_encoder_turns_step_both_ways(factory):
    with Gpio(cfg("encoder"), factory=factory) as gpio:
        a, b = factory.pin("GPIO5"), factory.pin("GPIO6")
        for _ in range(2):                                      # two detents clockwise
            for pin, high in ((a, False), (b, False), (a, True), (b, True)):
                pin.drive_high() if high else pin.drive_low()
        for pin, high in ((b, False), (a, False), (b, True), (a, True)):   # one back
            pin.drive_high() if high else pin.drive_low()
        await asyncio.sleep(0.05)
        levels = [c.level for c in drain(gpio.queue)]
    assert levels == [0.6, 0.7, 0.6]


async def test_encoder_half_turn_is_no_step(factory):
    with Gpio(cfg("encoder"), factory=factory) as gpio:
        a, b = factory.pin("GPIO5"), factory.pin("GPIO6")
        for step in (a.drive_low, b.drive_low, b.drive_high, a.drive_high):
            step()  # wiggle back
        await asyncio.sleep(0.05)
        assert drain(gpio.queue) == []


def test_start_volume_above_the_cap_is_capped():
    control = VolumeControl.from_config(cfg("none", volume=0.9, max_volume=0.4))
    assert control.level == 0.4
    assert control.step(+1, 0.0).level == 0.4
    assert [control.step(-1, 0.0).level for _ in range(5)] == [0.3, 0.2, 0.1, 0.0, 0.0]


async def test_no_volume_knob_by_default(factory):
    with Gpio(Config().replace(gpio={"pin_factory": "mock"}), factory=factory) as gpio:
        assert gpio.volume is None
