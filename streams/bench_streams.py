"""`streambid bench streams`: how many delivery events per second one worker turns into spend, labels and a model.

The bench loads synthetic auctions onto topics of its own (a run prefix, so nothing else on the broker is read):
a bid; win, billing and impression for the auctions won; a click now and then; a few re-sent duplicates.  Then it
starts one `streambid worker` and times it from its first event until every event is processed and every example
it produced is learned.  Event times lie an hour back, like a backlog after an outage: click windows close as the
worker's reading passes them in event time (the last ones once it has caught up), so the River learner works inside
the measured time.

Figures come from the worker itself (/status: offset reached per partition, examples learned, its wall and CPU
clocks) and from the broker (end offsets): lag is the number of delivery events not yet processed.  The worker's
/status changes once a second, so a short run may be over before a sample shows any lag; its peak is known all the
same, since every event is loaded before the worker starts: at its first event the whole backlog lags.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from streams import topics
from streams.events import make_event, topic_kind

DELIVERY = (topics.BIDS, topics.WINS, topics.BILLING, topics.IMPRESSIONS, topics.CLICKS)
WIN_RATE, CLICK_RATE, DUPLICATE_RATE = 0.6, 0.03, 0.01
FEATURE_SLOTS, SLOT_VALUES = 16, 400  # hashed request features: each slot Zipf-distributed over its values


@dataclass
class Workload:
    """What was put on the topics, and what a correct worker must make of it."""

    campaigns: list[str]
    events: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    examples: int = 0  # served bids: one example each (a positive if clicked, else a negative)
    clicks: int = 0
    spend: int = 0  # micros, each billing event counted once


@dataclass
class Result:
    events: int
    seconds: float  # first event to every event processed and every example learned
    events_per_s: float
    caught_up_s: float  # first event to consumer lag 0 (the learner may still be working)
    delivery_events_per_s: float
    examples: int
    worker_cpu_s: float
    events_per_cpu_s: float
    produce_events_per_s: float
    max_lag: int  # the whole backlog: a fresh group at the start of fresh topics, loaded before the worker starts
    final_lag: int
    spend_ok: bool
    samples: list[tuple[float, int, int, int]]  # (seconds since the first event, events processed, lag, learned)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "samples"} | {
            "samples": [list(s) for s in self.samples]}


def _zipf_table(n: int, s: float = 1.1) -> list[float]:
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    total, acc, cum = sum(weights), 0.0, []
    for w in weights:
        acc += w
        cum.append(acc / total)
    return cum


def utc_day(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).date().isoformat()


def auctions(n_events: int, run: str, n_campaigns: int, seed: int,
             ts_ms: int) -> Generator[tuple[str, str, dict], None, Workload]:
    """Yield (kind, key, event) for synthetic auctions until `n_events` events; returns what a worker must make of it."""
    rng = random.Random(seed)
    cum = _zipf_table(SLOT_VALUES)
    campaigns = [f"bench-{run}-{i}" for i in range(n_campaigns)]
    work = Workload(campaigns=campaigns)
    recent: deque[tuple[str, str, dict]] = deque(maxlen=1000)  # what a duplicate may repeat

    def out(kind: str, key: str, ev: dict) -> tuple[str, str, dict]:
        work.events += 1
        work.by_kind[kind] = work.by_kind.get(kind, 0) + 1
        recent.append((kind, key, ev))
        return kind, key, ev

    i = 0
    while work.events < n_events:
        i += 1
        camp = campaigns[rng.randrange(n_campaigns)]
        bid = f"{run}-{i}"
        ts = ts_ms + i
        feats = [s * SLOT_VALUES + bisect.bisect(cum, rng.random()) for s in range(FEATURE_SLOTS)]
        yield out("bids", camp, make_event("bids", f"bid:{bid}", ts, bid_id=bid, campaign=camp, creative="cr1",
                                           price=2_000_000, pctr=0.01, features=feats))
        if rng.random() < WIN_RATE:
            cost = rng.randrange(100, 2000)
            yield out("wins", camp, make_event("wins", f"win:{bid}", ts + 50, bid_id=bid, campaign=camp, price=cost * 1000))
            yield out("billing", camp, make_event("billing", f"bill:{bid}", ts + 60, bid_id=bid, campaign=camp, cost=cost,
                                                  day=utc_day(ts + 60)))  # campaigns unknown to the worker: UTC days
            yield out("impressions", camp, make_event("impressions", f"imp:{bid}", ts + 70, bid_id=bid, campaign=camp,
                                                      creative="cr1"))
            work.spend += cost
            work.examples += 1
            if rng.random() < CLICK_RATE:
                work.clicks += 1
                yield out("clicks", camp, make_event("clicks", f"click:{bid}", ts + 5000, bid_id=bid, campaign=camp,
                                                     creative="cr1"))
        if recent and rng.random() < DUPLICATE_RATE:  # a re-sent event: same id, counted once
            kind, key, ev = recent[rng.randrange(len(recent))]
            if kind != "bids":
                work.duplicates += 1
                yield out(kind, key, ev)
    return work


def run_topics(prefix: str) -> tuple[topics.TopicSpec, ...]:
    """The project's topics under a prefix of the run's own, so nothing else on the broker is read or counted."""
    return tuple(replace(t, name=f"{prefix}.{topic_kind(t.name)}") for t in topics.ALL)


async def produce(bootstrap: str, prefix: str, n_events: int, run: str, n_campaigns: int, seed: int,
                  progress: bool) -> tuple[Workload, float, dict[tuple[str, int], int]]:
    """Put the workload on the topics; returns it, the producer's events/s and the end offsets."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1024 * 1024, acks=1,
                         compression_type=None)
    await p.start()
    gen = auctions(n_events, run, n_campaigns, seed, int(time.time() * 1000) - 3_600_000)
    t0 = time.perf_counter()
    pending: list[asyncio.Future] = []
    work: Workload | None = None
    n = 0
    try:
        while True:
            try:
                kind, key, ev = next(gen)
            except StopIteration as stop:
                work = stop.value
                break
            pending.append(await p.send(f"{prefix}.{kind}", orjson.dumps(ev), key=key.encode()))
            n += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                if progress:
                    rate = n / (time.perf_counter() - t0)
                    print(f"\rproducing: {n:,}/{n_events:,} events  {rate:,.0f}/s   ", end="", file=sys.stderr, flush=True)
        await asyncio.gather(*pending)
    finally:
        await p.stop()
    rate = n / (time.perf_counter() - t0)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    try:
        tps = [TopicPartition(f"{prefix}.{topic_kind(t.name)}", i) for t in DELIVERY for i in range(t.partitions)]
        ends = {(tp.topic, tp.partition): off for tp, off in (await c.end_offsets(tps)).items()}
    finally:
        await c.stop()
    assert work is not None
    return work, rate, ends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            return orjson.loads(r.read())
    except OSError:
        return None


