"""Pacing: the spend plan, and the controller on a synthetic second-price market."""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
import statistics
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidder.pacing import PacingController, SpendPlan, day_fraction
from bidder.pricing import bid_price

MICROS = 1_000_000
MAX_BID = 50 * MICROS


class Market:
    """Stationary second-price market: request values and market prices are independent lognormals (CPM micros)."""

    def __init__(self, seed: int, per_step: int, price_scale: float = 1.0) -> None:
        self.rng = random.Random(seed)
        self.per_step = per_step
        self.price_scale = price_scale

    def request(self) -> tuple[int, int]:
        value = int(4 * MICROS * math.exp(self.rng.gauss(0.0, 0.6)))
        price = int(self.price_scale * 1.5 * MICROS * math.exp(self.rng.gauss(0.0, 0.5)))
        return value, price

    def step(self, lam: float, budget_left: int) -> int:
        """Cost (micros per impression) of one control step's auctions at this lam, never past the budget left."""
        cost = 0
        for _ in range(self.per_step):
            value, price = self.request()
            bid = min(bid_price(value, lam, MAX_BID, 0, False), (budget_left - cost) * 1000)
            if bid > 0 and bid >= price:
                cost += price // 1000
        return cost


def expected_step_cost(lam: float, sample: list[tuple[int, int]], per_step: int) -> float:
    won = [p // 1000 for v, p in sample if bid_price(v, lam, MAX_BID, 0, False) >= p]
    return sum(won) / len(sample) * per_step


@functools.cache
def market_sample(seed: int = 99, n: int = 40_000) -> tuple[tuple[int, int], ...]:
    m = Market(seed, 1)
    return tuple(m.request() for _ in range(n))


def lam_star(budget: int, steps: int, per_step: int) -> float:
    """The multiplier that spends the budget in expectation, solved offline.

    A request is won while lam <= value / price - 1 (and price <= max bid), so
    the spend is a step function of lam: walk the thresholds from the top down.
    """
    sample = market_sample()
    per_request = budget / (steps * per_step)
    wins = sorted(((v / p - 1.0, p // 1000) for v, p in sample if p <= MAX_BID), reverse=True)
    spend = 0.0
    for threshold, cost in wins:
        spend += cost / len(sample)
        if spend >= per_request:
            return max(threshold, 0.0)
    return 0.0


def run_day(ctl: PacingController, market: Market, budget_at, steps: int) -> list[tuple[float, int, int, float]]:
    """Drive the controller through one day; returns (fraction, spent, budget, lam) per step."""
    spent, out = 0, []
    lam = ctl.update(0.0, 0, budget_at(0.0)).lam
    for i in range(steps):
        frac = (i + 1) / steps
        budget = budget_at(frac)
        spent += market.step(lam, max(budget - spent, 0))
        lam = ctl.update(frac, spent, budget).lam
        out.append((frac, spent, budget, lam))
    return out


# -- the plan ----------------------------------------------------------------------


def test_uniform_plan_is_the_clock() -> None:
    plan = SpendPlan()
    assert plan.target(0.0) == 0.0
    assert plan.target(0.25) == pytest.approx(0.25)
    assert plan.target(1.0) == 1.0


def test_dayparting_gives_no_budget_outside_allowed_hours() -> None:
    plan = SpendPlan(hours=range(9, 17))  # 8 allowed hours
    assert plan.target(9 / 24) == 0.0
    assert plan.target(13 / 24) == pytest.approx(0.5)
    assert plan.target(17 / 24) == pytest.approx(1.0)
    assert plan.target(20 / 24) == 1.0


def test_forecast_shapes_the_plan() -> None:
    weights = [1.0] * 12 + [3.0] * 12  # the afternoon has 3x the traffic
    plan = SpendPlan(weights=weights)
    assert plan.target(0.5) == pytest.approx(12 / 48)
    plan_daypart = SpendPlan(hours={0, 23}, weights=weights)
    assert plan_daypart.target(1 / 24) == pytest.approx(1 / 4)  # hour 0 weight 1 of 1 + 3


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=24, max_size=24),
       st.sets(st.integers(min_value=0, max_value=23)), st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=2))
def test_plan_is_monotone_from_zero_to_one(weights: list[float], hours: set[int], points: list[float]) -> None:
    plan = SpendPlan(hours=hours, weights=weights)
    xs = sorted(points)
    ys = [plan.target(x) for x in xs]
    assert all(0.0 <= y <= 1.0 for y in ys)
    assert all(a <= b + 1e-12 for a, b in zip(ys, ys[1:], strict=False))
    assert plan.target(1.0) == 1.0


def test_bad_forecast_is_rejected() -> None:
    with pytest.raises(ValueError):
        SpendPlan(weights=[1.0] * 23)


# -- the controller ----------------------------------------------------------------


def binding_budget(steps: int, per_step: int, share: float = 0.3) -> int:
    """A budget that buys `share` of what bidding full value would spend: pacing must raise lam well above 0."""
    return int(share * expected_step_cost(0.0, list(market_sample(7, 20_000)), per_step) * steps)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_converges_on_a_stationary_market_without_oscillating(seed: int) -> None:
    steps, per_step = 1000, 20
    budget = binding_budget(steps, per_step)
    target = lam_star(budget, steps, per_step)
    # started from a multiplier off by a factor ~1.5 in 1 + lam, as yesterday's might be
    trace = run_day(PacingController(lam=target / 2), Market(seed, per_step), lambda f: budget, steps)
    spent_end = trace[-1][1]
    assert 0.97 * budget <= spent_end <= budget
    worst_gap = max(abs(s / budget - f) for f, s, _, _ in trace if f >= 0.1)
    assert worst_gap < 0.04
    late = [1 + lam for f, _, _, lam in trace if 0.5 <= f < 0.95]
    assert statistics.pstdev(late) / statistics.mean(late) < 0.08  # settled, not swinging
    assert statistics.mean(late) == pytest.approx(1 + target, rel=0.1)


def test_converges_from_a_cold_start() -> None:
    """From lam = 0 the first tenth of the day overspends; the rest of the budget is then spread evenly."""
    steps, per_step = 1000, 20
    budget = binding_budget(steps, per_step)
    target = lam_star(budget, steps, per_step)
    trace = run_day(PacingController(), Market(11, per_step), lambda f: budget, steps)
    assert 0.97 * budget <= trace[-1][1] <= budget
    late = [1 + lam for f, _, _, lam in trace if 0.3 <= f < 0.95]
    assert statistics.pstdev(late) / statistics.mean(late) < 0.08
    assert statistics.mean(late) == pytest.approx(1 + target, rel=0.15)
    gaps = [s / budget - f for f, s, _, _ in trace]
    assert max(gaps) < 0.12
    assert abs(gaps[-1]) < 0.03


def test_lam_stays_zero_when_the_budget_does_not_bind() -> None:
    steps, per_step = 400, 20
    budget = binding_budget(steps, per_step, 3.0)
    trace = run_day(PacingController(), Market(4, per_step), lambda f: budget, steps)
    assert max(lam for *_, lam in trace) < 0.05


@pytest.mark.parametrize("factor", [0.75, 1.6])
def test_follows_a_budget_change_mid_day(factor: float) -> None:
    steps, per_step = 1000, 20
    before = binding_budget(steps, per_step)
    after = int(before * factor)
    ctl = PacingController(lam=lam_star(before, steps, per_step))
    trace = run_day(ctl, Market(5, per_step), lambda f: before if f <= 0.5 else after, steps)
    spent_end = trace[-1][1]
    assert 0.97 * after <= spent_end <= after
    lam_before = statistics.mean(lam for f, _, _, lam in trace if 0.3 <= f <= 0.5)
    lam_after = statistics.mean(lam for f, _, _, lam in trace if 0.7 <= f <= 0.95)
    assert (lam_after > lam_before) == (factor < 1)
    # the second half spends what is left evenly: no rush (or stall) right after the change
    mid_spent = next(s for f, s, _, _ in trace if f >= 0.5)
    q3_spent = next(s for f, s, _, _ in trace if f >= 0.75)
    assert (q3_spent - mid_spent) == pytest.approx((after - mid_spent) / 2, rel=0.15)


def test_exhausted_budget_stops_bidding() -> None:
    ctl = PacingController(lam_max=50.0)
    ctl.update(0.0, 0, 1000)
    state = ctl.update(0.3, 1000, 1000)
    assert state.exhausted
    assert state.lam == pytest.approx(50.0)
    assert bid_price(10 * MICROS, state.lam, MAX_BID, 200_000, False) == 0  # 10/51 < 0.2 floor


def test_no_update_outside_dayparting_hours() -> None:
    ctl = PacingController(plan=SpendPlan(hours=range(9, 17)), lam=2.0, kp=0.0)
    ctl.update(0.0, 0, 10_000)
    lam = ctl.update(5 / 24, 3_000, 10_000).lam  # late billing at night: the plan has not moved
    assert lam == pytest.approx(2.0)
    lam = ctl.update(10 / 24, 3_000, 10_000).lam  # an allowed hour with no spend: behind the replanned target
    assert lam < 2.0
    lam_low = lam
    lam = ctl.update(11 / 24, 6_000, 10_000).lam  # then an hour spending 3x its share of what is left
    assert lam > lam_low


@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0), st.integers(min_value=0, max_value=10**9),
                          st.integers(min_value=0, max_value=10**9)), min_size=1, max_size=40))
