"""A local Gemini Live API simulator speaking the real wire protocol over TLS.

The unmodified google-genai SDK connects to it with::

    genai.Client(api_key=KEY, http_options={
        "base_url": sim.base_url, "async_client_args": {"ssl": sim.client_ssl_context()}})

What it does (see /work/shared/live-protocol.md for the protocol facts):

* accepts ``/ws/google.ai.generativelanguage.<any version>.GenerativeService.BidiGenerateContent``
  (or ``...Constrained``), with or without a leading ``//``; other paths get HTTP 404;
* reads the key from ``x-goog-api-key`` or ``?key=``.  With ``api_key`` set, a different or
  missing key makes the server close with 1007 "API key not valid. Please pass a valid API key."
  right after the setup message, which is how the real service reports a bad key (the upgrade
  itself succeeds there too), and the SDK raises ``APIError(1007)`` from ``connect()``;
* answers the setup with ``setupComplete``; every server frame is a *binary* frame holding JSON
  with camelCase top-level keys, like the real server;
* a user turn ends on ``audioStreamEnd``, ``activityEnd`` or ``client_content`` with
  ``turnComplete``.  It does NOT end a turn on silence (no server-side VAD end-pointing);
* the reply is a child-friendly sentence, spoken by espeak-ng (or a tone), streamed as 24 kHz
  PCM chunks, with ``outputTranscription`` (if the setup asked for it), ``inputTranscription``
  (if asked; the simulator does no ASR, so for audio it says
  ``"[N.N s of audio]"``, for text turns it echoes the text), then ``generationComplete``, then
  ``turnComplete`` with ``usageMetadata`` (25 tokens per second of audio each way);
* with ``sessionResumption`` in the setup, a ``sessionResumptionUpdate{newHandle, resumable}``
  comes just before each ``turnComplete`` (so ``receive()`` yields it in the same turn), or
  just after it with ``handle_after_turn_complete=True`` (then the SDK yields it in the *next*
  ``receive()``; a client must handle both orders); a reconnect
  with that handle continues the same conversation (turn counter kept).  An unknown handle
  is refused with close 1007 "Request contains an invalid argument." (our choice: the public
  record has no capture of the real refusal);
* barge-in: realtime audio with RMS over ``barge_in_rms`` while a reply streams stops the reply
  and sends ``serverContent.interrupted`` (no ``turnComplete`` for the cut reply), unless the
  setup chose ``activity_handling: NO_INTERRUPTION``;
* ``activityStart``/``activityEnd`` while automatic activity detection is on, or
  ``audioStreamEnd`` while it is off, close the socket with 1007
  "Request contains an invalid argument.".

An ``audioStreamEnd`` with no audio or text since the previous turn end starts no reply.

Server-side end-pointing (``server_vad_silence_ms``, off by default): with automatic activity
detection on, a turn also ends (``TurnEnd.kind == "serverVad"``) once the client streamed
speech (20 ms pieces louder than ``barge_in_rms``) and then this long without it, as the real
service does for a client that streams its microphone without a VAD of its own (Google's
quickstart). The setup's ``silenceDurationMs`` overrides the default. While it is on, a turn
that held no speech gets no reply (the real service does not answer silence).

Faults (:class:`Fault`, chosen per connection/turn by :class:`FaultPlan`) and what the
google-genai 3.4.0 SDK raises (verified in tests/test_simulator_faults.py):

================== =================================================== =============================
fault              server does                                         SDK surfaces
================== =================================================== =============================
slow-setup         setupComplete after N s (default 2)                 ``connect()`` just takes longer
close-1011-mid-... close 1011 "Internal error encountered." after the   ``APIError`` code 1011 from
                   first reply chunk                                    ``receive()``; later ``send_*``
                                                                        raise ``ConnectionClosed``
goaway             goAway{timeLeft:"Ns"} after turnComplete, then       ``receive()`` yields
                   close 1011 "Deadline expired before operation        ``.go_away.time_left``, then
                   could complete."                                     ``APIError`` 1011
close-1007         close 1007 "Request contains an invalid argument."   ``APIError`` 1007 (from
                   (at setup by default)                                ``connect()`` at setup)
close-1008         close 1008 "models/X is not found for API version   ``APIError`` 1008, reason cut
                   V, or is not supported for bidiGenerateContent..."   at 123 bytes
tcp-drop           transport abort, no close frame                      ``APIError`` 1006
oversize-frame     one ~1.4 MiB frame                                   ``APIError`` 1006 (the client
                                                                        closes 1009 itself)
unknown-key        {"error": {...}}                                     ``TypeError`` (SDK bug)
http-403/404       upgrade refused with JSON error body                 ``websockets.exceptions.
                                                                        InvalidStatus`` (.response.
                                                                        status_code)
reject-handle      close 1007 "Request contains an invalid argument."   ``APIError`` 1007 from
                   for a setup with a resumption handle                 ``connect()``
no-reply           takes turn N and never answers it                    ``receive()`` waits forever
================== =================================================== =============================

All ``APIError`` here are the base class (close codes fall outside 400..599), with
``.code`` = close code, ``.details`` = reason string, ``.status``/``.message`` None.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import enum
import http
import io
import json
import logging
import math
import re
import secrets
import shutil
import ssl
import time
import urllib.parse
import wave
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from device.live.certs import CertPaths, make_self_signed

log = logging.getLogger(__name__)

REPLY_RATE = 24000
MIC_RATE = 16000
TOKENS_PER_AUDIO_SECOND = 25
INVALID_ARGUMENT = "Request contains an invalid argument."
INTERNAL_ERROR = "Internal error encountered."
DEADLINE_EXPIRED = "Deadline expired before operation could complete."
BAD_KEY = "API key not valid. Please pass a valid API key."
REDACTED = "<redacted>"

_PATH_RE = re.compile(
    r"^/+ws/google\.ai\.generativelanguage\.(?P<version>v[0-9a-z]+)\."
    r"GenerativeService\.(?P<method>BidiGenerateContent(?:Constrained)?)$"
)
_NAME_RE = re.compile(r"\bname is ([A-Z][a-zA-Z'-]*)")


# ---------------------------------------------------------------------------------------------
# Faults


class Fault(enum.Enum):
    """Injectable faults.  The value is the CLI name.

    ``turn`` in a :class:`FaultPlan` says on which reply (1-based, counted per connection) a
    mid-session fault fires; 0 means "at setup" where that makes sense.
    """

    #: setupComplete is sent only after ``FaultPlan.seconds`` (default 2 s).
    SLOW_SETUP = "slow-setup"
    #: after the first reply chunk of turn N: close 1011 "Internal error encountered.".
    CLOSE_1011_MID_REPLY = "close-1011-mid-reply"
    #: after turnComplete of turn N (turn 0: right after setupComplete): goAway{timeLeft:"Ns"},
    #: wait ``seconds`` (default 0.5), close 1011 "Deadline expired before operation could
    #: complete.".
    GOAWAY = "goaway"
    #: at setup (turn 0, default) or at the end of user turn N: close 1007 "Request contains
    #: an invalid argument.".
    CLOSE_1007 = "close-1007"
    #: at setup (default) or end of turn N: close 1008 "models/X is not found for API version
    #: vV, or is not supported for bidiGenerateContent. ..." with the setup's model and path
    #: version.
    CLOSE_1008 = "close-1008"
    #: after the first reply chunk of turn N (turn 0: at setup): abort the TCP connection,
    #: no close frame.
    TCP_DROP = "tcp-drop"
    #: instead of the reply to turn N: one serverContent frame larger than 1 MiB.
    OVERSIZE_FRAME = "oversize-frame"
    #: instead of the reply to turn N: {"error": {...}} (a top-level key the SDK does not know).
    UNKNOWN_KEY = "unknown-key"
    #: refuse the WebSocket upgrade with HTTP 403 (JSON error body, PERMISSION_DENIED).
    HTTP_403 = "http-403"
    #: refuse the WebSocket upgrade with HTTP 404.
    HTTP_404 = "http-404"
    #: refuse a setup carrying sessionResumption.handle (even a valid one): close 1007
    #: "Request contains an invalid argument.".
    REJECT_HANDLE = "reject-handle"
    #: take user turn N and never answer it (the connection stays open and silent).
    NO_REPLY = "no-reply"


_DEFAULT_TURN = {
    Fault.SLOW_SETUP: 0,
    Fault.CLOSE_1007: 0,
    Fault.CLOSE_1008: 0,
    Fault.HTTP_403: 0,
    Fault.HTTP_404: 0,
    Fault.REJECT_HANDLE: 0,
}
_DEFAULT_SECONDS = {Fault.SLOW_SETUP: 2.0, Fault.GOAWAY: 0.5}


@dataclass(frozen=True)
class FaultPlan:
    """When a fault fires.

    ``connection``: 0-based index of the connection attempt (refused upgrades count) it fires
    on, or ``None`` for every connection.  The default, 0, lets a retry succeed.
    ``turn``: 1-based reply number within that connection; 0 = at setup; ``None`` = the
    fault's default (0 for setup-time faults, 1 otherwise).
    ``seconds``: delay for ``slow-setup`` and the goAway grace time.
    """

    fault: Fault
    connection: int | None = 0
    turn: int | None = None
    seconds: float | None = None

    @property
    def at_turn(self) -> int:
        return self.turn if self.turn is not None else _DEFAULT_TURN.get(self.fault, 1)

    @property
    def delay_s(self) -> float:
        return (
            self.seconds
            if self.seconds is not None
            else _DEFAULT_SECONDS.get(self.fault, 0.0)
        )

    def applies(self, connection: int) -> bool:
        return self.connection is None or self.connection == connection

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """Parse ``NAME[@CONN|*][:TURN][+SECONDS]``, e.g. ``goaway``, ``tcp-drop@1:2``, ``slow-setup+3``."""
        m = re.fullmatch(
            r"(?P<name>[a-z0-9-]+)(?:@(?P<conn>\*|\d+))?(?::(?P<turn>\d+))?(?:\+(?P<sec>[0-9.]+))?",
            spec.strip(),
        )
        if not m:
            raise ValueError(
                f"bad fault spec {spec!r}; use NAME[@CONN|*][:TURN][+SECONDS]"
            )
        try:
            fault = Fault(m["name"])
        except ValueError:
            names = ", ".join(f.value for f in Fault)
            raise ValueError(
                f"unknown fault {m['name']!r}; choose one of: {names}"
            ) from None
        conn: int | None = 0
        if m["conn"] == "*":
            conn = None
        elif m["conn"] is not None:
            conn = int(m["conn"])
        return cls(
            fault,
            connection=conn,
            turn=int(m["turn"]) if m["turn"] is not None else None,
            seconds=float(m["sec"]) if m["sec"] is not None else None,
        )


def _as_plan(item: Fault | FaultPlan | str) -> FaultPlan:
    if isinstance(item, FaultPlan):
        return item
    if isinstance(item, Fault):
        return FaultPlan(item)
    return FaultPlan.parse(item)


# ---------------------------------------------------------------------------------------------
# Recording


@dataclass
class ClientMessage:
    """One client frame, keys normalised to camelCase, with its monotonic receive time."""

    t: float
    data: dict[str, Any]
    #: Size of the frame as it came off the socket (JSON text, base64 audio included).
    wire_bytes: int = 0

    def __repr__(self) -> str:
        # Audio payloads are long; show their size instead.
        return f"ClientMessage(t={self.t:.3f}, data={_abbrev(self.data)})"


def _abbrev(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _abbrev(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_abbrev(v) for v in value]
    if isinstance(value, str) and len(value) > 80:
        return f"<{len(value)} chars>"
    return value


@dataclass
class TurnEnd:
    """An end-of-user-turn signal: ``audioStreamEnd``, ``activityEnd`` or ``turnComplete``."""

    t: float
    kind: str


@dataclass
class ReplyRecord:
    """A reply the simulator streamed (or began to)."""

    turn: int  # conversation turn number (continues across resumption)
    text: str
    audio_bytes: int = 0  # PCM bytes sent (24 kHz s16le)
    first_chunk_t: float | None = None
    last_chunk_t: float | None = None
    interrupted: bool = False
    completed: bool = False  # turnComplete sent


@dataclass
class ConnectionRecord:
    """Everything one connection did, for tests.  The API key never appears in ``repr``."""

    index: int
    path: str
    headers: dict[str, str]  # x-goog-api-key / key= redacted
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    method: str | None = None
    http_status: int | None = None  # set when the upgrade was refused
    setup: dict[str, Any] | None = None  # normalised (camelCase keys)
    raw_setup: dict[str, Any] | None = None  # exactly as the SDK sent it
    resumed_handle: str | None = field(default=None, repr=False)
    messages: list[ClientMessage] = field(default_factory=list, repr=False)
    audio_buf: bytearray = field(default_factory=bytearray, repr=False)
    turn_ends: list[TurnEnd] = field(default_factory=list)
    replies: list[ReplyRecord] = field(default_factory=list)
    handles_sent: list[str] = field(default_factory=list, repr=False)
    faults_fired: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    @property
    def audio(self) -> bytes:
        """All 16 kHz PCM the client sent on this connection, concatenated."""
        return bytes(self.audio_buf)


@dataclass
class _Conversation:
    """State carried across resumption: how many replies were given, and the child's name."""

    turns: int = 0
    history: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Key normalisation and decoding


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def normalise_keys(value: Any) -> Any:
    """Recursively turn snake_case dict keys into camelCase (the SDK sends a mix of both)."""
    if isinstance(value, dict):
        return {_camel(k): normalise_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_keys(v) for v in value]
    return value


