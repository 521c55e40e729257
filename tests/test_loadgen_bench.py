"""The `bench bidder` harness's own logic: what counts as sustained, the table, the campaign file.

The benchmark itself is a command (it pins cores and takes a minute); these
tests only check its decisions on reports built here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtest.bench_bidder import bench_campaigns, format_bench, max_sustained, ok_answers, reliability_warnings, sustained
from loadtest.report import LoadReport


def _report(scheduled: int, statuses: dict[int, int], reasons: dict[str, int] | None = None, **counts: int) -> LoadReport:
    r = LoadReport(
        target="http://127.0.0.1:1/bid", mode="open", profile="const", rate=1000, duration=1, connections=8, tmax_ms=100
    )
    r.scheduled = scheduled
    r.statuses = statuses
    r.answered = sum(statuses.values())
    r.nobid_reasons = reasons or {}
    for k, v in counts.items():
        setattr(r, k, v)
    return r


def test_clean_run_is_sustained() -> None:
    ok, why = sustained(_report(10_000, {200: 6000, 204: 4000}, {"no_match": 4000}))
    assert ok and why == ""


def test_shed_answers_do_not_count_as_decisions() -> None:
    r = _report(10_000, {200: 5000, 204: 5000}, {"overload": 3000, "no_match": 2000})
    assert ok_answers(r) == 7000
    ok, why = sustained(r)
    assert not ok and "shed" in why


def test_timeouts_late_answers_and_errors_fail_a_probe() -> None:
    assert not sustained(_report(10_000, {200: 9000}, not_sent=1000))[0]
    assert not sustained(_report(10_000, {200: 10_000}, late=500))[0]
    assert not sustained(_report(10_000, {200: 9000, 500: 1000}))[0]


def test_up_to_one_percent_lost_is_tolerated() -> None:
    assert sustained(_report(10_000, {200: 9900}, not_sent=100))[0]
    assert not sustained(_report(10_000, {200: 9899}, not_sent=101))[0]


def test_max_sustained_steps_down_then_bisects() -> None:
    tried: list[float] = []

    def capacity_4300(rate: float) -> bool:
        tried.append(rate)
        return rate <= 4300

    best, failed_at = max_sustained(10_000, capacity_4300)
    assert 3430 < best <= 4300 < failed_at <= 4900
    assert tried[:4] == pytest.approx([10_000, 7000, 4900, 3430])  # down by 0.7 until a pass ...
    assert len(tried) == 6  # ... then two bisections
    best, failed_at = max_sustained(10_000, lambda rate: False)
    assert best == 0 and failed_at == pytest.approx(10_000 * 0.7**11)


def test_campaign_file_is_valid_for_the_bidder(tmp_path: Path) -> None:
    from bidder.campaigns import load_campaigns

    path = bench_campaigns(tmp_path, 50, seed=4)
    assert len(load_campaigns(path)) == 50
    assert len(orjson.loads(path.read_bytes())["campaigns"]) == 50


def test_bench_table_shows_both_servers_and_the_targets() -> None:
    def server(name: str, rps: int, p99: float, late: int) -> dict:
        half: dict[str, float | dict[str, float]] = {"rate": rps // 2, "p50_ms": 0.1, "p99_ms": p99, "p99.9_ms": p99 * 2,
                                                     "max_ms": p99 * 3}
        half |= {"past_deadline": late, "timeouts": 0, "bid_rate": 0.2, "generator_lag_ms": {"p99": 0.02}}
        sat = {"closed_loop_rps": rps + 100, "server_cpu": 0.97, "generator_cpu": 0.8, "cpu_us_per_answer": 1e6 / rps}
        return {"name": name, "max_rps": rps, "half_load": half, "saturation": sat, "png": f"out/{name}.png"}

    result: dict[str, Any] = {
        "connections": 64,
        "tmax_ms": 100,
        "campaigns": 1000,
        "servers": [server("floor", 60_000, 0.5, 0), server("bidder", 15_000, 7.5, 2)],
        "targets": {
            "ratio": {"want": ">= 0.33", "got": 0.25, "met": False},
            "p99_ms_at_half_load": {"want": "<= 5.0", "got": 7.5, "met": False},
            "past_deadline": {"want": "0", "got": 2, "met": False},
        },
    }
    text = format_bench(result)
    assert "60,000" in text and "15,000" in text and "0.25" in text
    assert text.count("FAIL") == 3 and "PASS" not in text
    assert "warning" not in text
    assert "floor 16.7 µs, bidder 66.7 µs (floor / bidder 0.250" in text
    result["servers"][0]["saturation"]["server_cpu"] = 0.3
    result["servers"][0]["half_load"]["generator_lag_ms"] = {"p99": 4.0}
    result["warnings"] = reliability_warnings(result["servers"], load_at_start=0.1)
    assert len(result["warnings"]) == 2
    assert format_bench(result).count("warning: ") == 2
    assert len(reliability_warnings(result["servers"], load_at_start=3.0)) == 3


def test_bench_model_knows_the_popular_creatives_and_still_explores_the_rest(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The bidder is benchmarked with a trained model: most impressions go to creatives past the exploration
    threshold, whose scores differ, while creatives that rarely match stay exploring."""
    import loadtest.bench_bidder as bb
    from bidder.campaigns import parse_campaign
    from loadtest.campaign_gen import make_campaigns
    from models.snapshot import ModelSnapshot

    monkeypatch.setattr(bb, "MODEL_REQUESTS", 1500)
    docs = make_campaigns(40, seed=3)
    snap = ModelSnapshot.load(bb.train_bench_model(docs, 3, tmp_path / "m.snap"))
    imps = sorted((n for _, n in snap.counts.creatives.values()), reverse=True)
    assert snap.weights and snap.counts.impressions > 5000
    assert imps[0] >= 200 and sum(n < 200 for n in imps) > 0
    known = [(c.id, cr.id) for c in map(parse_campaign, docs) for cr in c.creatives if (c.id, cr.id) in snap.counts.creatives]
    scores = {snap.predict(snap.base_score(()), (), c, cr) for c, cr in known}
    assert len(scores) > len(known) // 2


def test_the_bench_finds_its_bidder_and_files_when_run_from_another_directory(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers run in the project root: the default command's relative `.venv/bin/streambid` was looked up from
    the caller's directory (and refused), and a relative --out handed the bidder a model path that is not there."""
    import loadtest.bench_bidder as bb

    monkeypatch.chdir(tmp_path)
    assert bb.bidder_cmd_problem(bb.DEFAULT_BIDDER_CMD) is None
    assert "no program" in (bb.bidder_cmd_problem("./streambid-nonexistent --port {port}") or "")

    def train(docs: list[dict[str, Any]], seed: int, path: Path) -> Path:
        path.write_bytes(b"model")
        return path

    monkeypatch.setattr(bb, "train_bench_model", train)
    (tmp_path / "out").mkdir()
    with bb.bench_files(5, 1, Path("out")) as (_, camp_file, model_file):
        argv = bb.DEFAULT_BIDDER_CMD.format(port=1, campaigns=camp_file, model=model_file).split()
        handed = [Path(argv[argv.index(flag) + 1]) for flag in ("--campaigns", "--model")]
        assert all(p.is_absolute() and p.is_file() for p in handed)
        assert handed[1].parent == tmp_path / "out"  # the model stays where --out says, for the next run
