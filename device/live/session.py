"""The device's Live API session: one conversation that survives its connections.

The real service closes every connection after about ten minutes (goAway, then 1011), has
outages, and refuses bad setups with 1007/1008. `LiveSession.run()` rides through that:

- it connects with the newest resumption handle, so the conversation keeps its context;
- audio queued while (re)connecting is kept (bounded) and sent once the link is up, so no word
  is lost; an item leaves the queue only after the socket took it;
- transient failures (1006, 1011, network, DNS, timeouts) are retried with capped, jittered
  exponential backoff; permanent ones (1007, 1008, HTTP 403/404: a bad key, model or URL) end
  the session at once with a single log line that names the cause and the fix;
- a handle the server rejects is dropped and the conversation starts afresh.

One task sends, one loops `receive()` (which returns at every turnComplete). Everything the
server says becomes a typed event from `device.events`, handed to `on_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.config import Config, Secret
from device.errors import LiveError
from device.events import (GoAway, Interrupted, LiveEvent, ReplyAudio, ResumptionHandle,
                           Transcript, TurnComplete)
from device.live.setup import connect_config, make_client

log = logging.getLogger(__name__)

#: Audio kept while the link is down: 30 s of 16 kHz PCM. Older audio is dropped first.
MAX_PENDING_BYTES = 30 * 16_000 * 2
_END = object()  # end-of-speech marker in the send queue


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The session is connected (again); `resumed` tells whether a handle was accepted."""
    t: float
    resumed: bool
    attempt: int


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The connection was lost; the session retries after `retry_in_s` unless `final`."""
    t: float
    reason: str
    retry_in_s: float
    final: bool = False
    permanent: bool = False


SessionEvent = LiveEvent | LinkUp | LinkDown


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


def classify(exc: BaseException) -> tuple[bool, str]:
    """(permanent, a sentence naming the cause and the fix) for an error from the SDK."""
    from google.genai import errors as genai_errors
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if isinstance(exc, genai_errors.APIError):
        code, detail = exc.code, (exc.details if isinstance(exc.details, str) else exc.message)
        detail = str(detail or "").strip() or "no reason given"
        if code == 1007 and "api key" in detail.lower():
            return True, (f"the Live API refused the API key (1007: {detail}); put a valid key "
                          f"in place with 'talkie setup --api-key-file FILE'")
        if code == 1007:
            return True, (f"the Live API refused the request (1007: {detail}); check [live] "
                          f"model, voice and [child] language in the config")
        if code == 1008:
            return True, (f"the Live API refused the model or operation (1008: {detail}); set "
                          f"[live] model to a Live model your key may use")
        if code in (401, 403):
            return True, (f"the Live API refused the API key ({code}: {detail}); store a valid "
                          f"key with 'talkie setup'")
        if code == 429:
            return False, f"the Live API is rate-limiting this key (429: {detail}); retrying later"
        return False, f"the Live API connection closed ({code}: {detail})"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return True, (f"the Live API refused the connection (HTTP {status}): the API key is "
                          f"wrong or not allowed; store a valid key with 'talkie setup'")
        if status == 404:
            return True, (f"the Live API endpoint was not found (HTTP 404); check [live] base_url "
                          f"and api_version in the config")
        return status < 500 and status != 429, f"the Live API answered HTTP {status}"
    if isinstance(exc, ConnectionClosed):
        return False, f"the connection closed while sending ({exc.__class__.__name__})"
    if isinstance(exc, TimeoutError):
        return False, "the Live API did not answer in time (network slow or down)"
    if isinstance(exc, OSError):
        return False, f"cannot reach the Live API ({exc.__class__.__name__}: {exc.strerror or exc})"
    # The SDK raises TypeError on a frame with an unknown top-level key and ValueError on a
    # frame that is not JSON: a server fault, worth another connection.
    return False, f"the Live API sent something unexpected ({exc.__class__.__name__})"


def _seconds(duration: str | None) -> float:
    """'50s' or '1.5s' (a protobuf Duration string) in seconds; 0 when unreadable."""
    m = re.fullmatch(r"\s*([0-9.]+)s\s*", duration or "")
    return float(m.group(1)) if m else 0.0


class LiveSession:
    """One conversation with the Live API, across as many connections as it takes."""

    def __init__(self, cfg: Config, api_key: Secret | None,
                 on_event: Callable[[SessionEvent], None], *,
                 handle: str | None = None, recap: str = "",
                 backoff: Backoff = Backoff(), rng: random.Random | None = None) -> None:
        self._cfg = cfg
        self._api_key = api_key
        self._on_event = on_event
        self.handle = handle
        self._recap = recap
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._pending: deque[Any] = deque()
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._go_away = asyncio.Event()
        self._accepted_handle = False
        self._in_reply = False
        self.connected = False
        self.uploaded_bytes = 0
        self.connections = 0
        self.dropped_bytes = 0

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

    async def run(self) -> None:
        """Connect, talk, reconnect as needed. Returns on a permanent failure or when out of
        attempts (after a LinkDown with final=True); cancel it to end the conversation."""
        client = make_client(self._cfg, self._api_key)
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._connection(client, attempt)
                reason, permanent = "the server ended the connection", False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified and reported below
                permanent, reason = classify(exc)
                if self.handle and self._handle_rejected(exc, started):
                    log.warning("Live API refused the resumption handle; starting a new "
                                "conversation (%s)", reason)
                    self.handle = None
                    permanent = False
            self.connected = False
            if time.monotonic() - started >= self._backoff.healthy_after_s:
                attempt = 0
            if permanent or attempt >= self._backoff.max_attempts:
                log.error("Live session ended: %s", reason)
                self._on_event(LinkDown(time.monotonic(), reason, 0.0, final=True,
                                        permanent=permanent))
                return
            delay = 0.0 if self._go_away.is_set() else self._backoff.delay(attempt, self._rng)
            self._go_away.clear()
            log.warning("Live connection lost: %s; reconnecting in %.1f s", reason, delay,
                        extra={"TALKIE_EVENT": "reconnect"})
            self._on_event(LinkDown(time.monotonic(), reason, delay))
            attempt += 1
            await asyncio.sleep(delay)

    # --- one connection ----------------------------------------------------------------------

    def _handle_rejected(self, exc: BaseException, started: float) -> bool:
        """A resume attempt refused at once (1007/1008 right after setup) means a stale handle."""
        from google.genai import errors as genai_errors
        return (isinstance(exc, genai_errors.APIError) and exc.code in (1007, 1008)
                and not self._accepted_handle and time.monotonic() - started < 5)

    async def _connection(self, client: Any, attempt: int) -> None:
        cfg = connect_config(self._cfg, handle=self.handle, recap=self._recap)
        self._accepted_handle = False
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(self._cfg.live.connect_timeout_s):
                session = await stack.enter_async_context(
                    client.aio.live.connect(model=self._cfg.live.model, config=cfg))
            if session.setup_complete is None:
                raise LiveError("the server's first message was not setupComplete")
            self.connected = True
            self.connections += 1
            log.info("Live connected (attempt %d, %s)", attempt + 1,
                     "resuming" if self.handle else "new conversation",
                     extra={"TALKIE_EVENT": "connected"})
            self._on_event(LinkUp(time.monotonic(), resumed=bool(self.handle), attempt=attempt))
            sender = asyncio.create_task(self._send_loop(session), name="live-send")
            receiver = asyncio.create_task(self._receive_loop(session), name="live-receive")
            try:
                await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sender, receiver):
                    task.cancel()
                await asyncio.gather(sender, receiver, return_exceptions=True)
            # The receiver's error is the cause; a send failing on a closed socket is a symptom.
            for task in (receiver, sender):
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _send_loop(self, session: Any) -> None:
        from google.genai import types

        while True:
            while self._pending and not self._go_away.is_set():
                item = self._pending[0]
                if item is _END:
                    await session.send_realtime_input(audio_stream_end=True)
                else:
                    await session.send_realtime_input(
                        audio=types.Blob(data=item, mime_type="audio/pcm;rate=16000"))
                    self._pending_bytes -= len(item)
                    self.uploaded_bytes += len(item)
                # Only now is it the socket's: a failed send leaves it queued for the next link.
                self._pending.popleft()
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
                    self._accepted_handle = True
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
                self._accepted_handle = True
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
                    self._on_event(Interrupted(now))
                if content.turn_complete:
                    self._in_reply = False
                    self._on_event(TurnComplete(now, usage))
                    usage = {}
                    if self._go_away.is_set():
                        self._wake.set()
                        return
