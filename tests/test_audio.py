"""The audio pipeline without a sound server: resampling, VAD gate, WAV backend, buffer."""

from __future__ import annotations

import asyncio
import time
import wave

import numpy as np
import pytest

from device.audio import open_audio
from device.audio.backend import FRAME_SAMPLES, MIC_RATE, REPLY_RATE, MicFrame
from device.audio.buffer import PlaybackBuffer
from device.audio.earcons import NAMES, earcon
from device.audio.echo import FarEndBuffer
from device.audio.files import WavMicrophone
from device.audio.resample import FrameCutter, Resampler, pick_channel
from device.audio.vad import VadGate
from device.config import AudioConfig
from device.errors import AudioDeviceError
from device.events import SpeechAudio, SpeechEnd, SpeechStart
from tests.audio_helpers import mix_at_snr, pitch, speech_bounds, tone
from device.audio.pulse_harness import espeak


def _write_wav(path, x: np.ndarray, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())


def _frames(x: np.ndarray, t0: float = 0.0) -> list[MicFrame]:
    n = len(x) // FRAME_SAMPLES
    return [MicFrame(x[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].tobytes(),
                     t0 + (i + 1) * 0.02) for i in range(n)]


def _run_gate(gate: VadGate, x: np.ndarray) -> tuple[list, np.ndarray]:
    """Events, and a per-sample mask of what was streamed."""
    events, sent = [], np.zeros(len(x), bool)
    for k, f in enumerate(_frames(x)):
        for ev in gate.process(f):
            events.append(ev)
            if isinstance(ev, SpeechAudio):
                i = round(ev.t / 0.02) - 1
                sent[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES] = True
    return events, sent


# --- resampling ---

def test_streaming_resampler_has_no_clicks_at_block_edges():
    x = tone(440, 1.0, 48000)
    rs = Resampler(48000, MIC_RATE)
    out = np.concatenate([rs.process(x[i:i + 441]) for i in range(0, len(x), 441)] + [rs.flush()])
    assert abs(len(out) - MIC_RATE) <= 2
    ref = np.sin(2 * np.pi * 440 * np.arange(len(out)) / MIC_RATE)
    # A click would show as a sample-to-sample jump far above a 440 Hz sine's largest step.
    steps = np.abs(np.diff(out[400:-400].astype(np.float64)))
    assert steps.max() < 1.2 * 0.3 * 32767 * 2 * np.pi * 440 / MIC_RATE
    assert abs(pitch(out, MIC_RATE) - 440) < 2 and len(ref)


def test_pick_channel_and_frame_cutter():
    block = np.stack([np.zeros(100, np.int16), np.arange(100, dtype=np.int16)], axis=1)
    assert (pick_channel(block, 1) == np.arange(100)).all()
    with pytest.raises(ValueError):
        pick_channel(block, 2)
    cut = FrameCutter()
    assert cut.push(np.zeros(300, np.int16)) == []
    frames = cut.push(np.zeros(400, np.int16))
    assert len(frames) == 2 and cut.pending == 60


# --- the VAD gate on real speech ---

@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    return espeak("Can we play the dinosaur game again, please?", MIC_RATE, pitch=80)


def _scene(speech: np.ndarray, before_s: float = 2.0, after_s: float = 2.0) -> tuple[np.ndarray, int, int]:
    pad = lambda s: np.zeros(int(s * MIC_RATE), np.int16)
    x = np.concatenate((pad(before_s), speech, pad(after_s)))
    a, b = speech_bounds(speech, MIC_RATE)
    off = len(pad(before_s))
    return x, off + a, off + b


