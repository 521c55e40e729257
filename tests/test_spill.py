"""The event producer's disk, without a broker: what waits there is sent once and in order, a record Kafka refuses
for good is dropped and counted instead of holding up the rest, a full disk is no Kafka outage, workers that no
longer run leave nothing unsent, and the spill directory is this bidder's alone.

A fake Kafka producer stands in for aiokafka's: its `send` applies aiokafka's own client-side size check, as the
real one does before the broker sees anything.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import LeaderNotAvailableError, TopicAuthorizationFailedError

from streams.kafka_io import EventProducer, Record, SpillDirUnsafe, left_over_spills, lock_spill_dir, worker_spill

BILLING = "streambid.billing"
Settle = Callable[[list[tuple[bytes, bytes]]], BaseException | Literal["hang"] | None]


class Builder:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        if len(self.records) >= 1000:
            return None
        self.records.append((key, value))
        return object()


class Closer:
    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka

    async def close(self) -> None:
        self.kafka.stopped = True


class FakeKafka:
    """Takes what `settle(records)` lets it (None: acknowledged; an exception: failed; "hang": never answered) onto
    `topic`; `send` refuses what aiokafka's client refuses (over max_request_size) before anything is queued."""

    def __init__(self, topic: list[bytes], settle: Settle | None = None, refuse_topic: str = "") -> None:
        self.topic, self.settle, self.refuse_topic = topic, settle, refuse_topic
        self.stopped = False
        self.hung: list[asyncio.Future] = []  # never answered, unless a test settles them
        self._real = AIOKafkaProducer.__new__(AIOKafkaProducer)
        self._real._key_serializer = self._real._value_serializer = None
        self._real._max_request_size = 1048576
        self._sender = self.client = Closer(self)  # what a stop that cannot wait closes

    async def partitions_for(self, topic: str) -> set[int]:
        if topic == self.refuse_topic:
            raise TopicAuthorizationFailedError()
        return {0}

    def create_batch(self) -> Builder:
        return Builder()

    async def send_batch(self, builder: Builder, topic: str, *, partition: int) -> asyncio.Future:
        return self._future(builder.records)

    async def send(self, topic: str, value: bytes, *, key: bytes) -> asyncio.Future:
        self._real._serialize(key, value, [])  # raises MessageSizeTooLargeError as the real send() does
        return self._future([(key, value)])

    def _future(self, records: list[tuple[bytes, bytes]]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        outcome = self.settle(records) if self.settle else None
        if outcome is None:
            self.topic.extend(v for _, v in records)
            future.set_result(None)
        elif outcome == "hang":
            self.hung.append(future)
        else:
            future.set_exception(outcome)
        return future

    async def stop(self) -> None:
        self.stopped = True


def producer_on(spill: Path, kafkas: list[FakeKafka], topic: list[bytes], settle: Settle | None = None,
                request_timeout_ms: int = 5000) -> EventProducer:
    producer = EventProducer("127.0.0.1:1", spill, linger_s=0.01, retry_s=0.05, request_timeout_ms=request_timeout_ms)
    return connect_to(producer, kafkas, topic, settle)


def connect_to(producer: EventProducer, kafkas: list[FakeKafka], topic: list[bytes],
               settle: Settle | None = None) -> EventProducer:
    async def connect() -> FakeKafka:
        kafkas.append(FakeKafka(topic, settle))
        return kafkas[-1]

    producer._connect = connect  # type: ignore[method-assign,assignment]
    return producer


def rec(i: int | str, pad: int = 0) -> Record:
    return BILLING, b"c1", orjson.dumps({"id": f"e{i}", "pad": "x" * pad})


def ids(values: list[bytes]) -> list[str]:
    return [orjson.loads(v)["id"] for v in values]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """full_disk(True): every spill write fails with ENOSPC from then on; full_disk(False): the disk has room again."""
    real = EventProducer._write
    state = {"full": False}

    def write(path: Path, data: bytes, append: bool, sync: bool = True) -> None:
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data, append, sync)

    monkeypatch.setattr(EventProducer, "_write", staticmethod(write))
    return lambda full: state.__setitem__("full", full)


