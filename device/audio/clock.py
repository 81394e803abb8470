"""A stream's sample times on the monotonic clock, from the sample count (mic and speaker)."""

from __future__ import annotations


class SampleClock:
    """Times of a stream's samples from their count, anchored to noisy upper bounds.

    The microphone: a blocking read returns late now and then and several blocks at once after a
    hiccup, so the time a read returned is a noisy upper bound of when its last sample was
    captured. The sample count is exact: times advance by it, and the anchor follows the
    earliest read seen (a late read never moves it). Lost samples (reads late by the same amount
    for LOSS_S on end) move it forward; a stall does not: the reads after it come early, in a
    burst, and moving the anchor to the stalled read put frame times up to 0.2 s in the future
    (after a reader was starved under load), which the echo canceller's reference and the
    latency logs took at face value. Frame times always increase, one frame length apart while
    nothing is lost. (A reopened device gets a new clock.)

    The speaker the same way: "written now, into a buffer `latency` long" is an upper bound of
    when a block is heard, tight when the write filled the buffer. PulseAudio's ALSA plugin
    takes blocks in bursts, so taken block by block the estimate wandered over 10 to 40 ms from
    block to block (and the echo canceller's reference with it, which it cannot follow). Lost
    samples here are an underrun (the device played silence in between); a flushed stream gets a
    new clock.
    """

    GAP_S = 0.05        # reads this much later than the count predicts: late, or lost samples
    LOSS_S = 0.5        # ... for this long without an on-time read: samples were lost
    STEP_S = 0.005      # an earlier read moves the anchor back at most this much per block

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._origin: float | None = None
        self._samples = 0
        self._late_since: float | None = None
        self._late_min = 0.0

    def first_of(self, n: int, t_read: float) -> float:
        """Time of the first of `n` samples whose last was read at `t_read`."""
        self._samples += n
        seen = t_read - self._samples / self.rate
        if self._origin is None:
            self._origin = seen
        elif seen - self._origin > self.GAP_S:
            if self._late_since is None:
                self._late_since, self._late_min = t_read, seen
            else:
                self._late_min = min(self._late_min, seen)
                if t_read - self._late_since >= self.LOSS_S:
                    self._origin, self._late_since = self._late_min, None
        else:
            self._late_since = None
            if seen < self._origin:
                self._origin = max(seen, self._origin - self.STEP_S)
        return self._origin + (self._samples - n) / self.rate
