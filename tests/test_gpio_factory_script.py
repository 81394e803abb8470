"""Pin factory choice, closing, pin conflicts, and the events script played at pin level."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from gpiozero import Button
from gpiozero.pins.mock import MockFactory, MockPWMPin

import device.gpio.script as script_module
from device.config import ConfigError, GpioConfig, loads
from device.events import ButtonEvent
from device.gpio.factory import Gpio, RecentMockPin, make_pin_factory, on_a_pi
from device.gpio.script import ScriptError, load, parse, play, play_on, script_pins
from device.gpio.volume import VolumeChange
from tests import gpio_helpers
from tests.gpio_helpers import config, drain, kinds

factory = gpio_helpers.factory


def test_auto_is_mock_pins_off_the_pi(tmp_path):
    model = tmp_path / "model"
    assert not on_a_pi(model), "no model file: not a Pi"
    model.write_text("Raspberry Pi 4 Model B Rev 1.5\x00")
    assert on_a_pi(model)
    (tmp_path / "other").write_text("Generic x86 board")
    f = make_pin_factory(GpioConfig(), model_file=tmp_path / "other")
    try:
        assert isinstance(f, MockFactory) and issubclass(f.pin_class, MockPWMPin)
    finally:
        f.close()


def test_mock_pins_keep_recent_states_not_all():
    # A box on mock pins (simulate, the soak, a PC demo) runs for hours with a breathing LED:
    # the pins' state history must not grow with it.
    f = make_pin_factory(GpioConfig(pin_factory="mock"))
    try:
        pin = f.pin(18)
        pin.function = "output"
        for i in range(3 * RecentMockPin.KEPT):
            pin.state = (i % 50) / 50
        assert len(pin.states) == RecentMockPin.KEPT
        assert pin.states[-1].state == pin.state, "the newest change must be kept"
    finally:
        f.close()


def test_missing_gpio_library_is_a_clear_error():
    with pytest.raises(ConfigError) as e:
        make_pin_factory(GpioConfig(pin_factory="lgpio"))
    msg = str(e.value)
    assert "gpio.pin_factory 'lgpio' cannot start" in msg and "install python3-lgpio" in msg


async def test_two_parts_on_one_pin_is_a_config_error(factory):
    with pytest.raises(ConfigError, match="give each part its own free BCM pin"):
        Gpio(config(shake_enabled=True, shake_pin=17), factory=factory)
    # and nothing is left reserved: the button pin is free again
    Button(17, pin_factory=factory).close()


async def test_close_frees_every_pin(factory):
    cfg = config(shake_enabled=True, volume_control="encoder", led_kind="rgb")
    gpio = Gpio(cfg, factory=factory)
    gpio.set_state("listening")
    gpio.close()
    again = Gpio(cfg, factory=factory)   # would raise GPIOPinInUse if anything leaked
    again.close()


async def test_gpio_owns_and_closes_its_factory():
    gpio = Gpio(config())
    try:
        assert isinstance(gpio.factory, MockFactory)
    finally:
        gpio.close()


def test_bad_gpio_config_names_the_key():
    with pytest.raises(ConfigError, match=r"gpio.color_idle.*'#rrggbb'"):
        loads('[gpio]\ncolor_idle = "blue"\n')
    with pytest.raises(ConfigError, match="led_pins = \\[12, 13\\]"):
        loads('[gpio]\nled_kind = "leds"\n')
    with pytest.raises(ConfigError, match="very_long_press_s"):
        loads("[gpio]\nlong_press_s = 3.0\nvery_long_press_s = 2.0\n", source="c.toml")


# --- the events script -----------------------------------------------------------------------

def test_script_parses_every_action():
    steps = parse("""
        # a comment line
        0.5 press button
        0.6 release button      # trailing comment
        1.0 tap volume_up 0.2
        2.0 hold button 2.5
        3.0 flip shake
        4.0 shake shake 3 0.05
        5.0 turn encoder -1
    """)
    assert [(s.t, s.pin, s.high) for s in steps[:4]] == [
        (0.5, "button", False), (0.6, "button", True), (1.0, "volume_up", False),
        (1.2, "volume_up", True)]
    assert [s.t for s in steps if s.pin == "shake"] == [3.0, 4.0, 4.05, 4.1]
    assert [(s.pin, s.high) for s in steps if s.pin.startswith("encoder")] == [
        ("encoder_b", False), ("encoder_a", False), ("encoder_b", True), ("encoder_a", True)]
    assert (4.5, "button", True) in [(s.t, s.pin, s.high) for s in steps]


def test_module_docstring_example_parses():
    block = script_module.__doc__.split("\n\n")[2]
    assert len(parse(block)) > 10


@pytest.mark.parametrize("text, message", [
    ("0.5 pres button", "e.toml:1: unknown action 'pres'; use one of press, release"),
    ("0.5 press knob", "unknown target 'knob'"),
    ("half press button", "time 'half' is not a number"),
    ("1.0 press button\n0.5 release button", "e.toml:2: time 0.5 is before the line above"),
    ("0.5 press", "needs a time, an action and a target"),
    ("0.5 press encoder", "the encoder only turns"),
])
def test_script_errors_name_the_line_and_the_fix(text, message):
    with pytest.raises(ScriptError, match=message.replace("(", r"\(")):
        parse(text, source="e.toml")


def test_missing_script_file(tmp_path):
    with pytest.raises(ScriptError, match="cannot read the events script"):
        load(tmp_path / "nope.txt")


async def test_player_drives_the_box_at_pin_level(factory, tmp_path: Path):
    path = tmp_path / "events.txt"
    path.write_text("0.05 tap button 0.05\n0.2 shake shake 5 0.06\n0.6 turn encoder +2\n")
    cfg = config(shake_enabled=True, volume_control="encoder")
    with Gpio(cfg, factory=factory) as gpio:
        start = time.monotonic()
        await asyncio.wait_for(play(load(path), script_pins(cfg.gpio, factory), start=start), 2)
        await asyncio.sleep(0.05)
        events = drain(gpio.queue)
    buttons = [e for e in events if isinstance(e, ButtonEvent)]
    volume = [e for e in events if isinstance(e, VolumeChange)]
    assert kinds(buttons) == ["press", "release", "shake"]
    assert 0.04 <= buttons[0].t - start < 0.3, "the press comes at its scripted time"
    assert 0.37 <= buttons[2].t - start < 0.8, "the shake is recognised on its 4th flip"
    assert [v.level for v in volume] == [0.9, 1.0]


async def test_play_on_a_running_gpio(factory):
    with Gpio(config(), factory=factory) as gpio:
        await asyncio.wait_for(play_on(gpio, parse("0 hold button 0.6")), 2)
        await asyncio.sleep(0.05)
        assert kinds(drain(gpio.queue)) == ["press", "release"]


def test_script_needs_mock_pins():
    class RealFactory:  # stands for LGPIOFactory, which this machine cannot open
        pass

    with pytest.raises(ScriptError, match='pin_factory = "mock"'):
        script_pins(GpioConfig(), RealFactory())


def test_wiring_doc_example_parses():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "wiring.md").read_text()
    example = doc.split("```")[1]
    assert {s.pin for s in parse(example)} >= {"button", "shake", "encoder_a", "volume_up"}
