"""The sounddevice speaker: 24 kHz replies resampled to the device rate, through the shared
PlaybackBuffer (jitter buffer, flush, volume ramps, earcons), into a PortAudio output.

Like the microphone, it uses a blocking stream written from a thread instead of a PortAudio
callback, because cffi callbacks do not work under `MemoryDenyWriteExecute=yes` (see
capture.py). `write()` blocks the thread, not the loop, until the device has room, so the
device's clock paces it. A block is heard `stream.latency` after it is written: that is the
`t_played` given to `on_played`, and the most a `flush()` can still let through.

With `park_idle_s` set, the writer stops writing after that long with nothing to play, and
waits for the next reply or earcon: writing silence 100 times a second cost the box more CPU
than anything else while it listened (bench/conversation.py). The device underruns meanwhile;
PortAudio restarts it on the next write, which is then heard at once (an empty device buffer
holds nothing in front of it), so the first block's `t_played` is "now", not "now + latency".
Never parked while an echo canceller runs: it needs the reference of every played sample on
a steady clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Self

import numpy as np

from device.audio.buffer import BufferedSpeaker
from device.audio.capture import StateCallback
from device.audio.devices import (
    backoff_delays,
    device_label,
    find_device,
    sd,
    translate,
)
from device.errors import AudioDeviceError

log = logging.getLogger(__name__)


class SoundDeviceSpeaker(BufferedSpeaker):
    """A PortAudio output as a Speaker. Reopens with jittered backoff if the device fails."""

    def __init__(self, device: str = "default", *, rate: int = 0, volume: float = 0.8,
                 max_volume: float = 1.0, prefill_ms: int = 60, block_ms: int = 10,
                 on_state: StateCallback | None = None, stall_s: float = 2.0,
                 park_idle_s: float | None = None) -> None:
        self.device_spec = device
        self.park_idle_s = park_idle_s
        self._wake = threading.Event()
        self.parks = 0   # times the writer rested (for benches and tests)
        self.stall_s = stall_s
        self._last_write = time.monotonic()
        self.block_ms = block_ms
        self.on_state = on_state
        self.state = "closed"
        self.error: AudioDeviceError | None = None
        self.reopens = 0
        self._label = f"'{device}'"
        self._index = find_device(device, "output")
        self._label = device_label(self._index, "output")
        if not rate:
            rate = int(sd().query_devices(self._index, "output")["default_samplerate"])
        self.rate_asked = rate
        super().__init__(rate, volume=volume, max_volume=max_volume, prefill_s=prefill_ms / 1000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._watch: asyncio.Task[None] | None = None
        self._failed: asyncio.Queue[BaseException] = asyncio.Queue()
        self.latency = 0.0

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._set_state("ok", None)
        self._watch = asyncio.create_task(self._supervise(), name="speaker-supervisor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
            self._watch = None
        await asyncio.to_thread(self._close)
        self.state = "closed"

    def _open(self) -> None:
        """Start the writer thread and wait until its stream runs (or failed to open)."""
        block = self.device_rate * self.block_ms // 1000
        # A fresh stop flag per thread: a thread stuck in a dead device must not be revived.
        self._stop = stop = threading.Event()
        started = threading.Event()
        box: list[BaseException] = []
        self._last_write = time.monotonic()
        self._thread = threading.Thread(target=self._writer, args=(block, started, box, stop),
                                        name="talkie-speaker", daemon=True)
        self._thread.start()
        if not started.wait(10):
            self._stop.set()
            raise AudioDeviceError(f"speaker {self._label} did not start within 10 s; check "
                                   f"the device and [audio] output")
        if box:
            self._thread.join(timeout=2)
            raise translate(box[0], "output", self._label, self.device_rate)

    def _close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _writer(self, block: int, started: threading.Event, box: list[BaseException],
                stop: threading.Event) -> None:
        """The playback thread. It owns the stream from open to close: with ALSA's pulse
        plugin a blocking stream opened on one thread and written from another fails. In the
        loop: pull a block, write it; no logging, no waiting on the event loop."""
        loop = self._loop
        assert loop is not None
        sdm = sd()
        stream = None
        # Mono first; raw ALSA devices (an I2S amplifier, the Pi's jack on hw:) often take
        # only stereo, so fall back to two identical channels.
        for channels in (1, 2):
            try:
                stream = sdm.OutputStream(device=self._index, samplerate=self.device_rate,
                                          channels=channels, dtype="float32",
                                          blocksize=block, latency="low")
                stream.start()
                break
            except BaseException as e:  # noqa: BLE001
                if channels == 1 and "channel" in str(e).lower():
                    continue
                box.append(e)
                started.set()
                return
        assert stream is not None
        self.channels = channels
        self.latency = float(stream.latency)
        started.set()
        rate = self.device_rate
        t_next = 0.0        # when the sample after the last one written is heard
        idle_since: float | None = None
        try:
            while not stop.is_set():
                now = time.monotonic()
                if self.park_idle_s is not None and not self.buffer.active:
                    idle_since = idle_since or now
                    if now - idle_since >= self.park_idle_s:
                        self._park(stop)
                        idle_since = None
                        continue
                else:
                    idle_since = None
                # A full device buffer holds `latency` in front of this block; after an
                # underrun (a park, a stall) it holds less, down to nothing.
                t_dac = min(now + self.latency, max(now, t_next))
                data, played = self._pull(block, t_dac)
                stream.write(data if channels == 1 else np.repeat(data[:, None], 2, axis=1))
                t_next = t_dac + block / rate
                self._last_write = time.monotonic()
                if played:
                    loop.call_soon_threadsafe(self._report_played, played)
        except BaseException as e:  # noqa: BLE001
            if not stop.is_set():
                loop.call_soon_threadsafe(self._failed.put_nowait, e)
        finally:
            try:
                stream.abort()
                stream.close()
            except Exception:   # a dead device must not hide the first error  # noqa: BLE001, S110
                pass

    def _park(self, stop: threading.Event) -> None:
        """Write nothing until there is something to play (or the speaker closes)."""
        self._wake.clear()
        if self.buffer.active:   # a write slipped in before the clear
            return
        self.parks += 1
        while not stop.is_set() and not self._wake.wait(0.5):
            self._last_write = time.monotonic()   # resting, not stalled
        self._last_write = time.monotonic()

    def _kick(self) -> None:
        self._wake.set()

    def _set_state(self, state: str, error: AudioDeviceError | None) -> None:
        self.state, self.error = state, error
        if self.on_state is not None:
            self.on_state(state, error)

    async def _supervise(self) -> None:
        while True:
            try:
                async with asyncio.timeout(0.5):  # 3.11 wait_for can eat a cancel
                    exc: BaseException = await self._failed.get()
            except TimeoutError:
                # A write that never returns (a vanished device or sound server) raises
                # nothing: a device that takes no audio for this long has failed.
                if time.monotonic() - self._last_write < self.stall_s:
                    continue
                exc = AudioDeviceError(f"speaker {self._label} stopped taking audio for "
                                       f"{self.stall_s:.0f} s; check it and [audio] output")
            err = exc if isinstance(exc, AudioDeviceError) else \
                translate(exc, "output", self._label, self.device_rate)
            log.warning("speaker failed, reopening: %s", err)
            self._set_state("error", err)
            await asyncio.to_thread(self._close)
            for delay in backoff_delays():
                await asyncio.sleep(delay)
                try:
                    await asyncio.to_thread(self._open)
                except AudioDeviceError as e:
                    self._set_state("error", e)
                    continue
                self.reopens += 1
                self._set_state("ok", None)
                break


__all__ = ["SoundDeviceSpeaker"]