@pytest.mark.parametrize("noise", ["white", "hum"])
def test_gate_keeps_the_first_100_ms_and_streams_no_silence(sentence, noise):
    x, on, off = _scene(sentence, 3.0, 3.0)
    rng = np.random.default_rng(1)
    if noise == "white":
        n = rng.normal(0, 1, len(x))
    else:
        t = np.arange(len(x)) / MIC_RATE
        n = np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 150 * t)
    speech_only = np.zeros(len(x), np.int16)
    speech_only[on:off] = x[on:off]
    mixed = mix_at_snr(x, n * 1000, 10) if True else x
    gate = VadGate(AudioConfig())
    events, sent = _run_gate(gate, mixed)
    kinds = [type(e) for e in events]
    assert kinds.count(SpeechStart) == 1 and kinds.count(SpeechEnd) == 1
    assert sent[on:on + MIC_RATE // 10].all(), "the first 100 ms of speech were not streamed"
    assert sent[on - MIC_RATE // 2:on].all(), "less than 500 ms of pre-roll"
    assert sent[on:off].mean() > 0.98
    quiet = np.ones(len(x), bool)
    quiet[on - MIC_RATE:off + MIC_RATE] = False   # pre-roll and hangover are allowed
    assert not sent[quiet].any(), "silence far from speech was streamed"


def test_a_click_is_not_speech():
    rng = np.random.default_rng(2)
    x = np.zeros(3 * MIC_RATE, np.int16)
    for k in range(4):   # four door-knock-like clicks, 15 ms each
        i = MIC_RATE // 2 + k * MIC_RATE // 2
        x[i:i + 240] = (rng.normal(0, 8000, 240) * np.exp(-np.arange(240) / 60)).astype(np.int16)
    events, sent = _run_gate(VadGate(AudioConfig()), x)
    assert events == [] and not sent.any()


def test_steady_noise_does_not_hold_the_gate_open(sentence):
    # Speech, then a fan-like noise switched on that webrtcvad alone calls speech.
    rng = np.random.default_rng(3)
    x, on, off = _scene(sentence, 1.0, 10.0)
    fan = np.convolve(rng.normal(0, 3000, len(x)), np.ones(8) / 8, "same")
    fan[:off + MIC_RATE] = 0
    mixed = np.clip(x + fan, -32768, 32767).astype(np.int16)
    _events, sent = _run_gate(VadGate(AudioConfig()), mixed)
    assert sent[on:off].mean() > 0.98
    assert sent[-5 * MIC_RATE:].mean() < 0.05, "steady noise kept the gate streaming"


def test_muted_gate_streams_nothing_and_ends_a_turn(sentence):
    x, on, off = _scene(sentence)
    gate = VadGate(AudioConfig())
    frames = _frames(x)
    events = []
    for k, f in enumerate(frames):
        if k == (on + off) // 2 // FRAME_SAMPLES:
            gate.muted = True
        events += gate.process(f)
    assert isinstance(events[-1], SpeechEnd)
    assert sum(isinstance(e, SpeechStart) for e in events) == 1


def test_echo_canceller_seam_sees_mic_and_what_played_when_it_was_captured():
    seen = []

    class Recorder:
        def process(self, near: bytes, far_ref: bytes | None) -> bytes:
            seen.append(far_ref)
            return bytes(len(near))   # cancels everything

    far = FarEndBuffer()
    gate = VadGate(AudioConfig(), echo=Recorder(), far=far)
    far.push(np.full(FRAME_SAMPLES, 1, np.int16), t_dac=100.0)
    # a frame whose last sample was captured as the played block ended, then one later
    gate.process(MicFrame(tone(300, 0.02, MIC_RATE).tobytes(), 100.0 + (FRAME_SAMPLES - 1) / MIC_RATE))
    gate.process(MicFrame(tone(300, 0.02, MIC_RATE).tobytes(), 101.0))
    assert seen == [b"\x01\x00" * FRAME_SAMPLES, None]


# --- the WAV backend ---

async def test_wav_microphone_is_paced_resampled_and_ends(tmp_path):
    path = tmp_path / "in.wav"
    st = np.stack([tone(1000, 1.0, 44100), tone(250, 1.0, 44100)], axis=1).reshape(-1)
    _write_wav(path, st, 44100, channels=2)
    mic = WavMicrophone(path, channel=0)
    t0 = time.monotonic()
    async with mic:
        frames = [f async for f in mic.frames()]
    took = time.monotonic() - t0
    assert len(frames) == 50 and all(len(f.pcm) == 640 for f in frames)
    assert 0.9 < took < 2.0, f"1 s of file took {took:.2f} s"
    assert np.allclose(np.diff([f.t for f in frames]), 0.02)
    assert frames[-1].t - frames[0].t == pytest.approx(0.98)
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), np.int16)
    assert abs(pitch(pcm, MIC_RATE) - 1000) < 10


async def test_wav_microphone_error_names_the_fix(tmp_path):
    with pytest.raises(AudioDeviceError, match="does not exist; set \\[audio\\] input"):
        async with WavMicrophone(tmp_path / "missing.wav"):
            pass


async def test_wav_speaker_plays_at_device_pace_with_silence_flush_and_played(tmp_path):
    out = tmp_path / "out.wav"
    _mic, spk = open_audio(AudioConfig(backend="files", input=str(tmp_path / "x.wav"),
                                      output=str(out), volume=1.0, max_volume=0.5))
    played = []
    async with spk:
        spk.on_played = lambda tr, tp: played.append((tr, tp))
        await asyncio.sleep(0.2)
        t_recv = time.monotonic()
        spk.write(tone(440, 0.5, REPLY_RATE, amp=0.9).tobytes(), t_received=t_recv)
        assert spk.busy
        await asyncio.wait_for(spk.drain(), 3)
        await asyncio.sleep(0.2)
        spk.write(tone(440, 2.0, REPLY_RATE).tobytes())
        await asyncio.sleep(0.3)
        dropped = spk.flush()
        await asyncio.sleep(0.2)
        assert not spk.busy
    assert 1.5 < dropped < 1.8
    with wave.open(str(out)) as w:
        assert w.getframerate() == REPLY_RATE
        y = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    loud = np.abs(y) > 1000
    first = int(np.argmax(loud))
    assert first > 0.15 * REPLY_RATE, "silence before the reply must be in the file"
    assert np.abs(y).max() < 0.5 * 0.9 * 32768 * 1.05, "max_volume caps the level"
    assert loud.sum() / REPLY_RATE < 0.5 + 0.35, "flush stopped the second reply"
    assert len(played) == 1 and played[0][0] == t_recv and 0 < played[0][1] - t_recv < 0.2


