"""CPA campaigns: priced at pCTR x P(conversion | click) x value per conversion, the rate from the streams side."""

from __future__ import annotations

import math

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.openrtb import parse_request
from bidder.pacing import PacingState, conversion_rate
from models.conversion import DEFAULT_CVR
from models.snapshot import ModelSnapshot
from streams.ledger import SpendLedger
from streams.processor import Campaigns, DeliveryProcessor, Pacer
from tests.helpers import body, campaign, request

NOW = 1_780_000_000.0
PRIOR_CTR = 0.01


def cpa_engine() -> BidEngine:
    camp = parse_campaign(campaign(goal={"type": "cpa", "value_per_conversion": 40.0, "max_bid_cpm": 50.0}))
    return BidEngine(EngineConfig(secret=b"s", explore_below=0), [camp], ModelSnapshot.empty(PRIOR_CTR),
                     sink=lambda *a: None, clock=lambda: NOW)


def price(e: BidEngine) -> float:
    out = e.bid(parse_request(body(request())), "x", math.inf)
    assert out.status == 200, out.reason
    return orjson.loads(out.body)["seatbid"][0]["bid"][0]["price"]


def test_cpa_campaign_bids_on_the_prior_conversion_rate() -> None:
    # value = pCTR x cvr x value per conversion x 1000 (CPM), second price: the bid is the value
    assert price(cpa_engine()) == pytest.approx(PRIOR_CTR * DEFAULT_CVR * 40.0 * 1000, rel=1e-3)


def test_published_conversion_rate_moves_the_price() -> None:
    e = cpa_engine()
    e.set_pacing(PacingState("c1", "2026-05-28", lam=0.0, cvr=0.10))
    high = price(e)
    e.set_pacing(PacingState("c1", "2026-05-28", lam=0.0, cvr=0.02))
    low = price(e)
    assert high == pytest.approx(PRIOR_CTR * 0.10 * 40.0 * 1000, rel=1e-3)
    assert low == pytest.approx(high / 5, rel=1e-3)


def test_pacer_publishes_the_campaigns_conversion_rate() -> None:
    camps = Campaigns()
    camp = parse_campaign(campaign(goal={"type": "cpa", "value_per_conversion": 40.0}))
    camps.by_id[camp.id] = camp
    ledger = SpendLedger({}, {}, camps.day_of, camps.click_value)
    ts = int(NOW * 1000)
    for i in range(200):
        ledger.apply("clicks", {"id": f"k{i}", "ts": ts, "campaign": "c1", "bid_id": f"b{i}"})
    for i in range(40):  # post-click: attribution matched each to a bid with a click
        ledger.apply("conversions", {"id": f"v{i}", "ts": ts, "campaign": "c1", "bid_id": f"b{i}", "value": 1},
                     post_click=1)
    for i in range(30):  # not attributed to a click: they count in the ledger, not in the rate
        ledger.apply("conversions", {"id": f"w{i}", "ts": ts, "campaign": "c1", "bid_id": f"x{i}", "value": 1})
    (state,) = Pacer(camps).update(NOW, ledger)
    assert state.cvr == pytest.approx((40 + 20 * DEFAULT_CVR) / (200 + 20))
    assert ledger.day_totals("c1", state.day)["conversions"] == 70


def cpa_processor() -> tuple[Campaigns, DeliveryProcessor]:
    camps = Campaigns()
    camp = parse_campaign(campaign(goal={"type": "cpa", "value_per_conversion": 40.0, "max_bid_cpm": 20.0}))
    camps.by_id[camp.id] = camp
    return camps, DeliveryProcessor(camps, {}, {}, {})


def served(proc: DeliveryProcessor, i: int, ts: int) -> None:
    proc.handle("bids", {"id": f"bid:{i}", "ts": ts, "bid_id": f"b{i}", "campaign": "c1", "creative": "cr1",
                         "features": [1]})
    proc.handle("impressions", {"id": f"imp:{i}", "ts": ts + 1000, "bid_id": f"b{i}", "campaign": "c1",
                                "creative": "cr1"})


def click(proc: DeliveryProcessor, i: int, ts: int) -> None:
    proc.handle("clicks", {"id": f"click:{i}", "ts": ts, "bid_id": f"b{i}", "campaign": "c1", "creative": "cr1"})


