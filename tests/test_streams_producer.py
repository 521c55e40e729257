"""The bidder's event producer through a Kafka outage: spill to disk, replay on reconnect, exactly once, in order.

A small TCP proxy stands between the producer and the real broker.  It rewrites
the broker's address in Metadata answers to its own, so every connection the
client makes goes through it; closing it refuses new connections and cuts the
live ones, which is what an unreachable broker looks like to the client.
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol import metadata

from streams import topics
from streams.events import make_event
from streams.kafka_io import EventProducer, SpillDirInUse, ensure_topics, lock_spill_dir
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.kafka
METADATA = 3  # Kafka API key


class KafkaProxy:
    """Forwards Kafka connections to `upstream`; close() makes the broker unreachable, open() reachable again."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.rewritten = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()  # refuse new connections
        for w in list(self.writers):  # and cut the live ones
            w.transport.abort()
        self.writers.clear()
        await asyncio.sleep(0)  # (not Server.wait_closed: on 3.11 it can wait on the cut connections' handlers)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self.writers |= {client_w, broker_w}
        asked: dict[int, int] = {}  # correlation id -> Metadata api version
        await asyncio.gather(self._pump(client_r, broker_w, lambda f: self._note(f, asked)),
                             self._pump(broker_r, client_w, lambda f: self._rewrite(f, asked)),
                             return_exceptions=True)
        for w in (client_w, broker_w):
            w.transport.abort()
            self.writers.discard(w)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, edit) -> None:
        while True:
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            frame = edit(await reader.readexactly(size))
            writer.write(struct.pack(">i", len(frame)) + frame)
            await writer.drain()

    @staticmethod
    def _note(frame: bytes, asked: dict[int, int]) -> bytes:
        api_key, version, corr = struct.unpack(">hhi", frame[:8])
        if api_key == METADATA:
            asked[corr] = version
        return frame

    def _rewrite(self, frame: bytes, asked: dict[int, int]) -> bytes:
        version = asked.pop(struct.unpack(">i", frame[:4])[0], None)
        cls = getattr(metadata, f"MetadataResponse_v{version}", None) if version is not None else None
        if cls is None:
            return frame
        resp = cls.decode(frame[4:])
        resp.brokers = [(b[0], "127.0.0.1", self.port, *b[3:]) for b in resp.brokers]
        self.rewritten += 1
        return frame[:4] + resp.encode()


def impression(run: str, i: int) -> dict:
    return make_event("impressions", f"imp:{run}-{i}", int(time.time() * 1000), bid_id=f"{run}-{i}", campaign=f"spill-{run}",
                      creative="cr1")


async def until(check, timeout: float, what: str, every: float = 0.05) -> None:
    end = time.time() + timeout
    while not check():
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


async def ids_on_topic(bootstrap: str, key: str, prefix: str) -> list[str]:
    """Ids of our events on the impressions topic, in partition order (all ours share one key, so one partition)."""
    part = DefaultPartitioner()(key.encode(), list(range(topics.IMPRESSIONS.partitions)),
                                list(range(topics.IMPRESSIONS.partitions)))
    tp = TopicPartition(topics.IMPRESSIONS.name, part)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        await c.seek_to_beginning(tp)
        out = []
        while await c.position(tp) < end:
            for m in (await c.getmany(tp, timeout_ms=500)).get(tp, []):
                ev = orjson.loads(m.value)
                if ev["id"].startswith(prefix):
                    out.append(ev["id"])
        return out
    finally:
        await c.stop()


