"""An acoustic echo path, offline: what the speaker plays, as the microphone hears it.

The speaker's signal is delayed (the DAC/ADC buffers and the air between speaker and mic),
filtered by a synthetic room impulse response (exponentially decaying noise with a given
RT60) and mixed with the child's speech at a chosen speech-to-echo ratio. Benches and tests
use it on numpy arrays; the real-time PulseAudio version can reuse `room_impulse_response`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

RATE = 16_000


def room_impulse_response(rt60_s: float = 0.25, rate: int = RATE, length_s: float | None = None,
                          seed: int = 0) -> np.ndarray:
    """Exponentially decaying noise: energy falls 60 dB in `rt60_s`. Peak-normalised to 1.

    A direct-path tap leads so the echo has a clear onset, as in a small toy enclosure.
    """
    rng = np.random.default_rng(seed)
    n = int(rate * (length_s if length_s is not None else rt60_s))
    t = np.arange(n) / rate
    # amplitude decays by 60 dB (factor 1000) over rt60: exp(-6.91 t / rt60)
    h = rng.standard_normal(n) * np.exp(-6.908 * t / rt60_s)
    h[0] = 3.0 * np.max(np.abs(h[1:]))
    return (h / np.max(np.abs(h))).astype(np.float64)


@dataclass(frozen=True)
class EchoPath:
    """Speaker-to-mic path: `delay_ms` of latency, then a room of `rt60_s`, scaled by `gain`."""
    delay_ms: float = 40.0
    rt60_s: float = 0.25
    gain: float = 0.5
    seed: int = 0

    def echo(self, far: np.ndarray) -> np.ndarray:
        """The echo the mic picks up for far-end samples `far` (float, same length)."""
        h = room_impulse_response(self.rt60_s, seed=self.seed)
        h *= self.gain / np.sqrt(np.sum(h * h))  # unit energy times gain: loudness independent of RT60
        d = int(RATE * self.delay_ms / 1000)
        wet = np.convolve(far.astype(np.float64), h)[: len(far)]
        out = np.zeros(len(far))
        out[d:] = wet[: len(far) - d]
        return out


def mix(echo: np.ndarray, speech: np.ndarray | None, ser_db: float | None,
        noise_db: float = -70.0, seed: int = 1) -> np.ndarray:
    """Mic signal: echo plus speech scaled to `ser_db` speech-to-echo ratio (power over the
    samples where speech is active), plus a faint noise floor (dBFS). Returns float in int16 units.
    """
    rng = np.random.default_rng(seed)
    out = echo.astype(np.float64).copy()
    if speech is not None:
        s = np.zeros(len(out))
        s[: len(speech)] = speech[: len(out)]
        active = np.abs(s) > 1e-3 * max(1.0, float(np.max(np.abs(s))))
        p_s = np.mean(s[active] ** 2) if active.any() else 0.0
        p_e = np.mean(echo[active] ** 2) if active.any() else 0.0
        if p_s > 0 and p_e > 0 and ser_db is not None:
            s *= np.sqrt(p_e / p_s * 10 ** (ser_db / 10))
        out += s
    out += rng.standard_normal(len(out)) * 32768 * 10 ** (noise_db / 20)
    return out


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def espeak(text: str, voice: str = "en-us", pitch: int = 50, speed: int = 160,
           rate: int = RATE) -> np.ndarray:
    """Speech from espeak-ng at `rate` Hz as float in int16 units (espeak-ng makes 22.05 kHz)."""
    import soxr
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; apt-get install espeak-ng")
    wav = subprocess.run([exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text],
                         check=True, capture_output=True).stdout
    # WAV header from espeak-ng is 44 bytes, 22050 Hz mono int16
    pcm = np.frombuffer(wav[44:], dtype="<i2").astype(np.float32)
    return soxr.resample(pcm, 22050, rate).astype(np.float64)
