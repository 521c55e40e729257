"""Wiring for `streambid serve`: build one bidder worker process, and run N of them on one port.

Each worker process holds its own engine and snapshots; with a broker it
follows the campaign, model and pacing topics and sends its events through a
non-blocking producer.  The parent only supervises.

With a broker and `--lease-slice` above 0, each worker process is a bidder of
its own (its own bidder id and engine) that spends only from budget leases
granted by the streams side (streams/leases.py): a `LeaseClient` asks for
top-ups through the same non-blocking producer and applies the grants read
from the grants topic.

With N > 1 workers, leases or not, a notice for a sibling's bid is relayed to
it whole (`NoticeRelay`): that is where the bid's replay memory (and
reservation) lives, so a notice is counted and charged once per host.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from bidder.campaigns import Campaign, ConfigError, config_campaign
from bidder.clock import from_env as clock_from_env
from bidder.engine import VALID_NOTICE, BidEngine, EngineConfig
from bidder.frequency import counted_since
from bidder.lease_client import LeaseClient
from bidder.metrics import BidderStats, PoolRenderer, make_pool_dir, remove_pool_dir, start_publishing
from bidder.notice_relay import NoticeRelay
from bidder.notices import KINDS, Notice
from bidder.pacing import MAX_LAMBDA, PacingState, read_lambda
from bidder.server import DRAIN_TAIL_S, BidApp, drain, response, start_server
from bidder.slices import run_sliced
from bidder.targeting import CampaignIndex
from models.snapshot import ModelSnapshot

log = logging.getLogger("streambid.serve")

# tables built between bids that a swap meanwhile made stale (a model during a campaign change, or an index during a
# model swap) are gathered again between bids this many times; then the engine builds them at once when installing
CATCH_UP_BUILDS = 3
DRAIN_S = 5.0  # on SIGTERM, open connections are answered this long at most (`serve --drain-s`)
# pauses, resumes and budgets are swapped into the index in place, at once, each at a cost growing with the number of
# campaigns (a pause copies the live set): up to this many in a batch; more (a bulk edit) go in a rebuild between bids
IN_PLACE_MAX = 32


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
    tcf_vendor: int = 0  # our TCF Global Vendor List id (0: consent strings are checked for the purposes only)
    shed_ms: float = 60.0  # cap on how long an unparsed request may wait before a 204 (overload); see bidder.server
    metrics_dir: Path | None = None  # set by serve() for N > 1 workers: where they add up their counters
    lease_frac: float = 0.0  # with a broker: bid on budget leases, each slice this share of the remaining daily budget
    relay_dir: Path | None = None  # set by serve() for N > 1 workers: their notice mailboxes
    lease_poll_s: float = 0.1  # how often each worker checks whether a lease needs topping up
    warmup_s: float = 60.0  # with a broker: longest a worker waits to read the state topics before it bids anyway
    drain_s: float = DRAIN_S  # on SIGTERM: how long open connections are still answered (bidder.server.drain)
    exchanges: tuple[str, ...] = ()  # the only exchange labels metrics keep (`--exchanges`); (): the first 64 seen

    def __post_init__(self) -> None:
        self.notice_base = self.notice_base.rstrip("/")  # "https://x/" would sign URLs for "https://x//notice/…"

    @property
    def leases(self) -> bool:
        return bool(self.broker) and self.lease_frac > 0


class CampaignChanges:
    """Campaign messages from the config topic, applied to the engine together after each batch the follower reads.

    A change other than a pause, resume or budget (or more than IN_PLACE_MAX of those) rebuilds the whole index,
    so a batch of thousands of changes (a start, a bulk edit) must cost one rebuild, not one per message:
    `on_config` only collects, and the follower calls `apply` once the batch is handed over.  While the follower
    catches up (`hold`) they wait for `release`, so a start is one rebuild however many batches it reads.  A
    message that sets no valid campaign is skipped: the worker dead-letters it, and the previous valid config
    stays in force.

    Serving, a rebuild builds the new index between bids (`bidder.slices`) while the worker bids with the old
    one, and installs it when done: with thousands of campaigns the build takes a hundred milliseconds and more,
    longer than a request may wait.  Changes arriving meanwhile wait for it, then go in the next.  A model
    installed meanwhile is gathered into the new index's tables between bids too (`CATCH_UP_BUILDS`).
    """

    def __init__(self, engine: BidEngine) -> None:
        self.engine = engine
        self.pending: dict[str, Campaign] = {}  # by id: a later message for the same campaign replaces an earlier one
        self.held = False
        self.building: asyncio.Task | None = None  # the index being built between bids

    def on_config(self, key: bytes, value: bytes | None) -> None:
        try:
            camp = config_campaign(value)
        except ConfigError:
            return
        if self.building is None and self.engine.index.campaigns.get(camp.id) == camp:
            # the version in force (the topic read again after a lost connection): nothing to apply, not even in place
            self.pending.pop(camp.id, None)
            return
        self.pending[camp.id] = camp

    def apply(self, at_once: bool = False) -> None:
        """The changes collected so far, in one rebuild (and the engine prepared), unless held or one is under way.

        `at_once`, or with no event loop running: built here and now rather than between bids."""
        if not self.pending or self.held or self.building is not None:
            return
        changes = list(self.pending.values())
        self.pending.clear()
        if len(changes) <= IN_PLACE_MAX:
            staged = self.engine.stage_campaigns(changes)
        else:  # in place, 10,000 pauses held the loop a second: the rebuild stage_campaigns stages for other changes
            camps = dict(self.engine.index.campaigns)
            camps.update((c.id, c) for c in changes)
            staged = list(camps.values())
        if staged is None:  # a pause, resume or budget: applied in place
            self.engine.prepare()
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            at_once = True
        if at_once:
            self._install(CampaignIndex(staged))
        else:
            self.building = asyncio.ensure_future(self._build(staged))

    async def _build(self, campaigns: list[Campaign]) -> None:
        try:
            staged = await run_sliced(CampaignIndex.steps(campaigns))
            await run_sliced(staged.build_steps())
            engine = self.engine
            live = await run_sliced(engine.live_steps(staged))
            tables = await run_sliced(engine.tables_steps(index=staged))
            for _ in range(CATCH_UP_BUILDS):
                if tables.model is engine.model:
                    break
                # a model came while they were built: the same constants with its weights, again between bids
                tables = await run_sliced(engine.tables_steps(index=staged, previous=tables))
            retired = engine.install_index(staged, tables, live)
            engine.prepare()  # the tables, if models kept coming; the live set, if it went stale meanwhile
            await asyncio.sleep(0)
            del retired  # freeing thousands of campaigns' sets takes milliseconds: in a turn of its own
        except Exception:  # a bug must not stop the worker following its config: the old campaigns stay in force
            log.exception("building the campaign index failed; bidding on the previous campaigns")
        finally:
            self.building = None
        self.apply()  # what arrived while it was built

    def _install(self, staged: CampaignIndex) -> None:
        self.engine.install_index(staged)
        self.engine.prepare()

    def hold(self) -> None:
        self.held = True

    def release(self, at_once: bool = True) -> None:
        """Caught up: apply what was held.  `at_once` while warming (the worker answers `warming` until this
        returns, so it never bids on an index still being built); serving (caught up again after a lost
        connection), built between bids like any change."""
        self.held = False
        self.apply(at_once=at_once)


class StateUpdates:
    """Model snapshots and pacing states from their topics, as the engine takes them.

    While the follower catches up (`hold`), only the last ones are kept and `release` applies them: a restarted
    bidder reads every snapshot the topic still holds (one a second, for up to an hour), and parsing each (about
    7 ms) and building its scoring tables (tens of milliseconds) would only be replaced by the next.  The last
    `MODEL_FALLBACKS` snapshots are kept unparsed and tried newest first, so an unreadable last one falls back to
    the one before.  After that each is applied as it comes; an unreadable one raises (the follower counts and
    logs it) and the previous one stays.

    Serving, a model is decoded and its scoring tables built between bids (`bidder.slices`: tens of
    milliseconds with thousands of creatives, once a second or so) while the worker bids with the previous
    model, which it keeps if the new one cannot be read or its tables built.  Of the models arriving meanwhile,
    the last one is taken next.  A campaign change installed meanwhile is caught up with between bids too.

    Caught up again after a lost connection, the follower has read every state topic from its start once more:
    what is already in force (the model, most pacing states) is not applied again, and a newer model is built
    between bids.
    """

    MODEL_FALLBACKS = 3

    def __init__(self, engine: BidEngine) -> None:
        self.engine = engine
        self.held = False
        self.models: deque[bytes] = deque(maxlen=self.MODEL_FALLBACKS)
        self.pacing: dict[str, PacingState] = {}
        self.next_model: bytes | None = None
        self.in_force: bytes | None = None  # the snapshot of the model in force, as read from the topic
        self.refused = 0  # models not taken while serving: unreadable, or tables that cannot be built
        self.building: asyncio.Task | None = None  # the tables of a model being built between bids

    def on_model(self, key: bytes, value: bytes) -> None:
        if self.held:
            self.models.append(value)
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # unreadable: raises, the follower counts and logs it
            self.engine.set_model(ModelSnapshot.from_bytes(value))
            self.in_force = value
            return
        self.next_model = value
        if self.building is None:
            self.building = asyncio.ensure_future(self._build_models())

    async def _build_models(self) -> None:
        while self.next_model is not None:
            raw, self.next_model = self.next_model, None
            try:
                model = await run_sliced(ModelSnapshot.from_bytes_steps(raw))
                tables = await run_sliced(self.engine.tables_steps(model=model))
                for _ in range(CATCH_UP_BUILDS):
                    if tables.index is self.engine.index:
                        break
                    # a campaign change was installed meanwhile: this model's weights over its constants
                    tables = await run_sliced(self.engine.tables_steps(model=model))
                self.engine.install_model(tables)
                self.in_force = raw
            except Exception as e:  # unreadable, or tables that cannot be built: the model in force stays
                self.refused += 1
                log.warning("model snapshot refused: %s", e)
        self.building = None

    def on_pacing(self, key: bytes, value: bytes) -> None:
        state = _pacing_state(orjson.loads(value))
        if self.held:
            self.pacing[state.campaign] = state
        else:
            self.engine.set_pacing(state)

    def hold(self) -> None:
        self.held = True

    def release(self, at_once: bool = True) -> None:
        """Caught up: apply the last of what was held; the model at once while warming (nothing is bid until this
        returns), else between bids."""
        self.held = False
        if self.building is not None:  # a model read before the hold: the held ones are newer
            self.building.cancel()
            self.building, self.next_model = None, None
        pacing, self.pacing = self.pacing, {}
        for state in pacing.values():
            if self.engine.pacing.get(state.campaign) != state:  # the one in force, read again: nothing to apply
                self.engine.set_pacing(state)
        models = list(self.models)
        self.models.clear()
        if not models or models[-1] == self.in_force:
            return
        if not at_once:
            self.on_model(b"", models[-1])
            return
        for raw in reversed(models):
            try:
                self.engine.set_model(ModelSnapshot.from_bytes(raw))
                self.in_force = raw
                return
            except Exception as e:  # unreadable, or tables that cannot be built: the one before, if any
                log.warning("model snapshot refused: %s", e)
class Warmup:
    """Whether a worker bids yet.  With a broker, not before its followers have read the state topics up to where
    they ended when it started: on half-read state it would bid for paused campaigns, on an old model, and past
    frequency caps whose billed impressions it has not counted yet.  Until then bid requests get a fast 204
    ("warming") and /readyz a 503.  After `limit_s` it bids on what it has, and says so in the log.
    """

    def __init__(self, app: BidApp, parts: tuple[str, ...], on_expire: Callable[[], None] = lambda: None,
                 name: str = "worker") -> None:
        self.app = app
        self.name = name
        self.on_expire = on_expire  # what was held back for the end of the reading is applied then
        self.waiting = dict.fromkeys(parts)
        self.started = time.monotonic()
        app.warming = tuple(self.waiting)

    def done(self, part: str) -> None:
        if part in self.waiting:
            del self.waiting[part]
            self.app.warming = tuple(self.waiting)
            if not self.waiting:
                _say(f"streambid: {self.name} read its state topics in {time.monotonic() - self.started:.1f} s: bidding")

    def expire(self) -> None:
        if self.waiting:
            log.warning("%s still reading %s after %.0f s: bidding on the state read so far (frequency caps may "
                        "undercount until it is read)", self.name, ", ".join(self.waiting), time.monotonic() - self.started)
            self.waiting.clear()
            self.app.warming = ()
            self.on_expire()


def _pacing_state(doc: dict) -> PacingState:
    """A pacing message as the engine takes it; ValueError (the message is skipped) for one it must not apply."""
    lam, exhausted = read_lambda(doc["lam"]), doc["exhausted"]
    if lam is None:
        raise ValueError(f"lam {doc['lam']!r} is not a multiplier in [0, {MAX_LAMBDA}]")
    if type(exhausted) is not bool:  # bool("false") is True: a string would stop the campaign
        raise ValueError(f"exhausted {exhausted!r} is not true or false")
    if type(doc["day"]) is not str or type(doc["campaign"]) is not str:
        raise ValueError("campaign and day must be strings")
    share, ts = doc.get("plan_share"), doc.get("ts", 0)  # an older worker sends no plan_share
    if share is not None and (type(share) not in (int, float) or not 0.0 <= share <= 1.0):  # NaN fails both
        raise ValueError(f"plan_share {share!r} is not a share of the day's budget in [0, 1]")
    if type(ts) is not int or ts < 0:  # the pacing age counts from it
        raise ValueError(f"ts {ts!r} is not a time in milliseconds")
    return PacingState(campaign=doc["campaign"], day=doc["day"], lam=float(lam), spent_today=int(doc["spent_today"]),
                       budget_today=int(doc["budget_today"]), exhausted=exhausted,
                       impressions_today=int(doc.get("impressions_today", 0)), clicks_today=int(doc.get("clicks_today", 0)),
                       value_today=int(doc.get("value_today", 0)), cvr=float(doc.get("cvr", 0.0)),
                       plan_share=None if share is None else float(share), published_ms=ts)


async def run_worker(opts: ServeOptions, index: int) -> None:
    """One serving process: engine, HTTP server, and (with a broker) the Kafka adapters."""
    model = ModelSnapshot.load(opts.model_path) if opts.model_path else ModelSnapshot.empty()  # checked by cmd_serve
    sink_holder: list = [lambda kind, key, ev: None]
    # lease_slice is only a switch on the bidder side: the streams side sizes the slices (streams.leases)
    cfg = EngineConfig(secret=opts.secret, salt=opts.salt, network_ms=opts.network_ms, notice_base=opts.notice_base,
                       restricted_policy=opts.restricted_policy, explore_below=opts.explore_below, tcf_vendor=opts.tcf_vendor,
                       lease_slice=1 if opts.leases else 0, shared_frequency=bool(opts.broker))
    # simulated time when STREAMBID_TIME_WARP is set (`streambid loadtest day`), else the real clock
    stats = BidderStats(opts.exchanges)
    engine = BidEngine(cfg, opts.campaigns, model, sink=stats.tap(lambda k, key, ev: sink_holder[0](k, key, ev)),
                       clock=clock_from_env())
    app = BidApp(engine, stats, worker=str(index), shed_after_ms=opts.shed_ms)
    start_publishing(stats, engine, opts.metrics_dir, opts.workers)
    producer = follower = grants = relay = billed = updates = None
    tasks: list[asyncio.Task] = []
    if opts.relay_dir is not None:  # N > 1 workers: each one's notices are counted by the worker whose bid it is
        relay = NoticeRelay(opts.relay_dir, engine.cfg.bidder_id, app.notice,  # a sibling's handover: as if it landed here
                            orphan=_orphan(app))
        relay.start(asyncio.get_running_loop())
        app.notice = _relaying(app, relay)  # type: ignore[method-assign]
    leases = LeaseClient(engine, opts.lease_frac) if opts.leases else None
    if opts.broker:
        from streams import topics
        from streams.kafka_io import EventProducer, StateFollower

        await _ensure_topics_if_reachable(opts.broker)
        # its own spill file, and those of worker indexes a restart with fewer workers left behind
        producer = EventProducer.for_worker(opts.broker, opts.spill_dir, index, opts.workers)
        sink_holder[0] = producer.emit
        await producer.start()

        changes, updates = CampaignChanges(engine), StateUpdates(engine)

        def behind() -> None:
            changes.hold()
            updates.hold()

        def release(at_once: bool = True) -> None:
            changes.release(at_once)
            updates.release(at_once)

        def caught_up() -> None:
            release(at_once=bool(app.warming))  # caught up again after a lost connection: built between bids
            warmup.done("state")

        warmup = Warmup(app, ("state", "billing"), on_expire=release, name=f"worker {index}")
        asyncio.get_running_loop().call_later(opts.warmup_s, warmup.expire)

        follower = StateFollower(opts.broker, {topics.CAMPAIGNS.name: changes.on_config, topics.MODEL.name: updates.on_model,
                                               topics.PACING.name: updates.on_pacing},
                                 on_behind=behind, on_caught_up=caught_up, after_batch=changes.apply)
        await follower.start()

        def on_billed(key: bytes, value: bytes) -> None:
            if engine.may_cap(key.decode(errors="replace")):  # keyed by campaign: uncapped ones are never parsed
                engine.count_billed(orjson.loads(value))

        # frequency caps count every bidder's billed impressions sent since the current day began in every time zone
        # (the longest cap is a campaign's day; records are stamped when sent): a restarted bidder takes back its
        # counts, and those billed meanwhile
        billed = StateFollower(opts.broker, {topics.BILLING.name: on_billed},
                               since=lambda: int(counted_since(time.time()) * 1000),
                               on_caught_up=lambda: warmup.done("billing"))
        await billed.start()
        if leases is not None:
            grants = await _start_leases(opts, engine, leases, producer, tasks)
    server = await start_server(app, opts.host, opts.port)

    def status_extra() -> dict:
        doc: dict[str, Any] = {}
        if relay is not None:
            doc["notice_relay"] = {"forwarded": relay.forwarded, "received": relay.received,
                                   "unreachable": relay.unreachable, "waited": relay.waited}
        if producer is None:
            return doc
        doc["events"] = {"sent": producer.sent, "buffered": len(producer.buffer), "spilled": producer.spilled,
                         "replayed": producer.replayed, "failed": producer.failed, "set_aside": producer.set_aside,
                         "kafka_connected": producer.connected, "sender_running": producer.running}
        doc["state_messages"] = follower.applied if follower else 0
        doc["models_refused"] = updates.refused if updates else 0  # unreadable, or tables that could not be built
        doc["warming"] = list(app.warming)
        doc["behind"] = {"state": follower.behind if follower else None, "billing": billed.behind if billed else None}
        if leases is not None:
            doc["leases"] = leases.status()
            doc["lease_messages"] = {"requests": leases.requests, "grants": leases.grants, "ignored": leases.ignored}
        return doc

    app.status_extra = status_extra
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    # the first SIGTERM, SIGINT or SIGHUP drains; a later Ctrl-C cuts the grace (a SIGTERM may come twice: from a service
    # manager to the whole group, then from the supervisor)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: hurry.set() if stop.is_set() else stop.set())
    if _hangup_stops():
        loop.add_signal_handler(signal.SIGHUP, stop.set)
    await stop.wait()
    await drain(app, server, opts.drain_s, hurry)  # the producer still runs: notices answered meanwhile reach Kafka
    for task in tasks:
        task.cancel()
    if relay:
        relay.close()
    try:
        await _stop_followers(follower, grants, billed)
    finally:
        if producer:  # whatever happened above: this is where unsent events go to disk
            await producer.stop()


async def _stop_followers(*followers: Any) -> None:
    for f in followers:
        if f is not None:
            await f.stop()


TOPICS_TIMEOUT_S = 10.0  # a worker waits this long at most for the broker to confirm the topics


async def _ensure_topics_if_reachable(broker: str) -> None:
    """Create the topics when the broker answers.  A worker restarted in a broker outage serves on without: the
    supervisor created them at start, and the producer keeps events on disk until the broker is back."""
    from aiokafka.errors import KafkaError

    from streams.kafka_io import ensure_topics

    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # the one warning below says it, not a line per connection attempt
    try:
        await asyncio.wait_for(ensure_topics(broker), TOPICS_TIMEOUT_S)
    except (KafkaError, OSError) as e:  # TimeoutError is an OSError
        log.warning("cannot reach the Kafka broker at %s to check the topics (%s); serving on while the "
                    "state followers and the event producer retry", broker, type(e).__name__)
    finally:
        client_log.setLevel(level)


async def _start_leases(opts: ServeOptions, engine: BidEngine, leases: LeaseClient, producer: Any,
                        tasks: list[asyncio.Task]) -> Any:
    """Grants in (from the end of the grants topic: this process's bidder id is new), requests out."""
    from streams import topics
    from streams.kafka_io import StateFollower

    kind = topics.LEASE_REQUESTS.name.rsplit(".", 1)[-1]
    mine = engine.cfg.bidder_id.encode()

    def on_grant(key: bytes, value: bytes) -> None:
        if key == mine:  # every bidder reads every grant; parse only our own
            leases.apply(orjson.loads(value), engine.clock())

    assert opts.broker is not None, "leases are started only with a broker"
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
    return grants


_OK = response(200, b'{"ok":true}')


def _relaying(app: BidApp, relay: NoticeRelay) -> Any:
    """BidApp.notice, except that a valid notice of a sibling's bid is handed to that sibling (bidder.notice_relay).

    Signature and expiry are checked here: a forged or expired notice is refused (400) and counted here.  A valid
    notice signed for a sibling's bidder id goes to the sibling whole, which counts it in its metrics, refuses it
    if replayed, charges it (lease, frequency) and sends its event; here it is answered 200 (it was valid and is
    counted by its owner) and remembered, so a replay landing here again gets its 400.  One whose sibling is gone
    (restarted under a new id) or cannot be reached is handled here, without touching this worker's lease.
    """
    engine, stats = app.engine, app.stats

    def notice(kind: str, query: str) -> bytes:
        def hand_over(n: Notice) -> bool:
            return relay.forward(n.bidder, kind, query)

        outcome = engine.notice(kind, query, relay=hand_over)
        if outcome == "relayed":
            return _OK  # counted once, by the owner; not in this worker's metrics
        stats.notices[(kind if kind in KINDS else "unknown", outcome)] += 1  # as BidApp.notice
        if outcome in VALID_NOTICE:  # a test auction's notice is valid, only not billable; "won" too
            return _OK
        return response(400, orjson.dumps({"error": outcome}))

    return notice


def _orphan(app: BidApp) -> Callable[[str, str], None]:
    """A notice that waited for a sibling's full mailbox until the sibling went away: handled here after all, as
    one whose sibling was gone when it landed (its replay check was done then; it was answered 200 then)."""
    engine, stats = app.engine, app.stats

    def orphan(kind: str, query: str) -> None:
        outcome = engine.notice(kind, query, remembered=True)
        stats.notices[(kind if kind in KINDS else "unknown", outcome)] += 1

    return orphan


def _child(opts: ServeOptions, index: int, supervisor: int | None = None) -> None:
    """One worker process; forked by `supervisor` (its pid), it stops with it."""
    import uvloop

    if supervisor is not None:
        _default_signals()
        if not _stop_with_parent(supervisor):
            return
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s worker-{index} %(levelname)s %(message)s")
    throttle_client_log()
    try:
        uvloop.run(run_worker(opts, index))
    except KeyboardInterrupt:  # a terminal's Ctrl-C reaches every worker, one still starting too: a quiet exit
        pass


CLIENT_LOG_EVERY_S = 30.0  # the Kafka client's complaints: each kind once per this long


def throttle_client_log() -> None:
    """The Kafka client's complaints through the root handlers once per kind and period.  On the `aiokafka` logger
    itself the filter saw nothing: the client logs on child loggers (aiokafka.consumer.fetcher, ...), whose records
    a parent logger's filters never see, so an outage wrote hundreds of lines a minute."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(OncePer(CLIENT_LOG_EVERY_S, prefix="aiokafka"))


class OncePer(logging.Filter):
    """Lets each kind of message (its logger and format string) through once per `seconds`, and says how many of
    that kind it held back: in a broker outage the Kafka client logs every failed connection, several a second."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic, prefix: str = "") -> None:
        super().__init__()
        self.seconds, self.clock, self.prefix = seconds, clock, prefix
        self.last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):  # not the Kafka client's: let through as it is
            return True
        key, now = (record.name, str(record.msg)), self.clock()
        shown, held = self.last.get(key, (-math.inf, 0))
        if now - shown < self.seconds:
            self.last[key] = (shown, held + 1)
            return False
        if len(self.last) > 1000:  # kinds are format strings, few; a bound all the same
            self.last.clear()
        self.last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {now - shown:.0f}s)"
        return True


