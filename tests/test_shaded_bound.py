"""Pruning on the paced value under first-price shading: the shaded price never falls as the value or the floor
rises, so the engine stops pricing once no bound left exceeds the best candidate's paced value, and picks exactly
what pricing every candidate would."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bidder.engine
from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig, Outcome
from bidder.landscape import WinRateModel
from bidder.openrtb import BadRequest, parse_request
from bidder.pacing import PacingState
from bidder.pricing import bid_price, shade_first_price
from loadtest.campaign_gen import make_campaigns
from loadtest.traffic import MARKET_DEALS, RequestFactory
from models.snapshot import ModelSnapshot
from tests.helpers import body, campaign, request, varied_model

NOW = 1_780_000_000.0
CURRENCIES = ("USD", "EUR", "GBP", "JPY")  # no landscape in JPY: its first-price bids are not shaded

prices = st.integers(min_value=0, max_value=3_000_000)
landscapes = st.one_of(
    st.dictionaries(prices, st.integers(min_value=1, max_value=1000), min_size=1, max_size=40),
    st.dictionaries(st.sampled_from(range(0, 3_000_001, 50_000)), st.floats(min_value=0.01, max_value=100.0),
                    min_size=1, max_size=40),  # coarse points, so optima tie; fractional weights
)
values = st.integers(min_value=1, max_value=4_000_000)
floors = st.integers(min_value=0, max_value=4_000_000)
steps = st.one_of(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=4_000_000))


def _counterexample() -> tuple[WinRateModel, int]:
    """A landscape of 385 million prices on which rounding makes the shaded bid fall by 1 as v rises by 1."""
    return WinRateModel({9_426_163: 141_455_529, 9_426_164: 1, 1_150_881_693: 243_672_114}), 150_881_693


@settings(max_examples=400, deadline=None)
@given(landscapes, values, steps, floors)
def test_the_shaded_price_never_falls_as_the_value_rises(counts: dict[int, float], low: int, step: int, floor: int) -> None:
    land = WinRateModel(counts)
    high = low + step
    assert land.monotone_below > high  # the landscapes here are far from the rounding limit
    assert bid_price(low, 0.0, high, floor, True, land) <= bid_price(high, 0.0, high, floor, True, land)
    if floor <= low:
        assert shade_first_price(low, floor, land) <= shade_first_price(high, floor, land)


@settings(max_examples=400, deadline=None)
@given(landscapes, values, floors, steps)
def test_the_shaded_price_never_falls_as_the_floor_rises(counts: dict[int, float], v: int, low: int, step: int) -> None:
    land = WinRateModel(counts)
    high = min(low + step, v)
    low = min(low, high)
    assert shade_first_price(v, low, land) <= shade_first_price(v, high, land)


@given(landscapes, values)
def test_the_shaded_price_is_the_lowest_optimum(counts: dict[int, float], v: int) -> None:
    land = WinRateModel(counts)
    b = shade_first_price(v, 0, land)
    candidates = [1, *land.price_points(1, v)]
    surplus = {x: (v - x) * land.win_rate(x) for x in candidates}
    best = max(surplus.values())
    assert b == (min(x for x in candidates if surplus[x] == best) if best > 0 else v)


def test_rounding_can_lower_the_shaded_price_past_the_monotone_limit() -> None:
    """Exactly the optimum never falls as v rises; in floats it can, once the landscape's win-rate steps are under
    the rounding of a surplus, and `monotone_below` says where."""
    land, v = _counterexample()
    assert shade_first_price(v + 1, 0, land) < shade_first_price(v, 0, land)
    assert land.monotone_below <= v
    assert WinRateModel.from_prices(range(10_000, 10_000_001, 10_000)).monotone_below > 1e12
    assert WinRateModel().monotone_below == math.inf  # nothing to shade on: the bid is the value


def _landscape(rng: random.Random) -> WinRateModel:
    return WinRateModel.from_prices(int(rng.lognormvariate(13.8, 0.9)) for _ in range(1000))


def _world(seed: int) -> BidEngine:
    """Campaigns in four currencies, with deals, CPA goals, pacing and some leases too small for their best bid."""
    rng = random.Random(seed)
    docs = make_campaigns(400, seed)
    for d in docs:
        d["currency"] = rng.choice(CURRENCIES) if rng.random() < 0.5 else "USD"
        if rng.random() < 0.25:
            d["targeting"]["deals"] = sorted(rng.sample(MARKET_DEALS, rng.randint(1, 3)))
            d["targeting"]["deal_only"] = rng.random() < 0.3
    camps = [parse_campaign(d) for d in docs]
    e = BidEngine(EngineConfig(secret=b"s", explore_below=200, lease_slice=1), camps, varied_model(docs, rng),
                  sink=lambda *a: None, clock=lambda: NOW, rng=random.Random(seed))
    day = e.campaign_day(None, NOW)
    for c in camps:
        e.grant(c.id, day, 10**12 if rng.random() < 0.8 else rng.randint(0, 3000))  # a lease refuses bids over it
        if rng.random() < 0.4:
            e.set_pacing(PacingState(campaign=c.id, day=e.campaign_day(c, NOW), lam=rng.choice((0.0, rng.uniform(0, 3))),
                                     cvr=rng.random() * 0.2))
    for cur in CURRENCIES[:3]:
        e._shading[cur] = _landscape(rng)
    return e


def _requests(seed: int, n: int, deal_ats: tuple[int | None, ...] = (1, 2, 3)) -> Iterator[bytes]:
    """First-price traffic, mostly: floors or none, one currency or several, deals of the auction types `deal_ats`
    (None: the deal states none, so the request's applies)."""
    rng = random.Random(seed)
    factory = RequestFactory(seed, tmax_ms=100)
    for _ in range(n):
        doc = orjson.loads(factory.body())
        doc["at"] = 1 if rng.random() < 0.85 else 2
        r = rng.random()
        if r < 0.35:
            doc["cur"] = rng.sample(CURRENCIES, rng.randint(2, 4))
        elif r < 0.45:
            doc.pop("cur", None)
        for imp in doc["imp"]:
            if rng.random() < 0.5:
                imp["bidfloor"] = rng.choice((0.0, 0.0, 0.05, 0.3, 0.8, 1.5))
                imp["bidfloorcur"] = rng.choice(CURRENCIES)
            if rng.random() < 0.3:
                deals = [{"id": did, "bidfloor": rng.choice((0.0, 0.2, 0.6, 1.0, 2.0, 4.0)),
                          "bidfloorcur": rng.choice(("USD", "USD", "EUR")), "at": rng.choice(deal_ats)}
                         for did in rng.sample(MARKET_DEALS, rng.randint(1, 3))]
                imp["pmp"] = {"private_auction": int(rng.random() < 0.3), "deals": deals}
        yield orjson.dumps(doc)


def _bids(out: Outcome) -> tuple:
    """What the answer bids: the impression, campaign, creative, price and deal of each bid (ids made apart)."""
    if out.status != 200:
        return out.status, out.reason
    seat = orjson.loads(out.body)["seatbid"][0]["bid"]
    return tuple((b["impid"], b["cid"], b["crid"], b["price"], b.get("dealid", "")) for b in seat)


def _compare(monkeypatch: pytest.MonkeyPatch, seed: int, requests: Iterator[bytes]) -> dict[str, list[int]]:
    """Each request bid on with the pruning and without it: the same bids, or the test fails.  Per kind of request
    ("open", "deals"), the [pruned, unpruned] candidates priced and the first-price bids compared."""
    priced = [0]

    def counted(*args, **kwargs) -> int:
        priced[0] += 1
        return bid_price(*args, **kwargs)

    monkeypatch.setattr(bidder.engine, "bid_price", counted)
    pruned, unpruned = _world(seed), _world(seed)  # the second prices as before the paced-value stop
    out = {"open": [0, 0, 0], "deals": [0, 0, 0]}
    for raw in requests:
        try:
            req = parse_request(raw)
        except BadRequest:
            continue
        row = out["deals" if any(imp.deals for imp in req.imps) else "open"]
        before = priced[0]
        got = _bids(pruned.bid(req, "x", math.inf))
        row[0] += priced[0] - before
        before = priced[0]
        with monkeypatch.context() as m:
            m.setattr(bidder.engine, "_shaded_alike", lambda *a: False)
            m.setattr(bidder.engine, "_shades_below", lambda *a: False)
            want = _bids(unpruned.bid(req, "x", math.inf))
        row[1] += priced[0] - before
        assert got == want, raw
        row[2] += req.at == 1 and got[0] != 204
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_the_engine_picks_what_pricing_every_candidate_would_and_prices_fewer(monkeypatch: pytest.MonkeyPatch,
                                                                              seed: int) -> None:
    out = _compare(monkeypatch, seed, _requests(seed, 1500))
    n_pruned, n_unpruned, shaded = (a + b for a, b in zip(out["open"], out["deals"], strict=True))
    assert shaded > 300  # many first-price bids were shaded and compared
    assert n_pruned < 0.6 * n_unpruned, (n_pruned, n_unpruned)
    # deals of every auction type side by side: a best that outbids a first-priced candidate's shaded bound prunes it
    # (0.14-0.19 of the candidates here; 0.35-0.50 pruning only candidates shaded alike)
    pruned, unpruned, _ = out["deals"]
    assert pruned < 0.3 * unpruned, (pruned, unpruned)


@pytest.mark.parametrize("seed", [3, 4])
def test_first_price_deals_are_pruned_on_value_and_floor_alike(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Deals in the first-price auction, each with its own floor: a candidate is outbid only by one with a paced
    value and a floor both at least its own, and pricing still picks what pricing every candidate would."""
    pruned, unpruned, shaded = _compare(monkeypatch, seed, _requests(seed, 1500, deal_ats=(None, 1)))["deals"]
    assert shaded > 100  # many first-price bids on impressions offering deals were compared
    assert pruned < 0.45 * unpruned, (pruned, unpruned)  # about 0.3 here; 0.59-0.68 pruning open auctions alone


def _engine(camps: list[dict], landscape: WinRateModel) -> BidEngine:
    e = BidEngine(EngineConfig(secret=b"s", explore_below=0), [parse_campaign(c) for c in camps], ModelSnapshot.empty(),
                  sink=lambda *a: None, clock=lambda: NOW)
    e._shading["USD"] = landscape
    return e


def _pick(e: BidEngine, doc: dict) -> tuple:
    return _bids(e.bid(parse_request(body(doc)), "x", math.inf))


def test_no_pruning_on_values_where_rounding_breaks_monotony() -> None:
    """Two campaigns capped one micro apart, at the value where the shaded bid falls as the value rises: the one
    capped lower outbids the other, and pricing must not stop at the first."""
    land, v = _counterexample()
    camps = [campaign(id=cid, goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": f"{cap / 1e6:.6f}"})
             for cid, cap in (("high", v + 1), ("low", v))]
    assert _pick(_engine(camps, land), request(at=1)) == (("1", "low", "cr1", 9.426164, ""),)


def test_no_pruning_across_floors() -> None:
    """A deal of a higher floor shades to a higher price than the open auction's value allows: its campaign wins
    although its paced value is lower."""
    land = WinRateModel.from_prices(range(100_000, 5_000_001, 10_000))
    camps = [campaign(id="open", goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": 4.0}),
             campaign(id="deal", goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": 3.0},
                      targeting={"countries": ["USA"], "deals": ["d1"]})]
    doc = request(at=1)
    doc["imp"][0]["pmp"] = {"private_auction": 0, "deals": [{"id": "d1", "bidfloor": 2.5, "bidfloorcur": "USD"}]}
    assert _pick(_engine(camps, land), doc)[0][1:] == ("deal", "cr1", 2.5, "d1")


def test_no_pruning_across_currencies() -> None:
    """With no floor and two currencies allowed, a campaign whose currency has no landscape bids its whole paced
    value, above what the shaded best bids."""
    land = WinRateModel.from_prices(range(100_000, 5_000_001, 10_000))
    camps = [campaign(id="usd", goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": 4.0}),
             campaign(id="eur", currency="EUR", goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": 3.0})]
    doc = request(at=1, cur=["USD", "EUR"])
    doc["imp"][0].pop("bidfloor")
    assert _pick(_engine(camps, land), doc)[0][1:] == ("eur", "cr1", 3.0, "")


def test_a_lease_refused_best_does_not_prune() -> None:
    """The campaign of the highest value cannot afford its bid: the next one is priced and wins."""
    land = WinRateModel.from_prices(range(100_000, 5_000_001, 10_000))
    camps = [campaign(id="rich", goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": 4.0}),
             campaign(id="poor", goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": 3.0})]
    e = BidEngine(EngineConfig(secret=b"s", explore_below=0, lease_slice=1), [parse_campaign(c) for c in camps],
                  ModelSnapshot.empty(), sink=lambda *a: None, clock=lambda: NOW)
    e._shading["USD"] = land
    day = e.campaign_day(None, NOW)
    e.grant("rich", day, 1)
    e.grant("poor", day, 10**9)
    assert _pick(e, request(at=1))[0][1] == "poor"


def test_a_best_above_a_shaded_bound_prunes_every_candidate_on_that_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed-price deal beside first-price open bidders (so no common shading): once a best price is at least what
    the top open bidder's bound shades to on the impression's floor, no open bidder left is priced; the deal is."""
    priced = [0]

    def counted(*args, **kwargs) -> int:
        priced[0] += 1
        return bid_price(*args, **kwargs)

    monkeypatch.setattr(bidder.engine, "bid_price", counted)
    land = WinRateModel.from_prices(range(100_000, 5_000_001, 10_000))
    camps = [campaign(id=f"open{i:02d}", goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": 4.0})
             for i in range(20)]
    camps.append(campaign(id="deal", goal={"type": "cpc", "value_per_click": 100_000, "max_bid_cpm": 3.0},
                          targeting={"countries": ["USA"], "deals": ["d1"]}))
    doc = request(at=1)
    doc["imp"][0]["bidfloor"] = 1.02
    doc["imp"][0]["pmp"] = {"private_auction": 0, "deals": [{"id": "d1", "bidfloor": 2.24, "bidfloorcur": "USD", "at": 3}]}
    assert shade_first_price(4_000_000, 1_020_000, land) < 2_240_000  # an open bidder's best shades under the deal
    assert _pick(_engine(camps, land), doc)[0][1:] == ("deal", "cr1", 2.24, "d1")
    assert priced[0] == 2  # the first open bidder and the deal, not the other nineteen
