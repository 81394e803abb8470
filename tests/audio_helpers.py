"""Signal helpers for the audio tests (pitch, alignment, mixing)."""

from __future__ import annotations

import numpy as np


def tone(freq: float, seconds: float, rate: int, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def pitch(x: np.ndarray, rate: int) -> float:
    """Dominant frequency of a signal (Hann window, parabolic peak interpolation)."""
    x = x.astype(np.float64)
    x = x - x.mean()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=4 * len(x)))
    k = int(np.argmax(spec[1:])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
    k += 0.5 * (a - c) / (a - 2 * b + c)
    return k * rate / (4 * len(x))


def align(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Offset of `needle` in `haystack` and the normalized correlation there."""
    h = haystack.astype(np.float64)
    n = needle.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(h) + len(n))))
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)[:len(h)]
    lag = int(np.argmax(corr))
    seg = h[lag:lag + len(n)]
    if len(seg) < len(n):
        seg = np.concatenate((seg, np.zeros(len(n) - len(seg))))
    denom = np.sqrt(np.dot(seg, seg) * np.dot(n, n)) or 1.0
    return lag, float(np.dot(seg, n) / denom)


def speech_bounds(x: np.ndarray, rate: int, frame_ms: int = 10, rel_db: float = -40) -> tuple[int, int]:
    """First and last sample of frames within `rel_db` of the loudest frame."""
    n = rate * frame_ms // 1000
    f = x[:len(x) // n * n].astype(np.float64).reshape(-1, n)
    db = 10 * np.log10((f ** 2).mean(axis=1) + 1e-9)
    on = np.nonzero(db > db.max() + rel_db)[0]
    return int(on[0] * n), int((on[-1] + 1) * n)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so active-speech power / noise power = snr_db."""
    s = speech.astype(np.float64)
    nz = noise[:len(s)].astype(np.float64)
    a, b = speech_bounds(speech, 16000)
    p_s = np.mean(s[a:b] ** 2)
    p_n = np.mean(nz ** 2) or 1.0
    nz *= np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))
    return np.clip(s + nz, -32768, 32767).astype(np.int16)
