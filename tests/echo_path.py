"""An acoustic echo path, offline: what the speaker plays, as the microphone hears it.

The speaker's signal is delayed (the DAC/ADC buffers and the air between speaker and mic),
filtered by a synthetic room impulse response (exponentially decaying noise with a given
RT60) and mixed with the child's speech at a chosen speech-to-echo ratio. Benches and tests
use it on numpy arrays. `room_impulse_response` lives in device/audio/echo_room.py, whose
`EchoRoom` is the real-time version of this path on the private PulseAudio server.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from device.audio.echo_room import room_impulse_response

__all__ = ["RATE", "EchoPath", "espeak", "mix", "room_impulse_response", "to_int16"]

RATE = 16_000


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