def test_lam_is_always_within_bounds(steps: list[tuple[float, int, int]]) -> None:
    ctl = PacingController(lam_max=20.0)
    for frac, spent, budget in sorted(steps):
        lam = ctl.update(frac, spent, budget).lam
        assert 0.0 <= lam <= 20.0 + 1e-9


def test_next_day_starts_from_the_last_multiplier() -> None:
    ctl = PacingController(day="2026-01-01", lam=3.0, kp=0.0)
    nxt = ctl.next_day("2026-01-02")
    assert nxt.day == "2026-01-02"
    assert nxt.lam == pytest.approx(3.0)


def test_tail_weighs_a_late_shortfall_more() -> None:
    """The same gap to plan moves lambda more with little of the day left, and about as before early in the day."""
    plain = PacingController(lam=2.0, kp=1.0)
    tailed = PacingController(lam=2.0, kp=1.0, tail=0.25)
    for ctl in (plain, tailed):
        ctl.update(0.0, 0, 1000)
    early = [ctl.update(0.02, 0, 1000).lam for ctl in (plain, tailed)]  # 2% behind, just after midnight
    assert early[0] == pytest.approx(early[1], rel=0.01)
    plain, tailed = PacingController(lam=2.0, kp=1.0), PacingController(lam=2.0, kp=1.0, tail=0.25)
    for ctl in (plain, tailed):
        ctl.update(0.9, 880, 1000)
    late = [ctl.update(0.95, 930, 1000).lam for ctl in (plain, tailed)]  # 2% behind with 5% of the day left
    assert late[1] < late[0] < 2.0
    assert tailed.next_day("d2").tail == 0.25
    with pytest.raises(ValueError):
        PacingController(tail=0.0)


