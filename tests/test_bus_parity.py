"""The embedded bus (`make demo`) against the Kafka worker's path: the same events give the same figures.

The worker's path is replayed here without Kafka, as `streams.app.create_app` wires it: each record decoded and
admitted (`admitted`), the bid log fed to the traffic forecast, `DeliveryProcessor.handle` with the record's
position, examples through the examples topic into the learner (dedup by id), and a tick that closes click
windows, forgets ids past the dedup horizon, publishes a model when labels changed, and steps the pacer.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import MutableMapping
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from bidder.campaigns import Campaign, parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.forecast import TrafficForecast
from models.snapshot import ModelSnapshot
from streams import app as worker_app
from streams.bus import EmbeddedBus
from streams.events import EventError, check_event, make_event
from streams.processor import Campaigns, DeliveryProcessor, Learner, Pacer
from tests.helpers import campaign

T0 = 1_780_000_000_000  # 2026-05-28 20:26:40 UTC, in ms: each half of the stream crosses midnight in UTC and New York
MIN = 60_000
HOUR = 3_600_000
DAY_MS = 86_400_000


def campaigns() -> list[Campaign]:
    return [
        parse_campaign(campaign(id="c1")),
        parse_campaign(campaign(id="c2", flight={"start": "2020-01-01", "end": "2099-12-31",
                                                 "timezone": "America/New_York"},
                                goal={"type": "cpc", "value_per_click": 3.5, "max_bid_cpm": 20.0})),
        parse_campaign(campaign(id="c3", flight={"start": "2020-01-01", "end": "2099-12-31", "timezone": "Asia/Tokyo"},
                                budget={"daily": 0.05})),
    ]


class Recording(Learner):
    """A learner that keeps the examples it learned, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.learned: list[tuple[str, int, str, tuple[int, ...]]] = []

    def learn(self, event: dict[str, Any]) -> float:
        self.learned.append((event["id"], event["label"], event["campaign"], tuple(event["features"])))
        return super().learn(event)


class Worker:
    """The Faust worker's handling of delivery records, examples and ticks (streams.app), on plain dicts."""

    def __init__(self, camps: list[Campaign], clock: list[float]) -> None:
        self.clock = clock
        self.campaigns = Campaigns()
        self.campaigns.by_id.update({c.id: c for c in camps})
        self.totals: dict[str, Any] = {}
        self.seen: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}
        self.delivery = DeliveryProcessor(self.campaigns, self.totals, self.seen, self.pending)
        self.learner = Recording()
        self.pacer = Pacer(self.campaigns, TrafficForecast())
        self.newest = 0
        self.offsets: dict[str, int] = {}
        self.deadletters: list[tuple[str, str, str]] = []
        self.published_labels = 0
        self.model_version = 0
        self.forgotten_at: float | None = None
        self.states: dict[str, Any] = {}

    def admitted(self, kind: str, key: bytes, value: bytes, latest_ok: int) -> dict[str, Any]:
        ev = check_event(kind, value)
        if key != ev["campaign"].encode():
            raise EventError("key_mismatch", "", "campaign")
        ts = ev["ts"]
        if ts > self.newest:
            if ts > latest_ok:
                raise EventError("from_the_future", "", "ts")
            self.newest = ts
        elif ts < self.newest - worker_app.SEEN_TTL_S * 1000:
            raise EventError("older_than_dedup_horizon", "", "ts")
        return ev

    def deliver(self, kind: str, key: str, event: Any) -> None:
        source = f"streambid.{kind}:0"
        offset = self.offsets[source] = self.offsets.get(source, -1) + 1
        latest_ok = int(self.clock[0] * 1000) + worker_app.FUTURE_S * 1000
        try:
            ev = self.admitted(kind, key.encode(), orjson.dumps(event), latest_ok)
        except EventError as e:
            self.deadletters.append((kind, e.reason, e.field))
            return
        if kind == "bids":
            self.pacer.observe_bid(ev)
        try:
            examples = self.delivery.handle(kind, ev, (source, offset))
        except EventError as e:
            self.deadletters.append((kind, e.reason, e.field))
            return
        for ex in examples:
            self.learn(orjson.dumps(ex.to_event(ev["ts"])))

    def learn(self, value: bytes) -> None:
        ev = check_event("examples", value)
        if self.learner.is_new(ev):
            self.learner.learn(ev)

    def tick(self, now: float) -> None:
        now_ms = int(now * 1000)
        if self.forgotten_at is None or now - self.forgotten_at >= worker_app.FORGET_EVERY_S:
            self.forgotten_at = now
            self.delivery.ledger.forget_before(self.newest - worker_app.SEEN_TTL_S * 1000)
        for ex in self.delivery.expire(now_ms, lambda bid_id: now_ms):
            self.learn(orjson.dumps(ex.to_event(now_ms)))
        labels = self.learner.labels[0] + self.learner.labels[1]
        if labels != self.published_labels:
            self.published_labels = labels
            self.model_version = ModelSnapshot.from_bytes(self.learner.snapshot_bytes()).version
        self.states = {s.campaign: s for s in self.pacer.update(now, self.delivery.ledger)}


