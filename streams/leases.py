"""Budget leases on Kafka: the worker that owns a campaign's spend grants its bidders slices of the day's budget.

Bidders ask on the lease-requests topic, keyed by campaign and partitioned like
the delivery topics, so the request reaches the worker whose ledger holds that
campaign's spend.  The worker answers on the lease-grants topic with the
bidder's *cumulative* grant for the campaign-day, so a repeated, late or
reordered grant changes nothing on the bidder (`BudgetLease.grant_total` keeps
the maximum).

Per campaign-day the worker keeps a `LeaseGranter` (bidder/lease.py) and feeds
it with two kinds of spend:

* each request carries the bidder's own grant, settled spend and bids in
  flight, so a worker that takes a campaign over after a restart or a rebalance
  learns what each bidder holds from its next request, and a new day's granter
  what the bids still in flight at midnight will cost it;
* the ledger's exact spend for the day: whatever no bidder has reported yet
  (bidders that restarted under a new id, bills not yet reported) is booked to
  a pseudo-account, so the budget answers for it before any new slice goes out.

A worker that has just been assigned a partition (at start, or after a
rebalance) grants nothing new on it for `HOLD_S`: every bidder in contact
reports what it holds at least every `KEEPALIVE_S`, so after the hold the
granter knows every grant still out except those of bidders cut off from Kafka
(at most one slice each, which they spend and then stop).

Grants never commit more than the budget minus that spend, so a bidder that
spends only within its lease keeps the day within budget; see `LeaseGranter`
for the full bound, and the README's pacing section.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from bidder.campaigns import Campaign
from bidder.engine import MAX_NOTICE_TTL_S
from bidder.lease import LeaseGranter
from bidder.lease_client import ASK_EVERY_S, KEEPALIVE_S
from streams import topics
from streams.events import BIDDER_ID

MIN_SLICE_BIDS = 4  # a slice always covers this many impressions at the campaign's max bid
MAX_FRAC = 0.5  # a bidder may not ask for more than half the remaining budget at a time
REQUEST_TTL_S = 30.0  # wall seconds: an older request (a backlog after an outage) is not answered; bidders ask again
HOLD_S = KEEPALIVE_S + 4 * ASK_EVERY_S  # after a partition is assigned: time for every bidder in contact to report
_BIDDER_ID = BIDDER_ID.fullmatch
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}").fullmatch


def _days_between(a: str, b: str) -> int:
    return (dt.date.fromisoformat(b) - dt.date.fromisoformat(a)).days


def _day_start(campaign: Campaign, day: str) -> float:
    """Unix time of the campaign's midnight that begins `day`, in its time zone."""
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), ZoneInfo(campaign.timezone)).timestamp()


