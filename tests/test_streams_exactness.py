"""The worker's spend and delivery totals are exact on a real broker: after SIGKILL, across rebalances.

Every test runs real `streambid worker` processes on a topic prefix of its own,
feeds them a stream with re-sent duplicates, and compares what the workers
report on /status (each worker: only the partitions it owns) with totals
computed offline from what is on the topics, counting each event id once.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from models.learner import CTRLearner
from models.snapshot import ModelSnapshot
from streams.checkpoints import frame, read_latest
from streams.events import make_event
from streams.ledger import FIELDS
from tests.helpers import campaign
from tests.streams_support import (
    DELIVERY_KINDS,
    Procs,
    caught_up,
    committed,
    end_offsets,
    lagging,
    live_worker_status,
    local_day,
    offline_totals,
    own_procs,
    produce,
    read_all,
    summed_totals,
    topic,
    wait_for,
    worker_status,
)

pytestmark = pytest.mark.kafka
MIDNIGHT_NY = 1773115200_000  # 2026-03-10 00:00 in New York (04:00 UTC): the stream straddles a local midnight
ZONES = ("America/New_York", "Asia/Tokyo", "UTC")
PARTITIONER = DefaultPartitioner()


@pytest.fixture()
def procs(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Procs]:
    with own_procs(kafka_bootstrap, tmp_path, "x") as p:
        yield p


def campaign_ids(prefix: str, per_partition: int) -> list[str]:
    """Ids whose events land on every one of the 4 partitions, `per_partition` each (keys hash like the producers')."""
    picked: dict[int, list[str]] = {p: [] for p in range(4)}
    i = 0
    while any(len(v) < per_partition for v in picked.values()):
        cid = f"{prefix}-c{i}"
        part = PARTITIONER(cid.encode(), [0, 1, 2, 3], [0, 1, 2, 3])
        if len(picked[part]) < per_partition:
            picked[part].append(cid)
        i += 1
    return sorted(c for v in picked.values() for c in v)


def publish_campaigns(procs: Procs, per_partition: int, value_per_click: float = 1.5) -> dict[str, str]:
    """Campaigns on every partition, spread over three time zones, published with `streambid campaign set`."""
    zones = {cid: ZONES[i % len(ZONES)] for i, cid in enumerate(campaign_ids(procs.prefix, per_partition))}
    docs = [campaign(id=cid, flight={"start": "2020-01-01", "end": "2099-12-31", "timezone": tz},
                     goal={"type": "cpc", "value_per_click": value_per_click, "max_bid_cpm": 20.0})
            for cid, tz in zones.items()]
    path = procs.tmp / "campaigns.json"
    path.write_bytes(orjson.dumps(docs))
    out = procs.cli("campaign", "set", str(path))
    assert out.returncode == 0, out.stderr
    return zones


def delivery_stream(zones: dict[str, str], n_bids: int, seed: int) -> list[tuple[str, str, bytes]]:
    """Bids, wins, billing, impressions and clicks around a New York midnight, with ~8% of events re-sent later."""
    rng = random.Random(seed)
    camps = sorted(zones)
    out: list[tuple[str, str, dict]] = []
    for i in range(n_bids):
        camp, bid = rng.choice(camps), f"b{seed}-{i}"
        ts = MIDNIGHT_NY - 900_000 + i * 1100
        out.append(("bids", camp, make_event("bids", f"bid:{bid}", ts, bid_id=bid, campaign=camp, creative="cr1",
                                             price=900_000, pctr=0.01, features=[1, 2, i % 50])))
        if rng.random() < 0.8:
            cost = rng.randrange(100, 900)
            out.append(("wins", camp, make_event("wins", f"win:{bid}", ts + 40, bid_id=bid, campaign=camp, price=cost * 1000)))
            out.append(("billing", camp, make_event("billing", f"bill:{bid}", ts + 50, bid_id=bid, campaign=camp, cost=cost,
                                                    day=local_day(zones[camp], ts + 50))))
            out.append(("impressions", camp, make_event("impressions", f"imp:{bid}", ts + 60, bid_id=bid, campaign=camp,
                                                        creative="cr1")))
            if rng.random() < 0.1:
                out.append(("clicks", camp, make_event("clicks", f"click:{bid}", ts + 4000, bid_id=bid, campaign=camp,
                                                       creative="cr1")))
        if out and rng.random() < 0.3:  # re-send an earlier event: same id, counted once
            kind, key, ev = out[rng.randrange(max(0, len(out) - 400), len(out))]
            out.append((kind, key, ev))
    return [(kind, key, orjson.dumps(ev)) for kind, key, ev in out]


class Feeder(threading.Thread):
    """Produces the stream at a steady pace in the background, so workers die and join while it flows."""

    def __init__(self, bootstrap: str, prefix: str, records: list[tuple[str, str, bytes]], per_s: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.prefix, self.records, self.per_s = bootstrap, prefix, records, per_s
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start, chunk = time.time(), 100
            for i in range(0, len(self.records), chunk):
                part = [(topic(self.prefix, kind), key, value) for kind, key, value in self.records[i:i + chunk]]
                asyncio.run(produce(self.bootstrap, part))
                self.sent += len(part)
                time.sleep(max(0.0, start + self.sent / self.per_s - time.time()))
        except BaseException as e:  # reported by the test
            self.error = e


def delivery_names(prefix: str) -> list[str]:
    return [topic(prefix, k) for k in DELIVERY_KINDS]


def expected_totals(procs: Procs, zones: dict[str, str]) -> dict[str, dict[str, int]]:
    records = asyncio.run(read_all(procs.bootstrap, delivery_names(procs.prefix)))
    ids = [orjson.loads(v)["id"] for *_, v in records]
    assert len(ids) > len(set(ids)), "the stream must hold re-sent duplicates"
    return offline_totals(records, zones, dict.fromkeys(zones, 1_500_000))


def consumed(port: int) -> int:
    st = worker_status(port) or {}
    return sum(n for k, n in st.get("consumed", {}).items() if k in DELIVERY_KINDS)


def worker_digests(ports: list[int]) -> list[dict | None]:
    """What each worker says of itself, without its totals: readiness, partitions, events consumed and outcomes."""
    out: list[dict | None] = []
    for port in ports:
        st = worker_status(port)
        out.append(None if st is None else {k: v for k, v in st.items() if k != "totals"})
    return out


def assert_exact(procs: Procs, app_id: str, ports: list[int], zones: dict[str, str]) -> list[dict]:
    """Wait until the group has committed every event, then compare the workers' totals with the offline ones."""
    names = delivery_names(procs.prefix)
    try:
        wait_for(lambda: caught_up(procs.bootstrap, app_id, names), 90, "the workers to commit every event", every=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\nnot committed to the end (committed, end): "
                             f"{lagging(procs.bootstrap, app_id, names)}\nworkers: {worker_digests(ports)}") from None
    want = expected_totals(procs, zones)
    assert want and sum(t["spend"] for t in want.values()) > 0

    def reports() -> list[dict] | None:
        sts = [s for s in (worker_status(p) for p in ports) if s and s["ready"]]
        if len(sts) != len(ports):
            return None
        owned = [set(s["partitions"]) for s in sts]
        if sum(len(o) for o in owned) != 4 or set().union(*owned) != {0, 1, 2, 3}:
            return None  # mid-rebalance: some partition owned by no one (or reported twice)
        return sts if summed_totals(sts, set(zones)) == want else None

    try:
        statuses = wait_for(reports, 20, "the workers' totals to equal the offline totals", every=0.25)
    except AssertionError:
        got = summed_totals([s for s in (worker_status(p) for p in ports) if s], set(zones))
        diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
        raise AssertionError(f"totals differ (got, want): {diff}") from None
    days = {k.split("|")[1] for k in want}
    assert len(days) >= 2, "local days must matter: the stream straddles a midnight"
    time.sleep(2.0)  # nothing is counted late either
    assert summed_totals([live_worker_status(p) for p in ports], set(zones)) == want
    return statuses


def test_totals_exact_after_sigkill_mid_stream(procs: Procs) -> None:
    zones = publish_campaigns(procs, 2)
    records = delivery_stream(zones, 1700, seed=11)
    app_id = f"{procs.prefix}-w"
    w1, port1 = procs.worker("worker-1", app_id)
    wait_for(lambda: (worker_status(port1) or {}).get("ready"), 60, "worker 1 to own its partitions")
    feeder = Feeder(procs.bootstrap, procs.prefix, records, per_s=1500)
    feeder.start()
    seen = wait_for(lambda: consumed(port1) >= 1200 and consumed(port1), 60, "worker 1 to get going")
    w1.send_signal(signal.SIGKILL)
    w1.wait(10)
    assert seen < len(records), "the kill must land mid-stream"
    _, port2 = procs.worker("worker-2", app_id)
    feeder.join(120)
    assert feeder.error is None and feeder.sent == len(records)
    st = assert_exact(procs, app_id, [port2], zones)[0]
    # the restarted worker met events the dead one had already counted, and counted them once
    assert st["outcomes"].get("billing:duplicate_event", 0) + st["outcomes"].get("impressions:duplicate_event", 0) > 0


def test_totals_exact_when_workers_share_and_hand_over_partitions(procs: Procs) -> None:
    zones = publish_campaigns(procs, 2)
    records = delivery_stream(zones, 1500, seed=12)
    app_id = f"{procs.prefix}-w"
    w1, port1 = procs.worker("worker-1", app_id)
    wait_for(lambda: (worker_status(port1) or {}).get("ready"), 60, "worker 1 to own its partitions")
    feeder = Feeder(procs.bootstrap, procs.prefix, records, per_s=800)
    feeder.start()
    wait_for(lambda: consumed(port1) >= 800, 60, "worker 1 to get going")
    _, port2 = procs.worker("worker-2", app_id)  # joins mid-stream: a rebalance moves partitions to it
    feeder.join(120)
    assert feeder.error is None and feeder.sent == len(records)
    both = assert_exact(procs, app_id, [port1, port2], zones)
    assert all(st["partitions"] for st in both), "both workers own partitions"
    assert all(any(k.split("|")[0] in zones for k in st["totals"]) for st in both), "both hold campaign totals"
    # worker 1 leaves: worker 2 recovers its partitions from the changelog and alone reports everything
    w1.send_signal(signal.SIGTERM)
    w1.wait(30)
    assert_exact(procs, app_id, [port2], zones)


def test_learner_never_learns_a_bid_twice_across_a_restart(procs: Procs) -> None:
    zones = publish_campaigns(procs, 1)
    camp = min(zones)
    app_id = f"{procs.prefix}-w"
    w1, port1 = procs.worker("worker-1", app_id, "--click-window", "2")
    wait_for(lambda: (worker_status(port1) or {}).get("ready"), 60, "worker 1 to own its partitions")
    now = int(time.time() * 1000)
    recs = []
    for i in range(10):
        bid = f"{procs.prefix}-b{i}"
        recs.append(("bids", make_event("bids", f"bid:{bid}", now, bid_id=bid, campaign=camp, creative="cr1", price=1,
                                        pctr=0.01, features=[3, i])))
        recs.append(("impressions", make_event("impressions", f"imp:{bid}", now + 10, bid_id=bid, campaign=camp,
                                               creative="cr1")))
        if i < 3:
            recs.append(("clicks", make_event("clicks", f"click:{bid}", now + 500, bid_id=bid, campaign=camp,
                                              creative="cr1")))
    asyncio.run(produce(procs.bootstrap, [(topic(procs.prefix, k), camp, orjson.dumps(e)) for k, e in recs]))

    def learned(port: int) -> dict[str, int]:
        by = (worker_status(port) or {}).get("learner", {}).get("by_campaign", {})
        return {label: by.get(f"{camp}:{label}", 0) for label in ("0", "1")}

    wait_for(lambda: learned(port1) == {"0": 7, "1": 3}, 30, "3 positives and 7 negatives (window closed)")
    wait_for(lambda: caught_up(procs.bootstrap, app_id, delivery_names(procs.prefix)), 30, "delivery commits")
    examples = topic(procs.prefix, "examples")
    end = asyncio.run(end_offsets(procs.bootstrap, [examples], partitions=1))
    wait_for(lambda: all(asyncio.run(committed(procs.bootstrap, app_id)).get(tp, 0) >= off for tp, off in end.items()),
             30, "the learner to commit what it learned")
    w1.send_signal(signal.SIGKILL)
    w1.wait(10)
    # What a crash between sending an example and saving its "done" mark can leave behind: the same example
    # again, and a positive for a bid already learned as a negative.  Plus one genuinely new example.
    flipped, again, new = f"{procs.prefix}-b5", f"{procs.prefix}-b0", f"{procs.prefix}-b99"
    extra = [make_event("examples", f"ex:{b}", now, campaign=camp, creative="cr1", features=[3, 9], label=1)
             for b in (flipped, again, new)]
    late_click = make_event("clicks", f"click:{procs.prefix}-b6", now + 900, bid_id=f"{procs.prefix}-b6", campaign=camp,
                            creative="cr1")  # inside the window by its time, but after the negative was learned
    asyncio.run(produce(procs.bootstrap, [(examples, camp, orjson.dumps(e)) for e in extra]
                        + [(topic(procs.prefix, "clicks"), camp, orjson.dumps(late_click))]))
    _, port2 = procs.worker("worker-2", app_id, "--click-window", "2")
    def held(port: int) -> dict[str, int]:  # what the learner's state holds: its own learning and any checkpoint's
        return (worker_status(port) or {}).get("learner", {}).get("labels", {})

    wait_for(lambda: sum(held(port2).values()) >= 11, 60, "the restarted learner to learn the new example")
    time.sleep(3.0)  # time for anything wrongly produced or learned to show
    st = live_worker_status(port2)
    assert held(port2) == {"0": 7, "1": 4}, st["learner"]  # the 10 bids once each, and the new example
    assert st["learner"]["duplicates"] >= 2
    assert st["outcomes"].get("clicks:late") == 1 and st["produced"]["examples"] == 0


def test_a_restarted_learner_resumes_from_its_checkpoint_and_publishes_the_model_it_would_have(procs: Procs) -> None:
    """Killed after learning past its checkpoint, the learner's successor takes the checkpoint over, relearns what
    came after it from the examples topic, and goes on: its model equals one learned from every example in order.
    Without the checkpoint it would start empty and publish a model of the last examples only."""
    app_id, camp = f"{procs.prefix}-w", f"{procs.prefix}-c"
    examples, rng, now = topic(procs.prefix, "examples"), random.Random(5), int(time.time() * 1000)
    evs = [make_event("examples", f"ex:{procs.prefix}-{i}", now + i, campaign=camp, creative=f"cr{i % 3}",
                      features=[rng.randrange(1 << 20) for _ in range(4)] + [i % 7], label=int(rng.random() < 0.2))
           for i in range(650)]
    batches = (evs[:300], evs[300:500], evs[500:])

    def send(batch: list[dict]) -> None:
        asyncio.run(produce(procs.bootstrap, [(examples, camp, orjson.dumps(e)) for e in batch]))

    def labels(port: int) -> int:
        return sum((worker_status(port) or {}).get("learner", {}).get("labels", {}).values())

    w1, port1 = procs.worker("worker-1", app_id, "--checkpoint-every", "3600")
    wait_for(lambda: (worker_status(port1) or {}).get("ready"), 60, "worker 1 to own its partitions")
    send(batches[0])
    written = wait_for(lambda: (worker_status(port1) or {}).get("learner", {}).get("checkpoint", {}).get("written"), 30,
                       "a checkpoint")
    covered = written["offsets"]["0"]
    send(batches[1])  # learned, but after the checkpoint (the next is an hour away)
    wait_for(lambda: labels(port1) == 500, 30, "worker 1 to learn 500 examples")
    tp = TopicPartition(examples, 0)
    wait_for(lambda: asyncio.run(committed(procs.bootstrap, app_id)).get(tp, 0) >= 500, 30, "the learner's commit")
    w1.send_signal(signal.SIGKILL)
    w1.wait(10)
    send(batches[2])
    _, port2 = procs.worker("worker-2", app_id, "--checkpoint-every", "3600")
    wait_for(lambda: labels(port2) == 650, 60, "worker 2 to hold all 650 examples")
    restored = live_worker_status(port2)["learner"]["checkpoint"]["restored"]
    assert restored["offset"] == covered < 500 and restored["id"] == written["id"]

    reference = CTRLearner()
    for ev in evs:
        reference.learn_one(ev["features"], bool(ev["label"]), ev["campaign"], ev["creative"])

    def latest_model() -> ModelSnapshot | None:
        records = asyncio.run(read_all(procs.bootstrap, [topic(procs.prefix, "model")], partitions=1))
        snap = ModelSnapshot.from_bytes(records[-1][3]) if records else None
        return snap if snap is not None and snap.n_seen == 650 else None

    model = wait_for(latest_model, 30, "a model of all 650 examples")
    expected = reference.snapshot()
    assert model.weights == expected.weights and model.bias == expected.bias
    assert model.counts.to_dict() == expected.counts.to_dict() and model.calibration == expected.calibration


def test_the_newest_complete_checkpoint_is_read_from_the_tail_of_the_learner_topic(procs: Procs) -> None:
    learner_topic = topic(procs.prefix, "learner")

    def write(records: list[tuple[bytes, bytes]]) -> None:
        asyncio.run(produce(procs.bootstrap, [(learner_topic, k.decode(), v) for k, v in records]))

    def latest() -> tuple[int, bytes] | None:
        return asyncio.run(read_latest(procs.bootstrap, learner_topic))

    assert latest() is None  # an empty topic: the learner starts empty
    blobs = {cid: bytes([cid]) * (2500 + cid) for cid in range(1, 6)}
    for cid in (1, 2, 3):
        write(frame(cid, blobs[cid], part_bytes=1000))
    assert latest() == (3, blobs[3])
    write(frame(4, blobs[4], part_bytes=1000)[:2])  # a writer that died after 2 of its 3 parts
    assert latest() == (3, blobs[3])
    write(frame(5, blobs[5], part_bytes=100)[:20])  # another, of 26 parts, died after 20
    assert latest() == (3, blobs[3])
    write(frame(6, b"x" * 2500, part_bytes=1000)[:2])  # and one of 3 parts: its tail window of 7 holds no whole one
    assert latest() == (3, blobs[3])  # found by reading the whole log


def test_a_partition_emptied_by_retention_does_not_hold_back_the_click_windows(procs: Procs) -> None:
    """A new group on a partition whose records retention removed has nothing to read there, though the high
    watermark is past its (absent) committed offset: event time must still follow the clock, or no click window of
    any campaign would ever close."""
    camp = min(publish_campaigns(procs, 1))
    clicks = topic(procs.prefix, "clicks")
    own = PARTITIONER(camp.encode(), list(range(4)), list(range(4)))
    other = next(k for k in (f"gone-{i}" for i in range(100)) if PARTITIONER(k.encode(), list(range(4)), list(range(4))) != own)
    gone = TopicPartition(clicks, PARTITIONER(other.encode(), list(range(4)), list(range(4))))
    old = make_event("clicks", "click:gone", 1_000, bid_id="gone", campaign=other, creative="cr1")
    asyncio.run(produce(procs.bootstrap, [(clicks, other, orjson.dumps(old))]))
    end = asyncio.run(end_offsets(procs.bootstrap, [clicks]))[gone]
    asyncio.run(delete_records(procs.bootstrap, gone, end))  # what retention does to a partition that went quiet
    _, port = procs.worker("worker", f"{procs.prefix}-w", "--click-window", "2")
    wait_for(lambda: (worker_status(port) or {}).get("ready"), 60, "the worker to own its partitions")
    now, bid = int(time.time() * 1000), f"{procs.prefix}-shown"
    asyncio.run(produce(procs.bootstrap, [
        (topic(procs.prefix, "bids"), camp, orjson.dumps(make_event(
            "bids", f"bid:{bid}", now, bid_id=bid, campaign=camp, creative="cr1", price=1, pctr=0.01, features=[3, 4]))),
        (topic(procs.prefix, "impressions"), camp, orjson.dumps(make_event(
            "impressions", f"imp:{bid}", now + 10, bid_id=bid, campaign=camp, creative="cr1"))),
    ]))

    def negatives() -> int:
        return (worker_status(port) or {}).get("learner", {}).get("by_campaign", {}).get(f"{camp}:0", 0)

    wait_for(negatives, 30, "the negative of the impression without a click (its 2 s window closed)")
    assert negatives() == 1


async def delete_records(bootstrap: str, tp: TopicPartition, end: int) -> None:
    """Delete every record of `tp` before `end`, as retention would."""
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    assert end > 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        low = await admin.delete_records({tp: RecordsToDelete(before_offset=end)})
        assert low[tp] == end  # the log now starts at its end: nothing left to read
    finally:
        await admin.close()


def test_events_read_again_after_a_time_zone_change_are_counted_once(procs: Procs) -> None:
    """Counted under a UTC campaign's date, read again by the same group once the campaign has moved to New York
    (its offsets rewound): each event stays counted once, on the day it was counted on."""
    camp, app_id = f"{procs.prefix}-tz", f"{procs.prefix}-w"
    path = procs.tmp / "tz.json"

    def publish(tz: str) -> None:
        path.write_bytes(orjson.dumps([campaign(id=camp, flight={"start": "2020-01-01", "end": "2099-12-31",
                                                                 "timezone": tz},
                                                goal={"type": "cpc", "value_per_click": 1.5, "max_bid_cpm": 20.0})]))
        out = procs.cli("campaign", "set", str(path))
        assert out.returncode == 0, out.stderr

    publish("UTC")
    one_am = int(time.time() * 1000) // 86_400_000 * 86_400_000 + 3_600_000  # today 01:00 UTC: yesterday in New York
    records = []
    for i in range(10):
        for kind in ("impressions", "clicks"):
            ev = make_event(kind, f"{kind}:{procs.prefix}-b{i}", one_am + i, bid_id=f"{procs.prefix}-b{i}",
                            campaign=camp, creative="cr1")
            records.append((topic(procs.prefix, kind), camp, orjson.dumps(ev)))
    asyncio.run(produce(procs.bootstrap, records))
    want = {f"{camp}|{local_day('UTC', one_am)}": {**dict.fromkeys(FIELDS, 0), "impressions": 10, "clicks": 10,
                                                  "value": 10 * 1_500_000}}
    w1, port1 = procs.worker("worker-1", app_id)
    names = delivery_names(procs.prefix)
    wait_for(lambda: caught_up(procs.bootstrap, app_id, names), 60, "worker 1 to commit every event", every=0.5)
    wait_for(lambda: summed_totals([worker_status(port1) or {"totals": {}}], {camp}) == want, 20, "the UTC totals")
    w1.send_signal(signal.SIGTERM)
    w1.wait(30)
    publish("America/New_York")
    asyncio.run(rewind(procs.bootstrap, app_id, names))
    _, port2 = procs.worker("worker-2", app_id)
    wait_for(lambda: caught_up(procs.bootstrap, app_id, names), 60, "worker 2 to commit every event again", every=0.5)
    wait_for(lambda: (worker_status(port2) or {}).get("ready"), 20, "worker 2 to be ready")
    time.sleep(2.0)  # anything counted twice has had time to show
    st = live_worker_status(port2)
    assert summed_totals([st], {camp}) == want
    assert st["outcomes"].get("impressions:duplicate_event") == st["outcomes"].get("clicks:duplicate_event") == 10


async def rewind(bootstrap: str, group: str, names: list[str], partitions: int = 4) -> None:
    """Set `group`'s committed offsets on every partition of `names` back to 0 (the group must have no members)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(n, p) for n in names for p in range(partitions)]
        c.assign(tps)
        await c.commit(dict.fromkeys(tps, 0))
    finally:
        await c.stop()
