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
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from device.audio.backend import REPLY_RATE, Microphone, Speaker
from device.config import Config, Secret
from device.events import (ButtonEvent, GoAway, Interrupted, ReplyAudio, ResumptionHandle,
                           SpeechAudio, SpeechEnd, SpeechStart, Transcript, TurnComplete,
                           VoiceBargeIn)
from device.gpio.volume import VolumeChange
from device.live.continuity import HandleStore, recap
from device.live.ratelimit import ConnectLimiter
from device.live.session import HandleRefused, LinkDown, LinkUp, LiveSession
from device.live.setup import SharedClient
from device.states import State

if TYPE_CHECKING:
    from device.history.store import HistoryStore
    from device.limits import Limits

log = logging.getLogger(__name__)

#: After the toy stops talking the mic stays gated this long, so the room's echo of the last
#: word is not taken for the child (half duplex).
ECHO_TAIL_S = 0.25


@dataclass(frozen=True, slots=True)
class _MicEnded:
    """The microphone source ended (a WAV file is done)."""


@dataclass(frozen=True, slots=True)
class AudioFault:
    """The microphone or speaker failed (`error` set) or came back (`error` None)."""
    error: str | None


@dataclass(frozen=True, slots=True)
class ConversationOpened:
    """History has an id for the new conversation (journald's TALKIE_SESSION)."""
    conversation_id: str


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


#: The summary keeps this many of the latest latencies and errors: `talkie run` lives for
#: weeks, and a list of every turn's would grow as long.
SUMMARY_KEEPS = 1000


def _recent() -> deque[Any]:
    return deque(maxlen=SUMMARY_KEEPS)


@dataclass
class Summary:
    """What a run did; `talkie simulate --json` prints it."""
    ok: bool = True
    turns: int = 0
    mic_audio_s: float = 0.0
    uploaded_audio_s: float = 0.0
    reply_audio_s: float = 0.0
    connections: int = 0
    reconnects: int = 0
    resumed: int = 0
    errors: deque[str] = field(default_factory=_recent)
    speech_end_to_sound_ms: deque[float] = field(default_factory=_recent)
    reply_byte_to_sound_ms: deque[float] = field(default_factory=_recent)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok and not self.errors,
            "turns": self.turns,
            "mic_audio_s": round(self.mic_audio_s, 3),
            "uploaded_audio_s": round(self.uploaded_audio_s, 3),
            "reply_audio_s": round(self.reply_audio_s, 3),
            "connections": self.connections,
            "reconnects": self.reconnects,
            "resumed": self.resumed,
            "errors": list(self.errors),
            "latency_ms": {
                "speech_end_to_sound": [round(v, 1) for v in self.speech_end_to_sound_ms],
                "reply_byte_to_sound": [round(v, 1) for v in self.reply_byte_to_sound_ms],
            },
        }


