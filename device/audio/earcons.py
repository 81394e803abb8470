"""Short, soft sounds that tell a child what the box is doing, synthesized with numpy.

Each earcon is a few sine notes with smooth attack and release (no clicks), quiet enough to sit
under speech, and distinct in contour: wake rises, sleep falls, thinking is a soft double pulse,
error is low and dissonant-free but flat, offline is two low notes, listening a single bright
blip. They are made once per (name, rate) and cached.
"""

from __future__ import annotations

import functools

import numpy as np

#: name -> list of (frequency Hz, duration s, gain 0..1); frequency 0 is a rest.
_NOTES: dict[str, list[tuple[float, float, float]]] = {
    "wake": [(523.25, 0.09, 0.5), (659.25, 0.09, 0.5), (783.99, 0.16, 0.5)],
    "listening": [(880.0, 0.12, 0.45)],
    "thinking": [(587.33, 0.08, 0.3), (0, 0.06, 0), (587.33, 0.08, 0.3)],
    "error": [(311.13, 0.18, 0.5), (293.66, 0.26, 0.5)],
    "offline": [(392.0, 0.14, 0.45), (0, 0.05, 0), (261.63, 0.22, 0.45)],
    "sleep": [(783.99, 0.10, 0.4), (659.25, 0.10, 0.4), (523.25, 0.22, 0.4)],
}

NAMES: tuple[str, ...] = tuple(_NOTES)

#: Peak level of an earcon relative to full scale before the speaker volume applies.
PEAK = 0.35


def earcon(name: str, rate: int) -> np.ndarray:
    """The earcon `name` as float32 mono at `rate` Hz (read-only, cached)."""
    if name not in _NOTES:
        raise ValueError(f"unknown earcon {name!r}; use one of {', '.join(NAMES)}")
    return _make(name, int(rate))


@functools.lru_cache(maxsize=32)
def _make(name: str, rate: int) -> np.ndarray:
    parts = []
    for freq, dur, gain in _NOTES[name]:
        n = int(rate * dur)
        t = np.arange(n, dtype=np.float64) / rate
        if freq <= 0:
            parts.append(np.zeros(n))
            continue
        # A soft timbre: fundamental plus a quiet octave, under a raised-cosine envelope
        # (10 ms attack, 40 % release), so each note starts and ends at zero.
        tone = np.sin(2 * np.pi * freq * t) + 0.2 * np.sin(4 * np.pi * freq * t)
        env = np.ones(n)
        a = min(n // 2, int(0.010 * rate))
        r = min(n - a, int(0.4 * n))
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
        env[n - r:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(r) / r)
        parts.append(gain * tone * env / 1.2)
    out = (np.concatenate(parts) * (PEAK / 0.5)).astype(np.float32)
    out.setflags(write=False)
    return out
