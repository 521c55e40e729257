"""Helpers for the streams integration tests: processes on a topic prefix of their own, and Kafka reads.

Each test runs `streambid worker` / `serve` / `campaign` as real processes under
`STREAMBID_TOPIC_PREFIX=<its own prefix>`, so it reads only what it wrote, even
on a broker other tests share.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams import topics
from streams.events import topic_kind
from streams.kafka_io import ensure_topics
from streams.ledger import FIELDS
from tests.conftest import ROOT, free_port

STREAMBID = [sys.executable, "-m", "bidder.cli"]
LEDGER_KINDS = ("billing", "impressions", "clicks", "conversions", "wins", "losses")
DELIVERY_KINDS = ("bids", "wins", "billing", "losses", "impressions", "clicks", "conversions")


def topic(prefix: str, kind: str) -> str:
    return f"{prefix}.{kind}"


def create_topics(bootstrap: str, prefix: str) -> None:
    asyncio.run(ensure_topics(bootstrap, tuple(replace(t, name=topic(prefix, topic_kind(t.name))) for t in topics.ALL)))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str) -> Any:
    try:
        status, body = http_get(url)
    except OSError:
        return None
    return orjson.loads(body) if status == 200 else None


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            last = check()
        except OSError:
            last = None
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


NOTABLE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|generation|assigned|Revoking|Recovery|ready|[Cc]ommit")


def log_digest(text: str, lines: int = 60, tail: int = 2500) -> str:
    """The lines that tell a worker's story (warnings, rebalances, recovery, commits), then the raw tail."""
    notable = [line[:300] for line in text.splitlines() if NOTABLE.search(line)]
    return "\n".join(notable[-lines:]) + f"\n--- (last {tail} characters) ---\n" + text[-tail:]


