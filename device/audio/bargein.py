"""Voice barge-in: is the child talking over the toy, judged after the echo canceller?

webrtcvad alone is not enough after a canceller: it ignores level, so the faint speech-like
residue of the toy's own voice (40 dB down) still reads as speech now and then, and WebRTC's
AEC3 now and then lets 100 to 200 ms of echo through nearly untouched. Three checks, all free
of any calibration of mic or speaker gain:

1. the VAD calls the canceller's output speech, and it is louder than -55 dBFS (right after
   speech the VAD calls silence speech too); the VAD hears every frame, the toy talking or
   not (`hear`), so what it remembers is the room just before;
2. the canceller took out less than `max_suppression_db` of the frame (on echo alone it
   removes 25 to 50 dB; on a child talking over the echo, a few);
3. when the far-end reference is given: the mic frame is louder, by `min_excess_db` on average
   over the trigger run, than the echo the speaker's recent output usually makes (the
   median mic/far energy ratio over the last seconds without child speech). A Geigel-style
   double-talk test: an echo burst the canceller let through is never much louder than echo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import webrtcvad

RATE = 16_000


@dataclass
class BargeInDetector:
    """Feed each frame's canceller input, output and far-end reference; `feed` returns True
    once per barge-in, when `trigger_ms` of consecutive frames count as the child's speech."""

    # Chosen with bench/aec_eval.py over 4 seeds: mode 3 and 100 ms caught "stop" within
    # 300 ms in >= 19/20 trials offline (120 ms: 17/20 on one seed; 200 ms: most trials late),
    # and with checks 2 and 3 gave 0 false barge-ins in 4 x 10 min (VAD alone: 1 to 4 per
    # 10 min). Through the whole box the mic, the loop and the speaker add 50 to 80 ms
    # (bench/voice_bargein.py), which put 100 ms at the 300 ms bar: 60 ms (offline p50 198 ms
    # against 239 ms, still 0 false barge-ins) leaves room for them.
    aggressiveness: int = 3
    trigger_ms: int = 60
    frame_ms: int = 20
    max_suppression_db: float = 20.0
    # 6 dB let the toy stop itself through PulseAudio: at a reply's start AEC3 now and then
    # lets 150 ms of echo through at up to 7 dB over the echo's median level; a child saying
    # "stop" at 10 dB over the echo reached 10.7 to 20 dB (16 trials, 2 x 2 minutes alone).
    min_excess_db: float = 9.0
    #: far-end energy is taken as the loudest frame over this window: covers the
    #: speaker-to-mic delay and the start of the room's reverberation
    far_window_ms: int = 300
    #: how much echo-only history the typical echo level is the median of
    history_s: float = 5.0
    #: For the log: how far over the echo's usual level the run that fired last was (dB).
    fired_excess_db: float = field(default=0.0, init=False)
    _vad: webrtcvad.Vad = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"barge-in frames must be 10, 20 or 30 ms (webrtcvad); got "
                             f"{self.frame_ms}")
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._ratio = 10 ** (-self.max_suppression_db / 10)
        self._far_e = np.zeros(max(1, self.far_window_ms // self.frame_ms))
        self._far_i = 0
        self._hist = np.zeros(int(self.history_s * 1000 / self.frame_ms))
        self._hist_n = 0
        self._run_frames = self.trigger_ms // self.frame_ms + (self.trigger_ms % self.frame_ms > 0)
        self._excess = np.zeros(self._run_frames)
        samples = RATE * self.frame_ms // 1000
        # -55 dBFS: quieter than any child near the toy, louder than the noise of a quiet room
        self._quiet = samples * (32768 * 10 ** (-55 / 20)) ** 2
        self.reset()

    def reset(self) -> None:
        """Forget the current run (after a barge-in was acted on, or playback stopped)."""
        self._run = 0
        self._fired = False

    def hear(self, near_out: bytes) -> None:
        """A frame while the toy is quiet and the gate open: keeps the VAD's picture of the
        room and of the end of speech current. webrtcvad goes on calling frames speech for up
        to 6 frames after speech (digital silence included) and calls the first 4 frames it
        ever hears speech; left with the child's "stop" as the last frame it heard, it made
        the first frames of the next reply, seconds later, speech, and the toy stopped
        itself. About 4 us a frame (0.0002 CPU s per second, x86_64), beside the gate's own
        VAD: that one runs at the gate's aggressiveness, this one at the detector's."""
        self._vad.is_speech(near_out, RATE)

    def is_child_speech(self, near_in: bytes, near_out: bytes) -> bool:
        """One frame, checks 1 and 2: speech in the output the canceller did not mostly remove."""
        e_in = _energy(near_in)
        e_out = _energy(near_out)
        if e_out < e_in * self._ratio or e_out < self._quiet:
            return False
        return self._vad.is_speech(near_out, RATE)

    def feed(self, near_in: bytes, near_out: bytes, far_ref: bytes | None = None) -> bool:
        e_far = _energy(far_ref) if far_ref is not None else 1.0
        self._far_e[self._far_i] = e_far
        self._far_i = (self._far_i + 1) % len(self._far_e)
        far_max = float(self._far_e.max())
        e_in = _energy(near_in)
        # far quiet (nothing playing lately): no echo to mistake for the child
        far_active = far_max > self._quiet
        ratio_db = 10 * math.log10(e_in / far_max) if far_active else 0.0

        speech = self.is_child_speech(near_in, near_out)
        if not speech:
            if far_active:
                self._hist[self._hist_n % len(self._hist)] = ratio_db
                self._hist_n += 1
            self.reset()
            return False
        if not far_active:
            excess = 20.0   # no echo to compare with: trust checks 1 and 2
        elif self._hist_n < 25:
            # The echo's usual level is not learnt yet (the first half second the toy talks
            # after boot, while the canceller converges too): trusting checks 1 and 2 then let
            # the toy interrupt itself (bench/voice_bargein.py). The button still works.
            excess = 0.0
        else:
            typical = float(np.median(self._hist[: min(self._hist_n, len(self._hist))]))
            excess = min(20.0, ratio_db - typical)  # capped: one loud frame must not carry a run
        self._excess[self._run % self._run_frames] = excess
        self._run += 1
        if self._fired or self._run < self._run_frames:
            return False
        excess = float(self._excess.mean())
        if excess >= self.min_excess_db:
            self._fired = True
            self.fired_excess_db = excess
            return True
        return False

    @property
    def suppression_db(self) -> float:
        return -10 * math.log10(self._ratio)


def _energy(pcm: bytes) -> float:
    """Sum of squares of an int16 frame, plus one so silence is not zero."""
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    return float(np.dot(x, x)) + 1.0
