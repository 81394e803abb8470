"""The pin factory the config asks for, and every gpio part of the box in one object.

Devices are given the factory explicitly (`pin_factory=`), never through gpiozero's global
`Device.pin_factory`, so tests and the daemon can hold separate factories.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

from gpiozero.pins.mock import MockFactory, MockPWMPin

from device.config import Config, GpioConfig
from device.errors import ConfigError
from device.events import ButtonEvent
from device.gpio.button import BigButton
from device.gpio.leds import StatusLights
from device.gpio.shake import ShakeSwitch
from device.gpio.volume import VolumeChange, VolumeControl, VolumeKnob

log = logging.getLogger(__name__)

MODEL_FILE = Path("/proc/device-tree/model")

_REAL = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory", "python3-lgpio (apt) or lgpio (pip)"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory", "python3-rpi-lgpio or RPi.GPIO"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory", "pigpio, with pigpiod running"),
    "native": ("gpiozero.pins.native", "NativeFactory", "nothing (built into gpiozero)"),
}

GpioEvent = ButtonEvent | VolumeChange


def on_a_pi(model_file: Path = MODEL_FILE) -> bool:
    """True on a Raspberry Pi (the device tree names the board)."""
    try:
        return "Raspberry Pi" in model_file.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False


class RecentMockPin(MockPWMPin):
    """A mock pin (with PWM) that keeps its last KEPT state changes in `states`, not all.

    gpiozero's mock pins keep every change for tests to assert on; a breathing LED makes
    thousands a minute, so a box on mock pins for hours (`talkie simulate`, `make soak`, a PC
    demo) grew by that list alone: about 0.15 MB a minute (bench/conversation.py's soak).
    """

    KEPT = 5000   # minutes of a breathing LED, for whoever reads them; under 1 MB

    def clear_states(self) -> None:
        super().clear_states()
        self.states = collections.deque(self.states, maxlen=self.KEPT)


def make_pin_factory(cfg: GpioConfig, model_file: Path = MODEL_FILE) -> Any:
    """The configured factory. 'auto': gpiozero's best real one on a Pi, else mock pins.

    Mock pins have PWM, so PWMLED, RGBLED and pulsing work off the Pi, and keep only their
    recent states (`RecentMockPin`).
    """
    choice = cfg.pin_factory
    if choice == "mock" or (choice == "auto" and not on_a_pi(model_file)):
        if choice == "auto":
            log.info("not a Raspberry Pi: using mock GPIO pins")
        return MockFactory(pin_class=RecentMockPin)
    if choice == "auto":
        from gpiozero import Device

        try:
            return Device._default_pin_factory()  # gpiozero's own lgpio/RPi.GPIO/... order
        except Exception as e:  # noqa: BLE001 - gpiozero raises BadPinFactory after each
            raise ConfigError(f"gpio.pin_factory 'auto': no GPIO library works on this Pi ({e}); "
                              f"install python3-lgpio, or set pin_factory = \"mock\"") from None
    module, name, install = _REAL[choice]
    try:
        return getattr(importlib.import_module(module), name)()
    except Exception as e:  # noqa: BLE001 - ImportError, or no access to /dev/gpiochip
        raise ConfigError(f"gpio.pin_factory {choice!r} cannot start ({e.__class__.__name__}: {e}); "
                          f"install {install}, check access to /dev/gpiochip*, or set "
                          f"pin_factory = \"auto\"") from None


class Gpio:
    """Button, shake switch, volume knob and LEDs, as the config asks; one event queue.

    Build it inside the running loop. Events (`ButtonEvent`, `VolumeChange`) arrive through
    `async for event in gpio` (or `gpio.queue`); LEDs through `gpio.leds.set_state(name)`.
    """

    def __init__(self, cfg: Config, *, factory: Any = None, queue_size: int = 64,
                 volume: VolumeControl | None = None) -> None:
        self.cfg = cfg
        self._own_factory = factory is None
        self.factory = make_pin_factory(cfg.gpio) if factory is None else factory
        self.queue: asyncio.Queue[GpioEvent] = asyncio.Queue(maxsize=queue_size)
        loop = asyncio.get_running_loop()
        self.button: BigButton | None = None
        self.shake: ShakeSwitch | None = None
        self.volume: VolumeKnob | None = None
        self.leds: StatusLights | None = None
        try:
            self.button = BigButton(cfg.gpio, self.factory, self._put, loop)
            if cfg.gpio.shake_enabled:
                self.shake = ShakeSwitch(cfg.gpio, self.factory, self._put, loop)
            if cfg.gpio.volume_control != "none":
                self.volume = VolumeKnob(cfg, self.factory, self._put, loop, volume)
            self.leds = StatusLights(cfg.gpio, self.factory)
        except Exception as e:
            self.close()
            if isinstance(e, ConfigError):
                raise
            from gpiozero import GPIOZeroError

            if isinstance(e, GPIOZeroError):
                # e.g. two parts on one pin (GPIOPinInUse) or a pin the board lacks
                raise ConfigError(f"[gpio] pins do not work as configured: {e}; give each part "
                                  f"its own free BCM pin") from None
            raise

    def _put(self, event: GpioEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("gpio event queue full; dropped %s", type(event).__name__)

    def set_state(self, name: str) -> None:
        """Show state `name` on the LEDs (a shortcut for `leds.set_state`)."""
        if self.leds is not None:
            self.leds.set_state(name)

    async def __aiter__(self) -> AsyncIterator[GpioEvent]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        """Close every device, then the factory if this object made it."""
        for part in (self.leds, self.volume, self.shake, self.button):
            if part is not None:
                try:
                    part.close()
                except Exception:  # closing the rest matters more
                    log.exception("closing %s failed", type(part).__name__)
        if self._own_factory and self.factory is not None:
            self.factory.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
