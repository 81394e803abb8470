"""An acoustic echo path for the private PulseAudio server: the mic hears the speaker.

On the box the microphone hears what the speaker plays, a few tens of milliseconds later and
coloured by the room. To test full duplex (echo cancellation, barge-in by voice) through real
PortAudio, `EchoRoom` does the same to the private server of `pulse_harness.py`: what the null
sink `spkR` plays (its monitor, recorded all session by `MonitorRecorder`) is delayed by
`delay_ms`, filtered with a room impulse response, scaled by `gain_db` and mixed by the pipe
source's `PipeFeeder` into what it writes into `micR`, with the fed speech and the noise.

Timing. The sink and the feeder both run on CLOCK_MONOTONIC: the null sink renders as many
samples as time has passed, the feeder writes 10 ms chunks at fixed deadlines. The room maps
the two by time: a chunk written at time t stands for the 10 ms before t (the pipe source hands
it on at once, as a sound card hands on a block it has captured) and gets the monitor samples
played `delay_ms` before that. When each monitor sample was played is known from the times
parec's 5 ms blocks arrived (the earliest arrivals of the last seconds, as
`clock.SampleClock` does for the mic), so the delay added between sink and FIFO is
`delay_ms` to the sample, whatever the block phase when the room was switched on.

On top of it comes the path's own latency, FIFO -> pipe source -> ALSA pulse plugin ->
PortAudio capture. Measured through sounddevice (tests/test_echo_room.py: 48 kHz, blocking
40 ms reads at latency 'low', as the daemon reads), from when the sink played a sample to when
the app got it, less `delay_ms`: 0.7 to 1.1 ms (median 0.9, 30 mic streams on an idle 2-core
machine); now and then a mic stream runs 10 ms later for its whole life (about 11 ms: the
capture path holds one more chunk), 3 streams in some 70.

A chunk is mixed just before it is written, so the monitor must already hold the samples
played `delay_ms` ago: below `MIN_DELAY_MS` they may not have arrived (parec's blocks are
5 ms). Samples that did not arrive in time are left out (counted in `late_samples`); `take`
never waits, so the feeder keeps real-time pace.

The convolution is overlap-add by FFT (numpy only), one block per take with the tail carried
over: about 0.4 ms per 10 ms chunk for a 0.25 s room at 48 kHz.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Self

import numpy as np

if TYPE_CHECKING:
    from device.audio.pulse_harness import MonitorRecorder, PipeFeeder

#: The echo needs the monitor's samples from `delay_ms` ago when a chunk is written: two of
#: parec's 5 ms blocks of margin.
MIN_DELAY_MS = 10.0


def room_impulse_response(rt60_s: float = 0.25, rate: int = 16_000,
                          length_s: float | None = None, seed: int = 0) -> np.ndarray:
    """Exponentially decaying noise: energy falls 60 dB in `rt60_s`. Peak-normalised to 1.

    A direct-path tap leads so the echo has a clear onset, as in a small toy enclosure.
    """
    rng = np.random.default_rng(seed)
    n = int(rate * (length_s if length_s is not None else rt60_s))
    t = np.arange(n) / rate
    # amplitude decays by 60 dB (factor 1000) over rt60: exp(-6.91 t / rt60)
    h = rng.standard_normal(n) * np.exp(-6.908 * t / rt60_s)
    h[0] = 3.0 * np.max(np.abs(h[1:]))
    return (h / np.max(np.abs(h))).astype(np.float64)


def _fast_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (sizes pocketfft is quick at)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


class EchoRoom:
    """The echo of monitor `recorder` (sink spkR) as mic `rate` hears it, a block at a time.

    `rir` (or a synthetic room of `rt60_s`) is scaled to unit energy, so `gain_db` is the echo's
    level relative to the speaker's for broadband sound (-6: the echo is 6 dB below what the
    sink plays). `take(n, t)` is called by the feeder thread for each chunk it writes.
    """

    CLOCK_WINDOW_S = 2.0     # the monitor's clock: earliest block arrival over this long
    SNAP_MS = 5.0            # the mapping moves by more than this: jump instead of sliding

    def __init__(self, recorder: MonitorRecorder, rate: int, *, delay_ms: float = 40.0,
                 gain_db: float = -6.0, rt60_s: float = 0.25, rir: np.ndarray | None = None,
                 seed: int = 0) -> None:
        if recorder.rate != rate:
            raise ValueError(
                f"echo room: the speaker's monitor runs at {recorder.rate} Hz and the mic at "
                f"{rate} Hz; the room does not resample: use one rate for both (pulse.use(R), "
                f"then pulse.echo_room(rate=R))")
        if delay_ms < MIN_DELAY_MS:
            raise ValueError(
                f"echo room: delay_ms={delay_ms} is below {MIN_DELAY_MS} ms: the monitor has "
                f"not delivered the samples by the time the mic chunk is written")
        self.rate = rate
        self.delay_ms = float(delay_ms)
        self.gain_db = float(gain_db)
        h = room_impulse_response(rt60_s, rate, seed=seed) if rir is None else \
            np.asarray(rir, np.float64).ravel()
        if not len(h) or not np.any(h):
            raise ValueError("echo room: the impulse response is empty or all zeros")
        self.rir = h * (10 ** (gain_db / 20) / np.sqrt(np.sum(h * h)))
        #: samples mixed in as silence because the monitor had not delivered them in time
        self.late_samples = 0
        #: times the sink-to-mic mapping jumped (the feeder fell far behind, the sink stalled)
        self.resyncs = 0
        #: chunks mixed, and the longest time one `take` took (ms)
        self.takes = 0
        self.max_take_ms = 0.0
        #: the feeder this room is mixed into (set by `PipeFeeder.set_echo`)
        self.feeder: PipeFeeder | None = None
        self._rec = recorder
        self._lock = threading.RLock()   # take() in the feeder, played_at() anywhere
        self._next: int | None = None        # monitor index of the next output sample
        self._tail = np.zeros(len(self.rir) - 1)
        self._spectra: dict[int, np.ndarray] = {}
        # the monitor's clock: sample i was played at i / rate + offset (offset: earliest
        # block arrival in the window), from the blocks of the last second on
        self._marks_from = max(0, recorder.total - rate)
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()
        self._update_clock()

    # -- the monitor's clock --------------------------------------------------------------

    def _update_clock(self) -> None:
        marks = self._rec.marks_since(self._marks_from)
        for rel_end, t in marks:
            self._offsets.append((t, t - (self._marks_from + rel_end) / self.rate))
        if marks:
            self._marks_from += marks[-1][0]
        if self._offsets:
            newest = self._offsets[-1][0]
            while newest - self._offsets[0][0] > self.CLOCK_WINDOW_S:
                self._offsets.popleft()

    def played_at(self, index: int) -> float:
        """Monotonic time the sink played monitor sample `index` (by the earliest arrivals)."""
        with self._lock:
            if not self._offsets:
                return self._rec.time_of(index)
            return index / self.rate + min(o for _, o in self._offsets)

    def index_at(self, t: float) -> int:
        """The monitor sample the sink played at monotonic time `t`."""
        return round((t - self.played_at(0)) * self.rate)

    # -- the echo -------------------------------------------------------------------------

    def take(self, n: int, t: float | None = None) -> np.ndarray:
        """The next `n` echo samples (float, int16 units) for a mic chunk that goes into the
        FIFO at monotonic time `t` (now if None): the pipe source hands it on at once, as a
        sound card hands on a block once it has captured it, so the chunk stands for the
        n / rate before `t`. Never waits: what the monitor has not delivered yet is silence
        (`late_samples`)."""
        t0 = time.monotonic()
        t = t0 if t is None else t
        with self._lock:
            self._update_clock()
            want = self.index_at(t - n / self.rate - self.delay_ms / 1000)
            if self._next is None or abs(want - self._next) > self.SNAP_MS * self.rate / 1000:
                if self._next is not None:
                    self.resyncs += 1
                self._next = want
            start = self._next
            self._next += n
            x = self._rec.since(start)[:n].astype(np.float64) if start >= 0 else \
                np.zeros(0)
            if len(x) < n:
                self.late_samples += n - len(x)
                x = np.concatenate((x, np.zeros(n - len(x))))
            out = self._convolve(x)
            self.takes += 1
            self.max_take_ms = max(self.max_take_ms, 1000 * (time.monotonic() - t0))
        return out

    def _convolve(self, x: np.ndarray) -> np.ndarray:
        n, m = len(x), len(self.rir)
        size = _fast_len(n + m - 1)
        spec = self._spectra.get(size)
        if spec is None:
            spec = self._spectra[size] = np.fft.rfft(self.rir, size)
        y = np.fft.irfft(np.fft.rfft(x, size) * spec, size)[:n + m - 1]
        tail = self._tail
        k = min(n, len(tail))
        y[:k] += tail[:k]
        rest = tail[k:]
        y[n:n + len(rest)] += rest
        self._tail = y[n:]
        return y[:n]

    # -- on and off -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop mixing this room into its feeder's mic."""
        feeder = self.feeder
        if feeder is not None and feeder.echo is self:
            feeder.set_echo(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