# -- spill files of workers that no longer run ------------------------------------------------------------------


def test_each_left_over_spill_file_has_exactly_one_taker(tmp_path: Path) -> None:
    for name in ("spill-0.jsonl", "spill-1.jsonl.inflight", "spill-2.jsonl", "spill-3.jsonl.inflight",
                 "spill-4.jsonl.replay", "spill-4.jsonl.replay.done", "spill-5.jsonl", "spill-5.jsonl.replay",
                 "spill-6.jsonl.corrupt", "spill-07.jsonl", "spill-8.jsonl.tmp", "serve.lock"):
        (tmp_path / name).write_bytes(b"")
    taken = {i: left_over_spills(tmp_path, i, 2) for i in range(2)}
    assert taken == {0: [worker_spill(tmp_path, 2), worker_spill(tmp_path, 4)],
                     1: [worker_spill(tmp_path, 3), worker_spill(tmp_path, 5)]}  # nothing to send in 6, 07 or 8
    assert left_over_spills(tmp_path, 0, 1) == [worker_spill(tmp_path, k) for k in (1, 2, 3, 4, 5)]
    assert left_over_spills(tmp_path, 1, 8) == [] and left_over_spills(tmp_path / "none", 0, 1) == []


async def test_a_worker_replays_once_what_workers_no_longer_running_left(tmp_path: Path, caplog) -> None:
    """`serve --workers 4` stopped in an outage, started again with 2: spill-2 and spill-3 stayed on disk unsent."""
    encode = EventProducer._encode
    (tmp_path / "spill-0.jsonl").write_bytes(encode([rec("own0")]))
    (tmp_path / "spill-2.jsonl.inflight").write_bytes(encode([rec("w2a"), rec("w2b")]))
    (tmp_path / "spill-2.jsonl").write_bytes(encode([rec("w2c")]))
    (tmp_path / "spill-4.jsonl.replay").write_bytes(encode([rec("w4sent"), rec("w4a")]))
    (tmp_path / "spill-4.jsonl.replay.done").write_bytes(str(len(encode([rec("w4sent")]))).encode())
    (tmp_path / "spill-4.jsonl").write_bytes(encode([rec("w4b")]))
    (tmp_path / "spill-3.jsonl").write_bytes(encode([rec("w3")]))  # worker 1's to take
    topic: list[bytes] = []
    with caplog.at_level(logging.WARNING, logger="streambid.kafka"):
        producer = connect_to(EventProducer.for_worker("127.0.0.1:1", tmp_path, 0, 2), [], topic)
    assert "taking over spill-2.jsonl, spill-4.jsonl" in caplog.text
    assert ids([v for _, _, v in producer.on_disk()]) == ["eown0", "ew2a", "ew2b", "ew2c", "ew4a", "ew4b"]
    producer.linger_s, producer.retry_s = 0.01, 0.05
    await producer.start()
    producer.emit("billing", "c1", {"id": "elive"})
    await until(lambda: len(topic) == 7)
    await producer.stop()
    assert ids(topic) == ["eown0", "ew2a", "ew2b", "ew2c", "ew4a", "ew4b", "elive"]  # each once, in each file's order
    assert producer.replayed == 6 and producer.failed == 0 and producer.on_disk() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spill-3.jsonl"]


# -- a record refused for good -----------------------------------------------------------------------------------


async def test_a_spilled_event_the_client_refuses_for_good_is_counted_and_passed_over(tmp_path: Path, caplog) -> None:
    """An event over 1 MiB on disk: the replay went back to it forever, later events went to disk only, `failed`
    stayed 0 and the log said Kafka was down."""
    spill = tmp_path / "spill.jsonl"
    spill.write_bytes(EventProducer._encode([rec(0), rec(1, pad=1_100_000), rec(2), rec(3)]))
    topic: list[bytes] = []
    producer = producer_on(spill, [], topic)
    with caplog.at_level(logging.WARNING, logger="streambid.kafka"):
        await producer.start()
        for i in range(4, 8):
            producer.emit("billing", "c1", {"id": f"e{i}"})
            await asyncio.sleep(0.02)
        await until(lambda: len(topic) == 7)
        await producer.stop()
    assert ids(topic) == ["e0", "e2", "e3", "e4", "e5", "e6", "e7"]
    assert producer.failed == 1 and producer.connected and producer.on_disk() == []
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.levelno for r in refused] == [logging.ERROR]
    assert BILLING in refused[0].getMessage() and "MessageSizeTooLargeError" in refused[0].getMessage()
    assert "xxxx" not in caplog.text and '"e1"' not in caplog.text  # its size, never its content
    assert "kafka unavailable" not in caplog.text


