"""`make demo`'s day on the embedded bus: money is exact and leases keep spend within budget."""

from __future__ import annotations

import datetime as dt

from loadtest.demo import LEASE_SLICE, format_table, roi_rows, run_demo


def test_demo_day_counts_money_exactly_and_never_overspends() -> None:
    run = run_demo(requests=6000, seed=3, progress=False)
    rows = {r["campaign"]: r for r in roi_rows(run)}
    day = dt.datetime.now(dt.UTC).date().isoformat()
    assert set(rows) == {c.id for c in run.campaigns}
    for camp in run.campaigns:
        ledger = run.bus.delivery.ledger.day_totals(camp.id, day)
        sim = run.report.campaigns[camp.id]
        assert ledger["spend"] == sim.spend  # every billed micro the exchange charged, counted once
        assert ledger["billed"] == sim.impressions
        assert ledger["clicks"] == sim.clicks
        assert ledger["spend"] <= camp.daily_budget + LEASE_SLICE
        assert ledger["spend"] > 0
    assert sum(run.bus.learner.labels.values()) > 0  # the learner saw labelled examples
    assert "campaign" in format_table(list(rows.values()))
