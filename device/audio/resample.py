"""Streaming resampling and channel picking for audio that arrives in blocks.

A fresh resampler per block would restart its filter at every edge and click 50 times a second;
`Resampler` keeps soxr's filter state between blocks, so the output is one continuous signal.
"""

from __future__ import annotations

import numpy as np
import soxr

from device.audio.backend import FRAME_SAMPLES


class Resampler:
    """Turn int16 mono blocks at `in_rate` into int16 mono blocks at `out_rate`, keeping state.

    Output lags input by soxr's filter delay (a few ms); `flush()` returns the tail at the end.
    Equal rates pass through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self._stream = (None if self.in_rate == self.out_rate else
                        soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32",
                                            quality=quality))

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample one block (int16 or float32 mono); returns int16."""
        if self._stream is None:
            return _to_int16(block)
        x = block.astype(np.float32) / 32768.0 if block.dtype == np.int16 else block.astype(np.float32)
        y = self._stream.resample_chunk(x, last=last)
        return _to_int16(y)

    @property
    def delay_s(self) -> float:
        """How far the output lags the input now: soxr hands out its output in bursts (at
        48 -> 16 kHz, 490 samples every third 10 ms block), so this varies from block to block."""
        return 0.0 if self._stream is None else self._stream.delay() / self.out_rate

    def flush(self) -> np.ndarray:
        """The samples still held in the filter, when the input has ended."""
        return self.process(np.zeros(0, np.float32), last=True)

    def reset(self) -> None:
        """Forget the filter state, e.g. after a flush, so stale audio never comes back."""
        if self._stream is not None:
            self._stream.clear()


def _to_int16(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.int16:
        return x
    return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)


def pick_channel(block: np.ndarray, channel: int) -> np.ndarray:
    """One channel of a (frames, channels) block, as a contiguous mono array."""
    if block.ndim == 1:
        return block
    if channel >= block.shape[1]:
        raise ValueError(f"channel {channel} asked for, but the block has {block.shape[1]}")
    return np.ascontiguousarray(block[:, channel])


class FrameCutter:
    """Collect int16 samples and hand them out in whole VAD frames (20 ms at 16 kHz)."""

    def __init__(self, frame_samples: int = FRAME_SAMPLES) -> None:
        self.frame_samples = frame_samples
        self._pending = np.zeros(0, np.int16)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        data = np.concatenate((self._pending, samples)) if self._pending.size else samples
        n = len(data) // self.frame_samples
        frames = [data[i * self.frame_samples:(i + 1) * self.frame_samples] for i in range(n)]
        self._pending = data[n * self.frame_samples:].copy()
        return frames

    @property
    def pending(self) -> int:
        """Samples held back until a frame is full."""
        return len(self._pending)
