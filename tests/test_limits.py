"""Parents' limits: quiet hours across midnight, the daily budget on disk, conversation length."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from device.config import Config, ConfigError, LimitsConfig, loads
from device.limits import BUDGET_FILE, Limits

TZ = dt.timezone(dt.timedelta(hours=1))


def at(day: int, hh: int, mm: int) -> dt.datetime:
    return dt.datetime(2026, 11, day, hh, mm, tzinfo=TZ)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def limits(tmp_path=None, clock=None, **keys) -> Limits:
    cfg = Config().replace(limits=keys, audio={"max_volume": 0.6})
    return Limits.from_config(cfg, state_dir=tmp_path, clock=clock or Clock(at(22, 12, 0)))


def test_quiet_hours_across_midnight():
    lim = limits(quiet_hours_start="19:30", quiet_hours_end="07:00")
    awake = [at(22, 7, 0), at(22, 12, 0), at(22, 19, 29)]
    asleep = [at(22, 19, 30), at(22, 23, 59), at(23, 0, 0), at(23, 3, 15), at(23, 6, 59)]
    assert [lim.can_wake(t) for t in awake] == [(True, "")] * 3
    assert [lim.can_wake(t) for t in asleep] == [(False, "quiet_hours")] * 5


def test_quiet_hours_within_a_day():
    lim = limits(quiet_hours_start="13:00", quiet_hours_end="15:00")   # a nap
    assert lim.can_wake(at(22, 12, 59)) == (True, "")
    assert lim.can_wake(at(22, 14, 0)) == (False, "quiet_hours")
    assert lim.can_wake(at(22, 15, 0)) == (True, "")


def test_no_quiet_hours_and_no_budget_by_default():
    lim = limits()
    assert lim.can_wake(at(22, 3, 0)) == (True, "")
    assert lim.budget_left() is None
    assert lim.max_conversation_s == 15 * 60


@pytest.mark.parametrize("keys, message", [
    ('quiet_hours_start = "7:00"\nquiet_hours_end = "19:00"', 'write a 24-hour local time as "HH:MM"'),
    ('quiet_hours_start = "24:00"\nquiet_hours_end = "07:00"', "'limits.quiet_hours_start' is '24:00'"),
    ('quiet_hours_start = "19:30"', "go together; set both"),
    ('quiet_hours_start = "19:30"\nquiet_hours_end = "19:30"', "give the quiet hours a length"),
])
def test_bad_quiet_hours_are_clear_config_errors(keys, message):
    with pytest.raises(ConfigError, match=message) as e:
        loads(f"[limits]\n{keys}\n", source="c.toml")
    assert str(e.value).startswith("c.toml: ")


def test_budget_runs_out_and_resets_at_local_midnight(tmp_path):
    clock = Clock(at(22, 17, 0))
    lim = limits(tmp_path, clock, daily_budget_minutes=10)
    assert lim.budget_left() == 600
    lim.record_talk(400)
    assert lim.budget_left() == 200 and lim.can_wake() == (True, "")
    lim.record_talk(300)
    assert lim.budget_left() == 0 and lim.can_wake() == (False, "budget")
    clock.now = at(22, 23, 59)
    assert lim.can_wake() == (False, "budget")
    clock.now = at(23, 0, 0)
    assert lim.budget_left() == 600 and lim.can_wake() == (True, "")


def test_budget_survives_a_restart(tmp_path):
    clock = Clock(at(22, 9, 0))
    limits(tmp_path, clock, daily_budget_minutes=30).record_talk(125.5)
    saved = json.loads((tmp_path / BUDGET_FILE).read_text())
    assert saved == {"day": "2026-11-22", "used_s": 125.5}
    assert (tmp_path / BUDGET_FILE).stat().st_mode & 0o777 == 0o600
    again = limits(tmp_path, clock, daily_budget_minutes=30)
    assert again.budget_left() == 30 * 60 - 125.5
    clock.now = at(23, 8, 0)   # switched on the next morning: a fresh day
    assert limits(tmp_path, clock, daily_budget_minutes=30).budget_left() == 1800


def test_broken_budget_file_does_not_stop_the_box(tmp_path, caplog):
    (tmp_path / BUDGET_FILE).write_text("{not json")
    lim = limits(tmp_path, daily_budget_minutes=5)
    assert lim.budget_left() == 300 and "unreadable" in caplog.text
    lim.record_talk(10)
    assert json.loads((tmp_path / BUDGET_FILE).read_text())["used_s"] == 10


def test_quiet_hours_win_over_budget():
    lim = limits(daily_budget_minutes=1, quiet_hours_start="20:00", quiet_hours_end="06:00")
    lim.record_talk(120, at(22, 21, 0))
    assert lim.can_wake(at(22, 21, 0)) == (False, "quiet_hours")


def test_max_conversation_length_and_time_left():
    lim = limits(max_conversation_minutes=10, daily_budget_minutes=30)
    assert not lim.conversation_over(1000.0, 1000.0 + 599)
    assert lim.conversation_over(1000.0, 1000.0 + 600)
    assert lim.conversation_time_left(1000.0, 1100.0) == 500
    lim.record_talk(29 * 60)
    assert lim.conversation_time_left(1000.0, 1100.0) == 60, "the budget is the tighter limit"
    assert limits(max_conversation_minutes=0).conversation_time_left(0, 99999) is None


def test_volume_cap():
    lim = limits()
    assert lim.volume_cap == 0.6
    assert [lim.clamp_volume(v) for v in (-1, 0.3, 0.9)] == [0.0, 0.3, 0.6]


def test_limits_config_defaults_are_valid():
    assert LimitsConfig() == Config().limits
