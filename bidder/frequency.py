"""Frequency caps: how often one (hashed) user saw a campaign this hour and today.

Keys are salted user hashes, never raw ids.  Counts move on billing notices,
not on bids, so an impression that never served never counts.  The store is
bounded: when full, the users seen longest ago are forgotten (which can only
let a user see an ad again, never block one wrongly).

Hours and days are the campaign's own, in its time zone, as its marketer reads
a cap of "6 a day": a Tokyo campaign's day starts at midnight in Tokyo, and an
hour in India starts at half past a UTC hour.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from zoneinfo import ZoneInfo

UNCAPPED = 1 << 30  # `room` for a campaign without a cap
# Every UTC offset in use is a whole number of quarter hours and changes at a local whole or half hour: local hours
# and days begin at UTC quarter hours, so every zone's buckets hold through each UTC quarter hour.
CLOCK_SLOT_S = 900
# How far back a restarted bidder reads billed impressions: the start of the current day in every time zone.  A day
# is 25 hours long when the clocks go back.
LONGEST_DAY_S = 25 * 3600


class CapClock(dict[str, tuple[int, int]]):
    """Time zone -> its (hour, day) buckets, as absolute numbers, through one UTC quarter hour; a zone is looked up
    the first time it is asked for.  On the night the clocks go back, the repeated hour is one bucket."""

    def __init__(self, slot: int) -> None:
        super().__init__()
        self.slot = slot

    def __missing__(self, timezone: str) -> tuple[int, int]:
        start = self.slot * CLOCK_SLOT_S
        local = start + int(dt.datetime.fromtimestamp(start, ZoneInfo(timezone)).utcoffset().total_seconds())  # type: ignore[union-attr]
        buckets = self[timezone] = (local // 3600, local // 86400)
        return buckets


_clock = CapClock(-1)


def cap_clock(now: float) -> CapClock:
    """The buckets of every zone at `now`: one table per quarter hour, shared by every request in it."""
    global _clock
    slot = int(now // CLOCK_SLOT_S)
    if _clock.slot != slot:
        _clock = CapClock(slot)
    return _clock


def cap_buckets(timezone: str, now: float) -> tuple[int, int]:
    """The (hour, day) buckets an impression at `now` counts in for a campaign in `timezone`: its local clock's."""
    return cap_clock(now)[timezone]


def counted_since(now: float) -> float:
    """The earliest instant an impression counting toward a cap today can have been billed, in any time zone."""
    return now - LONGEST_DAY_S


class FrequencyStore:
    """In-memory counts per (user, campaign) for the current hour and day buckets."""

    def __init__(self, max_users: int = 1_000_000) -> None:
        self._users: OrderedDict[str, dict[str, list[int]]] = OrderedDict()
        self._max = max_users

    def allowed(self, user: str, campaign: str, per_hour: int, per_day: int, hour: int, day: int) -> bool:
        """True when one more impression keeps the user within both caps (0 means no cap)."""
        seen = self._users.get(user)
        if seen is None:
            return True
        c = seen.get(campaign)
        if c is None:
            return True
        h_count = c[1] if c[0] == hour else 0
        d_count = c[3] if c[2] == day else 0
        return (not per_hour or h_count < per_hour) and (not per_day or d_count < per_day)

    def exhausted(self, user: str, caps: dict[str, tuple[int, int, str]], clock: CapClock) -> list[str]:
        """Campaigns in `caps` ({campaign: (per_hour, per_day, time zone)}) that may not show the user one more
        impression now (`clock`: `cap_clock(now)`).

        Looks only at the campaigns the user has seen, so it costs nothing for the many users seen by none.
        """
        seen = self._users.get(user)
        if not seen:
            return []
        self._users.move_to_end(user)  # still about: the last to be forgotten when the store is full
        out = []
        for campaign, c in seen.items():
            cap = caps.get(campaign)
            if cap is None:
                continue
            per_hour, per_day, timezone = cap
            hour, day = clock[timezone]
            h_count = c[1] if c[0] == hour else 0
            d_count = c[3] if c[2] == day else 0
            if (per_hour and h_count >= per_hour) or (per_day and d_count >= per_day):
                out.append(campaign)
        return out

    def room(self, user: str, campaign: str, per_hour: int, per_day: int, hour: int, day: int) -> int:
        """How many more impressions the caps let the user see now (a large number when uncapped)."""
        c = self._users.get(user, {}).get(campaign)
        h_count = c[1] if c is not None and c[0] == hour else 0
        d_count = c[3] if c is not None and c[2] == day else 0
        return min(per_hour - h_count if per_hour else UNCAPPED, per_day - d_count if per_day else UNCAPPED)

    def record(self, user: str, campaign: str, hour: int, day: int) -> None:
        """Count one served impression; `hour` and `day` are absolute bucket numbers.

        Only the current buckets are kept: an impression of an earlier hour or day (a late billing event) is not
        counted, and must not reset the newer bucket's count either.
        """
        seen = self._users.get(user)
        if seen is None:
            seen = self._users[user] = {}
            if len(self._users) > self._max:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user)
        c = seen.get(campaign)
        if c is None:
            seen[campaign] = [hour, 1, day, 1]
            return
        if hour >= c[0]:
            c[1] = c[1] + 1 if c[0] == hour else 1
            c[0] = hour
        if day >= c[2]:
            c[3] = c[3] + 1 if c[2] == day else 1
            c[2] = day

    def __len__(self) -> int:
        return len(self._users)
