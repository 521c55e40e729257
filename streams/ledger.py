"""The spend ledger: delivery and money per campaign per day, each event counted once.

State lives in two mappings supplied by the adapter (Faust tables backed by a
changelog on Kafka, plain dicts on the embedded bus): `totals` keyed by
"campaign|day" and `seen` keyed by event id.  Integer micros only.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

FIELDS = ("spend", "billed", "impressions", "clicks", "conversions", "value", "wins", "losses")


def empty_totals() -> dict[str, int]:
    return dict.fromkeys(FIELDS, 0)


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

    def apply(self, kind: str, event: dict[str, Any], position: tuple[str, int] | None = None) -> bool:
        """Count `event` once; False when it was already counted.

        `position` (source "topic:partition", offset) makes recovery after a crash exact.  The totals entry
        records the last offset it absorbed from each source partition in the same write as the sums, so a
        message re-read after a restart is recognised even if its id never reached the `seen` table.  The
        `seen` entry records where the id was counted: meeting that same message again means its totals
        write was lost (so it is counted now), while the same id at another offset is a true duplicate.
        """
        eid = event["id"]
        campaign = event["campaign"]
        day = event.get("day") or self._day_of(campaign, event["ts"])
        key = f"{campaign}|{day}"
        current = self.totals.get(key)
        wm = (current.get("wm") or {}) if current is not None else {}
        if position is not None and wm.get(position[0], -1) >= position[1]:
            if eid not in self.seen:
                self.seen[eid] = [event["ts"], position[0], position[1]]
            return False
        prev = self.seen.get(eid)
        if prev is not None and (position is None or prev[1] != position[0] or prev[2] != position[1]):
            return False
        t = dict(current) if current is not None else empty_totals()
        if kind == "billing":
            t["spend"] += event["cost"]
            t["billed"] += 1
        elif kind == "impressions":
            t["impressions"] += 1
        elif kind == "clicks":
            t["clicks"] += 1
            t["value"] += self._click_value(campaign)
        elif kind == "conversions":
            t["conversions"] += 1
            t["value"] += event["value"]
        elif kind == "wins":
            t["wins"] += 1
        elif kind == "losses":
            t["losses"] += 1
        else:
            return False
        if position is not None:
            t["wm"] = {**wm, position[0]: position[1]}
        self.totals[key] = t
        if prev is None:
            self.seen[eid] = [event["ts"], position[0], position[1]] if position is not None else [event["ts"], "", -1]
        return True

    def forget_before(self, ts_ms: int) -> int:
        """Drop remembered event ids older than `ts_ms` (the dedup horizon); returns how many."""
        old = [eid for eid, rec in self.seen.items() if rec[0] < ts_ms]
        for eid in old:
            del self.seen[eid]
        return len(old)

    def day_totals(self, campaign: str, day: str) -> dict[str, int]:
        return dict(self.totals.get(f"{campaign}|{day}") or empty_totals())

    def spend_before(self, days: dict[str, str]) -> dict[str, int]:
        """Per campaign of `days`, what it spent on the days before its given day (one pass over the totals)."""
        out = dict.fromkeys(days, 0)
        for key, t in list(self.totals.items()):
            campaign, _, day = key.partition("|")
            today = days.get(campaign)
            if today is not None and day < today:  # ISO dates order as text
                out[campaign] += t.get("spend", 0)
        return out

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
