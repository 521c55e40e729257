"""The traffic forecast on a real broker: a worker learns the requests per hour from the bid log's counters."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import orjson
import pytest

from streams.events import make_event
from tests.streams_support import Procs, create_topics, produce, topic, wait_for, worker_status

pytestmark = pytest.mark.kafka

DAY_S = 86400


def test_worker_learns_yesterdays_traffic_per_hour_from_the_bid_log(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, prefix)
    procs = Procs(kafka_bootstrap, prefix, tmp_path)
    try:
        _, wport = procs.worker("worker", f"{prefix}-w")
        wait_for(lambda: (worker_status(wport) or {}).get("ready"), 60, "the worker to own its partitions")
        yesterday = (int(time.time()) // DAY_S - 1) * DAY_S
        per_hour = [40 if 18 <= h <= 21 else 10 for h in range(24)]
        counter, recs = 0, []
        for h in range(25):  # one bid logged at the start of each hour, carrying the bidder's request count
            ts = yesterday + min(h * 3600, DAY_S - 1)
            bid = f"{prefix}-b{h}"
            ev = make_event("bids", f"bid:{bid}", ts * 1000, bid_id=bid, campaign=f"{prefix}-c", creative="cr1",
                            price=5000, pctr=0.01, features=[1, 2], bidder="bfc", reqs=counter)
            recs.append((topic(prefix, "bids"), f"{prefix}-c", orjson.dumps(ev)))
            counter += per_hour[h] if h < 24 else 0
        asyncio.run(produce(kafka_bootstrap, recs))

        def learned() -> list[float] | None:
            return ((worker_status(wport) or {}).get("forecast") or {}).get("utc_weights")

        w = wait_for(learned, 30, "the worker's forecast")
        assert sum(w) == pytest.approx(1.0, abs=1e-3)
        assert w[19] == pytest.approx(4 * w[5], rel=0.02)  # the evening brought four times the requests of the night
        assert w[23] == pytest.approx(w[5], rel=0.02)
    finally:
        procs.stop_all()
