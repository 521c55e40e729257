"""Wiring for `streambid serve`: build one bidder worker process, and run N of them on one port.

Each worker process holds its own engine and snapshots; with a broker it
follows the campaign, model and pacing topics and sends its events through a
non-blocking producer.  The parent only supervises.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bidder.campaigns import Campaign, ConfigError, parse_campaign
from bidder.clock import from_env as clock_from_env
from bidder.engine import BidEngine, EngineConfig
from bidder.metrics import BidderStats, PoolRenderer, make_pool_dir, remove_pool_dir, start_publishing
from bidder.pacing import PacingState
from bidder.server import BidApp, start_server
from models.snapshot import ModelSnapshot

log = logging.getLogger("streambid.serve")


@dataclass(slots=True)
class ServeOptions:
    host: str
    port: int
    workers: int
    campaigns: list[Campaign]
    broker: str | None
    secret: bytes
    salt: bytes
    network_ms: int
    notice_base: str
    model_path: Path | None
    spill_dir: Path
    restricted_policy: str
    explore_below: int = 200
    shed_ms: float = 60.0  # cap on how long an unparsed request may wait before a 204 (overload); see bidder.server
    metrics_dir: Path | None = None  # set by serve() for N > 1 workers: where they add up their counters


def _pacing_state(doc: dict) -> PacingState:
    return PacingState(campaign=doc["campaign"], day=doc["day"], lam=float(doc["lam"]), spent_today=int(doc["spent_today"]),
                       budget_today=int(doc["budget_today"]), exhausted=bool(doc["exhausted"]),
                       impressions_today=int(doc.get("impressions_today", 0)), clicks_today=int(doc.get("clicks_today", 0)),
                       value_today=int(doc.get("value_today", 0)))


async def run_worker(opts: ServeOptions, index: int) -> None:
    """One serving process: engine, HTTP server, and (with a broker) the Kafka adapters."""
    model = ModelSnapshot.load(opts.model_path) if opts.model_path and opts.model_path.exists() else ModelSnapshot.empty()
    sink_holder: list = [lambda kind, key, ev: None]
    cfg = EngineConfig(secret=opts.secret, salt=opts.salt, network_ms=opts.network_ms, notice_base=opts.notice_base,
                       restricted_policy=opts.restricted_policy, explore_below=opts.explore_below)
    # simulated time when STREAMBID_TIME_WARP is set (`streambid loadtest day`), else the real clock
    stats = BidderStats()
    engine = BidEngine(cfg, opts.campaigns, model, sink=stats.tap(lambda k, key, ev: sink_holder[0](k, key, ev)),
                       clock=clock_from_env())
    app = BidApp(engine, stats, worker=str(index), shed_after_ms=opts.shed_ms)
    start_publishing(stats, engine, opts.metrics_dir, opts.workers)
    producer = follower = None
    if opts.broker:
        from streams import topics
        from streams.kafka_io import EventProducer, StateFollower, ensure_topics

        await ensure_topics(opts.broker)
        producer = EventProducer(opts.broker, opts.spill_dir / f"spill-{index}.jsonl")
        sink_holder[0] = producer.emit
        await producer.start()

        def on_config(key: bytes, value: bytes) -> None:
            doc = orjson.loads(value)
            try:
                engine.upsert_campaign(parse_campaign(doc.get("campaign", doc)))
            except ConfigError:
                pass  # rejected by the worker too; the previous valid config stays in force

        def on_model(key: bytes, value: bytes) -> None:
            engine.set_model(ModelSnapshot.from_bytes(value))

        def on_pacing(key: bytes, value: bytes) -> None:
            engine.set_pacing(_pacing_state(orjson.loads(value)))

        follower = StateFollower(opts.broker, {topics.CAMPAIGNS.name: on_config, topics.MODEL.name: on_model,
                                               topics.PACING.name: on_pacing})
        await follower.start()
    server = await start_server(app, opts.host, opts.port)

    def status_extra() -> dict:
        if producer is None:
            return {}
        return {"events": {"sent": producer.sent, "buffered": len(producer.buffer), "spilled": producer.spilled,
                           "replayed": producer.replayed},
                "state_messages": follower.applied if follower else 0}

    app.status_extra = status_extra
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if follower:
        await follower.stop()
    if producer:
        await producer.stop()


def _child(opts: ServeOptions, index: int) -> None:
    import uvloop

    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s worker-{index} %(levelname)s %(message)s")
    uvloop.run(run_worker(opts, index))


def serve(opts: ServeOptions) -> int:
    """Run `opts.workers` processes sharing the port (SO_REUSEPORT); restart any that die."""
    clock_from_env()  # a malformed STREAMBID_TIME_WARP stops here, once, instead of in every restarted worker
    if opts.workers <= 1:
        _child(opts, 0)
        return 0
    opts.metrics_dir = make_pool_dir()  # every worker's /metrics answers for all of them
    metrics = PoolRenderer(opts.metrics_dir, opts.workers)
    ctx = mp.get_context("fork")
    procs = {i: ctx.Process(target=_child, args=(opts, i), daemon=True) for i in range(opts.workers)}
    for p in procs.values():
        p.start()
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stopping:
        time.sleep(0.2)
        metrics.tick(p.pid for p in procs.values() if p.pid)
        for i, p in list(procs.items()):
            if not p.is_alive() and not stopping:
                print(f"streambid: worker {i} (pid {p.pid}) exited with {p.exitcode}; restarting", file=sys.stderr)
                metrics.retire(p.pid)
                procs[i] = ctx.Process(target=_child, args=(opts, i), daemon=True)
                procs[i].start()
    for p in procs.values():
        if p.pid:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs.values():
        p.join(10)
    remove_pool_dir(opts.metrics_dir)
    return 0
