"""Voice barge-in: the child talks over the toy and the toy stops, through the whole box.

The box as `talkie run` assembles it, on the private PulseAudio server whose microphone also
hears the speaker (40 ms later, through a room: `PulseServer.echo_room`), with the WebRTC echo
canceller; the real google-genai SDK against the Live simulator (tests/voice_trials.py).
bench/voice_bargein.py runs the same for 20 trials and 10 minutes.
"""

from __future__ import annotations

import asyncio

from device.states import State
from tests.live_helpers import fast_sim
from tests.test_daemon_states import RATE, running, sound
from tests.voice_trials import STORIES, VOICE, stop_trials, story_simulator, toy_talks_alone

GAIN_DB = -6.0


async def test_saying_stop_over_the_story_silences_it_and_the_toy_answers(pulse, tmp_path):
    # How fast (the <= 300 ms bar) is bench/voice_bargein.py's figure: a timed assertion here
    # failed on the suite's loaded workers (standards: speed is measured by benches).
    with pulse.echo_room(delay_ms=40, gain_db=GAIN_DB, rt60_s=0.25):
        async with running(pulse, tmp_path, sim=story_simulator(), extra=VOICE) as box:
            box.tap()
            await box.reach(State.LISTENING)
            trials = await stop_trials(box, pulse, 4, ser_db=10.0, gain_db=GAIN_DB)
            ms = [None if x is None else round(x * 1000) for x in trials.latencies]
            print("stop -> silence (ms):", ms)
            assert None not in ms, f"the story went on after 'stop' (ms per trial: {ms})"
            # what the child said reached the toy, which answered it (the next story)
            assert box.sim.completed_turns() >= 4
            assert box.daemon.gate.barge_ins == 4


async def test_the_toy_never_interrupts_itself(pulse, tmp_path):
    with pulse.echo_room(delay_ms=40, gain_db=GAIN_DB, rt60_s=0.25):
        async with running(pulse, tmp_path, sim=story_simulator(), extra=VOICE) as box:
            box.tap()
            await box.reach(State.LISTENING)
            barge_ins, talked = await toy_talks_alone(box, 30.0)
            assert talked >= 30.0
            assert barge_ins == 0, f"the toy interrupted itself {barge_ins} times in {talked:.0f} s"


async def test_with_button_barge_in_talking_over_the_toy_does_not_stop_it(pulse, tmp_path):
    sim = fast_sim(reply_texts=STORIES[:1], pace=40.0)
    async with running(pulse, tmp_path, sim=sim) as box:
        box.tap()
        await box.reach(State.LISTENING)
        box.say("Tell me a story")
        await box.reach(State.SPEAKING)
        with pulse.record() as rec:
            await asyncio.sleep(0.5)
            box.say("Stop! Tell me about dragons.")
            await asyncio.sleep(2.5)
        assert box.daemon.state is State.SPEAKING, "half duplex: only the button interrupts"
        assert sound(rec.samples()[-RATE:]) > 0.3, "the story goes on"
