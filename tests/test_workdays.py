"""Working days of the official calendar (node.workdays), checked against `chinese-calendar` itself."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import chinese_calendar
import pytest

from node.workdays import (CST, add_working_days, cst_date, cst_iso, end_of_day_ms, is_official_workday,
                           working_days_between)


def oracle(start: date, n: int) -> date:
    """The n-th working day after `start` by chinese-calendar's own search (0 = the next working day on or
    after the given day)."""
    return chinese_calendar.find_workday(n - 1, start + timedelta(days=1))


def test_national_day_2026():
    # SPEC §11's example: submitted on Tuesday 2026-09-29, reviewed by the 3rd working day after it.
    # 09-30 is worked, 10-01..10-07 are the holiday, 10-08 and 10-09 are worked.
    d = add_working_days(date(2026, 9, 29), 3)
    assert d.due == date(2026, 10, 9) == oracle(date(2026, 9, 29), 3)
    assert d.guessed_years == [] and d.note() is None
    # The decision 10 working days after a review that day: Saturday 10-10 is an adjusted working day.
    assert chinese_calendar.is_workday(date(2026, 10, 10))
    assert add_working_days(date(2026, 9, 29), 10).due == date(2026, 10, 19) == oracle(date(2026, 9, 29), 10)
    # Mid-Autumn (Friday 2026-09-25) is a holiday, Sunday 09-20 an adjusted working day.
    assert add_working_days(date(2026, 9, 24), 1).due == date(2026, 9, 28)
    assert add_working_days(date(2026, 9, 19), 1).due == date(2026, 9, 20)


def test_spring_festival_2026():
    # Holiday 02-15..02-23; Saturday 02-14 and Saturday 02-28 are adjusted working days.
    assert add_working_days(date(2026, 2, 12), 3).due == date(2026, 2, 24) == oracle(date(2026, 2, 12), 3)
    assert add_working_days(date(2026, 2, 13), 3).due == date(2026, 2, 25) == oracle(date(2026, 2, 13), 3)
    assert add_working_days(date(2026, 2, 14), 1).due == date(2026, 2, 24)
    assert add_working_days(date(2026, 2, 16), 10).due == oracle(date(2026, 2, 16), 10) == date(2026, 3, 6)
    assert add_working_days(date(2026, 2, 27), 1).due == date(2026, 2, 28)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_every_day_of_the_known_years_agrees_with_the_package(n):
    day = date(2025, 1, 1)
    while day.year < 2026 or day < date(2026, 12, 1):
        assert add_working_days(day, n).due == oracle(day, n), (day, n)
        day += timedelta(days=1)


def test_unknown_years_fall_back_to_monday_to_friday_and_say_so():
    assert is_official_workday(date(2027, 1, 1)) is None
    assert is_official_workday(date(2026, 12, 31)) is True
    with pytest.raises(NotImplementedError):
        chinese_calendar.is_workday(date(2027, 1, 4))
    # 2026-12-30 (Wed): 12-31 (known, worked), then 2027 by weekdays: 01-01 (Fri), 01-04 (Mon).
    d = add_working_days(date(2026, 12, 30), 3)
    assert d.due == date(2027, 1, 4) and d.guessed_years == [2027]
    assert "2027" in d.note() and "Monday to Friday" in d.note()
    d = add_working_days(date(2027, 3, 5), 10)
    assert d.due == date(2027, 3, 19) and d.guessed_years == [2027]
    # A deadline inside known years guesses nothing, even when asked late in the last known year.
    assert add_working_days(date(2026, 12, 1), 3).guessed_years == []


def test_days_between_and_time_helpers():
    assert working_days_between(date(2026, 9, 29), date(2026, 10, 9)) == 3
    assert working_days_between(date(2026, 10, 9), date(2026, 9, 29)) == 0
    ms = int(datetime(2026, 9, 29, 23, 30, tzinfo=CST).timestamp() * 1000)
    assert cst_date(ms) == date(2026, 9, 29)
    assert cst_date(ms + 3_600_000) == date(2026, 9, 30)  # midnight in Beijing, 16:30 UTC
    assert cst_iso(ms) == "2026-09-29T23:30:00+08:00"
    end = end_of_day_ms(date(2026, 9, 29))
    assert cst_date(end) == date(2026, 9, 29) and cst_date(end + 1) == date(2026, 9, 30)
    with pytest.raises(ValueError):
        add_working_days(date(2026, 1, 1), 0)
