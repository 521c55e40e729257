"""The win-rate model: CDF, expected second-price spend, and the bid that spends a target."""

from __future__ import annotations

import random

import pytest

from bidder.landscape import WinRateModel


def test_win_rate_is_the_price_cdf_with_ties_winning() -> None:
    land = WinRateModel.from_prices([10, 20, 20, 40])
    assert land.win_rate(9) == 0.0
    assert land.win_rate(10) == 0.25
    assert land.win_rate(20) == 0.75
    assert land.win_rate(39) == 0.75
    assert land.win_rate(1000) == 1.0


def test_expected_spend_counts_only_won_auctions_at_their_price() -> None:
    land = WinRateModel.from_prices([10, 20, 20, 40])
    assert land.expected_spend(25) == pytest.approx((10 + 20 + 20) / 4)
    assert land.expected_spend(5) == 0.0


def test_histogram_units_and_added_observations() -> None:
    land = WinRateModel.from_histogram([0, 2, 0, 2], unit_micros=10_000)  # prices 1 and 3 fen
    assert land.price_points(0, 10**9) == [10_000, 30_000]
    assert land.win_rate(20_000) == 0.5
    land.add(20_000, 4)
    assert land.observations == 8
    assert land.win_rate(20_000) == 0.75


def test_bid_for_spend_is_the_smallest_price_point_reaching_the_target() -> None:
    land = WinRateModel.from_prices(range(1, 101))  # spend(b) = b (b + 1) / 200
    b = land.bid_for_spend(10.0)
    assert land.expected_spend(b) >= 10.0
    assert land.expected_spend(b - 1) < 10.0
    assert land.bid_for_spend(1e9) == 100


def test_rejects_negative_prices() -> None:
    with pytest.raises(ValueError):
        WinRateModel.from_prices([-1])


def test_win_steps_pair_each_price_point_with_its_win_rate() -> None:
    land = WinRateModel.from_prices([10, 20, 20, 40, 50])
    assert land.win_steps(15, 45) == [(20, 0.6), (40, 0.8)]
    assert all(land.win_rate(p) == w for p, w in land.win_steps(0, 100))


def test_first_price_wins_known_only_as_at_most_the_bid_give_the_price_distribution_back() -> None:
    """First price: a win pays our bid and says only "the market price was at most it"; a loss says what it was.
    The losses alone are all above our bids: kept without the censored wins, the model would say nothing cheaper
    ever wins, and shading would never bid under the value."""
    rng = random.Random(5)
    bids = (1_000_000, 2_000_000, 3_000_000, 4_000_000)
    censored, losses_only = WinRateModel(), WinRateModel()
    for _ in range(20_000):
        market, bid = rng.randint(500_000, 5_000_000), rng.choice(bids)
        if market <= bid:
            censored.add_at_most(bid)
        else:
            censored.add(market)
            losses_only.add(market)
    for b in (2_000_000, 3_000_000, 4_000_000, 4_500_000):
        truth = (b - 500_000) / 4_500_000
        assert censored.win_rate(b) == pytest.approx(truth, abs=0.02)
    for b in (2_000_000, 3_000_000):  # the bias the censored wins correct
        assert losses_only.win_rate(b) < (b - 500_000) / 4_500_000 - 0.2
    assert censored.observations == 20_000
    assert censored.expected_spend(3_000_000) == pytest.approx((3_000_000 + 500_000) / 2 * 2.5 / 4.5, rel=0.12)


def test_with_nothing_censored_the_estimate_is_the_empirical_distribution_exactly() -> None:
    exact = WinRateModel.from_prices([10, 20, 20, 40])
    bounded = WinRateModel.from_prices([10, 20, 20, 40])
    bounded.add_at_most(5)  # below every price: at risk at none of them, so the shares stay exact
    assert [bounded.win_rate(p) for p in (10, 20, 40)] == pytest.approx([exact.win_rate(p) * 4 / 5 + 0.2 for p in
                                                                         (10, 20, 40)])
    assert bounded.win_rate(9) == 0.0  # no price point under 10: a bid there is given no chance
    frozen = bounded.frozen_copy()
    assert frozen.win_rate(20) == bounded.win_rate(20) and frozen.observations == 5


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_a_weight_that_is_not_a_finite_positive_number_is_refused(weight: float) -> None:
    m = WinRateModel()
    with pytest.raises(ValueError, match="weights finite and > 0"):
        m.add(1_000, weight)
    with pytest.raises(ValueError, match="weights finite and > 0"):
        m.add_at_most(1_000, weight)
