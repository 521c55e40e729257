"""`streambid bench streams` feeds the worker events it counts: every synthetic event passes the worker's own
check, so the bench's spend comparison measures the worker, not refused input."""

from __future__ import annotations

import time

import orjson

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
