"""`check_event`'s quick path for well-formed events never accepts what the full check rejects."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import EventError, _check, check_event, make_event

KINDS = ("bids", "wins", "billing", "losses", "impressions", "clicks", "conversions", "examples", "other")
FIELDS = ("v", "id", "ts", "bid_id", "campaign", "creative", "price", "pctr", "features", "cost", "day", "value", "label")
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=32),
                   st.sampled_from(["", "x", "ev:1"]), st.lists(st.integers(0, 9), max_size=3), st.just({}))
GOOD = {"v": 1, "id": "ev:1", "ts": 5, "bid_id": "b", "campaign": "c", "creative": "r", "price": 3, "pctr": 0.1,
        "features": [1, 2], "cost": 2, "day": "2026-01-01", "value": 4, "label": 1}


def outcome(fn, kind: str, raw: object) -> object:
    try:
        return ("ok", fn(kind, raw))
    except EventError as e:
        return ("error", e.reason, str(e))


@settings(max_examples=3000, deadline=None)
@given(kind=st.sampled_from(KINDS), changes=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4),
       drop=st.sets(st.sampled_from(FIELDS), max_size=2))
def test_quick_path_agrees_with_the_full_check(kind: str, changes: dict, drop: set) -> None:
    raw = {k: v for k, v in {**GOOD, **changes}.items() if k not in drop}
    assert outcome(check_event, kind, dict(raw)) == outcome(_check, kind, dict(raw))
    assert outcome(check_event, kind, orjson.dumps(raw)) == outcome(_check, kind, orjson.loads(orjson.dumps(raw)))


def test_well_formed_events_pass_and_bad_money_is_named() -> None:
    ev = make_event("billing", "bill:1", 10, bid_id="1", campaign="c", cost=5, day="2026-01-01")
    assert check_event("billing", orjson.dumps(ev)) == ev
    bad = {**ev, "cost": True}
    assert outcome(check_event, "billing", bad)[:2] == ("error", "bad_type")
    assert outcome(check_event, "wins", {**ev, "price": -1, "bid_id": "1"})[:2] == ("error", "bad_value")
