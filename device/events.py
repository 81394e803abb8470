"""The small typed events that flow between Talkie's tasks.

Times are `time.monotonic()` seconds. Audio is 16-bit little-endian mono PCM: 16 kHz towards
the Live API, 24 kHz from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


# --- from the VAD gate ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SpeechStart:
    """The child started speaking; `t` is when the first frame of speech was captured."""
    t: float


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """Audio to stream: speech, its pre-roll, or its hangover. 16 kHz PCM."""
    pcm: bytes
    t: float


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The child stopped speaking (after the hangover); `t` is when that was decided."""
    t: float


@dataclass(frozen=True, slots=True)
class VoiceBargeIn:
    """The child talked over the toy (voice barge-in, after the echo canceller); `t` is when
    the detector was sure. The gate has opened: SpeechStart and the child's words follow."""
    t: float
    #: How much louder than the toy's usual echo the mic was (dB): for the log.
    excess_db: float = 0.0


GateEvent = SpeechStart | SpeechAudio | SpeechEnd | VoiceBargeIn


# --- from the Live session -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReplyAudio:
    """A chunk of the toy's reply, 24 kHz PCM, with the time it arrived from the socket."""
    pcm: bytes
    t: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """Words of the child (`role="child"`) or of the toy (`role="toy"`), as the API wrote them."""
    role: Literal["child", "toy"]
    text: str
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The server cut its reply short: queued reply audio must be dropped at once."""
    t: float


@dataclass(frozen=True, slots=True)
class TurnComplete:
    """The toy finished a reply. `usage` holds the token counts the API reported."""
    t: float
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResumptionHandle:
    """A handle to resume this conversation on a new connection (valid about 2 h)."""
    handle: str


@dataclass(frozen=True, slots=True)
class GoAway:
    """The server will close the connection in `time_left_s` seconds."""
    time_left_s: float


LiveEvent = ReplyAudio | Transcript | Interrupted | TurnComplete | ResumptionHandle | GoAway


# --- from the buttons and switches ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ButtonEvent:
    """A gesture on the big button or the shake switch."""
    kind: Literal["press", "release", "long_press", "very_long_press", "shake"]
    t: float
