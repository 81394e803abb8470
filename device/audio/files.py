"""The WAV backend: a microphone that plays a file in real time, a speaker that writes one.

Used by tests, benches and the demo where no sound card exists. Both behave like devices:
frames come at the pace of a clock and carry capture times; the speaker consumes its buffer at
the pace of a clock (with the same jitter buffer, flush, volume and earcons as the sounddevice
speaker) and records everything it "played", silence included, so timing is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Self

import numpy as np
import soxr

from device.audio.backend import FRAME_MS, FRAME_SAMPLES, MIC_RATE, REPLY_RATE, MicFrame
from device.audio.buffer import BufferedSpeaker
from device.audio.gating import GatedAudio, Gating
from device.errors import AudioDeviceError

log = logging.getLogger(__name__)


def read_wav(path: str | Path, rate: int = MIC_RATE, channel: int | None = None) -> np.ndarray:
    """A WAV file as int16 mono at `rate`: any PCM width, any rate, channels averaged or picked."""
    try:
        with contextlib.closing(wave.open(str(path), "rb")) as w:
            nch, width, src_rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
        # A file cut short (a copy that did not finish) can end mid-frame: drop that part.
        raw = raw[:len(raw) - len(raw) % (nch * width)]
    except FileNotFoundError:
        raise AudioDeviceError(f"microphone file {path} does not exist; set [audio] input to "
                               f"an existing WAV file") from None
    except (wave.Error, EOFError, RuntimeError) as e:  # RuntimeError: a chunk size past the end
        raise AudioDeviceError(f"microphone file {path} is not a PCM WAV file ({e}); convert "
                               f"it, e.g. 'sox IN -b 16 {path}'") from None
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        v = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8)
             | (b[:, 2].astype(np.int32) << 16))
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / (1 << 23)
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / (1 << 31)
    x = x.reshape(-1, nch)
    mono = x[:, channel] if channel is not None and channel < nch else x.mean(axis=1)
    if src_rate != rate:
        mono = soxr.resample(mono, src_rate, rate, quality="HQ")
    return (np.clip(mono, -1, 32767 / 32768) * 32768).astype(np.int16)


class WavMicrophone:
    """A WAV file as a microphone: 20 ms frames at 16 kHz mono, paced like a live device.

    Each frame's `t` is the monotonic time its last sample would have been captured. With
    `realtime=False` frames come as fast as they are read (same timestamps), for benches.
    """

    def __init__(self, path: str | Path, *, channel: int | None = None,
                 realtime: bool = True) -> None:
        self.path = Path(path)
        self.channel = channel
        self.realtime = realtime
        self._pcm: np.ndarray | None = None

    async def __aenter__(self) -> Self:
        self._pcm = await asyncio.to_thread(read_wav, self.path, MIC_RATE, self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._pcm = None

    async def frames(self) -> AsyncIterator[MicFrame]:
        """Frames of the file at real-time pace; ends when the file does."""
        if self._pcm is None:
            self._pcm = await asyncio.to_thread(read_wav, self.path, MIC_RATE, self.channel)
        pcm = self._pcm
        n = -(-len(pcm) // FRAME_SAMPLES)
        if len(pcm) < n * FRAME_SAMPLES:
            pcm = np.concatenate((pcm, np.zeros(n * FRAME_SAMPLES - len(pcm), np.int16)))
        t0 = time.monotonic()
        for k in range(n):
            t = t0 + (k + 1) * FRAME_MS / 1000
            if self.realtime:
                delay = t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield MicFrame(pcm[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES].tobytes(), t)

    async def gated(self, gate: object) -> AsyncIterator[GatedAudio]:
        """The gate's events in the batches the sounddevice microphone hands over (here the
        gate runs in the loop: a file has no capture thread), then what is left at the end."""
        gating = Gating(gate)
        async for frame in self.frames():
            if (out := gating.push([frame])) is not None:
                yield out
        yield gating.flush()


class WavSpeaker(BufferedSpeaker):
    """A speaker that plays into a WAV file at the pace of a real device.

    A clock task pulls one `block_ms` block per period from the shared PlaybackBuffer, so the
    jitter buffer, `flush()`, volume ramps and earcons behave as on hardware; the file gets
    every block, silence included, at `rate` (24 kHz unless told).
    """

    def __init__(self, path: str | Path, *, rate: int = REPLY_RATE, volume: float = 0.8,
                 max_volume: float = 1.0, prefill_ms: int = 60, block_ms: int = 20) -> None:
        super().__init__(rate, volume=volume, max_volume=max_volume, prefill_s=prefill_ms / 1000)
        self.path = Path(path)
        self.block = rate * block_ms // 1000
        self._writer: wave.Wave_write | None = None
        self._task: asyncio.Task[None] | None = None
        self.written_s = 0.0

    async def __aenter__(self) -> Self:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            w = wave.open(str(self.path), "wb")  # noqa: SIM115
        except OSError as e:
            raise AudioDeviceError(f"speaker file {self.path} cannot be written ({e.strerror}); "
                                   f"set [audio] output to a writable path") from None
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(self.device_rate)
        self._writer = w
        self._task = asyncio.create_task(self._clock(), name="wav-speaker")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _clock(self) -> None:
        period = self.block / self.device_rate
        deadline = time.monotonic()
        while True:
            now = time.monotonic()
            # A stalled loop does not make the "device" race ahead to catch up past one second.
            if now - deadline > 1.0:
                deadline = now
            block, played = self._pull(self.block, max(now, deadline))
            assert self._writer is not None
            self._writer.writeframesraw((block * 32767).astype("<i2").tobytes())
            self.written_s += period
            self._report_played(played)
            deadline += period
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
