"""CPA campaigns: priced at pCTR x P(conversion | click) x value per conversion, the rate from the streams side."""

from __future__ import annotations

import math

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.openrtb import parse_request
from bidder.pacing import PacingState
from models.conversion import DEFAULT_CVR
from models.snapshot import ModelSnapshot
from streams.ledger import SpendLedger
from streams.processor import Campaigns, Pacer
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
    for i in range(40):
        ledger.apply("conversions", {"id": f"v{i}", "ts": ts, "campaign": "c1", "bid_id": f"b{i}", "value": 1})
    (state,) = Pacer(camps).update(NOW, ledger)
    assert state.cvr == pytest.approx((40 + 20 * DEFAULT_CVR) / (200 + 20))