def convert(proc: DeliveryProcessor, cid: str, bid_id: str, ts: int) -> None:
    proc.handle("conversions", {"id": f"conv:{cid}", "ts": ts, "bid_id": bid_id, "campaign": "c1", "value": 1})


def test_only_post_click_conversions_move_the_rate() -> None:
    """View-through conversions (no click) and orphans (unknown bid) once priced clicks at 0.59 instead of 0.05."""
    camps, proc = cpa_processor()
    ts = int(NOW * 1000)
    for i in range(1000):
        served(proc, i, ts)
        if i < 100:
            click(proc, i, ts + 2000)
    for i in [*range(5), *range(100, 145)]:  # 5 after a click, 45 view-through
        convert(proc, str(i), f"b{i}", ts + 60_000)
    for i in range(20):
        convert(proc, f"x{i}", f"nope{i}", ts + 60_000)  # orphans
    (state,) = Pacer(camps).update(NOW + 120, proc.ledger)
    assert state.cvr == pytest.approx((5 + 20 * DEFAULT_CVR) / (100 + 20))
    totals = proc.ledger.day_totals("c1", state.day)
    assert (totals["conversions"], totals["value"]) == (70, 70)  # every conversion still counts in the ROI


def test_a_conversion_read_before_its_click_counts_once_the_click_comes() -> None:
    """Topics interleave: a conversion may be read before the click it followed; the click then books it."""
    camps, proc = cpa_processor()
    ts = int(NOW * 1000)
    for i in range(10):
        served(proc, i, ts)
    for i in range(4):
        convert(proc, str(i), f"b{i}", ts + 60_000)  # their clicks are still unread
    convert(proc, "0b", "b0", ts + 70_000)  # a second conversion of the same click
    for i in range(10):
        click(proc, i, ts + 2000)
    click(proc, 0, ts + 2000)  # the same click again (by id): books nothing more
    proc.handle("clicks", {"id": "click:0-second", "ts": ts + 3000, "bid_id": "b0", "campaign": "c1",
                           "creative": "cr1"})  # another click of the bid: its conversions are booked already
    convert(proc, "0", "b0", ts + 60_000)  # a conversion re-sent
    convert(proc, "9", "b9", ts + 80_000)  # after its click
    (state,) = Pacer(camps).update(NOW + 120, proc.ledger)
    assert proc.ledger.day_totals("c1", state.day)["post_click_conversions"] == 6
    assert state.cvr == pytest.approx((6 + 20 * DEFAULT_CVR) / (11 + 20))


@pytest.mark.parametrize(("cvr", "priced"), [(0.99, 0.99), (1.01, 1.0), (3.0, 1.0), (0.0, DEFAULT_CVR),
                                             (math.nan, DEFAULT_CVR), (-0.5, DEFAULT_CVR)])
def test_conversion_rate_above_one_is_priced_at_one(cvr: float, priced: float) -> None:
    """Falling back to the prior above 1 priced 0.99 at 0.99 and 1.01 at 0.05."""
    assert conversion_rate(PacingState("c1", "2026-05-28", cvr=cvr)) == pytest.approx(priced)
    assert conversion_rate(None) == DEFAULT_CVR


def test_a_pacer_started_after_a_restart_learns_the_rate_from_every_day_in_the_ledger() -> None:
    """The rate is accumulated across days; a restarted worker's memory starts empty, but its ledger (recovered from
    the changelog) still holds the earlier days, and they count once, not again each day."""
    camps = Campaigns()
    camp = parse_campaign(campaign(goal={"type": "cpa", "value_per_conversion": 40.0}))
    camps.by_id[camp.id] = camp
    ledger = SpendLedger({}, {}, camps.day_of, camps.click_value)
    for days_ago, clicks, conversions in ((2, 100, 10), (1, 100, 30), (0, 50, 5)):
        ts = int((NOW - days_ago * 86400) * 1000)
        for i in range(clicks):
            ledger.apply("clicks", {"id": f"k{days_ago}-{i}", "ts": ts, "campaign": "c1", "bid_id": f"b{days_ago}-{i}"})
        for i in range(conversions):
            ledger.apply("conversions", {"id": f"v{days_ago}-{i}", "ts": ts, "campaign": "c1",
                                         "bid_id": f"b{days_ago}-{i}", "value": 1}, post_click=1)
    pacer = Pacer(camps)  # a worker that starts today
    (state,) = pacer.update(NOW, ledger)
    expected = (45 + 20 * DEFAULT_CVR) / (250 + 20)
    assert state.cvr == pytest.approx(expected)
    (state,) = pacer.update(NOW + 60, ledger)  # the next step adds nothing of the earlier days again
    assert state.cvr == pytest.approx(expected)


