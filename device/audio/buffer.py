"""The playback buffer both speakers share: jitter buffer, flush, volume ramps, earcons.

The event loop pushes reply audio (already at the device rate); a device side (a PortAudio
writer thread, or the WAV speaker's clock task) pulls fixed blocks. A short lock guards the
queue; neither side holds it for more than a few array operations.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from device.audio import earcons
from device.audio.backend import MIC_RATE, REPLY_RATE
from device.audio.resample import Resampler

if TYPE_CHECKING:
    from device.audio.echo import FarEndBuffer


@dataclass
class BufferStats:
    underruns: int = 0
    flushes: int = 0
    played_s: float = 0.0
    dropped_s: float = 0.0


@dataclass
class _Chunk:
    data: np.ndarray          # float32 mono at the device rate
    pos: int = 0
    t_received: float | None = None
    marked: bool = field(default=False)


class PlaybackBuffer:
    """Reply audio waiting for the device, mixed with earcons and scaled by the volume.

    Playback starts once `prefill_s` of audio is queued, or once the oldest queued sample has
    waited that long (so a short reply still plays). Running dry mid-reply and then receiving
    more of it within a second counts as an underrun; a chunk pushed with `t_received` starts
    a new reply (the daemon marks each reply's first chunk), so a reply that follows another
    closely is not one.
    """

    #: Volume changes glide over this long, so a knob turn never clicks.
    RAMP_S = 0.015
    #: `flush()` fades the next few ms out instead of cutting mid-wave.
    FADE_S = 0.004

    def __init__(self, rate: int, *, volume: float = 0.8, max_volume: float = 1.0,
                 prefill_s: float = 0.06, clock=time.monotonic) -> None:
        self.rate = rate
        self.prefill_s = prefill_s
        self.max_volume = max_volume
        self.stats = BufferStats()
        self._clock = clock
        self._lock = threading.Lock()
        self._chunks: deque[_Chunk] = deque()
        self._queued = 0
        self._playing = False
        self._first_queued_at: float | None = None
        self._dry_at: float | None = None
        self._earcons: list[list] = []          # [array, pos]
        self._gain = self._target = min(volume, max_volume)

    # --- loop side ---

    def push(self, samples: np.ndarray, t_received: float | None = None) -> None:
        """Queue float32 samples at the device rate. `t_received` marks the chunk for on_played."""
        if not len(samples):
            return
        now = self._clock()
        with self._lock:
            if not self._playing and self._queued == 0:
                self._first_queued_at = now
                if self._dry_at is not None and now - self._dry_at < 1.0 and t_received is None:
                    self.stats.underruns += 1
                self._dry_at = None
            self._chunks.append(_Chunk(samples, 0, t_received, t_received is not None))
            self._queued += len(samples)

    def flush(self) -> float:
        """Drop queued reply audio (after a 4 ms fade). Returns the seconds dropped."""
        with self._lock:
            fade_n = int(self.FADE_S * self.rate) if self._playing else 0
            head = np.zeros(0, np.float32)
            if fade_n:
                head = self._take(fade_n)
                head = head * np.linspace(1.0, 0.0, len(head), dtype=np.float32)
            dropped = self._queued
            self._chunks.clear()
            self._queued = 0
            if len(head):
                self._chunks.append(_Chunk(head))
                self._queued = len(head)
            self._dry_at = None
            self.stats.flushes += 1
        self.stats.dropped_s += dropped / self.rate
        return dropped / self.rate

    def add_earcon(self, name: str) -> None:
        """Mix an earcon into the output from the next block on."""
        sound = earcons.earcon(name, self.rate)
        with self._lock:
            self._earcons.append([sound, 0])

    def set_volume(self, volume: float, max_volume: float | None = None) -> None:
        """Set the volume (0..1), capped by max_volume; reached over RAMP_S."""
        if max_volume is not None:
            self.max_volume = max_volume
        self._target = float(min(max(volume, 0.0), self.max_volume))

    @property
    def volume(self) -> float:
        return self._target

    @property
    def queued_s(self) -> float:
        """Seconds of reply audio waiting, not counting what the device already holds."""
        return self._queued / self.rate

    @property
    def active(self) -> bool:
        """True while reply audio or an earcon is still to be pulled."""
        return self._queued > 0 or bool(self._earcons)

    # --- device side ---

    def pull(self, n: int) -> tuple[np.ndarray, list[tuple[float, int]]]:
        """The next `n` samples (float32) and the (t_received, offset) of marks that start in them."""
        out = np.zeros(n, np.float32)
        marks: list[tuple[float, int]] = []
        sounded = False
        with self._lock:
            if not self._playing and self._queued:
                waited = self._clock() - (self._first_queued_at or 0.0)
                if self._queued >= self.prefill_s * self.rate or waited >= self.prefill_s:
                    self._playing = True
            if self._playing:
                filled = 0
                while filled < n and self._chunks:
                    c = self._chunks[0]
                    if c.marked and c.pos == 0:
                        marks.append((c.t_received, filled))  # type: ignore[arg-type]
                        c.marked = False
                    k = min(n - filled, len(c.data) - c.pos)
                    out[filled:filled + k] = c.data[c.pos:c.pos + k]
                    c.pos += k
                    filled += k
                    if c.pos >= len(c.data):
                        self._chunks.popleft()
                self._queued -= filled
                sounded = filled > 0
                self.stats.played_s += filled / self.rate
                if not self._chunks:
                    self._playing = False
                    self._dry_at = self._clock()
            if self._earcons:
                sounded = True
                for e in self._earcons:
                    sound, pos = e
                    k = min(n, len(sound) - pos)
                    out[:k] += sound[pos:pos + k]
                    e[1] = pos + k
                self._earcons = [e for e in self._earcons if e[1] < len(e[0])]
        if sounded:
            self._apply_gain(out)
        else:
            self._gain = self._target   # a ramp over silence is inaudible: skip the work
        return out, marks

    def _take(self, n: int) -> np.ndarray:
        parts, got = [], 0
        while got < n and self._chunks:
            c = self._chunks[0]
            k = min(n - got, len(c.data) - c.pos)
            parts.append(c.data[c.pos:c.pos + k])
            c.pos += k
            got += k
            if c.pos >= len(c.data):
                self._chunks.popleft()
        self._queued -= got
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _apply_gain(self, out: np.ndarray) -> None:
        target = self._target
        if self._gain != target:
            step = 1.0 / max(1, int(self.RAMP_S * self.rate))   # full scale in RAMP_S
            need = int(np.ceil(abs(target - self._gain) / step))
            k = min(len(out), need)
            ramp = np.linspace(self._gain, target, need + 1, dtype=np.float32)[1:k + 1]
            out[:k] *= ramp
            out[k:] *= target
            self._gain = target if k == need else float(ramp[-1])
        elif target != 1.0:
            out *= target
        np.clip(out, -1.0, 1.0, out=out)


class BufferedSpeaker:
    """What both speakers share: 24 kHz in, resampled to the device rate, into a PlaybackBuffer.

    Subclasses run the device side: they call `_pull(n)` once per device block and say when
    that block will be heard (`t_dac`), which turns marks into `on_played` calls.
    """

    def __init__(self, device_rate: int, *, volume: float, max_volume: float,
                 prefill_s: float) -> None:
        self.device_rate = device_rate
        self.buffer = PlaybackBuffer(device_rate, volume=volume, max_volume=max_volume,
                                     prefill_s=prefill_s)
        self._resampler = Resampler(REPLY_RATE, device_rate)
        self.on_played: Callable[[float, float], None] | None = None
        self._heard_until = 0.0     # monotonic time the last pulled reply leaves the device
        self._sound_until = 0.0     # ... the last pulled reply or earcon
        self._half_sample = b""     # an odd byte of a chunk, completed by the next chunk
        self._reference: FarEndBuffer | None = None
        self._ref_resampler: Resampler | None = None

    def feed_reference(self, far: FarEndBuffer) -> None:
        """Record everything played (replies, earcons, silence) into `far` at 16 kHz, with the
        time it is heard: the echo canceller's reference. Call before the device opens."""
        self._ref_resampler = Resampler(self.device_rate, MIC_RATE)
        self._reference = far

    # --- the Speaker protocol ---

    def write(self, pcm: bytes, t_received: float | None = None) -> None:
        """Queue 24 kHz int16 mono reply audio; never blocks. A chunk of an odd byte count
        (half a sample, a server's slip) keeps its last byte for the next chunk."""
        if self._half_sample or len(pcm) % 2:
            pcm = self._half_sample + pcm
            cut = len(pcm) - len(pcm) % 2
            pcm, self._half_sample = pcm[:cut], pcm[cut:]
        samples = np.frombuffer(pcm, np.int16)
        out = self._resampler.process(samples)
        self.buffer.push(out.astype(np.float32) / 32768.0, t_received)

    def flush(self) -> float:
        """Drop queued reply audio; silent within one device block. Returns seconds dropped."""
        self._resampler.reset()
        self._half_sample = b""
        return self.buffer.flush()

    @property
    def busy(self) -> bool:
        """True while reply audio is queued or still coming out of the device (not earcons)."""
        return self.buffer.queued_s > 0 or time.monotonic() < self._heard_until

    async def drain(self) -> None:
        """Wait until everything queued (replies and earcons) has been heard."""
        while self.busy or self.buffer.active or time.monotonic() < self._sound_until:
            # Sleep until it should be over (not 100 times a second through every reply).
            now = time.monotonic()
            left = max(self.buffer.queued_s, self._heard_until - now, self._sound_until - now)
            await asyncio.sleep(min(max(left, 0.01), 0.25))

    def play_earcon(self, name: str) -> None:
        """Mix a short synthesized sound into the output (see device.audio.earcons)."""
        self.buffer.add_earcon(name)

    def set_volume(self, volume: float) -> None:
        """Change the volume (0..1, capped by max_volume) with a short ramp."""
        self.buffer.set_volume(volume)

    @property
    def volume(self) -> float:
        return self.buffer.volume

    @property
    def stats(self) -> BufferStats:
        return self.buffer.stats

    # --- device side ---

    def _pull(self, n: int, t_dac: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """Next block of `n` samples, to be heard from `t_dac`; returns (block, played marks)."""
        had_reply, had_sound = self.buffer.queued_s > 0, self.buffer.active
        block, marks = self.buffer.pull(n)
        if self._reference is not None and self._ref_resampler is not None:
            ref = self._ref_resampler.process(block)
            # Stamped by its end: soxr hands out bursts that end `delay_s` before this block's
            # end. Stamped with the block's start, a burst was placed up to 30 ms after it was
            # heard, and the canceller's reference lagged the echo.
            end = t_dac + n / self.device_rate - self._ref_resampler.delay_s
            self._reference.push(ref, end - len(ref) / MIC_RATE)
        if had_reply:
            self._heard_until = t_dac + n / self.device_rate
        if had_sound:
            self._sound_until = t_dac + n / self.device_rate
        # never before it arrived: with an empty device buffer `t_dac` is the time of the pull
        return block, [(t_recv, max(t_recv, t_dac + off / self.device_rate))
                       for t_recv, off in marks]

    def _report_played(self, played: list[tuple[float, float]]) -> None:
        cb = self.on_played
        if cb is not None:
            for t_recv, t_played in played:
                cb(t_recv, t_played)
