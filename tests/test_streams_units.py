"""The streams side without a broker: exact recovery in the ledger, event-time windows, learner dedup, table views."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError

from bidder.campaigns import parse_campaign
from bidder.pacing import PacingState
from streams import kafka_io, topics
from streams.app import newest_by_campaign, pacing_doc, pacing_state
from streams.attribution import Attribution
from streams.checkpoints import assemble, frame
from streams.events import make_event
from streams.kafka_io import EventProducer
from streams.ledger import SpendLedger
from streams.processor import Campaigns, Learner, Pacer, RecentIds, checkpoint_offsets
from streams.tables import Outbox, TableView
from tests.helpers import campaign

MIN = 60_000


def ledger() -> SpendLedger:
    return SpendLedger({}, {}, day_of=lambda c, ts: "2026-01-01", click_value=lambda c: 0)


def bill(i: int, cost: int) -> dict:
    return make_event("billing", f"bill:b{i}", 1000 + i, bid_id=f"b{i}", campaign="c1", cost=cost, day="2026-01-01")


# -- ledger: what a crash can lose, and what it cannot make count twice -------------------------------


def test_a_lost_totals_write_is_counted_when_its_message_is_read_again() -> None:
    lg = ledger()
    for off in range(5):
        lg.apply("billing", bill(off, 100), ("t:0", off))
    saved = dict(lg.totals)
    assert lg.apply("billing", bill(5, 100), ("t:0", 5))
    lg.totals.clear()
    lg.totals.update(saved)  # the crash lost the totals write of offset 5; its `seen` write survived
    assert lg.apply("billing", bill(5, 100), ("t:0", 5))  # the same message again: not a duplicate
    assert not lg.apply("billing", bill(5, 100), ("t:0", 5))
    assert lg.day_totals("c1", "2026-01-01")["spend"] == 600


def test_the_same_id_at_another_offset_is_a_duplicate() -> None:
    lg = ledger()
    assert lg.apply("billing", bill(1, 250), ("t:0", 10))
    assert not lg.apply("billing", bill(1, 250), ("t:0", 11))  # re-sent by a producer: a new offset, the same fact
    assert not lg.apply("billing", bill(1, 250), ("t:2", 3))
    t = lg.day_totals("c1", "2026-01-01")
    assert (t["spend"], t["billed"]) == (250, 1)


def test_forgetting_old_ids_keeps_the_recent_ones() -> None:
    lg = ledger()
    for i in range(10):
        lg.apply("billing", bill(i, 1), ("t:0", i))
    assert lg.forget_before(1005) == 5
    assert sorted(lg.seen) == [f"bill:b{i}" for i in range(5, 10)]
    assert not lg.apply("billing", bill(7, 1), ("t:0", 99))


# -- attribution: windows close on event time ------------------------------------------------------------


def bid(i: int, ts: int = 0) -> dict:
    return make_event("bids", f"bid:b{i}", ts, bid_id=f"b{i}", campaign="c1", creative="cr1", price=1, pctr=0.01,
                      features=[i])


def imp(i: int, ts: int) -> dict:
    return make_event("impressions", f"imp:b{i}", ts, bid_id=f"b{i}", campaign="c1", creative="cr1")


def test_a_window_stays_open_while_its_partition_lags_behind() -> None:
    a = Attribution({}, click_window_ms=30 * MIN)
    for i in (1, 2):
        a.on_bid(bid(i))
        a.on_impression(imp(i, 0))
    lagging = {"b1": 10 * MIN, "b2": 60 * MIN}  # b1's partition has only read up to minute 10
    negatives, _ = a.expire(60 * MIN, lambda b: lagging[b])
    assert [x.bid_id for x in negatives] == ["b2"]
    lagging["b1"] = 60 * MIN
    negatives, _ = a.expire(60 * MIN, lambda b: lagging[b])
    assert [x.bid_id for x in negatives] == ["b1"]
    assert a.expire(61 * MIN) == ([], 0)  # each bid yields one example


def test_windows_close_in_slices_earliest_first_and_each_once() -> None:
    a = Attribution({}, click_window_ms=30 * MIN)
    for i in range(10):
        a.on_bid(bid(i))
        a.on_impression(imp(i, i * MIN))  # b0's window closes first
    lagging = {f"b{i}": 60 * MIN for i in range(10)}
    lagging["b1"] = 0  # its partition has read nothing yet: stays open, and does not count against a slice
    slices = []
    while True:
        negatives, _ = a.expire(60 * MIN, lambda b: lagging[b], limit=4)
        slices.append([x.bid_id for x in negatives])
        if not a.cut_short:
            break
    assert slices == [["b0", "b2", "b3", "b4"], ["b5", "b6", "b7", "b8"], ["b9"]]
    lagging["b1"] = 60 * MIN
    assert [x.bid_id for x in a.expire(60 * MIN, lambda b: lagging[b], limit=4)[0]] == ["b1"] and not a.cut_short


def test_entries_filled_from_elsewhere_are_indexed() -> None:
    recovered: dict[str, dict[str, Any]] = {"b7": {"c": "c1", "r": "cr1", "f": [7], "t": 0, "imp": 0, "clk": None, "done": 0},
                 "b8": {"c": "c1", "r": "cr1", "f": None, "t": 0, "imp": 0, "clk": None, "done": 0}}
    a = Attribution(dict(recovered), click_window_ms=30 * MIN)
    negatives, orphans = a.expire(31 * MIN)
    assert [x.bid_id for x in negatives] == ["b7"] and orphans == 1
    a.pending["b9"] = {**recovered["b7"], "f": [9]}  # as if a rebalance brought it
    assert a.expire(32 * MIN) == ([], 0)
    a.reindex()
    assert [x.bid_id for x in a.expire(32 * MIN)[0]] == ["b9"]


# -- the learner: one example per bid, whatever a crash replays -----------------------------------------------


def example(bid_id: str, label: int) -> dict:
    return make_event("examples", f"ex:{bid_id}", 0, campaign="c1", creative="cr1", features=[1, 2], label=label)


def test_the_learner_keeps_the_first_example_of_a_bid() -> None:
    learner = Learner(recent=100)
    fresh = [learner.is_new(e) for e in (example("b1", 0), example("b1", 1), example("b2", 1), example("b2", 1))]
    assert fresh == [True, False, True, False] and learner.duplicates == 2


def test_recent_ids_are_bounded_and_forget_the_oldest() -> None:
    ids = RecentIds(capacity=3)
    assert all(ids.add(x) for x in "abcd")
    assert len(ids) == 3 and "a" not in ids and "d" in ids
    assert ids.add("a") and not ids.add("d")


# -- table views and the outbox, on stand-ins for a Faust table and the Kafka producer ---------------------------


class _Store:
    def __init__(self) -> None:
        self.data: dict = {}
        self._key_partition: dict = {}


class _Topic:
    def get_topic_name(self) -> str:
        return "app-totals-changelog"


class _Table:
    name = "totals"

    def __init__(self) -> None:
        self.data = _Store()
        self.changelog_topic = _Topic()


class _Batch:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, key: bytes, value: bytes | None, timestamp: None) -> object | None:
        if len(self.records) >= self.cap:
            return None
        self.records.append((key, value))
        return object()


class _Producer:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes | None]]]] = []

    def create_batch(self) -> _Batch:
        return _Batch(self.cap)

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> None:
        self.sent.append((topic, partition, batch.records))


class _App:
    def __init__(self, producer: _Producer) -> None:
        self.producer = type("P", (), {"_ensure_producer": lambda _self: producer})()


def test_writes_land_in_their_partition_and_iteration_sees_only_owned_ones() -> None:
    view = TableView(_Table())
    outbox = Outbox(_App(_Producer(10)), (view,))
    outbox.at(2)
    view["c1|d"] = {"spend": 1}
    outbox.at(3)
    view["c2|d"] = {"spend": 2}
    outbox.at(None)  # a timer: each key keeps its own partition
    view["c1|d"] = {"spend": 5}
    assert view.partition_of("c1|d") == 2 and view.dirty == {"c1|d": 2, "c2|d": 3}
    with pytest.raises(RuntimeError):
        view["new|d"] = {}  # no event, no known partition: refused rather than written to the wrong one
    view.owned = frozenset({3})
    assert list(view) == ["c2|d"] and view.items() == [("c2|d", {"spend": 2})]
    assert view["c1|d"] == {"spend": 5}  # reads by key are not restricted


def test_records_reach_the_changelog_in_the_order_of_their_last_write() -> None:
    """A crash between two batches of one flush must lose a suffix of the writes, never an earlier write whose key
    was written again later: the ledger's replay takes a later day's totals as proof the earlier were written."""
    producer = _Producer(cap=1)
    view = TableView(_Table())
    outbox = Outbox(_App(producer), (view,))
    outbox.at(0)
    view["c1|d1"] = {"n": 1}
    view["c2|d1"] = {"n": 1}
    view["c1|d1"] = {"n": 2}
    asyncio.run(outbox.flush())
    sent = [orjson.loads(k) for t, _, recs in producer.sent if t == "app-totals-changelog" for k, _ in recs]
    assert sent == ["c2|d1", "c1|d1"]


def test_forgotten_event_ids_are_deleted_on_their_own_partitions() -> None:
    """The dedup horizon runs in a timer, after events of other partitions: each id's tombstone must reach the
    changelog partition its next owner recovers, not the partition of the last event processed."""
    from streams.app import forget_seen_ids
    from streams.ledger import SpendLedger

    producer = _Producer(cap=10)
    seen = TableView(_Table())
    seen.owned = frozenset({0, 2})
    outbox = Outbox(_App(producer), (seen,))
    ledger = SpendLedger({}, seen, lambda campaign, ts: "2026-01-01", lambda campaign: 0)
    for partition, eid, ts in ((0, "imp:a", 1_000), (2, "imp:b", 2_000), (2, "imp:c", 9_000)):
        outbox.at(partition)  # as the agent does for each event
        seen[eid] = [ts, "impressions", 0, None]
    asyncio.run(outbox.flush())
    producer.sent.clear()
    assert forget_seen_ids(outbox, ledger, before_ms=5_000) == 2
    asyncio.run(outbox.flush())
    tombstones = {orjson.loads(k): p for t, p, recs in producer.sent for k, v in recs if v is None}
    assert tombstones == {"imp:a": 0, "imp:b": 2}
    assert "imp:c" in seen and "imp:a" not in seen


def test_the_outbox_sends_one_record_per_dirty_key_in_batches_per_partition() -> None:
    producer = _Producer(cap=2)
    view = TableView(_Table())
    outbox = Outbox(_App(producer), (view,))
    outbox.at(1)
    for i in range(3):
        view[f"k{i}"] = {"n": 0}
        view[f"k{i}"] = {"n": i}  # written twice before the flush: one record
    del view["k0"]
    outbox.send("examples", b"c1", b"{}", 0)
    asyncio.run(outbox.flush())
    changelog = [(p, r) for t, p, recs in producer.sent if t == "app-totals-changelog" for r in recs]
    assert [p for p, _ in changelog] == [1, 1, 1]
    # in the order of each key's last write: k0's deletion came last
    assert [(orjson.loads(k), v and orjson.loads(v)) for _, (k, v) in changelog] == [("k1", {"n": 1}), ("k2", {"n": 2}),
                                                                                      ("k0", None)]
    assert [len(recs) for t, _, recs in producer.sent if t == "app-totals-changelog"] == [2, 1]  # a full batch, then one
    assert ("examples", 0, [(b"c1", b"{}")]) in producer.sent
    assert not view.dirty and view.partition_of("k0") is None
    producer.sent.clear()
    asyncio.run(outbox.flush())
    assert producer.sent == []


# -- the fetch loop: a seek that loses a race with the next rebalance must not kill the worker ----------------------


def test_a_seek_back_that_loses_a_rebalance_race_is_logged_not_raised() -> None:
    from aiokafka.errors import IllegalStateError

    from streams.batch_drain import BatchingConsumer

    class Log:
        def __init__(self) -> None:
            self.warnings: list[str] = []

        def warning(self, msg: str, *args: object) -> None:
            self.warnings.append(msg % args)

    class Consumer:
        log = Log()
        seeks = 0

        async def perform_seek(self) -> None:
            self.seeks += 1
            raise IllegalStateError("No current assignment for partition TopicPartition(topic='t', partition=1)")

    c = Consumer()
    asyncio.run(BatchingConsumer._seek_back(c))  # type: ignore[arg-type]
    assert c.seeks == 1 and len(c.log.warnings) == 1 and "No current assignment" in c.log.warnings[0]


def test_a_commit_the_broker_refused_is_not_remembered_as_committed() -> None:
    """A commit that fails because the group rebalanced meanwhile leaves the offsets where the broker has them, so
    the records read again after the rebalance are acknowledged and committed; a commit that succeeds moves them."""
    from faust.types import TP

    from streams.batch_drain import BatchingApp, BatchingConsumer

    async def run() -> tuple[list[str], dict[TP, int | None], dict[TP, int | None], bool, bool]:
        app = BatchingApp("commit-probe", broker="kafka://127.0.0.1:1", web_enabled=False, store="memory://")
        c = app.consumer
        assert isinstance(c, BatchingConsumer)
        tp = TP("t", 0)
        calls: list[str] = []
        answers = [False, True]

        async def flush() -> None:
            calls.append("flush")

        async def commit(offsets: dict[TP, int]) -> bool:
            calls.append(f"commit {offsets[tp]}")
            return answers.pop(0)

        c.assignment = lambda: {tp}  # type: ignore[method-assign]
        app.producer.flush = flush  # type: ignore[method-assign]
        c._commit = commit  # type: ignore[method-assign,assignment]
        c._committed_offset[tp] = 10
        c._ack_offsets(tp, list(range(10, 20)))
        refused = await c.commit()
        after_refusal = dict(c._committed_offset)
        c._ack_offsets(tp, list(range(10, 25)))  # read again from the broker's offset after the rebalance
        taken = await c.commit()
        return calls, after_refusal, dict(c._committed_offset), refused, taken

    calls, after_refusal, after_success, refused, taken = asyncio.run(run())
    assert not refused and taken
    assert list(after_refusal.values()) == [10]  # Faust alone would record 20 here, which the broker never took
    assert list(after_success.values()) == [25]
    assert calls == ["flush", "commit 20", "flush", "commit 25"]


def test_a_seek_takes_the_brokers_word_for_what_is_committed() -> None:
    """A partition the broker holds no offset for forgets any committed offset remembered from before the seek."""
    from faust.types import TP

    from streams.batch_drain import BatchingApp, BatchingConsumer

    async def run() -> tuple[dict[TP, int | None], dict[TP, int | None], int | None]:
        app = BatchingApp("seek-probe", broker="kafka://127.0.0.1:1", web_enabled=False, store="memory://")
        c = app.consumer
        assert isinstance(c, BatchingConsumer)
        never, some = TP("t", 0), TP("t", 1)

        async def seek_to_committed() -> dict[TP, int | None]:
            return {never: None, some: 15}

        c.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]
        c._committed_offset[never] = 20  # left from an assignment before a rebalance
        await c.perform_seek()
        c._ack_offsets(never, [0, 1, 2])  # read again from the start: acknowledged, so committed next
        return dict(c._committed_offset), {tp: c._read_offset[tp] for tp in (never, some)}, c._new_offset(never)

    committed, read, next_commit = asyncio.run(run())
    assert committed == {TP("t", 0): None, TP("t", 1): 15}
    assert read == {TP("t", 0): None, TP("t", 1): 15}
    assert next_commit == 3


def test_a_partition_whose_commit_stays_behind_what_was_processed_is_read_again() -> None:
    """A committed offset on the broker that stays at or below the last record processed for STUCK_AFTER_S would
    stay there for good; the partition is then read again from it, and its commit moves on."""
    from faust.types import TP

    from streams.batch_drain import STUCK_AFTER_S, BatchingApp, BatchingConsumer

    holed, healthy, moving, other = TP("bids", 2), TP("bids", 0), TP("bids", 1), TP("campaigns", 0)

    async def run() -> tuple[list[list[TP]], list[dict[TP, int]], list[dict[TP, int]], int | None, int | None]:
        app = BatchingApp("stuck-probe", broker="kafka://127.0.0.1:1", web_enabled=False, store="memory://")
        c = app.consumer
        assert isinstance(c, BatchingConsumer)
        asked: list[list[TP]] = []
        seeks: list[dict[TP, int]] = []

        async def broker_committed(tps: list[TP]) -> dict[TP, int | None]:
            asked.append(sorted(tps))
            return {tp: {holed: 155, healthy: 90, moving: 100}.get(tp) for tp in tps}

        async def seek_wait(offsets: dict[TP, int]) -> None:
            seeks.append(offsets)

        async def handler(batch: Sequence[Any]) -> None:
            pass

        c._broker_committed = broker_committed  # type: ignore[method-assign]
        c.seek_wait = seek_wait  # type: ignore[method-assign,assignment]
        c.assignment = lambda: {holed, healthy, moving, other}  # type: ignore[method-assign]
        c._committed_offset[holed] = 452  # what the worker takes as committed; the broker never took it
        await c._handle(handler, [None] * 152, {holed: list(range(300, 452))})
        await c._handle(handler, [None] * 50, {healthy: list(range(40, 90))})
        await c._handle(handler, [None] * 10, {moving: list(range(490, 500))})
        c._processed[other] = 21  # Faust's own path (not a handled topic) is left to Faust
        await c._check_commits({"bids": handler})  # asks the broker about the handled partitions only
        c._holes.clear()  # that check ran on the real clock; the rest runs on a made-up one
        found = [c._stuck(100.0, {holed: 155, healthy: 90, moving: 100}),
                 c._stuck(100.0 + STUCK_AFTER_S - 1, {holed: 155, healthy: 90, moving: 200}),
                 c._stuck(100.0 + STUCK_AFTER_S, {holed: 155, healthy: 90, moving: 300})]
        await c._read_again(found[-1])
        c._ack_offsets(holed, list(range(155, 452)))  # read again from 155, in order
        return asked, found, seeks, c._new_offset(holed), c._committed_offset[holed]

    asked, found, seeks, holed_next, holed_committed = asyncio.run(run())
    assert asked == [sorted([holed, healthy, moving])]
    assert found == [{}, {}, {holed: 155}]  # the moving commit is behind too, but it moves
    assert seeks == [{holed: 155}]
    assert holed_committed == 155 and holed_next == 452


class FakeBuilder:
    """Stands in for aiokafka's BatchBuilder: takes `room` records, then says it is full (None)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()


