"""A short simulated day through the real stack: bidder processes over HTTP, Kafka, the Faust worker.

Asserts what must hold whatever the machine's speed: every campaign is in the
report, the worker's ledger equals the billing the bidder accepted to the
micro and counted every event once, no campaign spent past its budget and
stated bound, regret lies in [0, 1].  Timings are reported, never asserted.
"""

from __future__ import annotations

import math

import orjson
import pytest

from loadtest.day_kafka import TEMPLATES, DayOptions, report_doc, run_day
from loadtest.day_report import campaign_rows, plot_spend

pytestmark = pytest.mark.kafka


def test_a_short_day_through_the_real_stack_keeps_the_books(kafka_bootstrap: str, tmp_path) -> None:
    # 24 h in 17 s: fast, yet a notice still has 0.7 s of wall time before its hour (simulated) runs out.  The grace
    # lets a bidder on a busy machine take a few seconds to act on the pacing topic's `exhausted`.
    requests = 2500
    outcome, stats = run_day(DayOptions(speedup=5000.0, requests=requests, broker=kafka_bootstrap, out=tmp_path,
                                        warmup_s=10.0, grace_s=5.0, progress=False))
    png = plot_spend(outcome, campaign_rows(outcome), tmp_path / "day.png")
    doc = orjson.loads(orjson.dumps(report_doc(outcome, png)))  # one JSON document, as --json prints it

    ids = {c.id for c in outcome.campaigns}
    rows = {r["campaign"]: r for r in doc["campaigns"]}
    assert len(ids) == len(TEMPLATES) and set(rows) == ids

    run = doc["run"]
    assert run["requests"] == run["sent"] == requests and run["connection_errors"] == 0
    assert sum(run["answers"].values()) == requests and run["answers"].get("200", 0) > 0
    assert run["notices"].get("bill:200", 0) == sum(stats.bills_ok.values()) > 0

    checks = doc["invariants"]
    assert checks["ledger_equals_billed"], (checks["ledger_mismatch"], run["ledger_complete"], run["ledger_wait_s"],
                                            [(r["campaign"], r["spend_micros"], r["billed_micros"]) for r in rows.values()])
    assert checks["counted_once"], checks["count_mismatch"]
    assert checks["no_overspend"], checks["overspent"]
    assert checks["regret_in_0_1"]
    for r in rows.values():
        assert r["spend_micros"] == r["billed_micros"] == outcome.ledger[r["campaign"]]["spend"]
        assert r["spend_micros"] <= r["budget"] * 1e6 + r["overspend_bound_micros"]
        assert 0.0 <= r["regret"] <= 1.0 and r["expected_clicks"] <= r["optimal_clicks"] + 1e-9
        assert r["impressions"] == stats.bills_ok.get(r["campaign"], 0)
        assert r["roi"] == (pytest.approx((r["value"] - r["spend"]) / r["spend"]) if r["spend"] else None)
        assert r["ecpc"] is None or math.isclose(r["ecpc"], r["spend"] / r["clicks"])
    assert sum(r["spend_micros"] for r in rows.values()) > 0
    assert png.stat().st_size > 10_000
