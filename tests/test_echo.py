"""Echo cancellation: the toy does not hear itself, still hears the child, and the far-end
reference lines up with what the mic captured."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.audio.bargein import BargeInDetector
from device.audio.echo import (FarEndBuffer, WebRtcEchoCanceller, make_echo_canceller,
                               voice_barge_in)
from device.config import AudioConfig, loads
from device.errors import ConfigError
from tests.echo_path import RATE, EchoPath, espeak, mix, to_int16

FRAME = 320
T0 = 5000.0  # a monotonic clock reading far from zero


@pytest.fixture(scope="module")
def toy_speech() -> np.ndarray:
    x = espeak("Once upon a time a little dragon loved to dance in the rain. Every morning "
               "he flew over the hills to see his friend the owl, who knew about the stars.",
               voice="en-us+f2", pitch=55)
    return x / np.max(np.abs(x)) * 16000


def run_live_like(aec: WebRtcEchoCanceller, far: np.ndarray, mic: np.ndarray,
                  chunk: int = 480) -> np.ndarray:
    """Playback pushes `chunk`-sample blocks with DAC times; capture reads the reference for
    each 20 ms mic frame by its capture time, as the live pipeline does."""
    buf = FarEndBuffer()
    far16, mic16 = to_int16(far), to_int16(mic)
    pushed = 0
    out = []
    for i in range(0, len(mic16) // FRAME * FRAME, FRAME):
        while pushed < i + FRAME:  # playback runs a little ahead of capture
            buf.push(far16[pushed:pushed + chunk].tobytes(), T0 + pushed / RATE)
            pushed += chunk
        t_last = T0 + (i + FRAME - 1) / RATE
        ref = buf.read_bytes(FRAME, t_last)
        out.append(np.frombuffer(aec.process(mic16[i:i + FRAME].tobytes(), ref), np.int16))
    return np.concatenate(out)


def erle_db(mic: np.ndarray, out: np.ndarray, skip_s: float = 2.0) -> float:
    s = int(skip_s * RATE)
    m, o = mic[s:len(out)], out[s:].astype(float)
    return float(10 * np.log10(np.mean(m * m) / max(np.mean(o * o), 1e-9)))


def webrtc_cfg() -> AudioConfig:
    return AudioConfig(barge_in="voice", echo_canceller="webrtc")


@pytest.mark.parametrize("delay_ms", [20, 80])
def test_webrtc_removes_the_toys_own_voice(toy_speech: np.ndarray, delay_ms: int) -> None:
    aec = make_echo_canceller(webrtc_cfg())
    assert aec is not None, "livekit must be installed for the tests (pip install '.[test]')"
    far = toy_speech
    mic = mix(EchoPath(delay_ms=delay_ms, rt60_s=0.25).echo(far), None, None)
    out = run_live_like(aec, far, mic)
    # AEC3 settles within about 3 s at 80 ms (bench/aec_eval.py shows the profile)
    assert erle_db(mic, out, skip_s=3.0) >= 20.0


def test_child_saying_stop_over_the_toy_is_a_barge_in_and_the_toy_alone_is_not(
        toy_speech: np.ndarray) -> None:
    far = toy_speech[: 6 * RATE]
    path = EchoPath(delay_ms=50, rt60_s=0.3, seed=3)
    stop = espeak("stop!", voice="en-us+f4", pitch=90, speed=150)
    at = int(4.2 * RATE)
    child = np.zeros(len(far))
    child[at:at + len(stop)] = stop
    for with_child in (False, True):
        mic = mix(path.echo(far), child if with_child else None, 10.0)
        out = run_live_like(WebRtcEchoCanceller(), far, mic)
        det = BargeInDetector()
        mic16, far16 = to_int16(mic), to_int16(far)
        fired = [i for i in range(len(out) // FRAME)
                 if det.feed(mic16[i * FRAME:(i + 1) * FRAME].tobytes(),
                             out[i * FRAME:(i + 1) * FRAME].tobytes(),
                             far16[i * FRAME:(i + 1) * FRAME].tobytes())]
        # the first 2 s are the canceller converging once per wake
        fired_s = [(i + 1) * FRAME / RATE for i in fired if i * FRAME >= 2 * RATE]
        if not with_child:
            assert fired_s == [], "the toy interrupted itself"
        else:
            onset = (at + int(np.argmax(np.abs(stop) > 0.05 * np.max(np.abs(stop))))) / RATE
            assert fired_s, "the child's 'stop' was not heard over the toy"
            assert onset < fired_s[0] <= onset + 0.4


def test_without_the_engine_installed_the_box_stays_half_duplex(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # simulate the optional package being absent: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "livekit", None)
    cfg = webrtc_cfg()
    with caplog.at_level(logging.WARNING):
        aec = make_echo_canceller(cfg)
    assert aec is None
    assert not voice_barge_in(cfg, aec)
    assert "talkie[aec]" in caplog.text


def test_echo_canceller_off_means_none_and_voice_barge_in_warns(
        caplog: pytest.LogCaptureFixture) -> None:
    assert make_echo_canceller(AudioConfig()) is None
    with caplog.at_level(logging.WARNING):
        assert make_echo_canceller(AudioConfig(barge_in="voice")) is None
    assert "echo_canceller = 'webrtc'" in caplog.text
    aec = make_echo_canceller(webrtc_cfg())
    assert voice_barge_in(webrtc_cfg(), aec)
    assert not voice_barge_in(AudioConfig(echo_canceller="webrtc"), aec)


def test_config_keys_are_checked() -> None:
    cfg = loads('[audio]\nbarge_in = "voice"\necho_canceller = "webrtc"\necho_delay_ms = 30\n')
    assert (cfg.audio.barge_in, cfg.audio.echo_canceller, cfg.audio.echo_delay_ms) == \
        ("voice", "webrtc", 30)
    with pytest.raises(ConfigError, match="'audio.echo_canceller' is 'speex'; use one of"):
        loads('[audio]\necho_canceller = "speex"\n')


def test_wrong_frame_sizes_are_refused_with_the_fix() -> None:
    aec = WebRtcEchoCanceller()
    with pytest.raises(ValueError, match="10 ms multiples"):
        aec.process(bytes(300), None)
    with pytest.raises(ValueError, match="far-end reference is 320 bytes"):
        aec.process(bytes(640), bytes(320))
    assert len(aec.process(bytes(640), None)) == 640


# --- FarEndBuffer ---------------------------------------------------------------------------

def test_far_end_reads_what_was_playing_when_the_mic_captured() -> None:
    buf = FarEndBuffer(seconds=1.0)
    x = (np.arange(4000) % 3000 - 1500).astype(np.int16)
    buf.push(x[:1000].tobytes(), T0)
    buf.push(x[1000:4000].tobytes(), T0 + 1000 / RATE)
    # the mic frame whose last sample was captured at sample 2319 covers 2000..2319
    got = buf.read(320, T0 + 2319 / RATE)
    assert np.array_equal(got, x[2000:2320])
    # a frame straddling the start: silence before playback began
    got = buf.read(320, T0 + 99 / RATE)
    assert np.array_equal(got[:220], np.zeros(220)) and np.array_equal(got[220:], x[:100])
    # after the end: silence; nothing played at all there -> None for the canceller
    assert buf.read_bytes(320, T0 + 5000 / RATE) is None
    got = buf.read(320, T0 + 4100 / RATE)
    assert np.array_equal(got[:219], x[3781:4000]) and not got[219:].any()


def test_far_end_idle_gap_reads_as_silence_and_old_audio_is_forgotten() -> None:
    buf = FarEndBuffer(seconds=0.5)  # 8000 samples
    ones = np.full(1600, 1000, np.int16)
    buf.push(ones, T0)
    buf.push(ones, T0 + 0.3)  # 0.2 s idle between the two
    got = buf.read(1600, T0 + 0.2 - 1 / RATE)  # 0.1..0.2 s: the idle stretch
    assert not got.any()
    buf.push(np.full(1600, 7, np.int16), T0 + 1.0)
    # the first chunk is more than 0.5 s older than the newest sample: gone
    assert not buf.read(1600, T0 + 0.1 - 1 / RATE).any()
    assert (buf.read(1600, T0 + 1.1 - 1 / RATE) == 7).all()
    buf.clear()
    assert buf.read_bytes(1600, T0 + 1.1 - 1 / RATE) is None


def test_a_late_push_never_overwrites_newer_reference() -> None:
    buf = FarEndBuffer(seconds=0.25)  # 4000 samples
    buf.push(np.full(4000, 5, np.int16), T0 + 1.0)
    buf.push(np.full(800, 9, np.int16), T0 + 1.0 - 0.05)  # 0.05 s older than the ring holds
    assert (buf.read(4000, T0 + 1.0 + 3999 / RATE) == 5).all()
    buf.push(np.full(1600, 9, np.int16), T0 + 1.0 - 0.05)  # half of it still fits
    got = buf.read(4000, T0 + 1.0 + 3999 / RATE)
    assert (got[:800] == 9).all() and (got[800:] == 5).all()


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.integers(1, 900), min_size=1, max_size=40),
       frame=st.sampled_from([160, 320, 480]), data=st.data())
def test_far_end_alignment_holds_across_wraparound(chunks: list[int], frame: int,
                                                   data: st.DataObject) -> None:
    buf = FarEndBuffer(seconds=0.25)  # 4000 samples: pushes wrap the ring often
    total = sum(chunks)
    x = (np.arange(total) * 7 % 20000 - 10000).astype(np.int16)
    pos = 0
    for n in chunks:
        buf.push(x[pos:pos + n].tobytes(), T0 + pos / RATE)
        pos += n
    last = data.draw(st.integers(max(0, total - 4000 + frame - 1), total + frame))
    got = buf.read(frame, T0 + last / RATE)
    want = np.zeros(frame, np.int16)
    for k in range(frame):
        idx = last - frame + 1 + k
        if max(0, total - 4000) <= idx < total:
            want[k] = x[idx]
    assert np.array_equal(got, want)


def test_barge_in_detector_refuses_frame_sizes_webrtcvad_cannot_take() -> None:
    with pytest.raises(ValueError, match="10, 20 or 30 ms"):
        BargeInDetector(frame_ms=25)


def test_a_muted_gate_opens_on_the_childs_stop_with_the_word_whole_and_not_on_the_toy(
        toy_speech: np.ndarray) -> None:
    from device.audio.backend import MicFrame
    from device.audio.vad import VadGate
    from device.events import SpeechAudio, SpeechStart, VoiceBargeIn
    far = toy_speech[: 6 * RATE]
    path = EchoPath(delay_ms=40, rt60_s=0.25, seed=5)
    stop = espeak("stop!", voice="en-us+f4", pitch=90, speed=150)
    at = int(4.0 * RATE)
    child = np.zeros(len(far))
    child[at:at + len(stop)] = stop
    onset = (at + int(np.argmax(np.abs(stop) > 0.05 * np.max(np.abs(stop))))) / RATE
    for with_child in (False, True):
        buf = FarEndBuffer()
        gate = VadGate(webrtc_cfg(), echo=WebRtcEchoCanceller(), far=buf,
                       barge=BargeInDetector())
        gate.muted = True   # the toy is speaking
        mic16 = to_int16(mix(path.echo(far), child if with_child else None, 10.0))
        far16 = to_int16(far)
        events = []
        for i in range(0, len(mic16) // FRAME * FRAME, FRAME):
            buf.push(far16[i:i + FRAME], T0 + i / RATE)   # the speaker, as it plays
            events += gate.process(MicFrame(mic16[i:i + FRAME].tobytes(),
                                            T0 + (i + FRAME - 1) / RATE))
        if not with_child:
            assert events == [] and gate.muted, "the toy interrupted itself"
            continue
        assert isinstance(events[0], VoiceBargeIn) and isinstance(events[1], SpeechStart)
        heard = events[0].t - T0
        assert onset < heard <= onset + 0.3, f"'stop' at {onset:.2f} s, heard at {heard:.2f} s"
        assert not gate.muted, "the gate opened for the child"
        # the pre-roll reaches back before the word: "stop" goes to the toy whole
        first = next(e for e in events if isinstance(e, SpeechAudio))
        assert first.t - T0 <= onset, "the start of 'stop' was clipped"





@pytest.mark.parametrize("room_rms", [0, 150])
def test_after_a_voice_barge_in_the_next_reply_does_not_start_by_stopping_itself(
        room_rms: int) -> None:
    # The detector's VAD (webrtcvad) goes on calling frames speech for a few frames after
    # speech, and calls the first frames it ever hears speech. Left with the child's "stop"
    # as the last frame it heard, the first frames of the next reply (silent: its sound
    # comes later) were speech and the toy stopped itself. Rooms: PulseAudio's idle mic
    # (digital silence) and a fan the canceller leaves in; no canceller here, so the room
    # reaches the detector as the mic heard it.
    from device.audio.backend import MicFrame
    from device.audio.vad import VadGate
    from device.events import VoiceBargeIn
    gate = VadGate(webrtc_cfg(), far=FarEndBuffer(), barge=BargeInDetector())
    room = np.random.default_rng(1).normal(0, room_rms, RATE).astype(np.int16)
    stop = to_int16(espeak("no, stop!", voice="en-us+f4", pitch=90, speed=150))
    t = T0

    def hear(x: np.ndarray) -> int:
        nonlocal t
        barge_ins = 0
        for i in range(0, len(x) - FRAME + 1, FRAME):
            t += FRAME / RATE
            events = gate.process(MicFrame(x[i:i + FRAME].tobytes(), t))
            barge_ins += sum(isinstance(e, VoiceBargeIn) for e in events)
            if barge_ins:
                break   # the gate opened: the rest of the words go to the toy
        return barge_ins

    hear(room)            # the toy listens
    gate.muted = True     # and answers; the child talks over it
    assert hear(stop) == 1, "the child's 'stop' was not heard"
    hear(room)            # the toy listens again
    gate.muted = True     # the next reply
    assert hear(room) == 0, "the toy stopped itself"


def test_the_reference_is_stamped_with_when_the_speaker_plays_it() -> None:
    # The speaker resamples what it plays (48 kHz) to 16 kHz for the canceller; soxr hands
    # that out in bursts (490 samples every third 10 ms block). Stamped with the time of the
    # block that let a burst out, the reference landed up to 30 ms after the sound, and a
    # reference that lags the echo cannot be cancelled.
    from device.audio.buffer import BufferedSpeaker
    far = FarEndBuffer()
    speaker = BufferedSpeaker(48_000, volume=1.0, max_volume=1.0, prefill_s=0.0)
    speaker.feed_reference(far)
    reply = np.zeros(24_000, np.int16)
    for k in range(5):   # clicks 0.2 s apart, at every phase of soxr's bursts
        reply[4000 + 4830 * k] = 30000
    speaker.write(reply.tobytes())
    played = np.concatenate([speaker._pull(480, T0 + b / 100)[0] for b in range(110)])
    heard = [T0 + i / 48_000 for i in np.nonzero(np.abs(played) > 0.3)[0]]
    assert len(heard) >= 5
    ref = far.read(int(1.1 * RATE), T0 + 1.1 - 1 / RATE).astype(float)
    for t in heard[::max(1, len(heard) // 5)]:
        i = round((t - T0) * RATE)
        at = i - 80 + int(np.argmax(np.abs(ref[i - 80:i + 800])))
        assert abs(at / RATE - (t - T0)) <= 0.001, \
            f"click heard at {t - T0:.4f} s, in the reference at {at / RATE:.4f} s"