class FakeKafka:
    """The producer calls the event producer makes, with a send that fails (or hangs) from the `fail_at`-th batch."""

    def __init__(self, fail_at: int, hang: bool = False) -> None:
        self.fail_at, self.hang = fail_at, hang
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(room=7)

    async def send_batch(self, builder: FakeBuilder, topic: str, *, partition: int) -> asyncio.Future:
        if len(self.sent) + 1 >= self.fail_at:
            if self.hang:
                await asyncio.Event().wait()
            raise KafkaTimeoutError()
        self.sent.append((topic, partition, builder.records))
        return asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("hang", [False, True])
async def test_events_not_queued_when_a_send_fails_or_the_sender_stops_wait_on_disk(tmp_path, hang: bool) -> None:
    """Live events go to Kafka a batch per partition; when a batch cannot be queued (the broker fails it, or a stop
    cancels the sender while it waits), every event not yet queued goes to disk, in emit order, and none is lost
    or kept twice."""
    producer = EventProducer("127.0.0.1:1", tmp_path / "spill.jsonl")
    producer._producer = FakeKafka(fail_at=4, hang=hang)
    events = [(topics.IMPRESSIONS.name, f"camp-{i % 9}".encode(), orjson.dumps({"id": f"e{i}"})) for i in range(60)]
    task = asyncio.ensure_future(producer._enqueue(list(events)))
    if hang:
        await asyncio.sleep(0.05)
        task.cancel()
    with pytest.raises(asyncio.CancelledError if hang else KafkaTimeoutError):
        await task
    queued = [r for r, _ in producer._inflight]
    assert len(producer._producer.sent) == 3 and len(queued) == sum(len(b[2]) for b in producer._producer.sent)
    on_disk = producer.on_disk()
    assert sorted(queued + on_disk) == sorted(events)  # each event once, queued or on disk
    assert on_disk == [e for e in events if e not in queued]  # in the order they were emitted


