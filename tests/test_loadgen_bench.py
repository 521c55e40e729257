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
    """`--campaigns 1000` is 1,000 active campaigns; the generator's paused and ended ones come on top."""
    import datetime as dt

    from bidder.campaigns import load_campaigns
    from loadtest.campaign_gen import make_campaigns

    path = bench_campaigns(tmp_path, 200, seed=1)
    campaigns = load_campaigns(path)
    now = dt.datetime.now(dt.UTC)
    idle = [c for c in campaigns if c.idle_reason(now)]
    assert len(campaigns) - len(idle) == 200 and idle and not campaigns[-1].idle_reason(now)
    assert orjson.loads(path.read_bytes())["campaigns"] == make_campaigns(len(campaigns), seed=1)


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


def test_deadline_warming_and_caught_errors_are_no_decisions() -> None:
    """A 204 that decided nothing because time ran out, the worker was not bidding yet or a bug was caught counted as
    a decided answer, so a bidder answering them fast enough passed a probe it could not decide."""
    r = _report(10_000, {200: 6000, 204: 4000}, {"deadline": 2000, "warming": 500, "internal_error": 500, "no_match": 1000})
    assert ok_answers(r) == 7000
    assert not sustained(r)[0]


class _Server:
    """A server whose CPU time grows by one second over the run."""

    name = "bidder"

    def __init__(self) -> None:
        self.reads = iter((10.0, 11.0))

    def cpu_seconds(self) -> float:
        return next(self.reads)


def test_cpu_per_answer_is_over_the_decided_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shed and refused answers cost a few microseconds each: counted as answers, a starved bidder shedding half its
    load looked twice as cheap per bid."""
    import loadtest.bench_bidder as bb

    sat = _report(10_000, {200: 4000, 204: 5000, 400: 1000}, {"overload": 4000, "no_match": 1000})
    monkeypatch.setattr(bb, "_load", lambda *a, **k: sat)
    out = bb.saturate(_Server(), "http://127.0.0.1:1/bid", [b"{}"], 1.0, 8, 100)  # type: ignore[arg-type]
    assert out["closed_loop_rps"] == 5000
    assert out["cpu_us_per_answer"] == 200.0  # one CPU second over 5,000 decided answers


def test_the_bench_sends_the_six_examples_among_generated_traffic(tmp_path: Path) -> None:
    """The bench's requests were generated traffic only, without the example requests it is specified on."""
    import loadtest.bench_bidder as bb
    from loadtest.traffic import RequestFactory, load_examples

    floor = tmp_path / "floor.py"
    floor.write_text("")
    bodies = bb.bench_start(floor, tmp_path / "out", 1, 80)[2]
    docs = [orjson.loads(b) for b in bodies]
    examples = {name: orjson.loads(b) for name, b in load_examples().items()}
    seen = {name: sum(d == {**ex, "tmax": 80} for d in docs) for name, ex in examples.items()}
    assert len(bodies) == bb.BODY_POOL and all(n >= 10 for n in seen.values()), seen
    assert sum(seen.values()) <= 0.05 * len(bodies)  # the rest keep the generated market's proportions
    assert all(d["tmax"] == 80 for d in docs)
    generated = set(RequestFactory(1, tmax_ms=80).bodies(bb.BODY_POOL))
    assert sum(b in generated for b in bodies) == len(bodies) - sum(seen.values())


def test_the_bench_result_holds_deadlines_timeouts_and_ratio_as_its_table(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers past the deadline were counted past tmax on loopback, where the trip the bidder keeps --network-ms for
    takes nothing; the target passed a bidder that never answered some requests at half load; and with no floor
    rate the table printed the bidder's req/s as its ratio while the JSON said 0."""
    import loadtest.bench_bidder as bb

    allowances: list[int] = []

    def measure_server(server: Any, url: str, *args: Any) -> dict[str, Any]:
        allowances.append(args[-1])
        rps = 0 if server.name == "floor" else 4000
        half = {"rate": rps // 2, "p50_ms": 0.3, "p99_ms": 2.0, "p99.9_ms": 4.0, "max_ms": 9.0, "past_deadline": 0,
                "timeouts": 3, "bid_rate": 0.9, "generator_lag_ms": {"p99": 0.1}}
        sat = {"closed_loop_rps": rps, "server_cpu": 0.97, "generator_cpu": 0.5, "cpu_us_per_answer": 150.0}
        return {"name": server.name, "max_rps": rps, "half_load": half, "saturation": sat, "png": "x.png"}

    def measure_each(servers: list, work: Path, measure: Any) -> list[dict[str, Any]]:
        return [measure(type("S", (), {"name": name})(), "http://127.0.0.1:1") for name, _ in servers]

    def train(docs: list[dict[str, Any]], seed: int, path: Path) -> Path:
        path.write_bytes(b"model")
        return path

    monkeypatch.setattr(bb, "measure_server", measure_server)
    monkeypatch.setattr(bb, "measure_each", measure_each)
    monkeypatch.setattr(bb, "train_bench_model", train)
    floor = tmp_path / "floor.py"
    floor.write_text("")
    result = bb.bench_bidder(campaigns=5, floor=floor, out=tmp_path / "out")
    assert allowances == [20, 20] and result["network_ms"] == 20  # serve's default, for both servers alike
    assert result["targets"]["past_deadline"] == {"want": "0", "got": 3, "met": False}
    assert result["ratio"] == 0.0
    text = format_bench(result)
    assert "bidder        4,000   0.00" in text and "20 ms network allowance" in text
    allowances.clear()
    bb.bench_bidder(campaigns=5, floor=floor, out=tmp_path / "out", bidder_cmd=bb.DEFAULT_BIDDER_CMD + " --network-ms 35")
    assert allowances == [35, 35]
    assert bb.network_allowance_ms(["serve", "--network-ms=5"]) == 5


def test_a_probe_failed_by_a_lagging_generator_is_flagged() -> None:
    """A probe the generator could not keep to fails as if the server had: the floor's max, and so the ratio, is then
    the generator's, and nothing said so."""
    def result(lag: float) -> dict[str, Any]:
        probes = [{"rate": 70_000, "sustained": False, "generator_lag_p99_ms": 9.0},
                  {"rate": 49_000, "sustained": False, "generator_lag_p99_ms": lag},
                  {"rate": 34_300, "sustained": True, "generator_lag_p99_ms": 0.1}]
        return {"name": "floor", "max_rps": 34_300, "probes": probes, "saturation": {"server_cpu": 0.97},
                "half_load": {"generator_lag_ms": {"p99": 0.05}}}

    warned = reliability_warnings([result(4.2)], load_at_start=0.1)
    assert len(warned) == 1 and "probe at 49,000 req/s that floor failed (p99 4.2 ms)" in warned[0]
    assert reliability_warnings([result(0.2)], load_at_start=0.1) == []  # the server failed it, not the generator