def _default_signals() -> None:
    """A restarted worker is forked from the supervisor after it set its own handlers: until the worker's loop sets
    its graceful ones, SIGTERM must stop it and Ctrl-C interrupt it, as in a worker of the first start."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _hangup_stops():
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _hangup_stops() -> bool:
    """Whether SIGHUP (the terminal closing) stops serve as SIGTERM does, draining and sending the events still held:
    its default would end the process on the spot.  Not where it is ignored (nohup): that is kept."""
    return signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _stop_with_parent(supervisor: int) -> bool:
    """Have the kernel send SIGTERM (the worker's graceful stop) when the supervisor dies, so a supervisor killed
    with SIGKILL leaves no worker holding the port; False if the supervisor died before that took hold."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl to be had: a worker outlives a killed supervisor, as elsewhere
            pass
    return os.getppid() == supervisor


def serve(opts: ServeOptions) -> int:
    """Run `opts.workers` processes sharing the port (SO_REUSEPORT); restart any that die, for as long as it takes."""
    clock_from_env()  # a malformed STREAMBID_TIME_WARP stops here, once, instead of in every restarted worker
    if opts.workers <= 1:
        _child(opts, 0)
        return 0
    try:
        opts.relay_dir = _relay_dir()
    except ValueError as e:
        _say(f"streambid: {e}")
        return 2
    opts.metrics_dir = make_pool_dir()  # every worker's /metrics answers for all of them
    metrics = PoolRenderer(opts.metrics_dir, opts.workers, exchanges=opts.exchanges)
    workers = Workers(_spawner(opts), opts.workers, retire=metrics.retire)

    def _stop(*_: object) -> None:
        workers.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if _hangup_stops():
        signal.signal(signal.SIGHUP, _stop)
    while not workers.stopping:
        time.sleep(0.2)
        metrics.tick(workers.pids())
        workers.step(time.monotonic())
    workers.stop(opts.drain_s + DRAIN_TAIL_S + 5.0)  # each drains (bidder.server.drain), then sends its events
    remove_pool_dir(opts.metrics_dir)
    if opts.relay_dir is not None:
        shutil.rmtree(opts.relay_dir, ignore_errors=True)
    return 0


def _relay_dir() -> Path:
    """A private directory (0700) for the workers' notice mailboxes, Unix sockets named by bidder id.  ValueError
    when its path leaves no room for their names (a socket path holds 107 bytes): every worker would fail at start,
    and be restarted for ever."""
    directory = Path(tempfile.mkdtemp(prefix="streambid-relay-"))
    path = directory / f"{EngineConfig(secret=b'').bidder_id}.sock"  # as long as a worker's
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(str(path))
        except OSError as e:
            shutil.rmtree(directory, ignore_errors=True)
            raise ValueError(f"the workers cannot make their notice sockets in {directory.parent} ({e.strerror or e}): "
                             "set TMPDIR to a shorter directory, such as /tmp, or run one worker") from None
    path.unlink()
    return directory


class Proc(Protocol):
    """What the supervisor uses of a worker process (a multiprocessing.Process)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def exitcode(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def terminate(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


def _spawner(opts: ServeOptions) -> Callable[[int], Proc]:
    """Starts worker `index` as a forked child of this process, which it follows in death."""
    ctx = mp.get_context("fork")
    supervisor = os.getpid()

    def spawn(index: int) -> Proc:
        p = ctx.Process(target=_child, args=(opts, index, supervisor), daemon=True)
        p.start()
        return p

    return spawn


def _say(line: str) -> None:
    print(line, file=sys.stderr)


class Workers:
    """The supervisor's worker processes.  One that exits is started again once Restarts' wait is over; the wait
    never holds up the loop (metrics, signals, the other workers), and one worker's failures never stop the others:
    in a broker outage they keep bidding on their last state and lease."""

    def __init__(self, spawn: Callable[[int], Proc], n: int, retire: Callable[[int | None], None] = lambda pid: None,
                 say: Callable[[str], None] = _say) -> None:
        self.spawn, self.retire, self.say = spawn, retire, say
        self.restarts = Restarts()
        self.procs = {i: spawn(i) for i in range(n)}
        self.due: dict[int, float] = {}  # worker index -> when it is started again
        self.stopping = False  # set from a signal handler: checked between workers

    def pids(self) -> list[int]:
        """The running workers' pids."""
        return [pid for i, p in self.procs.items() if (pid := p.pid) and i not in self.due]

    def step(self, now: float) -> None:
        """Notice the workers that exited and start those whose wait is over; returns at once."""
        for i, p in self.procs.items():
            if self.stopping:
                return
            if i not in self.due and not p.is_alive():
                self._exited(i, p, now)
        for i, at in list(self.due.items()):
            if self.stopping:
                return
            if now >= at:
                del self.due[i]
                try:
                    self.procs[i] = self.spawn(i)
                except OSError as e:  # no process to be had now (a pid or memory limit): tried again, as after an exit
                    wait = self.restarts.after_exit(i, now)
                    self.due[i] = now + wait
                    self.say(f"streambid: cannot start worker {i} ({e.strerror or e}); trying again in {wait:.1f} s")

    def _exited(self, index: int, p: Proc, now: float) -> None:
        self.retire(p.pid)
        wait = self.restarts.after_exit(index, now)
        self.due[index] = now + wait
        self.say(f"streambid: worker {index} (pid {p.pid}) exited with {p.exitcode}; restarting in {wait:.1f} s")

    def stop(self, wait_s: float = 10.0) -> None:
        """Stop every running worker and wait for them, `wait_s` in all (a Ctrl-C in the terminal may have stopped
        some already)."""
        self.stopping = True
        running = [p for i, p in self.procs.items() if i not in self.due and p.is_alive()]
        for p in running:
            p.terminate()
        until = time.monotonic() + wait_s
        for p in running:
            p.join(max(until - time.monotonic(), 0.0))


RESTART_FIRST_S, RESTART_MAX_S = 0.5, 30.0  # the wait before restarting a worker that keeps exiting: doubling, capped
RESTART_STEADY_S = 60.0  # a worker that ran this long before it exited crashed by chance: restarted at once


class Restarts:
    """How long to wait before restarting a worker that exited: at once after a steady run (a crash by chance), else
    a wait doubling from RESTART_FIRST_S up to RESTART_MAX_S.  A worker failing at start (a broker outage, a full
    disk) is restarted for as long as it takes, with one log line per attempt, not a flood."""

    def __init__(self) -> None:
        self.quick: dict[int, int] = {}  # worker -> exits in a row soon after its start
        self.started: dict[int, float] = {}  # worker -> when it was started again

    def after_exit(self, worker: int, now: float) -> float:
        started = self.started.get(worker)
        steady = started is None or now - started >= RESTART_STEADY_S
        quick = 0 if steady else min(self.quick.get(worker, 0) + 1, 32)  # bounded: 2 ** n stays a float
        self.quick[worker] = quick
        wait = 0.0 if quick == 0 else min(RESTART_FIRST_S * 2 ** (quick - 1), RESTART_MAX_S)
        self.started[worker] = now + wait
        return wait
