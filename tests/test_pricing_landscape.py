"""The win-rate model: CDF, expected second-price spend, and the bid that spends a target."""

from __future__ import annotations

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
