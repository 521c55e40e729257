"""A restarted worker paces each campaign on from the lambda it last published that day, on a real broker.

Started from 0, a worker restarted mid-day bids as if budget cost nothing until its controllers climb back, and
runs ahead of plan meanwhile.  The worker reads the newest state of each campaign back from the pacing topic.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.events import make_event
from tests.helpers import campaign
from tests.streams_support import Procs, end_offsets, local_day, own_procs, produce, read_all, topic, wait_for, worker_status

pytestmark = pytest.mark.kafka
BUDGET = 100_000_000  # the campaign's daily budget, micros


@pytest.fixture()
def procs(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Procs]:
    with own_procs(kafka_bootstrap, tmp_path, "p") as p:
        yield p


def pacing_records(procs: Procs, camp: str, after: int = 0) -> list[dict]:
    """The pacing records of `camp` at offsets from `after` on, oldest first."""
    records = asyncio.run(read_all(procs.bootstrap, [topic(procs.prefix, "pacing")], partitions=1))
    docs = [orjson.loads(value) for _, _, offset, value in sorted(records, key=lambda r: r[2]) if offset >= after]
    return [doc for doc in docs if doc["campaign"] == camp]


def test_a_restarted_worker_starts_each_controller_from_todays_last_published_lambda(procs: Procs) -> None:
    camp, app_id = f"{procs.prefix}-c", f"{procs.prefix}-w"
    path = procs.tmp / "c.json"
    path.write_bytes(orjson.dumps([campaign(id=camp, budget={"daily": BUDGET / 1e6, "total": 0},
                                            flight={"start": "2020-01-01", "end": "2099-12-31", "timezone": "UTC"})]))
    assert procs.cli("campaign", "set", str(path)).returncode == 0
    w1, port1 = procs.worker("worker-1", app_id)
    wait_for(lambda: (worker_status(port1) or {}).get("ready"), 60, "worker 1 to own its partitions")
    billing = topic(procs.prefix, "billing")
    # Two bills of 6% of the budget, a pacing step apart: each step's rise of the price of budget is capped, so
    # lambda climbs over both; a controller started afresh on the 12% already spent would start from 0.
    for n in (1, 2):
        now = int(time.time() * 1000)
        bill = make_event("billing", f"bill:{procs.prefix}-{n}", now, bid_id=f"{procs.prefix}-{n}", campaign=camp,
                          cost=BUDGET * 6 // 100, day=local_day("UTC", now))
        asyncio.run(produce(procs.bootstrap, [(billing, camp, orjson.dumps(bill))]))

        def stepped(n: int = n) -> bool:
            return any(d["spent_today"] == n * BUDGET * 6 // 100 for d in pacing_records(procs, camp))

        wait_for(stepped, 30, f"a pacing step on bill {n}")
    time.sleep(1.5)  # a step after the last bill too
    w1.send_signal(signal.SIGTERM)
    w1.wait(30)
    last = pacing_records(procs, camp)[-1]
    assert last["lam"] > 3.0, last  # well above 0, and above what one capped step on 12% would give
    restart_at = asyncio.run(end_offsets(procs.bootstrap, [topic(procs.prefix, "pacing")], partitions=1))
    _, port2 = procs.worker("worker-2", app_id)
    first = wait_for(lambda: pacing_records(procs, camp, after=min(restart_at.values())), 60,
                     "worker 2 to publish the campaign's pacing")[0]
    assert first["day"] == last["day"] and first["spent_today"] == last["spent_today"]
    assert first["lam"] == pytest.approx(last["lam"], rel=1e-6)