async def test_live_events_of_a_topic_kafka_refuses_for_good_are_counted_not_retried(tmp_path: Path, caplog) -> None:
    topic: list[bytes] = []
    producer = EventProducer("127.0.0.1:1", tmp_path / "spill.jsonl", linger_s=0.01, retry_s=0.05)

    async def connect() -> FakeKafka:
        return FakeKafka(topic, refuse_topic="streambid.wins")

    producer._connect = connect  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.WARNING, logger="streambid.kafka"):
        await producer.start()
        producer.emit("wins", "c1", {"id": "w0"})
        producer.emit("billing", "c1", {"id": "e0"})
        await until(lambda: producer.failed == 1 and len(topic) == 1)
        producer.emit("billing", "c1", {"id": "e1"})
        await until(lambda: len(topic) == 2)
        await producer.stop()
    assert ids(topic) == ["e0", "e1"] and producer.failed == 1 and producer.on_disk() == []
    assert "TopicAuthorizationFailedError" in caplog.text and "kafka unavailable" not in caplog.text


# -- a full spill disk --------------------------------------------------------------------------------------------


async def test_a_full_disk_is_no_kafka_outage(tmp_path: Path, full_disk, caplog) -> None:
    """Disk full, broker healthy but slow to acknowledge: the failed in-flight copy marked Kafka down, and stop()
    raised with the buffer neither sent nor kept."""
    topic: list[bytes] = []
    producer = producer_on(tmp_path / "spill.jsonl", [], topic)
    real = FakeKafka._future

    def slow(self: FakeKafka, records: list[tuple[bytes, bytes]]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        acked = real(self, records)
        asyncio.get_running_loop().call_later(0.4, lambda: future.set_result(acked.result()))
        return future

    full_disk(True)
    with caplog.at_level(logging.WARNING, logger="streambid.kafka"), pytest.MonkeyPatch.context() as m:
        m.setattr(FakeKafka, "_future", slow)
        await producer.start()
        for i in range(5):
            producer.emit("billing", "c1", {"id": f"e{i}"})
            await asyncio.sleep(0.05)
        await until(lambda: "cannot write the spill file" in caplog.text)
        assert producer.connected
        await producer.stop()
    assert ids(topic) == [f"e{i}" for i in range(5)] and producer.sent == 5 and producer.failed == 0
    assert "kafka unavailable" not in caplog.text and not producer.buffer


async def test_a_stop_with_a_full_disk_and_no_answer_counts_what_is_lost_and_stops_kafka(tmp_path: Path, full_disk,
                                                                                          caplog) -> None:
    kafkas: list[FakeKafka] = []
    producer = producer_on(tmp_path / "spill.jsonl", kafkas, [], settle=lambda r: "hang", request_timeout_ms=300)
    await producer.start()
    producer.emit("billing", "c1", {"id": "e0"})
    await until(lambda: producer.in_flight == 1)
    full_disk(True)
    producer.emit("billing", "c1", {"id": "e1"})
    with caplog.at_level(logging.ERROR, logger="streambid.kafka"):
        await asyncio.wait_for(producer.stop(), 10)  # used to raise OSError
    assert kafkas[0].stopped and producer.failed == 2 and not producer.buffer
    assert "2 event(s) lost at exit" in caplog.text and "free disk space" in caplog.text


async def test_at_a_stop_kafka_takes_what_a_full_disk_refuses(tmp_path: Path, full_disk) -> None:
    topic: list[bytes] = []
    producer = producer_on(tmp_path / "spill.jsonl", [], topic)
    producer._producer, producer.connected = FakeKafka(topic), True

    async def flushed(timeout: float = 10.0) -> bool:  # a flush that ran out of time with events still in memory
        return False

    producer.flush = flushed  # type: ignore[method-assign]
    for i in range(3):
        producer.emit("billing", "c1", {"id": f"e{i}"})
    full_disk(True)
    await producer.stop()
    assert ids(topic) == ["e0", "e1", "e2"] and producer.sent == 3 and producer.failed == 0


# -- the batch that was in flight ----------------------------------------------------------------------------------


async def test_the_batch_in_flight_at_a_crash_stays_on_disk_until_acknowledged_and_goes_first(tmp_path: Path,
                                                                                             full_disk) -> None:
    """Its copy into the spill file failed on a full disk, and the .inflight file was deleted all the same: the
    events lived in memory only, and went out after the newer spill file."""
    spill = tmp_path / "spill.jsonl"
    inflight = tmp_path / "spill.jsonl.inflight"
    inflight.write_bytes(EventProducer._encode([rec(0), rec(1)]))
    spill.write_bytes(EventProducer._encode([rec(2), rec(3)]))
    full_disk(True)
    answer: dict[str, BaseException | Literal["hang"] | None] = {"now": "hang"}
    topic: list[bytes] = []
    kafkas: list[FakeKafka] = []
    producer = producer_on(spill, kafkas, topic, settle=lambda r: answer["now"])
    await producer.start()
    await until(lambda: producer.in_flight == 2)
    assert inflight.exists() and ids([v for _, _, v in producer.on_disk()]) == ["e0", "e1", "e2", "e3"]
    answer["now"] = None
    for future in kafkas[0].hung:  # given up on: sent again from the file, by a fresh producer
        future.set_exception(LeaderNotAvailableError())
    await until(lambda: len(topic) == 4)
    await producer.stop()
    assert ids(topic) == ["e0", "e1", "e2", "e3"] and not inflight.exists() and producer.on_disk() == []


async def test_a_live_batch_given_up_on_stays_in_its_inflight_copy_when_the_disk_is_full(tmp_path: Path,
                                                                                          full_disk) -> None:
    answer: dict[str, BaseException | Literal["hang"] | None] = {"now": "hang"}
    topic: list[bytes] = []
    kafkas: list[FakeKafka] = []
    producer = producer_on(tmp_path / "spill.jsonl", kafkas, topic, settle=lambda r: answer["now"])
    await producer.start()
    producer.emit("billing", "c1", {"id": "e0"})
    await until(lambda: producer._inflight_written)
    full_disk(True)
    producer.emit("billing", "c1", {"id": "e1"})
    answer["now"] = LeaderNotAvailableError()
    kafkas[0].hung[0].set_exception(LeaderNotAvailableError())
    await until(lambda: producer.in_flight == 0 and producer._producer is None)
    assert ids([v for _, _, v in producer.on_disk()]) == ["e0"]  # the only copy, kept
    answer["now"] = None
    await until(lambda: len(topic) == 2)
    await producer.stop()
    assert ids(topic) == ["e0", "e1"] and producer.on_disk() == []


# -- the spill directory -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o022, 0o077])
def test_spill_files_are_this_users_alone_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        lock_spill_dir(tmp_path / "locked" / "spill").close()
        producer = EventProducer("127.0.0.1:1", tmp_path / "made" / "spill.jsonl")
        producer._spill([rec(0)])
        producer._write(producer.inflight_path, b"x\n", append=False)
    finally:
        os.umask(old)
    assert (tmp_path / "locked" / "spill").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "locked" / "spill" / "serve.lock").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "made").stat().st_mode & 0o077 == 0
    assert {p.stat().st_mode & 0o777 for p in (producer.spill_path, producer.inflight_path)} == {0o600}
    lock_spill_dir(tmp_path / "locked" / "spill").close()  # and taken again by the next start


