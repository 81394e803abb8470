"""Acoustic echo cancellation: what the speaker plays, taken out of what the mic hears.

With a canceller between capture and the VAD gate, the gate may stay open while the toy
speaks and the child can interrupt by voice (`audio.barge_in = "voice"`). Without one the
daemon stays half duplex: the mic is gated during playback and the button barges in.

Two pieces:
- `FarEndBuffer`: the playback callback pushes what it hands to the device (16 kHz mono int16,
  after resampling and volume) with the time its first sample reaches the DAC; the capture side
  reads the reference that was playing while each mic frame was captured.
- engines behind the audio pipeline's `EchoCanceller` seam,
  `process(near: bytes, far_ref: bytes | None) -> bytes`, built by `make_echo_canceller(cfg)`,
  which returns None when the engine is turned off or not installed.

The engine is WebRTC's audio processing module (AEC3 + noise suppression + high-pass filter)
from the `livekit` package (optional extra `talkie[aec]`; manylinux x86_64 and aarch64
wheels). It was chosen by `bench/aec_eval.py`; the figures are in that file's docstring.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from device.config import AudioConfig

log = logging.getLogger(__name__)

RATE = 16_000
#: WebRTC's audio processing works on 10 ms frames.
SUB_MS = 10
SUB_SAMPLES = RATE * SUB_MS // 1000
SUB_BYTES = SUB_SAMPLES * 2

ENGINES = ("none", "webrtc")


class FarEndBuffer:
    """Ring buffer of what the speaker played, indexed by the time each sample hit the DAC.

    Positions are absolute sample counts on the monotonic clock (`round(t * rate)`), so a
    writer and a reader that share a clock need no other handshake. Gaps between pushes (the
    speaker idle) read as silence; anything older than `seconds` reads as silence too.

    `push` is meant for the playback callback: it copies into preallocated memory under a
    short lock and allocates nothing but a numpy view.
    """

    def __init__(self, seconds: float = 2.0, rate: int = RATE) -> None:
        self.rate = rate
        self._size = int(seconds * rate)
        self._ring = np.zeros(self._size, dtype=np.int16)
        self._end = 0        # absolute index one past the newest written sample; 0 = empty
        self._lock = threading.Lock()

    def push(self, pcm: bytes | bytearray | memoryview | np.ndarray, t_dac: float) -> None:
        """Record `pcm` (int16 mono at `rate`) whose first sample is played at `t_dac` (s)."""
        x = pcm if isinstance(pcm, np.ndarray) else np.frombuffer(pcm, dtype=np.int16)
        n = len(x)
        if n == 0:
            return
        if n > self._size:               # only the newest part fits
            t_dac += (n - self._size) / self.rate
            x = x[n - self._size:]
            n = self._size
        start = round(t_dac * self.rate)
        with self._lock:
            oldest = self._end - self._size
            if start < oldest:
                # a late push for a span the ring no longer holds: keep only what still fits,
                # never overwrite newer samples that share its ring positions
                if start + n <= oldest:
                    return
                x = x[oldest - start:]
                n = len(x)
                start = oldest
            if self._end and start > self._end:
                # the speaker was idle in between: that stretch played silence
                self._fill(self._end, min(start, self._end + self._size), None)
            self._fill(start, start + n, x)
            self._end = max(self._end, start + n)

    def read(self, n: int, t_last: float, into: np.ndarray | None = None) -> np.ndarray:
        """The `n` reference samples played up to `t_last` (the time the mic captured the last
        sample of its frame, as in `MicFrame.t`). Silence where nothing was played."""
        out = np.zeros(n, dtype=np.int16) if into is None else into
        end = round(t_last * self.rate) + 1
        start = end - n
        with self._lock:
            lo = max(start, self._end - self._size)
            hi = min(end, self._end)
            if hi <= lo:
                out[:] = 0
                return out
            out[: lo - start] = 0
            out[hi - start:] = 0
            i, j = lo % self._size, hi % self._size
            if i < j:
                out[lo - start: hi - start] = self._ring[i:j]
            else:
                k = self._size - i
                out[lo - start: lo - start + k] = self._ring[i:]
                out[lo - start + k: hi - start] = self._ring[:j]
        return out

    def read_bytes(self, n: int, t_last: float) -> bytes | None:
        """Like `read`, as PCM bytes; None when nothing was played in that span (saves the
        canceller a frame of zeros' work in the common idle case)."""
        end = round(t_last * self.rate) + 1
        with self._lock:
            if self._end == 0 or end - n >= self._end:
                return None
        return self.read(n, t_last).tobytes()

    def clear(self) -> None:
        """Forget everything (the speaker was flushed or reopened)."""
        with self._lock:
            self._ring[:] = 0
            self._end = 0

    def _fill(self, start: int, end: int, x: np.ndarray | None) -> None:
        i, j = start % self._size, end % self._size
        n = end - start
        if n <= 0:
            return
        if i < j or j == 0:
            stop = i + n
            self._ring[i:stop] = 0 if x is None else x
        else:
            k = self._size - i
            if x is None:
                self._ring[i:] = 0
                self._ring[:j] = 0
            else:
                self._ring[i:] = x[:k]
                self._ring[:j] = x[k:]


class WebRtcEchoCanceller:
    """WebRTC AEC3 with noise suppression and a high-pass filter, in process (livekit's APM).

    `process` takes 16 kHz mono int16 frames of any multiple of 10 ms; `far_ref` is what the
    speaker played during that frame (same length), or None for silence. AEC3 estimates the
    remaining delay itself; `delay_ms` is a hint for the part the timestamps do not cover.
    Not thread-safe: call from one task.
    """

    name = "webrtc"

    def __init__(self, *, noise_suppression: bool = True, high_pass_filter: bool = True,
                 auto_gain_control: bool = False, delay_ms: int = 0) -> None:
        from livekit import rtc  # optional extra: talkie[aec]
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=noise_suppression,
            high_pass_filter=high_pass_filter, auto_gain_control=auto_gain_control)
        self._delay_ms = delay_ms
        self._near = bytearray(SUB_BYTES)
        self._far = bytearray(SUB_BYTES)
        self._near_frame = rtc.AudioFrame(self._near, RATE, 1, SUB_SAMPLES)
        self._far_frame = rtc.AudioFrame(self._far, RATE, 1, SUB_SAMPLES)
        self._silence = bytes(SUB_BYTES)

    def process(self, near: bytes, far_ref: bytes | None) -> bytes:
        n = len(near)
        if n % SUB_BYTES:
            raise ValueError(f"echo canceller takes 16 kHz int16 frames of 10 ms multiples "
                             f"({SUB_BYTES} bytes each); got {n} bytes")
        if far_ref is not None and len(far_ref) != n:
            raise ValueError(f"far-end reference is {len(far_ref)} bytes, the mic frame {n}; "
                             f"read the reference with the mic frame's length")
        out = bytearray(n)
        for i in range(0, n, SUB_BYTES):
            self._far[:] = self._silence if far_ref is None else far_ref[i:i + SUB_BYTES]
            self._apm.process_reverse_stream(self._far_frame)
            self._near[:] = near[i:i + SUB_BYTES]
            # AEC3 wants the delay hint before every capture frame
            self._apm.set_stream_delay_ms(self._delay_ms)
            self._apm.process_stream(self._near_frame)
            out[i:i + SUB_BYTES] = self._near
        return bytes(out)