Records = list[tuple[bytes, bytes]]
Settle = Callable[[int, Records], BaseException | Literal["hang"] | None]


class Broker:
    """What the topic holds, and the producers the event producer opened against it; each producer settles its
    batches by `settle(producer number, records)`: None acknowledges, an exception fails them, "hang" never answers."""

    def __init__(self, settle: Settle) -> None:
        self.settle, self.producers = settle, 0
        self.topic: list[bytes] = []
        self.calls = 0  # batches settled, for a test that counts them

    def producer(self) -> SettlingKafka:
        self.producers += 1
        return SettlingKafka(self, self.producers)


class SettlingKafka:
    def __init__(self, broker: Broker, number: int) -> None:
        self.broker, self.number, self.stopped = broker, number, False

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(room=1000)

    async def send_batch(self, builder: FakeBuilder, topic: str, *, partition: int) -> asyncio.Future:
        return self._future(builder.records)

    async def send(self, topic: str, value: bytes, *, key: bytes) -> asyncio.Future:
        return self._future([(key, value)])

    def _future(self, records: Records) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        outcome = self.broker.settle(self.number, records)
        if outcome is None:
            self.broker.topic.extend(v for _, v in records)
            future.set_result(None)
        elif outcome != "hang":
            future.set_exception(outcome)
        return future

    async def stop(self) -> None:
        self.stopped = True


