"""The embedded bus: Kafka's place in a single process, for `make demo` and unit tests.

Events are delivered in order to the same processors the Faust agents use:
delivery and attribution, learning, pacing.  Model snapshots and pacing
states go back to the engine the way bidders receive them from the topics.
When the engine bids on budget leases (`EngineConfig.lease_slice`), the bus
is also the granter: it tops the bidder's lease up from each campaign's
remaining daily budget as billing comes in.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bidder.engine import BidEngine
from bidder.forecast import TrafficForecast
from bidder.lease import LeaseGranter
from models.snapshot import ModelSnapshot
from streams.events import EventError, check_event, dead_letter, env_salt
from streams.processor import Campaigns, DeliveryProcessor, Learner, Pacer


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

    def emit(self, kind: str, key: str, event: dict[str, Any]) -> None:
        """The engine's event sink: validate, then process at once."""
        try:
            event = check_event(kind, event)
        except EventError as e:
            ts = event.get("ts") if isinstance(event, dict) else None
            self.deadletters.append(dead_letter(kind, e.reason, event, ts if type(ts) is int else 0, env_salt(), e.field))
            return
        self.counts[kind] += 1
        if kind == "bids":
            self.pacer.observe_bid(event)
        leased = (kind == "billing" and event["id"] not in self.delivery.ledger.seen and event.get("bidder")
                  and event["campaign"] in self.campaigns.by_id)  # a campaign this bus was not given has no lease
        try:
            examples = self.delivery.handle(kind, event)
        except EventError as e:
            self.deadletters.append(dead_letter(kind, e.reason, event, event["ts"], env_salt(), e.field))
            return
        if leased:  # a bill counted for the first time: its bidder's lease has spent it
            day = event.get("day") or self.campaigns.day_of(event["campaign"], event["ts"])
            self._granter(event["campaign"], day).bill(event["bidder"], event["cost"])
        for ex in examples:
            self.learner.learn(ex.to_event(event["ts"]))

    def tick(self, now: float) -> None:
        """Periodic work: close attribution windows, publish the model and pacing to the engine."""
        for ex in self.delivery.expire(int(now * 1000)):
            self.learner.learn(ex.to_event(int(now * 1000)))
        if self.publish_model:
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
