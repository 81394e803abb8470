"""The device's Live API session: one conversation that survives its connections.

The real service closes every connection after about ten minutes (goAway, then 1011), has
outages, and refuses bad setups with 1007/1008. `LiveSession.run()` rides through that:

- it connects with the newest resumption handle, so the conversation keeps its context;
- audio queued while (re)connecting is kept (bounded) and sent once the link is up, so no word
  is lost; an item leaves the queue only after the socket took it;
- transient failures (1006, 1011, network, DNS, timeouts) are retried with capped, jittered
  exponential backoff; permanent ones (1007, 1008, HTTP 403/404: a bad key, model or URL) end
  the session at once with a single log line that names the cause and the fix;
- a goAway is a planned switch: the next connection opens at once with the newest handle;
- a turn whose answer never came whole (the link broke mid-reply, or the server stayed silent
  for `reply_timeout_s`) is resent on the next connection, so the child gets an answer;
- a handle the server rejects is dropped (HandleRefused) and the conversation starts afresh,
  with the recap of earlier talks in its system instruction;
- every connect passes a per-minute ConnectLimiter.

One task sends, one loops `receive()` (which returns at every turnComplete). Everything the
server says becomes a typed event from `device.events`, handed to `on_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from device.config import Config, Secret
from device.errors import LiveError
from device.events import (GoAway, Interrupted, LiveEvent, ReplyAudio, ResumptionHandle,
                           Transcript, TurnComplete)
from device.live.ratelimit import ConnectLimiter
from device.live.setup import SharedClient, connect_config

log = logging.getLogger(__name__)

#: Audio kept while the link is down: 30 s of 16 kHz PCM. Older audio is dropped first.
MAX_PENDING_BYTES = 30 * 16_000 * 2
#: The most audio one message carries when a backlog goes up: 1 s.
MAX_MESSAGE_BYTES = 16_000 * 2
_END = object()  # end-of-speech marker in the send queue


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The session is connected (again); `resumed` tells whether a handle was accepted."""
    t: float
    resumed: bool
    attempt: int


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The connection was lost; the session retries after `retry_in_s` unless `final`.
    `planned`: a switch the server asked for (goAway, a refused handle), not a failure."""
    t: float
    reason: str
    retry_in_s: float
    final: bool = False
    permanent: bool = False
    planned: bool = False


@dataclass(frozen=True, slots=True)
class HandleRefused:
    """The server refused the resumption handle: forget it; a new conversation begins."""
    handle: str


SessionEvent = LiveEvent | LinkUp | LinkDown | HandleRefused


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: sleep uniform(0, min(cap, base * 2**n))."""
    base_s: float = 0.5
    cap_s: float = 20.0
    max_attempts: int = 8
    #: A connection that lived this long resets the attempt count.
    healthy_after_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt))


#: The fix for a key the service refuses: what the parent runs on the box.
KEY_FIX = "run `talkie setup --api-key-file FILE` with a valid Gemini API key"


class ReplyTimeout(TimeoutError):
    """The server took the child's turn but said nothing for `reply_timeout_s`."""


def _is_bad_key(detail: str) -> bool:
    return "api key" in detail.lower()


def classify(exc: BaseException) -> tuple[bool, str]:
    """(permanent, a sentence naming the cause and the fix) for an error from the SDK."""
    from google.genai import errors as genai_errors
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if isinstance(exc, genai_errors.APIError):
        code, detail = exc.code, (exc.details if isinstance(exc.details, str) else exc.message)
        detail = str(detail or "").strip() or "no reason given"
        if code == 1007 and _is_bad_key(detail):
            return True, f"the Live API refused the API key (1007: {detail}); {KEY_FIX}"
        if code == 1007:
            return True, (f"the Live API refused the setup as invalid (1007: {detail}); check "
                          f"[live] model and voice and [child] language in the config")
        if code == 1008:
            return True, (f"the Live API refused the model or operation (1008: {detail}); set "
                          f"[live] model to a Live model your key may use")
        if code in (401, 403):
            return True, f"the Live API refused the API key ({code}: {detail}); {KEY_FIX}"
        if code == 429:
            return False, f"the Live API is rate-limiting this key (429: {detail}); retrying later"
        return False, f"the Live API connection closed ({code}: {detail})"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return True, (f"the Live API refused the connection (HTTP {status}): the API key is "
                          f"wrong or not allowed; {KEY_FIX}")
        if status == 404:
            return True, (f"the Live API endpoint was not found (HTTP 404); check [live] base_url "
                          f"and api_version in the config")
        return status < 500 and status != 429, f"the Live API answered HTTP {status}"
    if isinstance(exc, ConnectionClosed):
        return False, f"the connection closed while sending ({exc.__class__.__name__})"
    if isinstance(exc, ReplyTimeout):
        return False, str(exc)
    if isinstance(exc, TimeoutError):
        return False, "the Live API did not answer in time (network slow or down)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Retrying cannot make a certificate trusted: a wrong ca_file or base_url.
        return True, (f"the Live API's TLS certificate is not trusted ({exc.verify_message}); "
                      f"check [live] base_url and ca_file (or --live-url and --ca-file)")
    if isinstance(exc, OSError):
        # DNS failures (socket.gaierror), refused and reset connections, unreachable networks
        return False, f"cannot reach the Live API ({exc.__class__.__name__}: {exc.strerror or exc})"
    # The SDK raises TypeError on a frame with an unknown top-level key and ValueError on a
    # frame that is not JSON: a server fault, worth another connection.
    return False, f"the Live API sent something unexpected ({exc.__class__.__name__})"


