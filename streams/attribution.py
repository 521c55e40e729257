"""Attribution with delayed feedback: when does an impression become a training example?

A bid is remembered by its id with the features it was scored on.  Once it
served (impression), a click inside the window makes it a positive example at
once; the window closing without a click makes it a negative one.  Each bid
yields at most one example: after that it leaves a tombstone, so a late click
is counted as late and never flips a negative into a positive.  Topics
interleave freely, so an impression or click may arrive before its bid: it is
held as *early* and matched when the bid comes, or counted an orphan.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

CLICK_WINDOW_MS = 30 * 60 * 1000
CONVERSION_WINDOW_MS = 7 * 24 * 3600 * 1000
UNSERVED_TTL_MS = 10 * 60 * 1000  # a bid with no impression by then was lost or never rendered ...
MAX_RENDER_MS = 4 * 3600 * 1000  # ... unless the exchange stated a later one (imp.exp, the bid event's `exp`)


@dataclass(frozen=True, slots=True)
class Example:
    campaign: str
    creative: str
    features: list[int]
    label: int
    bid_id: str

    def to_event(self, ts_ms: int) -> dict[str, Any]:
        from streams.events import make_event

        return make_event("examples", f"ex:{self.bid_id}", ts_ms, campaign=self.campaign, creative=self.creative,
                          features=self.features, label=self.label)


def _render_ms(bid: dict[str, Any]) -> int:
    """How long (ms) after the bid its impression may still come, as its exchange stated, at most MAX_RENDER_MS;
    0 when that is no longer than UNSERVED_TTL_MS."""
    exp = bid.get("exp")
    return min(exp * 1000, MAX_RENDER_MS) if type(exp) is int and exp * 1000 > UNSERVED_TTL_MS else 0


# Marks on a bid's entry: the ids of its conversions read before any click of it, and the click that booked them as
# post-click (once, by that click's id, so a replayed click books them again only if it counts again)
HELD_CONVERSIONS, HELD_BOOKED_BY = "cv", "cvk"


class Attribution:
    """Joins bids, impressions, clicks and conversions by bid id; state in a mapping the adapter owns."""

    def __init__(self, pending: MutableMapping[str, Any], click_window_ms: int = CLICK_WINDOW_MS,
                 conversion_window_ms: int = CONVERSION_WINDOW_MS) -> None:
        self.pending = pending
        self.click_window_ms = click_window_ms
        self.conversion_window_ms = conversion_window_ms
        # (when the entry next needs attention, bid id): `expire` looks only at what is due, never at everything
        self._due: list[tuple[int, str]] = []
        self.cut_short = False  # the last `expire` stopped at its limit with windows still due
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the due-time index from `pending` (after it was filled from elsewhere, e.g. a recovery)."""
        self._due = [(self._due_of(e), k) for k, e in self.pending.items()]
        heapq.heapify(self._due)

    def _due_of(self, entry: dict[str, Any]) -> int:
        if entry["f"] is None or entry["imp"] is None:  # early event without its bid, or a bid not served (yet)
            return entry["t"] + max(UNSERVED_TTL_MS, entry.get("x", 0))
        if not entry["done"]:
            return entry["imp"] + self.click_window_ms  # the click window closes: a negative
        return entry["imp"] + self.conversion_window_ms  # labelled: forgotten after the conversion window

    def _put(self, bid_id: str, entry: dict[str, Any]) -> None:
        self.pending[bid_id] = entry
        heapq.heappush(self._due, (self._due_of(entry), bid_id))

    def on_bid(self, ev: dict[str, Any]) -> tuple[str, Example | None]:
        """Remember the bid's features; completes an example if its click came first (topics interleave freely)."""
        bid_id = ev["bid_id"]
        entry = self.pending.get(bid_id)
        if entry is not None and entry["f"] is not None:
            return "duplicate", None
        render = _render_ms(ev)
        if entry is None:
            fresh = {"c": ev["campaign"], "r": ev["creative"], "f": ev["features"], "t": ev["ts"], "imp": None,
                     "clk": None, "done": 0}
            self._put(bid_id, {**fresh, "x": render} if render else fresh)
            return "matched", None
        entry = {**entry, "c": ev["campaign"], "r": ev["creative"], "f": ev["features"], "t": ev["ts"]}
        if render:
            entry["x"] = render
        example = None
        if entry["clk"] is not None and not entry["done"]:
            if entry["clk"] - (entry["imp"] if entry["imp"] is not None else ev["ts"]) <= self.click_window_ms:
                entry["done"] = 1
                example = Example(entry["c"], entry["r"], entry["f"], 1, bid_id)
        self._put(bid_id, entry)
        return "matched", example

    def _early(self, ev: dict[str, Any], **marks: int) -> None:
        """An impression or click seen before its bid: hold it until the bid arrives or the TTL passes."""
        self._put(ev["bid_id"], {"c": ev["campaign"], "r": ev.get("creative", ""), "f": None, "t": ev["ts"],
                                      "imp": None, "clk": None, "done": 0, **marks})

    def on_impression(self, ev: dict[str, Any]) -> tuple[str, Example | None]:
        """Outcome and, when a click read before it falls inside the window it opens, the positive example."""
        bid_id = ev["bid_id"]
        entry = self.pending.get(bid_id)
        if entry is None:
            self._early(ev, imp=ev["ts"])
            return "early", None
        if entry["imp"] is not None and not entry.get("ci"):
            return "duplicate", None
        entry = {**entry, "imp": ev["ts"]}
        entry.pop("ci", None)  # the time a click stood in for is now the impression's own
        example = None
        # a click read first was judged from the bid's time; the impression's time is the one its window runs from
        if entry["clk"] is not None and entry["f"] is not None and not entry["done"] \
                and entry["clk"] - entry["imp"] <= self.click_window_ms:
            entry["done"] = 1
            example = Example(entry["c"], entry["r"], entry["f"], 1, bid_id)
        self._put(bid_id, entry)
        return "matched", example

    def on_click(self, ev: dict[str, Any]) -> tuple[str, Example | None]:
        """Outcome and, when the click is the first inside the window, the positive example."""
        bid_id = ev["bid_id"]
        entry = self.pending.get(bid_id)
        if entry is None:
            self._early(ev, clk=ev["ts"])
            return "early", None
        if entry["clk"] is not None:
            return "duplicate", None
        served = entry["t"] if entry["imp"] is None else entry["imp"]
        if entry["f"] is None:
            self._put(bid_id, {**entry, "clk": ev["ts"]})
            return "early", None
        if entry["done"] or ev["ts"] - served > self.click_window_ms:
            self._put(bid_id, {**entry, "clk": ev["ts"]})
            return "late", None
        # a click read before its impression stands in for it ("ci"), so the impression is not taken for a copy
        marks = {"ci": 1} if entry["imp"] is None else {}
        self._put(bid_id, {**entry, "imp": served, "clk": ev["ts"], "done": 1, **marks})
        return "matched", Example(entry["c"], entry["r"], entry["f"], 1, bid_id)

    def on_conversion(self, ev: dict[str, Any]) -> str:
        entry = self.pending.get(ev["bid_id"])
        if entry is None:
            return "orphan"
        if ev["ts"] - (entry["t"] if entry["imp"] is None else entry["imp"]) > self.conversion_window_ms:
            return "late"
        return "matched"

    def post_click(self, event: dict[str, Any], outcome: str) -> int:
        """1 when this conversion counts towards P(conversion | click) now: attribution matched it to a bid that
        has a click.  One whose bid has no click yet (view-through, or its click still unread: topics interleave)
        is held on the bid's entry, and booked by the bid's click if one comes."""
        bid_id = event["bid_id"]
        entry = self.pending.get(bid_id) if outcome == "matched" else None
        if entry is None:
            return 0  # orphan or late: not attributed
        held = entry.get(HELD_CONVERSIONS) or []
        if event["id"] in held:
            return 0  # read before: still held, or booked by its click
        if entry["clk"] is not None:
            return 1
        self.pending[bid_id] = {**entry, HELD_CONVERSIONS: [*held, event["id"]]}
        return 0

    def book_held_conversions(self, event: dict[str, Any]) -> int:
        """How many conversions of the click's bid were read before it, for the first click of the bid to book."""
        bid_id = event["bid_id"]
        entry = self.pending.get(bid_id)
        held = entry.get(HELD_CONVERSIONS) if entry is not None else None
        if entry is None or not held:
            return 0
        booked_by = entry.get(HELD_BOOKED_BY)
        if booked_by is None:
            self.pending[bid_id] = {**entry, HELD_BOOKED_BY: event["id"]}
        elif booked_by != event["id"]:
            return 0  # another click of the bid booked them
        return len(held)

    def expire(self, now_ms: int, now_of: Callable[[str], int] | None = None,
               limit: int | None = None) -> tuple[list[Example], int]:
        """Negative examples for served bids whose click window closed, and how many early events stayed orphans.

        Windows close on event time.  `now_ms` bounds it for every entry; `now_of(bid_id)`, when given, is how
        far the events that could still concern that bid have got, since a worker catching up on a backlog must
        not close a window whose click is still queued behind it (0 for an entry that is not this worker's).
        With `limit`, at most that many due entries are closed (earliest first) and the rest wait for the next
        call: a worker that has caught up on a backlog can close its windows in slices, between other work.
        """
        out: list[Example] = []
        orphans = 0
        due, later = self._due, []
        pop, get, due_of = heapq.heappop, self.pending.get, self._due_of  # a catching-up worker closes 10^5 at once
        budget = len(due) if limit is None else limit
        while due and due[0][0] < now_ms and budget > 0:
            when, bid_id = pop(due)
            entry = get(bid_id)
            if entry is None or due_of(entry) != when:
                continue  # gone, or changed since: a newer index entry stands for it
            if now_of is not None and when >= now_of(bid_id):
                later.append((when, bid_id))
                continue
            budget -= 1
            if entry["f"] is None:
                del self.pending[bid_id]
                orphans += 1
            elif entry["imp"] is None or entry["done"]:
                del self.pending[bid_id]
            else:
                self._put(bid_id, {**entry, "done": 1})
                out.append(Example(entry["c"], entry["r"], entry["f"], 0, bid_id))
        for item in later:
            heapq.heappush(due, item)
        self.cut_short = budget <= 0 and bool(due) and due[0][0] < now_ms
        return out, orphans
