"""Predictive pacing: the value sketch, the calibrated spend forecast and the multiplier that clears the budget."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.landscape import WinRateModel
from bidder.predictive_pacing import PredictivePacer, ValueSketch
from bidder.pricing import bid_price

MICROS = 1_000_000
MAX_BID = 50 * MICROS


def lognormal_landscape(rng: random.Random, n: int = 5_000, scale: float = 1.5) -> WinRateModel:
    return WinRateModel.from_prices(int(scale * MICROS * math.exp(rng.gauss(0.0, 0.5))) for _ in range(n))


def request(rng: random.Random, price_scale: float = 1.5) -> tuple[int, int]:
    """(value, market price), CPM micros, independent lognormals."""
    return int(4 * MICROS * math.exp(rng.gauss(0.0, 0.6))), int(price_scale * MICROS * math.exp(rng.gauss(0.0, 0.5)))


def test_sketch_bins_within_resolution_and_zero_values_dilute_shares() -> None:
    s = ValueSketch(resolution=0.05)
    s.add(1_000_000)
    s.add(1_020_000, 2.0)  # same 5% bin as 1,000,000
    s.add(0, 1.0)
    pts = s.points()
    assert len(pts) == 1
    centre, share = pts[0]
    assert abs(math.log(centre / 1_000_000)) <= 0.05 and abs(math.log(centre / 1_020_000)) <= 0.05
    assert share == pytest.approx(3 / 4)
    assert s.total == 4.0
    with pytest.raises(ValueError):
        s.add(5, 0.0)


def test_forecast_falls_as_lambda_rises_and_is_zero_below_every_price() -> None:
    land = WinRateModel({1_000_000: 1, 2_000_000: 1, 4_000_000: 2})
    p = PredictivePacer(land, MAX_BID)
    p.sketch.add(4_000_000)
    assert p.forecast(0.0) == pytest.approx((1 + 2 + 8) * MICROS / 4)  # bid 4: every price wins
    assert p.forecast(1.0) == pytest.approx((1 + 2) * MICROS / 4)  # bid 2
    assert p.forecast(4.0) == 0.0  # bid 0.8 is under every price
    values = [p.forecast(lam) for lam in (0.0, 0.3, 1.0, 2.5, 10.0)]
    assert values == sorted(values, reverse=True)


def test_solve_returns_zero_when_the_budget_does_not_bind_and_lam_max_when_nothing_is_left() -> None:
    land = WinRateModel({1_000_000: 1, 2_000_000: 1})
    p = PredictivePacer(land, MAX_BID, lam_max=50.0)
    p.sketch.add(3_000_000)
    assert p.solve(budget_left=10**9, auctions_left=10) == 0.0
    assert p.solve(budget_left=0, auctions_left=10) == pytest.approx(50.0)
    assert p.solve(budget_left=10**9, auctions_left=10) == 0.0  # and back, from the top
    assert PredictivePacer(land, MAX_BID).solve(1_000, 10) == 0.0  # no values seen: nothing to forecast, lam stays


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), need_share=st.floats(0.01, 0.9), start=st.floats(0.0, 6.0))
def test_solution_is_the_smallest_lambda_whose_forecast_fits_the_budget(seed: int, need_share: float, start: float) -> None:
    rng = random.Random(seed)
    land = lognormal_landscape(rng, 300)
    p = PredictivePacer(land, MAX_BID, lam_max=1000.0)
    for _ in range(50):
        p.sketch.add(request(rng)[0])
    p.u = start  # wherever the last solution was
    auctions = 100
    budget = int(need_share * p.forecast(0.0) * auctions / 1000)
    lam = p.solve(budget, auctions)
    need = budget * 1000 / auctions
    assert p.forecast(lam) <= need
    below = math.expm1(max(math.log1p(lam) - 2 * p.tolerance, 0.0))
    assert lam == 0.0 or p.forecast(below) > need


def test_calibration_is_realised_over_predicted_shrunk_by_the_prior() -> None:
    land = WinRateModel({1_000_000: 1, 3_000_000: 1})
    p = PredictivePacer(land, MAX_BID, prior_auctions=2.0)
    assert p.calibration == 1.0
    p.observe(5_000_000, 3_000_000, 3_000_000)  # predicted S(3) = 2, paid 3
    p.observe(5_000_000, 3_000_000, 0)  # predicted 2, lost
    p.observe(5_000_000, 0, 0)  # no bid: nothing predicted, one auction
    predicted, paid, auctions = 4 * MICROS, 3 * MICROS, 3
    prior = 2.0 * predicted / auctions
    assert p.calibration == pytest.approx((paid + prior) / (predicted + prior))
    assert p.sketch.total == 3


def run_period(pacer: PredictivePacer, rng: random.Random, budget: int, n: int, price_scale: float,
               every: int = 10) -> tuple[int, float, list[tuple[int, int]], list[int]]:
    """One budget period on a market; returns spend (micros), value won, the auctions seen and the bids placed."""
    left, won, seen, bids, lam = budget, 0.0, [], [], 0.0
    for t in range(n):
        if t % every == 0:
            lam = pacer.solve(left, n - t)
        value, price = request(rng, price_scale)
        seen.append((value, price))
        bid = min(bid_price(value, lam, MAX_BID, 0, False), left * 1000)
        bids.append(bid)
        paid = price if 0 < bid and bid >= price else 0
        left -= paid // 1000
        won += value if 0 < bid and bid >= price else 0.0
        pacer.observe(value, bid, paid)
    return budget - left, won, seen, bids


def hindsight_value(seen: list[tuple[int, int]], budget: int) -> float:
    """Greedy by value per price over the whole period: within one item of the best any policy can do."""
    left, won = budget, 0.0
    for value, price in sorted(seen, key=lambda a: -a[0] / max(a[1], 1)):
        if price // 1000 <= left:
            left -= price // 1000
            won += value
    return won + max(v for v, _ in seen)


@pytest.mark.parametrize("price_scale", [1.5, 2.25])
def test_spends_the_budget_and_nears_hindsight_even_when_the_market_is_dearer_than_the_landscape(price_scale: float) -> None:
    rng = random.Random(11)
    land = lognormal_landscape(rng, scale=1.5)  # what was learnt; the market may be 1.5x dearer
    n, budget = 5_000, 2_000_000  # micros; about a fifth of what bidding full value would spend
    pacer = PredictivePacer(land, MAX_BID, prior_auctions=100.0)
    spent, won, seen, bids = run_period(pacer, rng, budget, n, price_scale)
    assert spent <= budget
    assert spent >= 0.97 * budget
    assert won >= 0.95 * hindsight_value(seen, budget)
    # calibration tracks the true spend ratio at the bids placed (a dearer market sells less at the same bid)
    true_market = lognormal_landscape(random.Random(99), 20_000, scale=price_scale)
    truth = sum(true_market.expected_spend(b) for b in bids) / sum(land.expected_spend(b) for b in bids)
    assert pacer.calibration == pytest.approx(truth, rel=0.15)
    if price_scale > 1.5:
        assert pacer.calibration < 0.85


def test_constructor_rejects_nonsense() -> None:
    land = WinRateModel({1: 1})
    for make in (lambda: PredictivePacer(land, max_bid_cpm=0), lambda: PredictivePacer(land, max_bid_cpm=1, prior_auctions=-1),
                 lambda: PredictivePacer(land, max_bid_cpm=1, lam_max=0)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError):
        ValueSketch(0.0)
