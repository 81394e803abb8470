"""The audio pipeline end to end through real PortAudio and a private PulseAudio server."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import soxr

from device.audio import open_audio
from device.audio.backend import MIC_RATE, REPLY_RATE
from device.audio.vad import VadGate
from device.config import AudioConfig
from device.errors import AudioDeviceError
from device.events import SpeechAudio, SpeechEnd, SpeechStart
from tests.audio_helpers import align, pitch, speech_bounds, tone
from device.audio.pulse_harness import espeak


def _cfg(**kw) -> AudioConfig:
    base = {"backend": "sounddevice", "input": "pulse", "output": "pulse"}
    base.update(kw)
    return AudioConfig(**base)


async def _collect(mic, seconds: float) -> list:
    frames = []
    async def run():
        async for f in mic.frames():
            frames.append(f)
    try:
        await asyncio.wait_for(run(), seconds)
    except TimeoutError:
        pass
    return frames


async def test_speech_fed_to_the_mic_reaches_the_gate_complete(pulse):
    speech16 = espeak("Hello teddy, can you tell me a story about a dragon?", MIC_RATE, pitch=80)
    speech48 = (soxr.resample(speech16.astype(np.float32), MIC_RATE, 48000)).astype(np.int16)
    mic, _ = open_audio(_cfg(input_rate=48000))
    gate = VadGate(AudioConfig())
    events = []
    async with mic:
        pulse.feed(np.zeros(int(0.8 * 48000), np.int16))
        pulse.feed(speech48)

        async def run():
            async for frame in mic.frames():
                for ev in gate.process(frame):
                    events.append(ev)
                    if isinstance(ev, SpeechEnd):
                        return
        await asyncio.wait_for(run(), 15)
    assert isinstance(events[0], SpeechStart) and isinstance(events[-1], SpeechEnd)
    assert sum(isinstance(e, SpeechStart) for e in events) == 1, "one utterance, one start"
    up = np.frombuffer(b"".join(e.pcm for e in events if isinstance(e, SpeechAudio)), np.int16)
    lag, corr = align(up, speech16)
    a, b = speech_bounds(speech16, MIC_RATE)
    # Everything audible in the input is in what the gate sends, in one piece, undistorted.
    assert corr > 0.9, f"uploaded audio does not match the speech (correlation {corr:.2f})"
    assert lag + a >= int(0.5 * MIC_RATE), "less than 500 ms of pre-roll before the first sound"
    assert lag + b <= len(up), "the end of the sentence was cut"


async def test_speaker_is_heard_on_the_sink_and_reports_played(pulse):
    _, spk = open_audio(_cfg(output_rate=48000, volume=1.0))
    played = []
    with pulse.record() as rec:
        async with spk:
            spk.on_played = lambda tr, tp: played.append((tr, tp))
            t0 = time.monotonic()
            spk.write(tone(440, 0.6, REPLY_RATE).tobytes(), t_received=t0)
            await asyncio.wait_for(spk.drain(), 5)
            await asyncio.sleep(0.2)
    x = rec.samples()
    loud = np.abs(x) > 2000
    assert loud.sum() > 0.5 * 48000, "the tone did not reach the speaker's sink"
    seg = x[np.nonzero(loud)[0][0]:][: 48000 // 2]
    assert abs(pitch(seg, 48000) - 440) < 440 * 0.01
    assert len(played) == 1 and played[0][0] == t0 and 0 <= played[0][1] - t0 < 0.5
    # on_played's time is when the sound is really heard (the monitor's clock, +-10 ms).
    t_heard = rec.time_of(int(np.nonzero(loud)[0][0]))
    assert abs(played[0][1] - t_heard) < 0.05, f"on_played off by {played[0][1] - t_heard:+.3f} s"


async def test_flush_silences_the_sink_within_50_ms(pulse):
    _, spk = open_audio(_cfg(output_rate=48000, volume=1.0))
    with pulse.record() as rec:
        async with spk:
            spk.write(tone(300, 3.0, REPLY_RATE).tobytes())
            await asyncio.sleep(0.6)
            t_flush = time.monotonic()
            dropped = spk.flush()
            await asyncio.sleep(0.5)
            assert not spk.busy
    x = rec.samples()
    loud = np.nonzero(np.abs(x) > 300)[0]
    assert len(loud) and dropped > 1.5
    t_last = rec.time_of(int(loud[-1]))
    assert t_last - t_flush < 0.050, f"sound went on {1000 * (t_last - t_flush):.0f} ms after flush"


async def test_a_stalled_speaker_thread_is_an_underrun_heard_and_counted(pulse):
    # The writer thread misses its turn for 150 ms (a CPU stall) while a reply plays: the
    # device buffer (60 ms) runs dry, the sink goes silent, and the speaker counts it.
    _, spk = open_audio(_cfg(output_rate=48000, volume=1.0))
    pull, stalled = spk._pull, []

    def stalling_pull(n, t_dac):
        if not stalled and spk.stats.played_s > 0.3:
            stalled.append(time.monotonic())
            time.sleep(0.15)
        return pull(n, t_dac)

    spk._pull = stalling_pull
    with pulse.record() as rec:
        async with spk:
            spk.write(tone(300, 1.0, REPLY_RATE).tobytes())
            await asyncio.wait_for(spk.drain(), 5)
    assert stalled and spk.device_underruns >= 1
    x = rec.samples()
    on = np.nonzero(np.abs(x) > 300)[0]
    quiet = np.abs(x[on[0]:on[-1]]) <= 300
    runs = np.diff(np.nonzero(np.diff(np.concatenate(([0], quiet, [0])).astype(int)))[0])[::2]
    assert runs.max() > 0.05 * 48000, "the stall was not heard as a gap"


@pytest.mark.parametrize("rate", [48_000, 44_100])
async def test_device_rates_give_16k_audio_at_the_right_pitch(pulse, rate):
    pulse.use(rate)
    mic, _ = open_audio(_cfg(input_rate=rate))
    async with mic:
        pulse.feed(tone(1000, 1.5, rate))
        frames = await _collect(mic, 1.2)
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), np.int16)
    assert all(len(f.pcm) == 640 for f in frames)
    ts = np.array([f.t for f in frames])
    assert np.all(np.diff(ts) > 0), "frame times must increase"
    on = np.nonzero(np.abs(pcm) > 3000)[0]
    assert len(on) > 0.5 * MIC_RATE, "the tone did not arrive"
    f0 = pitch(pcm[on[0]:on[-1]], MIC_RATE)
    assert abs(f0 - 1000) < 10, f"a 1 kHz tone came out at {f0:.1f} Hz"


@pytest.mark.parametrize("rate", [48_000, 44_100])
async def test_speaker_at_device_rates_keeps_pitch(pulse, rate):
    pulse.use(rate)
    _, spk = open_audio(_cfg(output_rate=rate, volume=1.0))
    with pulse.record(rate) as rec:
        async with spk:
            spk.write(tone(500, 0.5, REPLY_RATE).tobytes())
            await asyncio.wait_for(spk.drain(), 5)
    x = rec.samples()
    on = np.nonzero(np.abs(x) > 2000)[0]
    assert len(on) > 0.4 * rate
    assert abs(pitch(x[on[0]:on[-1]], rate) - 500) < 5


def test_unknown_device_names_the_devices_and_the_fix(pulse):
    with pytest.raises(AudioDeviceError) as e:
        open_audio(_cfg(output="usb headset 3000"))
    msg = str(e.value)
    assert "speaker 'usb headset 3000' not found" in msg
    assert "'pulse'" in msg and "[audio] output" in msg


async def test_a_mic_that_fails_mid_stream_is_reopened_and_reports_error_then_ok(pulse):
    states = []
    mic, _ = open_audio(_cfg(input_rate=48000),
                        on_state=lambda s, e: states.append((s, str(e) if e else None)))
    async with mic:
        assert await _collect(mic, 0.3)
        # The sound server drops our stream, as when a USB mic is pulled out.
        listing = pulse.pactl("list", "source-outputs").stdout
        outputs = [block.split()[0] for block in listing.split("Source Output #")[1:]
                   if "ALSA plug-in" in block]
        assert len(outputs) == 1, f"our capture stream is not on the server: {listing}"
        r = pulse.pacmd("kill-source-output", outputs[0])
        assert r.returncode == 0 and not r.stdout.strip(), r
        frames = await _collect(mic, 5.0)
    assert [s for s, _ in states][:3] == ["ok", "error", "ok"], states
    assert states[1][1].startswith("microphone 'pulse'")
    assert len(frames) > 20, "frames flow again after the reopen"
    assert mic.reopens == 1


async def test_a_mic_that_stops_delivering_is_reopened_and_no_thread_is_left_in_it(pulse, caplog):
    # The source goes quiet without an error (a hung sound server, an I2S clock that stopped):
    # a thread inside PortAudio's read would wait for it forever, holding its stream and memory.
    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "talkie-mic"]

    states = []
    mic, _ = open_audio(_cfg(input_rate=48000), on_state=lambda s, e: states.append(s))
    feeder = pulse.feeders[48000]
    async with mic:
        assert await _collect(mic, 0.3)
        feeder.starved.set()
        # the stall (2 s), then the close, which waits up to 2 s for the thread to end
        assert len(await _collect(mic, 2.0 + 2.5)) < 10
        while_starved = readers()
        feeder.starved.clear()
        frames = []
        async with asyncio.timeout(10):   # a stall being handled ends first (up to ~3 s)
            async for f in mic.frames():
                frames.append(f)
                if len(frames) == 50:
                    break
        after = readers()
    assert "stuck in the sound system" not in caplog.text
    assert len(while_starved) <= 1, f"capture threads left in the dead source: {while_starved}"
    assert len(after) == 1, after
    assert "stopped delivering audio" in caplog.text and states[:3] == ["ok", "error", "ok"]


def test_busy_device_error_names_the_holder_and_the_fix():
    import sounddevice as sd

    from device.audio.devices import translate
    err = translate(sd.PortAudioError("Device unavailable", -9985), "input", "'USB mic'")
    msg = str(err)
    assert msg.startswith("microphone 'USB mic' is busy, held by ")
    assert "stop that program or give Talkie another device in [audio] input" in msg


def test_unknown_microphone_fails_at_open_audio(pulse):
    with pytest.raises(AudioDeviceError, match=r"microphone 'array mic' not found; input devices"):
        open_audio(_cfg(input="array mic"))


async def test_earcons_are_heard_and_distinct(pulse):
    from device.audio.earcons import NAMES
    _, spk = open_audio(_cfg(output_rate=48000, volume=1.0))
    pitches = {}
    async with spk:
        for name in ("wake", "error"):
            with pulse.record() as rec:
                spk.play_earcon(name)
                await asyncio.sleep(0.6)
            x = rec.samples()
            on = np.nonzero(np.abs(x) > 1000)[0]
            assert len(on) > 0.1 * 48000, f"earcon {name} not heard"
            pitches[name] = pitch(x[on[0]:on[-1]], 48000)
    assert set(NAMES) >= {"wake", "error"}
    assert pitches["wake"] > 1.5 * pitches["error"]


async def test_a_speaker_that_fails_mid_stream_is_reopened_and_plays_again(pulse):
    states = []
    _, spk = open_audio(_cfg(output_rate=48000, volume=1.0),
                        on_state=lambda s, e: states.append((s, str(e) if e else None)))
    async with spk:
        listing = pulse.pactl("list", "sink-inputs").stdout
        inputs = [block.split()[0] for block in listing.split("Sink Input #")[1:]
                  if "ALSA plug-in" in block]
        assert len(inputs) == 1, listing
        r = pulse.pacmd("kill-sink-input", inputs[0])
        assert r.returncode == 0 and not r.stdout.strip(), r
        for _ in range(80):
            if spk.reopens:
                break
            await asyncio.sleep(0.1)
        assert [s for s, _ in states][:3] == ["ok", "error", "ok"], states
        assert states[1][1].startswith("speaker 'pulse'")
        with pulse.record() as rec:
            spk.write(tone(440, 0.3, REPLY_RATE).tobytes())
            await asyncio.wait_for(spk.drain(), 5)
            await asyncio.sleep(0.1)
        assert (np.abs(rec.samples()) > 2000).sum() > 0.2 * 48000, "not heard after the reopen"


def test_audio_commands_list_devices_and_hear_speech(pulse, tmp_path, capsys):
    import argparse

    from device.audio.commands import add_commands
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["audio-devices"])
    assert args.func(args) == 0
    assert "pulse" in capsys.readouterr().out
    conf = tmp_path / "c.toml"
    conf.write_text('[audio]\ninput = "pulse"\noutput = "pulse"\ninput_rate = 48000\n')
    speech = espeak("Hello, can you hear me?", 48000)
    pulse.feed(np.concatenate((np.zeros(48000, np.int16), speech)))
    args = parser.parse_args(["audio-check", "--config", str(conf), "--seconds", "3.5"])
    assert args.func(args) == 0
    assert "speech heard: yes" in capsys.readouterr().out


_MDWE_CHILD = """
import asyncio, ctypes, sys
if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0:   # PR_SET_MDWE, as MemoryDenyWriteExecute=yes
    print("no-mdwe"); sys.exit(0)