def test_playback_buffer_prefill_flush_fade_volume_ramp_and_underruns():
    now = [0.0]
    buf = PlaybackBuffer(24000, volume=1.0, prefill_s=0.06, clock=lambda: now[0])
    buf.push(np.ones(480, np.float32) * 0.5, t_received=1.0)
    out, marks = buf.pull(240)
    assert not out.any() and marks == [], "waits for the prefill"
    now[0] = 0.07
    out, marks = buf.pull(240)
    assert out.max() == pytest.approx(0.5) and marks == [(1.0, 0)]
    buf.pull(480)            # runs dry
    now[0] = 0.2
    buf.push(np.ones(4800, np.float32) * 0.5)
    assert buf.stats.underruns == 1
    now[0] = 0.3
    buf.pull(240)
    buf.set_volume(0.0)
    out, _ = buf.pull(480)
    assert np.all(np.diff(out) <= 1e-6) and out[0] > 0.4 and out[-1] == 0, "volume glides to 0"
    buf.set_volume(1.0)
    dropped = buf.flush()
    assert dropped > 0.15
    out, _ = buf.pull(480)
    assert out[96:].max() == 0, "silent within 4 ms of a flush"
    # A new reply right after the last one ran out is no underrun; more of the same reply is.
    buf.push(np.ones(2400, np.float32) * 0.5, t_received=2.0)
    now[0] = 0.5
    while buf.active:
        buf.pull(480)
    now[0] = 0.8
    buf.push(np.ones(2400, np.float32) * 0.5, t_received=3.0)
    assert buf.stats.underruns == 1
    while buf.active:
        buf.pull(480)
    buf.push(np.ones(2400, np.float32) * 0.5)
    assert buf.stats.underruns == 2


def test_earcons_are_short_soft_distinct_and_click_free():
    sounds = {n: earcon(n, 48000) for n in NAMES}
    for name, s in sounds.items():
        assert 0.1 < len(s) / 48000 < 0.6, name
        assert np.abs(s).max() <= 0.36, name
        assert abs(s[0]) < 1e-3 and abs(s[-1]) < 1e-3, name
    assert len({round(pitch(s, 48000)) for s in sounds.values()}) >= 5
    assert earcon("wake", 48000) is earcon("wake", 48000)
    with pytest.raises(ValueError, match="unknown earcon"):
        earcon("boing", 48000)


def test_speech_soon_after_the_mic_opens_is_kept_whole(sentence):
    # Speech 0.4 s after the mic opens, before the room's peaks are learned, is kept whole.
    x, on, off = _scene(sentence, 0.4, 1.5)
    events, sent = _run_gate(VadGate(AudioConfig()), x)
    assert sum(isinstance(e, SpeechStart) for e in events) == 1
    assert sent[:off].all(), "everything from the start of the file to the end of speech is sent"


@pytest.mark.parametrize("lead_s", [0.0, 0.1, 0.2, 0.3])
def test_a_turn_said_at_once_does_not_deafen_the_gate_to_the_next(lead_s):
    # Speech from the moment the mic opens must not be learned as the room's noise: the
    # child's next turn, soon after and no louder, starts the gate again.
    first = espeak("I have a question", MIC_RATE)
    then = espeak("about dragons", MIC_RATE)
    x = np.concatenate((np.zeros(int(lead_s * MIC_RATE), np.int16), first,
                        np.zeros(int(0.4 * MIC_RATE), np.int16), then, np.zeros(MIC_RATE, np.int16)))
    events, _ = _run_gate(VadGate(AudioConfig()), x)
    assert sum(isinstance(e, SpeechStart) for e in events) == 2