def _seconds(duration: str | None) -> float:
    """'50s' or '1.5s' (a protobuf Duration string) in seconds; 0 when unreadable."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)s\s*", duration or "")
    seconds = float(m.group(1)) if m else 0.0
    return seconds if math.isfinite(seconds) else 0.0


class LiveSession:
    """One conversation with the Live API, across as many connections as it takes."""

    def __init__(self, cfg: Config, api_key: Secret | None,
                 on_event: Callable[[SessionEvent], None], *,
                 handle: str | None = None,
                 recap: str | Callable[[], Awaitable[str]] = "",
                 backoff: Backoff = Backoff(), rng: random.Random | None = None,
                 limiter: ConnectLimiter | None = None,
                 client: SharedClient | None = None) -> None:
        self._cfg = cfg
        self._api_key = api_key
        self._client = client or SharedClient(cfg, api_key)
        self._on_event = on_event
        self.handle = handle
        self._recap = recap
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._limiter = limiter or ConnectLimiter(cfg.live.max_connects_per_minute)
        # Audio (and end-of-speech markers) not yet taken by a socket, oldest first.
        self._pending: deque[Any] = deque()
        self._pending_bytes = 0
        # What went up since the last answered turn: resent if the answer never came whole.
        self._unanswered: deque[Any] = deque()
        self._unanswered_bytes = 0
        self._wake = asyncio.Event()
        self._go_away = asyncio.Event()
        self._in_reply = False
        self._reply_deadline: float | None = None
        self._reply_timeouts = 0
        self._connecting = False  # between opening a socket and its setupComplete
        self._answered_here = False  # a turn was answered on the current connection
        self.connected = False
        self.uploaded_bytes = 0  # 16 kHz PCM bytes the sockets took (resent audio included)
        self.connections = 0
        self.dropped_bytes = 0
        self.replayed_turns = 0

    # --- what the daemon calls ---------------------------------------------------------------

    def send_audio(self, pcm: bytes) -> None:
        """Queue 16 kHz speech for the server. Never blocks; kept while the link is down."""
        self._pending.append(pcm)
        self._pending_bytes += len(pcm)
        while self._pending_bytes > MAX_PENDING_BYTES:
            old = self._pending.popleft()
            if old is not _END:
                self._pending_bytes -= len(old)
                self.dropped_bytes += len(old)
        self._wake.set()

    def end_of_speech(self) -> None:
        """Tell the server the child stopped talking (audioStreamEnd), after queued audio."""
        self._pending.append(_END)
        self._wake.set()

    @property
    def uploaded_s(self) -> float:
        """Seconds of the child's audio actually sent (what the service bills)."""
        return self.uploaded_bytes / (2 * 16_000)

    async def run(self) -> None:
        """Connect, talk, reconnect as needed. Returns on a permanent failure or when out of
        attempts (after a LinkDown with final=True); cancel it to end the conversation."""
        client = await self._client.get()
        attempt = 0
        while True:
            started = time.monotonic()
            self._go_away.clear()
            self._connecting = True
            self._answered_here = False
            try:
                await self._connection(client, attempt)
                reason, permanent = "the server ended the connection", False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified and reported below
                permanent, reason = classify(exc)
                if self.handle and self._connecting and self._handle_refused(exc):
                    log.warning("Live API refused the resumption handle (%s); starting a new "
                                "conversation with a recap", exc,
                                extra={"TALKIE_EVENT": "handle_refused"})
                    self._on_event(HandleRefused(self.handle))
                    self.handle = None
                    permanent, reason = False, "the server refused the resumption handle"
                    self._go_away.set()  # nothing is wrong with the link: go again at once
                if isinstance(exc, ReplyTimeout):
                    self._reply_timeouts += 1
            self.connected = False
            planned = self._go_away.is_set()
            if self._answered_here or time.monotonic() - started >= self._backoff.healthy_after_s:
                attempt = 0
            if self._reply_timeouts >= 2:
                reason = (f"the Live API did not answer the child twice in a row; {reason}")
            out_of_tries = attempt >= self._backoff.max_attempts or self._reply_timeouts >= 2
            if permanent or out_of_tries:
                log.error("Live session stopped: %s", reason,
                          extra={"TALKIE_EVENT": "live_error" if permanent else "live_gave_up"})
                self._on_event(LinkDown(time.monotonic(), reason, 0.0, final=True,
                                        permanent=permanent))
                return
            self._requeue_unanswered(planned)
            delay = 0.0 if planned else self._backoff.delay(attempt, self._rng)
            if planned:
                log.info("Live: switching connection (%s)", reason,
                         extra={"TALKIE_EVENT": "reconnect"})
            else:
                log.warning("Live connection lost: %s; reconnecting in %.1f s", reason, delay,
                            extra={"TALKIE_EVENT": "reconnect"})
                attempt += 1
            self._on_event(LinkDown(time.monotonic(), reason, delay, planned=planned))
            await asyncio.sleep(delay)

    # --- resending what was not answered -----------------------------------------------------

    def _requeue_unanswered(self, planned: bool) -> None:
        """Put the unanswered turn back in front of the queue for the next connection.

        A finished turn (its end-of-speech went up) is resent whole: the resumed context
        ends at the last answered turn, so the server would otherwise never answer it. A turn
        still being spoken is resent after an unplanned loss (the words may not have reached
        the model); after a goAway it is not, as the old socket took it while still healthy.
        """
        if not self._unanswered or (planned and _END not in self._unanswered):
            self._unanswered.clear()
            self._unanswered_bytes = 0
            return
        self.replayed_turns += 1
        for item in reversed(self._unanswered):
            self._pending.appendleft(item)
            if item is not _END:
                self._pending_bytes += len(item)
        self._unanswered.clear()
        self._unanswered_bytes = 0
        log.info("Live: resending the unanswered turn on the new connection",
                 extra={"TALKIE_EVENT": "turn_resent"})

    def _sent(self, item: Any) -> None:
        self._unanswered.append(item)
        if item is not _END:
            self._unanswered_bytes += len(item)
        while self._unanswered_bytes > MAX_PENDING_BYTES:
            old = self._unanswered.popleft()
            if old is not _END:
                self._unanswered_bytes -= len(old)

    def _answered(self) -> None:
        """The oldest unanswered turn got its answer: forget it (up to its end-of-speech)."""
        while self._unanswered:
            item = self._unanswered.popleft()
            if item is _END:
                break
            self._unanswered_bytes -= len(item)
        if not self._unanswered:
            self._unanswered_bytes = 0
        self._reply_deadline = (time.monotonic() + self._cfg.live.reply_timeout_s
                                if _END in self._unanswered else None)
        self._reply_timeouts = 0
        self._answered_here = True

    # --- one connection ----------------------------------------------------------------------

    def _handle_refused(self, exc: BaseException) -> bool:
        """A 1007 answer to a setup that carried a handle, not about the key: a stale handle."""
        from google.genai import errors as genai_errors
        return (isinstance(exc, genai_errors.APIError) and exc.code == 1007
                and not _is_bad_key(str(exc.details or exc.message or "")))

    async def _connection(self, client: Any, attempt: int) -> None:
        # A resumed conversation has its context; a new one gets the recap instead, read
        # from history now (a refused handle mid-talk then recaps this talk too).
        recap = ""
        if not self.handle:
            recap = self._recap if isinstance(self._recap, str) else await self._recap()
        cfg = connect_config(self._cfg, handle=self.handle, recap=recap)
        self._reply_deadline = None
        await self._limiter.acquire()
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(self._cfg.live.connect_timeout_s):
                session = await stack.enter_async_context(
                    client.aio.live.connect(model=self._cfg.live.model, config=cfg))
            if session.setup_complete is None:
                raise LiveError("the server's first message was not setupComplete")
            self._connecting = False
            self.connected = True
            self.connections += 1
            log.info("Live connected (attempt %d, %s)", attempt + 1,
                     "resuming" if self.handle else "new conversation",
                     extra={"TALKIE_EVENT": "connected"})
            self._on_event(LinkUp(time.monotonic(), resumed=bool(self.handle), attempt=attempt))
            tasks = [asyncio.create_task(self._receive_loop(session), name="live-receive"),
                     asyncio.create_task(self._send_loop(session), name="live-send"),
                     asyncio.create_task(self._reply_watchdog(), name="live-reply-watchdog")]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            # The receiver's error is the cause; a send failing on a closed socket is a symptom.
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _reply_watchdog(self) -> None:
        """The SDK waits forever for a reply; the child should not."""
        limit = self._cfg.live.reply_timeout_s
        while True:
            await asyncio.sleep(min(0.25, limit / 4))
            deadline = self._reply_deadline
            if deadline is not None and time.monotonic() > deadline:
                raise ReplyTimeout(f"the Live API did not answer within {limit:g} s")

    async def _send_loop(self, session: Any) -> None:
        from google.genai import types

        while True:
            while self._pending and not self._go_away.is_set():
                item = self._pending[0]
                if item is _END:
                    await session.send_realtime_input(audio_stream_end=True)
                    # An empty turn (a press with no speech) gets no reply: do not wait for one.
                    if self._reply_deadline is None and self._unanswered_bytes:
                        self._reply_deadline = time.monotonic() + self._cfg.live.reply_timeout_s
                    self._pending.popleft()
                    self._sent(item)
                    continue
                # A backlog (speech said while connecting, a resent turn) goes up in messages
                # of up to MAX_MESSAGE_BYTES, not one per piece: each message costs the SDK
                # and the socket as much as a second of audio does.
                items = [item]
                size = len(item)
                for nxt in itertools.islice(self._pending, 1, None):
                    if nxt is _END or size + len(nxt) > MAX_MESSAGE_BYTES:
                        break
                    items.append(nxt)
                    size += len(nxt)
                data = item if len(items) == 1 else b"".join(items)
                await session.send_realtime_input(
                    audio=types.Blob(data=data, mime_type="audio/pcm;rate=16000"))
                # Only now is it the socket's: a failed send leaves it queued for the next link.
                for sent in items:
                    if not self._pending or self._pending[0] is not sent:
                        break   # dropped meanwhile (over 30 s queued): not ours to count
                    self._pending.popleft()
                    self._pending_bytes -= len(sent)
                    self.uploaded_bytes += len(sent)
                    self._sent(sent)
            if self._go_away.is_set():
                return  # leave the rest for the next connection
            self._wake.clear()
            await self._wake.wait()

    async def _receive_loop(self, session: Any) -> None:
        usage: dict[str, Any] = {}
        switch_by = float("inf")
        while True:
            async for msg in session.receive():
                now = time.monotonic()
                if msg.usage_metadata is not None:
                    usage = msg.usage_metadata.model_dump(exclude_none=True, mode="json")
                update = msg.session_resumption_update
                if update is not None and update.resumable and update.new_handle:
                    self.handle = update.new_handle
                    self._on_event(ResumptionHandle(update.new_handle))
                if msg.go_away is not None:
                    left = _seconds(msg.go_away.time_left)
                    log.info("Live API asks to reconnect within %.0f s", left,
                             extra={"TALKIE_EVENT": "goaway"})
                    self._on_event(GoAway(left))
                    # Audio waits for the next connection; a reply under way may finish first.
                    self._go_away.set()
                    switch_by = now + max(0.0, left - 2.0)
                content = msg.server_content
                if self._go_away.is_set() and (not self._in_reply or now >= switch_by):
                    # Break before make: resuming while the old socket is open gives 1011.
                    self._in_reply = False
                    self._wake.set()
                    return
                if content is None:
                    continue
                if self._reply_deadline is not None:
                    # The server is answering: give it another reply_timeout_s from here.
                    self._reply_deadline = now + self._cfg.live.reply_timeout_s
                if content.model_turn is not None:
                    for part in content.model_turn.parts or ():
                        if part.inline_data is not None and part.inline_data.data:
                            self._in_reply = True
                            self._on_event(ReplyAudio(part.inline_data.data, now))
                if content.input_transcription is not None and content.input_transcription.text:
                    self._on_event(Transcript("child", content.input_transcription.text,
                                              bool(content.input_transcription.finished)))
                if content.output_transcription is not None and content.output_transcription.text:
                    self._on_event(Transcript("toy", content.output_transcription.text,
                                              bool(content.output_transcription.finished)))
                if content.interrupted:
                    self._in_reply = False
                    self._answered()
                    self._on_event(Interrupted(now))
                if content.turn_complete:
                    self._in_reply = False
                    self._answered()
                    self._on_event(TurnComplete(now, usage))
                    usage = {}
                    if self._go_away.is_set():
                        self._wake.set()
                        return