from device.audio import open_audio
from device.config import AudioConfig
async def main():
    mic, spk = open_audio(AudioConfig(input="pulse", output="pulse", input_rate=48000))
    async with mic, spk:
        spk.write(bytes(4800))
        n = 0
        async for _ in mic.frames():
            n += 1
            if n == 25:
                break
        await spk.drain()
    print("ok", n)
asyncio.run(main())
"""


def test_audio_works_under_memory_deny_write_execute(pulse):
    # The systemd unit sets MemoryDenyWriteExecute=yes, which breaks cffi callbacks; the
    # blocking streams used here must keep working under it.
    import os
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _MDWE_CHILD], capture_output=True, text=True,
                       check=False, timeout=30,
                       env=pulse.env() | {"PYTHONPATH": os.getcwd()})
    if r.stdout.strip() == "no-mdwe":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3): cannot emulate the unit")
    assert r.returncode == 0 and r.stdout.split() == ["ok", "25"], r.stderr[-2000:]


async def test_gate_in_the_capture_thread_hands_over_speech_whole_and_rarely(pulse):
    speech16 = espeak("Hello teddy, can you tell me a story about a dragon?", MIC_RATE, pitch=80)
    speech48 = (soxr.resample(speech16.astype(np.float32), MIC_RATE, 48000)).astype(np.int16)
    mic, _ = open_audio(_cfg(input_rate=48000))
    handovers: list = []
    async with mic:
        pulse.feed(np.zeros(int(2.0 * 48000), np.int16))
        pulse.feed(speech48)

        async def run():
            async for got in mic.gated(VadGate(AudioConfig())):
                handovers.append((time.monotonic(), got))
                if any(isinstance(e, SpeechEnd) for e in got.events):
                    return
        await asyncio.wait_for(run(), 15)
    events = [e for _, got in handovers for e in got.events]
    assert isinstance(events[0], SpeechStart) and isinstance(events[-1], SpeechEnd)
    up = np.frombuffer(b"".join(e.pcm for e in events if isinstance(e, SpeechAudio)), np.int16)
    lag, corr = align(up, speech16)
    a, b = speech_bounds(speech16, MIC_RATE)
    assert corr > 0.9, f"uploaded audio does not match the speech (correlation {corr:.2f})"
    assert lag + a >= int(0.5 * MIC_RATE) and lag + b <= len(up)
    # The loop woke a few times a second (heartbeats, 100 ms pieces), not 50 times.
    span = handovers[-1][0] - handovers[0][0]
    assert len(handovers) <= 12 * span + 3, f"{len(handovers)} hand-overs in {span:.1f} s"
    assert sum(got.mic_s for _, got in handovers) > 2.0


async def test_an_idle_speaker_rests_and_a_reply_after_it_is_heard_at_once(pulse):
    _, spk = open_audio(_cfg(output_rate=48000, volume=1.0))
    played = []
    with pulse.record() as rec:
        async with spk:
            spk.on_played = lambda tr, tp: played.append((tr, tp))
            await asyncio.sleep(1.0)
            assert spk.rests >= 1, "the writer kept writing silence in 10 ms blocks while idle"
            t0 = time.monotonic()
            spk.write(tone(440, 2.0, REPLY_RATE).tobytes(), t_received=t0)
            await asyncio.sleep(0.3)
            t_flush = time.monotonic()
            spk.flush()
            await asyncio.sleep(0.5)
    x = rec.samples()
    loud = np.nonzero(np.abs(x) > 2000)[0]
    assert len(loud), "a resting speaker never woke up for the reply"
    t_heard, t_last = rec.time_of(int(loud[0])), rec.time_of(int(loud[-1]))
    # Margins for a loaded machine; broken, the reply never sounds or plays its whole 2 s.
    # (bench/conversation.py measures the real figures: a few ms to sound, ~40 ms to silence.)
    assert t_heard - t0 < 0.5, f"a resting speaker took {1000 * (t_heard - t0):.0f} ms to sound"
    assert abs(played[0][1] - t_heard) < 0.1, f"on_played off by {played[0][1] - t_heard:+.3f} s"
    assert t_last - t_flush < 0.5, f"sound went on {1000 * (t_last - t_flush):.0f} ms after flush"
    # It skipped the silence the device held instead of playing it first, and the reply came
    # out whole: no hole from the burst a restarted stream takes at once.
    assert spk.jumps == 1
    gaps = np.diff(loud)
    assert gaps.max() < 0.01 * 48000, f"a {gaps.max() / 48:.0f} ms hole in the reply"


async def test_a_reply_streamed_after_a_rest_plays_without_a_hole(pulse):
    # Skipping the resting device's silence must not eat the jitter buffer's cushion: the
    # restarted stream takes 80 ms at once, and a reply that comes in 120 ms chunks at 1.5x
    # real time (the service can be that slow) would then run dry before its next chunk.
    _, spk = open_audio(_cfg(output_rate=48000, volume=1.0))
    reply = tone(440, 1.5, REPLY_RATE).tobytes()
    chunk = int(0.12 * REPLY_RATE) * 2
    with pulse.record() as rec:
        async with spk:
            await asyncio.sleep(1.0)
            assert spk.rests >= 1
            for i in range(0, len(reply), chunk):
                spk.write(reply[i:i + chunk], t_received=time.monotonic() if i == 0 else None)
                await asyncio.sleep(0.12 / 1.5)
            await spk.drain()
    loud = np.nonzero(np.abs(rec.samples()) > 2000)[0]
    gaps = np.diff(loud)
    assert spk.stats.underruns == 0 and gaps.max() < 0.01 * 48000, \
        f"{spk.stats.underruns} underruns, a {gaps.max() / 48:.0f} ms hole in the reply"
    assert (loud[-1] - loud[0]) / 48000 > 1.4, "the reply did not play whole"


def test_with_an_echo_canceller_the_speaker_never_rests(pulse):
    from device.audio.factory import open_gate
    cfg = _cfg(echo_canceller="webrtc", barge_in="voice")
    mic, spk = open_audio(cfg)
    open_gate(cfg, mic, spk)
    assert spk.rest_after_s is None
    assert mic.block_ms == 20, "voice barge-in reads the mic in 20 ms blocks"
    cfg = _cfg()
    mic, spk = open_audio(cfg)
    open_gate(cfg, mic, spk)
    assert spk.rest_after_s is not None and mic.block_ms == 40
