"""Wiring for `streambid serve`: build one bidder worker process, and run N of them on one port.

Each worker process holds its own engine and snapshots; with a broker it
follows the campaign, model and pacing topics and sends its events through a
non-blocking producer.  The parent only supervises.

With a broker and `--lease-slice` above 0, each worker process is a bidder of
its own (its own bidder id and engine) that spends only from budget leases
granted by the streams side (streams/leases.py): a `LeaseClient` asks for
top-ups through the same non-blocking producer and applies the grants read
from the grants topic.  Notices for a sibling's bid are relayed to it
(`NoticeRelay`), since that is where the bid's reservation lives.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bidder.campaigns import Campaign, ConfigError, parse_campaign
from bidder.clock import from_env as clock_from_env
from bidder.engine import BidEngine, EngineConfig
from bidder.lease_client import LeaseClient
from bidder.metrics import BidderStats, PoolRenderer, make_pool_dir, remove_pool_dir, start_publishing
from bidder.notice_relay import NoticeRelay, notice_bidder
from bidder.notices import NoticeError, verify_notice
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
    lease_frac: float = 0.0  # with a broker: bid on budget leases, each slice this share of the remaining daily budget
    relay_dir: Path | None = None  # set by serve() for N > 1 workers on leases: their notice mailboxes
    lease_poll_s: float = 0.1  # how often each worker checks whether a lease needs topping up

    @property
    def leases(self) -> bool:
        return bool(self.broker) and self.lease_frac > 0


def _pacing_state(doc: dict) -> PacingState:
    return PacingState(campaign=doc["campaign"], day=doc["day"], lam=float(doc["lam"]), spent_today=int(doc["spent_today"]),
                       budget_today=int(doc["budget_today"]), exhausted=bool(doc["exhausted"]),
                       impressions_today=int(doc.get("impressions_today", 0)), clicks_today=int(doc.get("clicks_today", 0)),
                       value_today=int(doc.get("value_today", 0)), cvr=float(doc.get("cvr", 0.0)))


async def run_worker(opts: ServeOptions, index: int) -> None:
    """One serving process: engine, HTTP server, and (with a broker) the Kafka adapters."""
    model = ModelSnapshot.load(opts.model_path) if opts.model_path and opts.model_path.exists() else ModelSnapshot.empty()
    sink_holder: list = [lambda kind, key, ev: None]
    # lease_slice is only a switch on the bidder side: the streams side sizes the slices (streams.leases)
    cfg = EngineConfig(secret=opts.secret, salt=opts.salt, network_ms=opts.network_ms, notice_base=opts.notice_base,
                       restricted_policy=opts.restricted_policy, explore_below=opts.explore_below,
                       lease_slice=1 if opts.leases else 0, shared_frequency=bool(opts.broker))
    # simulated time when STREAMBID_TIME_WARP is set (`streambid loadtest day`), else the real clock
    stats = BidderStats()
    engine = BidEngine(cfg, opts.campaigns, model, sink=stats.tap(lambda k, key, ev: sink_holder[0](k, key, ev)),
                       clock=clock_from_env())
    app = BidApp(engine, stats, worker=str(index), shed_after_ms=opts.shed_ms)
    start_publishing(stats, engine, opts.metrics_dir, opts.workers)
    producer = follower = grants = relay = billed = None
    tasks: list[asyncio.Task] = []
    leases = LeaseClient(engine, opts.lease_frac) if opts.leases else None
    if opts.broker:
        from streams import topics
        from streams.kafka_io import EventProducer, StateFollower, ensure_topics

        await ensure_topics(opts.broker)
        producer = EventProducer(opts.broker, opts.spill_dir / f"spill-{index}.jsonl")
        sink_holder[0] = producer.emit
        await producer.start()

        loop = asyncio.get_running_loop()
        preparing = [False]

        def prepare() -> None:
            preparing[0] = False
            engine.prepare()

        def on_config(key: bytes, value: bytes) -> None:
            doc = orjson.loads(value)
            try:
                engine.upsert_campaign(parse_campaign(doc.get("campaign", doc)))
            except ConfigError:
                return  # rejected by the worker too; the previous valid config stays in force
            if not preparing[0]:  # once after a run of changes (the follower applies a fetch without yielding)
                preparing[0] = True
                loop.call_soon(prepare)

        def on_model(key: bytes, value: bytes) -> None:
            engine.set_model(ModelSnapshot.from_bytes(value))

        def on_pacing(key: bytes, value: bytes) -> None:
            engine.set_pacing(_pacing_state(orjson.loads(value)))

        follower = StateFollower(opts.broker, {topics.CAMPAIGNS.name: on_config, topics.MODEL.name: on_model,
                                               topics.PACING.name: on_pacing})
        await follower.start()

        def on_billed(key: bytes, value: bytes) -> None:
            if engine.may_cap(key.decode(errors="replace")):  # keyed by campaign: uncapped ones are never parsed
                engine.count_billed(orjson.loads(value))

        # frequency caps count every bidder's billed impressions sent since the UTC day began (the longest cap is a
        # day; records are stamped when sent): a restarted bidder takes back its counts, and those billed meanwhile
        billed = StateFollower(opts.broker, {topics.BILLING.name: on_billed},
                               since=lambda: int(time.time() // 86_400) * 86_400_000)
        await billed.start()
        if leases is not None:
            grants, relay = await _start_leases(opts, engine, app, leases, producer, tasks)
    server = await start_server(app, opts.host, opts.port)

    def status_extra() -> dict:
        if producer is None:
            return {}
        doc = {"events": {"sent": producer.sent, "buffered": len(producer.buffer), "spilled": producer.spilled,
                          "replayed": producer.replayed},
               "state_messages": follower.applied if follower else 0}
        if leases is not None:
            doc["leases"] = leases.status()
            doc["lease_messages"] = {"requests": leases.requests, "grants": leases.grants, "ignored": leases.ignored}
            if relay is not None:
                doc["notice_relay"] = {"forwarded": relay.forwarded, "received": relay.received,
                                       "unreachable": relay.unreachable}
        return doc

    app.status_extra = status_extra
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    for task in tasks:
        task.cancel()
    if relay:
        relay.close()
    for f in (follower, grants, billed):
        if f:
            await f.stop()
    if producer:
        await producer.stop()


async def _start_leases(opts: ServeOptions, engine: BidEngine, app: BidApp, leases: LeaseClient, producer: Any,
                        tasks: list[asyncio.Task]) -> tuple[Any, NoticeRelay | None]:
    """Grants in (from the end of the grants topic: this process's bidder id is new), requests out, notices relayed."""
    from streams import topics
    from streams.kafka_io import StateFollower

    kind = topics.LEASE_REQUESTS.name.rsplit(".", 1)[-1]
    mine = engine.cfg.bidder_id.encode()

    def on_grant(key: bytes, value: bytes) -> None:
        if key == mine:  # every bidder reads every grant; parse only our own
            leases.apply(orjson.loads(value), engine.clock())

    grants = StateFollower(opts.broker, {topics.LEASE_GRANTS.name: on_grant}, from_end=True)
    await grants.start()

    async def ask() -> None:
        while True:
            try:
                # cut off from Kafka, a request would only wait on disk to be replayed stale: not sent at all
                for doc in leases.due(time.time(), engine.clock()) if producer.connected else ():
                    producer.emit(kind, doc["campaign"], doc)
            except Exception:  # a campaign swapped mid-walk: next round
                log.exception("lease requests")
            await asyncio.sleep(opts.lease_poll_s)

    tasks.append(asyncio.ensure_future(ask()))
    relay = None
    if opts.relay_dir is not None:
        relay = NoticeRelay(opts.relay_dir, engine.cfg.bidder_id, _settle(engine))
        relay.start(asyncio.get_running_loop())
        app.notice = _relaying(app, relay)  # type: ignore[method-assign]
    return grants, relay


def _relaying(app: BidApp, relay: NoticeRelay) -> Any:
    """BidApp.notice, except that the lease effect of a sibling's bid goes to that sibling (bidder.notice_relay)."""
    handle_here = BidApp.notice.__get__(app)
    engine = app.engine

    def notice(kind: str, query: str) -> bytes:
        owner = notice_bidder(query)
        if kind == "win" or not owner or owner == relay.bidder_id:
            return handle_here(kind, query)
        try:
            n = verify_notice(engine.cfg.secret, kind, query, engine.clock())
        except NoticeError:  # refused here just the same, touching no lease
            return handle_here(kind, query)
        lease = engine.leases.pop(n.campaign, None)  # answered, counted and sent on as always, but not charged here
        try:
            answer = handle_here(kind, query)
        finally:
            if lease is not None:
                engine.leases[n.campaign] = lease
        if answer.startswith(b"HTTP/1.1 200"):
            # the engine's charge for a bill (bidder.engine `_bill`): the clearing price, else our bid
            relay.forward(owner, kind, n.campaign, n.bid_id, (n.price_cpm or n.bid_cpm) // 1000)
        return answer

    return notice


def _settle(engine: BidEngine) -> Any:
    """Apply a sibling's notice for one of this engine's bids to its lease."""

    def settle(kind: str, campaign: str, bid_id: str, cost: int) -> None:
        lease = engine.leases.get(campaign)
        if lease is None:
            return
        if kind == "bill":
            lease.settle(bid_id, cost)
        elif kind == "loss":
            lease.release(bid_id)

    return settle


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
    if opts.leases:
        opts.relay_dir = Path(tempfile.mkdtemp(prefix="streambid-relay-"))
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
    if opts.relay_dir is not None:
        shutil.rmtree(opts.relay_dir, ignore_errors=True)
    return 0
