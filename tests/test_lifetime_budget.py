"""A campaign's lifetime budget (`budget.total`): each day is paced and granted on what the total leaves of the
daily budget, and the campaign stops for good once the total is spent."""

from __future__ import annotations

import datetime as dt

from bidder.campaigns import parse_campaign
from streams.leases import LeaseDesk
from streams.ledger import SpendLedger
from streams.processor import LIFETIME_REFRESH_S, Campaigns, Pacer
from tests.helpers import campaign

DAY1 = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC).timestamp()
UNIT = 1_000_000


def setup(daily: float, total: float) -> tuple[Campaigns, SpendLedger, Pacer]:
    camp = parse_campaign(campaign(id="capped", budget={"daily": daily, "total": total}, dayparting=[],
                                   flight={"start": "2026-01-01", "end": "2027-12-31", "timezone": "UTC"}))
    camps = Campaigns()
    camps.by_id[camp.id] = camp
    return camps, SpendLedger({}, {}, camps.day_of, camps.click_value), Pacer(camps)


def spend(ledger: SpendLedger, at: float, units: int, tag: str) -> None:
    for i in range(units):
        ledger.apply("billing", {"id": f"bill:{tag}:{i}", "campaign": "capped", "ts": int(at * 1000) + i, "cost": UNIT})


def test_the_day_budget_is_what_the_total_leaves_of_the_daily_budget() -> None:
    camp = parse_campaign(campaign(budget={"daily": 100, "total": 250}))
    assert [camp.budget_today(s * UNIT) // UNIT for s in (0, 150, 200, 250, 400)] == [100, 100, 50, 0, 0]
    assert parse_campaign(campaign(budget={"daily": 100, "total": 0})).budget_today(10**15) == 100 * UNIT


def test_the_pacer_stops_a_campaign_whose_total_is_spent_and_paces_the_last_day_on_what_is_left() -> None:
    camps, ledger, pacer = setup(daily=100, total=250)
    spend(ledger, DAY1, 100, "d1")
    spend(ledger, DAY1 + 86400, 100, "d2")
    day3 = pacer.update(DAY1 + 2 * 86400, ledger)[0]
    assert (day3.budget_today, day3.exhausted) == (50 * UNIT, False)  # 250 - 200 left: half a day's budget
    spend(ledger, DAY1 + 2 * 86400 + 60, 50, "d3")
    assert pacer.update(DAY1 + 2 * 86400 + 120, ledger)[0].exhausted
    day4 = pacer.update(DAY1 + 3 * 86400, ledger)[0]
    assert (day4.budget_today, day4.exhausted) == (0, True)  # the total is spent: no more days


def test_late_billing_of_an_earlier_day_counts_within_a_refresh() -> None:
    camps, ledger, pacer = setup(daily=100, total=250)
    spend(ledger, DAY1, 100, "d1")
    now = DAY1 + 86400 + 3600
    assert pacer.update(now, ledger)[0].budget_today == 100 * UNIT
    spend(ledger, DAY1 + 3000, 80, "late")  # yesterday's notices, billed late: 180 of 250 spent before today
    assert pacer.update(now + LIFETIME_REFRESH_S, ledger)[0].budget_today == 70 * UNIT


def test_leases_grant_no_more_than_the_total_leaves() -> None:
    camps, ledger, pacer = setup(daily=100, total=100)
    spend(ledger, DAY1, 100, "d1")
    now = DAY1 + 86400
    day = pacer.update(now, ledger)[0].day
    camp = camps.by_id["capped"]
    req = {"v": 1, "bidder": "b1x1", "campaign": camp.id, "day": day, "granted": 0, "spent": 0, "frac": 0.05, "ts": now}
    desk = LeaseDesk()
    grant = desk.answer(req, camp, 0, now, budget=pacer.budget_today(camp, day, ledger))
    assert grant is not None and grant["granted"] == 0
    fresh = LeaseDesk().answer(req, camp, 0, now)
    assert fresh is not None and fresh["granted"] > 0  # the daily budget alone would grant