def run(bootstrap: str, n_events: int, n_campaigns: int = 50, seed: int = 1, progress: bool = True,
        log_dir: Path = Path("out"), worker_args: tuple[str, ...] = (), timeout_s: float = 1800.0) -> Result:
    from bidder.arguments import out_dir_problem
    from streams.kafka_io import ensure_topics

    # refused before any topic is created: the caller reports a RuntimeError in one line
    if n_campaigns < 1:
        raise RuntimeError(f"--campaigns {n_campaigns}: the auctions need at least 1 campaign")
    if problem := out_dir_problem(log_dir):
        raise RuntimeError(problem)
    run_id = uuid.uuid4().hex[:8]
    app_id, prefix = f"bench-streams-{run_id}", f"bench{run_id}"
    asyncio.run(ensure_topics(bootstrap, run_topics(prefix)))
    work, produce_rate, ends = asyncio.run(produce(bootstrap, prefix, n_events, run_id, n_campaigns, seed, progress))
    total = sum(ends.values())
    if progress:
        print(f"\rproduced {work.events:,} events ({total:,} on the topics) at {produce_rate:,.0f}/s; starting the worker",
              file=sys.stderr, flush=True)
    port = free_port()
    log_path = log_dir / "bench-streams-worker.log"
    cmd = [sys.executable, "-m", "bidder.cli", "worker", "--broker", bootstrap, "--app-id", app_id, "--metrics-port",
           str(port), "--click-window", "60", *worker_args]
    env = {**os.environ, "STREAMBID_TOPIC_PREFIX": prefix}
    with log_path.open("wb") as log:
        worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        return _measure(worker, port, work, ends, total, produce_rate, progress, timeout_s, log_path)
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        asyncio.run(drop_topics(bootstrap, (prefix + ".", app_id + "-")))


