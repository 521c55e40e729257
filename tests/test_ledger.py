"""The spend ledger counts every event once, in integer micros, and survives replays exactly."""

from __future__ import annotations

import random

from streams.events import make_event
from streams.ledger import SpendLedger


def ledger() -> SpendLedger:
    return SpendLedger({}, {}, day_of=lambda c, ts: "2026-01-01", click_value=lambda c: 500_000)


def bill(i: int, cost: int) -> dict:
    return make_event("billing", f"bill:b{i}", 1000 + i, bid_id=f"b{i}", campaign="c1", cost=cost, day="2026-01-01")


def test_duplicates_by_event_id_count_once() -> None:
    lg = ledger()
    assert lg.apply("billing", bill(1, 1234))
    assert not lg.apply("billing", bill(1, 1234))
    assert lg.day_totals("c1", "2026-01-01")["spend"] == 1234


def test_replay_after_crash_is_exact_with_positions() -> None:
    """Events re-read from an offset before the crash are skipped even if `seen` lost them."""
    rng = random.Random(3)
    events = [bill(i, rng.randrange(1, 5000)) for i in range(200)]
    lg = ledger()
    for off, ev in enumerate(events[:150]):
        lg.apply("billing", ev, ("t:0", off))
    lg.seen.clear()  # the crash lost the seen-table writes but not the totals
    for off, ev in enumerate(events):
        lg.apply("billing", ev, ("t:0", off))
    assert lg.day_totals("c1", "2026-01-01")["spend"] == sum(e["cost"] for e in events)
    assert lg.day_totals("c1", "2026-01-01")["billed"] == 200


def test_clicks_carry_value_and_roi_inputs() -> None:
    lg = ledger()
    lg.apply("billing", bill(1, 100_000))
    lg.apply("clicks", make_event("clicks", "click:b1", 5, bid_id="b1", campaign="c1"))
    t = lg.day_totals("c1", "2026-01-01")
    assert (t["clicks"], t["value"], t["spend"]) == (1, 500_000, 100_000)