async def test_outage_spills_to_disk_and_replays_exactly_once_in_order(kafka_bootstrap: str, tmp_path: Path) -> None:
    await ensure_topics(kafka_bootstrap)
    run = uuid.uuid4().hex[:8]
    key = f"spill-{run}"
    proxy = KafkaProxy(kafka_bootstrap)
    await proxy.open()
    spill = tmp_path / "spill" / "events.jsonl"
    producer = EventProducer(proxy.bootstrap, spill, request_timeout_ms=2000, retry_s=0.3, batch=500)
    await producer.start()
    emitted: list[str] = []

    def emit(n: int) -> float:
        """Emit n events; returns the slowest emit call in seconds (the bid path's cost)."""
        worst = 0.0
        for _ in range(n):
            ev = impression(run, len(emitted))
            t0 = time.perf_counter()
            producer.emit("impressions", key, ev)
            worst = max(worst, time.perf_counter() - t0)
            emitted.append(ev["id"])
        return worst

    try:
        emit(200)  # broker reachable
        await until(lambda: producer.sent == 200 and not producer.in_flight, 20, "the first events to be acknowledged")
        assert proxy.rewritten > 0  # the client learned the proxy as the broker's address

        await proxy.close()  # outage: refused and cut
        worst = emit(300)
        # on disk after SPILL_AFTER_S; counted as an outage after the request timeout
        await until(lambda: len(producer.on_disk()) == 300 and not producer.buffer, 20, "the events to reach the disk")
        assert worst < 0.005, f"emit blocked for {worst * 1000:.1f} ms during the outage"
        await until(lambda: not producer.connected, 10, "the outage to be noticed")
        assert [orjson.loads(v)["id"] for _, _, v in producer.on_disk()] == emitted[200:500]
        emit(5000)  # still down: these queue behind the others on disk
        await until(lambda: len(producer.on_disk()) == 5300 and not producer.buffer, 10, "the later events to reach the disk")

        await proxy.open()  # broker back: the replay takes several batches; what is emitted meanwhile waits for it
        await until(lambda: producer.replayed > 0, 20, "the replay to start", every=0.001)
        assert producer.replayed < 5000
        emit(100)
        await until(lambda: producer.sent == 5600 and not producer.buffer and not producer.in_flight, 30,
                    "every event to be acknowledged after the outage")
        await until(lambda: not producer.on_disk() and not spill.exists(), 5, "the disk to be emptied")
        assert producer.connected and producer.replayed > 0 and producer.failed == 0
    finally:
        await producer.stop()
        await proxy.close()

    on_topic = await ids_on_topic(kafka_bootstrap, key, f"imp:{run}-")
    assert on_topic == emitted  # all 5600, each once, in the order they were emitted


async def test_a_producer_stopped_mid_outage_leaves_its_events_on_disk_for_the_next(kafka_bootstrap: str,
                                                                                   tmp_path: Path) -> None:
    await ensure_topics(kafka_bootstrap)
    run = uuid.uuid4().hex[:8]
    key = f"spill-{run}"
    proxy = KafkaProxy(kafka_bootstrap)
    await proxy.open()
    spill = tmp_path / "events.jsonl"
    first = EventProducer(proxy.bootstrap, spill, request_timeout_ms=1000, retry_s=0.2, batch=200)
    await first.start()
    ids = []
    for i in range(50):
        ev = impression(run, i)
        first.emit("impressions", key, ev)
        ids.append(ev["id"])
    await until(lambda: first.sent == 50, 20, "the first events to be acknowledged")
    await proxy.close()
    for i in range(50, 650):
        ev = impression(run, i)
        first.emit("impressions", key, ev)
        ids.append(ev["id"])
    await until(lambda: not first.connected, 10, "the outage to be noticed")
    await first.stop()  # e.g. the bidder is restarted while Kafka is away
    assert [orjson.loads(v)["id"] for _, _, v in first.on_disk()] == ids[50:]

    await proxy.open()
    second = EventProducer(proxy.bootstrap, spill, request_timeout_ms=1000, retry_s=0.2, batch=200)
    await second.start()
    try:
        await until(lambda: second.sent == 600 and not second.on_disk(), 30, "the next producer to replay the disk")
    finally:
        await second.stop()
        await proxy.close()
    assert await ids_on_topic(kafka_bootstrap, key, f"imp:{run}-") == ids


async def test_events_of_many_keys_land_once_where_send_would_put_them_in_order(kafka_bootstrap: str,
                                                                                 tmp_path: Path) -> None:
    """Live events go as one record batch per partition, several when a partition's share outgrows a batch: each
    event must land exactly once, on the partition Kafka's default (murmur2) partitioner gives its key, and each
    key's events in the order they were emitted."""
    await ensure_topics(kafka_bootstrap)
    run = uuid.uuid4().hex[:8]
    producer = EventProducer(kafka_bootstrap, tmp_path / "spill.jsonl")
    await producer.start()
    keys = [f"many-{run}-{j}" for j in range(40)]
    emitted: dict[str, list[str]] = {k: [] for k in keys}
    try:
        for i in range(6000):  # emitted before the sender runs: one take of 5,000, about 450 KB per partition
            key = keys[(i * 7) % 40 if i % 3 else i % 40]
            ev = make_event("impressions", f"imp:{run}-{i}", int(time.time() * 1000), bid_id=f"{run}-{i}", campaign=key,
                            creative="cr-" + "x" * 300)
            producer.emit("impressions", key, ev)
            emitted[key].append(ev["id"])
        await until(lambda: producer.sent == 6000 and not producer.in_flight, 30, "every event to be acknowledged")
        assert producer.failed == 0 and not producer.spilled
    finally:
        await producer.stop()

    parts = list(range(topics.IMPRESSIONS.partitions))
    tps = [TopicPartition(topics.IMPRESSIONS.name, p) for p in parts]
    c = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    landed: dict[str, list[tuple[int, str]]] = {k: [] for k in keys}
    try:
        c.assign(tps)
        ends = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        while [tp for tp in tps if await c.position(tp) < ends[tp]]:
            for tp, msgs in (await c.getmany(*tps, timeout_ms=500)).items():
                for m in msgs:
                    if m.key is not None and m.key.decode() in landed:
                        landed[m.key.decode()].append((tp.partition, orjson.loads(m.value)["id"]))
    finally:
        await c.stop()
    partitioner = DefaultPartitioner()
    assert len({partitioner(k.encode(), parts, parts) for k in keys}) == len(parts)  # every partition had a share
    for k in keys:
        assert [i for _, i in landed[k]] == emitted[k]  # once each, in emit order
        assert {p for p, _ in landed[k]} == {partitioner(k.encode(), parts, parts)}