def sent_ids(values: list[bytes]) -> list[str]:
    return [orjson.loads(v)["id"] for v in values]


async def run_producer(tmp_path, broker: Broker, events: int, until, timeout: float = 5.0) -> EventProducer:
    producer = EventProducer("127.0.0.1:1", tmp_path / "spill.jsonl", linger_s=0.01, retry_s=0.01)

    async def connect() -> SettlingKafka:
        return broker.producer()

    producer._connect = connect  # type: ignore[method-assign]
    await producer.start()
    for i in range(events):
        producer.emit("impressions", "c1", {"id": f"e{i}"})
        if i % 10 == 9:
            await asyncio.sleep(0.005)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not until(producer) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert producer._task is not None
    producer._task.cancel()
    return producer


async def test_batches_a_stopping_broker_gives_up_on_are_sent_again_by_a_fresh_producer(tmp_path) -> None:
    """A broker that stops leaves its partitions without a leader, and the producer fails the batches it holds with
    a retriable error; with idempotence, every later batch then fails on the gap in sequence numbers.  None of them
    is lost: they go back to disk, a fresh producer sends them, and each event reaches the topic once, in order."""
    from aiokafka.errors import LeaderNotAvailableError, OutOfOrderSequenceNumber

    def settle(number: int, records: Records) -> BaseException | None:
        if number == 1 and broker.calls >= 3:  # the first producer: three batches in, the broker stops
            return LeaderNotAvailableError() if broker.calls < 5 else OutOfOrderSequenceNumber()
        return None

    broker = Broker(settle)
    broker.calls = 0
    original = broker.settle

    def counting(number: int, records: Records) -> BaseException | Literal["hang"] | None:
        broker.calls += 1
        return original(number, records)

    broker.settle = counting
    producer = await run_producer(tmp_path, broker, 200, lambda p: len(broker.topic) >= 200 and not p.on_disk())
    assert sent_ids(broker.topic) == [f"e{i}" for i in range(200)]
    assert producer.failed == 0 and broker.producers >= 2 and producer.on_disk() == []


