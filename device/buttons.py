"""The big button as a stream of events, on gpiozero (mock pins off the Pi)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from device.config import GpioConfig
from device.events import ButtonEvent


def pin_factory(cfg: GpioConfig) -> Any:
    """The configured gpiozero pin factory; 'auto' is real pins on a Pi, mock pins elsewhere."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    if cfg.pin_factory == "mock" or (cfg.pin_factory == "auto" and not _on_a_pi()):
        return MockFactory(pin_class=MockPWMPin)
    if cfg.pin_factory == "auto":
        return None  # gpiozero picks the best real factory
    module, name = {
        "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
        "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
        "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
        "native": ("gpiozero.pins.native", "NativeFactory"),
    }[cfg.pin_factory]
    import importlib
    return getattr(importlib.import_module(module), name)()


def _on_a_pi() -> bool:
    try:
        with open("/proc/device-tree/model", encoding="ascii", errors="replace") as f:
            return "Raspberry Pi" in f.read()
    except OSError:
        return False


class ButtonEvents:
    """Presses of the big button, handed from gpiozero's thread into asyncio."""

    def __init__(self, cfg: GpioConfig, factory: Any) -> None:
        from gpiozero import Button

        self._queue: asyncio.Queue[ButtonEvent] = asyncio.Queue(maxsize=64)
        self._loop = asyncio.get_running_loop()
        self.button = Button(cfg.button_pin, pin_factory=factory, bounce_time=None)
        self.button.when_pressed = lambda: self._emit("press")
        self.button.when_released = lambda: self._emit("release")

    def _emit(self, kind: str) -> None:
        event = ButtonEvent(kind, time.monotonic())  # type: ignore[arg-type]
        self._loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: ButtonEvent) -> None:
        if not self._queue.full():
            self._queue.put_nowait(event)

    async def __aiter__(self) -> AsyncIterator[ButtonEvent]:
        while True:
            yield await self._queue.get()

    def close(self) -> None:
        self.button.close()
