"""The traffic forecast behind tomorrow's spend plan: hourly shares, time zones, fading history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from bidder.campaigns import parse_campaign
from bidder.forecast import TrafficForecast
from streams.ledger import SpendLedger
from streams.processor import Campaigns, Pacer

DAY0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()  # a Monday, UTC midnight


def day_of_traffic(f: TrafficForecast, day: int, per_hour: list[int]) -> None:
    for hour, n in enumerate(per_hour):
        for i in range(n):
            f.observe(DAY0 + day * 86400 + hour * 3600 + i)


def test_no_forecast_before_a_whole_day() -> None:
    f = TrafficForecast()
    day_of_traffic(f, 0, [5] * 24)
    assert not f.ready() and f.utc_weights() is None
    assert f.plan("UTC", "2026-03-02").target(0.5) == pytest.approx(0.5)  # uniform until then


def test_weights_follow_yesterdays_traffic() -> None:
    f = TrafficForecast(min_share=0.0)
    day_of_traffic(f, 0, [1] * 12 + [3] * 12)
    f.observe(DAY0 + 86400, 0)  # the next day begins: the first is closed
    w = f.utc_weights()
    assert w is not None and sum(w) == pytest.approx(1.0)
    assert w[18] == pytest.approx(3 * w[6])
    plan = f.plan("UTC", "2026-03-03")
    assert plan.target(0.5) == pytest.approx(12 / 48)  # a quarter of the traffic comes in the first half


def test_quiet_hours_keep_a_floor() -> None:
    f = TrafficForecast(min_share=0.1)
    day_of_traffic(f, 0, [0] * 6 + [10] * 18)
    f.observe(DAY0 + 86400, 0)
    w = f.utc_weights()
    assert w is not None and min(w) > 0.0  # a plan never asks for nothing where traffic was merely low


def test_local_time_shifts_the_hours() -> None:
    f = TrafficForecast(min_share=0.0)
    day_of_traffic(f, 0, [0] * 20 + [10] + [0] * 3)  # everything at 20:00 UTC
    f.observe(DAY0 + 86400, 0)
    berlin = f.local_weights("Europe/Berlin", "2026-03-03")  # UTC+1 in March
    assert berlin is not None and berlin[21] == pytest.approx(1.0)
    kolkata = f.local_weights("Asia/Kolkata", "2026-03-03")  # UTC+5:30: the hour is split over two local hours
    assert kolkata is not None and kolkata[1] == pytest.approx(0.5) and kolkata[2] == pytest.approx(0.5)


def test_older_days_fade() -> None:
    f = TrafficForecast(decay=0.5, min_share=0.0)
    day_of_traffic(f, 0, [10] + [0] * 23)
    day_of_traffic(f, 1, [0] * 23 + [10])
    f.observe(DAY0 + 2 * 86400, 0)  # the next day begins
    w = f.utc_weights()
    assert w is not None and w[0] == pytest.approx(0.5) and w[23] == pytest.approx(0.5)
    day_of_traffic(f, 2, [0] * 23 + [10])
    f.observe(DAY0 + 3 * 86400, 0)  # the next day begins
    w = f.utc_weights()
    assert w is not None and w[0] == pytest.approx(0.25) and w[23] == pytest.approx(0.75)
    f.observe(DAY0)  # a straggler from a closed day changes nothing
    assert f.utc_weights() == w


def test_pacer_plans_each_day_from_the_forecast() -> None:
    camps = Campaigns()
    camp = parse_campaign({"id": "c", "advertiser": "a.example", "budget": {"daily": 10},
                           "goal": {"type": "cpc", "value_per_click": 1},
                           "creatives": [{"id": "k", "type": "banner", "w": 300, "h": 250, "adm": "<b/>"}]})
    camps.by_id[camp.id] = camp
    f = TrafficForecast(min_share=0.0)
    pacer = Pacer(camps, f)
    ledger = SpendLedger({}, {}, camps.day_of, camps.click_value)
    pacer.update(DAY0 + 60, ledger)
    assert pacer.controllers["c"].plan.target(0.5) == pytest.approx(0.5)  # no history yet: uniform
    day_of_traffic(f, 0, [1] * 12 + [3] * 12)
    pacer.update(DAY0 + 86400 + 60, ledger)  # the new day takes the new plan, before any request of it came
    assert pacer.controllers["c"].plan.target(0.5) == pytest.approx(0.25)


def test_running_counters_are_spread_over_the_time_between_reports() -> None:
    f = TrafficForecast(min_share=0.0)
    f.observe_counter("b1", DAY0, 1000)  # first report: a baseline only
    f.observe_counter("b1", DAY0 + 2 * 3600, 1600)  # 600 requests over two hours
    f.observe_counter("b2", DAY0 + 1800, 50)
    f.observe_counter("b2", DAY0 + 3600, 250)  # 200 in the second half of hour 0
    f.observe_counter("b1", DAY0 + 1800, 1300)  # replayed after a crash: counted already
    f.observe_counter("b1", DAY0 + 3 * 3600, 1640)  # 40 more in hour 2
    assert f.today[0] == pytest.approx(300 + 200)
    assert f.today[1] == pytest.approx(300)
    assert f.today[2] == pytest.approx(40)
    assert sum(f.today) == pytest.approx(840)


def test_the_wall_clock_past_midnight_counts_the_day_just_ended_without_changing_it() -> None:
    f = TrafficForecast(min_share=0.0)
    day_of_traffic(f, 0, [1] * 12 + [3] * 12)
    assert f.utc_weights() is None  # by event time the day is not over
    w = f.utc_weights(now=DAY0 + 86400 + 5)  # by the wall clock it is
    assert w is not None and w[18] == pytest.approx(3 * w[6])
    assert f.ready(DAY0 + 86400 + 5) and not f.ready() and f.days == 0  # a view, not a change


def test_a_backlog_of_old_days_builds_the_history_in_event_time() -> None:
    f = TrafficForecast(decay=0.5, min_share=0.0)
    for day in range(3):  # a worker reading a retained bid log from its start
        f.observe_counter("b1", DAY0 + day * 86400 + 6 * 3600, 1000 * day)
        f.observe_counter("b1", DAY0 + day * 86400 + 7 * 3600, 1000 * day + 500)
    w = f.utc_weights()
    assert f.days == 1 and w is not None  # the log's first day, seen from its first report at 06:00, is not whole
    assert max(range(24), key=lambda h: w[h]) == 6


def test_a_day_followed_by_a_gap_still_counts() -> None:
    """A day closed by a request two days later was replaced by zeros: the whole observed day was dropped."""
    f = TrafficForecast(min_share=0.0)
    day_of_traffic(f, 0, [1] * 18 + [10] * 6)
    f.observe(DAY0 + 2 * 86400 + 10, 1)  # nothing at all on day 1 (a worker down), then day 2 begins
    assert f.days == 1 and f.ready()
    w = f.utc_weights()
    assert w is not None and w[20] == pytest.approx(10 * w[3])
    day_of_traffic(f, 2, [1] * 24)
    f.observe(DAY0 + 3 * 86400, 0)
    assert f.days == 2  # the empty day in between folded nothing


def test_each_local_hour_takes_the_offset_in_force_at_its_start() -> None:
    """On the day New York's clocks go back (2026-11-01, 06:00 UTC), local hours before the change are UTC-4."""
    f = TrafficForecast(min_share=0.0)
    per_hour = [0] * 24
    per_hour[4] = 10  # 00:00 EDT
    per_hour[18] = 30  # 13:00 EST
    day_of_traffic(f, 0, per_hour)
    f.observe(DAY0 + 86400, 0)
    w = f.local_weights("America/New_York", "2026-11-01")
    assert w is not None and w[0] == pytest.approx(0.25) and w[13] == pytest.approx(0.75)


