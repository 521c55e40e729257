"""The bid picked for each impression against a brute-force reference: every eligible candidate priced with the
canonical pricing functions, the highest price taken.

The engine orders candidates by an upper bound on their paced value and stops pricing early (branch and bound,
with cuts for first-price shading); whatever it skips, the price it bids must be the highest any candidate could
bid, every candidate's bound must be at least its paced value, and no bid may leave its floor or max bid.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bidder.engine
from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig, _Held
from bidder.frequency import cap_buckets
from bidder.landscape import WinRateModel
from bidder.openrtb import BadRequest, BidRequest, Imp, parse_request
from bidder.pacing import MAX_LAMBDA, PacingState, conversion_rate
from bidder.pricing import bid_price, impression_value_cpm, paced_value
from bidder.scoring import SlotTables
from models.features import candidate_features, hash_cross, hash_feature, request_features
from models.prior import ClickCounts, PriorConfig
from models.snapshot import ModelSnapshot

NOW = 1_780_000_000.0
CURRENCIES = ("USD", "EUR")
DEALS = ("d1", "d2", "d3")
DOMAINS = ("news.example", "a.io", "sport.example")
USER = "user-7"


def _vast(seconds: int) -> str:
    return ('<VAST version="4.0"><Ad id="a"><InLine><AdSystem>s</AdSystem><AdTitle>t</AdTitle><Creatives><Creative>'
            f'<Linear><Duration>00:00:{seconds:02d}</Duration><MediaFiles><MediaFile type="video/mp4">'
            'https://x.example/a.mp4</MediaFile></MediaFiles></Linear></Creative></Creatives></InLine></Ad></VAST>')


def _money(rng: random.Random, choices: tuple[float, ...], lo: float, hi: float) -> float:
    """A round amount (so candidates tie on it) or any amount in [lo, hi], whole micros."""
    return rng.choice(choices) if rng.random() < 0.4 else round(rng.uniform(lo, hi), 6)


def _campaign(rng: random.Random, i: int, currencies: tuple[str, ...]) -> dict[str, Any]:
    cpa = rng.random() < 0.3
    rich = 100.0 if rng.random() < 0.1 else 1.0  # values and max bids where heavy landscapes stop being monotone
    max_bid = round(_money(rng, (1.0, 2.0, 5.0), 0.05, 12.0) * rich, 6)
    if rich > 1 and rng.random() < 0.5:  # capped one micro either side of where the heavy landscape's shading falls
        max_bid = rng.choice((150.881693, 150.881694))
    goal: dict[str, Any] = {"type": "cpa" if cpa else "cpc", "max_bid_cpm": max_bid}
    if cpa:
        goal["value_per_conversion"] = round(_money(rng, (20.0, 50.0), 1.0, 400.0) * rich, 6)
    else:
        goal["value_per_click"] = round(_money(rng, (0.5, 1.0, 2.0), 0.01, 20.0) * rich, 6)
    creatives = []
    for k in range(rng.randint(1, 3)):
        if rng.random() < 0.6:
            creatives.append({"id": f"b{k}", "type": "banner", "w": 300, "h": 250, "cat": ["IAB3"], "adm": "<img>"})
        else:  # a VAST tag URL states no length: floors per second cannot price it
            adm = _vast(rng.choice((5, 15, 30, 45))) if rng.random() < 0.8 else "https://ads.example/vast.xml"
            creatives.append({"id": f"v{k}", "type": "video", "w": 640, "h": 480, "cat": ["IAB3"], "adm": adm})
    targeting: dict[str, Any] = {"countries": ["USA"]}
    if rng.random() < 0.4:
        targeting["deals"] = sorted(rng.sample(DEALS, rng.randint(1, 2)))
        targeting["deal_only"] = rng.random() < 0.3
    doc: dict[str, Any] = {
        "id": f"c{i:03d}", "advertiser": f"adv{i % 5}.example", "currency": rng.choice(currencies),
        "budget": {"daily": 1000.0, "total": 100000.0},
        "flight": {"start": "2020-01-01", "end": "2099-12-31", "timezone": rng.choice(("UTC", "Asia/Tokyo"))},
        "goal": goal, "targeting": targeting, "creatives": creatives,
    }
    if rng.random() < 0.25:
        per_day = rng.randint(1, 3)
        doc["frequency_cap"] = {"per_hour": rng.choice((0, 1, per_day)), "per_day": per_day}
    return doc


def _model(docs: list[dict], rng: random.Random) -> ModelSnapshot:
    """Weights on every feature a candidate brings and some request features, a calibration that is not the
    identity, and impressions for some creatives: exploring ones, blended ones, trained ones."""
    counts = ClickCounts(PriorConfig(blend_impressions=rng.choice((0.0, 50.0, 100.0))))
    weights: dict[int, float] = {}
    for d in docs:
        weights[hash_feature("campaign", d["id"])] = rng.gauss(0, 1.0)
        for cr in d["creatives"]:
            name = f"{d['id']}/{cr['id']}"
            weights[hash_feature("creative", name)] = rng.gauss(0, 0.8)
            for dom in DOMAINS:
                if rng.random() < 0.5:
                    weights[hash_cross("creative", name, "domain", dom)] = rng.gauss(0, 1.0)
            for h in range(24):
                if rng.random() < 0.2:
                    weights[hash_cross("creative", name, "hour", h)] = rng.gauss(0, 1.0)
            n = rng.choice((0, 10, 60, 150, 400))
            if n:
                clicks = rng.randint(0, n // 10)
                counts.clicks += clicks
                counts.impressions += n
                camp = counts.campaigns.setdefault(d["id"], [0, 0])
                camp[0] += clicks
                camp[1] += n
                counts.creatives[(d["id"], cr["id"])] = [clicks, n]
    for dom in DOMAINS:
        weights[hash_feature("domain", dom)] = rng.gauss(0, 0.5)
    calibration = (rng.choice((1.0, rng.uniform(0.2, 3.0))), rng.uniform(-1.0, 1.0))
    return ModelSnapshot(version=1, weights=weights, bias=rng.uniform(-5.0, -2.0), counts=counts,
                         calibration=calibration, logit_shift=rng.uniform(-0.5, 0.5))


def _landscape(rng: random.Random) -> WinRateModel:
    """Fine or coarse market prices (coarse ones make shading optima tie), some wins known only as bounds; or a
    landscape of hundreds of millions of prices, on which rounding lets the shaded bid fall as the value rises."""
    if rng.random() < 0.15:
        heavy = {9_426_163: 141_455_529, 9_426_164: 1, 1_150_881_693: 243_672_114}
        heavy.update({rng.randrange(1, 200) * 50_000: rng.choice((1, 10**8)) for _ in range(rng.randint(0, 6))})
        return WinRateModel(heavy).frozen_copy()
    step = rng.choice((10_000, 250_000))
    land = WinRateModel()
    for _ in range(rng.randint(1, 400)):
        land.add(max(int(rng.lognormvariate(14.0, 0.8)) // step * step, 0))
    for _ in range(rng.choice((0, 0, 50))):
        land.add_at_most(int(rng.lognormvariate(14.2, 0.8)) // step * step)
    return land.frozen_copy()


def _deal(rng: random.Random, did: str) -> dict[str, Any]:
    d: dict[str, Any] = {"id": did}
    r = rng.random()
    if r < 0.7:
        d["bidfloor"] = rng.choice((0.0, 0.3, 1.0, 2.5, rng.uniform(0, 4)))
        d["bidfloorcur"] = rng.choice(("USD", "USD", "EUR"))
    elif r < 0.85:
        d["durfloors"] = [{"maxdur": 20, "bidfloor": rng.uniform(0, 3)}, {"mindur": 21, "bidfloor": rng.uniform(0, 5)}]
    at = rng.choice((None, 1, 2, 3, 3, 500))
    if at is not None:
        d["at"] = at
    return d


def _imp(rng: random.Random, n: int) -> dict[str, Any]:
    imp: dict[str, Any] = {"id": str(n)}
    kinds = rng.choice((("banner",), ("video",), ("banner", "video")))
    if "banner" in kinds:
        imp["banner"] = {"w": 300, "h": 250}
    if "video" in kinds:
        video: dict[str, Any] = {"w": 640, "h": 480}
        r = rng.random()
        if r < 0.25:
            video["durfloors"] = [{"maxdur": 15, "bidfloor": rng.uniform(0, 3)},
                                  {"mindur": 10, "maxdur": 40, "bidfloor": rng.uniform(0, 4)}]
        elif r < 0.35:
            video["mincpmpersec"] = rng.uniform(0.0, 0.15)
        imp["video"] = video
    if rng.random() < 0.6:
        imp["bidfloor"] = rng.choice((0.0, 0.05, 0.5, 1.0, 2.0, rng.uniform(0, 5)))
        imp["bidfloorcur"] = rng.choice(CURRENCIES)
    if rng.random() < 0.35:
        imp["pmp"] = {"private_auction": int(rng.random() < 0.3),
                      "deals": [_deal(rng, did) for did in rng.sample(DEALS, rng.randint(1, 3))]}
    return imp


def _request(rng: random.Random, n: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"r{n}", "imp": [_imp(rng, k) for k in range(rng.choice((1, 1, 2, 3, 4)))],
        "site": {"id": "s1", "domain": rng.choice(DOMAINS), "publisher": {"id": "p1"}},
        "device": {"ua": "Mozilla/5.0", "ip": "203.0.113.7", "devicetype": 2, "os": "Windows",
                   "geo": {"country": "USA", "utcoffset": rng.choice((-480, 0, 330))}},
        "user": {"id": USER}, "at": rng.choice((1, 1, 2)), "tmax": 150,
    }
    cur = rng.choice((["USD"], ["EUR"], ["USD", "EUR"], ["EUR", "USD"], None))
    if cur is not None:
        doc["cur"] = cur
    return doc


@dataclass
class World:
    engine: BidEngine
    requests: list[BidRequest]
    changes: dict[int, list[Callable[[], None]]] = field(default_factory=dict)  # made before request n is bid


def _changes(rng: random.Random, e: BidEngine, docs: list[dict]) -> list[Callable[[], None]]:
    """What the streams side sends between two requests: new pacing states, a new model, a campaign change (a new
    max bid rebuilds the index)."""
    out: list[Callable[[], None]] = []
    camps = list(e.index.campaigns.values())
    for camp in rng.sample(camps, rng.randint(0, len(camps))):
        state = PacingState(campaign=camp.id, day=e.campaign_day(camp, NOW), lam=rng.choice((0.0, rng.uniform(0, 5))),
                            cvr=rng.uniform(0.0, 0.5))
        out.append(functools.partial(e.set_pacing, state))
    if rng.random() < 0.3:
        model = _model(docs, rng)
        out.append(lambda: e.set_model(model))
    if rng.random() < 0.3:
        doc = dict(rng.choice(docs))
        doc["goal"] = dict(doc["goal"], max_bid_cpm=round(rng.uniform(0.05, 12.0), 6))
        changed = parse_campaign(doc)
        out.append(lambda: e.upsert_campaign(changed))
    return out


def _world(seed: int) -> World:
    rng = random.Random(seed)
    currencies = CURRENCIES if rng.random() < 0.5 else ("USD",)
    docs = [_campaign(rng, i, currencies) for i in range(rng.randint(1, 30) if rng.random() < 0.9 else 120)]
    cfg = EngineConfig(secret=b"s", explore_below=rng.choice((0, 50, 200)), lease_slice=rng.choice((0, 1)),
                       explain_rate=0.0)
    e = BidEngine(cfg, [parse_campaign(d) for d in docs], _model(docs, rng), sink=lambda *a: None, clock=lambda: NOW,
                  rng=random.Random(seed))
    for cur in currencies:
        if rng.random() < 0.7:
            e._shading[cur] = _landscape(rng)
    small = rng.random() < 0.5
    requests = []
    for n in range(rng.randint(1, 6)):
        try:
            requests.append(parse_request(orjson.dumps(_request(rng, n))))
        except BadRequest:
            continue
    user = requests[0].user_key if requests else ""
    for camp in e.index.campaigns.values():
        if rng.random() < 0.6:
            lam = rng.choice((0.0, rng.uniform(0.0, 3.0), MAX_LAMBDA))
            cvr = rng.choice((0.0, rng.uniform(0.0, 0.3), 1.5, math.nan))
            e.set_pacing(PacingState(campaign=camp.id, day=e.campaign_day(camp, NOW), lam=lam, cvr=cvr))
        if cfg.lease_slice:  # a small lease refuses some bids, and a request's earlier impressions use it up
            e.grant(camp.id, e.campaign_day(camp, NOW), rng.randint(0, 12_000) if small else 10**12)
        if user and (camp.freq_per_hour or camp.freq_per_day) and rng.random() < 0.5:
            e.frequency.record(user, camp.id, *cap_buckets(camp.timezone, NOW))
    changes = {n: _changes(rng, e, docs) for n in range(1, len(requests)) if rng.random() < 0.5}
    return World(e, requests, changes)


@dataclass
class Tally:
    """What the reference compared: impressions, candidates it priced and the engine priced, bids, first-price bids
    on a landscape, impressions after others of their request, lease refusals, and campaigns a request filled."""

    imps: int = 0
    candidates: int = 0
    engine_priced: int = 0
    bids: int = 0
    first_price: int = 0
    multi: int = 0
    lease_refused: int = 0
    capped_full: int = 0


@dataclass
class Replica:
    """The request's earlier picks as the reference counts them: micros per campaign and impressions per campaign."""

    micros: dict[str, int] = field(default_factory=dict)
    shown: dict[str, int] = field(default_factory=dict)