def test_a_spill_dir_others_may_write_to_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(SpillDirUnsafe, match=f"--spill-dir {shared} can be written by group or others .*chmod go-w"):
        lock_spill_dir(shared)
    assert not (shared / "serve.lock").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: theirs.stat().st_uid + 1)
    with pytest.raises(SpillDirUnsafe, match=f"--spill-dir {theirs} belongs to another user"):
        lock_spill_dir(theirs)


def test_symbolic_links_in_the_spill_dir_are_never_followed(tmp_path: Path) -> None:
    spill_dir, victim = tmp_path / "spill", tmp_path / "victim"
    spill_dir.mkdir(mode=0o700)
    victim.write_bytes(b"keep\n")
    (spill_dir / "serve.lock").symlink_to(victim)
    with pytest.raises(SpillDirUnsafe, match="serve.lock is a symbolic link"):
        lock_spill_dir(spill_dir)
    (spill_dir / "spill-0.jsonl").symlink_to(victim)
    producer = EventProducer("127.0.0.1:1", spill_dir / "spill-0.jsonl")
    producer._spill([rec(0)])
    assert victim.read_bytes() == b"keep\n" and len(producer.buffer) == 1  # refused, held in memory


async def test_a_replay_never_reads_through_a_symbolic_link(tmp_path: Path, caplog) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(EventProducer._encode([rec("planted")]))
    spill = tmp_path / "spill" / "spill-0.jsonl"
    spill.parent.mkdir(mode=0o700)
    spill.symlink_to(victim)
    topic: list[bytes] = []
    producer = producer_on(spill, [], topic)
    with caplog.at_level(logging.ERROR, logger="streambid.kafka"):
        await producer.start()
        producer.emit("billing", "c1", {"id": "e0"})
        await until(lambda: len(topic) == 1)
        await producer.stop()
    assert ids(topic) == ["e0"] and victim.exists() and "is a symbolic link" in caplog.text