def test_a_campaign_that_comes_to_a_worker_in_a_rebalance_is_paced_from_its_history() -> None:
    """A worker long up paced every known campaign, its own or not: for one whose spend another worker counted it
    held a conversion rate and a controller built on nothing, and kept them when the campaign came to it."""
    camps = Campaigns()
    camp = parse_campaign(campaign(goal={"type": "cpa", "value_per_conversion": 40.0}))
    camps.by_id[camp.id] = camp
    ledger = SpendLedger({}, {}, camps.day_of, camps.click_value)
    yesterday = int(NOW * 1000) - 86_400_000
    long_up = Pacer(camps)
    long_up.update(NOW - 3600, ledger)  # stepped while another worker counted the campaign's spend
    for i in range(2000):  # the history the other worker counted, in the ledger this worker now recovers
        ledger.apply("clicks", {"id": f"k{i}", "ts": yesterday, "campaign": "c1", "bid_id": f"b{i}"})
    for i in range(20):
        ledger.apply("conversions", {"id": f"v{i}", "ts": yesterday, "campaign": "c1", "bid_id": f"b{i}", "value": 1},
                     post_click=1)
    (fresh,) = Pacer(camps).update(NOW, ledger)
    assert fresh.cvr == pytest.approx((20 + 20 * DEFAULT_CVR) / (2000 + 20))
    (stale,) = long_up.update(NOW, ledger)
    assert stale.cvr != pytest.approx(fresh.cvr)  # what the worker held: the rate of no history
    long_up.forget("c1")  # the campaign's partition was just given to it
    assert "c1" not in long_up.controllers and not long_up.conversions.knows("c1")
    (moved,) = long_up.update(NOW, ledger)
    assert moved.cvr == pytest.approx(fresh.cvr)


def test_clicks_of_yesterday_read_after_midnight_count_as_after_a_restart() -> None:
    """A worker catching up at midnight adds yesterday's clicks to its totals after pacing moved on to today: a
    running pacer must fold them in, or its conversion rate would differ from a restarted one's (here 3.5 times)."""
    camps = Campaigns()
    camp = parse_campaign(campaign(goal={"type": "cpa", "value_per_conversion": 40.0}))  # UTC
    camps.by_id[camp.id] = camp
    ledger = SpendLedger({}, {}, camps.day_of, camps.click_value)
    midnight = (NOW // 86_400 + 1) * 86_400

    def clicks(first: int, n: int, ts: float, converted: int) -> None:
        for i in range(first, first + n):
            ledger.apply("clicks", {"id": f"k{i}", "ts": int(ts * 1000), "campaign": "c1", "bid_id": f"b{i}"})
            if i - first < converted:
                ledger.apply("conversions", {"id": f"v{i}", "ts": int(ts * 1000) + 1, "campaign": "c1",
                                             "bid_id": f"b{i}", "value": 1}, post_click=1)

    running = Pacer(camps)
    clicks(0, 100, midnight - 3600, converted=5)
    running.update(midnight - 5, ledger)  # the last step of the day
    running.update(midnight + 1, ledger)  # the first of the next
    clicks(100, 300, midnight - 30, converted=0)  # read late: they count on the day they happened
    clicks(400, 50, midnight + 5, converted=1)
    (state,) = running.update(midnight + 10, ledger)
    fresh = Pacer(camps)
    (restarted,) = fresh.update(midnight + 10, ledger)
    assert running.conversions.clicks["c1"] == fresh.conversions.clicks["c1"] == 450
    assert state.cvr == pytest.approx(restarted.cvr) == pytest.approx((6 + 20 * DEFAULT_CVR) / (450 + 20))
