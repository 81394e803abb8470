"""Helpers for the Live session tests: espeak-ng utterances as WAV files, a simulator tuned for
speed, and `talkie simulate` run as a real subprocess against it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.live.simulator import Simulator
from device.audio.pulse_harness import espeak

ROOT = Path(__file__).resolve().parent.parent
RATE = 16_000
#: Short replies keep the real-time playback of each turn well under a second.
SHORT_REPLIES = ("Okay{name}!", "Yes, go on!", "Nice one!", "Tell me more!")


def fast_sim(**kw: Any) -> Simulator:
    kw.setdefault("voice", "tone")
    kw.setdefault("pace", 20.0)
    kw.setdefault("first_byte_delay_s", 0.05)
    kw.setdefault("reply_texts", SHORT_REPLIES)
    return Simulator(**kw)


def utterance(text: str = "Hello Talkie, can you hear me?") -> np.ndarray:
    return espeak(text, RATE)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def conversation_wav(path: Path, texts: list[str], gap_s: float = 2.5,
                     lead_s: float = 0.3, tail_s: float = 1.5) -> Path:
    """The child says each text in turn, with `gap_s` of silence for the toy to answer."""
    silence = lambda s: np.zeros(int(RATE * s), np.int16)  # noqa: E731
    parts = [silence(lead_s)]
    for i, text in enumerate(texts):
        parts.append(utterance(text))
        parts.append(silence(gap_s if i < len(texts) - 1 else tail_s))
    return write_wav(path, np.concatenate(parts))


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class SimRun:
    rc: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])


async def simulate(sim: Simulator, tmp: Path, mic: Path, *, config: Path | None = None,
                   state: Path | None = None, api_key: str = "test-key",
                   extra: tuple[str, ...] = (), verbose: bool = False,
                   timeout: float = 120) -> SimRun:
    """`python -m device simulate --json` against `sim`, in its own process."""
    args = [sys.executable, "-m", "device", *(["-v"] if verbose else []), "simulate",
            "--mic", str(mic),
            "--out", str(tmp / "out.wav"), "--live-url", sim.base_url,
            "--ca-file", str(sim.ca_file), "--api-key", api_key, "--json",
            "--state-dir", str(state or tmp / "state"), *extra]
    if config is not None:
        args += ["--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY",
                                                            "CREDENTIALS_DIRECTORY")}
    proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"simulate hung; stderr:\n{err.decode()[-3000:]}") from None
    return SimRun(proc.returncode or 0, out.decode(), err.decode())
