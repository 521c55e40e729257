"""What a bidder takes from the pacing, lease-grant and model topics: a message it must not apply is skipped, and
the state it had stays in force.  (The followers log and skip what raises; these are the checks that raise.)"""

from __future__ import annotations

import math

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.lease_client import LeaseClient
from bidder.openrtb import parse_request
from bidder.pacing import MAX_LAMBDA, PacingController, PacingState, read_lambda
from bidder.wiring import _pacing_state
from models.snapshot import ModelSnapshot
from streams.app import pacing_doc, pacing_state
from tests.helpers import body, campaign, request

NOW = 1_780_000_000.0
DAY = "2026-05-28"  # NOW's day in UTC
GOOD = {"campaign": "c1", "day": DAY, "lam": 0.5, "spent_today": 0, "budget_today": 1_000_000, "exhausted": False}


def engine(lease_slice: int = 0) -> BidEngine:
    camps = [parse_campaign(campaign(id="c1")), parse_campaign(campaign(id="c2"))]
    return BidEngine(EngineConfig(secret=b"s", explore_below=0, lease_slice=lease_slice), camps, ModelSnapshot.empty(),
                     sink=lambda *a: None, clock=lambda: NOW)


def bids(e: BidEngine) -> set[str]:
    out = e.bid(parse_request(body(request())), "x", math.inf)
    return {b["cid"] for b in orjson.loads(out.body)["seatbid"][0]["bid"]} if out.status == 200 else set()


@pytest.mark.parametrize(
    "change",
    [{"lam": "NaN"}, {"lam": float("nan")}, {"lam": math.inf}, {"lam": -1.0}, {"lam": 1e9}, {"exhausted": "false"},
     {"exhausted": 1}, {"day": 20260528}],
)
def test_a_pacing_message_it_must_not_apply_is_refused(change: dict) -> None:
    """A NaN lambda made every request of the bidder fail; "false" (a true string) stopped the campaign."""
    assert _pacing_state(GOOD).lam == 0.5
    with pytest.raises(ValueError):
        _pacing_state({**GOOD, **change})


def test_a_controller_at_its_clamp_publishes_a_lambda_every_reader_takes() -> None:
    """expm1(log1p(100)) is 100.00000000000003: every bidder refused each exhausted or saturated state, so a spent
    budget kept bidding wherever leases were off."""
    ctl = PacingController(day=DAY, campaign="c1", kp=10.0, tail=0.25)
    ctl.update(0.50, 400_000, 1_000_000)
    saturated, exhausted = ctl.update(0.51, 950_000, 1_000_000), ctl.update(0.60, 1_000_000, 1_000_000)
    for state in (saturated, exhausted):
        doc = orjson.loads(orjson.dumps(pacing_doc(state)))  # as it travels on the pacing topic
        assert doc["lam"] == MAX_LAMBDA
        read_back = pacing_state(doc)  # the worker's own, after a restart
        assert _pacing_state(doc).lam == MAX_LAMBDA and read_back is not None and read_back.lam == MAX_LAMBDA
    e = engine()
    assert "c1" in bids(e)
    e.set_pacing(_pacing_state(orjson.loads(orjson.dumps(pacing_doc(exhausted)))))
    assert "c1" not in bids(e) and "c1" not in e.live()


@pytest.mark.parametrize(("lam", "read"), [(100.00000000000003, MAX_LAMBDA), (100.0, MAX_LAMBDA), (0, 0.0),
                                           (100.001, None), (float("nan"), None), (-1e-300, None), (True, None)])
def test_a_lambda_a_few_ulps_above_the_maximum_is_the_maximum(lam: object, read: float | None) -> None:
    """What older workers published at the clamp still stops the campaign; anything further out is refused."""
    assert read_lambda(lam) == read


def test_an_exhausted_budget_of_another_day_does_not_stop_today() -> None:
    e = engine()
    e.set_pacing(PacingState("c1", "2001-01-01", exhausted=True))
    assert "c1" in e.live()
    e.set_pacing(PacingState("c1", DAY, exhausted=True))
    assert "c1" not in e.live() and "c2" in e.live()


def test_a_grant_beyond_the_daily_budget_is_ignored() -> None:
    """One grant of 10^15 micros would have let a bidder spend without limit for the rest of the day."""
    e = engine(lease_slice=1)
    client = LeaseClient(e, 0.05)
    camp = e.index.campaigns["c1"]
    grant = {"v": 1, "bidder": e.cfg.bidder_id, "campaign": "c1", "day": DAY, "slice": 1000, "ts": 0}
    assert not client.apply({**grant, "granted": camp.daily_budget + 1}, NOW)
    assert not client.apply({**grant, "granted": True}, NOW)
    assert "c1" not in e.leases
    assert client.apply({**grant, "granted": camp.daily_budget}, NOW) and e.leases["c1"].granted_micros == camp.daily_budget


def test_a_model_whose_tables_cannot_be_built_leaves_the_previous_one_in_force() -> None:
    e = engine()
    assert bids(e)  # scoring once builds the tables
    before = e.model
    broken = ModelSnapshot(version=9, weights={2**64 - 1: 1.0}, bias=0.0, counts=ModelSnapshot.empty().counts)
    with pytest.raises(OverflowError):
        e.set_model(broken)
    assert e.model is before and bids(e)  # still bidding, on the old model
