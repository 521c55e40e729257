"""The pieces of `streambid loadtest day` that need no broker: the warped clock, the exchange's day, the hindsight optimum."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import time

import orjson
import pytest

from bidder.clock import ENV, Clock, WarpedClock, from_env, parse_warp
from bidder.engine import BidEngine, EngineConfig
from bidder.openrtb import parse_request
from loadtest.day import DAY, CampaignDay, ExchangeDay, cost_micros
from loadtest.day_kafka import TEMPLATES, DayOptions, plan_day
from loadtest.day_report import budget_reached, overspend_bound
from loadtest.day_stack import worker_totals
from loadtest.hindsight import Opportunity, eligible_creatives, hindsight_optimum, regret
from loadtest.simulator import Market
from models.snapshot import ModelSnapshot
from streams.events import check_event

# -- the clock --------------------------------------------------------------------------------------


def test_warped_clock_runs_speedup_times_faster_from_its_origin() -> None:
    wall_start = time.time()
    c = WarpedClock(origin=1_000_000.0, wall_start=wall_start, speedup=1440.0)
    before = time.time()
    now = c()
    after = time.time()
    assert 1_000_000.0 + (before - wall_start) * 1440 <= now <= 1_000_000.0 + (after - wall_start) * 1440
    assert c.wall_time(1_000_000.0 + 86400.0) == pytest.approx(wall_start + 60.0)
    assert c.wall_seconds(86400.0) == pytest.approx(60.0)
    assert Clock().wall_seconds(5.0) == 5.0 and abs(Clock()() - time.time()) < 1.0


def test_the_warp_setting_round_trips_exactly_and_rejects_nonsense() -> None:
    c = WarpedClock(1_790_000_000.123456, 1_790_000_123.987654, 2880.5)
    back = parse_warp(c.to_env())
    assert (back.origin, back.wall_start, back.speedup) == (c.origin, c.wall_start, c.speedup)
    assert isinstance(from_env({ENV: c.to_env()}), WarpedClock)
    assert type(from_env({})) is Clock
    for bad in ("1,2", "a,b,c", "1,2,0", "1,2,-3", "1,2,nan", "1,2,3,4"):
        with pytest.raises(ValueError):
            parse_warp(bad)


# -- the exchange's day -----------------------------------------------------------------------------


class SureMarket(Market):
    """Every impression is clicked and every click converts, so each path of the day runs."""

    def true_ctr(self, creative: str, ctx: tuple) -> float:
        return 1.0

    def conversion_rate(self, creative: str) -> float:
        return 1.0

    def notice_delay(self) -> float:
        return 3.0


def test_a_won_bid_is_billed_late_then_clicked_then_converted_with_valid_events() -> None:
    plan = plan_day(DayOptions(requests=200))
    market = SureMarket(7, namespace=plan.market.namespace)
    camps = {c.id: c for c in plan.campaigns}
    notices: list[tuple[str, str, float]] = []
    events: list[tuple[str, str, dict]] = []
    day = ExchangeDay(market, plan.campaigns, None, lambda k, q, now: notices.append((k, q, now)),
                      lambda kind, key, ev: events.append((kind, key, ev)), None)
    day.begin(plan.start)
    engine = BidEngine(EngineConfig(secret=b"s", explore_below=0), plan.campaigns, ModelSnapshot.empty(),
                       sink=lambda *a: None, clock=lambda: plan.start + 43200)
    now = plan.start + 43200
    answered = 0
    for a in plan.auctions:
        out = engine.bid(parse_request(a.body), "x", math.inf)
        if out.status == 200:
            answered += 1
            day.on_response(now, a, out.status, out.body)
    assert answered > 0
    wins = [q for k, q, _ in notices if k == "win"]
    assert len(wins) == sum(r.wins for r in day.results.values()) > 0
    assert not [k for k, _, _ in notices if k == "bill"], "billing waits for its delay"
    day.run_due(now + 3.0)
    bills = [(q, t) for k, q, t in notices if k == "bill"]
    assert len(bills) == len(wins) and all(t == now + 3.0 for _, t in bills)
    day.run_due(math.inf)
    kinds = [k for k, _, _ in events]
    assert kinds.count("impressions") == kinds.count("clicks") == kinds.count("conversions") == len(wins)
    for kind, key, ev in events:
        assert check_event(kind, ev) is ev and ev["campaign"] == key and key in camps
    for cid, r in day.results.items():
        conv_value = sum(ev["value"] for k, key, ev in events if k == "conversions" and key == cid)
        assert r.value == r.clicks * camps[cid].value_per_click + conv_value
        assert r.spend == sum(cost for _, _, cost in r.won) and len(r.won) == r.wins == r.impressions


def test_cost_is_charged_as_the_billing_notice_charges_it() -> None:
    for cpm in (0.0004, 1.2345674, 1.2345675, 3.0, 7.999999):
        assert cost_micros(cpm) == round(float(f"{cpm:.6f}") * 1_000_000) // 1000


# -- the campaigns and the hindsight optimum --------------------------------------------------------


def test_the_days_campaigns_differ_and_target_only_this_runs_traffic() -> None:
    plan = plan_day(DayOptions())  # the day `loadtest day` plays: on a smaller one, budgets of a few cents can tie
    assert len(plan.campaigns) == len(TEMPLATES)
    assert len({c.daily_budget for c in plan.campaigns}) == len(plan.campaigns)
    assert len({c.targeting for c in plan.campaigns}) == len(plan.campaigns)
    assert all(c.id.endswith(plan.tag) and c.daily_budget > 0 for c in plan.campaigns)
    assert all(c.targeting.domains == frozenset(plan.market.domains()) for c in plan.campaigns)
    assert all(r.domain in plan.market.domains() for r in plan.requests)


def test_the_engine_only_ever_bids_where_the_hindsight_says_the_campaign_was_eligible() -> None:
    plan = plan_day(DayOptions(requests=4000))
    by_id = {c.id: c for c in plan.campaigns}
    now = plan.start + 15 * 3600
    engine = BidEngine(EngineConfig(secret=b"s", explore_below=0), plan.campaigns, ModelSnapshot.empty(),
                       sink=lambda *a: None, clock=lambda: now)
    bids = 0
    for req in plan.requests:
        out = engine.bid(req, "x", math.inf)
        if out.status != 200:
            # and where it could have bid but did not, only the price stood in the way (no pacing, caps or leases here)
            if any(eligible_creatives(c, req, imp) for c in plan.campaigns for imp in req.imps
                   if c.in_flight(dt.datetime.fromtimestamp(now, dt.UTC))):
                assert out.reason == "below_floor"
            continue
        for sb in orjson.loads(out.body)["seatbid"]:
            for b in sb["bid"]:
                bids += 1
                eligible = [cr.id for imp in req.imps for cr in eligible_creatives(by_id[b["cid"]], req, imp)]
                assert b["crid"] in eligible
    assert bids > 100


def _best_integer_clicks(opps: list[Opportunity], budget: int) -> float:
    best = 0.0
    for k in range(len(opps) + 1):
        for subset in itertools.combinations(opps, k):
            if sum(o.cost for o in subset) <= budget:
                best = max(best, sum(o.ctr for o in subset))
    return best


def test_the_hindsight_optimum_beats_every_purchase_within_the_budget() -> None:
    rng = random.Random(3)
    for _ in range(60):
        opps = [Opportunity(0.0, rng.randint(0, 3000), rng.uniform(0.0, 0.01)) for _ in range(rng.randint(0, 9))]
        budget = rng.randint(0, 8000)
        opt = hindsight_optimum(opps, budget)
        assert opt.spend <= budget
        assert opt.expected_clicks >= _best_integer_clicks(opps, budget) - 1e-12
        everything = sum(o.ctr for o in opps)
        assert opt.expected_clicks <= everything + 1e-12
        if sum(o.cost for o in opps) <= budget:
            assert opt.expected_clicks == pytest.approx(everything)


def test_regret_is_zero_at_the_optimum_and_one_with_nothing() -> None:
    assert regret(2.0, 2.0) == 0.0 and regret(0.0, 2.0) == 1.0 and regret(1.0, 4.0) == 0.75
    assert regret(0.0, 0.0) == 0.0


# -- the budget bound -------------------------------------------------------------------------------


def test_the_overspend_bound_counts_what_was_in_flight_or_won_before_the_bidders_knew() -> None:
    start = 1_800_000_000.0
    day = CampaignDay(budget=1000)
    # (win, bill, cost): 600 billed early, 500 in flight at the budget, then wins before and after the bidders knew
    day.won = [(start + 10, start + 20, 600), (start + 30, start + 50, 500), (start + 60, start + 61, 70),
               (start + 100, start + 101, 90), (start + 110, -1.0, 40)]
    for billed in sorted(b for _, b, _ in day.won if b >= 0):
        day.curve.append(((billed - start) / DAY, sum(c for _, b, c in day.won if 0 <= b <= billed)))
    cross = budget_reached(day.budget, day, start)
    assert cross == pytest.approx(start + 50)
    assert overspend_bound(day, cross, told=start + 80) == 500 + 70
    assert overspend_bound(day, cross, told=None) == 500 + 70 + 90
    assert overspend_bound(day, None, told=None) == 0
    assert budget_reached(5000, day, start) is None


def test_worker_totals_come_back_from_the_metrics_text_in_exact_micros() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily

    rng = random.Random(5)
    spends = {f"c{i}": rng.randrange(0, 10**13) for i in range(300)}

    class Ledger:
        def collect(self):
            fam = CounterMetricFamily("streambid_campaign_spend", "spend", labels=["campaign"])
            billed = CounterMetricFamily("streambid_campaign_impressions", "billed", labels=["campaign"])
            for cid, micros in spends.items():
                fam.add_metric([cid], micros / 1e6)
                billed.add_metric([cid], micros % 1000)
            yield fam
            yield billed

    registry = CollectorRegistry()
    registry.register(Ledger())
    totals = worker_totals(generate_latest(registry).decode(), [*spends, "absent"])
    assert {c: t["spend"] for c, t in totals.items() if c != "absent"} == spends
    assert all(totals[c]["billed"] == m % 1000 for c, m in spends.items())
    assert totals["absent"]["spend"] == 0 and set(totals) == {*spends, "absent"}
