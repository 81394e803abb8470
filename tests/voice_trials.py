"""Voice barge-in through the whole box, with the speaker's echo in the microphone.

Shared by tests/test_voice_barge_in.py (a few trials) and bench/voice_bargein.py (20 trials,
10 minutes): the box as `talkie run` assembles it, on the private PulseAudio server with an
acoustic echo path (`PulseServer.echo_room`: what the speaker plays comes back into the mic
40 ms later through a room), the WebRTC echo canceller, the Live simulator speaking with
espeak-ng, and a child who says "stop" over the story at a set speech-to-echo ratio.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import numpy as np

from device.audio.pulse_harness import PulseServer, espeak
from device.live.simulator import Simulator
from device.states import State
from tests.audio_helpers import speech_bounds
from tests.test_daemon_states import RATE, Box

VOICE = '[audio]\nbarge_in = "voice"\necho_canceller = "webrtc"\n'
#: Long replies: the toy tells stories, one after another.
STORIES = (
    "Once upon a time a small green dragon lived on a hill, and every morning it counted the "
    "clouds, one by one, until the sun came up over the trees. Then it flew down to the river "
    "to drink, and the fish came up to say good morning. The dragon told them about the clouds.",
    "Far away, in a town made of gingerbread, there lived a mouse who baked the best cakes in "
    "the whole world. Every Sunday the animals came from the forest to taste them, and the owl "
    "always asked for a second slice, with extra honey and a cherry on the top.",
    "Did you know that the moon has no air at all? That means there is no sound up there, so "
    "astronauts talk to each other with radios inside their helmets. They bounce when they "
    "walk, because the moon pulls on them much less than the earth pulls on us.",
)
#: What the child says to interrupt, and to ask for the next story.
STOPS = ("Stop! Tell me another story.", "Stop it please, a new one!", "Stop! Something else.")
LOUD = 1000   # a sink sample above this is the story still sounding


def story_simulator() -> Simulator:
    """The Live simulator speaking stories with espeak-ng, sent 20 times faster than real time."""
    return Simulator(voice="espeak", pace=20.0, first_byte_delay_s=0.1, reply_texts=STORIES)


@dataclass
class StopTrials:
    """Per trial: seconds from the start of "stop" to the story's last sound (None: it went
    on for more than `give_up_s`)."""
    latencies: list[float | None] = field(default_factory=list)

    def within(self, seconds: float) -> int:
        return sum(1 for x in self.latencies if x is not None and x <= seconds)


def _active_power(x: np.ndarray) -> float:
    """Mean power over the samples that are sound, not pauses."""
    f = x.astype(np.float64)
    loud = np.abs(f) > 0.05 * max(1.0, float(np.max(np.abs(f))))
    return float(np.mean(f[loud] ** 2)) if loud.any() else 0.0


async def stop_trials(box: Box, pulse: PulseServer, n: int, *, ser_db: float = 10.0,
                      gain_db: float = -6.0, seed: int = 7,
                      give_up_s: float = 2.0) -> StopTrials:
    """`n` times: wait for a story, let it play 1.5 to 3 s, say "stop" at `ser_db` over the
    echo (echo power = what the sink played, less `gain_db`, over the speech's active part);
    time until the sink is silent. The words ask for the next story, which the next trial
    interrupts. The box must be listening at the start."""
    rng = random.Random(seed)
    out = StopTrials()
    box.say("Tell me a story please")
    for i in range(n):
        await box.reach(State.SPEAKING, timeout=20)
        with pulse.record() as rec:
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            echo_power = _active_power(rec.samples()) * 10 ** (gain_db / 10)
            stop = espeak(STOPS[i % len(STOPS)], RATE).astype(np.float64)
            stop *= np.sqrt(echo_power * 10 ** (ser_db / 10) / max(_active_power(stop), 1e-9))
            onset = speech_bounds(stop.astype(np.int16), RATE)[0]
            feeder = pulse.feed(np.clip(stop, -32768, 32767).astype(np.int16))
            try:
                await box.reach(State.LISTENING, timeout=give_up_s + 1)
            except AssertionError:
                pass   # counted below as never silenced
            await asyncio.sleep(0.3)
            assert feeder.started_at is not None
            word = feeder.started_at + onset / RATE
            x, timeline = rec.samples(), rec.timeline()
        loud = np.nonzero(np.abs(x) > LOUD)[0]
        end = timeline.index_at(word + give_up_s)
        before = loud[loud < min(end, len(x))]
        lat = (timeline.time_of(int(before[-1])) if len(before) else word) - word
        out.latencies.append(None if lat >= give_up_s - 0.1 else max(0.0, lat))
        if box.daemon.state is State.SPEAKING:   # it never stopped: press, as a child would
            box.tap()
            await box.reach(State.LISTENING, timeout=3)
            box.say("Tell me a story please")
    return out


async def toy_talks_alone(box: Box, seconds: float) -> tuple[int, float]:
    """Ask for stories and let each play to its end until the toy has talked `seconds`
    (nobody talks over it). Returns (voice barge-ins meanwhile, seconds the toy talked)."""
    start = box.daemon.gate.barge_ins
    talked = 0.0
    loop = asyncio.get_running_loop()
    while talked < seconds:
        box.say("Tell me a story please")
        await box.reach(State.SPEAKING, timeout=20)
        t0 = loop.time()
        await box.reach(State.LISTENING, timeout=120)
        talked += loop.time() - t0
    return box.daemon.gate.barge_ins - start, talked
