"""Words the box says by itself (its status for a parent), made with espeak-ng on the box."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np


def synthesize(text: str, rate: int) -> bytes | None:
    """16-bit mono PCM at `rate` saying `text`, or None if espeak-ng is missing or fails."""
    espeak = shutil.which("espeak-ng")
    if not espeak or not text:
        return None
    try:
        out = subprocess.run([espeak, "--stdout", "-s", "150", text], capture_output=True,
                             timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) <= 44 or out[:4] != b"RIFF":
        return None
    src_rate = int.from_bytes(out[24:28], "little")
    pcm = np.frombuffer(out[44:44 + (len(out) - 44) // 2 * 2], dtype="<i2")
    if src_rate != rate:
        import soxr
        pcm = soxr.resample(pcm, src_rate, rate).astype("<i2")
    return pcm.tobytes()