class Procs:
    """`streambid` processes of one test, on its topic prefix; logs in tmp, shown when the test ends."""

    def __init__(self, bootstrap: str, prefix: str, tmp: Path) -> None:
        self.bootstrap, self.prefix, self.tmp = bootstrap, prefix, tmp
        self.env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "STREAMBID_TOPIC_PREFIX": prefix,
                    "STREAMBID_SECRET": "test-secret", "PYTHONUNBUFFERED": "1"}
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("ab")
        p = subprocess.Popen(STREAMBID + list(args), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append((name, p))
        return p

    def worker(self, name: str, app_id: str, *extra: str) -> tuple[subprocess.Popen, int]:
        """A worker logging at info level: a failed test then shows its rebalances, recovery and commits."""
        port = free_port()
        level = () if "--loglevel" in extra else ("--loglevel", "info")
        return self.start(name, "worker", "--app-id", app_id, "--metrics-port", str(port), *level, *extra), port

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(STREAMBID + list(args), cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def stop_all(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for name, _ in self.procs:
            path = self.tmp / f"{name}.log"
            if path.exists():
                sys.stderr.write(f"--- {name} log ---\n{log_digest(path.read_text(errors='replace'))}\n")


@contextmanager
def own_procs(bootstrap: str, tmp: Path, letter: str) -> Iterator[Procs]:
    """A test's processes on a topic prefix of its own (`letter` + 8 hex digits), stopped when it ends."""
    prefix = f"{letter}{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, prefix)
    p = Procs(bootstrap, prefix, tmp)
    try:
        yield p
    finally:
        p.stop_all()


def worker_status(port: int) -> dict | None:
    return get_json(f"http://127.0.0.1:{port}/status")


def live_worker_status(port: int) -> dict:
    """The worker's /status, which it must answer."""
    st = worker_status(port)
    assert st is not None, f"the worker on port {port} does not answer /status"
    return st


async def produce(bootstrap: str, records: Sequence[tuple[str, str, bytes | None]]) -> None:
    """Send (topic, key, value) records in order, waiting for every acknowledgement; a None value is a tombstone."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await p.start()
    try:
        futures = [await p.send(t, v, key=k.encode()) for t, k, v in records]
        await asyncio.gather(*futures)
    finally:
        await p.stop()


async def read_all(bootstrap: str, names: list[str], partitions: int = 4) -> list[tuple[str, int, int, bytes]]:
    """Every record now on the topics: (topic, partition, offset, value)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        tps = [TopicPartition(n, p) for n in names for p in range(partitions)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        out: list[tuple[str, int, int, bytes]] = []
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            for tp, msgs in (await c.getmany(*left, timeout_ms=500)).items():
                out.extend((tp.topic, tp.partition, m.offset, m.value) for m in msgs if m.offset < ends[tp])
                if msgs and msgs[-1].offset >= ends[tp] - 1:
                    left.discard(tp)
        return out
    finally:
        await c.stop()


async def end_offsets(bootstrap: str, names: list[str], partitions: int = 4) -> dict[TopicPartition, int]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    try:
        return await c.end_offsets([TopicPartition(n, p) for n in names for p in range(partitions)])
    finally:
        await c.stop()


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(group)).items()}
    finally:
        await admin.close()


def lagging(bootstrap: str, group: str, names: list[str], partitions: int = 4) -> dict[str, tuple[int, int]]:
    """The partitions of `names` whose end `group` has not committed yet: "topic/partition" -> (committed, end)."""
    ends = asyncio.run(end_offsets(bootstrap, names, partitions))
    done = asyncio.run(committed(bootstrap, group))
    return {f"{tp.topic}/{tp.partition}": (done.get(tp, -1), end) for tp, end in ends.items()
            if end > 0 and done.get(tp, -1) < end}


def caught_up(bootstrap: str, group: str, names: list[str], partitions: int = 4) -> bool:
    """True once `group` has committed the end of every partition of `names` (so processed all of it)."""
    return not lagging(bootstrap, group, names, partitions)


def local_day(tz: str, ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, ZoneInfo(tz)).date().isoformat()


def offline_totals(records: list[tuple[str, int, int, bytes]], zones: dict[str, str],
                   click_value: dict[str, int]) -> dict[str, dict[str, int]]:
    """What the ledger must hold, computed straight from the topics: each event id once, per campaign per local day."""
    out: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for name, _, _, raw in sorted(records, key=lambda r: (r[0], r[1], r[2])):
        kind = topic_kind(name)
        ev = orjson.loads(raw)
        if kind not in LEDGER_KINDS or ev["campaign"] not in zones or ev["id"] in seen:
            continue
        seen.add(ev["id"])
        day = ev.get("day") if kind == "billing" else None  # only a bill's day is read; the rest count on their ts
        key = f"{ev['campaign']}|{day or local_day(zones[ev['campaign']], ev['ts'])}"
        t = out.setdefault(key, dict.fromkeys(FIELDS, 0))
        if kind == "billing":
            t["spend"] += ev["cost"]
            t["billed"] += 1
        elif kind == "clicks":
            t["clicks"] += 1
            t["value"] += click_value[ev["campaign"]]
        elif kind == "conversions":
            t["conversions"] += 1
            t["value"] += ev["value"]
        else:
            t[{"impressions": "impressions", "wins": "wins", "losses": "losses"}[kind]] += 1
    return out


def summed_totals(statuses: list[dict], campaigns: set[str]) -> dict[str, dict[str, int]]:
    """The totals the workers report for `campaigns`, summed over workers (each reports only its partitions)."""
    out: dict[str, dict[str, int]] = {}
    for st in statuses:
        for key, t in st["totals"].items():
            if key.split("|", 1)[0] in campaigns:
                acc = out.setdefault(key, dict.fromkeys(FIELDS, 0))
                for f in FIELDS:
                    acc[f] += t[f]
    return out


async def find_record(bootstrap: str, topic: str, match, timeout: float = 20.0) -> dict:
    """The first record on `topic` (from the beginning) for which match(record) is true."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()  # no group: every partition, from the beginning
    try:
        end = time.time() + timeout
        while time.time() < end:
            batch = await c.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    rec = orjson.loads(m.value)
                    if match(rec):
                        return rec
        raise AssertionError(f"no matching record on {topic} within {timeout}s")
    finally:
        await c.stop()