def _ids(data: bytes) -> list[str]:
    return [orjson.loads(orjson.loads(line)[2])["id"] for line in data.splitlines()]


def test_an_overflow_spills_a_slice_not_half_the_buffer(tmp_path: Path) -> None:
    """An emit past the bound spilled half of it (50,000 events: 121 ms with every answer in flight waiting)."""
    from streams.kafka_io import SPILL_SLICE

    producer = EventProducer("127.0.0.1:1", tmp_path / "events.jsonl", max_buffer=4 * SPILL_SLICE)
    for i in range(4 * SPILL_SLICE + 1):
        producer.emit("impressions", "k", {"id": f"e{i}"})
    assert producer.spilled == SPILL_SLICE and len(producer.buffer) == 3 * SPILL_SLICE + 1
    assert _ids(producer.spill_path.read_bytes()) == [f"e{i}" for i in range(SPILL_SLICE)]  # the oldest, in order


def test_memory_goes_to_disk_in_slices_with_the_loop_let_in_between(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.kafka_io import SPILL_SLICE

    producer = EventProducer("127.0.0.1:1", tmp_path / "events.jsonl")
    total = 2 * SPILL_SLICE + SPILL_SLICE // 2
    for i in range(total):
        producer.emit("impressions", "k", {"id": f"e{i}"})
    writes: list[tuple[int, bool]] = []
    real_write = EventProducer._write

    def counted(path: Path, data: bytes, append: bool, sync: bool = True) -> None:
        writes.append((data.count(b"\n"), sync))
        real_write(path, data, append, sync)

    monkeypatch.setattr(EventProducer, "_write", staticmethod(counted))
    seen_at: list[int] = []

    async def run() -> None:
        def answer_in_between() -> None:  # stands for the bid path, which emits while the spill goes on
            seen_at.append(len(writes))
            producer.emit("impressions", "k", {"id": "late"})

        asyncio.get_running_loop().call_soon(answer_in_between)
        await producer._spill_memory()

    asyncio.run(run())
    assert writes == [(SPILL_SLICE, False), (SPILL_SLICE, False), (SPILL_SLICE // 2, True)]  # one fsync, at the end
    assert seen_at == [1]  # the loop ran after the first slice, not after all of them
    assert _ids(producer.spill_path.read_bytes()) == [f"e{i}" for i in range(total)]
    assert [orjson.loads(v)["id"] for _, _, v in producer.buffer] == ["late"]  # queued behind, in memory
