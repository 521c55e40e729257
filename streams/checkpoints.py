"""Learner checkpoints on Kafka: the exact training state, in parts, on a compacted topic.

Why: a worker that restarts, or takes the examples partition over from another one, would otherwise start from an
empty learner, and its first snapshot would replace the warm model every bidder is scoring with.  A checkpoint pairs
the learner's state with the examples offset it covers; the next owner loads it and learns the examples after that
offset from the topic itself, so it publishes the model that would have been published had nothing happened.

A state can be larger than one Kafka message may be, so it goes in parts (keys `ctr/0`, `ctr/1`, ...), each framed
with the checkpoint's id and its number of parts.  A reader takes the newest checkpoint whose parts are all there:
a writer that died halfway leaves the previous checkpoint in force.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

MAGIC = b"SBC1"
_HEAD = struct.Struct(">4sQII")  # magic, checkpoint id, part, parts
PART_BYTES = 512 * 1024  # under every default size limit on the way: producer request, broker message, consumer fetch


def frame(checkpoint_id: int, data: bytes, part_bytes: int = PART_BYTES) -> list[tuple[bytes, bytes]]:
    """(key, value) records that carry `data` as checkpoint `checkpoint_id`."""
    chunks = [data[i:i + part_bytes] for i in range(0, len(data), part_bytes)] or [b""]
    return [(f"ctr/{i}".encode(), _HEAD.pack(MAGIC, checkpoint_id, i, len(chunks)) + chunk)
            for i, chunk in enumerate(chunks)]


def assemble(values: Iterable[bytes | None]) -> tuple[int, bytes] | None:
    """(id, data) of the newest complete checkpoint among record values in log order, or None.

    Values that are not checkpoint parts are ignored: a reader must never fail on what is on a topic.
    """
    parts: dict[int, dict[int, bytes]] = {}
    counts: dict[int, int] = {}
    for value in values:
        if value is None or len(value) < _HEAD.size:
            continue
        magic, cid, part, n = _HEAD.unpack_from(value)
        if magic != MAGIC or not 0 <= part < n or counts.setdefault(cid, n) != n:
            continue
        parts.setdefault(cid, {})[part] = value[_HEAD.size:]
    complete = [cid for cid, got in parts.items() if len(got) == counts[cid]]
    if not complete:
        return None
    cid = max(complete)
    return cid, b"".join(parts[cid][i] for i in range(counts[cid]))


async def read_latest(bootstrap: str, topic: str) -> tuple[int, bytes] | None:
    """The newest complete checkpoint on `topic` (partition 0).

    Compaction only reaches closed segments, so the log holds many checkpoints; the newest is read from the tail:
    the last record says how many parts its checkpoint has, and a window of twice that (the newest and, if its
    writer died halfway, the one before) usually holds a complete one.  Only when it does not is the whole log read.
    """
    tp = TopicPartition(topic, 0)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=2 * PART_BYTES)
    await c.start()
    try:
        c.assign([tp])
        first = (await c.beginning_offsets([tp]))[tp]
        end = (await c.end_offsets([tp]))[tp]
        if end <= first:
            return None
        last = await _read(c, tp, end - 1, end)
        parts = _HEAD.unpack_from(last[0])[3] if last and last[0] and len(last[0]) >= _HEAD.size else 1
        start = max(first, end - 2 * parts - 1)
        found = assemble(await _read(c, tp, start, end))
        if found is None and start > first:
            found = assemble(await _read(c, tp, first, end))
        return found
    finally:
        await c.stop()


async def _read(c: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int) -> list[bytes]:
    """Values at offsets [start, end) (fewer where compaction removed records)."""
    c.seek(tp, start)
    values: list[bytes] = []
    while await c.position(tp) < end:
        for msg in (await c.getmany(tp, timeout_ms=1000, max_records=100)).get(tp, []):
            if msg.offset < end:
                values.append(msg.value)
    return values
