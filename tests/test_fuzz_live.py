"""Fuzzing the device's handling of what the Live API says: random but well-formed Live
messages, and malformed ones, through the real google-genai SDK.

The simulator (real TLS WebSocket, real SDK on the device side) accepts the device's
connection; then each example puts raw frames on that socket, followed by a plain
`turnComplete`. Whatever came before, the box's LiveSession must either deliver that
turnComplete or report the link down and reconnect, never raise out of `run()`, and only post
events the daemon knows; the reply audio it posts must play (any byte count)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.audio.buffer import BufferedSpeaker
from device.config import Config, Secret
from device.events import (GoAway, Interrupted, ReplyAudio, ResumptionHandle, Transcript,
                           TurnComplete)
from device.live.session import Backoff, HandleRefused, LinkDown, LinkUp, LiveSession, _seconds
from device.live.simulator import Simulator

KNOWN_EVENTS = (GoAway, Interrupted, ReplyAudio, ResumptionHandle, Transcript, TurnComplete,
                HandleRefused, LinkDown, LinkUp)
SENTINEL = {"serverContent": {"turnComplete": True}}


class LoopThread:
    """One event loop in a thread for the whole module: hypothesis drives it example by
    example, and the simulator lives across examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[LoopThread, Simulator]]:
    lt = LoopThread()
    sim = Simulator(voice="tone")
    lt.run(sim.start())
    try:
        yield lt, sim
    finally:
        lt.run(sim.close())
        lt.stop()


# --- strategies: what a Live server could send ----------------------------------------------

texts = st.text(max_size=40)
ints = st.one_of(st.integers(-5, 10_000), st.integers(-(2**70), 2**70))
pcm = st.binary(max_size=3001)  # odd sizes too: half a sample is possible on the wire
b64 = pcm.map(lambda b: base64.b64encode(b).decode())
durations = st.one_of(st.from_regex(r"[0-9.]{1,6}s", fullmatch=True), texts)

part = st.one_of(
    st.fixed_dictionaries({"inlineData": st.fixed_dictionaries(
        {"data": b64}, optional={"mimeType": st.sampled_from(
            ["audio/pcm;rate=24000", "audio/pcm", "text/plain", ""])})}),
    st.fixed_dictionaries({"text": texts}),
    st.fixed_dictionaries({"thought": st.booleans(), "text": texts}),
)
transcription = st.fixed_dictionaries({}, optional={"text": texts, "finished": st.booleans()})
server_content = st.fixed_dictionaries({}, optional={
    "modelTurn": st.fixed_dictionaries({"parts": st.lists(part, max_size=3)},
                                       optional={"role": st.just("model")}),
    "turnComplete": st.booleans(),
    "interrupted": st.booleans(),
    "generationComplete": st.booleans(),
    "inputTranscription": transcription,
    "outputTranscription": transcription,
})
usage = st.fixed_dictionaries({}, optional={
    "promptTokenCount": ints, "responseTokenCount": ints, "totalTokenCount": ints,
    "responseTokensDetails": st.lists(st.fixed_dictionaries(
        {"modality": st.sampled_from(["AUDIO", "TEXT", "WHATEVER"]), "tokenCount": ints}),
        max_size=2)})
well_formed = st.fixed_dictionaries({}, optional={
    "serverContent": server_content,
    "usageMetadata": usage,
    "sessionResumptionUpdate": st.fixed_dictionaries({}, optional={
        "newHandle": texts, "resumable": st.booleans()}),
    "setupComplete": st.just({}),
}).filter(bool)
#: A goAway ends the connection (planned): it comes last, or what follows is never read.
go_away = st.fixed_dictionaries({"goAway": st.fixed_dictionaries({}, optional={
    "timeLeft": durations})})

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8)
malformed = st.one_of(
    json_values.map(json.dumps),                                        # any JSON at all
    st.dictionaries(st.sampled_from(["serverContent", "goAway", "usageMetadata",
                                     "sessionResumptionUpdate", "toolCall", "error", "code"]),
                    json_values, min_size=1).map(json.dumps),           # known keys, wrong shapes
    st.binary(max_size=200),                                            # not JSON
)
frame = st.one_of(well_formed.map(json.dumps), malformed)


