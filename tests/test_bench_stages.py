"""`streambid bench stages` and its cut servers: each stops the bid path where it says, and the table adds up."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import bidder.engine as engine_module
from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.openrtb import parse_request
from bidder.targeting import CampaignIndex
from loadtest.bench_bidder import BenchError
from loadtest.bench_stages import _check_cut, format_stages, with_shares, write_stages_png
from loadtest.stage_server import CUT_REASON, STAGES, cut_methods
from models.snapshot import ModelSnapshot
from tests.conftest import ROOT, free_port
from tests.helpers import body, campaign, request

NOW = 1_780_000_000.0


def _run(stage: str | None, monkeypatch: pytest.MonkeyPatch, doc: dict) -> tuple[engine_module.Outcome, dict]:
    """One request through an engine cut after `stage` (None: the whole bid path), counting what ran."""
    calls = {"eligible": 0, "bid_price": 0}
    eligible, bid_price = CampaignIndex.eligible, engine_module.bid_price

    def counted_eligible(self, *a, **k):
        calls["eligible"] += 1
        return eligible(self, *a, **k)

    def counted_price(*a, **k):
        calls["bid_price"] += 1
        return bid_price(*a, **k)

    monkeypatch.setattr(CampaignIndex, "eligible", counted_eligible)
    monkeypatch.setattr(engine_module, "bid_price", counted_price)
    for name, method in (cut_methods(stage) if stage else {}).items():
        monkeypatch.setattr(BidEngine, name, method)
    events: list = []
    e = BidEngine(EngineConfig(secret=b"s", explore_below=0), [parse_campaign(campaign())], ModelSnapshot.empty(),
                  sink=lambda kind, key, ev: events.append(kind), clock=lambda: NOW)
    out = e.bid(parse_request(body(doc)), "x", math.inf)
    calls["events"] = len(events)
    return out, calls


def test_each_cut_stops_the_bid_path_after_its_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    two_imps = request()
    two_imps["imp"] = [two_imps["imp"][0], {**two_imps["imp"][0], "id": "2"}]
    whole, ran = _run(None, monkeypatch, two_imps)
    assert whole.status == 200 and whole.bids == 2 and ran == {"eligible": 2, "bid_price": 2, "events": 2}
    expected = {
        "parse": {"eligible": 0, "bid_price": 0, "events": 0},  # nothing of the engine runs
        "match": {"eligible": 2, "bid_price": 0, "events": 0},  # every impression matched, none priced
        "decide": {"eligible": 2, "bid_price": 2, "events": 0},  # every impression priced, no answer written
    }
    assert set(expected) == set(STAGES)
    for stage, want in expected.items():
        with monkeypatch.context() as m:
            out, ran = _run(stage, m, two_imps)
        assert (out.status, out.reason, out.body) == (204, CUT_REASON, b""), stage
        assert ran == want, stage
    with pytest.raises(ValueError, match="unknown stage 'score'"):
        cut_methods("score")


def test_a_stage_server_is_streambid_serve_answering_the_cut(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "stage.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.stage_server", "--stage", "match", "--no-kafka", "--host", "127.0.0.1",
         "--port", str(port), "--campaigns", str(ROOT / "deploy" / "campaigns.example.json")],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "STREAMBID_SECRET": "stage-test"})
    try:
        example = (ROOT / "loadtest" / "examples" / "banner.json").read_bytes()
        deadline = time.time() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/bid/x", data=example),
                                            timeout=2) as r:
                    status, reason = r.status, r.headers.get("x-nobid-reason")
                break
            except OSError:
                assert time.time() < deadline, log.read_text()
                time.sleep(0.1)
        assert (status, reason) == (204, CUT_REASON)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            assert r.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    bad = subprocess.run([sys.executable, "-m", "loadtest.stage_server", "--stage", "score"], cwd=ROOT,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert bad.returncode == 2 and "--stage" in bad.stderr and "parse" in bad.stderr


def _row(name: str, cpu: float | None, cut: int = 0) -> dict:
    answered = 1000
    return {"name": name, "saturation": {"closed_loop_rps": round(1e6 / cpu) if cpu else 0, "cpu_us_per_answer": cpu,
                                         "server_cpu": 0.97, "statuses": {"204": answered},
                                         "nobid_reasons": {CUT_REASON: cut} if cut else {"no_match": answered}}}


def test_the_stage_table_shows_what_each_stage_adds_and_the_cpu_the_target_leaves(tmp_path: Path) -> None:
    rows = with_shares([_row("floor", 20.0), _row("parse", 50.0, 1000), _row("match", 80.0, 1000),
                        _row("decide", 150.0, 1000), _row("bidder", 170.0)])
    assert [r["added_us"] for r in rows] == [None, 30.0, 30.0, 70.0, 20.0]
    assert [r["ratio"] for r in rows] == [1.0, 0.4, 0.25, 0.133, 0.118]
    result = {"connections": 64, "campaigns": 1000, "duration_s": 6.0, "rows": rows, "budget_us": round(20 / 0.33, 1)}
    text = format_stages(result)
    assert "+70.0 µs" in text and "0.13" in text and "170.0 µs" in text
    assert "leaves 60.6 µs of CPU per answer; the rows within it: parse" in text
    png = write_stages_png(result, tmp_path / "stages.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rows:
        _check_cut(row)  # the stage rows were cut, the floor and the bidder need not be
    with pytest.raises(BenchError, match="the match stage server cut only 0 of 1,000"):
        _check_cut(_row("match", 80.0))


def test_the_cut_servers_run_the_bidders_own_command(tmp_path: Path) -> None:
    from loadtest.bench_bidder import DEFAULT_BIDDER_CMD
    from loadtest.bench_stages import stage_argv

    argv = stage_argv("decide", tmp_path / "c.json", tmp_path / "m.snap")(8123)
    assert argv[1:5] == ["-m", "loadtest.stage_server", "--stage", "decide"]
    serve = DEFAULT_BIDDER_CMD.format(port=8123, campaigns=tmp_path / "c.json", model=tmp_path / "m.snap").split()
    assert argv[5:] == serve[2:]  # every serve option of the bidder under test, after `streambid serve`
