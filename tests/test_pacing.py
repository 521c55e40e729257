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

from bidder.campaigns import parse_campaign
from bidder.forecast import TrafficForecast
from bidder.pacing import PacingController, PacingState, SpendPlan, day_clock, day_fraction
from bidder.pricing import bid_price
from streams.ledger import SpendLedger
from streams.processor import PACING_KP, PACING_TAIL, Campaigns, Pacer
from tests.helpers import campaign

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
@pytest.mark.parametrize(("kp", "tail", "rel"), [(1.0, 1.0, 0.2), (PACING_KP, PACING_TAIL, 0.08)])
def test_follows_a_budget_change_mid_day(factor: float, kp: float, tail: float, rel: float) -> None:
    """With the streams side's firm proportional term, a budget raised at noon used to read as half a day behind
    (lambda 0 for hours, the third quarter spending 17% too much) and a cut as far ahead (32% too little)."""
    steps, per_step = 1000, 20
    before = binding_budget(steps, per_step)
    after = int(before * factor)
    ctl = PacingController(lam=lam_star(before, steps, per_step), kp=kp, tail=tail)
    trace = run_day(ctl, Market(5, per_step), lambda f: before if f <= 0.5 else after, steps)
    spent_end = trace[-1][1]
    assert 0.97 * after <= spent_end <= after
    lam_before = statistics.mean(lam for f, _, _, lam in trace if 0.3 <= f <= 0.5)
    lam_after = statistics.mean(lam for f, _, _, lam in trace if 0.7 <= f <= 0.95)
    assert (lam_after > lam_before) == (factor < 1)
    assert min(lam for f, _, _, lam in trace if f >= 0.5) > 0.2  # never bidding full value to catch up
    # the second half spends what is left evenly: no rush (or stall) right after the change
    mid_spent = next(s for f, s, _, _ in trace if f >= 0.5)
    q3_spent = next(s for f, s, _, _ in trace if f >= 0.75)
    assert (q3_spent - mid_spent) == pytest.approx((after - mid_spent) / 2, rel=rel)


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
        ctl.update(0.0, 0, 1000)  # paced since midnight: the gap is to the day's plan
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


# -- a day of 23 or 25 hours -------------------------------------------------------


def local_ts(timezone: str, day: str, hour: int, minute: int = 0, fold: int = 0) -> float:
    return dt.datetime.fromisoformat(f"{day}T{hour:02d}:{minute:02d}").replace(tzinfo=ZoneInfo(timezone),
                                                                              fold=fold).timestamp()


@pytest.mark.parametrize("day", ["2026-03-08", "2026-11-01", "2026-06-01"])
def test_a_dayparted_plan_keeps_to_the_wall_clock_when_clocks_change(day: str) -> None:
    """The real share of a 23- or 25-hour day read as a wall-clock hour put 9-17 dayparting an hour off:
    0.44 due at 13:00 and 0.96 at 17:00 in spring, 0.075 at 9:00 and 0.555 at 13:00 in autumn."""
    tz = "America/New_York"
    plan = SpendPlan(hours=range(9, 17), clock=day_clock(tz, day))
    due = {h: plan.target(day_fraction(tz, local_ts(tz, day, h))[1]) for h in (9, 13, 17)}
    assert due == pytest.approx({9: 0.0, 13: 0.5, 17: 1.0})


@pytest.mark.parametrize(("timezone", "day", "hours"), [("America/New_York", "2026-11-01", 25),
                                                         ("America/New_York", "2026-03-08", 23),
                                                         ("Australia/Lord_Howe", "2026-04-05", 24.5)])
def test_the_plan_runs_forward_over_every_real_hour_of_the_day(timezone: str, day: str, hours: float) -> None:
    """The hour shown twice is planned twice and a skipped hour not at all; the plan never runs backwards and
    ends at the whole budget at midnight."""
    plan = SpendPlan(clock=day_clock(timezone, day))
    start = local_ts(timezone, day, 0)
    due = [plan.target(day_fraction(timezone, start + k * 60.0)[1]) for k in range(int(hours * 60))]
    assert due[0] == 0.0 and all(b > a for a, b in zip(due, due[1:], strict=False))
    assert due[-1] == pytest.approx(1.0, abs=1e-3)
    # uniform over the real hours: by 13:00 the share of the real hours gone by
    assert plan.target(day_fraction(timezone, local_ts(timezone, day, 13))[1]) == pytest.approx((hours - 11) / hours)


def test_a_traffic_shaped_plan_keeps_to_the_wall_clock_when_clocks_change() -> None:
    forecast = TrafficForecast(min_share=0.0)
    for hour in range(24):  # a day of even traffic, 2026-10-31 UTC
        forecast.observe(dt.datetime(2026, 10, 31, hour, 30, tzinfo=dt.UTC).timestamp(), 100)
    forecast.observe(dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC).timestamp(), 0)
    tz, day = "America/New_York", "2026-11-01"
    plan = forecast.plan(tz, day, frozenset(range(9, 17)))
    due = {h: plan.target(day_fraction(tz, local_ts(tz, day, h))[1]) for h in (9, 13, 17)}
    assert due == pytest.approx({9: 0.0, 13: 0.5, 17: 1.0})


