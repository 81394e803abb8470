"""The sounddevice speaker: 24 kHz replies resampled to the device rate, through the shared
PlaybackBuffer (jitter buffer, flush, volume ramps, earcons), into a PortAudio output.

Like the microphone, it uses a blocking stream written from a thread instead of a PortAudio
callback, because cffi callbacks do not work under `MemoryDenyWriteExecute=yes` (see
capture.py). `write()` blocks the thread, not the loop, until the device has room, so the
device's clock paces it. A block is heard `stream.latency` after it is written into a full
device buffer (less whatever ran out meanwhile): that is the `t_played` given to `on_played`.

The device buffer (`latency_ms`, 60 ms by default) is what rides out a busy CPU: a writer
thread that misses its turn for longer than that is a click the child hears, and PortAudio
says so (`device_underruns`). A `flush()` (barge-in) must not wait for that buffer to play
out, so the writer thread then aborts the stream, which drops what the device holds, and
starts it again: silence within about a block.

With `rest_after_s` set, the writer rests after that long with nothing to play: it writes the
silence in blocks of REST_BLOCKS (30 ms) instead of 10 ms, so it wakes a third as often;
writing silence 100 times a second cost the box more CPU than anything else while it listened
(bench/conversation.py). (Stopping the stream instead saved more, but a restarted stream is
prebuffered by PulseAudio's ALSA plugin: it took 150 ms at once and then nothing for 95 ms,
which left a hole in the first word.) A reply or an earcon that comes then would wait behind
the device buffer's silence (up to `latency_ms`) plus one such block; instead the writer
drops that silence (abort and start, as for a flush) once enough is queued that the jitter
buffer still holds its prefill after the burst a restarted stream takes at once (80 ms at
60 ms latency through PulseAudio): the child hears the reply that much sooner, with the same
cushion against a late chunk as without the skip. Sound waits up to HOLD_S for that much to
come (the first chunk is often less); after that it plays behind the silence.
Never rests while an echo canceller runs: it needs the reference of every sample on a steady
clock, in the same blocks.
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
from device.audio.clock import SampleClock
from device.audio.devices import (
    join_or_abandon,
    backoff_delays,
    device_label,
    find_device,
    sd,
    translate,
)
from device.errors import AudioDeviceError

log = logging.getLogger(__name__)

#: A resting writer writes this many blocks at a time.
REST_BLOCKS = 3
#: How long sound may wait for enough of it to skip a rest's silence (then it plays behind
#: it, which costs the child at most this much).
HOLD_S = 0.04


class SoundDeviceSpeaker(BufferedSpeaker):
    """A PortAudio output as a Speaker. Reopens with jittered backoff if the device fails."""

    def __init__(self, device: str = "default", *, rate: int = 0, volume: float = 0.8,
                 max_volume: float = 1.0, prefill_ms: int = 60, block_ms: int = 10,
                 latency_ms: int = 60, on_state: StateCallback | None = None,
                 stall_s: float = 2.0, rest_after_s: float | None = None) -> None:
        self.device_spec = device
        self.latency_ms = latency_ms
        self.rest_after_s = rest_after_s
        self.rests = 0   # times the writer went over to resting (for benches and tests)
        self.jumps = 0   # sounds that skipped the silence a resting device held
        self.stall_s = stall_s
        self._last_write = time.monotonic()
        self.block_ms = block_ms
        self.on_state = on_state
        self.state = "closed"
        self.error: AudioDeviceError | None = None
        self.reopens = 0
        #: Blocks PortAudio says came too late: the device ran dry (a click the child hears).
        self.device_underruns = 0
        self._abort = threading.Event()
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

    def flush(self) -> float:
        """Drop queued reply audio and what the device holds of it. Returns seconds dropped."""
        holding = time.monotonic() < self._heard_until
        dropped = super().flush()
        if holding:
            self._abort.set()
        return dropped

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
        if self._thread is not None:
            join_or_abandon(self._thread, f"speaker {self._label}")
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
                                          blocksize=block, latency=self.latency_ms / 1000)
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
        # What a started stream takes at once (the device buffer and a period or two: 80 ms
        # at 60 ms latency through PulseAudio), read before anything is written.
        burst_s = stream.write_available / self.device_rate
        started.set()
        idle_since: float | None = None
        resting = False
        only_silence = False   # the device holds nothing but the silence of a rest
        # A reply skips the silence only if, after the burst, the jitter buffer still holds
        # its prefill: the cushion against a late chunk is what stays here, not what the
        # device holds (with only the burst queued, the writer wrote silence behind it at
        # the next late chunk: 37 holes in 10 minutes of make soak-audio).
        ahead_s = burst_s + self.buffer.prefill_s
        held_since: float | None = None   # when sound began to wait for that
        clock = SampleClock(self.device_rate)
        try:
            while not stop.is_set():
                if self._abort.is_set() or (only_silence and self._sound_waits(ahead_s)):
                    jump = not self._abort.is_set()
                    self._abort.clear()
                    stream.abort()   # drops what the device still holds: a flushed reply,
                    stream.start()   # or the silence a new one would wait behind
                    clock = SampleClock(self.device_rate)
                    only_silence = False
                    self.jumps += jump
                n = block
                if self.rest_after_s is not None and not self.buffer.active:
                    now = time.monotonic()
                    idle_since = idle_since or now
                    if now - idle_since >= self.rest_after_s:
                        n = block * REST_BLOCKS   # silence in longer writes: fewer wake-ups
                        if not resting:
                            resting = only_silence = True
                            self.rests += 1
                else:
                    idle_since, resting = None, False
                # Heard once what the device holds has played: the latency while this thread
                # keeps it full (room for a block or so), less what ran out while it was late
                # or resting. That is an upper bound (blocks are taken in bursts); the clock
                # keeps the blocks back to back on the earliest of them.
                ran_out = max(0, stream.write_available - n) / self.device_rate
                heard_by = time.monotonic() + max(0.0, self.latency - ran_out)
                t_dac = clock.first_of(n, heard_by + n / self.device_rate)
                # Sound that is not yet enough to skip the silence waits a little for more
                # rather than go in behind it: until then it would not be heard anyway.
                holding = only_silence and not resting
                if holding:
                    now = time.monotonic()
                    held_since = held_since or now
                    holding = only_silence = now - held_since < HOLD_S
                else:
                    held_since = None
                data, played = (np.zeros(n, np.float32), []) if holding else self._pull(n, t_dac)
                if stream.write(data if channels == 1 else np.repeat(data[:, None], 2, axis=1)):
                    self.device_underruns += 1    # PortAudio: this block came too late
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

    def _sound_waits(self, ahead_s: float) -> bool:
        """Sound to play that keeps its cushion once the device takes its burst: a reply with
        `ahead_s` queued (more of it is still coming), or earcons alone (whole already)."""
        queued = self.buffer.queued_s
        return self.buffer.active and (queued >= ahead_s or queued == 0)

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
