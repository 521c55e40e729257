"""`make demo`'s day on the embedded bus: money is exact and leases keep spend within budget."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bidder.campaigns import parse_campaign
from loadtest.demo import (
    LEASE_SLICE,
    comparison_rows,
    demo_campaigns_path,
    format_comparison,
    format_table,
    plan_error,
    roi_rows,
    run_demo,
    spent_out_at,
)
from tests.conftest import ROOT
from tests.helpers import campaign


def test_demo_day_counts_money_exactly_and_never_overspends() -> None:
    run = run_demo(requests=6000, seed=3, progress=False, compare=False)
    rows = {r["campaign"]: r for r in roi_rows(run)}
    day = dt.datetime.fromtimestamp(run.start, dt.UTC).date().isoformat()  # the day played
    assert set(rows) == {c.id for c in run.campaigns}
    for camp in run.campaigns:
        ledger = run.bus.delivery.ledger.day_totals(camp.id, day)
        sim = run.report.campaigns[camp.id]
        assert ledger["spend"] == sim.spend  # every billed micro the exchange charged, counted once
        assert ledger["billed"] == sim.impressions
        # a click counts on its own date: one that comes after a midnight is the next day's in the ledger, so clicks
        # are compared over both days played and what came after them
        counted = sum(t["clicks"] for key, t in run.bus.delivery.ledger.totals.items() if key.startswith(camp.id + "|"))
        assert run.yesterday is not None and counted == sim.clicks + run.yesterday.campaigns[camp.id].clicks
        assert ledger["spend"] <= camp.daily_budget + LEASE_SLICE
        assert ledger["spend"] > 0
    assert sum(run.bus.learner.labels.values()) > 0  # the learner saw labelled examples
    assert "campaign" in format_table(list(rows.values()))


def test_the_plan_error_covers_the_whole_day_not_only_the_bills() -> None:
    """Measured only at bills, a campaign that never spent scored a perfect 0, and one that stopped at 06:00 the gap
    it had then; spend is a step, compared with the plan before and after each bill and at the day's end."""
    camp = parse_campaign(campaign(budget={"daily": 100.0}))
    budget = camp.daily_budget
    assert plan_error(camp, []) == 100.0
    assert plan_error(camp, [(0.25, budget // 4)]) == 75.0  # a quarter by 06:00, then nothing more
    steady = [(i / 96, budget * i // 96) for i in range(1, 97)]
    assert plan_error(camp, steady) == pytest.approx(100 / 96, abs=0.01)  # one step of the staircase at most
    assert plan_error(camp, [(0.5, 0), (0.99, budget)]) == 99.0  # the gap just before the late bill counts


def test_a_campaign_without_spend_has_no_roi_and_long_ids_keep_the_columns() -> None:
    row = {"campaign": "a-campaign-id-of-thirty-chars", "budget": 9.0, "spend": 0.0, "spend_pct": 0.0,
           "impressions": 0, "clicks": 0, "expected_clicks": 0.0, "ecpc": None, "value": 2.0, "roi": None,
           "max_plan_error_pct": 100.0}
    head, _, line = format_table([row, {**row, "campaign": "short"}]).splitlines()[:3]
    assert line.split()[9] == "-"  # ROI: none, not 0.00 (break-even)
    assert head.index("budget") + len("budget") == line.index("9.00") + len("9.00")


def scaled_campaigns(tmp_path: Path, requests: int) -> Path:
    """The demo campaigns with budgets cut to a day of `requests` instead of the demo's 60,000."""
    doc = json.loads(demo_campaigns_path().read_text())
    for c in doc["campaigns"]:
        c["budget"]["daily"] = round(c["budget"]["daily"] * requests / 60_000, 6)
        c["budget"].pop("total", None)
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps(doc))
    return path


def test_demo_compares_paced_with_spending_fast_and_a_fixed_bid(tmp_path: Path) -> None:
    run = run_demo(requests=6000, seed=5, campaigns_file=scaled_campaigns(tmp_path, 6000), progress=False)
    assert set(run.baselines) == {"asap", "fixed"}
    assert run.yesterday is not None and run.report.plan is not None
    rows = comparison_rows(run)
    assert len(rows) == 3 * len(run.campaigns)
    for camp in run.campaigns:
        # today's plan comes from yesterday's traffic, which is quiet at night: less than a quarter by 06:00
        assert run.report.plan(camp.id, 0.25) < 0.2
        by = {r["strategy"]: r for r in rows if r["campaign"] == camp.id}
        asap_out = spent_out_at(camp, run.baselines["asap"].campaigns[camp.id].curve)
        paced_out = spent_out_at(camp, run.report.campaigns[camp.id].curve)
        assert asap_out is not None  # full value with no pacing runs out of budget...
        assert paced_out is None or paced_out > asap_out  # ...before the paced campaign does
        assert by["paced"]["max_plan_gap_pct"] < by["asap"]["max_plan_gap_pct"]
        for r in by.values():
            assert r["spend_pct"] <= 100.0 + 100.0 * LEASE_SLICE / camp.daily_budget
    assert "strategy" in format_comparison(rows)


@pytest.mark.parametrize(
    ("extra", "says"),
    [(["--campaigns", "nope.json"], "nope.json: does not exist"), (["--requests", "0"], "--requests"),
     (["--out", "FILE"], "not a directory"),
     (["--campaigns", str(ROOT / "deploy" / "campaigns.example.json")], "keep their day in another time zone")],
)
def test_demo_refuses_bad_arguments_before_it_runs(tmp_path: Path, extra: list[str], says: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    args = [str(afile) if a == "FILE" else a for a in extra]
    out = subprocess.run([sys.executable, "-m", "bidder.cli", "demo", *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_demo_names_the_campaigns_whose_day_is_not_utc() -> None:
    from bidder.commands import demo_campaigns_problem

    utc = {"start": "2020-01-01", "end": "2099-12-31", "timezone": "UTC"}
    assert demo_campaigns_problem([parse_campaign(campaign(flight=utc))]) == ""
    tokyo = dict(utc, timezone="Asia/Tokyo")
    assert "c1" in demo_campaigns_problem([parse_campaign(campaign(flight=tokyo))])
