"""The bidder's side of budget leases on Kafka: when to ask the streams side for a top-up, and which grants to take.

The engine bids only within its leases (`EngineConfig.lease_slice`); this
object keeps them topped up.  It is polled off the bid path (`due` returns the
requests to send) and fed the grants read from the grants topic (`apply`).
Requests say what this bidder holds (grant, settled spend and bids in
flight), so a worker that takes a campaign over learns it, also of a campaign
that may not bid now (paused, outside its hours) but may again today on what it
holds; grants are cumulative, so a lost or
repeated message costs nothing but a second request.  With no grants coming
(Kafka or the streams side gone) the engine goes on bidding on what it holds
and stops when that is spent.  No I/O here.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from bidder.lease import BudgetLease

ASK_EVERY_S = 0.25  # at most one request per campaign this often while its lease is short (a lost one is asked again)
# ...and, while its requests go unanswered, half as often after each: a worker that fell behind (a restart, a stall)
# must be able to catch up, where requests at the full rate from every bidder would outrun it for good
ASK_BACKOFF_MAX_S = 5.0
KEEPALIVE_S = 5.0  # a campaign's state is reported this often even when its lease is full (a worker taking over waits for it)


class LeasedEngine(Protocol):  # what of bidder.engine.BidEngine this needs
    leases: dict[str, BudgetLease]
    index: Any
    cfg: Any

    def live(self) -> frozenset[str]: ...
    def campaign_day(self, campaign: Any, now: float) -> str: ...
    def grant(self, campaign: str, day: str, granted_micros: int) -> None: ...


class LeaseClient:
    """Decides the lease requests of one engine and applies the grants addressed to it."""

    def __init__(self, engine: LeasedEngine, frac: float) -> None:
        self.engine = engine
        self.frac = frac  # share of the campaign's remaining daily budget asked for as one slice
        self.asked: dict[str, float] = {}  # campaign -> wall time of the last request
        self.wait: dict[str, float] = {}  # campaign -> seconds before asking again while short (doubles unanswered)
        self.slices: dict[str, int] = {}  # campaign -> slice size the granter last reported
        self.requests = 0
        self.grants = 0
        self.ignored = 0

    def needs(self, lease: BudgetLease | None, day: str, campaign: str) -> bool:
        """A lease is short when missing, from another day, or below half a slice."""
        if lease is None or lease.day != day:
            return True
        return lease.remaining_micros < self.slices.get(campaign, 0) // 2 or lease.granted_micros == 0

    def due(self, wall_now: float, engine_now: float) -> list[dict[str, Any]]:
        """The requests to send now (at most one per campaign), for every campaign that may bid."""
        engine, out = self.engine, []
        days: dict[str, str] = {}  # time zone -> its day now: thousands of campaigns share a few zones
        live = engine.live()
        for cid in live:
            camp = engine.index.campaigns.get(cid)
            if camp is None:
                continue
            day = days.get(camp.timezone)
            if day is None:
                day = days[camp.timezone] = engine.campaign_day(camp, engine_now)
            lease = engine.leases.get(cid)
            since = wall_now - self.asked.get(cid, -math.inf)
            wait = self.wait.get(cid, ASK_EVERY_S)
            if since >= wait and self.needs(lease, day, cid):
                # short: asked again after ASK_EVERY_S, then ever more slowly until a grant answers
                self.wait[cid] = min(wait * 2.0, ASK_BACKOFF_MAX_S) if cid in self.wait else ASK_EVERY_S
            elif since >= KEEPALIVE_S:
                self.wait.pop(cid, None)  # a report of a full lease: the next short one is asked for at once
            else:
                continue
            self.asked[cid] = wall_now
            out.append(self.request_doc(cid, day, lease, wall_now))
        out += self._idle_reports(live, days, wall_now, engine_now)
        self.requests += len(out)
        return out

    def _idle_reports(self, live: frozenset[str], days: dict[str, str], wall_now: float,
                      engine_now: float) -> list[dict[str, Any]]:
        """Every KEEPALIVE_S, a report for each campaign that may not bid now but holds a lease of today (it may
        bid on it again today) or bids in flight (billed today): a worker that took the campaign over meanwhile
        must count them before it grants that budget to others."""
        engine, out = self.engine, []
        for cid in engine.leases.keys() - live:
            if wall_now - self.asked.get(cid, -math.inf) < KEEPALIVE_S:
                continue
            camp, lease = engine.index.campaigns.get(cid), engine.leases[cid]
            if camp is None:
                continue
            day = days.get(camp.timezone)
            if day is None:
                day = days[camp.timezone] = engine.campaign_day(camp, engine_now)
            if lease.day == day or lease.reserved_micros:
                self.asked[cid] = wall_now
                out.append(self.request_doc(cid, day, lease, wall_now))
        return out

    def request_doc(self, campaign: str, day: str, lease: BudgetLease | None, wall_now: float) -> dict[str, Any]:
        """`reserved`: the bids in flight, of whatever day's lease: each is billed on the day its bill comes, today."""
        current = lease if lease is not None and lease.day == day else None
        return {"v": 1, "bidder": self.engine.cfg.bidder_id, "campaign": campaign, "day": day,
                "granted": current.granted_micros if current else 0, "spent": current.spent_micros if current else 0,
                "reserved": lease.reserved_micros if lease is not None else 0, "frac": self.frac, "ts": wall_now}

    def apply(self, doc: dict[str, Any], engine_now: float) -> bool:
        """Take a grant if it is for this bidder and the campaign's current day; False when it is not."""
        engine = self.engine
        if doc.get("bidder") != engine.cfg.bidder_id:
            return False
        cid, day, granted = doc.get("campaign"), doc.get("day"), doc.get("granted")
        camp = engine.index.campaigns.get(cid) if type(cid) is str else None
        if cid is None or camp is None or type(granted) is not int or day != engine.campaign_day(camp, engine_now):
            self.ignored += 1  # a campaign gone since, or a grant for a day over (a new day starts a new lease)
            return False
        if granted > camp.daily_budget:  # no granter gives one bidder more than the day's budget: a bad message
            self.ignored += 1
            return False
        engine.grant(cid, day, granted)
        self.wait.pop(cid, None)  # answered: the next short lease is asked for at the full rate
        if isinstance(doc.get("slice"), int):
            self.slices[cid] = doc["slice"]
        self.grants += 1
        return True

    def status(self) -> dict[str, Any]:
        """Per campaign: day, granted, spent, reserved (micros); for /status."""
        return {cid: {"day": lease.day, "granted": lease.granted_micros, "spent": lease.spent_micros,
                      "reserved": lease.reserved_micros, "slice": self.slices.get(cid, 0)}
                for cid, lease in self.engine.leases.items()}
