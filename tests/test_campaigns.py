"""Campaign validation: every bad field is named, money becomes exact micros."""

from __future__ import annotations

import pytest

from bidder.campaigns import ConfigError, parse_campaign
from tests.helpers import campaign


def test_money_is_integer_micros() -> None:
    c = parse_campaign(campaign(budget={"daily": 0.1, "total": 0.3}))
    assert c.daily_budget == 100_000 and c.total_budget == 300_000
    assert c.value_per_click == 2_000_000


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"budget": {"daily": -1}}, "budget.daily"),
        ({"budget": {"daily": 10, "total": 5}}, "budget.total"),
        ({"currency": "XYZ"}, "currency"),
        ({"flight": {"start": "2026-02-01", "end": "2026-01-01"}}, "flight.end"),
        ({"flight": {"timezone": "Mars/Olympus"}}, "flight.timezone"),
        ({"targeting": {"countries": ["US"]}}, "targeting.countries"),
        ({"targeting": {"categories": ["Sports"]}}, "targeting.categories[0]"),
        ({"creatives": []}, "creatives"),
        ({"creatives": [{"id": "x", "type": "banner", "adm": "a"}]}, "creatives[0].w"),
        ({"goal": {"type": "cpc"}}, "goal.value_per_click"),
        ({"dayparting": [25]}, "dayparting[0]"),
    ],
)
def test_invalid_fields_are_named(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_campaign(campaign(**changes))
    assert e.value.field == field


def test_round_trip_through_the_topic_document() -> None:
    c = parse_campaign(campaign())
    assert parse_campaign(c.to_doc()) == c
