"""The echo room of the private PulseAudio server: the mic hears the speaker, through real PortAudio.

A signal played with sounddevice to the default sink (as the daemon's speaker plays) must come
back in the default mic (read with sounddevice as the daemon's capture thread reads it: blocking
40 ms reads, latency 'low') `delay_ms` later plus the path's own latency, at `gain_db`, mixed
with what is fed to the mic, and without slowing the mic down.

Delays are measured on two clocks: when the sink played a sample (`EchoRoom.played_at`, from
the earliest arrivals of the monitor's blocks) and when the app got a mic sample (earliest
blocking reads). Measured on an idle 2-core machine, the path's own latency (FIFO -> pipe
source -> ALSA pulse plugin -> PortAudio) is 0.7 to 1.1 ms (median 0.9 over 30 mic streams);
now and then (3 streams in some 70) a mic stream runs 10 ms later for its whole life (about
11 ms: the capture path holds one more 10 ms chunk), hence the tolerance below. Within one
stream the delay is sample-exact: two rooms 60 ms apart measure 60.0 ms apart.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from device.audio.devices import find_device
from device.audio.echo_room import MIN_DELAY_MS, EchoRoom, room_impulse_response
from device.audio.pulse_harness import espeak
from tests.audio_helpers import align

RATE = 48_000
#: what the path may add to the configured delay (measured 0.7-1.1 ms, or ~11 ms, see above)
PATH_LATENCY_MS = (-2.0, 20.0)


class Mic:
    """The default mic through sounddevice: blocking reads in a thread, with their times."""

    def __init__(self, block_ms: int = 40) -> None:
        self.block = RATE * block_ms // 1000
        self.reads: list[tuple[int, float]] = []     # (samples so far, monotonic time)
        self.overflows = 0
        self._data: list[np.ndarray] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import sounddevice as sd
        try:
            stream = sd.InputStream(device=find_device("pulse", "input"), samplerate=RATE,
                                    channels=1, dtype="int16", blocksize=self.block,
                                    latency="low")
            stream.start()
        except BaseException as e:  # noqa: BLE001
            self._error.append(e)
            self._ready.set()
            return
        self._ready.set()
        n = 0
        try:
            while not self._stop.is_set():
                data, overflowed = stream.read(self.block)
                t = time.monotonic()
                n += len(data)
                self.overflows += bool(overflowed)
                self._data.append(data[:, 0].copy())
                self.reads.append((n, t))
        finally:
            stream.abort()
            stream.close()

    def __enter__(self) -> Mic:
        self._thread.start()
        self._ready.wait(5)
        if self._error:
            raise self._error[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def samples(self) -> np.ndarray:
        return np.concatenate(self._data) if self._data else np.zeros(0, np.int16)

    def arrived_at(self, index: int) -> float:
        """Monotonic time mic sample `index` reached the app (by the earliest reads)."""
        return index / RATE + min(t - n / RATE for n, t in self.reads)


def play(x: np.ndarray) -> threading.Thread:
    """Play int16 mono `x` on the default sink with sounddevice (a blocking stream in its own
    thread, as the daemon's speaker); returns the thread, which ends once it has played."""
    def run() -> None:
        import sounddevice as sd
        with sd.OutputStream(device=find_device("pulse", "output"), samplerate=RATE,
                             channels=1, dtype="int16", latency=0.06) as s:
            s.write(np.ascontiguousarray(x.reshape(-1, 1)))
            s.write(np.zeros((RATE // 10, 1), np.int16))
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def noise(seconds: float, rms: float, seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * rms,
                   -32768, 32767).astype(np.int16)


def db(a: np.ndarray, b: np.ndarray) -> float:
    """Level of `a` relative to `b`."""
    ra = np.sqrt(np.mean(a.astype(np.float64) ** 2)) + 1e-9
    rb = np.sqrt(np.mean(b.astype(np.float64) ** 2)) + 1e-9
    return float(20 * np.log10(ra / rb))


def onset(x: np.ndarray, threshold: int = 1000) -> int:
    loud = np.nonzero(np.abs(x) > threshold)[0]
    assert len(loud), "the burst never reached the sink"
    return int(loud[0])


def fftconv(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    size = 1 << int(np.ceil(np.log2(len(x) + len(h))))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:len(x)]


def test_the_mic_hears_the_speaker_after_the_delay_at_the_gain(pulse):
    # Two rooms in turn on one mic stream: 20 ms at -6 dB, then 80 ms at -20 dB (each its
    # own burst, so the second is not found in the first's echo).
    found = []
    with Mic() as mic:
        time.sleep(0.2)
        for seed, (delay_ms, gain_db) in enumerate(((20, -6), (80, -20))):
            burst = noise(0.4, 4000, seed=seed)
            with pulse.echo_room(delay_ms=delay_ms, gain_db=gain_db, rt60_s=0.25) as room, \
                    pulse.record() as rec:
                play(burst).join(5)
                time.sleep(0.45)       # the room's tail and the mic's last reads
            x = rec.samples()
            a = onset(x)
            sent = x[a:a + len(burst)]
            y = mic.samples()
            lag, corr = align(y, sent)
            total_ms = 1000 * (mic.arrived_at(lag) - room.played_at(rec.start + a))
            # past the room's build-up (~15 ms of its energy), the echo is the noise times gain
            level = db(y[lag + RATE // 10:lag + len(sent)], sent[RATE // 10:])
            found.append((delay_ms, lag - (rec.start + a), total_ms))
            print(f"\nroom {delay_ms} ms {gain_db} dB: echo {total_ms:.1f} ms after the sink "
                  f"played it (path {total_ms - delay_ms:+.1f} ms), level {level:.2f} dB, "
                  f"correlation {corr:.2f}, late samples {room.late_samples}, "
                  f"longest mix {room.max_take_ms:.2f} ms")
            lo, hi = PATH_LATENCY_MS
            assert delay_ms + lo <= total_ms <= delay_ms + hi, \
                f"echo {total_ms:.1f} ms after the sound, room set to {delay_ms} ms"
            assert abs(level - gain_db) < 1.0, f"echo at {level:.1f} dB, room set to {gain_db} dB"
            # the room's direct path dominates: a clear peak, not a smear
            assert corr > 0.2, f"the echo does not look like the sound (correlation {corr:.2f})"
            assert room.late_samples == 0 and room.resyncs == 0
    assert mic.overflows == 0
    # The same stream, the same clocks: the rooms differ by exactly their delays.
    (_, s20, _), (_, s80, _) = found
    apart_ms = 1000 * ((s80 - s20) / RATE)
    assert abs(apart_ms - 60) < 0.5, f"rooms 60 ms apart measured {apart_ms:.2f} ms apart"


def test_with_the_echo_room_off_the_mic_hears_only_its_noise_floor(pulse):
    burst = noise(0.4, 4000, seed=2)
    feeder = pulse.feeders[RATE]
    pulse.echo_room(delay_ms=40, gain_db=-6)
    pulse.reset()                          # what the fixture does between tests: echo off
    assert feeder.echo is None
    feeder.noise_rms = 30.0                # a quiet room's floor, about -61 dBFS
    try:
        with Mic() as mic, pulse.record() as rec:
            time.sleep(0.4)
            floor = mic.samples()[RATE // 10:]
            heard = len(mic.samples())
            play(burst).join(5)
            time.sleep(0.3)
    finally:
        feeder.noise_rms = pulse.noise_rms
    x = rec.samples()
    a = onset(x)
    y = mic.samples()[heard:]
    fs = np.full(1, 32768)
    print(f"\nroom off: mic floor {db(floor, fs):.1f} dBFS, {db(y, fs):.1f} dBFS while the "
          f"speaker played at {db(x[a:a + len(burst)], fs):.1f} dBFS")
    assert db(y, floor) < 1.0, f"with the room off the mic rose {db(y, floor):.1f} dB"


def test_fed_speech_and_the_echo_add_up_in_the_mic(pulse):
    speech = espeak("Teddy, stop! Tell me a dragon story.", RATE, pitch=80)
    speech = (speech * (12000 / np.max(np.abs(speech.astype(np.float64))))).astype(np.int16)
    music = noise(1.5, 3000, seed=3)          # what the toy says, as far as the room cares
    with pulse.echo_room(delay_ms=40, gain_db=-10, rt60_s=0.25) as room, \
            pulse.record() as rec, Mic() as mic:
        time.sleep(0.2)
        player = play(music)
        time.sleep(0.3)
        pulse.feed(speech)                    # the child talks over the toy
        player.join(5)
        assert pulse.feeders[RATE].wait_idle(10)
        time.sleep(0.4)
    y = mic.samples().astype(np.float64)
    x = rec.samples().astype(np.float64)
    echo = fftconv(x, room.rir)               # what the room makes of what the sink played
    a = onset(rec.samples())
    e_lag, e_corr = align(y, echo[a:a + len(music)])
    s_lag, s_corr = align(y, speech)
    # Both are in the mic, each sample the sum of the two (in int16 rounding).
    lo, hi = min(s_lag, e_lag), max(s_lag + len(speech), e_lag + len(music))
    hi = min(hi, len(y), e_lag - a + len(echo))
    s = np.zeros(hi - lo)
    s[s_lag - lo:s_lag - lo + len(speech)] = speech[:hi - s_lag]
    e = echo[a - (e_lag - lo):a - (e_lag - lo) + hi - lo]
    coef, *_ = np.linalg.lstsq(np.stack((s, e), axis=1), y[lo:hi], rcond=None)
    resid = y[lo:hi] - np.stack((s, e), axis=1) @ coef
    res_db = db(resid, y[lo:hi])
    overlap = slice(max(s_lag, e_lag) - lo, min(s_lag + len(speech), e_lag + len(music)) - lo)
    print(f"\nspeech x{coef[0]:.3f} (corr {s_corr:.2f}), echo x{coef[1]:.3f} (corr {e_corr:.2f}), "
          f"residual {res_db:.1f} dB, {1000 * (overlap.stop - overlap.start) / RATE:.0f} ms "
          f"overlap, speech {db(s[overlap], e[overlap]):+.1f} dB re echo")
    assert overlap.stop - overlap.start > RATE // 2, "speech and echo hardly overlapped"
    assert abs(coef[0] - 1) < 0.02, f"the speech came through x{coef[0]:.3f}"
    assert abs(coef[1] - 1) < 0.02, f"the echo came through x{coef[1]:.3f}"
    assert res_db < -40, f"the mic is not speech + echo: {res_db:.1f} dB left over"


def test_the_echo_room_keeps_the_mic_in_real_time(pulse):
    # A long room (0.6 s) and 3 s of sound: the feeder must still write 48000 samples a
    # second, the mic read them at that pace, and the echo have no holes.
    seconds = 3.0
    feeder = pulse.feeders[RATE]
    late_before = feeder.late_chunks
    with pulse.echo_room(delay_ms=30, gain_db=-6, rt60_s=0.6) as room, Mic() as mic:
        time.sleep(0.2)
        player = play(noise(seconds, 3000, seed=4))
        player.join(seconds + 5)
        time.sleep(0.3)
    # How far the mic fell behind real time from its first half second to its last: the
    # earliest reads of each (a read that comes late now and then is the reader's, not lost).
    lag = [t - n / RATE for n, t in mic.reads]
    k = RATE // 2 // mic.block
    behind_ms = 1000 * (min(lag[-k:]) - min(lag[:k]))
    (n0, t0), (n1, t1) = mic.reads[0], mic.reads[-1]
    y = mic.samples().astype(np.float64)
    a = onset(mic.samples(), 300)
    steady = y[a + RATE // 2:a + int((seconds - 0.1) * RATE)]
    frames = steady[:len(steady) // 480 * 480].reshape(-1, 480)
    rms_db = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-9)
    dip = float(np.median(rms_db) - rms_db.min())
    print(f"\nmic read {(n1 - n0) / RATE:.2f} s of audio in {t1 - t0:.2f} s, behind by "
          f"{behind_ms:.1f} ms at the end, "
          f"deepest 10 ms dip {dip:.1f} dB, longest mix {room.max_take_ms:.2f} ms over "
          f"{room.takes} chunks, late samples {room.late_samples}, writer late "
          f"{feeder.late_chunks - late_before} times")
    assert abs(behind_ms) < 30, f"the mic fell {behind_ms:.0f} ms behind in {t1 - t0:.1f} s"
    assert mic.overflows == 0
    assert dip < 6, f"a hole in the echo: a 10 ms frame {dip:.1f} dB below the median"
    assert room.late_samples == 0


def test_an_echo_room_refuses_what_it_cannot_do(pulse):
    with pytest.raises(ValueError, match="44100 Hz and the mic at 48000 Hz"):
        EchoRoom(pulse.recorders[44_100], 48_000)
    with pytest.raises(ValueError, match="below"):
        pulse.echo_room(delay_ms=MIN_DELAY_MS / 2)
    with pytest.raises(ValueError, match="cannot feed the mic at 48000"):
        pulse.feeders[48_000].set_echo(EchoRoom(pulse.recorders[44_100], 44_100))
    assert pulse.feeders[48_000].echo is None


def test_the_room_is_an_exact_running_convolution(pulse):
    # Uneven chunks, the tail carried across: the same as one convolution of the whole.
    rir = room_impulse_response(0.05, RATE, seed=5)
    room = EchoRoom(pulse.recorders[RATE], RATE, rir=rir, gain_db=0)
    x = np.random.default_rng(6).standard_normal(9000)
    out, i = [], 0
    for n in (480, 100, 3000, 7, 2400, 480, 3000):
        out.append(room._convolve(x[i:i + n]))
        i += n
    want = np.convolve(x, rir / np.sqrt(np.sum(rir ** 2)))[:len(x)]
    assert np.allclose(np.concatenate(out)[:len(x)], want, atol=1e-9)
