"""Bidder metrics: counted in plain Python on the bid path, exposed in Prometheus text on scrape.

A prometheus_client call costs about a microsecond with its lock; the bid path
instead bumps dict counters and a bucket array, and a collector turns them
into metric families only when Prometheus scrapes.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# seconds; resolves 0.25 ms to 50 ms
LATENCY_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.1, 0.25)


class BidderStats:
    """Counters the bid path updates; cheap enough to touch on every request."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # (exchange, outcome, reason)
        self.bids: dict[tuple[str, str], int] = defaultdict(int)  # (campaign, exchange)
        self.notices: dict[tuple[str, str], int] = defaultdict(int)  # (kind, outcome)
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.past_deadline = 0
        self.shed = 0

    def observe(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class BidderCollector(Collector):
    """Turns BidderStats and the engine's pacing view into metric families at scrape time."""

    def __init__(self, stats: BidderStats, engine: object, worker: str) -> None:
        self.stats = stats
        self.engine = engine
        self.worker = worker

    def collect(self) -> Iterator:
        s, w = self.stats, self.worker
        req = CounterMetricFamily("streambid_bid_requests", "Bid requests by exchange, outcome and reason",
                                  labels=["exchange", "outcome", "reason", "worker"])
        for (ex, outcome, reason), n in list(s.requests.items()):
            req.add_metric([ex, outcome, reason, w], n)
        yield req
        bids = CounterMetricFamily("streambid_bids", "Bids answered, per campaign and exchange",
                                   labels=["campaign", "exchange", "worker"])
        for (camp, ex), n in list(s.bids.items()):
            bids.add_metric([camp, ex, w], n)
        yield bids
        notices = CounterMetricFamily("streambid_notices", "Win/billing/loss notices by outcome",
                                      labels=["kind", "outcome", "worker"])
        for (kind, outcome), n in list(s.notices.items()):
            notices.add_metric([kind, outcome, w], n)
        yield notices
        buckets, acc = [], 0
        for bound, n in zip(LATENCY_BUCKETS + (float("inf"),), s.latency, strict=True):
            acc += n
            buckets.append((str(bound) if bound != float("inf") else "+Inf", acc))
        hist = HistogramMetricFamily("streambid_bid_latency_seconds", "Time from request arrival to answer",
                                     labels=["worker"])
        hist.add_metric([w], buckets, s.latency_sum)
        yield hist
        yield CounterMetricFamily("streambid_answers_past_deadline", "Answers written after the request deadline",
                                  value=s.past_deadline)
        yield CounterMetricFamily("streambid_load_shed", "Requests answered 204 at once because the worker was overloaded",
                                  value=s.shed)
        yield from self._business()

    def _business(self) -> Iterator:
        """Per-campaign delivery as last published by the streams side (pacing topic)."""
        pacing = getattr(self.engine, "pacing", {})
        names = {
            "spend": ("streambid_campaign_spend_today", "Spend today in campaign currency units"),
            "impressions": ("streambid_campaign_impressions_today", "Impressions today"),
            "clicks": ("streambid_campaign_clicks_today", "Clicks today"),
            "value": ("streambid_campaign_value_today", "Value today (clicks x value per click + conversion value)"),
            "roi": ("streambid_campaign_roi_today", "ROI today: (value - spend) / spend"),
            "budget_remaining": ("streambid_campaign_budget_remaining", "Daily budget left, currency units"),
            "lam": ("streambid_campaign_pacing_lambda", "Pacing multiplier lambda (bid = value / (1 + lambda))"),
        }
        fams = {k: GaugeMetricFamily(n, h, labels=["campaign"]) for k, (n, h) in names.items()}
        for cid, p in list(pacing.items()):
            spend = p.spent_today
            value = getattr(p, "value_today", 0)
            fams["spend"].add_metric([cid], spend / 1e6)
            fams["impressions"].add_metric([cid], getattr(p, "impressions_today", 0))
            fams["clicks"].add_metric([cid], getattr(p, "clicks_today", 0))
            fams["value"].add_metric([cid], value / 1e6)
            fams["roi"].add_metric([cid], (value - spend) / spend if spend else 0.0)
            fams["budget_remaining"].add_metric([cid], max(p.budget_today - spend, 0) / 1e6)
            fams["lam"].add_metric([cid], p.lam)
        yield from fams.values()