def b64decode_any(data: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding."""
    s = data.strip().replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _rms(pcm: bytes) -> float:
    if len(pcm) < 2:
        return 0.0
    a = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(a * a)))


# ---------------------------------------------------------------------------------------------
# Voice


class _Voice:
    """Turns reply text into 24 kHz s16le PCM, with espeak-ng or a tone; cached by text."""

    def __init__(self, kind: str) -> None:
        if kind not in ("espeak", "tone", "auto"):
            raise ValueError(f"voice must be 'espeak', 'tone' or 'auto', not {kind!r}")
        self.espeak = shutil.which("espeak-ng")
        if kind == "espeak" and not self.espeak:
            raise RuntimeError(
                "voice='espeak' needs espeak-ng: apt-get install espeak-ng"
            )
        self.kind = "tone" if kind == "tone" or not self.espeak else "espeak"
        self._cache: dict[str, bytes] = {}

    async def pcm(self, text: str) -> bytes:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        if self.kind == "espeak":
            pcm = await self._espeak(text)
        else:
            pcm = await asyncio.to_thread(_tone, text)
        self._cache[text] = pcm
        return pcm

    async def _espeak(self, text: str) -> bytes:
        assert self.espeak
        proc = await asyncio.create_subprocess_exec(
            self.espeak,
            "--stdout",
            "-v",
            "en-us",
            "-s",
            "165",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0 or not out:
            log.warning(
                "espeak-ng failed (%s), using a tone",
                err.decode(errors="replace")[:200],
            )
            return await asyncio.to_thread(_tone, text)
        return await asyncio.to_thread(_wav_to_reply_pcm, out)


def _wav_to_reply_pcm(wav_bytes: bytes) -> bytes:
    # espeak-ng writes a streaming WAV whose size fields may be bogus; read the frames we got.
    with wave.open(io.BytesIO(wav_bytes)) as w:
        rate = w.getframerate()
        channels = w.getnchannels()
        frames = w.readframes(w.getnframes() or (len(wav_bytes) // 2))
    a = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2")
    if channels > 1:
        a = a.reshape(-1, channels)[:, 0]
    if rate != REPLY_RATE:
        import soxr

        a = soxr.resample(a.astype(np.float32) / 32768.0, rate, REPLY_RATE)
        a = np.clip(a * 32768.0, -32768, 32767).astype("<i2")
    return a.astype("<i2").tobytes()


def _tone(text: str) -> bytes:
    # One short beep per word so the length follows the text, like speech would.
    words = max(1, len(text.split()))
    beep = int(0.18 * REPLY_RATE)
    gap = int(0.07 * REPLY_RATE)
    t = np.arange(beep) / REPLY_RATE
    env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    parts = []
    for i in range(min(words, 40)):
        f = 440.0 + 60.0 * (i % 5)
        parts.append((0.3 * 32767 * env * np.sin(2 * math.pi * f * t)).astype("<i2"))
        parts.append(np.zeros(gap, dtype="<i2"))
    return np.concatenate(parts).tobytes()


_REPLIES = (
    "Hello{name}! I am so happy to talk with you. What would you like to play today?",
    "That sounds wonderful{name}! Tell me more about it.",
    "Wow, what a great idea! Did you know that elephants can hear with their feet?",
    "You are very clever{name}. Shall we sing a little song together?",
    "I love that! What is your favourite animal?",
    "Thank you for telling me{name}. Let us count to five together: one, two, three, four, five!",
)


def reply_text(turn: int, system_instruction: str,
               texts: tuple[str, ...] = _REPLIES) -> str:
    """The simulator's reply for conversation turn ``turn`` (1-based)."""
    m = _NAME_RE.search(system_instruction or "")
    name = f", {m.group(1)}" if m else ""
    return texts[(turn - 1) % len(texts)].replace("{name}", name)


# ---------------------------------------------------------------------------------------------
# Simulator


class _Closed(Exception):
    """Raised inside a connection's tasks when the simulator decided to close it."""


class Simulator:
    """Local Gemini Live API over TLS.  Use as ``async with Simulator(...) as sim``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        voice: str = "auto",
        first_byte_delay_s: float = 0.2,
        pace: float = 4.0,
        chunk_ms: int = 100,
        faults: Iterable[Fault | FaultPlan | str] = (),
        api_key: str | None = None,
        barge_in_rms: float = 500.0,
        cert_dir: Path | str | None = None,
        setup_timeout_s: float = 30.0,
        handle_after_turn_complete: bool = False,
        reply_texts: Iterable[str] | None = None,
        server_vad_silence_ms: int | None = None,
    ) -> None:
        if pace <= 0:
            raise ValueError("pace must be > 0 (a multiple of real time, e.g. 4.0)")
        if not 10 <= chunk_ms <= 5000:
            raise ValueError(
                "chunk_ms must be between 10 and 5000 (frames stay under 1 MiB)"
            )
        self.host = host
        self._port = port
        self._voice = _Voice(voice)
        self.first_byte_delay_s = first_byte_delay_s
        self.pace = pace
        self.chunk_ms = chunk_ms
        self.faults: list[FaultPlan] = [_as_plan(f) for f in faults]
        self._one_shot: set[int] = set()  # ids of plans in self.faults that fire once
        self._api_key = api_key
        self.barge_in_rms = barge_in_rms
        self.setup_timeout_s = setup_timeout_s
        self.handle_after_turn_complete = handle_after_turn_complete
        #: What the toy says, turn after turn (cycled); default: the built-in sentences.
        self.reply_texts: tuple[str, ...] = tuple(reply_texts or _REPLIES)
        #: End a turn after this much silence following speech (None: only on client signals).
        self.server_vad_silence_ms = server_vad_silence_ms
        self._cert_dir = cert_dir
        self._certs: CertPaths | None = None
        self._server: Server | None = None
        self.connections: list[ConnectionRecord] = []
        self._by_conn: dict[int, ConnectionRecord] = {}
        self._handles: dict[str, tuple[_Conversation, int]] = {}
        self._live: set[_Session] = set()  # connections past setup, still open
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"Simulator(base_url={self.base_url if self._server else None!r}, voice={self.voice!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Make the certificate and start listening."""
        self._certs = await asyncio.to_thread(make_self_signed, self._cert_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._certs.cert_file, self._certs.key_file)
        self._server = await serve(
            self._handler,
            self.host,
            self._port,
            ssl=ctx,
            process_request=self._process_request,
            max_size=16 * 2**20,
            # The real service compresses nothing we rely on; keep frames byte-exact.
            compression=None,
        )

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # -- properties ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(
                "the simulator is not started; use 'async with Simulator()'"
            )
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    @property
    def base_url(self) -> str:
        """``https://HOST:PORT``, for ``http_options['base_url']``."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        """PEM of this instance's self-signed certificate (its own trust anchor)."""
        if self._certs is None:
            raise RuntimeError(
                "the simulator is not started; use 'async with Simulator()'"
            )
        return self._certs.cert_file

    @property
    def voice(self) -> str:
        """``"espeak"`` or ``"tone"``: what actually speaks."""
        return self._voice.kind

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting only this simulator's certificate."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def http_options(self) -> dict[str, Any]:
        """``http_options`` for ``genai.Client`` pointing at this simulator."""
        return {
            "base_url": self.base_url,
            "async_client_args": {"ssl": self.client_ssl_context()},
        }

    # -- test helpers ----------------------------------------------------------------------

    def received_audio(self) -> bytes:
        """All 16 kHz PCM received, every connection concatenated in order."""
        return b"".join(c.audio for c in self.connections)

    def replies(self) -> list[ReplyRecord]:
        return [r for c in self.connections for r in c.replies]

    def completed_turns(self) -> int:
        """Replies that reached turnComplete, over all connections."""
        return sum(1 for r in self.replies() if r.completed)

    async def wait_turns(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` replies (all connections) have been completed with turnComplete."""
        await self._wait(
            lambda: self.completed_turns() >= n, timeout, f"{n} completed turns"
        )

    async def wait_connections(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` connections (attempts) have been seen."""
        await self._wait(
            lambda: len(self.connections) >= n, timeout, f"{n} connections"
        )

    async def wait_closed_connections(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` connections have a close code (or a refused upgrade)."""

        def done() -> bool:
            return (
                sum(
                    1
                    for c in self.connections
                    if c.close_code is not None or c.http_status is not None
                )
                >= n
            )

        await self._wait(done, timeout, f"{n} closed connections")

    async def _wait(self, pred: Any, timeout: float, what: str) -> None:
        async def loop() -> None:
            while not pred():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise TimeoutError(f"simulator: no {what} within {timeout} s") from None

    def _notify(self) -> None:
        self._changed.set()

    def go_away_now(self, seconds: float = 0.5) -> int:
        """Send goAway{timeLeft} on every open connection now, closing each 1011 after
        ``seconds`` (whatever it is doing: mid-utterance, mid-reply).  Returns how many."""
        sessions = list(self._live)
        for session in sessions:
            session.spawn(session._goaway(FaultPlan(Fault.GOAWAY, seconds=seconds)))
        return len(sessions)

    def inject(self, item: Fault | FaultPlan | str) -> FaultPlan:
        """Arm a fault while running (a chaos soak): it fires once, on the first connection
        and turn where it applies, then is gone.  ``disarm`` takes it back unfired."""
        plan = _as_plan(item)
        self.faults.append(plan)
        self._one_shot.add(id(plan))
        return plan

    def disarm(self, plan: FaultPlan) -> bool:
        """Take back an injected fault; False if it already fired."""
        if id(plan) not in self._one_shot:
            return False
        self._one_shot.discard(id(plan))
        self.faults = [p for p in self.faults if p is not plan]
        return True

    def _fault(
        self, rec: ConnectionRecord, fault: Fault, turn: int
    ) -> FaultPlan | None:
        for plan in self.faults:
            if plan.fault is fault and plan.applies(rec.index) and plan.at_turn == turn:
                self.disarm(plan)  # a one-shot fault is spent
                rec.faults_fired.append(fault.value)
                log.info(
                    "simulator: fault %s on connection %d turn %d",
                    fault.value,
                    rec.index,
                    turn,
                )
                return plan
        return None

    # -- handshake -------------------------------------------------------------------------

    def _process_request(
        self, conn: ServerConnection, request: Request
    ) -> Response | None:
        # Not urlsplit: it reads a leading "//ws/..." as a host name.
        raw_path, _, raw_query = request.path.partition("?")
        query = urllib.parse.parse_qs(raw_query)
        key = request.headers.get("x-goog-api-key") or (query.get("key") or [None])[0]
        headers = {
            k: (REDACTED if k.lower() in ("x-goog-api-key", "authorization") else v)
            for k, v in request.headers.raw_items()
        }
        path = raw_path + (f"?{_redact_query(raw_query)}" if raw_query else "")
        rec = ConnectionRecord(
            index=len(self.connections), path=path, headers=headers, api_key=key
        )
        self.connections.append(rec)
        self._notify()
        m = _PATH_RE.match(raw_path)
        if self._fault(rec, Fault.HTTP_403, 0):
            return self._refuse(
                rec,
                conn,
                403,
                "PERMISSION_DENIED",
                "The caller does not have permission",
            )
        if self._fault(rec, Fault.HTTP_404, 0) or not m:
            return self._refuse(
                rec, conn, 404, "NOT_FOUND", "Requested entity was not found."
            )
        rec.api_version, rec.method = m["version"], m["method"]
        self._by_conn[id(conn)] = rec
        return None

    def _refuse(
        self,
        rec: ConnectionRecord,
        conn: ServerConnection,
        status: int,
        grpc_status: str,
        message: str,
    ) -> Response:
        rec.http_status = status
        body = json.dumps(
            {"error": {"code": status, "message": message, "status": grpc_status}}
        )
        resp = conn.respond(http.HTTPStatus(status), body + "\n")
        resp.headers["Content-Type"] = "application/json; charset=UTF-8"
        self._notify()
        return resp

    # -- connection ------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        rec = self._by_conn.pop(id(ws))
        session = _Session(self, ws, rec)
        try:
            await session.run()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("simulator: connection %d failed", rec.index)
            with contextlib.suppress(Exception):
                await session.close(1011, INTERNAL_ERROR)
        finally:
            if rec.close_code is None:
                rec.close_code = ws.close_code if ws.close_code is not None else 1006
                rec.close_reason = ws.close_reason
            self._notify()

    def _issue_handle(self, conv: _Conversation) -> str:
        handle = secrets.token_urlsafe(24)
        self._handles[handle] = (conv, conv.turns)
        return handle


def _redact_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return urllib.parse.urlencode(
        [(k, REDACTED if k == "key" else v) for k, v in pairs]
    )


class _Session:
    """One WebSocket connection's protocol state."""

    def __init__(
        self, sim: Simulator, ws: ServerConnection, rec: ConnectionRecord
    ) -> None:
        self.sim = sim
        self.ws = ws
        self.rec = rec
        self.conv = _Conversation()
        self.turn_in_conn = 0  # replies started on this connection
        self.system_text = ""
        self.aad_disabled = False
        self.no_interruption = False
        self.resumption = False
        self.in_transcription = False
        self.out_transcription = False
        self.turn_audio = 0  # bytes of 16 kHz audio in the current user turn
        self.vad_silence_ms: int | None = None  # server-side end-pointing, if on
        self.turn_speech = False  # the current turn held speech (server VAD)
        self.vad_quiet_ms = 0.0  # silence streamed since the last speech
        self.turn_text: list[str] = []
        self.reply_task: asyncio.Task[None] | None = None
        self.replies: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.closing = False
        self._side_tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        """Run a server action (a test's goAway) beside the connection's own tasks."""
        async def guarded() -> None:
            with contextlib.suppress(_Closed, ConnectionClosed):
                await coro
        task = asyncio.get_running_loop().create_task(guarded())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- sending --------------------------------------------------------------------------

    async def send(self, msg: dict[str, Any]) -> None:
        # The real server sends binary frames; the SDK reads both.
        await self.ws.send(json.dumps(msg).encode())

    async def close(self, code: int, reason: str) -> None:
        # A close reason is at most 123 bytes (RFC 6455); the real service truncates long ones
        # such as the "model not found" text the same way.
        reason = reason.encode()[:123].decode(errors="ignore")
        self.closing = True
        self.rec.close_code, self.rec.close_reason = code, reason
        self.sim._notify()
        await self.ws.close(code, reason)
        raise _Closed

    def drop(self) -> None:
        self.closing = True
        self.rec.close_code, self.rec.close_reason = 1006, "tcp-drop"
        self.sim._notify()
        transport = self.ws.transport
        transport.abort()
        raise _Closed

    # -- main loop ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._setup()
            self.sim._live.add(self)
            async with asyncio.TaskGroup() as tg:
                replier = tg.create_task(self._replier())
                try:
                    await self._read_loop()
                finally:
                    replier.cancel()
        except* _Closed:
            pass
        except* ConnectionClosed:
            pass
        finally:
            self.sim._live.discard(self)
            for task in list(self._side_tasks):
                task.cancel()

    async def _recv(self) -> dict[str, Any]:
        raw = await self.ws.recv(decode=False)
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            await self.close(1007, INVALID_ARGUMENT)
        self.rec.messages.append(
            ClientMessage(time.monotonic(), normalise_keys(msg), len(raw))
        )
        self.sim._notify()
        return msg

    async def _setup(self) -> None:
        try:
            raw = await asyncio.wait_for(self._recv(), self.sim.setup_timeout_s)
        except TimeoutError:
            await self.close(1007, INVALID_ARGUMENT)
        if "setup" not in raw:
            await self.close(1007, INVALID_ARGUMENT)
        self.rec.raw_setup = raw["setup"]
        setup: dict[str, Any] = normalise_keys(raw["setup"])
        self.rec.setup = setup
        sim = self.sim
        if sim._api_key is not None and self.rec.api_key != sim._api_key:
            await self.close(1007, BAD_KEY)
        model = str(setup.get("model", ""))
        if not model.startswith("models/"):
            await self.close(1007, INVALID_ARGUMENT)
        if sim._fault(self.rec, Fault.CLOSE_1007, 0):
            await self.close(1007, INVALID_ARGUMENT)
        if sim._fault(self.rec, Fault.CLOSE_1008, 0):
            await self.close(1008, self._not_found(model))
        if sim._fault(self.rec, Fault.TCP_DROP, 0):
            self.drop()
        resumption = setup.get("sessionResumption")
        self.resumption = isinstance(resumption, dict)
        handle = resumption.get("handle") if self.resumption else None
        if handle:
            self.rec.resumed_handle = handle
            known = sim._handles.get(handle)
            if sim._fault(self.rec, Fault.REJECT_HANDLE, 0) or known is None:
                await self.close(1007, INVALID_ARGUMENT)
            assert known is not None
            conv, turns = known
            # A handle resumes the conversation as it was when the handle was issued.
            self.conv = conv
            conv.turns = turns
        parts = (setup.get("systemInstruction") or {}).get("parts") or []
        self.system_text = " ".join(
            str(p.get("text", "")) for p in parts if isinstance(p, dict)
        )
        ric = setup.get("realtimeInputConfig") or {}
        self.aad_disabled = bool(
            (ric.get("automaticActivityDetection") or {}).get("disabled")
        )
        self.no_interruption = ric.get("activityHandling") == "NO_INTERRUPTION"
        self.in_transcription = "inputAudioTranscription" in setup
        if sim.server_vad_silence_ms is not None and not self.aad_disabled:
            aad = ric.get("automaticActivityDetection") or {}
            self.vad_silence_ms = int(aad.get("silenceDurationMs") or sim.server_vad_silence_ms)
        self.out_transcription = "outputAudioTranscription" in setup
        plan = sim._fault(self.rec, Fault.SLOW_SETUP, 0)
        if plan:
            await asyncio.sleep(plan.delay_s)
        await self.send({"setupComplete": {}})
        plan = sim._fault(self.rec, Fault.GOAWAY, 0)
        if plan:
            await self._goaway(plan)

    def _not_found(self, model: str) -> str:
        return (
            f"{model} is not found for API version {self.rec.api_version}, or is not "
            "supported for bidiGenerateContent. Call ListModels to see the list of "
            "available models and their supported methods."
        )

    async def _read_loop(self) -> None:
        while True:
            raw = await self._recv()
            msg = normalise_keys(raw)
            if "realtimeInput" in msg:
                await self._realtime(msg["realtimeInput"] or {})
            elif "clientContent" in msg:
                cc = msg["clientContent"] or {}
                for turn in cc.get("turns") or []:
                    for part in (turn or {}).get("parts") or []:
                        if isinstance(part, dict) and "text" in part:
                            self.turn_text.append(str(part["text"]))
                if cc.get("turnComplete"):
                    await self._end_turn("turnComplete")
            elif "toolResponse" in msg or "contextUpdate" in msg:
                pass  # accepted, no effect on the simulated conversation
            elif "setup" in msg:
                await self.close(1007, INVALID_ARGUMENT)
            else:
                await self.close(1007, INVALID_ARGUMENT)

    async def _realtime(self, ri: dict[str, Any]) -> None:
        blobs: list[dict[str, Any]] = []
        if isinstance(ri.get("audio"), dict):
            blobs.append(ri["audio"])
        blobs.extend(b for b in ri.get("mediaChunks") or [] if isinstance(b, dict))
        for blob in blobs:
            if not str(blob.get("mimeType", "")).startswith("audio/pcm"):
                continue
            try:
                pcm = b64decode_any(str(blob.get("data", "")))
            except ValueError:
                await self.close(1007, INVALID_ARGUMENT)
            self.rec.audio_buf += pcm
            self.turn_audio += len(pcm)
            if self.vad_silence_ms is not None and await self._end_point(pcm):
                continue
            if (
                self.reply_task is not None
                and not self.reply_task.done()
                and not self.no_interruption
                and not self.aad_disabled
                and _rms(pcm) > self.sim.barge_in_rms
            ):
                await self._barge_in()
        if ri.get("text"):
            self.turn_text.append(str(ri["text"]))
        if "activityStart" in ri or "activityEnd" in ri:
            if not self.aad_disabled:
                await self.close(1007, INVALID_ARGUMENT)
            if (
                "activityStart" in ri
                and self.reply_task is not None
                and not self.reply_task.done()
                and not self.no_interruption
            ):
                await self._barge_in()
            if "activityEnd" in ri:
                await self._end_turn("activityEnd")
        if ri.get("audioStreamEnd"):
            if self.aad_disabled:
                await self.close(1007, INVALID_ARGUMENT)
            await self._end_turn("audioStreamEnd")

    async def _end_point(self, pcm: bytes) -> bool:
        """Server-side VAD: True when this audio ended the turn (silence after speech)."""
        assert self.vad_silence_ms is not None
        piece = MIC_RATE * 2 // 50  # 20 ms
        for i in range(0, len(pcm), piece):
            part = pcm[i : i + piece]
            if _rms(part) > self.sim.barge_in_rms:
                self.turn_speech = True
                self.vad_quiet_ms = 0.0
            elif self.turn_speech:
                self.vad_quiet_ms += len(part) * 500 / MIC_RATE
                if self.vad_quiet_ms >= self.vad_silence_ms:
                    await self._end_turn("serverVad")
                    return True
        return False

    async def _barge_in(self) -> None:
        task = self.reply_task
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.rec.replies and not self.rec.replies[-1].completed:
            self.rec.replies[-1].interrupted = True
        await self.send({"serverContent": {"interrupted": True}})
        self.sim._notify()

    async def _end_turn(self, kind: str) -> None:
        self.rec.turn_ends.append(TurnEnd(time.monotonic(), kind))
        self.sim._notify()
        seconds = self.turn_audio / 2 / MIC_RATE
        text = " ".join(self.turn_text).strip()
        self.turn_audio = 0
        self.turn_text = []
        had_speech, self.turn_speech, self.vad_quiet_ms = self.turn_speech, False, 0.0
        if not text and seconds == 0 and kind == "audioStreamEnd":
            return  # an empty stream end (e.g. after a turn already ended) is not a turn
        if not text and self.vad_silence_ms is not None and not had_speech:
            return  # with server-side VAD, silence alone is not a turn
        heard = text if text else f"[{seconds:.1f} s of audio]"
        self.replies.put_nowait(
            (int(seconds * TOKENS_PER_AUDIO_SECOND) + max(0, len(text) // 4), heard)
        )

    # -- replies --------------------------------------------------------------------------

    async def _replier(self) -> None:
        # One reply at a time, in order; barge-in cancels only the reply task, not this loop.
        while True:
            prompt_tokens, heard = await self.replies.get()
            task = asyncio.create_task(self._reply(prompt_tokens, heard))
            self.reply_task = task
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                raise
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _reply(self, prompt_tokens: int, heard: str) -> None:
        sim = self.sim
        self.turn_in_conn += 1
        n = self.turn_in_conn
        if sim._fault(self.rec, Fault.NO_REPLY, n):
            return  # the turn is swallowed: no reply, no turnComplete, no close
        self.conv.turns += 1
        text = reply_text(self.conv.turns, self.system_text, sim.reply_texts)
        self.conv.history.append(heard)
        reply = ReplyRecord(turn=self.conv.turns, text=text)
        self.rec.replies.append(reply)
        if sim._fault(self.rec, Fault.CLOSE_1007, n):
            await self.close(1007, INVALID_ARGUMENT)
        if sim._fault(self.rec, Fault.CLOSE_1008, n):
            await self.close(
                1008, self._not_found(str((self.rec.setup or {}).get("model")))
            )
        if self.in_transcription:
            await self.send(
                {
                    "serverContent": {
                        "inputTranscription": {"text": heard, "finished": True}
                    }
                }
            )
        # Think time and synthesis overlap; gather cancels both if the reply is cut short.
        pcm, _ = await asyncio.gather(
            sim._voice.pcm(text), asyncio.sleep(sim.first_byte_delay_s)
        )
        if sim._fault(self.rec, Fault.UNKNOWN_KEY, n):
            await self.send(
                {
                    "error": {
                        "code": 500,
                        "message": INTERNAL_ERROR,
                        "status": "INTERNAL",
                    }
                }
            )
            return
        if sim._fault(self.rec, Fault.OVERSIZE_FRAME, n):
            big = bytes(1_100_000)  # base64 makes this ~1.4 MiB on the wire
            await self.send(
                {
                    "serverContent": {
                        "modelTurn": {
                            "parts": [
                                {
                                    "inlineData": {
                                        "mimeType": f"audio/pcm;rate={REPLY_RATE}",
                                        "data": _b64(big),
                                    }
                                }
                            ]
                        }
                    }
                }
            )
            return
        chunk = REPLY_RATE * 2 * sim.chunk_ms // 1000
        chunk -= chunk % 2
        chunks = [pcm[i : i + chunk] for i in range(0, len(pcm), chunk)] or [b""]
        words = text.split()
        per = max(1, math.ceil(len(words) / len(chunks)))
        start = time.monotonic()
        period = sim.chunk_ms / 1000 / sim.pace
        for i, data in enumerate(chunks):
            delay = start + i * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if reply.first_chunk_t is None:
                reply.first_chunk_t = time.monotonic()  # as it goes onto the socket
            content: dict[str, Any] = {
                "modelTurn": {
                    "parts": [
                        {
                            "inlineData": {
                                "mimeType": f"audio/pcm;rate={REPLY_RATE}",
                                "data": _b64(data),
                            }
                        }
                    ]
                }
            }
            await self.send({"serverContent": content})
            piece = words[i * per : (i + 1) * per]
            if self.out_transcription and piece:
                lead = "" if i == 0 else " "
                await self.send(
                    {
                        "serverContent": {
                            "outputTranscription": {"text": lead + " ".join(piece)}
                        }
                    }
                )
            reply.last_chunk_t = time.monotonic()
            reply.audio_bytes += len(data)
            if i == 0:
                if sim._fault(self.rec, Fault.CLOSE_1011_MID_REPLY, n):
                    await self.close(1011, INTERNAL_ERROR)
                if sim._fault(self.rec, Fault.TCP_DROP, n):
                    self.drop()
        await self.send({"serverContent": {"generationComplete": True}})
        out_tokens = round(reply.audio_bytes / 2 / REPLY_RATE * TOKENS_PER_AUDIO_SECOND)
        usage = {
            "promptTokenCount": prompt_tokens,
            "responseTokenCount": out_tokens,
            "totalTokenCount": prompt_tokens + out_tokens,
            "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": prompt_tokens}],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": out_tokens}],
        }
        if self.resumption and not sim.handle_after_turn_complete:
            await self._send_handle()
        await self.send(
            {"serverContent": {"turnComplete": True}, "usageMetadata": usage}
        )
        reply.completed = True
        sim._notify()
        if self.resumption and sim.handle_after_turn_complete:
            await self._send_handle()
        plan = sim._fault(self.rec, Fault.GOAWAY, n)
        if plan:
            await self._goaway(plan)

    async def _send_handle(self) -> None:
        handle = self.sim._issue_handle(self.conv)
        self.rec.handles_sent.append(handle)
        await self.send(
            {"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}}
        )

    async def _goaway(self, plan: FaultPlan) -> None:
        seconds = plan.delay_s
        await self.send({"goAway": {"timeLeft": f"{max(1, math.ceil(seconds))}s"}})
        await asyncio.sleep(seconds)
        await self.close(1011, DEADLINE_EXPIRED)


# ---------------------------------------------------------------------------------------------
# Standalone


def build_parser(
    parser: argparse.ArgumentParser | None = None,
) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="python -m device.live.simulator",
        description="Run the local Gemini Live simulator.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--voice", choices=("auto", "espeak", "tone"), default="auto")
    p.add_argument(
        "--pace", type=float, default=4.0, help="reply speed, multiple of real time"
    )
    p.add_argument(
        "--first-byte-delay", type=float, default=0.2, help="seconds before a reply"
    )
    p.add_argument(
        "--api-key", default=None, help="accept only this key (default: any)"
    )
    p.add_argument("--cert-dir", default=None, help="where to write the certificate")
    p.add_argument(
        "--server-vad-ms", type=int, default=None, metavar="MS",
        help="end a turn after MS of silence following speech, as the real service's "
        "automatic activity detection does (default: only on the client's signals)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[@CONN|*][:TURN][+S]",
        help="inject a fault; names: " + ", ".join(f.value for f in Fault),
    )
    return p


async def _serve(args: argparse.Namespace) -> None:
    async with Simulator(
        host=args.host,
        port=args.port,
        voice=args.voice,
        pace=args.pace,
        first_byte_delay_s=args.first_byte_delay,
        faults=args.fault,
        api_key=args.api_key,
        cert_dir=args.cert_dir,
        server_vad_silence_ms=args.server_vad_ms,
    ) as sim:
        print(f"base_url {sim.base_url}", flush=True)
        print(f"ca_file  {sim.ca_file}", flush=True)
        print(f"voice    {sim.voice}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        [_as_plan(f) for f in args.fault]
    except ValueError as e:
        print(f"error: {e}")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
