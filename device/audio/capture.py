"""The sounddevice microphone: PortAudio capture, channel pick, 16 kHz, 20 ms frames.

Why a blocking stream read in a thread, not a PortAudio callback: the daemon runs with
`MemoryDenyWriteExecute=yes`, and sounddevice's callbacks are cffi `ffi.callback` closures
that need writable+executable memory, which that setting forbids. A blocking `read()` needs no
callback. The thread does the same as a callback would: it reads one block and hands it to the
event loop with `loop.call_soon_threadsafe` into a bounded queue (overflows are counted, never
logged there). The extra thread costs about nothing; latency is the same one block.
Measured on Linux 6.18 with PR_SET_MDWE (what the unit setting applies): opening a callback
stream fails with cffi's "Cannot allocate write+execute memory for ffi.callback()"; these
blocking streams run (tests/test_audio_pulse.py::test_audio_works_under_memory_deny_write_execute).

Each stream is opened, used and closed on its own thread: with ALSA's pulse plugin a
blocking stream opened on one thread and written on another stalls or fails.

The thread reads only what the device already holds and waits for the rest itself
(`_await_block`): PortAudio's ALSA `read()` never returns from a device that stops delivering
(it "recovers" the device every ~2 s and waits again, forever), so a thread inside it could not
be stopped, and kept its stream, its sound-server connection and ~8 MB until the daemon exited
(the chaos soak's RSS steps). Now it ends within a block of being told to. Waking up
READ_LATE_S after a block is due costs 2-3 ms of latency on average and 0.002 CPU s per second
more than PortAudio's own wait (bench/stream_floor.py).

The daemon reads the microphone through `gated(gate)`: the capture thread then also resamples,
cuts frames and runs the VAD gate (and the echo canceller in front of it), and wakes the event
loop only for what the gate says (device/audio/gating.py), not 50 times a second.
`frames()` hands every frame to the loop, for the audio check and tests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import numpy as np

from device.audio.backend import FRAME_MS, MIC_RATE, MicFrame
from device.audio.clock import SampleClock
from device.audio.gating import GatedAudio, Gating
from device.audio.devices import (
    join_or_abandon,
    backoff_delays,
    device_label,
    find_device,
    sd,
    translate,
)
from device.audio.resample import FrameCutter, Resampler, pick_channel
from device.errors import AudioDeviceError

log = logging.getLogger(__name__)

#: on_state(state, error): state is 'ok' or 'error'; error is set while the device is failing.
StateCallback = Callable[[str, AudioDeviceError | None], None]


#: The capture thread reads this much per call (two VAD frames): a read costs about as much
#: CPU whatever its size, and 20 ms reads made the reading alone cost 0.0125 CPU s per second
#: against 0.0078 for 40 ms (bench/conversation.py); the gate still decides every 20 ms.
READ_MS = 2 * FRAME_MS
#: How long after a block is due the thread looks for it: input arrives in fragments, so a wait
#: timed to the due time alone found the block short 3 times in 4 and woke 4 times as often
#: (0.022 CPU s per second against 0.009 for PortAudio's wait, 40 ms reads). 5 ms: 0.0107;
#: blocks read 2.2 ms (p95 5 ms) later than PortAudio's wait reads them.
READ_LATE_S = 0.005


def _await_block(stream: Any, frames: int, rate: int, stop: threading.Event) -> bool:
    """Wait until the input stream holds `frames`; False once `stop` is set first."""
    while not stop.is_set():
        short = frames - stream.read_available
        if short <= 0:
            return True
        stop.wait(short / rate + READ_LATE_S)
    return False


class _GateFailed:
    """The gate raised in the capture thread; `gated()` re-raises it in the loop."""

    def __init__(self, error: Exception) -> None:
        self.error = error


#: What the capture thread hands the loop: a raw block and its read time, the gate's output,
#: or why it stopped.
_Item = tuple[np.ndarray, float] | GatedAudio | _GateFailed | BaseException


class SoundDeviceMicrophone:
    """A PortAudio input as a Microphone: 20 ms, 16 kHz mono frames with capture times.

    If the device fails mid-stream it is reopened with jittered backoff; meanwhile `state` is
    'error' and `on_state` is called, and `frames()` simply waits.
    """

    def __init__(self, device: str = "default", *, rate: int = 0, channels: int = 1,
                 channel: int = 0, block_ms: int = READ_MS, queue_blocks: int = 50,
                 on_state: StateCallback | None = None, stall_s: float = 2.0) -> None:
        if channel >= channels:
            raise AudioDeviceError(f"[audio] input_channel = {channel} but input_channels = "
                                   f"{channels}; pick a channel below {channels}")
        self.device_spec = device
        self.rate = rate
        self.channels = channels
        self.channel = channel
        self.block_ms = block_ms
        self.on_state = on_state
        self.stall_s = stall_s
        self.state = "closed"
        self.error: AudioDeviceError | None = None
        self.overflows = 0           # blocks the loop was too slow to take
        self.device_overflows = 0    # PortAudio's own input overflows
        self.reopens = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_blocks)
        # Set by gated(): the capture thread runs it on every block.
        self._gating: Gating | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._label = f"'{device}'"
        find_device(device, "input")   # a wrong name fails at start, with the list of devices

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._set_state("ok", None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._close)
        self.state = "closed"

    def _open(self) -> None:
        """Start the capture thread and wait until its stream runs (or failed to open)."""
        sdm = sd()
        index = find_device(self.device_spec, "input")
        self._label = device_label(index, "input")
        rate = self.rate or int(sdm.query_devices(index, "input")["default_samplerate"])
        self.device_rate = rate
        self._resampler = Resampler(rate, MIC_RATE)
        self._cutter = FrameCutter()
        self._clock = SampleClock(MIC_RATE)
        # A fresh stop flag per thread: a thread stuck in a dead device must not be revived.
        self._stop = stop = threading.Event()
        started = threading.Event()
        box: list[BaseException] = []
        self._thread = threading.Thread(target=self._reader,
                                        args=(index, rate, started, box, stop),
                                        name="talkie-mic", daemon=True)
        self._thread.start()
        if not started.wait(10):
            self._stop.set()
            raise AudioDeviceError(f"microphone {self._label} did not start within 10 s; "
                                   f"check the device and [audio] input")
        if box:
            self._thread.join(timeout=2)
            raise translate(box[0], "input", self._label, rate)

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            join_or_abandon(self._thread, f"microphone {self._label}")
            self._thread = None

    def _reader(self, index: int | None, rate: int, started: threading.Event,
                box: list[BaseException], stop: threading.Event) -> None:
        """The capture thread. It owns the stream from open to close (ALSA's pulse plugin
        fails when a blocking stream is opened on one thread and used on another). In the
        loop: read a block, hand it over; no logging, no waiting on the event loop."""
        loop = self._loop
        assert loop is not None
        block = rate * self.block_ms // 1000
        try:
            stream = sd().InputStream(device=index, samplerate=rate, channels=self.channels,
                                      dtype="int16", blocksize=block, latency="low")
            stream.start()
        except BaseException as e:  # noqa: BLE001
            box.append(e)
            started.set()
            return
        started.set()
        try:
            while _await_block(stream, block, rate, stop):
                data, overflowed = stream.read(block)
                t = time.monotonic()
                if stop.is_set():
                    break
                if overflowed:
                    self.device_overflows += 1
                gating = self._gating
                if gating is None:
                    loop.call_soon_threadsafe(self._put, (data, t))
                    continue
                try:
                    out: GatedAudio | _GateFailed | None = gating.push(self._to_frames(data, t))
                except Exception as e:  # noqa: BLE001 - the gate's bug, not the device's
                    out = _GateFailed(e)
                if out is not None:
                    loop.call_soon_threadsafe(self._put, out)
        except BaseException as e:   # handed to the loop, which reopens the device  # noqa: BLE001
            if not stop.is_set():
                loop.call_soon_threadsafe(self._put, e)
        finally:
            try:
                stream.abort()
                stream.close()
            except Exception:   # a dead device must not hide the first error  # noqa: BLE001, S110
                pass

    def _put(self, item: _Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflows += 1

    def _set_state(self, state: str, error: AudioDeviceError | None) -> None:
        self.state, self.error = state, error
        if self.on_state is not None:
            self.on_state(state, error)

    async def frames(self) -> AsyncIterator[MicFrame]:
        """Frames as they are captured; survives the device failing and coming back."""
        while True:
            item = await self._next_item()
            if isinstance(item, BaseException):
                await self._recover(item)
            elif isinstance(item, tuple):   # (not what gated() left over: not mixed)
                for frame in self._to_frames(*item):
                    yield frame

    async def gated(self, gate: object) -> AsyncIterator[GatedAudio]:
        """The gate's events, the gate run in the capture thread (see device/audio/gating.py);
        survives the device failing and coming back, like `frames()`."""
        self._gating = Gating(gate)
        try:
            while True:
                item = await self._next_item()
                if isinstance(item, BaseException):
                    await self._recover(item)
                elif isinstance(item, GatedAudio):
                    yield item
                elif isinstance(item, _GateFailed):
                    raise item.error   # as if the gate had run here
                # raw blocks read before the gate was handed over are dropped: nobody listened
        finally:
            self._gating = None

    async def _next_item(self) -> _Item:
        try:
            async with asyncio.timeout(self.stall_s):  # 3.11 wait_for can eat a cancel
                return await self._queue.get()
        except TimeoutError:
            # A read that never returns (an unplugged USB mic, a vanished PulseAudio
            # source) raises nothing: silence from the device for this long is a failure.
            return AudioDeviceError(f"microphone {self._label} stopped delivering audio "
                                    f"for {self.stall_s:.0f} s; check its cable and "
                                    f"[audio] input")

    def _to_frames(self, data: np.ndarray, t_read: float) -> list[MicFrame]:
        """One block read from the device as 20 ms 16 kHz mono frames with capture times."""
        mono = pick_channel(data, self.channel) if data.ndim > 1 else data
        out = self._resampler.process(mono.reshape(-1))
        first = self._clock.first_of(len(out), t_read) - self._cutter.pending / MIC_RATE
        return [MicFrame(f.tobytes(), first + k * len(f) / MIC_RATE)
                for k, f in enumerate(self._cutter.push(out))]

    async def _recover(self, exc: BaseException) -> None:
        err = translate(exc, "input", self._label, self.rate) \
            if not isinstance(exc, AudioDeviceError) else exc
        log.warning("microphone failed, reopening: %s", err)
        self._set_state("error", err)
        await asyncio.to_thread(self._close)
        for delay in backoff_delays():
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self._open)
            except AudioDeviceError as e:
                log.info("microphone still unavailable: %s", e)
                self._set_state("error", e)
                continue
            self.reopens += 1
            log.info("microphone %s reopened", self._label)
            self._set_state("ok", None)
            return
