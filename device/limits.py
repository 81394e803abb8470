"""Parents' limits: quiet hours, a daily talk-time budget, a maximum conversation length, the
volume cap. Pure: the clock is injected, and the only I/O is the small budget file.

The budget file (`<state dir>/budget.json`) keeps today's use across restarts, so switching
the box off and on does not refill it; it is written atomically and resets at local midnight.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path

from device.config import Config, LimitsConfig
from device.fileio import atomic_write

log = logging.getLogger(__name__)

BUDGET_FILE = "budget.json"
Clock = Callable[[], dt.datetime]


def _local_now() -> dt.datetime:
    return dt.datetime.now().astimezone()


def _hhmm(text: str) -> dt.time:
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


def in_quiet_hours(now: dt.time, start: dt.time, end: dt.time) -> bool:
    """True if `now` is in [start, end); the range may cross midnight (start > end)."""
    if start <= end:
        return start <= now < end
    return now >= start or now < end


class Limits:
    """Whether the box may wake, and how much talking is left today."""

    def __init__(self, cfg: LimitsConfig, *, max_volume: float = 1.0,
                 state_dir: Path | None = None, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.volume_cap = max_volume
        self._clock = clock or _local_now
        self._path = state_dir / BUDGET_FILE if state_dir is not None else None
        self._quiet = ((_hhmm(cfg.quiet_hours_start), _hhmm(cfg.quiet_hours_end))
                       if cfg.quiet_hours_start else None)
        self._day, self._used_s = self._load()

    @classmethod
    def from_config(cls, cfg: Config, state_dir: Path | None = None,
                    clock: Clock | None = None) -> Limits:
        return cls(cfg.limits, max_volume=cfg.audio.max_volume, state_dir=state_dir, clock=clock)

    # --- questions -------------------------------------------------------------------------

    def can_wake(self, now: dt.datetime | None = None) -> tuple[bool, str]:
        """(True, "") or (False, reason): reason is "quiet_hours" or "budget"."""
        now = now or self._clock()
        if self.quiet_now(now):
            return False, "quiet_hours"
        left = self.budget_left(now)
        if left is not None and left <= 0:
            return False, "budget"
        return True, ""

    def quiet_now(self, now: dt.datetime | None = None) -> bool:
        if self._quiet is None:
            return False
        now = now or self._clock()
        return in_quiet_hours(now.time().replace(second=0, microsecond=0), *self._quiet)

    def budget_left(self, now: dt.datetime | None = None) -> float | None:
        """Seconds of talk left today; None without a budget."""
        if not self.cfg.daily_budget_minutes:
            return None
        self._roll(now or self._clock())
        return max(0.0, self.cfg.daily_budget_minutes * 60 - self._used_s)

    def used_today(self, now: dt.datetime | None = None) -> float:
        self._roll(now or self._clock())
        return self._used_s

    @property
    def max_conversation_s(self) -> float | None:
        """How long one conversation may last; None for no limit."""
        minutes = self.cfg.max_conversation_minutes
        return minutes * 60.0 if minutes else None

    def conversation_over(self, started_s: float, now_s: float) -> bool:
        """True once a conversation begun at monotonic `started_s` has run too long."""
        limit = self.max_conversation_s
        return limit is not None and now_s - started_s >= limit

    def conversation_time_left(self, started_s: float, now_s: float,
                               now: dt.datetime | None = None) -> float | None:
        """Seconds this conversation may still run: the lesser of its length and the budget."""
        left: list[float] = []
        if self.max_conversation_s is not None:
            left.append(self.max_conversation_s - (now_s - started_s))
        budget = self.budget_left(now)
        if budget is not None:
            left.append(budget)
        return max(0.0, min(left)) if left else None

    def clamp_volume(self, level: float) -> float:
        return max(0.0, min(self.volume_cap, level))

    # --- bookkeeping -----------------------------------------------------------------------

    def record_talk(self, seconds: float, now: dt.datetime | None = None) -> None:
        """Count `seconds` of talk (per `limits.budget_counts`) against today's budget."""
        if seconds <= 0:
            return
        self._roll(now or self._clock())
        self._used_s += seconds
        self._save()

    def _roll(self, now: dt.datetime) -> None:
        day = now.date().isoformat()
        if day != self._day:
            self._day, self._used_s = day, 0.0
            self._save()

    def _load(self) -> tuple[str, float]:
        today = self._clock().date().isoformat()
        if self._path is None or not self._path.exists():
            return today, 0.0
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            day, used = str(data["day"]), float(data["used_s"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            # A broken file must not keep the box from starting; today starts over.
            log.warning("budget file %s unreadable (%s); counting today from zero",
                        self._path, e.__class__.__name__)
            return today, 0.0
        return (day, max(0.0, used)) if day == today else (today, 0.0)

    def _save(self) -> None:
        if self._path is None:
            return
        try:
            atomic_write(self._path, json.dumps({"day": self._day, "used_s": round(self._used_s, 1)}),
                         mode=0o600)
        except OSError as e:
            log.warning("cannot save the talk-time budget to %s (%s)", self._path, e.strerror)
