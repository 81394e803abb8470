"""The daemon: a few tasks passing small typed events to one state machine.

    mic task ──► VAD gate ──┐
    button / shake ─────────┼──► bus ──► Daemon._handle (owns the state) ──► speaker, LEDs, status
    Live session ───────────┘                  │
                                               └──► LiveSession.send_audio / end_of_speech

Only `_handle` changes the state; tasks never touch each other. A conversation starts with a
press (or shake), keeps going turn after turn, and ends after a quiet spell, a long press, or
a failure the session could not ride through. The mic runs all the time the daemon runs, so
speech said while the session is still connecting is kept and sent once it is up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from device.audio.backend import MIC_RATE, REPLY_RATE, Microphone, Speaker
from device.config import Config, Secret
from device.events import (ButtonEvent, GoAway, Interrupted, ReplyAudio, ResumptionHandle,
                           SpeechAudio, SpeechEnd, SpeechStart, Transcript, TurnComplete)
from device.live.session import LinkDown, LinkUp, LiveSession
from device.states import State

log = logging.getLogger(__name__)

#: After the toy stops talking the mic stays gated this long, so the room's echo of the last
#: word is not taken for the child (half duplex).
ECHO_TAIL_S = 0.25


@dataclass(frozen=True, slots=True)
class _MicEnded:
    """The microphone source ended (a WAV file is done)."""


@dataclass(frozen=True, slots=True)
class _PlaybackDone:
    """Everything of the last reply has been played (and the echo tail has passed)."""
    turn: int


@dataclass
class Turn:
    """What one exchange looked like, for history, the summary and the logs."""
    speech_end_t: float | None = None
    first_reply_t: float | None = None
    first_sound_t: float | None = None
    child_text: str = ""
    toy_text: str = ""
    reply_bytes: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


@dataclass
class Summary:
    """What a run did; `talkie simulate --json` prints it."""
    ok: bool = True
    turns: int = 0
    mic_audio_s: float = 0.0
    uploaded_audio_s: float = 0.0
    reply_audio_s: float = 0.0
    connections: int = 0
    errors: list[str] = field(default_factory=list)
    speech_end_to_sound_ms: list[float] = field(default_factory=list)
    reply_byte_to_sound_ms: list[float] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok and not self.errors,
            "turns": self.turns,
            "mic_audio_s": round(self.mic_audio_s, 3),
            "uploaded_audio_s": round(self.uploaded_audio_s, 3),
            "reply_audio_s": round(self.reply_audio_s, 3),
            "connections": self.connections,
            "errors": self.errors,
            "latency_ms": {
                "speech_end_to_sound": [round(v, 1) for v in self.speech_end_to_sound_ms],
                "reply_byte_to_sound": [round(v, 1) for v in self.reply_byte_to_sound_ms],
            },
        }


class Daemon:
    """Talkie's behaviour, independent of where audio, buttons and the Live API come from."""

    def __init__(self, cfg: Config, api_key: Secret | None, *, mic: Microphone, speaker: Speaker,
                 gate: Any, buttons: AsyncIterator[ButtonEvent] | None = None,
                 stop_when_mic_ends: bool = False, quiet_timeout_s: float = 30.0,
                 on_state: Callable[[State], None] | None = None,
                 on_transcript: Callable[[str, str], None] | None = None) -> None:
        self.cfg = cfg
        self._api_key = api_key
        self._mic = mic
        self._speaker = speaker
        self._gate = gate
        self._buttons = buttons
        self._stop_when_mic_ends = stop_when_mic_ends
        self._quiet_timeout_s = quiet_timeout_s
        self._state_listeners = [on_state] if on_state else []
        self._on_transcript = on_transcript
        self._bus: asyncio.Queue[Any] = asyncio.Queue()
        self.state = State.BOOTING
        self.summary = Summary()
        self._session: LiveSession | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._handle: str | None = None
        self._turn = Turn()
        self._in_speech = False
        self._awaiting_reply = False
        self._discard_reply = False
        self._mic_ended = False
        self._last_activity = time.monotonic()
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- wiring ------------------------------------------------------------------------------

    def add_state_listener(self, listener: Callable[[State], None]) -> None:
        """Called with every new state (LEDs, sd_notify STATUS, the status file)."""
        self._state_listeners.append(listener)

    def post(self, event: Any) -> None:
        """Hand an event to the state machine; safe from the loop's thread only."""
        self._bus.put_nowait(event)

    async def run(self) -> Summary:
        """Run until cancelled, or (simulate) until the mic is done and the last reply played."""
        self._speaker.on_played = self._on_played
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mic_task(), name="mic")
                if self._buttons is not None:
                    tg.create_task(self._button_task(), name="buttons")
                tg.create_task(self._quiet_timer(), name="quiet-timer")
                self._set_state(State.IDLE)
                handler = tg.create_task(self._handle_loop(), name="state")
                await self._done.wait()
                handler.cancel()
                await self._end_conversation("finished")
                raise _Finished
        except* _Finished:
            pass
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.summary

    # --- tasks -------------------------------------------------------------------------------

    async def _mic_task(self) -> None:
        async for frame in self._mic.frames():
            self.summary.mic_audio_s += len(frame.pcm) / (2 * MIC_RATE)
            for event in self._gate.process(frame):
                self.post(event)
        self.post(_MicEnded())

    async def _button_task(self) -> None:
        assert self._buttons is not None
        async for event in self._buttons:
            self.post(event)

    async def _quiet_timer(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            quiet = time.monotonic() - self._last_activity
            if self.state is State.LISTENING and not self._in_speech \
                    and quiet > self._quiet_timeout_s:
                self.post(_QuietTimeout())

    async def _handle_loop(self) -> None:
        while True:
            event = await self._bus.get()
            try:
                await self._handle(event)
            except Exception:  # noqa: BLE001 - one bad event must not take the box down
                log.exception("internal error handling %s", type(event).__name__)
                self.summary.errors.append(f"internal error on {type(event).__name__}")
                self._speaker.play_earcon("error")

    # --- the state machine -------------------------------------------------------------------

    async def _handle(self, ev: Any) -> None:  # noqa: C901 - one place owns every transition
        match ev:
            case ButtonEvent(kind="press" | "shake"):
                await self._on_press()
            case ButtonEvent(kind="long_press"):
                if self.state.awake:
                    self._speaker.play_earcon("sleep")
                    await self._end_conversation("long press")
            case SpeechStart():
                self._in_speech = True
                self._last_activity = ev.t
                if self.state is State.THINKING:
                    self._set_state(State.LISTENING)
            case SpeechAudio():
                if self._session is not None:
                    self._session.send_audio(ev.pcm)
                    self.summary.uploaded_audio_s += len(ev.pcm) / (2 * MIC_RATE)
            case SpeechEnd():
                self._in_speech = False
                self._last_activity = ev.t
                if self._session is not None:
                    self._end_of_speech(ev.t)
            case LinkUp():
                self.summary.connections += 1
                if self.state is State.CONNECTING or self.state is State.OFFLINE:
                    self._set_state(State.THINKING if self._awaiting_reply else State.LISTENING)
                    if not self._awaiting_reply:
                        self._speaker.play_earcon("listening")
            case LinkDown(final=True):
                self.summary.errors.append(ev.reason)
                self._speaker.play_earcon("error" if ev.permanent else "offline")
                await self._end_conversation(ev.reason,
                                             State.ERROR if ev.permanent else State.OFFLINE)
            case LinkDown():
                if self.state.awake and not self._awaiting_reply:
                    self._set_state(State.CONNECTING)
            case ResumptionHandle():
                self._handle = ev.handle
            case GoAway():
                pass
            case ReplyAudio():
                self._on_reply_audio(ev)
            case Transcript():
                self._on_transcript_text(ev)
            case Interrupted():
                self._speaker.flush()
                self._turn.interrupted = True
            case TurnComplete():
                self._on_turn_complete(ev)
            case _PlaybackDone(turn=n) if n == self.summary.turns:
                if self.state is State.SPEAKING:
                    self._gate_mute(False)
                    self._set_state(State.LISTENING)
                    self._last_activity = time.monotonic()
                self._check_done()
            case _MicEnded():
                self._mic_ended = True
                if self._in_speech and self._session is not None:
                    self._in_speech = False
                    self._end_of_speech(time.monotonic())
                self._check_done()
            case _QuietTimeout():
                if self.state is State.LISTENING:
                    self._speaker.play_earcon("sleep")
                    await self._end_conversation("quiet")

    async def _on_press(self) -> None:
        self._last_activity = time.monotonic()
        if self.state.awake:
            if self.state in (State.SPEAKING, State.THINKING):
                self._barge_in()
            return
        log.info("wake", extra={"TALKIE_EVENT": "wake"})
        self._speaker.play_earcon("wake")
        self._start_conversation()
        self._set_state(State.CONNECTING)

    def _barge_in(self) -> None:
        """The button always interrupts: silence now, drop the rest of this reply, listen."""
        dropped = self._speaker.flush()
        log.info("barge-in (%.2f s of reply dropped)", dropped, extra={"TALKIE_EVENT": "barge_in"})
        self._discard_reply = self._awaiting_reply
        self._turn.interrupted = True
        self._gate_mute(False)
        self._set_state(State.LISTENING)

    def _end_of_speech(self, t: float) -> None:
        assert self._session is not None
        self._session.end_of_speech()
        self._turn = Turn(speech_end_t=t)
        self._awaiting_reply = True
        self._discard_reply = False
        if self.state is State.LISTENING:
            self._set_state(State.THINKING)

    def _on_reply_audio(self, ev: ReplyAudio) -> None:
        if self._discard_reply or not self.state.awake:
            return
        turn = self._turn
        if turn.first_reply_t is None:
            turn.first_reply_t = ev.t
            self._speaker.write(ev.pcm, t_received=ev.t)
        else:
            self._speaker.write(ev.pcm)
        turn.reply_bytes += len(ev.pcm)
        self.summary.reply_audio_s += len(ev.pcm) / (2 * REPLY_RATE)
        if self.state is not State.SPEAKING:
            self._gate_mute(True)
            self._set_state(State.SPEAKING)

    def _on_transcript_text(self, ev: Transcript) -> None:
        if ev.role == "child":
            self._turn.child_text += ev.text
        else:
            self._turn.toy_text += ev.text
        log.debug("%s: %s", ev.role, ev.text)  # child speech: never at INFO

    def _on_turn_complete(self, ev: TurnComplete) -> None:
        turn = self._turn
        turn.usage = ev.usage
        self._awaiting_reply = False
        self._discard_reply = False
        self.summary.turns += 1
        self.summary.transcript.append((turn.child_text.strip(), turn.toy_text.strip()))
        if self._on_transcript:
            self._on_transcript(turn.child_text.strip(), turn.toy_text.strip())
        log.info("turn %d complete (%.2f s of reply%s)", self.summary.turns,
                 turn.reply_bytes / (2 * REPLY_RATE), ", interrupted" if turn.interrupted else "",
                 extra={"TALKIE_EVENT": "turn"})
        self._spawn(self._after_playback(self.summary.turns))

    async def _after_playback(self, turn: int) -> None:
        await self._speaker.drain()
        await asyncio.sleep(ECHO_TAIL_S)
        self.post(_PlaybackDone(turn))

    def _on_played(self, t_received: float, t_played: float) -> None:
        turn = self._turn
        if turn.first_sound_t is not None or turn.first_reply_t != t_received:
            return
        turn.first_sound_t = t_played
        self.summary.reply_byte_to_sound_ms.append((t_played - t_received) * 1000)
        if turn.speech_end_t is not None:
            self.summary.speech_end_to_sound_ms.append((t_played - turn.speech_end_t) * 1000)
            log.info("reply sounding %.0f ms after the child stopped",
                     (t_played - turn.speech_end_t) * 1000,
                     extra={"TALKIE_EVENT": "latency"})

    # --- conversations -----------------------------------------------------------------------

    def _start_conversation(self) -> None:
        self._gate_mute(False)
        self._awaiting_reply = False
        self._discard_reply = False
        self._session = LiveSession(self.cfg, self._api_key, self.post, handle=self._handle)
        self._session_task = self._spawn(self._session.run())

    async def _end_conversation(self, why: str, then: State = State.IDLE) -> None:
        session, task = self._session, self._session_task
        self._session = self._session_task = None
        if session is not None:
            self._handle = session.handle or self._handle
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            log.info("conversation ended (%s)", why, extra={"TALKIE_EVENT": "conversation_end"})
        self._awaiting_reply = self._in_speech = False
        self._gate_mute(False)
        self._set_state(then)
        self._check_done()

    def _check_done(self) -> None:
        """simulate: stop once the mic is done and nothing is pending or playing."""
        if not (self._stop_when_mic_ends and self._mic_ended):
            return
        if self._awaiting_reply and self._session is not None:
            return
        if self.state is State.SPEAKING or self._speaker.busy:
            return
        self._done.set()

    # --- helpers -----------------------------------------------------------------------------

    def _gate_mute(self, muted: bool) -> None:
        self._gate.muted = muted

    def _set_state(self, state: State) -> None:
        if state is self.state:
            return
        log.info("state %s -> %s", self.state, state,
                 extra={"TALKIE_EVENT": "state", "TALKIE_STATE": str(state)})
        self.state = state
        for listener in self._state_listeners:
            try:
                listener(state)
            except Exception:  # noqa: BLE001 - an LED failing must not stop the toy
                log.exception("state listener failed")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


@dataclass(frozen=True, slots=True)
class _QuietTimeout:
    """Nobody talked for the quiet timeout while the toy was listening."""


class _Finished(Exception):
    """Ends the daemon's task group once a simulate run is done."""