def min_slice(campaign: Campaign) -> int:
    """The smallest slice worth granting: MIN_SLICE_BIDS impressions at the campaign's max bid (micros)."""
    return max(MIN_SLICE_BIDS * -(-campaign.max_bid_cpm // 1000), 1)


def parse_request(raw: bytes) -> dict[str, Any] | None:
    """A lease request as sent by `bidder.lease_client.request_doc`, or None when it is malformed."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        return None
    for name in ("bidder", "campaign", "day"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            return None
    doc.setdefault("reserved", 0)  # its bids in flight: a bidder of an earlier release does not say
    for name in ("granted", "spent", "reserved"):
        if not isinstance(doc.get(name), int) or isinstance(doc[name], bool) or doc[name] < 0:
            return None
    if not isinstance(doc.get("frac"), int | float) or not isinstance(doc.get("ts"), int | float):
        return None
    if not _BIDDER_ID(doc["bidder"]) or not _is_date(doc["day"]):
        return None  # a day that is no date would become the campaign's latest day, and refuse every real one
    return doc


def _is_date(text: str) -> bool:
    try:
        return _DATE(text) is not None and dt.date.fromisoformat(text) is not None
    except ValueError:
        return False


class LeaseDesk:
    """Every campaign's granter for its latest day on one worker: turns requests into grants.  No I/O."""

    def __init__(self) -> None:
        self.granters: dict[str, LeaseGranter] = {}
        self.days: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.carried_until: dict[str, float] = {}  # campaign -> when the day before's bids can no longer be billed

    def drop(self, campaigns: list[str]) -> None:
        """Forget campaigns another worker now answers for (a rebalance); they start afresh if they come back."""
        for cid in campaigns:
            self.granters.pop(cid, None)
            self.days.pop(cid, None)
            self.carried_until.pop(cid, None)

    def note(self, what: str) -> None:
        """Count an outcome of a request (granted, held, stale, past_day, future_day, unknown_campaign, malformed)."""
        self.counts[what] = self.counts.get(what, 0) + 1

    def granter(self, campaign: Campaign, day: str, frac: float, budget: int, now: float) -> LeaseGranter | None:
        """The campaign's granter for `day` and its `budget` that day (micros; the lifetime total may leave less
        than the daily budget); None for a day older than one already granted on (a late request)."""
        current = self.days.get(campaign.id)
        if current is not None and day < current:
            return None  # late (a day after tomorrow is refused before: `answer`; days with no request may lie between)
        g = self.granters.get(campaign.id)
        if g is None or current != day:
            previous, g = g, LeaseGranter(budget, min_slice(campaign), frac)
            if previous is not None and current is not None and _days_between(current, day) == 1:
                g.carry(previous)  # the bids in flight at midnight are billed on the new day, until their notices expire
                self.carried_until[campaign.id] = _day_start(campaign, day) + MAX_NOTICE_TTL_S
            self.granters[campaign.id] = g
            self.days[campaign.id] = day
        if now >= self.carried_until.get(campaign.id, now + 1):
            g.forget_carried()
            del self.carried_until[campaign.id]
        g.set_budget(budget)  # a budget changed mid-day counts from the next grant on
        g.min_slice = min_slice(campaign)
        g.frac = frac
        return g

    def answer(self, req: dict[str, Any], campaign: Campaign | None, ledger_spend: int, now: float,
               hold: bool = False, budget: int | None = None) -> dict[str, Any] | None:
        """The grant for a parsed request, or None (unknown campaign, stale request, a day already over, or `hold`).

        `hold`: the campaign has just come to this worker; take in what the bidder reports, grant nothing yet.
        """
        if campaign is None:
            self.note("unknown_campaign")
            return None
        if now - req["ts"] > REQUEST_TTL_S:
            self.note("stale")
            return None
        if _days_between(campaign.local_day(now), req["day"]) > 1:  # even the first request of a campaign
            self.note("future_day")  # (it would become the campaign's day, and refuse every real one until then)
            return None
        budget = campaign.daily_budget if budget is None else budget
        g = self.granter(campaign, req["day"], min(max(float(req["frac"]), 1e-6), MAX_FRAC), budget, now)
        if g is None:
            self.note("past_day")
            return None
        bidder = req["bidder"]
        g.adopt(bidder, req["granted"], req["spent"], req.get("reserved", 0))
        g.ledger_spend(ledger_spend)
        if hold:
            self.note("held")
            return None
        granted = g.request(bidder)
        self.note("granted")
        return {"v": 1, "bidder": bidder, "campaign": campaign.id, "day": req["day"], "granted": granted,
                "slice": g.slice_size(), "ts": int(now * 1000)}


def install(app: Any, campaigns: Any, ledger: Any, pacer: Any) -> LeaseDesk:
    """Add the lease agent to the Faust app: requests in, grants out.

    `campaigns` is the worker's `streams.processor.Campaigns` (budgets, max bids), `ledger` its `SpendLedger`
    (exact spend per campaign-day of the partitions this worker owns: the request topic is partitioned like the
    delivery topics, so a campaign's requests reach the worker that holds its spend), `pacer` its `Pacer` (the
    day's budget under a lifetime total).
    """
    desk = LeaseDesk()
    assigned_at: dict[int, float] = {}  # request partition -> when this worker was given it
    partition_of: dict[str, int] = {}  # campaign -> its request partition
    spec, out = topics.LEASE_REQUESTS, topics.LEASE_GRANTS
    requests = app.topic(spec.name, partitions=spec.partitions, key_serializer="raw", value_serializer="raw",
                         config=spec.config)
    grants = app.topic(out.name, partitions=out.partitions, key_serializer="raw", value_serializer="raw", config=out.config)

    @app.on_partitions_assigned.connect
    async def note_assignment(app: Any, assigned: set, **kwargs: Any) -> None:
        now = time.time()
        for tp in assigned:
            if tp.topic == spec.name and tp.partition not in assigned_at:
                assigned_at[tp.partition] = now

    @app.on_partitions_revoked.connect
    async def note_revocation(app: Any, revoked: set, **kwargs: Any) -> None:
        for tp in revoked:
            if tp.topic == spec.name:
                assigned_at.pop(tp.partition, None)
                desk.drop([cid for cid, p in partition_of.items() if p == tp.partition])

    @app.agent(requests)
    async def grant_leases(stream: Any) -> None:
        # 50 ms: a bidder asks at most every 0.25 s, and a shorter wait wakes the worker for nothing
        async for batch in stream.take_events(1000, within=0.05):
            now = time.time()
            answers: dict[tuple[str, str], dict[str, Any]] = {}
            for event in batch:
                req = parse_request(event.value)
                if req is None:
                    desk.note("malformed")
                    continue
                cid = req["campaign"]
                partition_of[cid] = part = event.message.partition
                hold = now - assigned_at.setdefault(part, now) < HOLD_S
                camp = campaigns.by_id.get(cid)
                budget = pacer.budget_today(camp, req["day"], ledger) if camp is not None else None
                grant = desk.answer(req, camp, ledger.day_totals(cid, req["day"])["spend"], now, hold, budget)
                if grant is not None:
                    answers[(grant["bidder"], cid)] = grant  # the last answer per bidder and campaign says it all
            for grant in answers.values():
                await grants.send(key=grant["bidder"].encode(), value=orjson.dumps(grant))

    return desk
