"""Working days of China's official calendar (工作日), for the deadlines of SPEC §8 and §11.

The official calendar is the State Council's yearly notice of statutory holidays and the weekends
worked in exchange (调休), as packaged by `chinese-calendar` (import name `chinese_calendar`). The
package knows the years whose notice it has (it raises NotImplementedError for the others); for those
years this module falls back to Monday to Friday and says which years it guessed, so that the caller
can record it (an application's history does).

Dates are calendar dates in China Standard Time (UTC+8, no daylight saving).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import chinese_calendar

CST = timezone(timedelta(hours=8), "CST")


def cst_date(ms: int) -> date:
    """The calendar date in China Standard Time of an epoch-milliseconds instant."""
    return datetime.fromtimestamp(ms / 1000, CST).date()


def cst_iso(ms: int) -> str:
    """An instant as ISO 8601 in China Standard Time, to the second: 2026-09-29T10:00:00+08:00."""
    return datetime.fromtimestamp(ms / 1000, CST).isoformat(timespec="seconds")


def iso_ms(iso: str | None) -> int | None:
    """The inverse of `cst_iso` (any ISO 8601 instant with an offset) in epoch milliseconds; None stays None."""
    return None if iso is None else int(datetime.fromisoformat(iso).timestamp() * 1000)


def end_of_day_ms(d: date) -> int:
    """The last millisecond of a China Standard Time calendar date."""
    start = datetime(d.year, d.month, d.day, tzinfo=CST) + timedelta(days=1)
    return int(start.timestamp() * 1000) - 1


def start_of_day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=CST).timestamp() * 1000)


def is_official_workday(d: date) -> bool | None:
    """Whether `d` is a working day by the official calendar; None when the calendar of its year is unknown."""
    try:
        return bool(chinese_calendar.is_workday(d))
    except NotImplementedError:
        return None


@dataclass
class Deadline:
    """A due date and the years for which the official calendar was not known (Monday to Friday was used)."""

    due: date
    guessed_years: list[int] = field(default_factory=list)

    def note(self) -> str | None:
        """The sentence an application's history records when the due date rests on a guess."""
        if not self.guessed_years:
            return None
        years = ", ".join(str(y) for y in self.guessed_years)
        return (f"the official calendar of {years} is not known to this node (chinese-calendar "
                f"{getattr(chinese_calendar, '__version__', '?')}): working days counted Monday to Friday; "
                f"due {self.due.isoformat()} may move once the State Council's holiday notice is installed")


def add_working_days(start: date, n: int) -> Deadline:
    """The `n`-th working day after `start` (`start` itself never counts, whatever it is)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    d = start
    counted = 0
    guessed: set[int] = set()
    while counted < n:
        d += timedelta(days=1)
        official = is_official_workday(d)
        if official is None:
            guessed.add(d.year)
            official = d.weekday() < 5
        if official:
            counted += 1
    return Deadline(d, sorted(guessed))


def working_days_between(start: date, end: date) -> int:
    """Working days after `start` up to and including `end` (0 when `end` is not after `start`)."""
    n = 0
    d = start
    while d < end:
        d += timedelta(days=1)
        official = is_official_workday(d)
        if official if official is not None else d.weekday() < 5:
            n += 1
    return n
