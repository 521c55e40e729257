"""`streambid bench streams` feeds the worker events it counts: every synthetic event passes the worker's own
check, so the bench's spend comparison measures the worker, not refused input."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from streams.bench_streams import auctions
from streams.events import check_event


def test_every_synthetic_event_passes_the_workers_check() -> None:
    start = int(time.time() * 1000) - 3_600_000
    gen = auctions(3_000, "t", 5, 1, start)
    kinds: dict[str, int] = {}
    try:
        while True:
            kind, key, ev = next(gen)
            checked = check_event(kind, orjson.dumps(ev))  # raises EventError, naming it, for a refused event
            assert key == checked["campaign"]  # the worker refuses a record keyed other than by its campaign
            kinds[kind] = kinds.get(kind, 0) + 1
    except StopIteration:
        pass
    assert {"bids", "wins", "billing", "impressions", "clicks"} <= set(kinds)


class Running:
    """A worker process that is still running."""

    def poll(self) -> None:
        return None


def test_a_run_over_before_the_first_status_still_reports_the_backlog_as_the_peak_lag(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """/status changes once a second: a short run showed everything processed in its first sample and reported a
    peak lag of 0, though every event had been loaded before the worker started."""
    from streams import bench_streams

    work = bench_streams.Workload(campaigns=["bench-r1-0"], events=3, examples=1, spend=500)
    ends = {("p.bids", 0): 2, ("p.bids", 1): 0, ("p.billing", 0): 1}
    doc = {"positions": {"p.bids:0": 1, "p.billing:0": 0}, "first_event": {"at": 100.0, "cpu_s": 1.0}, "at": 100.6,
           "cpu_s": 1.2, "learner": {"by_campaign": {"bench-r1-0:0": 1}}, "totals": {"bench-r1-0|d": {"spend": 500}}}
    monkeypatch.setattr(bench_streams, "status", lambda port: doc)
    r = bench_streams._measure(Running(), 0, work, ends, 3, 1000.0, False, 30.0, tmp_path / "log")  # type: ignore[arg-type]
    assert (r.max_lag, r.final_lag, r.spend_ok) == (3, 0, True)
    assert r.samples[0] == (0.0, 0, 3, 0) and r.samples[-1][1:3] == (3, 0)
    row = next(line for line in bench_streams.format_table(r).splitlines() if line.startswith("consumer lag"))
    assert row.split()[-3:] == ["3", "/", "0"]


def test_a_partition_not_read_yet_lags_by_all_of_it() -> None:
    from streams.bench_streams import processed

    ends = {("p.bids", 0): 5, ("p.bids", 1): 7, ("p.wins", 0): 2}
    assert processed(ends, {}) == 0
    assert processed(ends, {"p.bids:0": 4, "p.wins:0": 0}) == 6
    assert processed(ends, {"p.bids:0": 9}) == 5  # never past the end the bench loaded
