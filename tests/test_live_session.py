"""LiveSession on the real google-genai SDK against the simulator: turns, planned switches,
broken replies resent, reply timeouts, refused handles, error classes, the connect limiter."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import numpy as np
import pytest

from device.config import Config, Secret
from device.events import ReplyAudio, ResumptionHandle, TurnComplete, Transcript
from device.live.ratelimit import ConnectLimiter
from device.live.session import (Backoff, HandleRefused, LinkDown, LinkUp, LiveSession,
                                 classify)
from device.live.setup import SharedClient
from device.live.simulator import BAD_KEY, Fault, FaultPlan, Simulator
from tests.live_helpers import fast_sim, utterance

CHUNK = 640  # 20 ms of 16 kHz PCM, as the gate hands it over
FAST = Backoff(base_s=0.05, cap_s=0.2, max_attempts=3)


def cfg_for(sim: Simulator, **live: Any) -> Config:
    return Config().replace(live={"base_url": sim.base_url, "ca_file": str(sim.ca_file),
                                  "simulator": False, "connect_timeout_s": 5.0, **live})


class Probe:
    """A LiveSession and everything it reported."""

    def __init__(self, sim: Simulator, *, key: str = "k", handle: str | None = None,
                 recap: str = "", backoff: Backoff = FAST,
                 limiter: ConnectLimiter | None = None, client: SharedClient | None = None,
                 **live: Any) -> None:
        self.events: list[Any] = []
        self.changed = asyncio.Event()
        self.session = LiveSession(cfg_for(sim, **live), Secret(key), self._on, handle=handle,
                                   recap=recap, backoff=backoff, rng=random.Random(1),
                                   limiter=limiter, client=client)
        self.task: asyncio.Task[None] | None = None

    def _on(self, ev: Any) -> None:
        self.events.append(ev)
        self.changed.set()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def __aenter__(self) -> Probe:
        self.task = asyncio.create_task(self.session.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def until(self, pred: Any, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self.changed.clear()
                await self.changed.wait()

    async def say(self, pcm: bytes, realtime: bool = False) -> None:
        """Queue speech in 20 ms chunks (paced like a microphone if `realtime`), then its end."""
        for i in range(0, len(pcm), CHUNK):
            self.session.send_audio(pcm[i:i + CHUNK])
            if realtime:
                await asyncio.sleep(0.02)
        self.session.end_of_speech()


def speech(text: str = "Hello Talkie") -> bytes:
    return utterance(text).astype("<i2").tobytes()


async def test_two_turns_in_one_session_with_transcripts_usage_and_compression() -> None:
    async with fast_sim() as sim:
        async with Probe(sim) as p:
            first, second = speech("Hello Talkie"), speech("Tell me about dragons")
            await p.say(first)
            await p.until(lambda: len(p.of(TurnComplete)) == 1)
            await p.say(second)
            await p.until(lambda: len(p.of(TurnComplete)) == 2)
        assert len(sim.connections) == 1
        conn = sim.connections[0]
        assert conn.audio == first + second
        assert [e.kind for e in conn.turn_ends] == ["audioStreamEnd", "audioStreamEnd"]
        setup = conn.setup or {}
        assert setup["contextWindowCompression"]["triggerTokens"] > 0
        assert "slidingWindow" in setup["contextWindowCompression"]
        assert "sessionResumption" in setup
        # per turn: what the child said, what the toy said, what it cost
        usage = p.of(TurnComplete)[0].usage
        assert usage["prompt_token_count"] > 0 and usage["response_token_count"] > 0
        toy = "".join(t.text for t in p.of(Transcript) if t.role == "toy")
        assert "Okay" in toy and "go on" in toy
        assert any(t.role == "child" for t in p.of(Transcript))
        assert sum(len(e.pcm) for e in p.of(ReplyAudio)) == sum(
            r.audio_bytes for r in sim.replies())
        assert p.session.uploaded_bytes == len(first) + len(second)
        assert p.session.handle == conn.handles_sent[-1]


async def test_one_client_serves_every_conversation_and_a_failed_one_is_made_again(
        tmp_path) -> None:
    # Made per press, the SDK client cost 30-110 ms before the first word could go up.
    async with fast_sim() as sim:
        ca = tmp_path / "ca.pem"          # not there yet: the box was set up half-way
        cfg = cfg_for(sim, ca_file=str(ca))
        client = SharedClient(cfg, Secret("k"))
        client.start()
        with pytest.raises(FileNotFoundError):
            await client.get()
        ca.write_bytes(sim.ca_file.read_bytes())
        made = await client.get()
        for text in ("Hello Talkie", "Tell me about dragons"):   # two presses of the button
            async with Probe(sim, client=client, ca_file=str(ca)) as p:
                await p.say(speech(text))
                await p.until(lambda: p.of(TurnComplete))
            assert await client.get() is made
        assert len(sim.connections) == 2 and all(c.turn_ends for c in sim.connections)


async def test_speech_said_while_connecting_goes_up_in_messages_of_at_most_a_second() -> None:
    said = speech("Hello Talkie, once upon a time there was a very small dragon")
    async with fast_sim(faults=["slow-setup+0.5"]) as sim:
        async with Probe(sim) as p:
            await p.say(said)        # all of it queued before the link is up
            await p.until(lambda: p.of(TurnComplete))
        conn = sim.connections[0]
        assert conn.audio == said, "the backlog arrived changed"
        sizes = [len(m.data["realtimeInput"]["audio"]["data"].rstrip("=")) * 3 // 4
                 for m in conn.messages if "audio" in m.data.get("realtimeInput", {})]
        # one message per second of backlog, not one per 20 ms piece
        assert max(sizes) <= 32_000 and len(sizes) == -(-len(said) // 32_000)
        assert p.session.uploaded_bytes == len(said)


async def test_goaway_mid_utterance_loses_no_audio_and_the_turn_is_answered() -> None:
    said = speech("Once upon a time there was a very small dragon")
    async with fast_sim() as sim:
        async with Probe(sim) as p:
            await p.until(lambda: p.of(LinkUp))
            talking = asyncio.create_task(p.say(said, realtime=True))
            await asyncio.sleep(0.5)
            # goAway half a second into the child's sentence; the socket closes 0.5 s later
            assert sim.go_away_now(0.5) == 1
            await talking
            await p.until(lambda: p.of(TurnComplete))
        assert len(sim.connections) == 2
        first, second = sim.connections
        assert first.audio and second.audio, "the switch did not happen mid-utterance"
        # sample for sample: nothing lost, nothing doubled
        assert sim.received_audio() == said
        assert second.setup is not None
        assert second.setup["sessionResumption"].get("handle") is None  # none was issued yet
        downs = p.of(LinkDown)
        assert len(downs) == 1 and downs[0].retry_in_s == 0.0  # planned: no backoff
        assert second.replies and second.replies[0].completed


async def test_goaway_after_a_turn_resumes_with_the_newest_handle_at_once() -> None:
    async with fast_sim(faults=["goaway:1"]) as sim:
        async with Probe(sim) as p:
            await p.say(speech())
            await p.until(lambda: len(p.of(LinkUp)) == 2)
            await p.say(speech("And then?"))
            await p.until(lambda: len(p.of(TurnComplete)) == 2)
        first, second = sim.connections
        assert second.resumed_handle == first.handles_sent[-1]
        assert p.of(LinkDown)[0].retry_in_s == 0.0
        assert [r.turn for r in sim.replies()] == [1, 2]  # the conversation went on


@pytest.mark.parametrize("fault", ["close-1011-mid-reply", "tcp-drop"])
async def test_a_reply_broken_mid_way_is_asked_again_on_the_next_connection(fault: str) -> None:
    async with fast_sim(faults=[f"{fault}:2"]) as sim:
        async with Probe(sim) as p:
            await p.say(speech("Hello"))
            await p.until(lambda: len(p.of(TurnComplete)) == 1)
            second = speech("What do dragons eat?")
            await p.say(second)
            await p.until(lambda: len(p.of(TurnComplete)) == 2)
        c0, c1 = sim.connections
        assert c0.close_code in (1011, 1006)
        assert not c0.replies[-1].completed
        # the whole turn went up again, and the resumed conversation answered it
        assert c1.audio == second
        assert c1.resumed_handle == c0.handles_sent[-1]
        assert c1.replies[0].completed and c1.replies[0].turn == 2
        assert p.session.replayed_turns == 1


async def test_a_server_that_never_replies_is_asked_again_after_reply_timeout() -> None:
    async with fast_sim(faults=["no-reply:1"]) as sim:
        async with Probe(sim, reply_timeout_s=1.0) as p:
            said = speech()
            t0 = time.monotonic()
            await p.say(said)
            await p.until(lambda: p.of(TurnComplete))
            waited = time.monotonic() - t0
        assert len(sim.connections) == 2
        assert sim.connections[1].audio == said
        assert "did not answer within 1 s" in p.of(LinkDown)[0].reason
        assert waited >= 1.0


async def test_a_server_that_never_replies_twice_ends_the_session_to_tell_the_child() -> None:
    async with fast_sim(faults=["no-reply@*:1"]) as sim:
        async with Probe(sim, reply_timeout_s=1.0) as p:
            await p.say(speech())
            await p.until(lambda: any(d.final for d in p.of(LinkDown)))
            assert p.task is not None
            await asyncio.wait_for(p.task, 5)  # run() returned
        final = p.of(LinkDown)[-1]
        assert final.final and not final.permanent
        assert "did not answer" in final.reason
        assert len(sim.connections) == 2


async def test_bad_key_is_permanent_after_one_attempt_and_names_the_fix(caplog) -> None:
    async with fast_sim(api_key="the-right-key") as sim:
        async with Probe(sim, key="a-wrong-key", handle="some-handle") as p:
            await p.until(lambda: p.of(LinkDown))
            await asyncio.sleep(0.3)  # no second attempt follows
        assert len(sim.connections) == 1
        down = p.of(LinkDown)[0]
        assert down.final and down.permanent
        assert BAD_KEY in down.reason and "talkie setup --api-key-file" in down.reason
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "talkie setup --api-key-file" in errors[0].getMessage()
        assert "a-wrong-key" not in caplog.text
        assert not p.of(HandleRefused)  # a bad key is not a stale handle


@pytest.mark.parametrize("fault,cause,fix", [
    ("close-1007", "1007", "[live] model"),
    ("close-1008", "is not found", "set [live] model"),
    ("http-403", "HTTP 403", "talkie setup --api-key-file"),
    ("http-404", "HTTP 404", "[live] base_url"),
])
async def test_permanent_faults_stop_after_one_attempt(fault: str, cause: str, fix: str) -> None:
    async with fast_sim(faults=[f"{fault}@*"]) as sim:
        async with Probe(sim) as p:
            await p.until(lambda: p.of(LinkDown))
            await asyncio.sleep(0.3)
        assert len(sim.connections) == 1
        down = p.of(LinkDown)[0]
        assert down.final and down.permanent
        assert cause in down.reason and fix in down.reason


async def test_a_refused_handle_is_dropped_and_the_new_setup_carries_the_recap() -> None:
    async with fast_sim(faults=["reject-handle"]) as sim:
        async with Probe(sim, handle="expired-handle",
                         recap="the child said 'I like owls' and you answered 'Me too'.") as p:
            await p.say(speech())
            await p.until(lambda: p.of(TurnComplete))
        c0, c1 = sim.connections
        assert c0.resumed_handle == "expired-handle" and c0.close_code == 1007
        assert p.of(HandleRefused) == [HandleRefused("expired-handle")]
        assert c1.setup is not None and c1.resumed_handle is None
        text = c1.setup["systemInstruction"]["parts"][0]["text"]
        assert "I like owls" in text
        # a resumed setup does not repeat the recap: the server has the context
        assert "I like owls" not in c0.setup["systemInstruction"]["parts"][0]["text"]
        assert p.of(ResumptionHandle)[-1].handle == c1.handles_sent[-1]


async def test_transient_faults_back_off_and_recover() -> None:
    async with fast_sim(faults=["tcp-drop@0:0", "tcp-drop@1:0"]) as sim:
        async with Probe(sim) as p:
            await p.say(speech())
            await p.until(lambda: p.of(TurnComplete))
        assert len(sim.connections) == 3
        downs = p.of(LinkDown)
        assert len(downs) == 2 and not any(d.final for d in downs)
        assert all(0 <= d.retry_in_s <= FAST.cap_s for d in downs)


async def test_setup_complete_that_never_comes_times_out_and_retries() -> None:
    async with fast_sim(faults=["slow-setup+30"]) as sim:
        async with Probe(sim, connect_timeout_s=1.0) as p:
            await p.say(speech())
            await p.until(lambda: p.of(TurnComplete), timeout=20)
        assert len(sim.connections) == 2
        assert "did not answer in time" in p.of(LinkDown)[0].reason


async def test_every_connect_passes_the_limiter() -> None:
    limiter = ConnectLimiter(2)
    async with fast_sim(faults=["tcp-drop@*:0"]) as sim:
        async with Probe(sim, limiter=limiter,
                         backoff=Backoff(base_s=0.01, cap_s=0.01, max_attempts=50)):
            await sim.wait_connections(2)
            await asyncio.sleep(1.5)  # without the cap this would be dozens of attempts
        assert len(sim.connections) == 2
        assert limiter.wait_time() > 50


def test_limiter_sliding_window() -> None:
    now = [1000.0]
    limiter = ConnectLimiter(3, clock=lambda: now[0])

    async def take() -> None:
        await limiter.acquire()

    for _ in range(3):
        asyncio.run(take())
        now[0] += 1
    assert limiter.wait_time() == pytest.approx(57.0)
    now[0] += 57
    assert limiter.wait_time() == 0.0
    with pytest.raises(ValueError):
        ConnectLimiter(0)


def test_classify_transient_and_permanent() -> None:
    from google.genai import errors

    def api(code: int, reason: str) -> errors.APIError:
        try:
            errors.APIError.raise_error(code, reason, None)
        except errors.APIError as e:
            return e
        raise AssertionError

    assert classify(api(1011, "Internal error encountered."))[0] is False
    assert classify(api(1006, "abnormal closure"))[0] is False
    assert classify(socket.gaierror(-2, "Name or service not known"))[0] is False
    assert classify(ConnectionRefusedError(111, "refused"))[0] is False
    assert classify(TimeoutError())[0] is False
    permanent, why = classify(api(1007, BAD_KEY))
    assert permanent and "talkie setup --api-key-file" in why
    assert classify(api(1008, "models/x is not found"))[0] is True


def test_resent_audio_is_bounded() -> None:
    from device.live import session as mod
    s = LiveSession(Config(), None, lambda ev: None)
    big = bytes(CHUNK)
    for _ in range(mod.MAX_PENDING_BYTES // CHUNK + 100):
        s.send_audio(big)
    assert s._pending_bytes <= mod.MAX_PENDING_BYTES
    assert s.dropped_bytes == 100 * CHUNK
    assert np.frombuffer(b"".join(x for x in s._pending if isinstance(x, bytes)),
                         np.int16).size * 2 <= mod.MAX_PENDING_BYTES