async def test_a_record_the_broker_refuses_itself_is_dropped_and_counted(tmp_path) -> None:
    """Too large for the broker: sending it again would change nothing, so it is counted in `failed`, not resent."""
    from aiokafka.errors import MessageSizeTooLargeError

    broker = Broker(lambda number, records: MessageSizeTooLargeError())
    producer = await run_producer(tmp_path, broker, 4, lambda p: p.failed >= 4)
    assert producer.failed == 4 and broker.topic == [] and broker.producers == 1 and producer.on_disk() == []


async def test_a_batch_unacknowledged_for_a_moment_is_already_on_disk(tmp_path) -> None:
    """Before the request timeout declares the broker gone, a batch (and what was emitted since) that has waited
    SPILL_AFTER_S is written down: a crash then must not lose events whose notices were answered."""
    from streams.kafka_io import SPILL_AFTER_S

    broker = Broker(lambda n, r: "hang")
    producer = await run_producer(tmp_path, broker, 30, lambda p: len(p.on_disk()) >= 30, timeout=SPILL_AFTER_S + 2)
    assert sorted(sent_ids([v for _, _, v in producer.on_disk()]), key=lambda x: int(x[1:])) == [f"e{i}" for i in range(30)]
    assert producer.connected  # still within the request timeout: not yet counted as an outage


