"""How long a button press takes to reach the daemon's loop, against a bare thread handover.

Run: python -m bench.gpio_latency. Prints medians and p99 in microseconds, and the ratio of the
full path (gpiozero Button on mock pins -> debounce -> gesture -> queue) to a bare
`call_soon_threadsafe` into a queue, measured in the same process.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from gpiozero.pins.mock import MockFactory, MockPWMPin

from device.config import Config
from device.gpio.factory import Gpio

ROUNDS = 300


def _summary(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs) * 1e6, xs[int(len(xs) * 0.99) - 1] * 1e6


async def _baseline(loop: asyncio.AbstractEventLoop) -> list[float]:
    q: asyncio.Queue[float] = asyncio.Queue()
    out = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        loop.call_soon_threadsafe(q.put_nowait, t0)
        await q.get()
        out.append(time.perf_counter() - t0)
    return out


async def _button(factory: MockFactory) -> list[float]:
    cfg = Config().replace(gpio={"pin_factory": "mock", "button_bounce_ms": 0})
    out = []
    with Gpio(cfg, factory=factory) as gpio:
        pin = gpio.button.pin
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            pin.drive_low()
            await gpio.queue.get()          # the press
            out.append(time.perf_counter() - t0)
            pin.drive_high()
            await gpio.queue.get()          # the release
    return out


async def main() -> None:
    loop = asyncio.get_running_loop()
    factory = MockFactory(pin_class=MockPWMPin)
    try:
        base = await _baseline(loop)
        full = await _button(factory)
    finally:
        factory.reset()
        factory.close()
    (bm, bp), (fm, fp) = _summary(base), _summary(full)
    print(f"bare call_soon_threadsafe -> queue: median {bm:.1f} us, p99 {bp:.1f} us")
    print(f"press edge -> ButtonEvent in queue: median {fm:.1f} us, p99 {fp:.1f} us")
    print(f"ratio (median): {fm / bm:.1f}x the bare handover")


if __name__ == "__main__":
    asyncio.run(main())