def _reference(e: BidEngine, req: BidRequest, imp: Imp, exchange: str, user: str, hour: int, weekday: int,
               now: float, micros: dict[str, int], full: frozenset[str], draws: dict[int, float],
               bounds: dict[int, float], tally: Tally) -> list[tuple[int, str, str, str, int]]:
    """Every candidate priced with the canonical functions: (price, campaign, creative, deal, floor) of each that
    bids.  Asserts along the way that each candidate's bound is at least its paced value."""
    el = e.index.eligible(req, imp, e._live, e.cfg.seat, user, e.frequency, now, full)
    model = e.model
    req_feats = request_features(req, imp, exchange, hour, weekday)
    base = model.base_score(req_feats)
    out = []
    for j, s in enumerate(el.slots.tolist()):
        tally.candidates += 1
        camp, cr = e.index.slots[s]
        deal = el.deals.get(j)
        floor = el.floors if isinstance(el.floors, int) else int(el.floors[j])
        at = deal[3] if deal and deal[3] else req.at
        if e.cfg.explore_below and model.creative_impressions(camp.id, cr.id) < e.cfg.explore_below:
            p = draws[s]  # the Thompson draw this impression took for it
        else:
            p = model.predict(base, candidate_features(req_feats, hour, req.domain, camp.id, cr.id), camp.id, cr.id)
        pace = e.pacing.get(camp.id)
        lam = pace.lam if pace is not None else 0.0
        cvr = conversion_rate(pace)
        value = impression_value_cpm(p, camp, p * cvr if camp.goal == "cpa" else 0.0)
        v = paced_value(value, lam, camp.max_bid_cpm)
        # the bound is on the paced value before its rounding down to the micro
        unrounded = min(p * cvr, 1.0) * camp.value_per_conversion if camp.goal == "cpa" else p * camp.value_per_click
        assert min(unrounded * 1000 / (1 + lam), camp.max_bid_cpm) <= bounds[s], (camp.id, cr.id, v, bounds[s])
        assert v <= bounds[s]
        price = bid_price(value, lam, camp.max_bid_cpm, floor, at == 1, e._shading.get(camp.currency),
                          fixed_price=at == 3)
        if not price:
            continue
        assert floor <= price <= camp.max_bid_cpm and price <= v
        if e.cfg.lease_slice:
            lease = e.leases.get(camp.id)
            if lease is None or not lease.can_bid(price // 1000 + micros.get(camp.id, 0)):
                tally.lease_refused += 1
                continue
        out.append((price, camp.id, cr.id, deal[0] if deal else "", floor))
    return out


def _full(e: BidEngine, user: str, replica: Replica) -> frozenset[str]:
    """The capped campaigns this request's earlier picks leave no room for: seen + picked reaches a cap."""
    out = set()
    for cid, n in replica.shown.items():
        camp = e.index.campaigns[cid]
        hour, day = cap_buckets(camp.timezone, NOW)
        for cap, bucket, index in ((camp.freq_per_hour, hour, 0), (camp.freq_per_day, day, 2)):
            if not cap:
                continue
            counts = e.frequency._users.get(user, {}).get(cid)
            seen = counts[index + 1] if counts is not None and counts[index] == bucket else 0
            if seen + n >= cap:
                out.add(cid)
    return frozenset(out)


def _check_world(monkeypatch: pytest.MonkeyPatch, world: World, tally: Tally) -> None:
    """Bid every request of `world`, each impression's pick checked against the reference as it is made."""
    e = world.engine
    draws: dict[int, float] = {}
    bounds: dict[int, float] = {}
    replica = Replica()
    real_next, real_bounds, real_all = SlotTables.next_draws, SlotTables.bounds, SlotTables.explore_all
    real_best = BidEngine._best_for_imp

    def next_draws(tables: SlotTables, slots: Any) -> Any:
        got = real_next(tables, slots)
        draws.update(zip(slots.tolist(), got.tolist(), strict=True))
        return got

    def bounds_of(tables: SlotTables, slots: Any, pctr: Any, clean: bool = False) -> Any:
        got = real_bounds(tables, slots, pctr, clean)
        bounds.update(zip(slots.tolist(), got.tolist(), strict=True))
        return got

    def explore_all(tables: SlotTables, slots: Any) -> Any:
        pctr, got = real_all(tables, slots)
        bounds.update(zip(slots.tolist(), got.tolist(), strict=True))
        return pctr, got

    def best_for_imp(self: BidEngine, req: BidRequest, imp: Imp, exchange: str, user: str, hour: int, weekday: int,
                     now: float, held: _Held | None = None) -> tuple[tuple | None, int]:
        draws.clear()
        bounds.clear()
        if held is not None:  # what the engine holds from the request's earlier picks, as the reference counts it
            assert held.micros == replica.micros
            assert held.full == _full(e, user, replica)
        full = _full(e, user, replica)
        tally.capped_full += bool(full)
        pick, reason = real_best(self, req, imp, exchange, user, hour, weekday, now, held)
        ref = _reference(self, req, imp, exchange, user, hour, weekday, now, replica.micros, full, draws, bounds,
                         tally)
        tally.imps += 1
        tally.multi += held is not None
        if not ref:
            assert pick is None, (pick[1].id, pick[2].id, pick[3])
            return pick, reason
        top = max(r[0] for r in ref)
        assert pick is not None, (req.id, imp.id, top)
        _, camp, cr, price, dealid, *_rest = pick
        floor = pick[9]
        assert price == top, (camp.id, cr.id, price, top, sorted(ref, reverse=True)[:3])
        assert (price, camp.id, cr.id, dealid, floor) in ref
        tally.bids += 1
        at = next((d.at for d in imp.deals if d.id == dealid and d.at), req.at) if dealid else req.at
        tally.first_price += at == 1 and camp.currency in self._shading
        if held is not None:
            replica.micros[camp.id] = replica.micros.get(camp.id, 0) + price // 1000
            if camp.freq_per_hour or camp.freq_per_day:
                replica.shown[camp.id] = replica.shown.get(camp.id, 0) + 1
        return pick, reason

    def priced(*args: Any, **kwargs: Any) -> int:
        tally.engine_priced += 1
        return bid_price(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(bidder.engine, "bid_price", priced)
        m.setattr(SlotTables, "next_draws", next_draws)
        m.setattr(SlotTables, "bounds", bounds_of)
        m.setattr(SlotTables, "explore_all", explore_all)
        m.setattr(BidEngine, "_best_for_imp", best_for_imp)
        for n, req in enumerate(world.requests):
            for change in world.changes.get(n, ()):
                change()
            replica.micros.clear()
            replica.shown.clear()
            e.bid(req, "x", math.inf)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=2**63))
def test_the_pick_is_the_highest_price_any_candidate_bids(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    _check_world(monkeypatch, _world(seed), Tally())


def test_the_random_worlds_reach_every_kind_of_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worlds of fixed seeds, checked as above, reach what they are meant to: shaded first-price bids, several
    impressions per request, leases and caps the request's earlier picks use up, and pruning."""
    tally = Tally()
    for seed in range(250):
        _check_world(monkeypatch, _world(seed), tally)
    assert tally.bids > 1000 and tally.first_price > 400 and tally.multi > 1000, tally
    assert tally.lease_refused > 500 and tally.capped_full > 50, tally
    assert tally.engine_priced < 0.5 * tally.candidates, tally  # the bounds spared most of the pricing