def test_a_checkpoint_in_parts_is_read_back_whole_and_a_half_written_one_is_passed_over() -> None:
    data = bytes(range(256)) * 41  # 10,496 bytes: 11 parts of 1,000
    first = frame(1, data, part_bytes=1000)
    assert len(first) == 11 and {k for k, _ in first} == {f"ctr/{i}".encode() for i in range(11)}
    assert assemble(v for _, v in first) == (1, data)
    newer = frame(2, data[::-1], part_bytes=1000)
    # a writer that died after 4 parts: the complete older checkpoint stays in force; foreign values are ignored
    log = [v for _, v in first] + [b"junk", b"", None] + [v for _, v in newer[:4]]
    # the None is a tombstone: assemble skips it, though its parameter is typed Iterable[bytes]
    assert assemble(log) == (1, data)
    assert assemble(log + [v for _, v in newer[4:]]) == (2, data[::-1])
    assert assemble([b"junk"]) is None and assemble([]) is None
    assert assemble(v for _, v in frame(3, b"")) == (3, b"")


def test_a_learner_checkpoint_carries_the_offsets_it_covers_and_restores_the_learner() -> None:
    ex = [make_event("examples", f"ex:b{i}", 1000 + i, campaign="c", creative=f"r{i % 2}", features=[i % 5, 7],
                     label=i % 4 == 0) for i in range(40)]
    a = Learner()
    for ev in ex[:25]:
        a.learn(ev)
    a.snapshot_bytes()
    data = a.checkpoint_bytes({0: 25})
    assert checkpoint_offsets(data) == {0: 25}
    b = Learner()
    assert b.restore(data) == {0: 25}
    assert (b.version, b.labels) == (a.version, a.labels) == (1, {0: 18, 1: 7})
    for ev in ex[25:]:
        a.learn(ev)
        b.learn(ev)
    assert b.learner.weights() == a.learner.weights() and b.labels == a.labels
    negative = data.replace(b'"version":1,', b'"version":-1,', 1)  # its snapshots would all be refused
    assert negative != data
    for bad in (b"", b"{}", b"[1]\n", b'{"offsets": {"0": 3}}', b'{"offsets": {"x": 1}}\nzz', negative):
        with pytest.raises(ValueError, match="not a learner checkpoint"):
            Learner().restore(bad)


