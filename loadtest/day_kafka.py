"""`streambid loadtest day`: one simulated day through the real stack, sped up.

The same simulated exchange as `streambid demo` (`loadtest.day.ExchangeDay`
on `loadtest.simulator.Market`), but nothing runs in-process: campaigns go
onto the config topic, `streambid worker` (Faust) and `streambid serve
--workers 2` run as processes, requests and notices travel over HTTP
keep-alive, impressions, clicks and conversions are produced to Kafka, and
the totals come back from the worker's /metrics.

Every process reads the same simulated clock (`bidder.clock`, set through
STREAMBID_TIME_WARP): the day's 24 hours take 86400 / speedup wall seconds,
so pacing, day boundaries, notice expiry and attribution windows all run on
simulated time while request deadlines stay real.  The day starts after a
warm-up long enough for the processes to come up; requests then leave when
the simulated clock reaches their arrival time (open loop: a slow bidder
makes the exchange late, which the report shows as send lag).

Campaign budgets are set from the day's traffic, which the simulator knows in
advance: each is a share of what its eligible auctions would cost at market
price, so every budget binds and pacing has something to do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from bidder.campaigns import Campaign, parse_campaign
from bidder.clock import WarpedClock
from bidder.openrtb import BidRequest, parse_request
from loadtest.day import DAY, ExchangeDay, arrival_times, cost_micros
from loadtest.day_report import (
    DayOutcome,
    campaign_rows,
    format_feedback,
    format_invariants,
    format_table,
    invariants,
    plot_spend,
)
from loadtest.day_stack import (
    Broker,
    KeepAlive,
    Stack,
    StackError,
    consumer_lag,
    http_get,
    start_group_at_end,
    wait_until,
    worker_totals,
)
from loadtest.hindsight import Offered, eligible_creatives, hindsight_optimum, opportunities
from loadtest.simulator import Auction, Market
from streams import topics

EXCHANGE = b"/bid/simx"
BID_CONNECTIONS = 16
NOTICE_CONNECTIONS = 8
REQUEST_TIMEOUT_S = 10.0  # wall seconds one bid request or notice may take; then it counts as a connection error
STALL_S = 30.0  # after the day: wall seconds without one answer before the answers still owed are given up on
DELIVERY_S = 60.0  # after the day: wall seconds for the exchange's events to reach Kafka


def _banner(name: str, w: int, h: int, cat: str) -> dict[str, Any]:
    return {"id": f"{name}-{w}x{h}", "type": "banner", "w": w, "h": h, "cat": [cat],
            "adm": f"<a href='https://{name}.example/'><img src='https://cdn.{name}.example/{w}x{h}.png'></a>"}


# (share of the market cost of its eligible auctions, campaign without id suffix, budget and flight)
TEMPLATES: list[tuple[float, dict[str, Any]]] = [
    (0.05, {"id": "shoes", "advertiser": "shoes.example",
            "goal": {"type": "cpc", "value_per_click": 3.0, "max_bid_cpm": 8.0},
            "frequency_cap": {"per_hour": 3, "per_day": 12}, "targeting": {"countries": ["USA", "GBR"]},
            "creatives": [_banner("shoes", 300, 250, "IAB18"), _banner("shoes", 728, 90, "IAB18")]}),
    (0.03, {"id": "travel", "advertiser": "trips.example",
            "goal": {"type": "cpc", "value_per_click": 4.0, "value_per_conversion": 25.0, "max_bid_cpm": 10.0},
            "targeting": {},
            "creatives": [_banner("trips", 300, 250, "IAB20"), _banner("trips", 320, 50, "IAB20"),
                          _banner("trips", 160, 600, "IAB20")]}),
    (0.08, {"id": "bank-app", "advertiser": "bank.example", "dayparting": list(range(6, 23)),
            "goal": {"type": "cpc", "value_per_click": 3.5, "value_per_conversion": 40.0, "max_bid_cpm": 8.0},
            "frequency_cap": {"per_day": 5}, "targeting": {"device_types": [4]},
            "creatives": [_banner("bank", 320, 50, "IAB13"), _banner("bank", 300, 250, "IAB13")]}),
    (0.12, {"id": "sports-news", "advertiser": "sportswear.example",
            "goal": {"type": "cpc", "value_per_click": 2.5, "max_bid_cpm": 6.0},
            "targeting": {"categories": ["IAB12", "IAB17"]},
            "creatives": [_banner("sportswear", 728, 90, "IAB17"), _banner("sportswear", 300, 250, "IAB17")]}),
    (0.20, {"id": "games-eu", "advertiser": "games.example",
            "goal": {"type": "cpc", "value_per_click": 2.0, "value_per_conversion": 10.0, "max_bid_cpm": 5.0},
            "targeting": {"countries": ["DEU", "FRA", "GBR"], "os": ["android", "ios"]},
            "creatives": [_banner("games", 320, 50, "IAB9"), _banner("games", 300, 250, "IAB9")]}),
]


@dataclass(slots=True)
class DayOptions:
    speedup: float = 1440.0
    requests: int = 12_000  # what the whole stack on a 2-core machine keeps up with at 1440x (about 250/s at peak)
    seed: int = 7
    broker: str | None = None
    out: Path = Path("out")
    bidder_workers: int = 2
    warmup_s: float = 20.0  # wall seconds from starting the processes to simulated midnight
    grace_s: float = 1.0  # wall seconds a bidder may take to act on the pacing topic's `exhausted`
    tail_s: float = 1800.0  # simulated seconds after midnight played in real time; later events are sent at once
    progress: bool = True


@dataclass(slots=True)
class DayPlan:
    """The day decided before it starts: when each request comes, what it is, which campaigns run."""

    start: float
    tag: str
    market: Market
    times: list[float]
    auctions: list[Auction]
    requests: list[BidRequest]
    campaigns: list[Campaign]


@dataclass(slots=True)
class PlayStats:
    """What the exchange saw while playing the day."""

    sent_at: list[float]  # simulated send time per request, nan when never sent
    answers: Counter = field(default_factory=Counter)  # HTTP status of bid requests
    notices: Counter = field(default_factory=Counter)  # (kind, HTTP status)
    refused: Counter = field(default_factory=Counter)  # (kind, reason) of notices answered 400
    billed_ok: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bills_ok: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lag: list[float] = field(default_factory=list)  # wall seconds each request left after its time (queue included)
    errors: int = 0  # broken connections
    foreign_bids: int = 0  # bids for campaigns not in this run
    flushed: int = 0  # clicks and conversions later than the tail, sent at once with their own times
    late_start_s: float = 0.0  # how long after simulated midnight the stack was ready
    wall_s: float = 0.0  # from simulated midnight to the end of the tail
    ready_s: float = 0.0  # from starting the processes to all of them following the config
    ledger_wait_s: float = 0.0  # after the day, until the worker had counted everything (or gave up)
    ledger_complete: bool = False
    exhausted_at: dict[str, float] = field(default_factory=dict)  # first `exhausted` on the pacing topic (sim time)
    worker_lag_max: int = 0  # the worker's largest consumer lag seen during the day, messages


def midnight_utc(now: float | None = None) -> float:
    today = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date()
    return dt.datetime.combine(today, dt.time(), dt.UTC).timestamp()


def plan_day(opts: DayOptions) -> DayPlan:
    """Traffic, campaigns and budgets for the day; campaign ids and domains carry a tag unique to the run."""
    tag = secrets.token_hex(3)
    start = midnight_utc()
    market = Market(opts.seed, namespace=f"day-{tag}")
    times = arrival_times(opts.requests, start)
    auctions = [market.auction(t) for t in times]
    requests = [parse_request(a.body) for a in auctions]
    day = dt.datetime.fromtimestamp(start, dt.UTC).date()
    campaigns = []
    for share, template in TEMPLATES:
        doc = {**template, "id": f"{template['id']}-{tag}", "currency": "USD", "status": "active",
               "budget": {"daily": 1.0},
               "flight": {"start": (day - dt.timedelta(days=1)).isoformat(),
                          "end": (day + dt.timedelta(days=30)).isoformat(), "timezone": "UTC"},
               "targeting": {**template["targeting"], "domains": market.domains()}}
        camp = parse_campaign(doc)
        cost = sum(cost_micros(a.market_cpm) for t, a, r in zip(times, auctions, requests, strict=True)
                   if camp.in_flight(dt.datetime.fromtimestamp(t, dt.UTC))
                   and any(eligible_creatives(camp, r, imp) for imp in r.imps))
        doc["budget"] = {"daily": max(round(share * cost / 1e6, 2), 0.01)}
        campaigns.append(parse_campaign(doc))
    return DayPlan(start, tag, market, times, auctions, requests, campaigns)


async def publish_campaigns(bootstrap: str, campaigns: list[Campaign]) -> None:
    from streams.commands import _produce, change_record

    await _produce(bootstrap, [(c.id, change_record(c.to_doc(), "set")) for c in campaigns])


async def wait_ready(stack: Stack, plan: DayPlan, clock: WarpedClock, timeout: float = 180.0) -> None:
    """The worker consumes the config topic and every bidder process has this run's campaigns live."""

    async def worker_ready() -> bool:
        status, text = await http_get(stack.metrics_port, "/metrics")
        return status == 200 and b'streambid_events_consumed_total{topic="campaigns"}' in text

    ids = {c.id for c in plan.campaigns}

    async def bidders_ready() -> bool:
        for _ in range(12):  # fresh connections spread over every process behind the port
            status, body = await http_get(stack.port, "/status")
            now = dt.datetime.fromtimestamp(clock(), dt.UTC)
            expected = {c.id for c in plan.campaigns if c.in_flight(now)}
            if status != 200 or not expected <= set(orjson.loads(body)["live"]) & ids:
                return False
        return True

    await wait_until(worker_ready, timeout, "the worker to consume the campaign config", stack)
    await wait_until(bidders_ready, timeout, "every bidder process to follow the campaign config", stack)


