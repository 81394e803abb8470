"""The VAD gate: which microphone audio is worth streaming, and when a turn of speech ends.

webrtcvad says, per 20 ms frame, whether it sounds like speech. On its own it clips the first
syllable (it needs a few frames to be sure), chops pauses between words, fires on clicks and
stays on in steady noise. The gate around it:

- keeps a pre-roll ring (>= 500 ms) and sends it first, so the first syllable is never lost;
- starts only after `min_speech_ms` of speech within a short window (a click is not speech);
- keeps streaming for `hangover_ms` after the last speech frame, bridging pauses; of a pause
  only the first `tail_ms` goes out at once, the rest is held and sent only if speech resumes
  (so the audio stays one piece), and a turn's end sends just `tail_ms` of its silence;
- counts a frame as speech only if it is also louder than an adaptive noise floor (the
  quietest moment of the last 2 s) by `noise_guard_db`, so a fan or hum that webrtcvad
  mistakes for voice cannot hold it open, and louder than the room's usual peaks, learned
  while the gate is idle (and again when the room keeps re-opening it: `_restart`);
- is `muted` while the box speaks (half duplex). With an echo canceller in front of it and a
  `barge` detector (voice barge-in), a muted gate still listens: when the detector hears the
  child over the toy's own voice it says VoiceBargeIn and opens, with the last `preroll_ms`
  of the canceller's output as pre-roll, so the "stop" that interrupted is sent whole.
  The canceller gets, for each frame, what the speaker played at the time it was captured
  (`far`, filled by the speaker's writer thread).
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import webrtcvad

from device.audio.backend import MIC_RATE, MicFrame
from device.events import GateEvent, SpeechAudio, SpeechEnd, SpeechStart, VoiceBargeIn

if TYPE_CHECKING:
    from device.audio.bargein import BargeInDetector
    from device.audio.echo import FarEndBuffer

log = logging.getLogger(__name__)


class EchoCanceller(Protocol):
    """Removes the speaker's sound from the microphone. `far_ref` is what was played, aligned."""

    def process(self, near: bytes, far_ref: bytes | None) -> bytes: ...


class PassThrough:
    """No echo cancelling: the microphone as it is."""

    def process(self, near: bytes, far_ref: bytes | None) -> bytes:
        return near


@dataclass(frozen=True)
class GateSettings:
    """The gate's tuning; `VadGate(cfg.audio)` takes these from the config."""
    aggressiveness: int = 2
    preroll_ms: int = 700
    hangover_ms: int = 600
    #: Of the hangover, only this much is sent when a turn ends; the rest of a pause is held
    #: and sent only if speech resumes (then the audio stays one piece).
    tail_ms: int = 300
    min_speech_ms: int = 120
    #: A frame must be this many dB above the noise floor to count as speech.
    noise_guard_db: float = 4.0
    #: The start decision looks at this many ms of recent frames.
    start_window_ms: int = 300
    #: The noise floor is the quietest moment in this window.
    floor_window_ms: int = 2000
    #: Speech must also be this much louder than the room's usual peaks (a high percentile of
    #: the level while nobody speaks).
    peak_margin_db: float = 1.0
    peak_percentile: float = 93.0
    #: After this long without a 300 ms pause, the room's peaks are re-learned (_is_speech).
    relearn_after_ms: int = 5_000
    #: This many starts in a row, each within `start_window_ms` of the last end, on audio
    #: mostly no louder than the room's peaks: the room is re-learned (_restart).
    quick_restarts: int = 2


def _settings_from(cfg: object) -> GateSettings:
    if isinstance(cfg, GateSettings):
        return cfg
    g = GateSettings()
    return GateSettings(
        aggressiveness=getattr(cfg, "vad_aggressiveness", g.aggressiveness),
        preroll_ms=getattr(cfg, "preroll_ms", g.preroll_ms),
        hangover_ms=getattr(cfg, "hangover_ms", g.hangover_ms),
        tail_ms=getattr(cfg, "tail_ms", g.tail_ms),
        min_speech_ms=getattr(cfg, "min_speech_ms", g.min_speech_ms),
        noise_guard_db=getattr(cfg, "vad_noise_guard_db", g.noise_guard_db),
        start_window_ms=max(getattr(cfg, "min_speech_ms", g.min_speech_ms) * 2, g.start_window_ms),
    )


