"""Faust tables seen by the domain code as plain mappings: partition-aware, and cheap on the hot path.

The ledger and attribution take any MutableMapping; on Kafka they get a
`TableView` over a changelog-backed Faust table (memory store).  What it adds
to the table itself:

* every key remembers its partition (the partition of the event that wrote
  it), so the timer that closes attribution windows can write outside stream
  iteration and still land in the right changelog partition: the one the
  next owner of that campaign's partition recovers;
* iteration walks only the keys of partitions this worker owns right now, so
  a timer never writes to, and a report never counts, a partition that a
  rebalance moved to another worker;
* a write only marks the key dirty; `Outbox.flush` (awaited by the agent
  after each batch, before its events are acknowledged) hands one changelog
  record per dirty key, serialised once with orjson, straight to the Kafka
  producer.  Faust commits an offset only after flushing that producer, so a
  committed event's table writes are always on the changelog.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import orjson

_GONE = object()


class TableView(MutableMapping[str, Any]):
    """A Faust table (memory store, JSON values) as a MutableMapping with explicit changelog partitions."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.topic = table.changelog_topic.get_topic_name()
        store = table.data
        self._data: dict[str, Any] = store.data
        # The memory store's own key -> partition map: filled by changelog recovery, and by us on every write,
        # so that Faust's end-of-recovery cleanup also drops keys we wrote for partitions we no longer own.
        self._partition: dict[str, int] = store._key_partition
        self.dirty: dict[str, int] = {}  # key -> partition, written since the last flush
        self.owned: frozenset[int] = frozenset()
        self.partition: int | None = None  # partition of the event being processed; None in timers

    # -- reads: the in-memory store ------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        owned, part = self.owned, self._partition
        return sum(1 for k in list(self._data) if part.get(k) in owned)

    def __iter__(self) -> Iterator[str]:
        owned, part = self.owned, self._partition
        return iter([k for k in list(self._data) if part.get(k) in owned])

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        """(key, value) of the owned partitions, as a list: safe to write back while walking it."""
        owned, part = self.owned, self._partition
        return [(k, v) for k, v in list(self._data.items()) if part.get(k) in owned]

    def partition_of(self, key: str) -> int | None:
        return self._partition.get(key)

    def held_values(self) -> list[Any]:
        """Values of every partition this process holds, owned or not: table recovery ends before the owned set
        is known."""
        return list(self._data.values())

    # -- writes: store now, changelog at the next flush ------------------------------

    def _partition_for_write(self, key: str) -> int:
        if self.partition is not None:
            return self.partition
        try:
            return self._partition[key]
        except KeyError:
            raise RuntimeError(f"table {self.table.name}: no partition known for {key!r} outside an event") from None

    def __setitem__(self, key: str, value: Any) -> None:
        partition = self._partition_for_write(key)
        self._partition[key] = partition
        self._data[key] = value
        self._mark(key, partition)

    def __delitem__(self, key: str) -> None:
        partition = self._partition_for_write(key)
        del self._data[key]
        self._mark(key, partition)

    def _mark(self, key: str, partition: int) -> None:
        """Queue the key's record at the place of its *last* write: a flush sends records in that order (and may
        split them over several batches), and the ledger's replay relies on a partition's totals reaching the
        changelog in the order they were written (`SpendLedger._absorbed_near`)."""
        self.dirty.pop(key, None)
        self.dirty[key] = partition


class Outbox:
    """Changelog records of the dirty table keys, and other records, on their way to the app's Kafka producer."""

    def __init__(self, app: Any, views: tuple[TableView, ...]) -> None:
        self.app = app
        self.views = views
        self.records: list[tuple[str, bytes | None, bytes, int]] = []  # (topic, key, value, partition)
        self._producer: Any = None

    def at(self, partition: int | None) -> None:
        """Writes that follow belong to `partition` (the current event's), or to each key's own when None."""
        for view in self.views:
            view.partition = partition

    def send(self, topic: str, key: bytes | None, value: bytes, partition: int) -> None:
        self.records.append((topic, key, value, partition))

    async def flush(self) -> None:
        """Hand everything to the producer (not waiting for acknowledgements: Faust's commit waits for those).

        Records go out as one batch per topic partition, which costs the producer far less than a send each.
        """
        if not (self.records or any(view.dirty for view in self.views)):
            return
        producer = self._producer
        if producer is None:
            # the aiokafka producer under Faust's: its flush() is what Faust awaits before committing offsets
            producer = self._producer = self.app.producer._ensure_producer()
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        for view in self.views:
            if not view.dirty:
                continue
            dirty, view.dirty = view.dirty, {}
            data, topic, dumps = view._data, view.topic, orjson.dumps
            for key, partition in dirty.items():
                value = data.get(key, _GONE)
                if value is _GONE:
                    view._partition.pop(key, None)
                    groups.setdefault((topic, partition), []).append((dumps(key), None))
                else:
                    groups.setdefault((topic, partition), []).append((dumps(key), dumps(value)))
        records, self.records = self.records, []
        for record_topic, record_key, record_value, record_partition in records:
            groups.setdefault((record_topic, record_partition), []).append((record_key, record_value))
        for (topic, partition), items in groups.items():
            batch = producer.create_batch()
            for raw_key, raw_value in items:
                if batch.append(key=raw_key, value=raw_value, timestamp=None) is None:  # full: send it, start another
                    await producer.send_batch(batch, topic, partition=partition)
                    batch = producer.create_batch()
                    batch.append(key=raw_key, value=raw_value, timestamp=None)
            await producer.send_batch(batch, topic, partition=partition)