def test_new_day_can_take_a_new_plan() -> None:
    ctl = PacingController(day="d1", plan=SpendPlan(), lam=1.0)
    shaped = SpendPlan(weights=[1.0] * 12 + [3.0] * 12)
    assert ctl.next_day("d2", shaped).plan is shaped
    assert ctl.next_day("d2").plan is ctl.plan


def test_next_day_starts_from_the_days_average_multiplier() -> None:
    """A day that ends in a scramble (here: nothing spent in its last tenth) does not set the next day's start."""
    ctl = PacingController(day="d1", lam=math.expm1(1.0), gain=10.0, kp=1.0)
    ctl.update(0.0, 0, 1000)
    for i in range(1, 10):  # on plan all day: u stays at 1
        ctl.update(i / 10, i * 100, 1000)
    ctl.update(0.99, 900, 1000)  # then nothing more: the integral drops by a whole max_step
    assert ctl.u_int == pytest.approx(0.5)
    assert math.log1p(ctl.next_day("d2").lam) > 0.9  # about the day's average u, not its last


@pytest.mark.parametrize(
    ("timezone", "day", "hours"),
    [("America/New_York", "2026-11-01", 25), ("America/New_York", "2026-03-08", 23),
     ("Australia/Lord_Howe", "2026-04-05", 24.5), ("Asia/Kolkata", "2026-11-01", 24)],
)
def test_the_share_of_the_day_runs_forward_through_a_clock_change(timezone: str, day: str, hours: float) -> None:
    """On the day clocks go back, a wall-clock share would fall from 0.083 to 0.042 at 2 am: the pacer would see
    itself an hour ahead of plan and cut its bids."""
    tz = ZoneInfo(timezone)
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tz).timestamp()
    seen = [day_fraction(timezone, start + k * 60.0) for k in range(int(hours * 60))]
    assert {d for d, _, _ in seen} == {day}
    shares = [f for _, f, _ in seen]
    assert shares[0] == 0.0 and all(b > a for a, b in zip(shares, shares[1:], strict=False))
    assert shares[-1] == pytest.approx(1 - 1 / (hours * 60))
    next_day = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    assert day_fraction(timezone, start + hours * 3600)[:2] == (next_day, 0.0)
