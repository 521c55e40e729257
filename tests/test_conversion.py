"""Post-click conversion rates: the prior holds until clicks say otherwise; days fold in once."""

from __future__ import annotations

import pytest

from models.conversion import ConversionPrior, ConversionRates


def test_prior_before_any_click() -> None:
    r = ConversionRates(ConversionPrior(rate=0.04, strength=10))
    assert r.rate("c") == pytest.approx(0.04)


def test_rate_moves_towards_the_observed_share() -> None:
    r = ConversionRates(ConversionPrior(rate=0.05, strength=20))
    r.update_day("c", "d1", clicks=180, conversions=36)  # 20% observed
    assert r.rate("c") == pytest.approx((36 + 1) / 200)
    assert r.rate("other") == pytest.approx(0.05)


def test_running_totals_of_a_day_count_once_and_days_add_up() -> None:
    r = ConversionRates(ConversionPrior(rate=0.0, strength=1))
    r.update_day("c", "d1", 10, 1)
    r.update_day("c", "d1", 10, 1)  # the same totals again: nothing new
    r.update_day("c", "d1", 30, 3)
    r.update_day("c", "d2", 9, 0)  # the next day starts from zero
    assert r.clicks["c"] == 39 and r.conversions["c"] == 3
    assert r.rate("c") == pytest.approx(3 / 40)


def test_the_day_before_is_followed_until_the_day_after() -> None:
    """Yesterday's totals still grow after today began (events read late): they fold in until a newer day starts."""
    r = ConversionRates(ConversionPrior(rate=0.0, strength=1))
    r.update_day("c", "2026-01-01", 10, 1)
    r.update_day("c", "2026-01-02", 4, 0)
    assert r.day_before("c", "2026-01-02") == "2026-01-01"
    r.update_day("c", "2026-01-01", 15, 2)  # five more clicks of the first day, read late
    assert r.clicks["c"] == 19 and r.conversions["c"] == 2
    r.update_day("c", "2026-01-03", 1, 0)
    assert r.day_before("c", "2026-01-03") == "2026-01-02" and r.day_before("c", "2026-01-02") is None
    assert r.day_before("other", "2026-01-03") is None