# -- pacing read back at startup: a restarted worker's controllers start from the last published lambda ----------

PACING_NOON = 1_780_315_200.0  # 2026-06-01 12:00 UTC


def pacer_with(*ids: str) -> tuple[Pacer, SpendLedger]:
    camps = Campaigns()
    for cid in ids:
        camps.by_id[cid] = parse_campaign(campaign(id=cid, budget={"daily": 100.0, "total": 0}))
    return Pacer(camps), SpendLedger({}, {}, camps.day_of, camps.click_value)


def published(cid: str, day: str, lam: float, exhausted: bool = False) -> bytes:
    state = PacingState(cid, day, lam=lam, spent_today=5, budget_today=100_000_000, exhausted=exhausted)
    state.campaign = cid
    return orjson.dumps(pacing_doc(state))


def test_the_newest_pacing_record_of_each_campaign_is_taken() -> None:
    values = [published("a", "2026-06-01", 1.0), published("b", "2026-06-01", 2.0), None, b"{not json",
              b"[1]", published("a", "2026-06-01", 3.0), published("z", "2026-06-01", 9.0)]
    found: dict = {}
    newest_by_campaign(values, {"a", "b", "c"}, found)
    assert {cid: doc["lam"] for cid, doc in found.items()} == {"a": 3.0, "b": 2.0}
    newest_by_campaign([published("b", "2026-06-01", 7.0)], {"a", "b", "c"}, found)  # an older window
    assert found["b"]["lam"] == 2.0