# -- starting, or restarting, mid-day ----------------------------------------------


def test_a_controller_started_mid_day_paces_what_is_left_over_the_rest_of_the_day() -> None:
    """Started at 15:00, the gap to the plan since midnight held lambda at 0 for hours: 62% of the budget was
    spent by 17:00, where spreading it over the nine hours left calls for 22%."""
    steps, per_step, start = 288, 40, 180  # five-minute steps; 15:00
    for seed in (21, 22):
        budget = binding_budget(steps - start, per_step)
        ctl = PacingController(kp=PACING_KP, tail=PACING_TAIL)
        market, spent = Market(seed, per_step), 0
        lam = ctl.update(start / steps, 0, budget).lam
        by_hour = {}
        for i in range(start, steps):
            spent += market.step(lam, max(budget - spent, 0))
            lam = ctl.update((i + 1) / steps, spent, budget).lam
            if (i + 1) % 12 == 0:
                by_hour[(i + 1) // 12] = spent / budget
        assert by_hour[17] == pytest.approx(2 / 9, abs=0.07)
        assert all(share == pytest.approx((h - 15) / 9, abs=0.08) for h, share in by_hour.items())
        assert by_hour[24] >= 0.97


UTC_DAY = dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()


def pacer_afternoon(seed: int, morning_status: str | None) -> dict[int, float]:
    """A campaign the pacer first meets at 15:00 (or sees paused until then), on the market from 15:00 to midnight;
    its share of the day's budget spent by each hour."""
    steps, per_step = 288, 40
    budget = binding_budget(108, per_step)
    doc = campaign(budget={"daily": budget / 1e6, "total": 0})
    camps = Campaigns()
    pacer = Pacer(camps)
    ledger = SpendLedger({}, {}, camps.day_of, camps.click_value)
    if morning_status is not None:
        camps.by_id["c1"] = parse_campaign({**doc, "status": morning_status})
        for i in range(180):
            pacer.update(UTC_DAY + i * 300, ledger)
    camps.by_id["c1"] = parse_campaign(doc)
    market, spent, by_hour = Market(seed, per_step), 0, {}
    (state,) = pacer.update(UTC_DAY + 180 * 300, ledger)
    for i in range(180, steps):
        cost = market.step(state.lam, max(budget - spent, 0))
        spent += cost
        ledger.apply("billing", {"id": f"bill:{i}", "ts": int((UTC_DAY + i * 300 + 150) * 1000), "bid_id": f"b{i}",
                                 "campaign": "c1", "cost": cost})
        (state,) = pacer.update(UTC_DAY + (i + 1) * 300 - 1, ledger)
        if (i + 1) % 12 == 0:
            by_hour[(i + 1) // 12] = spent / budget
    return by_hour


@pytest.mark.parametrize("morning", [None, "paused"])
def test_a_campaign_created_or_resumed_mid_day_is_paced_over_the_rest_of_the_day(morning: str | None) -> None:
    by_hour = pacer_afternoon(3, morning)
    assert by_hour[17] == pytest.approx(2 / 9, abs=0.07)
    assert by_hour[24] >= 0.97


def test_a_paused_campaign_keeps_its_lambda() -> None:
    ctl = PacingController(lam=2.0, kp=PACING_KP, tail=PACING_TAIL)
    ctl.update(0.0, 0, 1000)
    ctl.update(0.3, 300, 1000)
    lam = ctl.lam
    for _ in range(3):  # paused: nothing spent while the plan moves on
        assert ctl.hold(300, 1000).lam == lam
    assert ctl.update(0.6, 300, 1000).lam == pytest.approx(lam)  # resumed: no gap to the plan it did not follow
    assert ctl.due(0.8) == pytest.approx(0.3 + 0.7 * 0.5)  # what is left, over the plan left


def test_a_new_controller_starts_from_the_campaigns_last_known_lambda() -> None:
    camps = Campaigns()
    camps.by_id["c1"] = parse_campaign(campaign(budget={"daily": 100.0, "total": 0}))
    pacer = Pacer(camps)
    pacer.remember(PacingState("c1", "2026-06-01", lam=2.5))
    (state,) = pacer.update(UTC_DAY + 15 * 3600, SpendLedger({}, {}, camps.day_of, camps.click_value))
    assert state.lam == pytest.approx(2.5)
    pacer.remember(PacingState("c1", "2026-06-01", lam=9.0))  # its controller runs: nothing to take over
    # no ledger: Pacer.update checks for None, though its annotation does not
    assert pacer.update(UTC_DAY + 15 * 3600 + 300, None)[0].lam < 9.0
