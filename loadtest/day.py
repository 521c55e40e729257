"""A simulated day: the exchange and its users played against a bidder.

The exchange sends requests following the daily traffic curve, runs each
auction against the market price (first or second price), calls the signed
win/billing/loss URLs (billing late, sometimes never), and users click with
their hidden probability after a delay.  The same loop drives the embedded
demo; the bidder and the event path are whatever the caller wires in.
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
from loadtest.simulator import Market, traffic_shape

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
    bids: int = 0
    wins: int = 0
    curve: list[tuple[float, int]] = field(default_factory=list)  # (fraction of day, cumulative spend)


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


def _query(url: str, **macros: str) -> tuple[str, str]:
    parts = urlsplit(url)
    q = parts.query
    for k, v in macros.items():
        q = q.replace("${" + k + "}", v)
    return parts.path.rsplit("/", 1)[1], q


class ExchangeDay:
    """Plays one simulated day against `bid(body, now) -> (status, body)` and `notice(kind, query, now)`."""

    def __init__(self, market: Market, campaigns: list[Campaign], bid: Callable[[bytes, float], tuple[int, bytes]],
                 notice: Callable[[str, str, float], None], emit: Callable[[str, str, dict[str, Any]], None],
                 tick: Callable[[float], None], tick_every: float = 60.0) -> None:
        self.market = market
        self.by_id = {c.id: c for c in campaigns}
        self.bid = bid
        self.notice = notice
        self.emit = emit
        self.tick = tick
        self.tick_every = tick_every
        self.results = {c.id: CampaignDay(budget=c.daily_budget) for c in campaigns}
        self._events: list[tuple[float, int, str, tuple]] = []
        self._seq = itertools.count()
        self._last_progress = 0.0

    def _at(self, when: float, what: str, *args: Any) -> None:
        heapq.heappush(self._events, (when, next(self._seq), what, args))

    def _run_due(self, now: float, start: float) -> None:
        while self._events and self._events[0][0] <= now:
            when, _, what, args = heapq.heappop(self._events)
            if what == "bill":
                self._bill(when, start, *args)
            elif what == "click":
                bid_id, cid, crid = args
                self.emit("clicks", cid, {"v": 1, "type": "clicks", "id": f"click:{bid_id}", "ts": int(when * 1000),
                                             "bid_id": bid_id, "campaign": cid, "creative": crid})
                self.results[cid].clicks += 1
                self.results[cid].value += self.by_id[cid].value_per_click

    def _bill(self, when: float, start: float, bid: dict, price: str, ctr: float) -> None:
        kind, q = _query(bid["burl"], AUCTION_PRICE=price)
        self.notice(kind, q, when)
        cid = bid["cid"]
        r = self.results[cid]
        r.spend += round(float(price) * 1_000_000) // 1000
        r.impressions += 1
        r.expected_clicks += ctr
        r.curve.append(((when - start) / DAY, r.spend))
        self.emit("impressions", cid, {"v": 1, "type": "impressions", "id": f"imp:{bid['id']}",
                                             "ts": int(when * 1000), "bid_id": bid["id"], "campaign": cid,
                                             "creative": bid["crid"]})
        if self.market.rng.random() < ctr:
            self._at(when + self.market.click_delay(), "click", bid["id"], cid, bid["crid"])

    def _auction(self, now: float, body: bytes, ctx: tuple, market_cpm: float, first_price: bool) -> None:
        status, out = self.bid(body, now)
        if status != 200:
            return
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
                delay = self.market.notice_delay()
                if delay >= 0:
                    ctr = self.market.true_ctr(bid["crid"], ctx)
                    self._at(now + delay, "bill", bid, f"{clearing:.6f}", ctr)

    def run(self, requests: int, start: float, progress: bool = True) -> DayReport:
        """Play `requests` auctions spread over the day starting at `start` (unix seconds, local midnight)."""
        t0 = time.perf_counter()
        next_tick = start
        answered = errors = 0
        times = arrival_times(requests, start)
        for i, now in enumerate(times):
            self._run_due(now, start)
            if now >= next_tick:
                self.tick(now)
                next_tick = now + self.tick_every
                if progress:
                    self._progress(i, requests, now, start, t0)
            a = self.market.auction(now)
            try:
                self._auction(now, a.body, a.ctx, a.market_cpm, a.first_price)
                answered += 1
            except (ValueError, KeyError):
                errors += 1
        self._run_due(start + DAY + 3600, start)
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
        sys.stderr.write(f"\r[{bar:<30}] {100 * i / max(n, 1):5.1f}%  sim {clock}  requests {i:>8,}  "
                         f"spend {spend:>9.2f}  clicks {clicks:>6,}  {time.perf_counter() - t0:6.1f}s ")
        sys.stderr.flush()
