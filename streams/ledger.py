"""The spend ledger: delivery and money per campaign per day, each event counted once.

State lives in two mappings supplied by the adapter (Faust tables backed by a
changelog on Kafka, plain dicts on the embedded bus): `totals` keyed by
"campaign|day" and `seen` keyed by event id (its time, where it was read and the
day it was counted on).  Integer micros only.

Besides the delivery fields, each totals entry counts the post-click conversions (`POST_CLICK`): conversions that
attribution matched to a bid with a click, the numerator of P(conversion | click) that CPA campaigns are priced
with.  `conversions` counts every conversion event, attributed or not, as its value counts in the ROI.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from streams.events import EventError

DAY_MS = 86_400_000
EPOCH = dt.date(1970, 1, 1)
FIELDS = ("spend", "billed", "impressions", "clicks", "conversions", "value", "wins", "losses")
POST_CLICK = "post_click_conversions"
# A campaign-day's spend or conversion value, in micros: 9 billion currency units, and still exact where it becomes
# a float (Prometheus, the pacer's rates).  One event moves at most 10**15; a producer at the wrong scale stops here.
MAX_DAY_TOTAL_MICROS = 2**53
_MONEY_TOTALS = {"billing": ("cost", "spend"), "conversions": ("value", "value")}  # kind: (event field, total)


def empty_totals() -> dict[str, int]:
    return dict.fromkeys(FIELDS, 0)


def own_day(kind: str, event: dict[str, Any]) -> str | None:
    """The day an event names that the ledger counts it on: a bill's `day`; None for the others, which count on
    their campaign's local date at their `ts`.

    A bill carries the day its bidder settled it against (the day of the budget lease it spent), checked on the
    way in (`streams.events`).  No other event needs a day of its own: its time and its campaign's time zone fix
    the day the pacer reads, so a `day` on it is ignored, neither trusted nor refused.  Trusted, a wrong day (even
    a plausible one, a day off) would file the event where no pacer looks; refused, a real click or conversion
    would lose its value.  Either way a total would stop being exact.
    """
    return event.get("day") if kind == "billing" else None


def newest_seen(records: Iterable[Any]) -> int:
    """The latest event time (ms) among `seen` entries, 0 if none: where a restarted worker's dedup horizon
    resumes, so a copy of an event whose id was already forgotten is not taken for a new one."""
    return max((r[0] for r in records if isinstance(r, list) and r and type(r[0]) is int), default=0)


@functools.lru_cache(maxsize=64)
def _days_near(utc_day: int) -> tuple[str, str, str]:
    """The ISO dates a day either side of UTC day number `utc_day`: every local date of a moment in that day."""
    d, one = EPOCH + dt.timedelta(days=utc_day), dt.timedelta(days=1)
    return (d - one).isoformat(), d.isoformat(), (d + one).isoformat()


class SpendLedger:
    """Applies billing, win, loss, impression, click and conversion events to per-day totals."""

    def __init__(
        self,
        totals: MutableMapping[str, Any],
        seen: MutableMapping[str, Any],
        day_of: Callable[[str, int], str],
        click_value: Callable[[str], int],
    ) -> None:
        self.totals = totals
        self.seen = seen
        self._day_of = day_of
        self._click_value = click_value

    def apply(self, kind: str, event: dict[str, Any], position: tuple[str, int] | None = None,
              post_click: int = 0) -> bool:
        """Count `event` once; False when it was already counted.

        `post_click`: the post-click conversions this event makes known (a conversion whose bid had a click, or
        a click whose bid's conversions were read before it), counted in the same write as the event itself.

        `position` (source "topic:partition", offset) makes recovery after a crash exact.  The totals entry
        records the last offset it absorbed from each source partition in the same write as the sums, so a
        message re-read after a restart is recognised even if its id never reached the `seen` table.  The
        `seen` entry records where the id was counted and on which day: meeting that same message again means
        its totals write was lost (so it is counted now, on that day), while the same id at another offset is
        a true duplicate.  The day is remembered because it can move: a non-billing event's day follows its
        campaign's time zone, which may have changed since it was counted.
        """
        eid = event["id"]
        prev = self.seen.get(eid)
        if prev is not None and (position is None or prev[1] != position[0] or prev[2] != position[1]):
            return False  # the same fact at another offset: re-sent by its producer
        counted_on = prev[3] if prev is not None and len(prev) > 3 else None  # None: an entry of an older worker
        own = own_day(kind, event)
        day = counted_on or own or self._day_of(event["campaign"], event["ts"])
        key = f"{event['campaign']}|{day}"
        current = self.totals.get(key)
        wm = (current.get("wm") or {}) if current is not None else {}
        if position is not None:
            absorbed = day if wm.get(position[0], -1) >= position[1] else None
            if absorbed is None and counted_on is None and not own:
                absorbed = self._absorbed_near(event, day, position)
            if absorbed is not None:
                if prev is None:
                    self.seen[eid] = [event["ts"], position[0], position[1], absorbed]
                return False
        t: dict[str, Any] = dict(current) if current is not None else empty_totals()
        if not self._add(kind, event, t):
            return False
        if post_click:
            t[POST_CLICK] = t.get(POST_CLICK, 0) + post_click
        if position is not None:
            t["wm"] = {**wm, position[0]: position[1]}
        self.totals[key] = t
        if counted_on is None:
            source, offset = position if position is not None else ("", -1)
            self.seen[eid] = [event["ts"], source, offset, day]
        return True

    def check_room(self, kind: str, event: dict[str, Any]) -> None:
        """Refuse (EventError, for the dead-letter topic) a bill or conversion that would carry its campaign-day's
        total past MAX_DAY_TOTAL_MICROS; called before anything of the event is applied."""
        money = _MONEY_TOTALS.get(kind)
        if money is None:
            return
        field, total = money
        day = own_day(kind, event) or self._day_of(event["campaign"], event["ts"])
        t = self.totals.get(f"{event['campaign']}|{day}")
        if (t.get(total, 0) if t is not None else 0) + event[field] > MAX_DAY_TOTAL_MICROS:
            raise EventError("bad_value", f"{field} would carry the day's {total} past {MAX_DAY_TOTAL_MICROS} micros",
                             field)

    def _add(self, kind: str, event: dict[str, Any], t: dict[str, int]) -> bool:
        """Add one event of `kind` to the totals `t`; False for a kind the ledger does not count."""
        if kind == "billing":
            t["spend"] += event["cost"]
            t["billed"] += 1
        elif kind == "impressions":
            t["impressions"] += 1
        elif kind == "clicks":
            t["clicks"] += 1
            t["value"] += self._click_value(event["campaign"])
        elif kind == "conversions":
            t["conversions"] += 1
            t["value"] += event["value"]
        elif kind == "wins":
            t["wins"] += 1
        elif kind == "losses":
            t["losses"] += 1
        else:
            return False
        return True

    def _absorbed_near(self, event: dict[str, Any], day: str, position: tuple[str, int]) -> str | None:
        """Another day of the event's campaign whose totals already absorbed `position`, or None.

        For a message whose `seen` entry a crash lost while its totals write was kept, and whose campaign's
        time zone changed meanwhile: its day now resolves to another date than the one it was counted on.
        Both lie within a day of its UTC date (every local date does), and a partition's totals reach the
        changelog in the order they were written, so an offset any of those days absorbed was counted.
        """
        source, offset = position
        campaign = event["campaign"]
        for other in _days_near(event["ts"] // DAY_MS):
            if other != day:
                t = self.totals.get(f"{campaign}|{other}")
                if t is not None and (t.get("wm") or {}).get(source, -1) >= offset:
                    return other
        return None

    def forget_before(self, ts_ms: int) -> int:
        """Drop remembered event ids older than `ts_ms` (the dedup horizon); returns how many."""
        old = [eid for eid, rec in self.seen.items() if rec[0] < ts_ms]
        for eid in old:
            del self.seen[eid]
        return len(old)

    def day_totals(self, campaign: str, day: str) -> dict[str, int]:
        """The day's totals, with the post-click conversions (0 in an entry written before they were counted)."""
        return {POST_CLICK: 0, **(self.totals.get(f"{campaign}|{day}") or empty_totals())}

    def spend_before(self, days: dict[str, str]) -> dict[str, int]:
        """Per campaign of `days`, what it spent on the days before its given day (one pass over the totals)."""
        out = dict.fromkeys(days, 0)
        for key, t in list(self.totals.items()):
            campaign, _, day = key.partition("|")
            today = days.get(campaign)
            if today is not None and day < today:  # ISO dates order as text
                out[campaign] += t.get("spend", 0)
        return out

    def clicks_before(self, campaign: str, day: str) -> tuple[int, int]:
        """`campaign`'s clicks and post-click conversions on the days before `day` (what a conversion rate that
        starts now, after a restart or a partition move, has not seen)."""
        clicks = conversions = 0
        prefix = f"{campaign}|"
        for key, t in list(self.totals.items()):
            if key.startswith(prefix) and key[len(prefix):] < day:  # ISO dates order as text
                clicks += t.get("clicks", 0)
                conversions += t.get(POST_CLICK, 0)
        return clicks, conversions

    def campaign_totals(self, campaign: str) -> dict[str, int]:
        """All days summed (the adapter's local partitions only, on Kafka)."""
        out = empty_totals()
        prefix = f"{campaign}|"
        for key, t in list(self.totals.items()):
            if key.startswith(prefix):
                for f in FIELDS:
                    out[f] += t.get(f, 0)
        return out


def roi(value: int, spend: int) -> float:
    """(value - spend) / spend; 0 when nothing was spent."""
    return (value - spend) / spend if spend else 0.0