def _phrases(texts: list[str], pause_s: float, lead_s: float = 2.0,
             tail_s: float = 2.0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The child says each text with `pause_s` between them; returns the audio and each
    phrase's (first, last) audible sample."""
    silence = lambda s: np.zeros(int(s * MIC_RATE), np.int16)  # noqa: E731
    parts, bounds, at = [silence(lead_s)], [], int(lead_s * MIC_RATE)
    for i, text in enumerate(texts):
        said = espeak(text, MIC_RATE, pitch=80)
        a, b = speech_bounds(said, MIC_RATE)
        bounds.append((at + a, at + b))
        parts += [said, silence(pause_s if i < len(texts) - 1 else tail_s)]
        at += len(said) + len(parts[-1])
    return np.concatenate(parts), bounds


def test_a_pause_is_sent_only_when_speech_resumes_and_a_turn_ends_after_tail_ms():
    cfg = AudioConfig()
    x, bounds = _phrases(["Once upon a time", "there was a dragon"], 0.15)
    gate = VadGate(cfg)
    calls = [gate.process(f) for f in _frames(x)]
    events = [e for evs in calls for e in evs]
    assert [type(e) for e in events].count(SpeechStart) == 1, "one turn"
    audio = [e for e in events if isinstance(e, SpeechAudio)]
    # What goes up is one piece: every frame once, in order, from the pre-roll to the tail.
    assert np.allclose(np.diff([e.t for e in audio]), 0.02)
    first_call = next(i for i, evs in enumerate(calls) if evs)
    released = [sum(isinstance(e, SpeechAudio) for e in evs) for evs in calls[first_call + 1:]]
    assert max(released) > 1, "the pause's silence was held back and sent when speech resumed"
    on, off = bounds[0][0], bounds[-1][1]
    assert audio[0].t * MIC_RATE <= on - 0.5 * MIC_RATE, "less than 500 ms of pre-roll"
    sent_until = audio[-1].t * MIC_RATE
    assert off < sent_until < off + (cfg.tail_ms + 100) * MIC_RATE / 1000, \
        f"{(sent_until - off) / 16:.0f} ms sent after the last word; tail_ms is {cfg.tail_ms}"
    end = next(e for e in events if isinstance(e, SpeechEnd))
    assert end.t * MIC_RATE > off + (cfg.hangover_ms - 100) * MIC_RATE / 1000, \
        "the turn still ends only after the whole hangover"


def test_a_child_who_pauses_between_phrases_is_streamed_whole():
    # In a quiet room the gate starts again soon after each end: that is the child, not the
    # room, and none of it may be clipped.
    x, bounds = _phrases(["Once upon a time", "there was a little dragon", "who could not fly",
                          "and he was sad"], 0.7)
    noisy = np.clip(x + np.random.default_rng(4).normal(0, 30, len(x)), -32768, 32767)
    events, sent = _run_gate(VadGate(AudioConfig()), noisy.astype(np.int16))
    assert [type(e) for e in events].count(SpeechStart) == len(bounds)
    for on, off in bounds:
        assert sent[on:on + MIC_RATE // 10].all() and sent[on:off].mean() > 0.98


@pytest.fixture(scope="module")
def babble_loop() -> np.ndarray:
    """Four people talking at once, starting together every 3 s (bench/vad_eval.py's babble)."""
    loop = np.zeros(3 * MIC_RATE)
    for text, voice, pitch, speed in [
            ("The weather report says rain for the whole weekend in the north.", "en-gb+f3", 80,
             170),
            ("Please remember to buy milk, bread and eggs on the way home.", "en-us+f4", 70, 130),
            ("The meeting was moved to Thursday afternoon at three.", "en-us+m3", 50, 175),
            ("He parked the car behind the old library near the station.", "en-gb", 80, 140)]:
        said = espeak(text, MIC_RATE, voice=voice, pitch=pitch, speed=speed)[:3 * MIC_RATE]
        loop[:len(said)] += said
    return loop


@pytest.mark.parametrize("offset_s", [2.55, 2.6, 2.65, 2.7])
def test_background_talk_that_keeps_reopening_the_gate_is_learned_as_the_room(
        sentence, babble_loop, offset_s):
    # Heard from these points, the first second of the babble is softer than the rest: the
    # room's peaks were underrated, and the babble opened the gate again every 3 s for good.
    child = sentence.astype(np.float64)
    a, b = speech_bounds(sentence, MIC_RATE)
    child *= 0.1 * 32768 / np.sqrt(np.mean(child[a:b] ** 2))            # -20 dBFS
    start = int(offset_s * MIC_RATE)
    room = np.tile(babble_loop, 12)[start:start + 30 * MIC_RATE]
    room *= 0.01 * 32768 / np.sqrt(np.mean(babble_loop ** 2))           # 20 dB below the child
    at = 20 * MIC_RATE
    x = room.copy()
    x[at:at + len(child)] += child
    _events, sent = _run_gate(VadGate(AudioConfig()), np.clip(x, -32768, 32767).astype(np.int16))
    assert sent[8 * MIC_RATE:at].mean() < 0.3, "the babble is streamed as if it were the child"
    assert sent[at + a:at + a + MIC_RATE // 10].all() and sent[at + a:at + b].mean() > 0.98
