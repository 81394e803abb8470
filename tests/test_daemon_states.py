"""Every transition of the box's state machine, driven the way a child and a parent drive it.

The whole box runs in this process as `talkie run` assembles it (`device.cli._box`): real
PortAudio on the private PulseAudio server (speech from espeak-ng fed into the mic, the
speaker recorded from the null sink), gpiozero mock pins pressed at pin level, the real
google-genai SDK against the Live simulator, real SQLite history. The only thing the tests
move by hand is the wall clock the parents' limits read (quiet hours, a new day).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.audio.pulse_harness import PulseServer, espeak
from device.cli import _box
from device.config import Secret, loads
from device.live.simulator import Simulator
from device.states import State
from tests.live_helpers import fast_sim

RATE = 48_000
KEY = "test-key-for-the-state-machine"
LOUD = 1000        # a sample above this on the sink is sound, not silence


@dataclass
class WallClock:
    """The local time the parents' limits see; a test moves it."""
    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Box:
    daemon: Any
    pulse: PulseServer
    sim: Simulator
    states: list[State] = field(default_factory=list)

    @property
    def button(self) -> Any:
        return self.daemon.button_pin

    @property
    def led(self) -> Any:
        return self.daemon.gpio.leds

    def tap(self) -> None:
        self.button.drive_low()
        self.button.drive_high()

    async def hold(self, seconds: float) -> None:
        self.button.drive_low()
        await asyncio.sleep(seconds)
        self.button.drive_high()

    def say(self, text: str) -> None:
        """The child says `text` into the microphone (after what was said before)."""
        self.pulse.feed(espeak(text, RATE))

    async def reach(self, state: State, timeout: float = 10.0) -> None:
        """Wait until the box is in `state` (or has passed through it since the last call)."""
        async def seen() -> None:
            while state not in self.states:
                await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(seen(), timeout)
        except TimeoutError:
            raise AssertionError(f"never reached {state} within {timeout} s; "
                                 f"states: {[str(s) for s in self.states]}") from None
        del self.states[:self.states.index(state) + 1]

    async def stays(self, state: State, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.daemon.state is state, f"{self.daemon.state} instead of {state}"


def config(pulse: PulseServer, sim: Simulator, tmp: Path, extra: str = "") -> Any:
    cfg = loads(extra)
    return cfg.replace(
        audio={"backend": "sounddevice", "input": "pulse", "output": "pulse",
               "input_rate": RATE, "output_rate": RATE, "volume": 1.0},
        gpio={"pin_factory": "mock"},
        live={"simulator": False, "base_url": sim.base_url, "ca_file": str(sim.ca_file),
              "connect_timeout_s": 5.0, "reply_timeout_s": 8.0},
        history={"path": str(tmp / "history.db")})


@contextlib.asynccontextmanager
async def running(pulse: PulseServer, tmp: Path, *, sim: Simulator | None = None,
                  extra: str = "", clock: WallClock | None = None,
                  **box_args: Any) -> AsyncIterator[Box]:
    sim = sim or fast_sim()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(sim)
        daemon = await stack.enter_async_context(
            _box(config(pulse, sim, tmp, extra), Secret(KEY), state=tmp / "state",
                 limits_clock=clock, **box_args))
        box = Box(daemon, pulse, sim)
        assert daemon.gpio.leds.state == "booting", "the LED shows the box starting"
        daemon.add_state_listener(box.states.append)
        task = asyncio.create_task(daemon.run())
        try:
            await box.reach(State.IDLE)
            yield box
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def sound(samples: np.ndarray) -> float:
    """Seconds of the recording that are clearly audible."""
    return float((np.abs(samples) > LOUD).sum()) / RATE


def led_level(box: Box) -> float:
    return float(box.led.pins[0].state)


async def led_levels(box: Box, seconds: float = 1.0) -> set[float]:
    seen = set()
    for _ in range(int(seconds / 0.05)):
        seen.add(round(led_level(box), 2))
        await asyncio.sleep(0.05)
    return seen


# --- a conversation's course --------------------------------------------------------------

async def test_a_press_wakes_the_box_and_a_conversation_runs_its_course(pulse, tmp_path):
    async with running(pulse, tmp_path, extra="[limits]\nquiet_timeout_s = 3.0\n") as box:
        assert box.led.state == "idle" and len(await led_levels(box)) > 3, "idle breathes"
        box.tap()
        await box.reach(State.CONNECTING)
        await box.reach(State.LISTENING)
        assert led_level(box) == 1.0, "listening: the LED is on"
        box.say("Hello Talkie, what is your name?")
        await box.reach(State.THINKING)
        with pulse.record() as rec:
            await box.reach(State.SPEAKING)
            await box.reach(State.LISTENING)
        assert box.sim.completed_turns() == 1
        assert sound(rec.samples()) > 0.1, "the reply was heard"
        # nobody talks: the quiet timeout ends the conversation with a sleepy sound
        with pulse.record() as rec:
            await box.reach(State.IDLE, timeout=8)
            await asyncio.sleep(0.5)
        assert sound(rec.samples()) > 0.1, "the sleepy sound"
        assert box.led.state == "idle"
        await box.sim.wait_closed_connections(1)


async def test_a_shake_wakes_the_box(pulse, tmp_path):
    async with running(pulse, tmp_path, extra="[gpio]\nshake_enabled = true\n") as box:
        pin = box.daemon.gpio.shake.pin
        for _ in range(3):   # a tilt and back, three times: six flips within a second
            pin.drive_low()
            await asyncio.sleep(0.08)
            pin.drive_high()
            await asyncio.sleep(0.08)
        await box.reach(State.CONNECTING)
        await box.reach(State.LISTENING)


async def test_a_press_while_the_toy_speaks_silences_it_and_listens(pulse, tmp_path):
    story = ("Once upon a time a small green dragon lived on a hill, and every morning it "
             "counted the clouds, one by one, until the sun came up over the trees.")
    sim = fast_sim(reply_texts=(story,), pace=40.0)
    async with running(pulse, tmp_path, sim=sim) as box:
        box.tap()
        await box.reach(State.LISTENING)
        box.say("Tell me a story")
        await box.reach(State.SPEAKING)
        with pulse.record() as rec:
            await asyncio.sleep(1.0)
            box.tap()
            await box.reach(State.LISTENING, timeout=1)
            await asyncio.sleep(1.5)
        x = rec.samples()
        # the story was playing, then nothing of it after the press (the reply is ~10 s)
        assert sound(x[:RATE]) > 0.3
        assert sound(x[int(1.3 * RATE):]) < 0.05, "the story went on after the press"
        assert box.daemon.state is State.LISTENING
        assert led_level(box) == 1.0


async def test_talking_again_while_the_toy_thinks_makes_it_listen(pulse, tmp_path):
    sim = fast_sim(first_byte_delay_s=4.0)
    async with running(pulse, tmp_path, sim=sim) as box:
        box.tap()
        await box.reach(State.LISTENING)
        box.say("I have a question")
        await box.reach(State.THINKING)
        box.say("about dragons")
        await box.reach(State.LISTENING, timeout=4)
        assert box.daemon.state in (State.LISTENING, State.THINKING)


async def test_a_long_press_ends_the_conversation(pulse, tmp_path):
    async with running(pulse, tmp_path) as box:
        box.tap()
        await box.reach(State.LISTENING)
        with pulse.record() as rec:
            await box.hold(2.3)
            await box.reach(State.IDLE, timeout=1)
            await asyncio.sleep(0.5)
        assert sound(rec.samples()) > 0.1, "the sleepy sound"
        await box.sim.wait_closed_connections(1)


async def test_hold_to_talk_ends_the_turn_on_release(pulse, tmp_path):
    async with running(pulse, tmp_path, extra='[gpio]\nbutton_mode = "hold"\n') as box:
        box.tap()
        await box.reach(State.LISTENING)
        box.button.drive_low()
        box.say("Hello there, I am holding the button")
        await asyncio.sleep(1.0)
        assert box.daemon.state is State.LISTENING, "a pause while held is not the end"
        await asyncio.sleep(2.0)
        box.button.drive_high()
        await box.reach(State.THINKING, timeout=1)
        await box.reach(State.SPEAKING)


async def test_a_very_long_press_says_the_status(pulse, tmp_path):
    from device.status import Status, WifiInfo, spoken_status
    status = Status(state="idle", wifi=WifiInfo(ssid="HomeNet", signal_percent=70))
    async with running(pulse, tmp_path, extra="[gpio]\nvery_long_press_s = 3.0\n",
                       on_status_request=lambda: spoken_status(status, "192.168.1.20")) as box:
        with pulse.record() as rec:
            await box.hold(3.2)
            await asyncio.sleep(4.0)
        assert sound(rec.samples()) > 1.0, "the status is spoken, not beeped"


def test_the_spoken_status_names_wifi_address_and_what_is_wrong():
    from device.status import LiveInfo, Status, WifiInfo, spoken_status
    status = Status(state="offline", wifi=WifiInfo(ssid="HomeNet", signal_percent=41),
                    live=LiveInfo(last_error="cannot reach the Live API",
                                  last_error_at="2026-12-06T10:00:00+00:00"),
                    budget_left_s=600.0,
                    errors=[{"at": "2026-12-06T10:00:00+00:00",
                             "message": "cannot reach the Live API"}])
    said = spoken_status(status, "10.0.0.7")
    assert said.startswith("Talkie is offline.")
    assert "Wi-Fi HomeNet, signal 41 percent." in said
    assert "Address 10 dot 0 dot 0 dot 7." in said
    assert "The Live API failed: cannot reach the Live API." in said
    assert "10 minutes of talk left today." in said
    assert spoken_status(Status(), None).startswith("Talkie is booting. No Wi-Fi network. "
                                                     "No address.")


async def test_volume_buttons_change_the_speaker_up_to_the_cap(pulse, tmp_path):
    extra = '[gpio]\nvolume_control = "buttons"\n[audio]\nmax_volume = 0.9\n'
    async with running(pulse, tmp_path, extra=extra) as box:
        speaker = box.daemon._speaker
        start = speaker.volume
        down = box.daemon.gpio.factory.pin("GPIO23")
        up = box.daemon.gpio.factory.pin("GPIO22")
        down.drive_low()
        down.drive_high()
        await asyncio.sleep(0.3)
        assert speaker.volume == pytest.approx(min(start, 0.9) - 0.1, abs=0.01)
        for _ in range(4):
            up.drive_low()
            up.drive_high()
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        assert speaker.volume == pytest.approx(0.9), "never above the parents' cap"


# --- parents' limits ------------------------------------------------------------------------

async def test_quiet_hours_refuse_to_wake_and_end_by_themselves(pulse, tmp_path):
    clock = WallClock(dt.datetime(2026, 12, 6, 20, 15).astimezone())
    extra = '[limits]\nquiet_hours_start = "19:30"\nquiet_hours_end = "07:00"\n'
    async with running(pulse, tmp_path, extra=extra, clock=clock) as box:
        with pulse.record() as rec:
            box.tap()
            await box.reach(State.SLEEPING, timeout=2)
            await asyncio.sleep(0.6)
        assert sound(rec.samples()) > 0.1, "a sleepy sound instead of waking"
        assert not box.sim.connections, "no Live API connection in quiet hours"
        assert led_level(box) == 0.0, "sleeping: the LED is off"
        box.tap()
        await box.stays(State.SLEEPING, 0.5)
        clock.now = dt.datetime(2026, 12, 7, 7, 1).astimezone()
        await box.reach(State.IDLE, timeout=3)
        box.tap()
        await box.reach(State.LISTENING)


def talked_today(tmp: Path, seconds: float) -> WallClock:
    """The box already talked `seconds` today (its budget file says so); 3 pm on that day."""
    state = tmp / "state"
    state.mkdir()
    (state / "budget.json").write_text(json.dumps({"day": "2026-12-06", "used_s": seconds}))
    return WallClock(dt.datetime(2026, 12, 6, 15, 0).astimezone())


async def test_a_spent_budget_refuses_to_wake_until_the_next_day(pulse, tmp_path):
    clock = talked_today(tmp_path, 600.0)
    async with running(pulse, tmp_path, extra="[limits]\ndaily_budget_minutes = 10\n",
                       clock=clock) as box:
        box.tap()
        await box.reach(State.SLEEPING, timeout=2)
        assert not box.sim.connections
        clock.now = dt.datetime(2026, 12, 7, 0, 1).astimezone()
        await box.reach(State.IDLE, timeout=3)


async def test_the_budget_running_out_ends_the_conversation(pulse, tmp_path):
    clock = talked_today(tmp_path, 56.0)
    async with running(pulse, tmp_path, extra="[limits]\ndaily_budget_minutes = 1\n",
                       clock=clock) as box:
        box.tap()
        await box.reach(State.LISTENING)
        with pulse.record() as rec:
            await box.reach(State.SLEEPING, timeout=8)
            await asyncio.sleep(0.6)
        assert sound(rec.samples()) > 0.1, "a sleepy sound as it ends"
        await box.sim.wait_closed_connections(1)
        used = json.loads((tmp_path / "state" / "budget.json").read_text())["used_s"]
        assert used >= 60.0, "the conversation's time was counted"


# --- the Live API ---------------------------------------------------------------------------

async def test_a_connection_switch_while_listening_shows_connecting_then_listening(
        pulse, tmp_path):
    async with running(pulse, tmp_path) as box:
        box.tap()
        await box.reach(State.LISTENING)
        assert box.sim.go_away_now(0.2) == 1
        await box.reach(State.CONNECTING, timeout=3)
        await box.reach(State.LISTENING)
        box.say("Are you still there?")
        await box.reach(State.SPEAKING)


async def test_a_failed_connect_says_offline_and_listens_once_it_gets_through(pulse, tmp_path):
    sim = fast_sim(faults=["tcp-drop@0:0"])
    async with running(pulse, tmp_path, sim=sim) as box:
        with pulse.record() as rec:
            box.tap()
            await box.reach(State.CONNECTING)
            await box.reach(State.OFFLINE, timeout=6)
            await box.reach(State.LISTENING, timeout=8)
            await asyncio.sleep(1.0)
        assert sound(rec.samples()) > 0.3, "wake, offline and listening sounds"
        box.say("Hello again")
        await box.reach(State.SPEAKING)


async def test_a_refused_key_ends_in_error_with_a_sound(pulse, tmp_path):
    sim = fast_sim(api_key="the-only-key-the-server-takes")
    async with running(pulse, tmp_path, sim=sim) as box:
        with pulse.record() as rec:
            box.tap()
            await box.reach(State.ERROR, timeout=8)
            await asyncio.sleep(0.6)
        assert sound(rec.samples()) > 0.1, "the error sound"
        assert len(box.sim.connections) == 1, "a refused key is not retried"
        assert box.led.state == "error" and len(await led_levels(box, 0.5)) == 2, "flashing"


# --- audio devices --------------------------------------------------------------------------

async def test_a_microphone_failure_shows_error_until_it_is_back(pulse, tmp_path):
    async with running(pulse, tmp_path) as box:
        listing = pulse.pactl("list", "source-outputs").stdout
        outputs = [b.split()[0] for b in listing.split("Source Output #")[1:]
                   if "ALSA plug-in" in b]
        assert len(outputs) == 1, listing
        assert pulse.pacmd("kill-source-output", outputs[0]).returncode == 0
        await box.reach(State.ERROR, timeout=5)
        with pulse.record() as rec:
            box.tap()
            await asyncio.sleep(0.6)
        assert sound(rec.samples()) > 0.1, "a press in error is answered by the error sound"
        assert not box.sim.connections
        await box.reach(State.IDLE, timeout=10)
        box.tap()
        await box.reach(State.LISTENING)
