"""A pause, a resume or a budget change swaps the campaign into the index in place, and bids exactly as a bidder
built from scratch on the same campaigns would; any change to what the index or the scoring reads rebuilds."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from bidder.campaigns import Campaign, parse_campaign
from bidder.engine import BidEngine, EngineConfig, Outcome
from bidder.landscape import WinRateModel
from bidder.lease_client import LeaseClient
from bidder.metrics import campaign_gauges
from bidder.openrtb import BadRequest, parse_request
from bidder.pacing import PacingState
from loadtest.campaign_gen import make_campaigns
from loadtest.traffic import MARKET_DEALS, RequestFactory
from models.snapshot import ModelSnapshot
from tests.helpers import body, campaign, request, varied_model
from tests.test_bidder_index import MeanDraws

NOW = 1_780_000_000.0
CURRENCIES = ("USD", "EUR", "GBP")


def engine(*docs: dict[str, Any], **cfg: Any) -> BidEngine:
    return BidEngine(EngineConfig(secret=b"s", explore_below=0, **cfg), [parse_campaign(d) for d in docs],
                     ModelSnapshot.empty(), sink=lambda *a: None, clock=lambda: NOW)


def winner(e: BidEngine) -> str:
    out = e.bid(parse_request(body(request())), "x", math.inf)
    return orjson.loads(out.body)["seatbid"][0]["bid"][0]["cid"] if out.status == 200 else out.reason


def changed(e: BidEngine, cid: str, **fields: Any) -> Campaign:
    """The campaign as the config topic would carry it after an edit (`streambid campaign pause` sends the
    document of the current version with its status changed)."""
    doc = e.index.campaigns[cid].to_doc()
    doc.update(fields)
    return parse_campaign(doc)


def test_pause_resume_and_budget_are_swapped_in_place_and_seen_at_once() -> None:
    e = engine(campaign(id="low"), campaign(id="high", goal={"type": "cpc", "value_per_click": 3.0, "max_bid_cpm": 20.0}))
    assert winner(e) == "high"
    index, tables = e.index, e._tables
    e.upsert_campaigns([changed(e, "high", status="paused")])
    e.prepare()
    assert e.index is index and e._tables is tables  # nothing rebuilt
    assert winner(e) == "low" and e.live() == frozenset({"low"}) and len(e.index) == 2
    e.upsert_campaigns([changed(e, "high", status="active")])
    assert winner(e) == "high" and e.index is index
    day = e.campaign_day(None, NOW)
    grant = {"bidder": e.cfg.bidder_id, "campaign": "high", "day": day, "granted": 60_000_000}
    assert LeaseClient(e, 0.1).apply(grant, NOW)  # within the daily budget of 100
    e.upsert_campaigns([changed(e, "high", budget={"daily": 50.0, "total": 400.0})])
    assert e.index is index and e._tables is tables
    camp = e.index.campaigns["high"]
    assert (camp.daily_budget, camp.total_budget) == (50_000_000, 400_000_000)
    assert e.index.slots[e.index.slots_of("high")[0]][0] is camp
    assert campaign_gauges(e)["high"][1] == 50.0
    assert not LeaseClient(e, 0.1).apply(grant, NOW)  # more than the new daily budget: refused
    assert winner(e) == "high"


def test_flight_and_dayparting_changes_are_swapped_in_place() -> None:
    e = engine(campaign(id="low"), campaign(id="high", goal={"type": "cpc", "value_per_click": 3.0, "max_bid_cpm": 20.0}))
    assert winner(e) == "high"
    index = e.index
    hour = int(NOW // 3600) % 24
    e.upsert_campaigns([changed(e, "high", dayparting=[(hour + 1) % 24])])
    assert winner(e) == "low"
    e.upsert_campaigns([changed(e, "high", dayparting=[], flight={"start": "2020-01-01", "end": "2020-12-31",
                                                                  "timezone": "UTC"})])
    assert winner(e) == "low"
    e.upsert_campaigns([changed(e, "high", flight={"start": "2020-01-01", "end": "2099-12-31",
                                                   "timezone": "Asia/Tokyo"})])
    assert winner(e) == "high" and e.index is index


def test_a_paused_campaign_never_bids_and_gives_the_same_no_bid_reason_as_a_fresh_bidder() -> None:
    """Its slots stay in the index, but match nothing: the reason is still no_match, not not_live."""
    e = engine(campaign(id="c1"), campaign(id="c2", targeting={"countries": ["FRA"]}))
    assert winner(e) == "c1"
    e.upsert_campaigns([changed(e, "c1", status="paused")])
    fresh = engine(campaign(id="c1", status="paused"), campaign(id="c2", targeting={"countries": ["FRA"]}))
    assert winner(e) == winner(fresh) == "no_match"
    assert e.index.candidates(parse_request(body(request())).imps[0], "USA") == []
    assert len(e.index) == 2 and e.live() == fresh.live() == frozenset({"c2"})


def test_a_budget_exhausted_campaign_resumed_stays_out() -> None:
    e = engine(campaign(id="c1"), campaign(id="c2"))
    e.upsert_campaigns([changed(e, "c1", status="paused")])
    e.set_pacing(PacingState(campaign="c1", day=e.campaign_day(None, NOW), lam=2.0, exhausted=True))
    e.upsert_campaigns([changed(e, "c1", status="active")])
    assert e.live() == frozenset({"c2"}) == e._live_campaigns(NOW)


GOAL = {"type": "cpc", "value_per_click": 2.0, "value_per_conversion": 50.0, "max_bid_cpm": 20.0}


@pytest.mark.parametrize("edit", [  # each changes one field of Campaign
    {"targeting": {"countries": ["USA", "FRA"]}},
    {"goal": dict(GOAL, max_bid_cpm=30.0)},
    {"goal": dict(GOAL, value_per_click=3.0)},
    {"goal": dict(GOAL, value_per_conversion=60.0)},
    {"goal": dict(GOAL, type="cpa")},
    {"currency": "EUR"},
    {"advertiser": "other.example"},
    {"frequency_cap": {"per_hour": 1}},
    {"frequency_cap": {"per_day": 2}},
    {"creatives": [{"id": "cr1", "type": "banner", "w": 300, "h": 250, "cat": ["IAB3-1"], "adm": "<img2>"}]},
])
def test_a_change_to_what_the_index_or_the_scoring_reads_rebuilds(edit: dict[str, Any]) -> None:
    e = engine(campaign(id="c1"), campaign(id="c2", goal=GOAL))
    winner(e)
    index = e.index
    e.upsert_campaigns([changed(e, "c1", status="paused"), changed(e, "c2", **edit)])  # one rebuild for the batch
    assert e.index is not index
    assert e.index.campaigns["c1"].status == "paused" and e.index.campaigns["c2"] == changed(e, "c2", **edit)
    e.upsert_campaigns([parse_campaign(campaign(id="new"))])  # a new campaign rebuilds too
    assert set(e.index.campaigns) == {"c1", "c2", "new"}


# -- differential: a bidder changed through the fast path against one built from scratch ----------------------------


def _docs(seed: int) -> list[dict]:
    rng = random.Random(seed)
    docs = make_campaigns(50, seed)
    for d in docs:
        d["currency"] = rng.choice(CURRENCIES) if rng.random() < 0.4 else "USD"
        d["targeting"].pop("regions", None)  # reach more of the traffic with few campaigns
        if rng.random() < 0.5:
            d["targeting"].pop("device_types", None)
        if rng.random() < 0.2:
            d["targeting"]["deals"] = sorted(rng.sample(MARKET_DEALS, rng.randint(1, 3)))
            d["targeting"]["deal_only"] = rng.random() < 0.3
    return docs


def _settled(e: BidEngine) -> None:
    """Prepared as a follower leaves it, its exploring creatives bidding their posterior mean: the draws of two
    engines then agree."""
    e._scoring().gen = MeanDraws()  # type: ignore[assignment]  # scoring only calls standard_gamma
    e.prepare()


def _edit(e: BidEngine, rng: random.Random) -> tuple[Campaign, bool]:
    """A random change to a random campaign, and whether it is one the index and scoring do not read."""
    c = e.index.campaigns[f"c{rng.randrange(50):05d}"]
    doc = c.to_doc()
    r = rng.random()
    if r < 0.4:
        doc["status"] = "paused" if c.active else "active"
    elif r < 0.6:
        daily = rng.choice((1.0, 50.0, 900.0))
        doc["budget"] = {"daily": daily, "total": rng.choice((0, daily * 10))}
    elif r < 0.7:
        doc["dayparting"] = rng.choice(([], [int(NOW // 3600) % 24], [(int(NOW // 3600) + 5) % 24]))
    elif r < 0.75:
        doc["flight"] = dict(doc["flight"], timezone=rng.choice(("UTC", "Asia/Tokyo", "America/New_York")))
    elif r < 0.8:
        doc["goal"] = dict(doc["goal"], max_bid_cpm=rng.choice((0.5, 3.0, 40.0)))
    elif r < 0.84:
        doc["goal"] = dict(doc["goal"], value_per_click=rng.choice((0.5, 4.0)), value_per_conversion=90.0)
    elif r < 0.87:
        doc["goal"] = dict(doc["goal"], value_per_click=3.0, value_per_conversion=90.0)
        doc["goal"]["type"] = "cpa" if doc["goal"]["type"] == "cpc" else "cpc"
    elif r < 0.91:
        doc["targeting"] = dict(doc["targeting"], countries=rng.choice((["USA"], ["GBR", "DEU"], [])))
    elif r < 0.94:
        doc["currency"] = rng.choice(CURRENCIES)
    elif r < 0.97:
        doc["frequency_cap"] = rng.choice(({"per_hour": 0, "per_day": 0}, {"per_hour": 1, "per_day": 3}))
    else:
        doc["advertiser"] = rng.choice(("rival1.example", "adv7.example"))
    new = parse_campaign(doc)
    return new, r < 0.75 or new == c  # a "new" goal or targeting may be the one it had


def _requests(seed: int, n: int) -> Iterator[bytes]:
    """Market traffic in first and second price, with floors, several currencies and deals."""
    rng = random.Random(seed)
    factory = RequestFactory(seed, tmax_ms=100, gdpr_no_consent_share=0.0)
    for _ in range(n):
        doc = orjson.loads(factory.body())
        doc["at"] = 1 if rng.random() < 0.7 else 2
        if rng.random() < 0.4:
            doc["cur"] = rng.sample(CURRENCIES, rng.randint(1, 3))
        for imp in doc["imp"]:
            if rng.random() < 0.3:
                imp["bidfloor"] = rng.choice((0.0, 0.05, 0.3, 1.5))
                imp["bidfloorcur"] = rng.choice(CURRENCIES)
            if rng.random() < 0.2:
                deals = [{"id": did, "bidfloor": rng.choice((0.0, 0.2, 1.0)), "bidfloorcur": "USD",
                          "at": rng.choice((1, 2, 3))} for did in rng.sample(MARKET_DEALS, rng.randint(1, 3))]
                imp["pmp"] = {"private_auction": int(rng.random() < 0.3), "deals": deals}
        yield orjson.dumps(doc)


def _bids(out: Outcome) -> tuple:
    """The impression, campaign, creative, price and deal of each bid, or the no-bid reason."""
    if out.status != 200:
        return out.status, out.reason
    return tuple((b["impid"], b["cid"], b["crid"], b["price"], b.get("dealid", ""))
                 for b in orjson.loads(out.body)["seatbid"][0]["bid"])


def _engine(camps: list[Campaign], model: ModelSnapshot) -> BidEngine:
    return BidEngine(EngineConfig(secret=b"s", explore_below=200, lease_slice=1), camps, model, sink=lambda *a: None,
                     clock=lambda: NOW, rng=random.Random(0))


@pytest.mark.parametrize("seed", [1, 2])
def test_changes_through_the_fast_path_bid_as_a_bidder_built_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    docs = _docs(seed)
    model = varied_model(docs, rng)
    e = _engine([parse_campaign(d) for d in docs], model)
    day = e.campaign_day(None, NOW)
    grants = {d["id"]: 10**12 if rng.random() < 0.8 else rng.randint(0, 3000) for d in docs}  # some too small to bid
    for cid, micros in grants.items():
        e.grant(cid, day, micros)
    landscapes = {cur: WinRateModel.from_prices(int(rng.lognormvariate(13.8, 0.9)) for _ in range(1000))
                  for cur in CURRENCIES[:2]}
    e._shading.update(landscapes)
    _settled(e)
    warm = _requests(seed + 100, 10_000)
    fast = rebuilt = 0
    for _ in range(60):
        batch = [_edit(e, rng) for _ in range(rng.choice((1, 1, 2)))]
        if rng.random() < 0.3:  # pacing meanwhile, paused campaigns' too: lambdas and exhausted budgets
            c = e.index.campaigns[f"c{rng.randrange(50):05d}"]
            e.set_pacing(PacingState(campaign=c.id, day=e.campaign_day(c, NOW), lam=rng.choice((0.0, 0.5, 4.0)),
                                     cvr=rng.random() * 0.2, exhausted=rng.random() < 0.2))
        index = e.index
        e.upsert_campaigns([c for c, _ in batch])
        _settled(e)
        if e.index is index:
            fast += 1
        else:
            rebuilt += 1
        assert (e.index is index) == all(quick for _, quick in batch)
        for _ in range(5):  # bid in between (test requests: no lease held), so the caches have something to keep
            doc = orjson.loads(next(warm))
            doc["test"] = 1
            try:
                e.bid(parse_request(orjson.dumps(doc)), "x", math.inf)
            except BadRequest:
                pass
    assert fast > 25 and rebuilt > 5
    scratch = _engine(list(e.index.campaigns.values()), model)
    for cid, micros in grants.items():
        scratch.grant(cid, day, micros)
    for state in e.pacing.values():
        scratch.set_pacing(state)
    scratch._shading.update(landscapes)
    _settled(scratch)
    assert e.live() == scratch.live()
    n = bids = 0
    for raw in _requests(seed, 600):
        try:
            req = parse_request(raw)
        except BadRequest:
            continue
        got, want = _bids(e.bid(req, "x", math.inf)), _bids(scratch.bid(req, "x", math.inf))
        assert got == want, raw
        n += 1
        if got[0] != 204:
            bids += 1
            assert all(e.index.campaigns[b[1]].active for b in got)
    assert n > 500 and bids > 100, (n, bids)
