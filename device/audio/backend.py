"""What the daemon needs from a microphone and a speaker, whatever is behind them.

Two backends implement these: sounddevice (PortAudio: ALSA on a Pi, PulseAudio in tests) and
WAV files (a mic file paced in real time, a speaker that writes a file at the pace of a real
device). The daemon only sees these two protocols.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from device.audio.gating import GatedAudio

#: What the Live API takes: 16 kHz, 16-bit, mono.
MIC_RATE = 16_000
#: What the Live API sends back: 24 kHz, 16-bit, mono.
REPLY_RATE = 24_000
#: The frame the VAD gate works on: 20 ms (webrtcvad takes 10, 20 or 30 ms).
FRAME_MS = 20
FRAME_SAMPLES = MIC_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2


@dataclass(frozen=True, slots=True)
class MicFrame:
    """FRAME_MS of 16 kHz mono PCM and the monotonic time its last sample was captured."""
    pcm: bytes
    t: float


class Microphone(Protocol):
    """An opened microphone, already resampled to 16 kHz mono."""

    async def __aenter__(self) -> Microphone: ...
    async def __aexit__(self, *exc: object) -> None: ...

    def frames(self) -> AsyncIterator[MicFrame]:
        """Frames as they are captured. Ends only when a file source is exhausted."""
        ...

    def gated(self, gate: object) -> AsyncIterator[GatedAudio]:
        """What the VAD `gate` makes of the frames, in hand-overs (device/audio/gating.py),
        the gate run on the capture side. Ends only when a file source is exhausted."""
        ...


class Speaker(Protocol):
    """An opened speaker taking 24 kHz mono PCM; resampling and volume happen inside."""

    #: Called in the event loop as (t_received, t_played) when the first sample of a chunk
    #: written with `t_received` is handed to the device.
    on_played: Callable[[float, float], None] | None

    async def __aenter__(self) -> Speaker: ...
    async def __aexit__(self, *exc: object) -> None: ...

    def write(self, pcm: bytes, t_received: float | None = None) -> None:
        """Queue reply audio; never blocks."""
        ...

    def flush(self) -> float:
        """Drop everything queued, silencing within one device period. Returns seconds dropped."""
        ...

    async def drain(self) -> None:
        """Wait until everything queued has been played."""
        ...

    @property
    def busy(self) -> bool:
        """True while reply audio is queued or playing."""
        ...

    def play_earcon(self, name: str) -> None:
        """Play a short synthesized sound: wake, listening, thinking, error, offline, sleep."""
        ...
