"""Helpers shared by the gpio tests: a mock pin factory reset in `finally`, event draining."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from device.config import Config


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    try:
        yield f
    finally:
        f.reset()
        f.close()


def config(**gpio: Any) -> Config:
    return Config().replace(gpio={"pin_factory": "mock", **gpio})


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def kinds(events: list[Any]) -> list[str]:
    return [getattr(e, "kind", type(e).__name__) for e in events]


def chatter(pin: Any, times: int) -> None:
    """Contact bounce: the pin flips `times` times within microseconds."""
    for _ in range(times):
        flip(pin)


def flip(pin: Any) -> None:
    if pin.state:
        pin.drive_low()
    else:
        pin.drive_high()