def reports_from(f: TrafficForecast, start: float, end: float, per_hour: Callable[[float], int]) -> None:
    """A bidder's running request count reported every five minutes from `start` to `end`, with `per_hour(t)`
    requests an hour at time t, as the bid log carries it."""
    count, t = 0, start
    while t <= end:
        f.observe_counter("b1", t, count)
        count += per_hour(t) * 300 // 3600
        t += 300


def evening_peak(t: float) -> int:
    """Three times the requests from noon to midnight (UTC) from the second day on; even on the first."""
    return 10800 if t >= DAY0 + 86400 and int(t) // 3600 % 24 >= 12 else 3600


def test_a_day_seen_only_from_mid_day_is_not_taken_for_a_whole_one() -> None:
    """A worker started at 15:00 folded its first day as a whole one at midnight: the next day's plan put 3% of
    the budget before 15:00 and 97% after, on traffic it had never seen."""
    f = TrafficForecast()
    reports_from(f, DAY0 + 15 * 3600, DAY0 + 2 * 86400 + 600, evening_peak)
    assert f.days == 1  # the second day only
    w = f.utc_weights()
    assert w is not None and w[18] == pytest.approx(3 * w[6], rel=0.01)
    f = TrafficForecast()
    reports_from(f, DAY0 + 15 * 3600, DAY0 + 86400 + 600, evening_peak)  # just past the first midnight
    now = DAY0 + 86400 + 600
    assert f.days == 0 and not f.ready(now) and f.utc_weights(now) is None
    assert f.plan("UTC", "2026-03-03", now=now).target(15 / 24) == pytest.approx(15 / 24)  # uniform until then


def test_a_day_seen_from_its_first_hour_is_whole() -> None:
    f = TrafficForecast(min_share=0.0)
    reports_from(f, DAY0 + 86400 + 1200, DAY0 + 2 * 86400 + 600, evening_peak)  # from 00:20
    w = f.utc_weights()
    assert f.days == 1 and w is not None and w[18] == pytest.approx(3 * w[6], rel=0.01)
