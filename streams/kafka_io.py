"""Kafka adapters for the bidder: a non-blocking event producer and a state follower.

The bid path only appends to a bounded in-memory buffer; a background task
sends batches.  When Kafka cannot take them, batches spill to a local file
and are replayed, in order, once the broker answers again, so an outage costs
disk, not events.  The follower reads campaign, model and pacing topics from
the beginning and applies each message to the engine's snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streams import topics

log = logging.getLogger("streambid.kafka")


def topic_for(kind: str) -> str:
    return f"{topics.PREFIX}.{kind}"


async def ensure_topics(bootstrap: str, specs: tuple[topics.TopicSpec, ...] = topics.ALL) -> None:
    """Create the project's topics with their partitions and configs (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t.name, t.partitions, 1, topic_configs=t.config) for t in specs if t.name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


Record = tuple[str, bytes, bytes]  # (topic, key, value)


async def read_event_ids(bootstrap: str, topic: str, partition: int, start: int, end: int) -> list[str]:
    """The `id` of every event at offsets [start, end) of one partition (what a restarted consumer already saw)."""
    tp = TopicPartition(topic, partition)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    ids: list[str] = []
    try:
        c.assign([tp])
        c.seek(tp, max(start, 0))
        while await c.position(tp) < end:
            for msg in (await c.getmany(tp, timeout_ms=1000, max_records=10_000)).get(tp, []):
                if msg.offset >= end:
                    return ids
                try:
                    ids.append(orjson.loads(msg.value)["id"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # dead-lettered when it was first consumed
        return ids
    finally:
        await c.stop()


class EventProducer:
    """Bounded, batched, spill-to-disk event producer; `emit` never blocks or raises.

    Order is kept: what waits on disk was emitted before what waits in memory, and the spill file is always
    replayed before the buffer is sent.  A record is written to the spill file only if Kafka did not
    acknowledge it, so an outage that starts between two batches costs no duplicates; a batch cut off in
    flight may have reached the broker anyway, and is then delivered twice (consumers count event ids once).
    """

    def __init__(self, bootstrap: str, spill_path: Path, max_buffer: int = 100_000, linger_s: float = 0.05,
                 batch: int = 5000, request_timeout_ms: int = 5000, retry_s: float = 1.0) -> None:
        self.bootstrap = bootstrap
        self.spill_path = spill_path
        self.max_buffer = max_buffer
        self.linger_s = linger_s
        self.batch = batch
        self.request_timeout_ms = request_timeout_ms
        self.retry_s = retry_s
        self.buffer: deque[Record] = deque()
        self.sent = 0
        self.spilled = 0
        self.replayed = 0
        self.in_flight = 0
        self.connected = False
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None

    @property
    def replay_path(self) -> Path:
        return self.spill_path.with_name(self.spill_path.name + ".replay")

    def emit(self, kind: str, key: str, event: dict[str, Any]) -> None:
        """The engine's sink: O(1), no I/O unless the buffer overflows (then the oldest half goes to disk)."""
        self.buffer.append((topic_for(kind), key.encode(), orjson.dumps(event)))
        if len(self.buffer) > self.max_buffer:
            self._spill(self._take(len(self.buffer) // 2), sync=False)

    def _take(self, n: int) -> list[Record]:
        return [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]

    @staticmethod
    def _encode(batch: list[Record]) -> bytes:
        return b"".join(orjson.dumps([t, k.decode(), v.decode()]) + b"\n" for t, k, v in batch)

    @staticmethod
    def _decode(data: bytes) -> list[Record]:
        return [(t, k.encode(), v.encode()) for t, k, v in map(orjson.loads, filter(None, data.splitlines()))]

    def _spill(self, batch: list[Record], sync: bool = True) -> None:
        """Append to the spill file (fsync'd off the bid path: an outage must not lose what it spilled)."""
        if not batch:
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("ab") as f:
            f.write(self._encode(batch))
            f.flush()
            if sync:
                os.fsync(f.fileno())
        self.spilled += len(batch)

    def _unspill(self, batch: list[Record]) -> None:
        """Put records back at the *front* of the spill file: they precede anything spilled since."""
        if not batch:
            return
        later = self.spill_path.read_bytes() if self.spill_path.exists() else b""
        tmp = self.spill_path.with_name(self.spill_path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(self._encode(batch) + later)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.spill_path)

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _connect(self) -> AIOKafkaProducer:
        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all", enable_idempotence=True,
                             request_timeout_ms=self.request_timeout_ms, max_batch_size=256 * 1024)
        try:
            await p.start()
        except BaseException:
            await self._stop_quietly(p)
            raise
        return p

    async def _send(self, batch: list[Record]) -> list[Record]:
        """Send `batch`; returns the records Kafka did not acknowledge, in their original order."""
        assert self._producer is not None
        futures: list[asyncio.Future] = []
        self.in_flight = len(batch)
        try:
            for t, k, v in batch:
                try:
                    futures.append(await self._producer.send(t, v, key=k))
                except KafkaError:
                    break  # cannot even enqueue: this one and the rest were not sent
            results = await asyncio.gather(*futures, return_exceptions=True)
        except BaseException:  # cancelled mid-send: keep everything not known to be acknowledged, in front
            acked = [f.done() and not f.cancelled() and f.exception() is None for f in futures]
            self._unspill([r for r, ok in zip(batch, acked, strict=False) if not ok] + batch[len(futures):])
            raise
        finally:
            self.in_flight = 0
        failed = [r for r, res in zip(batch, results, strict=False) if isinstance(res, BaseException)]
        failed += batch[len(futures):]
        self.sent += len(batch) - len(failed)
        return failed

    async def _replay_spill(self) -> None:
        """Send what an outage left on disk, oldest first, then remove it."""
        replay = self.replay_path
        if not replay.exists():
            if not self.spill_path.exists():
                return
            self.spill_path.replace(replay)  # new spills start a new file while this one is sent
        batch = self._decode(replay.read_bytes())
        try:
            failed = await self._send(batch)
        except BaseException:
            replay.unlink(missing_ok=True)  # what was not acknowledged is back at the front of the spill file
            raise
        self._unspill(failed)
        replay.unlink()
        self.replayed += len(batch) - len(failed)
        if failed:
            raise KafkaConnectionError(f"{len(failed)} spilled events not acknowledged")

    async def _run(self) -> None:
        while True:
            try:
                if self._producer is None:
                    self._producer = await self._connect()
                    self.connected = True
                await self._replay_spill()
                batch = self._take(self.batch)
                if not batch:
                    await asyncio.sleep(self.linger_s)
                    continue
                failed = await self._send(batch)
                if failed:
                    self._unspill(failed)  # older than anything the bid path spilled meanwhile
                    self.spilled += len(failed)
                    raise KafkaConnectionError(f"{len(failed)} events not acknowledged")
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as e:
                log.warning("kafka unavailable (%s); spilling events to %s", type(e).__name__, self.spill_path)
                self.connected = False
                self._spill(self._take(len(self.buffer)))
                await self._drop_producer()
                await asyncio.sleep(self.retry_s)

    @staticmethod
    async def _stop_quietly(producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), 5)
        except Exception:  # a producer that lost its broker may fail to stop cleanly; it is discarded anyway
            pass

    async def _drop_producer(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await self._stop_quietly(producer)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until nothing waits in memory (best effort, e.g. before shutdown); True if that happened."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (self.buffer or self.in_flight) and loop.time() < end:
            await asyncio.sleep(0.02)
        return not (self.buffer or self.in_flight)

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._spill(self._take(len(self.buffer)))
        await self._drop_producer()


class StateFollower:
    """Reads the state topics from the beginning and hands each message to a callback."""

    def __init__(self, bootstrap: str, handlers: dict[str, Callable[[bytes, bytes], None]]) -> None:
        self.bootstrap = bootstrap
        self.handlers = handlers
        self.applied = 0
        self.errors = 0
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            try:
                # no consumer group: every partition of every state topic, always from the beginning
                c = self._consumer = AIOKafkaConsumer(*self.handlers, bootstrap_servers=self.bootstrap,
                                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                                      fetch_max_wait_ms=100)
                await c.start()
                async for msg in c:
                    try:
                        self.handlers[msg.topic](msg.key or b"", msg.value or b"")
                        self.applied += 1
                    except Exception as e:  # a bad state message must not stop the follower
                        self.errors += 1
                        log.warning("ignored message on %s: %s", msg.topic, e)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as e:
                log.warning("state follower lost kafka (%s); bidding on last state, retrying", type(e).__name__)
                await self._close()
                await asyncio.sleep(1.0)

    async def _close(self) -> None:
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            except Exception:  # best effort on a broken connection
                pass
            self._consumer = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._close()
