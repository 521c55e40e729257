"""The embedded bus: Kafka's place in a single process, for `make demo` and unit tests.

Events are delivered in order to the same processors the Faust agents use:
delivery and attribution, learning, pacing.  Model snapshots and pacing
states go back to the engine the way bidders receive them from the topics.
When the engine bids on budget leases (`EngineConfig.lease_slice`), the bus
is also the granter: it tops the bidder's lease up from each campaign's
remaining daily budget as billing comes in.

What the Faust worker refuses, the bus refuses too (`dead_letter` records in
`deadletters`): an event that fails its check, one keyed by another campaign,
one dated more than FUTURE_S ahead of the clock or SEEN_TTL_S before the newest
event, and one whose processing fails.  Like the worker it follows the campaign
config in force (the engine's), forgets event ids past the dedup horizon, learns
each bid's example once, and publishes a model only when the learner has
learned something since the last.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from bidder.engine import BidEngine
from bidder.forecast import TrafficForecast
from bidder.lease import LeaseGranter
from models.snapshot import ModelSnapshot
from streams.events import FORGET_EVERY_S, FUTURE_S, SEEN_TTL_S, EventError, check_event, dead_letter, env_salt
from streams.processor import Campaigns, DeliveryProcessor, Learner, Pacer

log = logging.getLogger("streambid.bus")


class EmbeddedBus:
    """An in-process event bus that runs the streams side synchronously."""

    def __init__(self, engine: BidEngine, click_window_ms: int | None = None, publish_model: bool = True) -> None:
        self.engine = engine
        self.publish_model = publish_model
        self.campaigns = Campaigns()
        self.campaigns.by_id = dict(engine.index.campaigns)
        self.totals: dict[str, Any] = {}
        self.delivery = DeliveryProcessor(self.campaigns, self.totals, {}, {}, click_window_ms)
        self.learner = Learner()
        self.forecast = TrafficForecast()
        self.pacer = Pacer(self.campaigns, self.forecast)
        self.counts: dict[str, int] = defaultdict(int)
        self.deadletters: list[dict[str, Any]] = []
        self.granters: dict[tuple[str, str], LeaseGranter] = {}
        self.newest = 0  # the latest event time admitted (ms), from which the dedup horizon counts back
        self._forgotten_at: float | None = None
        self._published_labels = 0  # the learner's example count at the last model published

    def emit(self, kind: str, key: str, event: dict[str, Any]) -> None:
        """The engine's event sink: admit as the worker does, then process at once."""
        try:
            event = self._admitted(kind, key, event)
        except EventError as e:
            self._reject(kind, e.reason, event, e.field)
            return
        self.counts[kind] += 1
        self._follow(event["campaign"])
        if kind == "bids":
            self.pacer.observe_bid(event)
        leased = (kind == "billing" and event["id"] not in self.delivery.ledger.seen and event.get("bidder")
                  and event["campaign"] in self.campaigns.by_id)  # a campaign its engine never knew has no lease
        try:
            examples = self.delivery.handle(kind, event)
        except EventError as e:
            self._reject(kind, e.reason, event, e.field)
            return
        except Exception as e:  # as on the worker: a bug costs one event (dead-lettered), not the run
            log.exception("event %s could not be applied", event.get("id"))
            self._reject(kind, f"internal: {type(e).__name__}", event)
            return
        if leased:  # a bill counted for the first time: its bidder's lease has spent it
            day = event.get("day") or self.campaigns.day_of(event["campaign"], event["ts"])
            self._granter(event["campaign"], day).bill(event["bidder"], event["cost"])
        for ex in examples:
            self._learn(ex.to_event(event["ts"]))

    def _admitted(self, kind: str, key: str, raw: Any) -> dict[str, Any]:
        """The checked event; EventError for one the worker would refuse (streams.app `admitted`).

        Beyond the event's own check: the key must be its campaign, and its time neither more than FUTURE_S ahead
        of the clock (it would move the dedup horizon past every event, and the traffic forecast to its day, where
        every later request would be a straggler) nor SEEN_TTL_S before the newest (its id may be forgotten).
        """
        ev = check_event(kind, raw)
        if key != ev["campaign"]:
            raise EventError("key_mismatch", "the record's key must be its campaign", "campaign")
        ts = ev["ts"]
        if ts > self.newest:
            if ts > int(self.engine.clock() * 1000) + FUTURE_S * 1000:
                raise EventError("from_the_future", f"event time more than {FUTURE_S // 3600} h ahead", "ts")
            self.newest = ts
        elif ts < self.newest - SEEN_TTL_S * 1000:
            raise EventError("older_than_dedup_horizon", f"{SEEN_TTL_S // 86400} days before the newest event", "ts")
        return ev

    def _learn(self, example: dict[str, Any]) -> None:
        """Learn an example unless one of the same bid was learned already, as the worker's learner does: a bid's
        events replayed after its attribution entry was forgotten make a second example, which may flip its label."""
        if self.learner.is_new(example):
            self.learner.learn(example)

    def _reject(self, kind: str, reason: str, event: Any, field: str = "") -> None:
        ts = event.get("ts") if isinstance(event, dict) else None
        self.deadletters.append(dead_letter(kind, reason, event, ts if type(ts) is int else 0, env_salt(), field))

    def _follow(self, campaign: str) -> None:
        """The engine's version of the event's campaign (added or changed since the last tick): its time zone dates
        the event and its value per click values it, as the worker's config follower has it by then."""
        camp = self.engine.index.campaigns.get(campaign)
        if camp is not None and self.campaigns.by_id.get(campaign) is not camp:
            self.campaigns.by_id[campaign] = camp

    def tick(self, now: float) -> None:
        """Periodic work: follow the campaign config, close attribution windows, forget ids past the dedup horizon,
        publish the model (when it learned since) and pacing to the engine, top up the leases."""
        # campaigns the engine dropped stay known, as on the worker: their late events are still dated and valued
        self.campaigns.by_id.update(self.engine.index.campaigns)
        for ex in self.delivery.expire(int(now * 1000)):
            self._learn(ex.to_event(int(now * 1000)))
        if self._forgotten_at is None or now - self._forgotten_at >= FORGET_EVERY_S:
            self._forgotten_at = now
            self.delivery.ledger.forget_before(self.newest - SEEN_TTL_S * 1000)
        labels = self.learner.labels[0] + self.learner.labels[1]
        if self.publish_model and labels != self._published_labels:
            self._published_labels = labels
            self.engine.set_model(ModelSnapshot.from_bytes(self.learner.snapshot_bytes()))
        for state in self.pacer.update(now, self.delivery.ledger):
            self.engine.set_pacing(state)
        if self.engine.cfg.lease_slice:
            self._grant(now)

    def _granter(self, campaign: str, day: str) -> LeaseGranter:
        budget = self.pacer.budget_today(self.campaigns.by_id[campaign], day, self.delivery.ledger)
        g = self.granters.get((campaign, day))
        if g is None:
            g = self.granters[(campaign, day)] = LeaseGranter(budget, min_slice=max(self.engine.cfg.lease_slice, 1),
                                                              frac=0.05)
        g.set_budget(budget)
        return g

    def _grant(self, now: float) -> None:
        """Top up the engine's lease of every campaign whose lease is missing, from another day, or half spent."""
        bidder = self.engine.cfg.bidder_id
        for camp in self.campaigns.by_id.values():
            day = self.campaigns.fraction_of_day(camp, now)[0]
            g = self._granter(camp.id, day)
            lease = self.engine.leases.get(camp.id)
            if lease is None or lease.day != day or lease.remaining_micros < g.slice_size() // 2:
                self.engine.grant(camp.id, day, g.request(bidder))
