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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams import topics

log = logging.getLogger("streambid.kafka")


def topic_for(kind: str) -> str:
    return f"streambid.{kind}"


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


class EventProducer:
    """Bounded, batched, spill-to-disk event producer; `emit` never blocks or raises."""

    def __init__(self, bootstrap: str, spill_path: Path, max_buffer: int = 100_000, linger_s: float = 0.05) -> None:
        self.bootstrap = bootstrap
        self.spill_path = spill_path
        self.max_buffer = max_buffer
        self.linger_s = linger_s
        self.buffer: deque[tuple[str, bytes, bytes]] = deque()
        self.sent = 0
        self.spilled = 0
        self.replayed = 0
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def emit(self, kind: str, key: str, event: dict[str, Any]) -> None:
        """The engine's sink: O(1), no I/O."""
        self.buffer.append((topic_for(kind), key.encode(), orjson.dumps(event)))
        if len(self.buffer) > self.max_buffer:
            self._spill(self._take(len(self.buffer) // 2))

    def _take(self, n: int) -> list[tuple[str, bytes, bytes]]:
        return [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]

    def _spill(self, batch: list[tuple[str, bytes, bytes]]) -> None:
        if not batch:
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("ab") as f:
            for topic, key, value in batch:
                f.write(orjson.dumps([topic, key.decode(), value.decode()]) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.spilled += len(batch)

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _connect(self) -> AIOKafkaProducer:
        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all", enable_idempotence=True,
                             request_timeout_ms=5000, max_batch_size=256 * 1024)
        await p.start()
        return p

    async def _send(self, batch: list[tuple[str, bytes, bytes]]) -> None:
        assert self._producer is not None
        futures = [await self._producer.send(t, v, key=k) for t, k, v in batch]
        await asyncio.gather(*futures)

    async def _replay_spill(self) -> None:
        """Send what an outage left on disk, then remove the file."""
        if not self.spill_path.exists():
            return
        lines = self.spill_path.read_bytes().splitlines()
        batch = [(t, k.encode(), v.encode()) for t, k, v in map(orjson.loads, filter(None, lines))]
        await self._send(batch)
        self.spill_path.unlink()
        self.replayed += len(batch)

    async def _run(self) -> None:
        while True:
            try:
                if self._producer is None:
                    self._producer = await self._connect()
                await self._replay_spill()
                batch = self._take(5000)
                if batch:
                    try:
                        await self._send(batch)
                    except BaseException:
                        self._spill(batch)
                        raise
                    self.sent += len(batch)
                else:
                    await asyncio.sleep(self.linger_s)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as e:
                log.warning("kafka unavailable (%s); spilling events to %s", type(e).__name__, self.spill_path)
                self._spill(self._take(len(self.buffer)))
                await self._drop_producer()
                await asyncio.sleep(1.0)

    async def _drop_producer(self) -> None:
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), 5)
            except Exception:  # a producer that lost its broker may fail to stop cleanly; it is discarded anyway
                pass
            self._producer = None

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until the buffer is empty (best effort), e.g. before shutdown."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.buffer and loop.time() < end:
            await asyncio.sleep(0.02)

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