def webrtc_available() -> bool:
    """Whether the WebRTC engine can be built here (the `livekit` package imports)."""
    try:
        from livekit import rtc  # noqa: F401
    except ImportError:
        return False
    return True


def make_echo_canceller(cfg: AudioConfig) -> WebRtcEchoCanceller | None:
    """The configured echo canceller, or None: turned off, or its package is missing (then
    the daemon stays half duplex and says so once in the log)."""
    engine = getattr(cfg, "echo_canceller", "none")
    if engine == "none":
        if getattr(cfg, "barge_in", "button") == "voice":
            log.warning("audio.barge_in = 'voice' needs an echo canceller; set "
                        "audio.echo_canceller = 'webrtc'. Staying half duplex (button barge-in)")
        return None
    if engine == "webrtc":
        try:
            return WebRtcEchoCanceller(delay_ms=getattr(cfg, "echo_delay_ms", 0))
        except ImportError:
            log.warning("audio.echo_canceller = 'webrtc' but the livekit package is not "
                        "installed; install it with: pip install 'talkie[aec]'. "
                        "Staying half duplex (button barge-in)")
            return None
    raise ValueError(f"unknown echo canceller {engine!r}; use one of {', '.join(ENGINES)}")


def voice_barge_in(cfg: AudioConfig, canceller: object | None) -> bool:
    """Whether the gate may stay open during playback: voice barge-in asked for and a
    canceller running. Otherwise the mic is gated while the box speaks."""
    return getattr(cfg, "barge_in", "button") == "voice" and canceller is not None
