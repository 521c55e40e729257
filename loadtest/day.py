"""A simulated day: the exchange and its users played against a bidder.

The exchange sends requests following the daily traffic curve, runs each
auction against the market price (first or second price), calls the signed
win/billing/loss URLs (billing late, sometimes never), users click with their
hidden probability after a delay, and a few clicks convert minutes to hours
later.  The same exchange drives the embedded demo (synchronously, `run`) and
the real stack over HTTP and Kafka (an asynchronous driver calling
`on_response` and `run_due`); the bidder and the event path are whatever the
caller wires in.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from bidder.campaigns import Campaign
from loadtest.simulator import Auction, Market, traffic_shape
from streams.events import make_event

DAY = 86400.0


@dataclass(slots=True)
class CampaignDay:
    """What one campaign got out of the day, with the ground truth the bidder never saw."""

    budget: int
    spend: int = 0
    impressions: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0
    value: int = 0
    conversions: int = 0
    bids: int = 0
    wins: int = 0
    curve: list[tuple[float, int]] = field(default_factory=list)  # (fraction of day, cumulative spend)
    won: list[tuple[float, float, int]] = field(default_factory=list)  # (win time, billing time or -1 if never, cost)


@dataclass(slots=True)
class DayReport:
    campaigns: dict[str, CampaignDay]
    requests: int
    bid_requests_answered: int
    errors: int
    seconds: float
    plan: Callable[[str, float], float] | None = None


def arrival_times(n: int, start: float) -> list[float]:
    """`n` request times over one day, denser where the traffic curve is higher (inverse CDF by minute)."""
    weights = [traffic_shape(m / 60.0) for m in range(1440)]
    cdf = list(itertools.accumulate(weights))
    total = cdf[-1]
    out = []
    for i in range(n):
        u = (i + 0.5) / n * total
        m = bisect.bisect_left(cdf, u)
        prev = cdf[m - 1] if m else 0.0
        out.append(start + (m + (u - prev) / weights[m]) * 60.0)
    return out


def cost_micros(clearing_cpm: float) -> int:
    """What one impression cleared at `clearing_cpm` costs, in micros, as its billing notice (price to 6 decimals) charges."""
    return round(float(f"{clearing_cpm:.6f}") * 1_000_000) // 1000


def _query(url: str, **macros: str) -> tuple[str, str]:
    parts = urlsplit(url)
    q = parts.query
    for k, v in macros.items():
        q = q.replace("${" + k + "}", v)
    return parts.path.rsplit("/", 1)[1], q


class ExchangeDay:
    """Plays one simulated day: auctions, notices (`notice(kind, query, now)`) and user events (`emit`).

    `run` drives it against `bid(body, now) -> (status, body)` and `tick(now)`; an asynchronous driver
    leaves both None and calls `begin`, then `on_response` for each answered request and `run_due` as
    its clock advances.
    """

    def __init__(self, market: Market, campaigns: list[Campaign], bid: Callable[[bytes, float], tuple[int, bytes]] | None,
                 notice: Callable[[str, str, float], None], emit: Callable[[str, str, dict[str, Any]], None],
                 tick: Callable[[float], None] | None, tick_every: float = 60.0, label: str = "") -> None:
        self.market = market
        self.by_id = {c.id: c for c in campaigns}
        self.bid = bid
        self.notice = notice
        self.emit = emit
        self.tick = tick
        self.tick_every = tick_every
        self.label = label
        self.results = {c.id: CampaignDay(budget=c.daily_budget) for c in campaigns}
        self._events: list[tuple[float, int, str, tuple]] = []
        self._seq = itertools.count()
        self._last_progress = 0.0
        self.start = 0.0

    def begin(self, start: float) -> None:
        """Open the day at `start` (unix seconds, local midnight)."""
        self.start = start

    @property
    def pending(self) -> int:
        """Billing notices, clicks and conversions still to come."""
        return len(self._events)

    def _at(self, when: float, what: str, *args: Any) -> None:
        heapq.heappush(self._events, (when, next(self._seq), what, args))

    def run_due(self, now: float) -> None:
        """Send every billing notice, click and conversion due by `now`."""
        while self._events and self._events[0][0] <= now:
            when, _, what, args = heapq.heappop(self._events)
            if what == "bill":
                self._bill(when, *args)
            elif what == "click":
                self._click(when, *args)
            else:
                self._conversion(when, *args)

    def _click(self, when: float, bid_id: str, cid: str, crid: str) -> None:
        self.emit("clicks", cid, make_event("clicks", f"click:{bid_id}", int(when * 1000), bid_id=bid_id, campaign=cid,
                                            creative=crid))
        r = self.results[cid]
        r.clicks += 1
        r.value += self.by_id[cid].value_per_click
        if self.market.rng.random() < self.market.conversion_rate(crid):
            value = self.market.conversion_value(self.by_id[cid].value_per_conversion)
            self._at(when + self.market.conversion_delay(), "conversion", bid_id, cid, crid, value)

    def _conversion(self, when: float, bid_id: str, cid: str, crid: str, value: int) -> None:
        self.emit("conversions", cid, make_event("conversions", f"conv:{bid_id}", int(when * 1000), bid_id=bid_id,
                                                 campaign=cid, creative=crid, value=value))
        r = self.results[cid]
        r.conversions += 1
        r.value += value

    def _bill(self, when: float, bid: dict, price: str, cost: int, ctr: float) -> None:
        kind, q = _query(bid["burl"], AUCTION_PRICE=price)
        self.notice(kind, q, when)
        cid = bid["cid"]
        r = self.results[cid]
        r.spend += cost
        r.impressions += 1
        r.expected_clicks += ctr
        r.curve.append(((when - self.start) / DAY, r.spend))
        self.emit("impressions", cid, make_event("impressions", f"imp:{bid['id']}", int(when * 1000), bid_id=bid["id"],
                                                 campaign=cid, creative=bid["crid"]))
        if self.market.rng.random() < ctr:
            self._at(when + self.market.click_delay(), "click", bid["id"], cid, bid["crid"])

    def _auction(self, now: float, a: Auction) -> None:
        assert self.bid is not None, "run() needs a bid callable"
        status, out = self.bid(a.body, now)
        self.on_response(now, a, status, out)

    def on_response(self, now: float, a: Auction, status: int, out: bytes) -> None:
        """The exchange's side of an answered request: run the auction, send win/loss, schedule the billing."""
        if status != 200:
            return
        ctx, market_cpm, first_price = a.ctx, a.market_cpm, a.first_price
        resp = orjson.loads(out)
        for sb in resp["seatbid"]:
            for bid in sb["bid"]:
                r = self.results[bid["cid"]]
                r.bids += 1
                price = bid["price"]
                if price < market_cpm:
                    kind, q = _query(bid["lurl"], AUCTION_LOSS="102", AUCTION_MIN_TO_WIN=f"{market_cpm:.6f}")
                    self.notice(kind, q, now)
                    continue
                clearing = price if first_price else market_cpm
                r.wins += 1
                kind, q = _query(bid["nurl"], AUCTION_PRICE=f"{clearing:.6f}")
                self.notice(kind, q, now)
                delay, cost = self.market.notice_delay(), cost_micros(clearing)
                r.won.append((now, now + delay if delay >= 0 else -1.0, cost))
                if delay >= 0:
                    ctr = self.market.true_ctr(bid["crid"], ctx)
                    self._at(now + delay, "bill", bid, f"{clearing:.6f}", cost, ctr)

    def run(self, requests: int, start: float, progress: bool = True) -> DayReport:
        """Play `requests` auctions spread over the day starting at `start` (unix seconds, local midnight)."""
        assert self.tick is not None, "run() needs a tick callable"
        t0 = time.perf_counter()
        self.begin(start)
        next_tick = start
        answered = errors = 0
        times = arrival_times(requests, start)
        for i, now in enumerate(times):
            self.run_due(now)
            if now >= next_tick:
                self.tick(now)
                next_tick = now + self.tick_every
                if progress:
                    self._progress(i, requests, now, start, t0)
            a = self.market.auction(now)
            try:
                self._auction(now, a)
                answered += 1
            except (ValueError, KeyError):
                errors += 1
        self.run_due(start + DAY + 3600)
        self.tick(start + DAY - 1)
        if progress:
            self._progress(requests, requests, start + DAY, start, t0)
            sys.stderr.write("\n")
        return DayReport(self.results, requests, answered, errors, time.perf_counter() - t0)

    def _progress(self, i: int, n: int, now: float, start: float, t0: float) -> None:
        wall = time.perf_counter()
        if i < n and wall - self._last_progress < 0.25:
            return
        self._last_progress = wall
        spend = sum(r.spend for r in self.results.values()) / 1e6
        clicks = sum(r.clicks for r in self.results.values())
        clock = dt.datetime.fromtimestamp(min(now, start + DAY - 1), dt.UTC).strftime("%H:%M")
        bar = "#" * int(30 * i / max(n, 1))
        label = f"{self.label:<9} " if self.label else ""
        sys.stderr.write(f"\r{label}[{bar:<30}] {100 * i / max(n, 1):5.1f}%  sim {clock}  requests {i:>8,}  "
                         f"spend {spend:>9.2f}  clicks {clicks:>6,}  {time.perf_counter() - t0:6.1f}s ")
        sys.stderr.flush()
