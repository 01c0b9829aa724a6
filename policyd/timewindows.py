"""Schedules in the topology's time zone, turned into UTC windows the kernel can match.

nftables' `meta hour` is compared in UTC by the kernel; the `nft` front end converts
the "HH:MM" it is given from the local time zone of the process that parses it. We
keep that conversion out of the kernel adapter's environment: the compiler converts
each schedule to UTC here, at the offset its zone has at compile time, and the adapter
runs libnftables with TZ=UTC so the strings are taken literally. An offset change (a
DST transition) is a `next_change` of the compiled ruleset: the daemon recompiles then.
`meta day` is also matched on the UTC day (the kernel subtracts its own `sys_tz`, which
is 0 on every system that does not set it; see docs/policyd.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from topology.model import DAY_NAMES, Schedule

DAY = 86400
WEEK = 7 * DAY


@dataclass(frozen=True, order=True)
class UtcWindow:
    """Open on these UTC weekdays (0 = Monday) from `start` to `end` seconds after 00:00.

    `end` is exclusive; a window that covers the whole day has start 0 and end 86400.
    """

    start: int
    end: int
    days: tuple[int, ...]

    @property
    def whole_day(self) -> bool:
        return self.start == 0 and self.end == DAY

    def hour_range(self) -> tuple[str, str]:
        """The inclusive `meta hour` range, to the second."""
        return seconds_to_hms(self.start), seconds_to_hms(self.end - 1)

    def day_names(self) -> list[str]:
        return [DAY_NAMES[d] for d in self.days]


def seconds_to_hms(secs: int) -> str:
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def utc_offset(tz: str, at: datetime) -> int:
    """Seconds east of UTC that zone `tz` has at instant `at`."""
    off = at.astimezone(ZoneInfo(tz)).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def utc_windows(schedule: Schedule, at: datetime) -> tuple[UtcWindow, ...]:
    """The schedule as UTC (day set, time range) windows, using the offset valid at `at`.

    An empty result means the schedule is never open; a single whole-week window is
    returned as one window with all seven days and the whole day.
    """
    offset = utc_offset(schedule.tz, at)
    start = schedule.start.hour * 3600 + schedule.start.minute * 60 + schedule.start.second
    end = schedule.end.hour * 3600 + schedule.end.minute * 60 + schedule.end.second
    if schedule.end == time.max:  # "24:00": the end of the day, not 23:59:59
        end = DAY
    length = end - start if start < end else DAY - start + end
    # Local seconds-of-week intervals, shifted to UTC and folded into [0, WEEK).
    spans: list[tuple[int, int]] = []
    for day in sorted(schedule.days):
        a = (day * DAY + start - offset) % WEEK
        b = a + length
        if b <= WEEK:
            spans.append((a, b))
        else:
            spans.append((a, WEEK))
            spans.append((0, b - WEEK))
    # Cut at UTC midnights and group identical daily ranges.
    by_range: dict[tuple[int, int], list[int]] = {}
    for a, b in _merge(spans):
        pos = a
        while pos < b:
            day, within = divmod(pos, DAY)
            stop = min(b, (day + 1) * DAY)
            by_range.setdefault((within, stop - day * DAY), []).append(day)
            pos = stop
    return tuple(sorted(UtcWindow(s, e, tuple(sorted(days))) for (s, e), days in by_range.items()))


def next_offset_change(
    tz: str, at: datetime, horizon: timedelta = timedelta(days=400)
) -> datetime | None:
    """The first instant after `at` where `tz`'s UTC offset changes (a DST switch), if any.

    Steps a day at a time, then bisects to the second: zoneinfo does not expose its
    transition table, and this runs once per compile per zone.
    """
    zone = ZoneInfo(tz)

    def off(ts: int) -> timedelta | None:
        return datetime.fromtimestamp(ts, zone).utcoffset()

    t0 = int(at.timestamp())
    base = off(t0)
    lo = t0
    while lo - t0 < horizon.total_seconds():
        hi = lo + DAY
        if off(hi) != base:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if off(mid) == base:
                    lo = mid
                else:
                    hi = mid
            return datetime.fromtimestamp(hi, at.tzinfo)
        lo = hi
    return None