class Daemon:
    """Talkie's behaviour, independent of where audio, buttons and the Live API come from."""

    def __init__(self, cfg: Config, api_key: Secret | None, *, mic: Microphone, speaker: Speaker,
                 gate: Any, buttons: AsyncIterator[ButtonEvent | VolumeChange] | None = None,
                 limits: Limits | None = None, history: HistoryStore | None = None,
                 handles: HandleStore | None = None,
                 stop_when_mic_ends: bool = False,
                 on_state: Callable[[State], None] | None = None,
                 on_transcript: Callable[[str, str], None] | None = None,
                 on_status_request: Callable[[], str] | None = None,
                 on_frame: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self._api_key = api_key
        self._mic = mic
        self._speaker = speaker
        self._gate = gate
        self._buttons = buttons
        self._limits = self.limits = limits
        self._on_frame = on_frame
        self._history = history
        self._handles = handles
        self._on_status_request = on_status_request
        self._conversation: asyncio.Task[str | None] | None = None  # its history id, once made
        self._conversation_started = 0.0
        self._conversation_uploaded_s = 0.0
        self._audio_error: str | None = None
        self._stop_when_mic_ends = stop_when_mic_ends
        self._quiet_timeout_s = cfg.limits.quiet_timeout_s
        self._state_listeners = [on_state] if on_state else []
        self._event_listeners: list[Callable[[Any], None]] = []
        self._on_transcript = on_transcript
        self._bus: asyncio.Queue[Any] = asyncio.Queue()
        self.state = State.BOOTING
        self.summary = Summary()
        self._session: LiveSession | None = None
        # One cap on connects for every conversation of this box (retries and goAway included).
        self._connect_limiter = ConnectLimiter(cfg.live.max_connects_per_minute)
        # One SDK client for every conversation, made at start, not at each press.
        self._live_client = SharedClient(cfg, api_key)
        self._handle_writes = asyncio.Lock()
        self._session_task: asyncio.Task[None] | None = None
        self._resume_handle: str | None = handles.load() if handles is not None else None
        self._turn = Turn()
        self._in_speech = False
        self._awaiting_reply = False
        self._discard_reply = False
        self._mic_ended = False
        self._button_speech = False      # hold mode: the button is held for a turn
        self._heard_while_held = False
        self._turn_ended_by_release = False
        self._last_activity = time.monotonic()
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Task[Any]] = set()

    # --- wiring ------------------------------------------------------------------------------

    @property
    def gate(self) -> Any:
        """The VAD gate (its counters: starts, voice barge-ins)."""
        return self._gate

    def add_state_listener(self, listener: Callable[[State], None]) -> None:
        """Called with every new state (LEDs, sd_notify STATUS, the status file)."""
        self._state_listeners.append(listener)

    def add_event_listener(self, listener: Callable[[Any], None]) -> None:
        """Called with every event before the state machine sees it (status file, journald)."""
        self._event_listeners.append(listener)

    def post(self, event: Any) -> None:
        """Hand an event to the state machine; safe from the loop's thread only."""
        self._bus.put_nowait(event)

    async def run(self) -> Summary:
        """Run until cancelled, or (simulate) until the mic is done and the last reply played."""
        self._speaker.on_played = self._on_played
        self._live_client.start()
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
            await self._wait_writes()
        return self.summary

    # --- tasks -------------------------------------------------------------------------------

    async def _mic_task(self) -> None:
        # The gate runs on the capture side: the loop wakes for its events (speech in 100 ms
        # pieces) and a heartbeat, not for every 20 ms frame (device/audio/gating.py).
        async for got in self._mic.gated(self._gate):
            if self._on_frame is not None:
                self._on_frame()  # the watchdog's proof that audio still flows
            self.summary.mic_audio_s += got.mic_s
            for event in got.events:
                self.post(event)
        self.post(_MicEnded())

    async def _button_task(self) -> None:
        assert self._buttons is not None
        async for event in self._buttons:
            self.post(event)

    async def _quiet_timer(self) -> None:
        """Once a second: the quiet timeout, the parents' limits, the end of quiet hours."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            quiet = now - self._last_activity
            if self.state is State.LISTENING and not self._in_speech \
                    and quiet > self._quiet_timeout_s:
                self.post(_QuietTimeout())
            if self._limits is None:
                continue
            if self.state.awake:
                budget = self._limits.budget_left()
                if self._limits.conversation_over(self._conversation_started, now):
                    self.post(_LimitReached("the longest conversation allowed"))
                elif budget is not None and budget - self._talk_so_far(now) <= 0:
                    self.post(_LimitReached("today's talk time is used up"))
            elif self.state is State.SLEEPING and self._limits.can_wake()[0]:
                self.post(_WakeAllowed())

    def _talk_so_far(self, now: float) -> float:
        """Talk in this conversation not yet counted against the budget."""
        if self.cfg.limits.budget_counts == "audio":
            # what the sockets took (billed), not what the mic heard
            return self._session.uploaded_s if self._session is not None else 0.0
        return now - self._conversation_started

    def _count_talk(self) -> None:
        if self._limits is None:
            return
        seconds = (self._conversation_uploaded_s if self.cfg.limits.budget_counts == "audio"
                   else time.monotonic() - self._conversation_started)
        self._limits.record_talk(seconds)

    async def flush(self) -> None:
        """End any conversation and wait for history writes (SIGTERM: lose nothing)."""
        await self._end_conversation("shutting down", State.IDLE)
        await self._wait_writes()

    async def _wait_writes(self) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=5.0)

    async def _handle_loop(self) -> None:
        while True:
            event = await self._bus.get()
            try:
                for listener in self._event_listeners:
                    listener(event)
                await self._handle(event)
            except Exception as e:  # noqa: BLE001 - one bad event must not take the box down
                what = f"internal error on {type(event).__name__}: {type(e).__name__}"
                if what not in self.summary.errors:  # once per kind: no flood, no earcon storm
                    log.exception("%s", what)
                    self.summary.errors.append(what)
                    self._speaker.play_earcon("error")

    # --- the state machine -------------------------------------------------------------------

    async def _handle(self, ev: Any) -> None:  # noqa: C901 - one place owns every transition
        match ev:
            case ButtonEvent(kind="press" | "shake"):
                await self._on_press(ev.kind)
            case ButtonEvent(kind="release"):
                if self._button_speech:
                    self._release_held_button()
            case ButtonEvent(kind="long_press"):
                if self._session is not None:   # awake, or offline and still trying
                    self._speaker.play_earcon("sleep")
                    await self._end_conversation("long press")
            case ButtonEvent(kind="very_long_press"):
                self._say_status()
            case VolumeChange():
                self._speaker.set_volume(ev.level)
                if not self.state.awake or self.state is State.LISTENING:
                    self._speaker.play_earcon("listening")  # hear the new level
            case AudioFault(error=None):
                if self._audio_error is not None:
                    log.info("audio devices are back", extra={"TALKIE_EVENT": "audio_ok"})
                    self._audio_error = None
                    if self.state is State.ERROR:
                        self._set_state(State.IDLE)
            case AudioFault():
                self._audio_error = ev.error
                self.summary.errors.append(ev.error)
                await self._end_conversation(ev.error, State.ERROR)
            case VoiceBargeIn(excess_db=excess):
                if self.state is State.SPEAKING:
                    self._barge_in(f"voice, {excess:.1f} dB over the toy's echo")
                else:
                    log.debug("voice over the toy's last sound (%.1f dB over its echo), "
                              "already %s", excess, self.state.value)
            case SpeechStart():
                self._in_speech = True
                self._heard_while_held |= self._button_speech
                self._last_activity = ev.t
                if self.state is State.THINKING:
                    self._set_state(State.LISTENING)
            case SpeechAudio():
                if self._session is not None:
                    self._session.send_audio(ev.pcm)
            case SpeechEnd():
                self._in_speech = False
                self._last_activity = ev.t
                if self._button_speech:
                    pass  # push-to-talk: the release ends the turn, not a pause
                elif self._turn_ended_by_release:
                    self._turn_ended_by_release = False   # that turn has already ended
                elif self._session is not None:
                    self._end_of_speech(ev.t)
            case LinkUp():
                self.summary.connections += 1
                if self.summary.connections > 1 and ev.resumed:
                    self.summary.resumed += 1
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
                self.summary.reconnects += 1
                if self.state is State.CONNECTING and not ev.planned:
                    # The child pressed and is waiting: say the toy cannot get through (it
                    # keeps trying, and what the child says meanwhile is kept).
                    self._speaker.play_earcon("offline")
                    self._set_state(State.OFFLINE)
                elif self.state is State.LISTENING and not self._awaiting_reply:
                    # A reply still playing (its gate muted) ends as usual, and a thinking
                    # box keeps waiting for the resent turn's answer.
                    self._set_state(State.CONNECTING)
            case HandleRefused():
                self._resume_handle = None
                self._spawn(self._save_handle(None), write=True)
            case ResumptionHandle():
                self._resume_handle = ev.handle
                self._spawn(self._save_handle(ev.handle), write=True)
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
            case _LimitReached(why=why):
                if self.state.awake:
                    self._speaker.play_earcon("sleep")
                    await self._end_conversation(why)
            case _WakeAllowed():
                if self.state is State.SLEEPING:
                    self._set_state(State.IDLE)

    async def _on_press(self, how: str = "press") -> None:
        self._last_activity = time.monotonic()
        if self.state is State.OFFLINE and self._session is not None:
            self._speaker.play_earcon("offline")   # still trying to get through
            return
        if self.state.awake:
            if self.state in (State.SPEAKING, State.THINKING) and how == "press":
                self._barge_in()
            if self.cfg.gpio.button_mode == "hold" and how == "press":
                self._hold_button()
            return
        if self._audio_error is not None:
            # the child pressed: tell them (the LED already shows error) rather than stay silent
            self._speaker.play_earcon("error")
            return
        if self._limits is not None:
            allowed, why = self._limits.can_wake()
            if not allowed:
                log.info("not waking: %s", why.replace("_", " "),
                         extra={"TALKIE_EVENT": "wake_refused"})
                self._speaker.play_earcon("sleep")
                self._set_state(State.SLEEPING)
                return
        log.info("wake (%s)", how, extra={"TALKIE_EVENT": "wake"})
        self._speaker.play_earcon("wake")
        if self.cfg.gpio.button_mode == "hold" and how == "press":
            self._hold_button()
        await self._start_conversation()
        self._set_state(State.CONNECTING)

    async def _save_handle(self, handle: str | None) -> None:
        # One write at a time, in order: a forgotten handle must not outlive its successor.
        if self._handles is not None:
            async with self._handle_writes:
                await asyncio.to_thread(self._handles.save, handle)

    def _hold_button(self) -> None:
        """Push-to-talk: the child holds the button while talking."""
        self._button_speech = True
        self._heard_while_held = self._in_speech

    def _release_held_button(self) -> None:
        """Letting go ends the child's turn, if they said something while holding it (the
        press that wakes the box is often a tap)."""
        heard = self._heard_while_held
        self._button_speech = self._heard_while_held = False
        if heard and self._session is not None:
            self._turn_ended_by_release = self._in_speech  # the gate's own end comes later
            self._in_speech = False
            self._end_of_speech(time.monotonic())

    def _say_status(self) -> None:
        """Very long press: the box says how it is (Wi-Fi, address), for a parent."""
        text = self._on_status_request() if self._on_status_request else ""
        log.info("status asked for on the button: %s", text or "(no status source)",
                 extra={"TALKIE_EVENT": "status_spoken"})
        self._spawn(self._speak_text(text))

    async def _speak_text(self, text: str) -> None:
        from device.speech import synthesize
        pcm = await asyncio.to_thread(synthesize, text, REPLY_RATE) if text else None
        if pcm:
            self._speaker.write(pcm)
        else:
            self._speaker.play_earcon("listening" if self._audio_error is None else "error")

    def _barge_in(self, how: str = "button") -> None:
        """Silence now, drop the rest of this reply, listen. The button always interrupts; a
        voice does when the gate's barge-in detector heard the child over the toy."""
        dropped = self._speaker.flush()
        log.info("barge-in by %s (%.2f s of reply dropped)", how, dropped,
                 extra={"TALKIE_EVENT": "barge_in"})
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
        if self._on_transcript:
            self._on_transcript(turn.child_text.strip(), turn.toy_text.strip())
        log.info("turn %d complete (%.2f s of reply%s)", self.summary.turns,
                 turn.reply_bytes / (2 * REPLY_RATE), ", interrupted" if turn.interrupted else "",
                 extra={"TALKIE_EVENT": "turn"})
        if self._history is not None and self._conversation is not None:
            self._spawn(self._save_turn(self._conversation, turn), write=True)
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
            ms = (t_played - turn.speech_end_t) * 1000
            log.info("reply sounding %.0f ms after the child stopped", ms,
                     extra={"TALKIE_EVENT": "latency", "TALKIE_LATENCY_MS": round(ms)})

    # --- conversations -----------------------------------------------------------------------

    async def _start_conversation(self) -> None:
        self._gate_mute(False)
        self._awaiting_reply = False
        self._discard_reply = False
        self._conversation_started = time.monotonic()
        self._conversation_uploaded_s = 0.0
        handle = self._resume_handle
        if handle is None and self._handles is not None:
            handle = self._handles.load()  # expired while idle: start afresh, with a recap
        # The recap is read from history when a connection starts without a handle (also
        # when the server refuses the handle).
        self._session = LiveSession(self.cfg, self._api_key, self.post, handle=handle,
                                    recap=self._recap, limiter=self._connect_limiter,
                                    client=self._live_client)
        self._session_task = self._spawn(self._session.run())
        if self._history is not None:
            self._conversation = self._spawn(self._open_history_conversation(), write=True)

    async def _recap(self) -> str:
        if self._history is None:
            return ""
        from device.history.store import HistoryError
        try:
            messages = await self._history.recent_turns(6)
        except HistoryError:
            return ""
        turns: list[tuple[str, str]] = []
        for m in messages:
            if m.sender == "user":
                turns.append((m.content, ""))
            elif turns and not turns[-1][1]:
                turns[-1] = (turns[-1][0], m.content)
        return recap(turns)

    async def _open_history_conversation(self) -> str | None:
        from device.history.store import HistoryError
        assert self._history is not None
        try:
            cid = await self._history.start_conversation(
                metadata={"child": self.cfg.child.name, "model": self.cfg.live.model})
        except HistoryError:
            return None  # logged by the store; the toy keeps talking
        self.post(ConversationOpened(cid))
        return cid

    async def _save_turn(self, conversation: asyncio.Task[str | None], turn: Turn) -> None:
        from device.history.store import HistoryError
        assert self._history is not None
        cid = await conversation
        if cid is None:
            self.summary.errors.append("a turn could not be saved to history")
            return
        timings = {k: v for k, v in {
            "speech_end_to_reply_ms": _ms(turn.speech_end_t, turn.first_reply_t),
            "speech_end_to_sound_ms": _ms(turn.speech_end_t, turn.first_sound_t),
            "reply_s": turn.reply_bytes / (2 * REPLY_RATE),
            "interrupted": 1.0 if turn.interrupted else None}.items() if v is not None}
        try:
            await self._history.add_turn(cid, turn.child_text.strip(), turn.toy_text.strip(),
                                         timings, turn.usage)
        except HistoryError:
            self.summary.errors.append("a turn could not be saved to history")

    async def _close_history_conversation(self, conversation: asyncio.Task[str | None]) -> None:
        from device.history.store import HistoryError
        assert self._history is not None
        cid = await conversation
        if cid is None:
            return
        try:
            await self._history.end_conversation(cid)
        except HistoryError:
            pass

    async def _end_conversation(self, why: str, then: State = State.IDLE) -> None:
        session, task = self._session, self._session_task
        self._session = self._session_task = None
        if session is not None:
            self._resume_handle = session.handle or self._resume_handle
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            log.info("conversation ended (%s)", why, extra={"TALKIE_EVENT": "conversation_end"})
        if session is not None:
            self._conversation_uploaded_s = session.uploaded_s
            self.summary.uploaded_audio_s += session.uploaded_s
        if task is not None:
            self._count_talk()
        conversation, self._conversation = self._conversation, None
        turn = self._turn
        if self._awaiting_reply and conversation is not None and self._history is not None \
                and (turn.child_text.strip() or turn.toy_text.strip()):
            # Cut off mid-reply (SIGTERM, long press, link lost): keep what was said so far.
            turn.interrupted = True
            self._spawn(self._save_turn(conversation, turn), write=True)
        if conversation is not None:
            # finished in the background, but `flush()` waits for it before exit
            self._spawn(self._close_history_conversation(conversation), write=True)
        if then is State.IDLE and self._limits is not None and not self._limits.can_wake()[0]:
            then = State.SLEEPING
        self._awaiting_reply = self._in_speech = False
        self._button_speech = self._heard_while_held = self._turn_ended_by_release = False
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

    def _spawn(self, coro: Any, *, write: bool = False) -> asyncio.Task[Any]:
        """A background task; `write` ones (history) are waited for at exit, never cancelled."""
        tasks = self._writes if write else self._tasks
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task


@dataclass(frozen=True, slots=True)
class _QuietTimeout:
    """Nobody talked for the quiet timeout while the toy was listening."""


@dataclass(frozen=True, slots=True)
class _LimitReached:
    """A parents' limit ends this conversation."""
    why: str


@dataclass(frozen=True, slots=True)
class _WakeAllowed:
    """Quiet hours are over (or a new day brought a new budget)."""


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 1)


class _Finished(Exception):
    """Ends the daemon's task group once a simulate run is done."""

