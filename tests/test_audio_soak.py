"""Soak: ten minutes of simulated talk through real PortAudio into a PulseAudio null sink.

Replies arrive as the Live API sends them (chunks of 40-120 ms, 1.5 to 4 times faster than
real time, a little jitter), separated by the child's turns; the microphone and VAD gate run
all the while, as on the box; some replies are cut by a barge-in flush, some carry an earcon,
the volume knob turns now and then. Every reply is a steady tone, so any dropout, from the
jitter buffer or the device, is a silent run on the sink's monitor that the child would hear.

It must show zero underruns (jitter buffer, device, and heard), every flush silent within
50 ms, and it prints the figures: replies, audio seconds, flush latency, memory over time
(VmRSS, and with TALKIE_SOAK_TRACE=1 the top Python allocation growth), and the load and
the underruns so far at each minute, so that a dropout can be put down to a busy machine.

Deselected by default (`-m "not soak"` in pyproject); run it with `make soak-audio`
(TALKIE_SOAK_S sets the length, 600 s by default).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import tracemalloc

import numpy as np
import pytest

from bench.audio_pipeline import status_mb
from device.audio import open_audio
from device.audio.backend import REPLY_RATE
from device.audio.vad import VadGate
from device.config import AudioConfig

pytestmark = pytest.mark.soak

RATE = 48_000
SILENT_RUN = RATE * 3 // 1000     # a dropout: 3 ms with no sound in the middle of a reply


def harness_mb(pulse) -> float:
    """What the test's PulseAudio harness holds in this process: the sinks' recordings."""
    return sum(r.held_mb for r in pulse.recorders.values())


def dropouts(x: np.ndarray) -> int:
    """Silent runs of SILENT_RUN or more between the first and last sound of `x`."""
    loud = np.abs(x) > 300
    on = np.nonzero(loud)[0]
    if not len(on):
        return 0
    quiet = ~loud[on[0]:on[-1] + 1]
    edges = np.diff(np.concatenate(([0], quiet.astype(np.int8), [0])))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return int(np.sum(ends - starts >= SILENT_RUN))


async def deliver(spk, pcm: bytes, rng: np.random.Generator, stop_after: int | None) -> None:
    """Write a reply the way the Live session does: chunks, faster than real time, jittered."""
    pace = rng.uniform(1.5, 4.0)
    sent = 0
    first = True
    while sent < len(pcm) and (stop_after is None or sent < stop_after):
        n = int(REPLY_RATE * rng.uniform(0.04, 0.12)) * 2
        spk.write(pcm[sent:sent + n], t_received=time.monotonic() if first else None)
        first = False
        sent += n
        await asyncio.sleep(max(0.0, n / 2 / REPLY_RATE / pace + rng.uniform(-0.01, 0.01)))


async def soak(pulse, seconds: float) -> dict[str, float]:
    rng = np.random.default_rng(11)
    cfg = AudioConfig(input="pulse", output="pulse", input_rate=RATE, output_rate=RATE,
                      volume=0.8)
    mic, spk = open_audio(cfg)
    gate = VadGate(cfg)
    trace = os.environ.get("TALKIE_SOAK_TRACE") == "1"
    figures: dict[str, float] = {"replies": 0, "reply_s": 0.0, "dropouts": 0, "flushes": 0}
    flush_ms: list[float] = []
    minutes: list[str] = []    # what each minute mark saw, to tie a dropout to the load

    def mark() -> None:
        minutes.append(f"{(time.monotonic() - started) / 60:.0f}: {status_mb('VmRSS'):.0f} MB "
                       f"({harness_mb(pulse):.0f}), load {os.getloadavg()[0]:.1f}, underruns "
                       f"{spk.stats.underruns}/{spk.device_underruns}/{figures['dropouts']:.0f}")

    snapshots = []

    async def listen() -> None:
        async for frame in mic.frames():
            gate.process(frame)

    async with mic, spk:
        listener = asyncio.create_task(listen())
        started = time.monotonic()
        next_mark = started
        try:
            while time.monotonic() - started < seconds:
                if time.monotonic() >= next_mark:
                    mark()
                    if trace and len(minutes) == 3:   # two minutes in: warmed up
                        snapshots.append(tracemalloc.take_snapshot())
                    next_mark += 60
                k = int(figures["replies"])
                length = rng.uniform(1.5, 6.0)
                t = np.arange(int(REPLY_RATE * length)) / REPLY_RATE
                tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 600) * t)
                pcm = (tone * 32767).astype("<i2").tobytes()
                barge = k % 7 == 3
                if k % 5 == 1:
                    spk.play_earcon("thinking")
                if k % 9 == 4:
                    spk.set_volume(float(rng.uniform(0.3, 1.0)))
                rec = pulse.record()
                cut = int(len(pcm) * rng.uniform(0.3, 0.7)) // 2 * 2 if barge else None
                await deliver(spk, pcm, rng, cut)
                if barge:
                    await asyncio.sleep(rng.uniform(0.1, 0.4))
                    t_flush = time.monotonic()
                    spk.flush()
                    await asyncio.sleep(0.3)
                    x = rec.samples()
                    loud = np.nonzero(np.abs(x) > 300)[0]
                    if len(loud):
                        flush_ms.append((rec.time_of(int(loud[-1])) - t_flush) * 1000)
                    figures["flushes"] += 1
                else:
                    async with asyncio.timeout(30):
                        await spk.drain()
                    await asyncio.sleep(0.05)
                    x = rec.samples()
                # A reply never heard (a stalled device being reopened) is one dropout too.
                figures["dropouts"] += dropouts(x) if (np.abs(x) > 300).any() else 1
                figures["replies"] += 1
                figures["reply_s"] += len(x) / RATE
                # the child's turn
                await asyncio.sleep(rng.uniform(0.4, 1.5))
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        mark()
        if snapshots:
            snapshots.append(tracemalloc.take_snapshot())
        figures.update(jitter_underruns=spk.stats.underruns, device_underruns=spk.device_underruns,
                       reopens=spk.reopens + mic.reopens,
                       mic_overflows=mic.overflows, mic_device_overflows=mic.device_overflows,
                       flush_ms_median=statistics.median(flush_ms) if flush_ms else 0.0,
                       flush_ms_max=max(flush_ms, default=0.0), wall_s=time.monotonic() - started)
    load = os.getloadavg()
    print(f"\naudio soak: {figures['replies']:.0f} replies, {figures['reply_s']:.0f} s of reply "
          f"audio in {figures['wall_s']:.0f} s; underruns: jitter buffer "
          f"{figures['jitter_underruns']:.0f}, device {figures['device_underruns']:.0f}, heard "
          f"(silent runs >= 3 ms inside a reply) {figures['dropouts']:.0f}; mic overflows "
          f"{figures['mic_overflows']:.0f}/{figures['mic_device_overflows']:.0f}; devices "
          f"reopened after a stall {figures['reopens']:.0f}")
    print(f"flush -> silent on the sink: median {figures['flush_ms_median']:.0f} ms, max "
          f"{figures['flush_ms_max']:.0f} ms over {figures['flushes']:.0f} barge-ins (+-10 ms)")
    print("by minute: VmRSS (of it the harness's monitor recordings), 1-min load, underruns so "
          "far (jitter buffer/device/heard):\n  " + "\n  ".join(minutes))
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    if len(snapshots) == 2:
        print("Python allocation growth, top 8 (tracemalloc):")
        for stat in snapshots[1].compare_to(snapshots[0], "traceback")[:8]:
            print(f"  {stat}")
            for line in stat.traceback.format()[-6:]:
                print(f"      {line}")
    return figures


@pytest.fixture
def traced():
    if os.environ.get("TALKIE_SOAK_TRACE") == "1":
        tracemalloc.start(8)
    yield
    tracemalloc.stop()


async def test_ten_minutes_of_talk_play_without_an_underrun(pulse, traced) -> None:
    seconds = float(os.environ.get("TALKIE_SOAK_S", "600"))
    f = await soak(pulse, seconds)
    assert f["replies"] >= seconds / 10
    assert f["jitter_underruns"] == 0 and f["device_underruns"] == 0 and f["dropouts"] == 0, f
    assert f["reopens"] == 0, f
    assert f["flush_ms_max"] < 50, f