async def drop_topics(bootstrap: str, starts: tuple[str, ...]) -> None:
    """Delete the topics this run created (its own prefix and its worker's changelogs): nothing else matches."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(starts)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def processed(ends: dict[tuple[str, int], int], positions: dict[str, int]) -> int:
    """Delivery events the worker has processed, from the offsets its /status shows.

    A partition without a position there (not read yet, or not yet owned) counts as not processed at all: the
    worker's group is new, so it starts each partition at the log start, offset 0 on the run's fresh topics.
    """
    return sum(min(positions.get(f"{t}:{p}", -1) + 1, end) for (t, p), end in ends.items())


def _measure(worker: subprocess.Popen, port: int, work: Workload, ends: dict[tuple[str, int], int], total: int,
             produce_rate: float, progress: bool, timeout_s: float, log_path: Path) -> Result:
    deadline = time.time() + timeout_s
    # at the worker's first event nothing is processed: /status, refreshed once a second, may never show that
    samples: list[tuple[float, int, int, int]] = [(0.0, 0, total, 0)]
    max_lag = total
    caught_up: float | None = None
    prefix = f"bench-{work.campaigns[0].split('-')[1]}-"
    while True:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}; see {log_path}")
        if time.time() > deadline:
            raise RuntimeError(f"the worker did not finish within {timeout_s:.0f}s; see {log_path}")
        doc = status(port)
        time.sleep(0.25)
        if not doc:
            continue
        done = processed(ends, doc.get("positions", {}))
        lag = total - done
        first = doc.get("first_event") or {}
        if not first:
            continue
        learned = sum(n for k, n in doc.get("learner", {}).get("by_campaign", {}).items() if k.startswith(prefix))
        now = doc["at"] - first["at"]
        samples.append((round(now, 2), done, lag, learned))
        max_lag = max(max_lag, lag)
        if progress:
            rate = done / now if now > 0 else 0.0
            print(f"\rworker: {done:,}/{total:,} events  {rate:,.0f}/s  lag {lag:,}  learned {learned:,}/{work.examples:,}   ",
                  end="", file=sys.stderr, flush=True)
        if lag == 0 and caught_up is None:
            caught_up = now
        if lag == 0 and learned >= work.examples and caught_up is not None:
            # from the worker's own clocks: its first event to the status snapshot that shows everything done
            seconds, cpu = now, doc["cpu_s"] - first["cpu_s"]
            spend = sum(t["spend"] for k, t in doc.get("totals", {}).items() if k.startswith(prefix))
            if progress:
                print(file=sys.stderr)
            return Result(events=total, seconds=round(seconds, 2), events_per_s=round(total / seconds),
                          caught_up_s=round(caught_up, 2), delivery_events_per_s=round(total / max(caught_up, 1e-3)),
                          examples=learned, worker_cpu_s=round(cpu, 2), events_per_cpu_s=round(total / cpu) if cpu else 0,
                          produce_events_per_s=round(produce_rate), max_lag=max_lag, final_lag=lag,
                          spend_ok=spend == work.spend, samples=samples)


def format_table(r: Result) -> str:
    rows = [
        ("delivery events processed", f"{r.events:,}"),
        ("examples learned (River)", f"{r.examples:,}"),
        ("wall time, first event to all learned", f"{r.seconds:,.1f} s"),
        ("end-to-end throughput", f"{r.events_per_s:,} events/s"),
        ("first event to lag 0 (delivery alone)", f"{r.caught_up_s:,.1f} s, {r.delivery_events_per_s:,} events/s"),
        ("worker CPU time", f"{r.worker_cpu_s:,.1f} s"),
        ("events per worker CPU second", f"{r.events_per_cpu_s:,}"),
        ("consumer lag: peak / when caught up", f"{r.max_lag:,} / {r.final_lag:,}"),
        ("spend equals the offline sum", "yes" if r.spend_ok else "NO"),
        ("producer (loading the topics)", f"{r.produce_events_per_s:,} events/s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plot(r: Result, path: Path) -> Path:
    """Events processed and consumer lag over the run (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    t = [s[0] for s in r.samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [s[1] for s in r.samples], label="events processed")
    ax.plot(t, [s[2] for s in r.samples], label="consumer lag (events)")
    ax.plot(t, [s[3] for s in r.samples], label="examples learned")
    ax.set_xlabel("seconds since the worker's first event")
    ax.set_ylabel("events")
    ax.set_title(f"one worker: {r.events_per_s:,} events/s end to end, {r.events_per_cpu_s:,} per CPU second")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
