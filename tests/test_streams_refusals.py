"""What a worker refuses, on a real broker: each bad event goes to the dead-letter topic with its reason, the
worker keeps counting the good ones around it, and no bad event moves a total."""

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
from tests.streams_support import Procs, find_record, local_day, own_procs, produce, topic, wait_for, worker_status

pytestmark = pytest.mark.kafka
DAY_MS = 86_400_000


@pytest.fixture()
def procs(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Procs]:
    with own_procs(kafka_bootstrap, tmp_path, "r") as p:
        yield p


def test_bad_events_are_dead_lettered_and_the_worker_counts_on(procs: Procs) -> None:
    camp = f"{procs.prefix}-c"
    path = procs.tmp / "c.json"
    path.write_bytes(orjson.dumps([campaign(id=camp, flight={"start": "2020-01-01", "end": "2099-12-31",
                                                             "timezone": "UTC"})]))
    assert procs.cli("campaign", "set", str(path)).returncode == 0
    w1, port = procs.worker("worker", f"{procs.prefix}-w")
    wait_for(lambda: (worker_status(port) or {}).get("ready"), 60, "the worker to own its partitions")
    now = int(time.time() * 1000)
    day = local_day("UTC", now)

    def bill(n: int, ts: int = now, **changes: object) -> dict:
        fields = {"bid_id": f"b{n}", "campaign": camp, "cost": 1_000 * n, "day": local_day("UTC", ts), **changes}
        return make_event("billing", f"bill:b{n}", ts, **fields)

    billing, imps, bids = topic(procs.prefix, "billing"), topic(procs.prefix, "impressions"), topic(procs.prefix, "bids")
    bad = {  # reason -> (topic, key, event)
        "key_mismatch": (billing, f"{camp}-other", bill(2)),
        "bad_value": (imps, camp, make_event("impressions", "imp:far", 10**18, bid_id="far", campaign=camp)),
        "from_the_future": (billing, camp, bill(3, ts=now + 2 * DAY_MS)),
        "older_than_dedup_horizon": (billing, camp, bill(4, ts=now - 4 * DAY_MS)),
        "bad_type": (bids, camp, make_event("bids", "bid:nested", now, bid_id="nested", campaign=camp, creative="cr1",
                                            price=1, pctr=0.1, features=[[1]])),
    }
    huge = bill(5, cost=2**64 - 1)
    records = [(billing, camp, orjson.dumps(bill(1)))]
    records += [(t, k, orjson.dumps(e)) for t, k, e in bad.values()]
    records += [(billing, camp, orjson.dumps(huge)), (billing, camp, orjson.dumps(bill(6)))]
    # a day named by an event other than a bill is not read: each counts on its campaign's date at its time
    odd_days = ("1999-01-01", "garbage", 20991231, "2030-01-01", "x")
    records += [(imps, camp, orjson.dumps(make_event("impressions", f"imp:d{i}", now, bid_id=f"d{i}", campaign=camp,
                                                     creative="cr1", day=d))) for i, d in enumerate(odd_days)]
    records.append((topic(procs.prefix, "clicks"), camp, orjson.dumps(make_event(
        "clicks", "click:d0", now, bid_id="d0", campaign=camp, creative="cr1", day="2030-01-01"))))
    asyncio.run(produce(procs.bootstrap, records))

    def today() -> dict:
        return (worker_status(port) or {}).get("totals", {}).get(f"{camp}|{day}", {})

    wait_for(lambda: today().get("spend") == 1_000 + 6_000, 30, "the two good bills, and only them, to be counted")
    wait_for(lambda: (today().get("impressions"), today().get("clicks")) == (len(odd_days), 1), 30,
             "the impressions and the click that name odd days, counted today")
    dead = topic(procs.prefix, "deadletter")
    for reason, (_, _, ev) in bad.items():
        rec = asyncio.run(find_record(procs.bootstrap, dead, lambda r, i=ev["id"]: i in r.get("payload", "")))
        assert rec["reason"] == reason, (reason, rec)
    rec = asyncio.run(find_record(procs.bootstrap, dead, lambda r: huge["id"] in r.get("payload", "")))
    assert rec["reason"] == "bad_value"
    assert (worker_status(port) or {}).get("ready")  # alive after all of them
    totals = (worker_status(port) or {}).get("totals", {})
    assert set(totals) == {f"{camp}|{day}"}  # nothing counted under another day or another key

    # A restarted worker resumes its dedup horizon from the ids it remembers: an event four days older than the
    # newest it counted is still refused (its id may have been forgotten: it could be a copy of one counted).
    w1.send_signal(signal.SIGTERM)
    w1.wait(30)
    _, port2 = procs.worker("worker-2", f"{procs.prefix}-w")
    wait_for(lambda: (worker_status(port2) or {}).get("ready"), 60, "the restarted worker to own its partitions")
    old = bill(7, ts=now - 4 * DAY_MS)
    asyncio.run(produce(procs.bootstrap, [(billing, camp, orjson.dumps(old)), (billing, camp, orjson.dumps(bill(8)))]))
    wait_for(lambda: (worker_status(port2) or {}).get("totals", {}).get(f"{camp}|{day}", {}).get("spend")
             == 1_000 + 6_000 + 8_000, 60, "the restarted worker to count the new bill")
    rec = asyncio.run(find_record(procs.bootstrap, dead, lambda r: old["id"] in r.get("payload", "")))
    assert rec["reason"] == "older_than_dedup_horizon", rec
    assert set((worker_status(port2) or {}).get("totals", {})) == {f"{camp}|{day}"}