def local_day(camp: Campaign, ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, ZoneInfo(camp.timezone)).date().isoformat()


def random_stream(seed: int, bids: int = 400) -> list[tuple[float, str, str, Any]]:
    """(arrival time s, kind, key, event) in arrival order: a bid's events in their usual order (bid, win or loss,
    bill, impression, click, conversion), delivered mostly at once, some reordered, some hours or days late, some
    twice, and some a worker must refuse."""
    rng = random.Random(seed)
    camps = {c.id: c for c in campaigns()}
    reqs = {"b1": 0, "b2": 0}
    out: list[tuple[float, int, str, str, Any]] = []
    seq = iter(range(10**9))
    t = T0

    def send(kind: str, ev: dict[str, Any], key: str | None = None, sent: int | None = None) -> None:
        r = rng.random()
        # mostly at once; some reordered by minutes, some hours late, and some past the dedup horizon (they arrive
        # in the second half of the stream, which begins four days after the first)
        delay = (rng.randint(0, 5_000) if r < 0.85 else rng.randint(0, 10 * MIN) if r < 0.95
                 else rng.randint(HOUR, 6 * HOUR) if r < 0.99 else rng.randint(4 * DAY_MS + 6 * HOUR, 4 * DAY_MS + 12 * HOUR))
        at = (ev["ts"] if sent is None else sent) + delay
        out.append((at / 1000, next(seq), kind, key or ev["campaign"], ev))
        if rng.random() < 0.06:  # re-sent by its producer
            out.append(((at + rng.randint(0, 2 * HOUR)) / 1000, next(seq), kind, key or ev["campaign"], dict(ev)))

    for i in range(bids):
        t += rng.randint(1_000, 240_000) + (4 * DAY_MS if i == bids // 2 else 0)
        bidder = rng.choice(("b1", "b2"))
        reqs[bidder] += rng.randint(1, 400)
        cid = rng.choice(sorted(camps))
        bid_id = f"{bidder}-{i}"
        common = {"bid_id": bid_id, "campaign": cid}
        bid = make_event("bids", f"bid:{bid_id}", t, **common, creative="cr1", price=rng.randint(100_000, 20_000_000),
                         pctr=0.01, features=[rng.randrange(1 << 18) for _ in range(5)], bidder=bidder,
                         reqs=reqs[bidder])
        if rng.random() < 0.1:
            bid["exp"] = rng.choice((300, 3_600, 7_200))
        send("bids", bid)
        if rng.random() < 0.35:
            send("losses", make_event("losses", f"loss:{bid_id}", t + 80, **common))
            continue
        send("wins", make_event("wins", f"win:{bid_id}", t + 80, **common, price=rng.randint(50_000, 20_000_000)))
        if rng.random() < 0.1:
            continue  # never billed
        billed = t + rng.randint(100, 20 * MIN)
        send("billing", make_event("billing", f"bill:{bid_id}", billed, **common, cost=rng.randint(1, 20_000),
                                   bidder=bidder, day=local_day(camps[cid], billed)))
        send("impressions", make_event("impressions", f"imp:{bid_id}", billed + 10, **common))
        if rng.random() < 0.3:
            clicked = billed + rng.randint(1_000, 45 * MIN)  # some past the 30-minute window
            send("clicks", make_event("clicks", f"click:{bid_id}", clicked, **common))
            if rng.random() < 0.4:
                send("conversions", make_event("conversions", f"conv:{bid_id}", clicked + rng.randint(MIN, 6 * HOUR),
                                               **common, value=rng.randint(0, 5_000_000)))
        elif rng.random() < 0.05:  # view-through
            send("conversions", make_event("conversions", f"conv:{bid_id}", billed + rng.randint(MIN, 3 * HOUR),
                                           **common, value=rng.randint(0, 5_000_000)))
        if rng.random() < 0.12:  # one a worker refuses, of each sort
            bad = rng.randrange(6)
            if bad == 0:
                send("billing", {k: v for k, v in make_event("billing", f"bill:x{i}", billed, **common, cost=5).items()
                                 if k != "cost"})
            elif bad == 1:
                send("clicks", make_event("clicks", f"click:k{i}", billed + 5, **common), key="c9")
            elif bad == 2:
                send("bids", {**bid, "id": f"bid:f{i}", "bid_id": f"f{i}", "ts": t + 3 * DAY_MS,
                              "reqs": reqs[bidder] + 10**6}, sent=t)
            elif bad == 3:
                other = next(c for c in sorted(camps) if c != cid)
                send("impressions", make_event("impressions", f"imp:m{i}", billed + 20, bid_id=bid_id, campaign=other))
            elif bad == 4:
                send("billing", make_event("billing", f"bill:d{i}", billed, **common, cost=7, bidder=bidder,
                                           day="2001-01-01"))
            else:
                send("conversions", make_event("conversions", f"conv:n{i}", billed, **common, value=-3))
    out.sort(key=lambda r: (r[0], r[1]))
    return [(at, kind, key, ev) for at, _, kind, key, ev in out]


def play(stream: list[tuple[float, str, str, Any]]) -> tuple[EmbeddedBus, Worker]:
    camps = campaigns()
    clock = [T0 / 1000]
    engine = BidEngine(EngineConfig(secret=b"s", bidder_id="b1", lease_slice=1000), camps, ModelSnapshot.empty(),
                       sink=lambda *a: None, clock=lambda: clock[0])
    bus = EmbeddedBus(engine)
    bus.learner = Recording()
    worker = Worker(camps, clock)
    next_tick = clock[0]
    for at, kind, key, ev in stream:
        if at >= next_tick:
            clock[0] = at
            bus.tick(at)
            worker.tick(at)
            next_tick = at + 60
            assert_same(bus, worker)
        clock[0] = at
        bus.emit(kind, key, dict(ev))
        worker.deliver(kind, key, dict(ev))
    clock[0] += 2 * 86400
    bus.tick(clock[0])
    worker.tick(clock[0])
    assert_same(bus, worker)
    return bus, worker


def plain(totals: MutableMapping[str, Any]) -> dict[str, Any]:
    return {key: {f: v for f, v in t.items() if f != "wm"} for key, t in totals.items()}


def assert_same(bus: EmbeddedBus, worker: Worker) -> None:
    assert plain(bus.delivery.ledger.totals) == plain(worker.totals)
    assert set(bus.delivery.ledger.seen) == set(worker.seen)
    assert bus.delivery.outcomes == worker.delivery.outcomes
    assert bus.delivery.attribution.pending == worker.pending
    assert isinstance(bus.learner, Recording) and bus.learner.learned == worker.learner.learned
    assert [(d["topic"], d["reason"], d.get("field", "")) for d in bus.deadletters] == worker.deadletters
    assert bus.engine.model.version == worker.model_version
    f, g = bus.forecast, worker.pacer.forecast
    assert g is not None and (f.day, f.today, f.history, f.days) == (g.day, g.today, g.history, g.days)
    published = {cid: (s.day, s.lam, s.spent_today, s.budget_today, s.exhausted) for cid, s in bus.engine.pacing.items()}
    assert published == {cid: (s.day, s.lam, s.spent_today, s.budget_today, s.exhausted)
                         for cid, s in worker.states.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_bus_counts_learns_and_paces_what_the_worker_does_on_the_same_events(seed: int) -> None:
    bus, worker = play(random_stream(seed))
    reasons = {reason for _, reason, _ in worker.deadletters}
    # the stream exercised what it is for: copies, late and early events, and every kind of refusal
    assert {"key_mismatch", "from_the_future", "older_than_dedup_horizon", "campaign_mismatch", "bad_value",
            "missing_field"} <= reasons
    outcomes = worker.delivery.outcomes
    assert outcomes.get("billing:duplicate_event", 0) > 0 and outcomes.get("clicks:late", 0) > 0
    assert outcomes.get("impressions:early", 0) + outcomes.get("clicks:early", 0) > 0
    assert worker.learner.labels[0] > 0 and worker.learner.labels[1] > 0
    assert sum(t["spend"] for t in worker.totals.values()) > 0
    assert bus.forecast.days >= 1  # the stream's first whole day became history on both


def make_bus(lease_slice: int = 0) -> tuple[EmbeddedBus, list[float]]:
    clock = [T0 / 1000]
    engine = BidEngine(EngineConfig(secret=b"s", bidder_id="b1", lease_slice=lease_slice), campaigns(),
                       ModelSnapshot.empty(), sink=lambda *a: None, clock=lambda: clock[0])
    return EmbeddedBus(engine), clock


def bid(n: int, ts: int, reqs: int, campaign: str = "c1") -> dict[str, Any]:
    return make_event("bids", f"bid:b1-{n}", ts, bid_id=f"b1-{n}", campaign=campaign, creative="cr1", price=1_000_000,
                      pctr=0.01, features=[1, 2, 3], bidder="b1", reqs=reqs)


def bill(name: str, ts: int, cost: int, day: str) -> dict[str, Any]:
    return make_event("billing", f"bill:{name}", ts, bid_id=name, campaign="c1", cost=cost, bidder="b1", day=day)


def reasons(bus: EmbeddedBus) -> list[str]:
    return [d["reason"] for d in bus.deadletters]


def test_an_event_dated_days_ahead_is_refused_and_leaves_the_traffic_forecast_on_today() -> None:
    """One bid logged by a bidder whose clock ran two days ahead moved the bus's forecast to that day: every request
    of today after it was a straggler, so today never became the history the next day's plans follow."""
    bus, _ = make_bus()
    today = dt.datetime.fromtimestamp(T0 / 1000, dt.UTC).date().isoformat()
    ahead = T0 + 2 * DAY_MS
    bus.emit("bids", "c1", bid(1, T0, 100))
    bus.emit("bids", "c1", bid(2, ahead, 150))
    bus.emit("billing", "c1", bill("b1-2", ahead, 9_000, local_day(campaigns()[0], ahead)))
    bus.emit("bids", "c1", bid(3, T0 + MIN, 160))
    assert reasons(bus) == ["from_the_future", "from_the_future"]
    assert bus.forecast.day == T0 // DAY_MS and sum(bus.forecast.today) == 60
    assert bus.delivery.ledger.day_totals("c1", local_day(campaigns()[0], ahead))["spend"] == 0
    assert bus.delivery.outcomes == {"bids:matched": 2}
    bus.emit("billing", "c1", bill("b1-3", T0 + MIN, 4_000, today))  # the clock moved on: the next one counts
    assert bus.delivery.ledger.day_totals("c1", today)["spend"] == 4_000


def test_an_event_past_the_dedup_horizon_is_refused_and_the_ids_before_it_are_forgotten() -> None:
    bus, clock = make_bus()
    c1 = campaigns()[0]
    later = T0 + 4 * DAY_MS
    bus.emit("billing", "c1", bill("a", T0, 5, local_day(c1, T0)))
    clock[0] = later / 1000
    bus.emit("billing", "c1", bill("b", later, 7, local_day(c1, later)))
    bus.emit("billing", "c1", bill("c", T0 + MIN, 11, local_day(c1, T0)))  # four days late: its copies could count
    bus.emit("billing", "c1", bill("a", T0, 5, local_day(c1, T0)))
    assert reasons(bus) == ["older_than_dedup_horizon"] * 2
    assert bus.delivery.ledger.day_totals("c1", local_day(c1, T0))["spend"] == 5
    bus.tick(clock[0])
    assert set(bus.delivery.ledger.seen) == {"bill:b"}  # the store of ids does not grow without end


def test_a_record_keyed_by_another_campaign_is_refused() -> None:
    bus, _ = make_bus()
    click = make_event("clicks", "click:x", T0, bid_id="x", campaign="c1")
    bus.emit("clicks", "c2", click)
    assert reasons(bus) == ["key_mismatch"] and bus.delivery.ledger.totals == {} and bus.delivery.outcomes == {}
    bus.emit("clicks", "c1", click)
    assert sum(t["clicks"] for t in bus.delivery.ledger.totals.values()) == 1


def test_an_event_whose_processing_fails_is_dead_lettered_and_the_events_after_it_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bus, _ = make_bus()
    ledger = bus.delivery.ledger
    real = ledger._add

    def failing(kind: str, event: dict[str, Any], t: dict[str, int]) -> bool:
        if event["id"] == "bill:boom":
            raise RuntimeError("a bug")
        return real(kind, event, t)

    monkeypatch.setattr(ledger, "_add", failing)
    day = local_day(campaigns()[0], T0)
    bus.emit("billing", "c1", bill("boom", T0, 5, day))
    bus.emit("billing", "c1", bill("fine", T0, 7, day))
    assert reasons(bus) == ["internal: RuntimeError"]
    assert ledger.day_totals("c1", day)["spend"] == 7


def test_a_model_is_published_only_when_the_learner_learned_since_the_last() -> None:
    """The worker publishes a snapshot when the learner's labels changed; the bus published one at every tick, each
    a new version, and the engine rebuilt its scoring tables (and drew again) for a model that had not moved."""
    bus, _ = make_bus()
    start = bus.engine.model
    bus.tick(T0 / 1000)
    bus.tick(T0 / 1000 + 60)
    assert bus.engine.model is start and bus.learner.version == 0
    bus.emit("bids", "c1", bid(1, T0, 10))
    bus.emit("impressions", "c1", make_event("impressions", "imp:b1-1", T0 + 100, bid_id="b1-1", campaign="c1"))
    bus.emit("clicks", "c1", make_event("clicks", "click:b1-1", T0 + 200, bid_id="b1-1", campaign="c1"))
    bus.tick(T0 / 1000 + 120)
    bus.tick(T0 / 1000 + 180)
    assert bus.learner.labels == {0: 0, 1: 1} and bus.engine.model.version == 1 == bus.learner.version


def test_the_bus_follows_the_campaigns_the_engine_bids_with() -> None:
    """A budget lowered, or a campaign added, after the bus was built: the bus paced and leased on the old budget
    (the bidder could spend the old one), and left the new campaign unpaced, without a lease (so it never bid),
    its clicks valued at nothing and dated in UTC."""
    bus, _ = make_bus(lease_slice=1000)
    engine, now = bus.engine, T0 / 1000
    bus.tick(now)
    day = local_day(campaigns()[0], T0)
    assert engine.pacing["c1"].budget_today == 100_000_000
    engine.upsert_campaigns([parse_campaign(campaign(id="c1", budget={"daily": 10.0, "total": 1000.0}))])
    tokyo = {"start": "2020-01-01", "end": "2099-12-31", "timezone": "Asia/Tokyo"}
    engine.upsert_campaigns([parse_campaign(campaign(id="c4", flight=tokyo,
                                                     goal={"type": "cpc", "value_per_click": 4.0, "max_bid_cpm": 20.0}))])
    new_day = local_day(engine.index.campaigns["c4"], T0)
    assert new_day != day
    bus.emit("clicks", "c4", make_event("clicks", "click:n1", T0, bid_id="n1", campaign="c4"))
    assert bus.delivery.ledger.day_totals("c4", new_day)["value"] == 4_000_000
    bus.tick(now + 60)
    assert engine.pacing["c1"].budget_today == 10_000_000 and bus.granters[("c1", day)].budget == 10_000_000
    assert engine.pacing["c4"].day == new_day and engine.leases["c4"].day == new_day
    assert engine.leases["c4"].granted_micros > 0


def test_a_bid_replayed_after_its_entry_was_forgotten_is_not_learned_twice() -> None:
    """A bidder's spilled events replayed a week later, with no newer traffic: the bid's attribution entry is gone,
    so its replayed bid and impression make a second example of it, a negative after the positive; the worker's
    learner drops it by id, and so does the bus."""
    bus, clock = make_bus()
    events = [("bids", bid(1, T0, 10)),
              ("impressions", make_event("impressions", "imp:b1-1", T0 + 100, bid_id="b1-1", campaign="c1")),
              ("clicks", make_event("clicks", "click:b1-1", T0 + 200, bid_id="b1-1", campaign="c1"))]
    for kind, ev in events:
        bus.emit(kind, "c1", ev)
    clock[0] = T0 / 1000 + 8 * 86400
    bus.tick(clock[0])  # past the conversion window: the bid's entry is forgotten
    assert "b1-1" not in bus.delivery.attribution.pending
    for kind, ev in events[:2]:
        bus.emit(kind, "c1", dict(ev))
    bus.tick(clock[0] + 3600)  # its new click window closes without a click
    assert bus.learner.labels == {0: 0, 1: 1} and bus.learner.duplicates == 1
