"""Pacing at its edges: dayparting or time zone changed mid-day, lifetime sums at midnight, the value sketch."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bidder.campaigns import parse_campaign
from bidder.predictive_pacing import ValueSketch
from streams.ledger import SpendLedger
from streams.processor import Campaigns, Pacer
from tests.helpers import campaign
from tests.test_pacing import UTC_DAY, Market, binding_budget

STEP_S, STEPS, PER_STEP = 300, 288, 40  # five-minute steps through a UTC day


def day_with_a_change(before: dict[str, Any], after: dict[str, Any], change_at: int, seed: int = 3) -> dict[int, float]:
    """A UTC campaign on the stepped market, its document changed at step `change_at`; the share of the budget spent
    by each hour.  It buys only in the hours its dayparting allows, as a bidder would."""
    budget = binding_budget(STEPS, PER_STEP)
    doc = campaign(budget={"daily": budget / 1e6, "total": 0})
    camps = Campaigns()
    pacer = Pacer(camps)
    ledger = SpendLedger({}, {}, camps.day_of, camps.click_value)
    camps.by_id["c1"] = parse_campaign({**doc, **before})
    market, spent, by_hour = Market(seed, PER_STEP), 0, {}
    (state,) = pacer.update(UTC_DAY, ledger)
    for i in range(STEPS):
        if i == change_at:
            camps.by_id["c1"] = parse_campaign({**doc, **after})
        camp = camps.by_id["c1"]
        t = UTC_DAY + i * STEP_S + STEP_S / 2
        allowed = camp.in_flight(dt.datetime.fromtimestamp(t, dt.UTC))
        cost = market.step(state.lam, max(budget - spent, 0)) if allowed else 0
        spent += cost
        ledger.apply("billing", {"id": f"bill:{i}", "ts": int(t * 1000), "bid_id": f"b{i}", "campaign": "c1",
                                 "cost": cost, "day": "2026-06-01"})
        (state,) = pacer.update(UTC_DAY + (i + 1) * STEP_S - 1, ledger)
        if (i + 1) % 12 == 0:
            by_hour[(i + 1) // 12] = spent / budget
    return by_hour


def test_dayparting_narrowed_mid_day_spends_the_budget_by_its_new_last_hour() -> None:
    """Narrowed at 10:00 from all day to 9-17, the plan kept running to midnight: at 17:00 the campaign stopped
    with 73% of its budget spent."""
    by_hour = day_with_a_change({"dayparting": []}, {"dayparting": list(range(9, 17))}, change_at=120)
    assert by_hour[10] == pytest.approx(10 / 24, abs=0.05)
    assert by_hour[17] >= 0.97


def test_dayparting_widened_mid_day_spreads_what_is_left_over_the_new_hours() -> None:
    """Widened at 10:00 from 9-17 to all day, the old plan called for the whole budget by 17:00 and the evening
    got nothing; paced on what is left, 7/8 of it spreads over the 14 hours to midnight."""
    by_hour = day_with_a_change({"dayparting": list(range(9, 17))}, {"dayparting": []}, change_at=120)
    assert by_hour[10] == pytest.approx(1 / 8, abs=0.05)
    assert by_hour[17] == pytest.approx(1 / 8 + 7 / 8 * 7 / 14, abs=0.08)
    assert by_hour[24] >= 0.97


def test_a_time_zone_changed_mid_day_is_planned_on_the_new_zones_clock() -> None:
    """Moved from UTC to New York on the morning the clocks there go forward (a 23-hour day), the plan kept
    the UTC day's 24 hours: 9-17 dayparting read an hour off, and 96% of the budget was due at 17:00."""
    doc = campaign(budget={"daily": 100.0, "total": 0}, dayparting=list(range(9, 17)))
    camps = Campaigns()
    pacer = Pacer(camps)
    ledger = SpendLedger({}, {}, camps.day_of, camps.click_value)
    camps.by_id["c1"] = parse_campaign(doc)
    utc_midnight = dt.datetime(2026, 3, 8, tzinfo=dt.UTC).timestamp()
    for k in range(12):  # UTC 00:00 to 11:00, before any hour it may bid in
        pacer.update(utc_midnight + k * 3600, ledger)
    camps.by_id["c1"] = parse_campaign({**doc, "flight": {**doc["flight"], "timezone": "America/New_York"}})
    tz = ZoneInfo("America/New_York")
    due = {}
    for hour in (8, 13, 17):
        (state,) = pacer.update(dt.datetime(2026, 3, 8, hour, tzinfo=tz).timestamp(), ledger)
        assert state.day == "2026-03-08"
        due[hour] = state.plan_share
    assert due == pytest.approx({8: 0.0, 13: 0.5, 17: 1.0})


def test_a_zero_value_read_after_the_sketch_dilutes_its_shares() -> None:
    """The shares were remembered from before the zero-value request, so it diluted nothing until the next
    positive value came: the forecast spend per auction read too high, and lambda with it."""
    s = ValueSketch()
    s.add(1_000_000)
    assert [share for _, share in s.points()] == [1.0]
    s.add(0)
    assert [share for _, share in s.points()] == [0.5]


class CountingLedger(SpendLedger):
    """A ledger that counts its sums of earlier days' spend: each one reads every campaign-day's totals."""

    sums = 0

    def spend_before(self, days: dict[str, str]) -> dict[str, int]:
        self.sums += 1
        return super().spend_before(days)


def test_the_leases_asked_for_at_midnight_sum_the_lifetime_spend_once() -> None:
    """Every bidder asks for the new day's lease at the campaign's midnight, before the pacer's next step: each
    request summed every day's totals again, 400 sums for 400 requests on the worker's event loop."""
    camp = parse_campaign(campaign(budget={"daily": 100.0, "total": 250.0}))
    camps = Campaigns()
    camps.by_id[camp.id] = camp
    ledger = CountingLedger({}, {}, camps.day_of, camps.click_value)
    pacer = Pacer(camps)
    for i in range(180):  # 180 of the 250 spent by the evening of 1 June
        ledger.apply("billing", {"id": f"bill:{i}", "campaign": camp.id, "ts": int(UTC_DAY * 1000) + 3_600_000 + i,
                                 "cost": 1_000_000, "day": "2026-06-01"})
    pacer.update(UTC_DAY + 86400 - 1, ledger)
    assert ledger.sums == 1
    budgets = {pacer.budget_today(camp, "2026-06-02", ledger) for _ in range(400)}
    assert budgets == {70_000_000}  # what the total leaves
    assert ledger.sums == 2
    assert pacer.budget_today(camp, "2026-06-01", ledger) == 100_000_000  # a late request for the day before
    (state,) = pacer.update(UTC_DAY + 86400 + 1, ledger)
    assert (state.day, state.budget_today) == ("2026-06-02", 70_000_000)
