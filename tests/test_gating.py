"""The VAD gate run on the capture side: what reaches the daemon, and how often it wakes it."""

from __future__ import annotations

import numpy as np

from device.audio.backend import FRAME_SAMPLES, MIC_RATE, MicFrame
from device.audio.gating import Gating
from device.audio.pulse_harness import espeak
from device.audio.vad import VadGate
from device.config import AudioConfig
from device.events import SpeechAudio, SpeechEnd, SpeechStart


def frames_of(x: np.ndarray, t0: float = 0.0) -> list[MicFrame]:
    n = len(x) // FRAME_SAMPLES
    return [MicFrame(x[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES].tobytes(),
                     t0 + (k + 1) * FRAME_SAMPLES / MIC_RATE) for k in range(n)]


def room(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 33, int(MIC_RATE * seconds)).astype(np.int16)


def test_speech_arrives_whole_in_few_hand_overs_and_silence_wakes_nobody() -> None:
    speech = espeak("Hello teddy, can you tell me a story about a dragon?", MIC_RATE, pitch=80)
    x = np.concatenate([room(3.0, 1), speech + room(len(speech) / MIC_RATE, 2), room(3.0, 3)])
    frames = frames_of(x)
    # The same gate state both ways: the reference runs frame by frame, as the loop used to.
    reference = []
    ref_gate = VadGate(AudioConfig())
    for f in frames:
        reference.extend(ref_gate.process(f))
    gating = Gating(VadGate(AudioConfig()))
    handovers = []
    for i in range(0, len(frames), 2):          # 40 ms reads: two frames each
        got = gating.push(frames[i:i + 2])
        if got is not None:
            handovers.append(got)
    handovers.append(gating.flush())
    events = [ev for h in handovers for ev in h.events]

    # Nothing lost, nothing reordered: the same speech, start and end as frame by frame.
    audio = b"".join(e.pcm for e in events if isinstance(e, SpeechAudio))
    assert audio == b"".join(e.pcm for e in reference if isinstance(e, SpeechAudio))
    assert [type(e) for e in events if not isinstance(e, SpeechAudio)] == \
        [type(e) for e in reference if not isinstance(e, SpeechAudio)] == [SpeechStart, SpeechEnd]
    assert [e.t for e in events if isinstance(e, SpeechEnd)] == \
        [e.t for e in reference if isinstance(e, SpeechEnd)]
    assert abs(sum(h.mic_s for h in handovers) - len(frames) * 0.02) < 1e-6

    # Start (with its pre-roll) and end go at once; speech between in pieces of >= 100 ms.
    start = next(i for i, h in enumerate(handovers) if any(isinstance(e, SpeechStart)
                                                          for e in h.events))
    end = next(i for i, h in enumerate(handovers) if any(isinstance(e, SpeechEnd)
                                                        for e in h.events))
    first = handovers[start].events
    assert isinstance(first[0], SpeechStart) and len(first[1].pcm) >= 0.5 * MIC_RATE * 2
    assert isinstance(handovers[end].events[-1], SpeechEnd)
    middle = [e for h in handovers[start + 1:end] for e in h.events]
    assert middle and all(isinstance(e, SpeechAudio) and len(e.pcm) >= 0.1 * MIC_RATE * 2
                          for e in middle)
    # The 3 s of room before speech woke the daemon 6 times (a heartbeat per 0.5 s), not 150.
    assert start <= 7
    assert len(handovers) < 0.2 * len(frames)


def test_muting_from_another_thread_takes_effect_at_the_next_frame() -> None:
    gate = VadGate(AudioConfig())
    speech = espeak("Hello teddy, how are you today?", MIC_RATE, pitch=80)
    gating = Gating(gate)
    for f in frames_of(room(2.0)):
        gating.push([f])
    gate.muted = True                    # the toy starts to speak: half duplex
    out = [gating.push([f]) for f in frames_of(speech)]
    assert not [e for h in out if h for e in h.events], "speech streamed while muted"
    gate.muted = False
    out = [gating.push([f]) for f in frames_of(np.concatenate([speech, room(1.5)]))]
    assert any(isinstance(e, SpeechStart) for h in out if h for e in h.events)


def _clock_run(reads: list[tuple[int, float]]) -> list[tuple[float, float, int]]:
    """(first-sample time, read time, samples) per block through a SampleClock at 16 kHz."""
    from device.audio.clock import SampleClock
    clock = SampleClock(MIC_RATE)
    return [(clock.first_of(n, t), t, n) for n, t in reads]


def test_mic_times_after_a_stall_are_never_in_the_future_and_keep_increasing() -> None:
    block = 640                        # 40 ms reads
    reads, t = [], 100.0
    for k in range(200):
        t += 0.04
        if k == 50:
            t += 0.2                   # the reader was starved for 200 ms ...
        if 50 < k <= 55:
            t -= 0.04                  # ... then gets the buffered blocks in a burst
        reads.append((block, t + 0.003 * (k % 3)))
    out = _clock_run(reads)
    for first, t_read, n in out:
        assert first + n / MIC_RATE <= t_read + 1e-9, "a sample dated after it was read"
    starts = [first for first, _, _ in out]
    assert all(b > a for a, b in zip(starts, starts[1:]))
    # Where it matters, the times are the true ones (100 + 40 ms per block, nothing lost).
    assert abs(starts[150] - (100.0 + 150 * 0.04)) < 0.01


def test_mic_times_catch_up_when_samples_were_lost() -> None:
    block = 640
    reads, t = [], 100.0
    for k in range(200):
        t += 0.04 + (0.3 if k == 80 else 0.0)   # 300 ms of audio never arrived
        reads.append((block, t))
    out = _clock_run(reads)
    starts = [first for first, _, _ in out]
    assert all(b > a for a, b in zip(starts, starts[1:]))
    first, t_read, n = out[120]                  # 1.6 s later: the times are right again
    assert abs(first + n / MIC_RATE - t_read) < 0.01
