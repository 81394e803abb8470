"""Talkie's audio: capture, resampling, the VAD gate, playback, earcons; two backends.

`open_audio(cfg.audio)` returns an unopened (Microphone, Speaker) pair; enter both with
`async with`. sounddevice is imported only for the sounddevice backend.
"""

from __future__ import annotations

from device.audio.backend import Microphone, Speaker
from device.audio.factory import open_audio

__all__ = ["Microphone", "Speaker", "open_audio"]
