"""Pricing: value, pacing shade, floors, deals, and first-price shading on a known landscape."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from bidder.campaigns import parse_campaign
from bidder.landscape import WinRateModel
from bidder.pricing import bid_price, impression_value_cpm, paced_value, shade_first_price
from tests.helpers import campaign

MICROS = 1_000_000
money = st.integers(min_value=0, max_value=50 * MICROS)
lams = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)


def uniform_landscape(top: int, step: int) -> WinRateModel:
    """Market prices uniform on {step, 2 step, ..., top}: P(win | b) = b / top on the grid."""
    return WinRateModel({p: 1 for p in range(step, top + 1, step)})


def test_value_is_pctr_times_click_value_per_thousand() -> None:
    camp = parse_campaign(campaign())  # 2.00 per click
    assert impression_value_cpm(0.01, camp) == 20 * MICROS  # 0.01 * 2.00 * 1000


def test_value_of_a_broken_model_output_is_clamped() -> None:
    camp = parse_campaign(campaign())
    assert impression_value_cpm(math.nan, camp) == 0
    assert impression_value_cpm(-0.3, camp) == 0
    assert impression_value_cpm(7.0, camp) == impression_value_cpm(1.0, camp)


def test_cpa_goal_values_conversions() -> None:
    camp = parse_campaign(campaign(goal={"type": "cpa", "value_per_conversion": 50.0, "max_bid_cpm": 20.0}))
    assert impression_value_cpm(0.5, camp, pcvr=0.001) == 50 * MICROS


def test_second_price_bids_the_paced_value() -> None:
    assert bid_price(8 * MICROS, 1.0, 20 * MICROS, 0, False) == 4 * MICROS
    assert bid_price(8 * MICROS, 0.0, 5 * MICROS, 0, False) == 5 * MICROS  # capped at the max bid


def test_no_bid_when_the_paced_value_is_below_the_floor() -> None:
    assert bid_price(8 * MICROS, 1.0, 20 * MICROS, 4 * MICROS + 1, False) == 0
    assert bid_price(8 * MICROS, 1.0, 20 * MICROS, 4 * MICROS, False) == 4 * MICROS
    assert bid_price(8 * MICROS, 0.0, 3 * MICROS, 4 * MICROS, False) == 0  # max bid under the floor


@given(money, lams, money, money, st.booleans(), st.booleans())
def test_never_under_the_floor_never_over_value_or_max(value: int, lam: float, max_bid: int, floor: int,
                                                         first: bool, fixed: bool) -> None:
    land = uniform_landscape(10 * MICROS, 250_000)
    price = bid_price(value, lam, max_bid, floor, first, land, fixed_price=fixed)
    assert price == 0 or price >= floor
    assert price <= max(paced_value(value, lam, max_bid), 0)
    if paced_value(value, lam, max_bid) < floor:
        assert price == 0


def test_fixed_price_deal_bids_the_deal_price_when_value_clears_it() -> None:
    assert bid_price(8 * MICROS, 0.0, 20 * MICROS, 3 * MICROS, False, fixed_price=True) == 3 * MICROS
    assert bid_price(8 * MICROS, 2.0, 20 * MICROS, 3 * MICROS, False, fixed_price=True) == 0  # paced 2.67 < 3


def test_first_price_without_landscape_bids_paced_value() -> None:
    assert bid_price(6 * MICROS, 0.5, 20 * MICROS, 0, True) == 4 * MICROS


def test_first_price_shading_finds_the_surplus_optimum_on_a_uniform_landscape() -> None:
    # (v - b) * b / top is maximised at b = v / 2.
    land = uniform_landscape(10 * MICROS, 10_000)
    v = 6 * MICROS
    b = bid_price(v, 0.0, 20 * MICROS, 0, True, land)
    assert abs(b - v // 2) <= 10_000
    brute = max(range(0, v + 1, 10_000), key=lambda x: (v - x) * land.win_rate(x))
    assert (v - b) * land.win_rate(b) >= (v - brute) * land.win_rate(brute)


@given(st.integers(min_value=1, max_value=20 * MICROS), st.integers(min_value=0, max_value=20 * MICROS),
       st.lists(st.integers(min_value=0, max_value=25 * MICROS), min_size=1, max_size=60))
def test_shading_never_exceeds_value_and_beats_bidding_value(v: int, floor: int, prices: list[int]) -> None:
    land = WinRateModel.from_prices(prices)
    if v < floor:
        assert bid_price(v, 0.0, 30 * MICROS, floor, True, land) == 0
        return
    b = shade_first_price(v, floor, land)
    assert max(floor, 1) <= b <= v  # a bid is at least a micro: 0 would mean no bid at all
    surplus = (v - b) * land.win_rate(b)
    assert surplus >= 0.0  # bidding v itself earns zero surplus
    for x in {floor, v, *prices}:  # no bid in [floor, v] does better, on the grid of steps
        if max(floor, 1) <= x <= v:
            assert surplus >= (v - x) * land.win_rate(x) - 1e-6


def test_shading_respects_a_floor_above_the_unconstrained_optimum() -> None:
    land = uniform_landscape(10 * MICROS, 10_000)
    assert bid_price(6 * MICROS, 0.0, 20 * MICROS, 4 * MICROS, True, land) == 4 * MICROS


def test_a_shaded_bid_meets_the_market_price_it_was_shaded_to() -> None:
    """Market prices are kept rounded up to the cent: rounded down, the shaded bid sat just under the real price
    (1.23 against 1.234567) and lost every such auction."""
    from bidder.engine import PRICE_STEP

    land = WinRateModel.from_prices([-(-1_234_567 // PRICE_STEP) * PRICE_STEP] * 300)
    assert shade_first_price(5 * MICROS, 500_000, land) >= 1_234_567
    assert shade_first_price(MICROS, 0, WinRateModel.from_prices([0] * 300)) >= 1  # a market price of 0: still a bid


def test_shading_over_arrays_picks_what_a_walk_over_every_price_point_picks() -> None:
    """Shading reads the landscape's price points as arrays: the same bid as walking them one by one, ties to the
    lowest, on landscapes of thousands of points with repeated prices and fractional weights."""

    def walked(v: int, floor: int, land: WinRateModel) -> int:
        lo = max(floor, 1)
        best, best_surplus = v, (v - lo) * land.win_rate(lo)
        if best_surplus > 0.0:
            best = lo
        for b, p_win in land.win_steps(lo, v):
            if (v - b) * p_win > best_surplus:
                best, best_surplus = b, (v - b) * p_win
        return best

    rng = random.Random(11)
    for size in (1, 5, 300, 3000):
        land = WinRateModel({rng.randrange(0, 20 * MICROS, 10_000 if size > 5 else 1): rng.choice([1.0, 0.5, 3.0])
                             for _ in range(size)})
        for _ in range(300):
            v, floor = rng.randrange(1, 25 * MICROS), rng.choice([0, rng.randrange(0, 10 * MICROS)])
            assert shade_first_price(v, floor, land) == walked(v, floor, land), (size, v, floor)
