"""The VAD gate run where the frames are, and its events handed over in batches.

Run in the event loop, the gate woke the loop for every 20 ms frame (50 times a second, while
nobody speaks too) and every frame of speech became its own bus event and its own Live API
message. `Gating` runs the gate (and the echo canceller in front of it) on the capture side
instead, and hands over only what matters:

- SpeechStart (with the pre-roll), SpeechEnd and the audio before them: at once;
- speech in between: every `batch_ms` of audio, merged into one SpeechAudio;
- nothing at all for `heartbeat_ms` of audio: an empty hand-over, so the daemon still sees the
  microphone deliver (the watchdog's health check, the stall check).

Measured by bench/conversation.py (before/after in one run): see the figures in its report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from device.audio.backend import MIC_RATE, MicFrame
from device.events import GateEvent, SpeechAudio

#: Speech is handed over (and sent to the Live API) in pieces of this much audio.
BATCH_MS = 100
#: With nothing to say, the capture side still reports after this much audio.
HEARTBEAT_MS = 500


@dataclass(frozen=True, slots=True)
class GatedAudio:
    """One hand-over from the capture side: gate events, and the microphone seconds behind
    them (silence included)."""
    events: list[GateEvent]
    mic_s: float


class Gating:
    """Feed it the microphone's frames; it returns a GatedAudio when one is due, else None.

    Not thread-safe: one thread feeds it (the capture thread, or the loop for WAV files).
    """

    def __init__(self, gate: Any, *, batch_ms: int = BATCH_MS,
                 heartbeat_ms: int = HEARTBEAT_MS) -> None:
        self.gate = gate
        self._batch_bytes = MIC_RATE * 2 * batch_ms // 1000
        self._heartbeat_s = heartbeat_ms / 1000
        self._events: list[GateEvent] = []
        self._run: list[SpeechAudio] = []
        self._run_bytes = 0
        self._mic_s = 0.0
        self._urgent = False

    def push(self, frames: list[MicFrame]) -> GatedAudio | None:
        for frame in frames:
            self._mic_s += len(frame.pcm) / (2 * MIC_RATE)
            for ev in self.gate.process(frame):
                if isinstance(ev, SpeechAudio):
                    self._run.append(ev)
                    self._run_bytes += len(ev.pcm)
                else:
                    self._close_run()
                    self._events.append(ev)
                    self._urgent = True
        if self._urgent or self._run_bytes >= self._batch_bytes \
                or self._mic_s >= self._heartbeat_s:
            return self._hand_over()
        return None

    def flush(self) -> GatedAudio:
        """Everything not handed over yet (the source ended)."""
        return self._hand_over()

    def _close_run(self) -> None:
        if self._run:
            pcm = self._run[0].pcm if len(self._run) == 1 else \
                b"".join(ev.pcm for ev in self._run)
            self._events.append(SpeechAudio(pcm, self._run[0].t))
            self._run = []
            self._run_bytes = 0

    def _hand_over(self) -> GatedAudio:
        self._close_run()
        out = GatedAudio(self._events, self._mic_s)
        self._events = []
        self._mic_s = 0.0
        self._urgent = False
        return out