async def test_a_line_cut_short_in_the_spill_files_is_set_aside_and_the_rest_is_sent(kafka_bootstrap: str,
                                                                                    tmp_path: Path) -> None:
    """A crash or a full disk mid-write leaves half a line: decoding it ended the sender for good, and every restart
    read the same file, so nothing was ever sent again."""
    await ensure_topics(kafka_bootstrap)
    run = uuid.uuid4().hex[:8]
    key = f"spill-{run}"
    spill = tmp_path / "events.jsonl"
    whole = [impression(run, i) for i in range(4)]

    def line(ev: dict) -> bytes:
        return orjson.dumps([topics.IMPRESSIONS.name, key, orjson.dumps(ev).decode()]) + b"\n"

    inflight = spill.with_name(spill.name + ".inflight")
    inflight.write_bytes(line(whole[0]) + line(whole[1])[:25])  # torn by a crash
    spill.write_bytes(line(whole[2]) + b'["not", "a record"]\n' + b'[1, "k", "v"]\n' + line(whole[3])[:40])
    producer = EventProducer(kafka_bootstrap, spill, request_timeout_ms=2000, retry_s=0.2)
    producer._write(spill, line(impression(run, 4)), append=True)  # appended after the torn tail: a line of its own
    await producer.start()
    try:
        producer.emit("impressions", key, impression(run, 5))
        await until(lambda: producer.sent == 4 and not producer.on_disk(), 30, "the readable events to be sent")
        assert producer.running and producer.set_aside == 4
    finally:
        await producer.stop()
    assert await ids_on_topic(kafka_bootstrap, key, f"imp:{run}-") == [f"imp:{run}-{i}" for i in (0, 2, 4, 5)]
    assert len(producer.corrupt_path.read_bytes().splitlines()) == 4


def test_a_spill_disk_that_refuses_keeps_the_events_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk during an outage: the events taken from memory for the spill file were gone, uncounted, and the
    partial write left a torn line.  Now they go back in front of memory (bounded), and the file keeps no half line."""
    spill = tmp_path / "events.jsonl"
    producer = EventProducer("127.0.0.1:1", spill, max_buffer=10, retry_s=60.0)
    producer._spill([("t", b"k", b"kept")])
    real_write = os.write

    def full(fd: int, data) -> int:
        real_write(fd, bytes(data)[:7])  # a few bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    for i in range(11):
        producer.emit("impressions", "k", {"id": f"e{i}"})
    assert len(producer.buffer) == 11 and producer.spilled == 1 and producer.failed == 0  # none lost
    for i in range(11, 60):  # the bid path does not try the disk again on every event...
        producer.emit("impressions", "k", {"id": f"e{i}"})
    assert len(producer.buffer) == 40 and producer.failed == 20  # ...and past 4x its bound drops the oldest, counted
    assert [orjson.loads(v)["id"] for _, _, v in producer.buffer][:2] == ["e20", "e21"]
    monkeypatch.setattr(os, "write", real_write)
    assert spill.read_bytes().count(b"\n") == 1 and producer._decode(spill.read_bytes()) == [("t", b"k", b"kept")]


def test_a_spill_dir_is_one_bidders(tmp_path: Path) -> None:
    held = lock_spill_dir(tmp_path / "spill")
    with pytest.raises(SpillDirInUse, match=f"in use by another streambid serve \\(pid {os.getpid()}\\)"):
        lock_spill_dir(tmp_path / "spill")
    held.close()  # the holder stopped
    lock_spill_dir(tmp_path / "spill").close()


def test_serve_refuses_a_spill_dir_another_bidder_holds(kafka_bootstrap: str, tmp_path: Path, capsys) -> None:
    """Two bidders on one spill directory replayed each other's files: 46 of 98 billing events went out twice."""
    from bidder.cli import main

    held = lock_spill_dir(tmp_path / "spill")
    try:
        code = main(["serve", "--broker", kafka_bootstrap, "--port", str(free_port()), "--spill-dir",
                     str(tmp_path / "spill"), "--campaigns", str(ROOT / "deploy" / "campaigns.example.json")])
    finally:
        held.close()
    err = capsys.readouterr().err
    assert code == 2 and "is in use by another streambid serve" in err and "give each bidder its own --spill-dir" in err
