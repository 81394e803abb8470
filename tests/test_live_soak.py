"""Soak: a 30-minute conversation (in audio time, run faster than real time) whose connection
is switched by goAway after every turn and sometimes in the middle of the child's sentence.
Every turn must be answered, the conversation must keep its context across every switch,
and not one sample of the child's speech may be lost or doubled.

Deselected by default (`-m "not soak"` in pyproject); run it with `make soak-live`.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from device.events import GoAway, ReplyAudio, TurnComplete
from device.live.session import Backoff, LinkDown, LinkUp
from device.live.simulator import Simulator
from tests.live_helpers import utterance
from tests.test_live_session import Probe

pytestmark = pytest.mark.soak

CONVERSATION_S = 30 * 60
CHUNK = 3200  # 100 ms
TEXTS = ["Tell me a story about a dragon", "What did the dragon eat for breakfast?",
         "Why is the sky blue?", "Can we sing a song together?"]


async def test_thirty_minute_conversation_with_goaway_every_few_seconds() -> None:
    said = [utterance(t).astype("<i2").tobytes() for t in TEXTS]
    sent: list[bytes] = []
    async with Simulator(voice="tone", pace=200.0, first_byte_delay_s=0.01,
                         faults=["goaway@*:1+0.2"]) as sim:
        async with Probe(sim, max_connects_per_minute=600, reply_timeout_s=10.0,
                         backoff=Backoff(base_s=0.05, cap_s=0.5, max_attempts=4)) as p:
            talk_s, turns, started = 0.0, 0, time.monotonic()
            while talk_s < CONVERSATION_S:
                pcm = said[turns % len(said)]
                replied = len(p.of(ReplyAudio))
                for i in range(0, len(pcm), CHUNK):
                    p.session.send_audio(pcm[i:i + CHUNK])
                    if turns % 7 == 3 and i == CHUNK * 5:
                        # mid-sentence switch: let half a second go up, then goAway
                        target = sum(map(len, sent)) + CHUNK * 5
                        async with asyncio.timeout(10):
                            while p.session.uploaded_bytes < target:
                                await asyncio.sleep(0.005)
                        seen = len(p.of(GoAway))
                        sim.go_away_now(0.2)
                        # the rest of the sentence must go up on the next connection
                        await p.until(lambda: len(p.of(GoAway)) > seen)
                p.session.end_of_speech()
                sent.append(pcm)
                turns += 1
                await p.until(lambda: len(p.of(TurnComplete)) == turns, timeout=30)
                reply = sum(len(e.pcm) for e in p.of(ReplyAudio)[replied:]) / 48000
                assert reply > 0, f"turn {turns} got no reply audio"
                talk_s += len(pcm) / 32000 + reply
            wall = time.monotonic() - started
        links = p.of(LinkUp)
        downs = p.of(LinkDown)
    print(f"\nsoak: {turns} turns, {talk_s / 60:.1f} min of conversation in {wall:.0f} s, "
          f"{len(links)} connections, {sim.completed_turns()} replies, "
          f"{p.session.replayed_turns} turns resent")
    assert not any(d.final for d in downs)
    assert len(links) >= turns  # a switch after every turn
    assert all(d.retry_in_s == 0.0 for d in downs)  # every switch was planned: no backoff
    # every turn answered once, and the conversation's turn count ran on across every switch
    assert [r.turn for r in sim.replies() if r.completed] == list(range(1, turns + 1))
    received = sim.received_audio()
    if p.session.replayed_turns == 0:
        assert received == b"".join(sent)  # not a sample lost or doubled
    else:
        # a goAway that raced a reply made the session resend that turn whole
        print(f"soak: {p.session.replayed_turns} turns resent")
        assert len(received) > len(b"".join(sent))
    assert all(c.resumed_handle for c in sim.connections[1:])