async def _exchange(sim: Simulator, frames: list[str | bytes]) -> tuple[list[Any], str]:
    """Connect a LiveSession, send `frames` then a turnComplete; how did the session take it?"""
    events: list[Any] = []
    changed = asyncio.Event()

    def on_event(ev: Any) -> None:
        events.append(ev)
        changed.set()

    cfg = Config().replace(live={"base_url": sim.base_url, "ca_file": str(sim.ca_file),
                                 "simulator": False, "connect_timeout_s": 5.0})
    session = LiveSession(cfg, Secret("fuzz-key"), on_event, backoff=Backoff(base_s=0.05))
    task = asyncio.create_task(session.run())
    try:
        async with asyncio.timeout(10):
            while not any(isinstance(e, LinkUp) for e in events):
                changed.clear()
                await changed.wait()
        server_side = max(sim._live, key=lambda s: s.rec.index)
        for f in frames:
            await server_side.ws.send(f.encode() if isinstance(f, str) else f)
        await server_side.ws.send(json.dumps(SENTINEL).encode())
        async with asyncio.timeout(10):
            while True:
                if any(isinstance(e, LinkDown) for e in events):
                    outcome = "link down"
                    break
                if events and isinstance(events[-1], TurnComplete) and task.done() is False:
                    outcome = "delivered"
                    break
                if task.done():
                    outcome = "ended"
                    break
                changed.clear()
                await changed.wait()
    finally:
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
    if not isinstance(results[0], asyncio.CancelledError | type(None)):
        raise AssertionError(f"LiveSession.run() raised {results[0]!r}") from results[0]
    return events, outcome


def _check(events: list[Any], outcome: str) -> None:
    for ev in events:
        assert isinstance(ev, KNOWN_EVENTS), ev
    assert outcome in ("delivered", "link down"), outcome
    downs = [e for e in events if isinstance(e, LinkDown)]
    assert not any(d.permanent for d in downs), "a server message is never the box's fault"
    # What reaches the speaker must play, whatever its length.
    speaker = BufferedSpeaker(24_000, volume=0.8, max_volume=1.0, prefill_s=0.06)
    for ev in events:
        if isinstance(ev, ReplyAudio):
            assert isinstance(ev.pcm, bytes)
            speaker.write(ev.pcm, t_received=ev.t)
        if isinstance(ev, GoAway):
            assert ev.time_left_s >= 0


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(messages=st.lists(well_formed, min_size=1, max_size=4),
       last=st.one_of(st.none(), go_away))
def test_well_formed_live_messages_never_break_the_session(rig, messages, last) -> None:
    lt, sim = rig
    frames = [json.dumps(m) for m in [*messages, *([last] if last else [])]]
    events, outcome = lt.run(_exchange(sim, frames))
    _check(events, outcome)
    for down in (e for e in events if isinstance(e, LinkDown)):
        assert down.reason == "the server ended the connection", \
            f"a well-formed message was taken for a fault: {down.reason}"
    if not any('"goAway"' in f for f in frames):
        assert outcome == "delivered", "well-formed messages keep the link"


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=st.lists(frame, min_size=1, max_size=3))
def test_malformed_live_messages_cost_a_reconnect_at_most(rig, frames) -> None:
    lt, sim = rig
    events, outcome = lt.run(_exchange(sim, frames))
    _check(events, outcome)


# --- regressions found by the fuzzers above -------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("50s", 50.0), ("1.5s", 1.5), ("1..2s", 0.0),
                                           (".s", 0.0), ("s", 0.0), ("", 0.0), (None, 0.0),
                                           ("1e400s", 0.0), ("9" * 400 + "s", 0.0)])
def test_goaway_time_left_that_is_not_a_number_reads_as_zero(text, seconds) -> None:
    assert _seconds(text) == seconds


def test_reply_audio_of_an_odd_byte_count_plays() -> None:
    speaker = BufferedSpeaker(24_000, volume=0.8, max_volume=1.0, prefill_s=0.06)
    speaker.write(b"\x01\x02\x03", t_received=0.0)
    speaker.write(b"\x04", t_received=None)
    assert speaker.buffer.queued_s == pytest.approx(2 / 24_000, abs=1e-6), "both samples kept"
    speaker.write(b"\x05", t_received=None)
    speaker.flush()
    speaker.write(b"\x06\x07", t_received=None)  # the flushed half sample is not glued on
    assert speaker.buffer.queued_s == pytest.approx(1 / 24_000, abs=1e-6)