@pytest.mark.parametrize("doc", [{"campaign": "a", "day": "2026-06-01", "lam": float("nan"), "exhausted": False},
                                 {"campaign": "a", "day": "2026-06-01", "lam": 101.0, "exhausted": False},
                                 {"campaign": "a", "day": "2026-06-01", "lam": 1.0, "exhausted": "false"},
                                 {"campaign": "a", "day": 20260601, "lam": 1.0, "exhausted": False},
                                 {"campaign": "a", "day": "2026-06-01", "lam": True, "exhausted": False}, [], None])
def test_a_pacing_record_no_controller_could_start_from_is_passed_over(doc: object) -> None:
    assert pacing_state(doc) is None


def test_a_restarted_pacer_starts_from_todays_last_published_lambda() -> None:
    pacer, ledger = pacer_with("today", "yesterday", "exhausted", "unknown")
    docs = {"today": published("today", "2026-06-01", 4.5), "yesterday": published("yesterday", "2026-05-31", 6.0),
            "exhausted": published("exhausted", "2026-06-01", 100.0, exhausted=True)}
    for doc in docs.values():
        state = pacing_state(orjson.loads(doc))
        assert state is not None
        pacer.remember(state)
    lam = {st.campaign: st.lam for st in pacer.update(PACING_NOON, ledger)}
    assert lam["today"] == pytest.approx(4.5)
    assert lam["yesterday"] == lam["exhausted"] == lam["unknown"] == 0.0  # no guide to today: from 0, as before
    assert pacer.update(PACING_NOON + 1, ledger)[0].lam == pytest.approx(4.5, rel=0.01)  # and goes on from there


async def test_a_state_follower_cut_off_from_kafka_says_so_once(caplog) -> None:
    """It retries every second; an outage is one warning, not one a second."""
    import logging
    import socket

    from streams.kafka_io import StateFollower

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    follower = StateFollower(f"127.0.0.1:{port}", {topics.CAMPAIGNS.name: lambda k, v: None})
    with caplog.at_level(logging.WARNING, logger="streambid.kafka"):
        await follower.start()
        await asyncio.sleep(2.6)  # three tries
        await follower.stop()
    lost = [r for r in caplog.records if "state follower lost kafka" in r.getMessage()]
    assert len(lost) == 1 and follower.lost


async def test_a_followers_consumer_that_raises_its_own_cancellation_on_stop_does_not_cut_a_shutdown_short() -> None:
    """aiokafka's consumer, stopped with its broker gone, can raise a CancelledError of a fetch it cancelled; the
    caller's shutdown (which writes unsent events to disk next) must go on.  A cancellation of the caller still
    goes through."""
    from streams.kafka_io import StateFollower

    class Consumer:
        async def stop(self) -> None:
            raise asyncio.CancelledError()

    follower = StateFollower("127.0.0.1:1", {})
    follower._consumer = Consumer()  # type: ignore[assignment]
    await follower.stop()  # no error
    assert follower._consumer is None

    class Slow:
        async def stop(self) -> None:
            await asyncio.sleep(10)

    follower._consumer = Slow()  # type: ignore[assignment]
    task = asyncio.ensure_future(follower.stop())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_broker_check_quiets_the_kafka_client_only_while_it_runs() -> None:
    """Left at CRITICAL after the check, a worker's Kafka client logged nothing through a whole outage."""
    import argparse
    import logging

    from streams.commands import on_broker

    client = logging.getLogger("aiokafka")
    seen: list[int] = []

    async def work() -> int:
        seen.append(client.level)
        return 7

    assert on_broker(argparse.Namespace(broker="127.0.0.1:9"), work()) == 7
    assert seen == [logging.CRITICAL] and client.level == logging.NOTSET


async def test_ids_read_back_for_the_learner_are_strings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed example on the topic was dead-lettered when consumed; read back at a restart, its id (an object,
    a list) must not reach the learner's set of recent ids, where it would not even hash."""
    async def values(*_: object) -> list[tuple[int, bytes]]:
        return [(0, b'{"id": "ex:1"}'), (1, b'{"id": {"user": "u1"}}'), (2, b'{"id": ["a"]}'), (3, b"{"),
                (4, b"[]"), (5, b'{"id": 7}'), (6, b'{"id": "ex:2"}')]

    monkeypatch.setattr(kafka_io, "read_values", values)
    assert await kafka_io.read_event_ids("127.0.0.1:1", "t", 0, 0, 7) == ["ex:1", "ex:2"]