class DayPlayer:
    """Plays the planned day against the stack on the warped clock: requests, notices and user events."""

    def __init__(self, plan: DayPlan, clock: WarpedClock, stack: Stack, bootstrap: str, producer: Any,
                 opts: DayOptions) -> None:
        self.plan, self.clock, self.stack, self.bootstrap, self.opts = plan, clock, stack, bootstrap, opts
        self.port = stack.port
        self.stats = PlayStats(sent_at=[math.nan] * len(plan.auctions))
        self.day = ExchangeDay(plan.market, plan.campaigns, None, self._notice, producer.emit, None)
        self.bids: asyncio.Queue[int | None] = asyncio.Queue()
        self.notices: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self.sent = 0
        self._last_progress = 0.0
        self._max_lag = 0.0
        self._answered_at = time.monotonic()  # when the bidder last answered a request or notice

    def _notice(self, kind: str, query: str, now: float) -> None:
        self.notices.put_nowait((kind, query))

    async def _bid_worker(self) -> None:
        conn, st, clock = KeepAlive("127.0.0.1", self.port), self.stats, self.clock
        while (i := await self.bids.get()) is not None:
            a = self.plan.auctions[i]
            # late: how long after its time the request leaves, waiting for the scheduler or a free connection
            late = max(time.time() - clock.wall_time(self.plan.times[i]), 0.0)
            st.lag.append(late)
            self._max_lag = max(self._max_lag, late)
            st.sent_at[i] = clock()
            try:
                status, body = await conn.request(b"POST", EXCHANGE, a.body, REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                st.errors += 1
                continue
            self._answered_at = time.monotonic()
            st.answers[status] += 1
            try:
                self.day.on_response(self.clock(), a, status, body)
            except KeyError:
                st.foreign_bids += 1
        conn.close()

    async def _notice_worker(self) -> None:
        conn, st = KeepAlive("127.0.0.1", self.port), self.stats
        while (item := await self.notices.get()) is not None:
            kind, query = item
            try:
                status, body = await conn.request(b"GET", f"/notice/{kind}?{query}".encode(), timeout=REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                st.errors += 1
                continue
            self._answered_at = time.monotonic()
            st.notices[(kind, status)] += 1
            if status != 200:
                st.refused[(kind, orjson.loads(body).get("error", "?") if body else "?")] += 1
            elif kind == "bill":
                q = parse_qs(query)
                cid = q["c"][0]
                st.billed_ok[cid] += cost_micros(float(q["p"][0]))
                st.bills_ok[cid] += 1
        conn.close()

    async def _watch_pacing(self) -> None:
        """Note when the pacing topic first says each campaign is exhausted: the feedback the bidders act on."""
        from aiokafka import AIOKafkaConsumer

        ids = {c.id for c in self.plan.campaigns}
        c = AIOKafkaConsumer(topics.PACING.name, bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="latest", fetch_max_wait_ms=100)
        await c.start()
        try:
            async for msg in c:
                doc = orjson.loads(msg.value)
                cid = doc.get("campaign")
                if cid in ids and doc.get("exhausted") and cid not in self.stats.exhausted_at:
                    self.stats.exhausted_at[cid] = self.clock()
        finally:
            await c.stop()

    async def _watch_worker(self) -> None:
        """Sample the worker's consumer lag once a second."""
        while True:
            try:
                status, text = await http_get(self.stack.metrics_port, "/metrics")
                self.stats.worker_lag_max = max(self.stats.worker_lag_max, consumer_lag(text))
            except (OSError, asyncio.IncompleteReadError, ValueError):
                pass
            await asyncio.sleep(1.0)

    async def _pump(self, until: asyncio.Event) -> None:
        """Billing notices, clicks and conversions leave when the simulated clock reaches them."""
        while not until.is_set():
            self.day.run_due(self.clock())
            self._progress()
            await asyncio.sleep(0.002)

    async def _schedule(self) -> None:
        """Requests leave at their arrival time on the simulated clock (open loop)."""
        clock = self.clock
        for i, t in enumerate(self.plan.times):
            wait = clock.wall_time(t) - time.time()
            if wait > 0.0005:
                await asyncio.sleep(wait)
            self.sent = i + 1
            self.bids.put_nowait(i)

    async def play(self) -> PlayStats:
        plan, st = self.plan, self.stats
        self.day.begin(plan.start)
        midnight = self.clock.wall_time(plan.start)
        st.late_start_s = max(time.time() - midnight, 0.0)
        watchers = [asyncio.ensure_future(self._watch_pacing()), asyncio.ensure_future(self._watch_worker())]
        done = asyncio.Event()
        bid_workers = [asyncio.ensure_future(self._bid_worker()) for _ in range(BID_CONNECTIONS)]
        notice_workers = [asyncio.ensure_future(self._notice_worker()) for _ in range(NOTICE_CONNECTIONS)]
        pump = asyncio.ensure_future(self._pump(done))
        try:
            await self._schedule()
            for _ in bid_workers:
                self.bids.put_nowait(None)
            await self._finish(bid_workers, "answers to the bid requests")
            end = plan.start + DAY + self.opts.tail_s
            while self.clock() < end:
                await asyncio.sleep(min(max(self.clock.wall_time(end) - time.time(), 0.0), 0.05))
            done.set()
            await pump
            st.wall_s = time.time() - midnight
            st.flushed = self.day.pending
            self.day.run_due(math.inf)
            for _ in notice_workers:
                self.notices.put_nowait(None)
            await self._finish(notice_workers, "answers to the notices")
        finally:  # on a failure or a Ctrl-C too: nothing of the day goes on while the stack is stopped
            for task in (*watchers, *bid_workers, *notice_workers, pump):
                task.cancel()
            await asyncio.gather(*watchers, *bid_workers, *notice_workers, pump, return_exceptions=True)
            self._progress(final=True)  # ends the status line, so that what follows starts on a line of its own
        return st

    async def _finish(self, workers: list[asyncio.Task[None]], what: str) -> None:
        """Wait for `workers` to send what is queued; StackError once the bidder has answered nothing for STALL_S
        (it hangs, or nothing listens on its port any more) with some still owed."""
        self._answered_at = time.monotonic()
        pending = set(workers)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=1.0)
            for task in done:
                task.result()
            if pending and time.monotonic() - self._answered_at > STALL_S:
                self.stack.check_alive()
                raise StackError(f"gave up waiting for {what}: the bidder on port {self.port} answered nothing for "
                                 f"{STALL_S:.0f} s with some still owed; see {self.stack.log_dir / 'serve.log'}")

    def _progress(self, final: bool = False) -> None:
        if not self.opts.progress:
            return
        wall = time.perf_counter()
        if not final and wall - self._last_progress < 0.25:
            return
        self._last_progress = wall
        n, i = len(self.plan.times), self.sent
        spend = sum(r.spend for r in self.day.results.values()) / 1e6
        clicks = sum(r.clicks for r in self.day.results.values())
        now = self.clock()
        clock = dt.datetime.fromtimestamp(min(now, self.plan.start + DAY - 1), dt.UTC).strftime("%H:%M")
        if now < self.plan.start:
            clock = "--:--"
        bar = "#" * int(30 * i / max(n, 1))
        sys.stderr.write(f"\r[{bar:<30}] {100 * i / max(n, 1):5.1f}%  sim {clock}  requests {i:>7,}  "
                         f"spend {spend:>8.2f}  clicks {clicks:>5,}  lag max {1000 * self._max_lag:6.1f} ms ")
        self._max_lag = 0.0
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


async def collect_totals(stack: Stack, plan: DayPlan, player: DayPlayer, timeout: float = 180.0, settle: float = 10.0
                         ) -> tuple[dict[str, dict[str, int]], bool]:
    """The worker's totals once it has counted everything the run produced (True); False once they have not changed
    for `settle` seconds with nothing left for the worker to consume, or after `timeout` (the report shows where
    they differ)."""
    ids = [c.id for c in plan.campaigns]
    sim, st = player.day.results, player.stats

    def complete(t: dict[str, dict[str, int]]) -> bool:
        return all(t[c]["spend"] == st.billed_ok.get(c, 0) and t[c]["billed"] == st.bills_ok.get(c, 0)
                   and t[c]["clicks"] == sim[c].clicks and t[c]["conversions"] == sim[c].conversions for c in ids)

    end = time.monotonic() + timeout
    last, changed = None, time.monotonic()
    while time.monotonic() < end:
        stack.check_alive()
        try:
            status, text = await http_get(stack.metrics_port, "/metrics")
        except (OSError, asyncio.IncompleteReadError, ValueError):  # a link cut short: ask again (or see it died)
            await asyncio.sleep(0.5)
            continue
        totals = worker_totals(text.decode(), ids)
        if complete(totals):
            return totals, True
        if totals != last or consumer_lag(text) > 0:
            last, changed = totals, time.monotonic()
        elif time.monotonic() - changed > settle:
            break
        await asyncio.sleep(0.5)
    return last or {c: {} for c in ids}, False


def hindsight(plan: DayPlan, stats: PlayStats, player: DayPlayer) -> dict[str, Any]:
    """The hindsight optimum per campaign over the auctions actually offered, with its budget (or our spend, if more)."""
    offered = [Offered(when, plan.requests[i], plan.auctions[i].market_cpm, plan.auctions[i].ctx)
               for i, when in enumerate(stats.sent_at) if not math.isnan(when)]
    out = {}
    for camp in plan.campaigns:
        opps = opportunities(camp, offered, plan.market.true_ctr)
        out[camp.id] = hindsight_optimum(opps, max(camp.daily_budget, player.day.results[camp.id].spend))
    return out


async def run_stack_day(plan: DayPlan, bootstrap: str, opts: DayOptions, log_dir: Path, work_dir: Path
                        ) -> tuple[PlayStats, DayPlayer, dict[str, dict[str, int]]]:
    from streams.kafka_io import EventProducer, ensure_topics

    await ensure_topics(bootstrap)
    await publish_campaigns(bootstrap, plan.campaigns)
    app_id = f"day-{plan.tag}"
    # a new worker group starts at the end of the event topics: other runs' events are not this day's
    await start_group_at_end(bootstrap, app_id, [t for t in topics.ALL if t not in (topics.CAMPAIGNS, topics.MODEL,
                                                                                     topics.PACING, topics.DEADLETTER)])
    clock = WarpedClock(plan.start, time.time() + opts.warmup_s, opts.speedup)
    stack = Stack(bootstrap, clock, secrets.token_hex(32), app_id, log_dir, work_dir, opts.bidder_workers)
    producer = EventProducer(bootstrap, work_dir / "runner-spill.jsonl")
    try:  # from the first process started: a failure, an exception or a Ctrl-C stops all that was started
        stack.start()
        spawned = time.time()
        await wait_ready(stack, plan, clock)
        ready_s = time.time() - spawned
        await producer.start()
        player = DayPlayer(plan, clock, stack, bootstrap, producer, opts)
        stats = await player.play()
        stats.ready_s = ready_s
        await deliver_events(producer)
        if opts.progress:
            sys.stderr.write("waiting for the worker to count every event...\n")
        waited = time.time()
        totals, stats.ledger_complete = await collect_totals(stack, plan, player)
        stats.ledger_wait_s = time.time() - waited
        return stats, player, totals
    finally:
        try:
            await producer.stop()
        finally:
            stack.stop()


async def deliver_events(producer: Any, timeout: float = DELIVERY_S) -> None:
    """Wait until every event the exchange emitted is on Kafka, then stop the producer; StackError if some are not.

    A batch the broker is slow to acknowledge is written to disk (and counted as spilled) and sent from there:
    what counts is what is still in memory, in flight or on disk, and what Kafka refused.
    """
    end = time.monotonic() + timeout
    while (producer.buffer or producer.in_flight or producer.on_disk()) and time.monotonic() < end:
        await asyncio.sleep(0.1)
    await producer.stop()
    left, refused = len(producer.on_disk()), producer.failed
    if left or refused:
        raise StackError(f"{left + refused} of the exchange's events did not reach Kafka ({left} not sent within "
                         f"{timeout:.0f} s after the day, {refused} refused by the broker); the ledger cannot match")


def run_day(opts: DayOptions) -> tuple[DayOutcome, PlayStats]:
    """Plan the day, bring up the stack, play the day, read the worker's totals, compare with the truth."""
    import uvloop

    t0 = time.time()
    plan = plan_day(opts)
    log_dir = opts.out / "day-logs"
    work_dir = Path(tempfile.mkdtemp(prefix="streambid-day-"))
    try:
        with Broker(opts.broker) as bootstrap:
            stats, player, totals = uvloop.run(run_stack_day(plan, bootstrap, opts, log_dir, work_dir))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    optimum = hindsight(plan, stats, player)
    lag = sorted(stats.lag)
    run = {
        "requests": len(plan.times), "sent": sum(1 for x in stats.sent_at if not math.isnan(x)),
        "answers": {str(k): v for k, v in sorted(stats.answers.items())},
        "notices": {f"{k}:{s}": v for (k, s), v in sorted(stats.notices.items())},
        "refused_notices": {f"{k}:{r}": v for (k, r), v in sorted(stats.refused.items())},
        "connection_errors": stats.errors, "foreign_bids": stats.foreign_bids, "events_sent_at_once": stats.flushed,
        "send_lag_ms": {"p50": 1000 * lag[len(lag) // 2] if lag else 0.0,
                        "p99": 1000 * lag[int(len(lag) * 0.99)] if lag else 0.0, "max": 1000 * lag[-1] if lag else 0.0},
        "ready_s": round(stats.ready_s, 2), "late_start_s": round(stats.late_start_s, 3),
        "day_wall_s": round(stats.wall_s, 2), "worker_consumer_lag_max": stats.worker_lag_max,
        "ledger_wait_s": round(stats.ledger_wait_s, 2), "ledger_complete": stats.ledger_complete,
        "total_wall_s": round(time.time() - t0, 2), "speedup": opts.speedup, "seed": opts.seed,
        "bidder_workers": opts.bidder_workers, "broker": "started for the run" if not opts.broker else opts.broker,
        "logs": str(log_dir),
    }
    outcome = DayOutcome(plan.campaigns, player.day.results, totals, dict(stats.billed_ok), dict(stats.bills_ok), optimum,
                         plan.start, opts.speedup, opts.grace_s, run, dict(stats.exhausted_at))
    return outcome, stats


def report_doc(outcome: DayOutcome, png: Path | None) -> dict[str, Any]:
    rows = campaign_rows(outcome)
    return {"campaigns": rows, "invariants": invariants(rows), "run": outcome.run,
            "grace_s": outcome.grace_s, "plot": str(png) if png else None}


def format_run(run: dict[str, Any]) -> str:
    lag = run["send_lag_ms"]
    answers = ", ".join(f"{k}: {v:,}" for k, v in run["answers"].items())
    refused = ", ".join(f"{k} {v:,}" for k, v in run["refused_notices"].items()) or "none"
    return (f"{run['sent']:,}/{run['requests']:,} requests sent ({answers}); send lag p50 {lag['p50']:.1f} ms, "
            f"p99 {lag['p99']:.1f} ms, max {lag['max']:.1f} ms; refused notices: {refused}; "
            f"connection errors {run['connection_errors']}\n"
            f"stack ready in {run['ready_s']:.1f} s (late start {run['late_start_s']:.1f} s); day played in "
            f"{run['day_wall_s']:.1f} s wall at {run['speedup']:g}x; {run['total_wall_s']:.1f} s in all; worker consumer "
            f"lag max {run['worker_consumer_lag_max']:,} messages, counted everything "
            f"{'within' if run['ledger_complete'] else 'NOT within'} {run['ledger_wait_s']:.1f} s after the day; "
            f"{run['events_sent_at_once']:,} clicks/conversions after the tail sent at once; logs: {run['logs']}")


def broker_problem(bootstrap: str, timeout: float = 15.0) -> str | None:
    """Why a given broker cannot be used (None: it answers), found before the day is planned and the stack started."""
    import logging

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError, KafkaError

    async def probe() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await asyncio.wait_for(admin.start(), timeout)
        finally:
            await admin.close()

    log = logging.getLogger("aiokafka")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the one line the caller prints says it all
    try:
        asyncio.run(probe())
    except (KafkaConnectionError, TimeoutError):
        return "nothing answers there"
    except (KafkaError, OSError, ValueError) as e:
        return str(e) or type(e).__name__
    finally:
        log.setLevel(level)
    return None


def _stop_as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM (`kill`, a CI job's time limit) ends the run as Ctrl-C does, stopping the broker and the processes it
    started: by default it would end the runner on the spot and leave them running, in sessions of their own."""
    on_ctrl_c = signal.getsignal(signal.SIGINT)
    if callable(on_ctrl_c):  # the event loop's (cancels the run, which then stops what it started) or Python's
        on_ctrl_c(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def command(args: Any) -> int:
    """Entry point of `streambid loadtest day`."""
    from aiokafka.errors import KafkaError

    from bidder.arguments import out_dir_problem

    broker = args.broker or os.environ.get("KAFKA_BOOTSTRAP") or None
    if problem := out_dir_problem(args.out):
        print(f"streambid loadtest day: {problem}", file=sys.stderr)
        return 2
    if broker and (problem := broker_problem(broker)):
        print(f"streambid loadtest day: cannot reach the Kafka broker at {broker} ({problem}); check --broker or "
              "KAFKA_BOOTSTRAP, or unset both to start a local broker for the run", file=sys.stderr)
        return 2
    opts = DayOptions(speedup=args.speedup, requests=args.requests, seed=args.seed, broker=broker, out=args.out,
                      bidder_workers=args.bidder_workers, warmup_s=args.warmup, grace_s=args.grace,
                      progress=not args.no_progress)
    previous = signal.signal(signal.SIGTERM, _stop_as_ctrl_c)
    try:
        outcome, _ = run_day(opts)
    except StackError as e:
        print(f"streambid: {e}", file=sys.stderr)
        return 1
    except KafkaError as e:  # the broker answered the check above but failed during the run
        print(f"streambid loadtest day: the Kafka broker at {broker or 'started for the run'} failed: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    png = plot_spend(outcome, campaign_rows(outcome), opts.out / "day-kafka-spend.png")
    doc = report_doc(outcome, png)
    checks = doc["invariants"]
    ok = checks["ledger_equals_billed"] and checks["counted_once"] and checks["no_overspend"] and checks["regret_in_0_1"]
    if args.json:
        print(orjson.dumps(doc).decode())
        return 0 if ok else 1
    print(format_table(doc["campaigns"]))
    print()
    print(format_invariants(doc["campaigns"], doc["invariants"], opts.grace_s))
    print(format_feedback(doc["campaigns"]))
    print()
    print(format_run(doc["run"]))
    print(f"plot: {png}")
    return 0 if ok else 1