def frame_db(pcm: bytes) -> float:
    """RMS level of 16-bit PCM in dBFS (floor -100)."""
    x = np.frombuffer(pcm, np.int16).astype(np.float32)
    if not len(x):
        return -100.0
    ms = float(np.dot(x, x)) / len(x)
    return 10 * math.log10(ms / (32768.0 ** 2)) if ms > 0 else -100.0


def voice_band_db(pcm: bytes, lo_hz: float = 250.0, hi_hz: float = 3800.0) -> float:
    """Level in the voice band only, so mains hum, rumble and hiss count for little."""
    x = np.frombuffer(pcm, np.int16).astype(np.float32)
    if len(x) < 2:
        return -100.0
    spec = np.fft.rfft(x)
    k0, k1 = int(lo_hz * len(x) / MIC_RATE), int(hi_hz * len(x) / MIC_RATE) + 1
    band = spec[k0:k1]
    ms = 2 * float(np.vdot(band, band).real) / (len(x) ** 2)
    return 10 * math.log10(ms / (32768.0 ** 2)) if ms > 0 else -100.0


class VadGate:
    """Turn microphone frames into SpeechStart / SpeechAudio... / SpeechEnd events.

    `process(frame)` takes 10, 20 or 30 ms of 16 kHz mono PCM and returns the events it causes:
    on a start, SpeechStart then the pre-roll frames then the frame itself; while speaking, one
    SpeechAudio per frame (hangover included); at the end, the last SpeechAudio then SpeechEnd.
    Not thread-safe: call `process` from one thread (`muted` may be set from another).
    """

    def __init__(self, cfg: object = None, *, echo: EchoCanceller | None = None,
                 far: FarEndBuffer | None = None, barge: BargeInDetector | None = None) -> None:
        self.settings = s = _settings_from(cfg) if cfg is not None else GateSettings()
        self._vad = webrtcvad.Vad(s.aggressiveness)
        self.echo: EchoCanceller = echo or PassThrough()
        #: What the speaker played, by time: the canceller's reference.
        self.far = far
        #: Decides a voice barge-in while muted; None: a muted gate is deaf (half duplex).
        self.barge = barge
        #: Voice barge-ins detected (for status and benches).
        self.barge_ins = 0
        self._muted = False
        self._active = False
        self._ring: collections.deque[tuple[MicFrame, bool]] = collections.deque()
        self._held: list[MicFrame] = []    # a pause's frames past tail_ms, sent if speech resumes
        self._silence_ms = 0.0
        self._floor_db: float | None = None
        self._last_db: float | None = None
        self._recent_db: collections.deque[float] = collections.deque(
            maxlen=max(1, s.floor_window_ms // 20))
        self._idle_db: collections.deque[float] = collections.deque(maxlen=250)
        self._active_db: collections.deque[float] = collections.deque(maxlen=250)
        self._active_frames = 0
        self._pending_db: collections.deque[float] = collections.deque()
        self._pending_db_max = max(1, s.start_window_ms // 20)
        self._idle_count = 0
        self._idle_p90: float | None = None
        # Levels since the gate last started after a real rest, and the quick restarts since.
        self._run_db: collections.deque[float] = collections.deque(maxlen=500)
        self._quick_starts = 0
        self._end_frame = -(1 << 30)
        #: Frames seen, frames streamed, starts: for status and benches.
        self.frames_in = 0
        self.frames_out = 0
        self.starts = 0

    # --- half duplex and echo ---

    @property
    def muted(self) -> bool:
        """While True (the box is speaking), nothing is streamed and no speech starts."""
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        # Only a flag: the loop sets it while the capture thread runs `process`, which drops
        # the pre-roll itself (device/audio/gating.py).
        self._muted = bool(value)
        if self.barge is not None:
            self.barge.reset()   # a new reply: no half-counted run from the last one

    @property
    def active(self) -> bool:
        """True between SpeechStart and SpeechEnd."""
        return self._active

    @property
    def noise_floor_db(self) -> float | None:
        return self._floor_db

    # --- the gate ---

    def process(self, frame: MicFrame) -> list[GateEvent]:
        """Feed one frame; get the events it causes (often none)."""
        s = self.settings
        self.frames_in += 1
        # The reference that was playing while this frame was captured (`t` read as its last
        # sample: if it is the first, the reference leads by a frame, which AEC3's delay
        # estimate absorbs; one that lagged the echo could not be cancelled at all).
        far = self.far.read_bytes(len(frame.pcm) // 2, frame.t) if self.far is not None else None
        near = frame.pcm
        pcm = self.echo.process(near, far)
        if pcm is not near:
            frame = MicFrame(pcm, frame.t)
        frame_ms = len(pcm) * 500 / MIC_RATE
        if self._muted:
            if self._active:
                self._active = False
                self._held.clear()
                self._ring.clear()
                return [SpeechEnd(frame.t)]
            if self.barge is None:
                self._ring.clear()
                return []
            return self._listen_over_reply(near, frame, far, frame_ms)
        if self.barge is not None:
            self.barge.hear(pcm)
        speech = self._is_speech(pcm)
        if self._active:
            out: list[GateEvent] = []
            if speech:
                # Speech again: the held part of the pause goes first, so nothing is missing.
                out += [SpeechAudio(f.pcm, f.t) for f in self._held]
                self._held.clear()
                self._silence_ms = 0.0
            else:
                self._silence_ms += frame_ms
            if speech or self._silence_ms <= s.tail_ms:
                out.append(SpeechAudio(pcm, frame.t))
            else:
                self._held.append(frame)
            self.frames_out += len(out)
            if self._silence_ms >= 300:
                self._active_frames = 0   # a real pause: this is not a never-ending noise
            if self._silence_ms >= s.hangover_ms:
                self._active = False
                # The turn is over and the rest of the pause is not sent with it; it becomes
                # the next start's pre-roll (a child may go on just as the hangover ends).
                self._ring.extend((f, False) for f in self._held)
                self._held.clear()
                self._end_frame = self.frames_in
                out.append(SpeechEnd(frame.t))
            return out
        self._ring.append((frame, speech))
        window = int(s.start_window_ms / frame_ms)
        preroll = int(s.preroll_ms / frame_ms)
        # Room for a pre-roll before a slow start's first speech frame (see below).
        keep = 2 * preroll + window
        while len(self._ring) > keep:
            self._ring.popleft()
        recent = list(self._ring)[-window:]
        # Not waiting for the room's peaks to be learned : speech in the first
        # second would then be learned as the room, and the next turn would have to be
        # louder than the child. Until then the noise floor alone guards the start.
        if sum(sp for _, sp in recent) * frame_ms < s.min_speech_ms:
            return []
        self._pending_db.clear()   # those frames were speech, not the room
        # Quick: this start's pre-roll window reaches back to the last end.
        self._restart(quick=self.frames_in - self._end_frame <= preroll + window)
        self._active_db.clear()
        self._active_frames = 0
        # Speech: send the pre-roll (preroll_ms before the first speech frame) and what follows.
        # Quiet speech in noise can take a second to gather min_speech_ms; its first speech
        # frame is the earliest one linked to the window's by gaps shorter than the window,
        # not the window's own first (that clipped a word's start in babble at 5 dB).
        frames = list(self._ring)
        first = len(frames) - len(recent) + next(i for i, (_, sp) in enumerate(recent) if sp)
        k = first - 1
        while k >= 0 and first - k <= window:
            if frames[k][1]:
                first = k
            k -= 1
        start = max(0, first - preroll)
        self._ring.clear()
        self._active = True
        self._silence_ms = 0.0
        self.starts += 1
        t_start = frames[first][0].t - frame_ms / 1000
        out = [SpeechStart(t_start)]
        out += [SpeechAudio(f.pcm, f.t) for f, _ in frames[start:]]
        self.frames_out += len(frames) - start
        return out

    def _listen_over_reply(self, near: bytes, frame: MicFrame, far: bytes | None,
                           frame_ms: float) -> list[GateEvent]:
        """Muted, with a barge-in detector: open only when the child talks over the toy."""
        assert self.barge is not None
        self._ring.append((frame, True))
        while len(self._ring) > self.settings.preroll_ms / frame_ms:
            self._ring.popleft()
        if not self.barge.feed(near, frame.pcm, far):
            return []
        self.barge.reset()
        self.barge_ins += 1
        self._muted = False   # the daemon agrees when it sees VoiceBargeIn
        frames = [f for f, _ in self._ring]
        self._ring.clear()
        self._active = True
        self._silence_ms = 0.0
        self.starts += 1
        self.frames_out += len(frames)
        # The trigger needed `trigger_ms` of speech: the word began about then.
        t_start = frame.t - self.barge.trigger_ms / 1000
        return [VoiceBargeIn(frame.t, self.barge.fired_excess_db), SpeechStart(t_start),
                *(SpeechAudio(f.pcm, f.t) for f in frames)]

    def reset(self) -> None:
        """Forget everything but the noise floor (e.g. after a conversation ends)."""
        self._ring.clear()
        self._held.clear()
        self._active = False
        self._silence_ms = 0.0

    def _restart(self, quick: bool) -> None:
        """Background talk (a TV, people across the room) that the first second of listening
        underrated opens the gate again and again, and while it is open nothing teaches the
        gate the room: no idle frames. A child close to the toy is far louder than the room's
        peaks most of the time; starts in quick succession on audio mostly below those peaks
        are the room, so its peaks are learned again from what was heard meanwhile."""
        s = self.settings
        if not quick:
            self._quick_starts = 0
            self._run_db.clear()
            return
        self._quick_starts += 1
        if self._quick_starts < s.quick_restarts or self._idle_p90 is None:
            return
        self._quick_starts = 0
        if float(np.median(self._run_db)) < self._idle_p90 + s.peak_margin_db:
            self._idle_db.clear()
            self._idle_db.extend(self._run_db)
            self._idle_p90 = float(np.percentile(self._idle_db, s.peak_percentile))
        self._run_db.clear()

    def _is_speech(self, pcm: bytes) -> bool:
        db = voice_band_db(pcm)
        self._run_db.append(db)
        voiced = self._vad.is_speech(pcm, MIC_RATE)
        # Minimum statistics: the floor is the quietest 40 ms over the last `floor_window_ms`.
        # Speech always has dips (between words, in stop consonants), so it barely moves the
        # floor; steady noise lifts it to its own level within the window, and then fails the
        # guard however much webrtcvad likes it.
        smooth = db if self._last_db is None else 0.5 * (db + self._last_db)
        self._last_db = db
        self._recent_db.append(smooth)
        self._floor_db = max(min(self._recent_db), -90.0)
        threshold = self._floor_db + self.settings.noise_guard_db
        # Fluctuating noise (babble, a TV) has peaks far above its minimum: while the gate is
        # idle, learn how loud the room gets without the child (90th percentile of the frames
        # that left the start window without starting speech) and ask speech to be louder.
        if not self._active:
            self._pending_db.append(db)
            if len(self._pending_db) > self._pending_db_max:
                self._idle_db.append(self._pending_db.popleft())
                self._idle_count += 1
                if self._idle_count % 5 == 0 and len(self._idle_db) >= 25:
                    self._idle_p90 = float(np.percentile(self._idle_db, self.settings.peak_percentile))
        else:
            # Held open this long, it is more likely the room than a child: re-learn the
            # room's peaks from what was heard meanwhile (steady babble then closes the gate).
            self._active_db.append(db)
            self._active_frames += 1
            if self._active_frames * 20 >= self.settings.relearn_after_ms:
                self._active_frames = 0
                self._idle_p90 = float(np.percentile(self._active_db, 99))
                self._idle_db.clear()
                self._idle_db.extend(self._active_db)
        if self._idle_p90 is not None:
            threshold = max(threshold, self._idle_p90 + self.settings.peak_margin_db)
        return voiced and db > threshold

