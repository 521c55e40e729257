"""`check_event`'s quick path for well-formed events never accepts what the full check rejects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import EventError, _check, check_event, make_event

KINDS = ("bids", "wins", "billing", "losses", "impressions", "clicks", "conversions", "examples", "other")
FIELDS = ("v", "id", "ts", "bid_id", "campaign", "creative", "price", "pctr", "features", "cost", "day", "value", "label")
TS = 1_767_268_800_000  # 2026-01-01 12:00 UTC
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([TS, 10**18, 10**16, 1.0]),
                   st.floats(allow_nan=False, width=32),
                   st.sampled_from(["", "x", "ev:1"]), st.lists(st.integers(0, 9), max_size=3), st.just({}))
GOOD = {"v": 1, "id": "ev:1", "ts": TS, "bid_id": "b", "campaign": "c", "creative": "r", "price": 3, "pctr": 0.1,
        "features": [1, 2], "cost": 2, "day": "2026-01-01", "value": 4, "label": 1}


def outcome(fn: Callable[[str, Any], dict[str, Any]], kind: str, raw: object) -> tuple[object, ...]:
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
    ev = make_event("billing", "bill:1", TS, bid_id="1", campaign="c", cost=5, day="2026-01-01")
    assert check_event("billing", orjson.dumps(ev)) == ev
    bad = {**ev, "cost": True}
    assert outcome(check_event, "billing", bad)[:2] == ("error", "bad_type")
    assert outcome(check_event, "wins", {**ev, "price": -1, "bid_id": "1"})[:2] == ("error", "bad_value")



@pytest.mark.parametrize(
    ("kind", "changes", "reason"),
    [
        ("impressions", {"ts": 10**18}, "bad_value"),  # no ledger day exists that far out
        ("impressions", {"ts": 0}, "bad_value"),
        ("impressions", {"ts": float(TS)}, "bad_type"),
        ("billing", {"cost": 2**64 - 1}, "bad_value"),  # would break the 64-bit total it is added to
        ("conversions", {"value": 10**15 + 1}, "bad_value"),
        ("bids", {"features": [[1]]}, "bad_type"),  # the learner hashes feature ids
        ("examples", {"features": [2**64 - 1]}, "bad_value"),  # outside the hash space: overflows the weight arrays
        ("bids", {"features": [-3]}, "bad_value"),
        ("examples", {"label": 2}, "bad_value"),
        ("billing", {"day": "1999-01-01"}, "bad_value"),  # spend on a day no pacer reads
        ("billing", {"day": "garbage"}, "bad_value"),
        ("billing", {"day": "2026-02-31"}, "bad_value"),
        ("clicks", {"campaign": ""}, "bad_value"),
        ("clicks", {"bid_id": ""}, "bad_value"),
        ("clicks", {"v": True}, "bad_version"),
        ("clicks", {"v": 1.0}, "bad_version"),
        ("clicks", {"type": "billing"}, "wrong_topic"),
        ("bids", {"exp": -1}, "bad_value"),  # how late the impression may come: whole seconds, at most a day
        ("bids", {"exp": 86_401}, "bad_value"),
        ("bids", {"exp": 60.5}, "bad_value"),
        ("billing", {"campaign": "c1|2026-01-01"}, "bad_value"),  # would reach another campaign's totals
        ("clicks", {"campaign": "c" * 65}, "bad_value"),  # no campaign id is that long
        ("clicks", {"campaign": "-c"}, "bad_value"),
        ("bids", {"reqs": True}, "bad_value"),  # a bidder's running request count feeds every campaign's plan
        ("bids", {"reqs": -1}, "bad_value"),
        ("bids", {"reqs": 2**53}, "bad_value"),
        ("bids", {"reqs": 1.5}, "bad_value"),
        ("bids", {"bidder": "b 1"}, "bad_value"),
        ("bids", {"bidder": ""}, "bad_value"),
        ("bids", {"bidder": 7}, "bad_value"),
    ],
)
def test_events_no_total_could_take_are_refused(kind: str, changes: dict, reason: str) -> None:
    raw = {**GOOD, **changes}
    assert outcome(check_event, kind, orjson.dumps(raw))[:2] == ("error", reason)
    assert outcome(check_event, kind, orjson.dumps(GOOD))[0] == "ok"


def test_a_billing_day_may_be_a_day_off_utc() -> None:
    for day in ("2025-12-31", "2026-01-01", "2026-01-02"):  # the campaign's zone: UTC-12 to UTC+14
        assert check_event("billing", {**GOOD, "day": day})["day"] == day


@pytest.mark.parametrize(("changes", "field"), [
    ({"cost": -1}, "cost"), ({"campaign": "c|d"}, "campaign"), ({"ts": 0}, "ts"), ({"day": "x"}, "day"),
    ({"bid_id": None}, "bid_id"), ({"id": ""}, "id"), ({"v": 2}, "v"), ({"type": "clicks"}, "type"),
])
def test_a_refusal_names_the_field_at_fault(changes: dict, field: str) -> None:
    with pytest.raises(EventError) as refused:
        check_event("billing", orjson.dumps({**GOOD, **changes}))
    assert refused.value.field == field
