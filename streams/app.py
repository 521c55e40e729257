"""The Faust worker: agents and tables that turn events into spend, labels, a model and pacing.

    delivery agent   bids, wins, billing, losses, impressions, clicks, conversions (all keyed by campaign)
                     -> attribution table (by bid id), totals table (campaign|day), seen table (event id)
                     -> labelled examples topic
    learner agent    examples -> River CTR learner -> model topic (snapshot, every second when changed)
    config agent     campaign config topic -> validate -> dead letter on rejection
    pacing timer     totals of local campaigns -> pacing controller -> pacing topic (read back at startup:
                     a restarted worker's controllers start from the lambda last published that day)

Anything that fails validation goes to the dead-letter topic with its reason;
the agents keep consuming.  The delivery and learner agents take their records a fetch at a time
(`streams.batch_drain`): Faust's road for each message would cost more CPU than the work itself.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from bidder.campaigns import Campaign, ConfigError, config_campaign
from bidder.clock import from_env as clock_from_env
from bidder.forecast import TrafficForecast
from bidder.pacing import PacingState, read_lambda
from streams import leases, topics
from streams.batch_drain import BatchingApp
from streams.checkpoints import frame, read_latest
from streams.events import FORGET_EVERY_S, FUTURE_S, SEEN_TTL_S, EventError, check_event, dead_letter, env_salt, topic_kind
from streams.kafka_io import StateFollower, log_start_offsets, read_event_ids, read_values
from streams.ledger import FIELDS, SpendLedger, newest_seen
from streams.processor import Campaigns, DeliveryProcessor, Learner, Pacer, checkpoint_offsets
from streams.tables import Outbox, TableView
from streams.worker_metrics import WorkerStats

log = logging.getLogger("streambid.worker")
DELIVERY = (topics.BIDS, topics.WINS, topics.BILLING, topics.LOSSES, topics.IMPRESSIONS, topics.CLICKS, topics.CONVERSIONS)
DELIVERY_NAMES = frozenset(t.name for t in DELIVERY)
EXPIRE_SLICE = 5000  # click windows closed per slice of a tick, before the loop is handed back
# The worker keeps hundreds of thousands of long-lived table entries and allocates a few objects per event: with
# the default thresholds the collector walks the young ones every 700 allocations, a third of the CPU per event.
GC_THRESHOLDS = (20_000, 20, 20)
LOG_STARTS_TIMEOUT_S = 10.0  # a question to the broker about where partitions begin gives up after this
CHECKPOINT_S = 60.0  # wall seconds between learner checkpoints (while it learns): what a restart may relearn
FETCH_MAX = 5000  # records one fetch hands the handlers: the changelog is written once per fetch
# The last published pacing states, read back at startup: from the end of the pacing topic, as far as the start of
# the longest local day still running (a day of 25 hours that began at UTC+14), at most this many records.
PACING_BACK_MS = 26 * 3_600_000
PACING_TAIL_MAX = 200_000
PACING_READ_TIMEOUT_S = 20.0  # past this the pacer starts without them (from lambda 0), as it would with no topic


class StatusBoard:
    """What the worker's /status answers: a document rebuilt on the worker's loop every tick, read by the HTTP thread.

    It shows only the partitions this worker owns right now, so the sum over all workers of one app id is the
    whole, with nothing counted twice, even mid-rebalance (a worker that is rebalancing owns nothing).
    """

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"ready": False, "partitions": [], "positions": {}, "totals": {}}


def create_app(bootstrap: str, app_id: str = "streambid-worker", partitions: int = 4,
               click_window_ms: int | None = None, tick_s: float = 1.0, checkpoint_s: float = CHECKPOINT_S,
               known: dict[str, Campaign] | None = None,
               board: StatusBoard | None = None) -> tuple[faust.App, WorkerStats]:
    """Build the Faust app with its topics, tables, agents and timers.

    `known` is the campaign config read up to the end of the config topic before start, so no event is
    valued with a missing config; the follower task keeps it current afterwards.  `board` receives the
    /status document.
    """
    app = BatchingApp(
        app_id,
        broker=f"kafka://{bootstrap}",
        datadir=os.path.join(os.environ.get("STREAMBID_STATE_DIR", tempfile.gettempdir()), f"streambid-{app_id}"),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        web_enabled=False,
        processing_guarantee="at_least_once",
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        # a worker killed without leaving the group holds its partitions until this expires
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
        producer_max_batch_size=1024 * 1024,
        producer_linger_ms=5,
        broker_max_poll_records=FETCH_MAX,
        consumer_max_fetch_size=4 * 1024 * 1024,  # per partition and fetch: a worker catching up reads big gulps
    )
    gc.set_threshold(*GC_THRESHOLDS)
    stats = WorkerStats()
    # Pacing, day boundaries and attribution windows run on simulated time under STREAMBID_TIME_WARP; pacing steps
    # then come faster so one spans at most five simulated minutes (at most ten a wall second).  The rest of the
    # tick (closing attribution windows, publishing the model) keeps its wall-clock pace: it costs CPU, not accuracy.
    clock = clock_from_env()
    pace_s = min(tick_s, max(clock.wall_seconds(300.0), 0.1))
    campaigns = Campaigns()
    campaigns.by_id.update(known or {})
    json_schema: faust.Schema = faust.Schema(key_serializer="json", value_serializer="json")
    # Every table is partitioned like the events that write it (by campaign); see streams.tables for how the
    # tick writes to them outside stream iteration and why iteration sees only the owned partitions.
    totals, seen, pending = (TableView(app.Table(name, schema=json_schema, partitions=partitions))
                             for name in ("totals", "seen", "attribution"))
    views = (totals, seen, pending)
    outbox = Outbox(app, views)
    delivery = DeliveryProcessor(campaigns, totals, seen, pending, click_window_ms)
    learner = Learner()
    pacer = Pacer(campaigns, TrafficForecast())  # each day's plan follows the requests per hour the bid log reports
    observe_bid = pacer.observe_bid
    leases.install(app, campaigns, delivery.ledger, pacer)  # budget leases for the bidders (streams/leases.py)
    board = board if board is not None else StatusBoard()
    positions: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset processed
    latest_ts: dict[tuple[str, int], int] = {}  # (topic, partition) -> latest event time processed (ms)
    log_starts: dict[tuple[str, int], int] = {}  # (topic, partition) -> first offset on the log, for ones not yet read
    produced = {"examples": 0}
    first_event: dict[str, float] = {}  # wall and CPU time when the first delivery event arrived (for benchmarks)
    stats.bind(delivery, learner, campaigns, totals)
    stats.attach(app)  # metrics snapshot (totals, consumer lag, logloss) refreshed each second on this loop

    def tp(spec: topics.TopicSpec) -> faust.TopicT:
        return app.topic(spec.name, partitions=spec.partitions, key_serializer="raw", value_serializer="raw",
                         config=spec.config)

    delivery_topic = app.topic(*(t.name for t in DELIVERY), key_serializer="raw", value_serializer="raw")
    examples_topic, model_topic, pacing_topic = tp(topics.EXAMPLES), tp(topics.MODEL), tp(topics.PACING)
    learner_topic = tp(topics.LEARNER)
    deadletter_topic, config_topic = tp(topics.DEADLETTER), tp(topics.CAMPAIGNS)
    for spec in DELIVERY:
        tp(spec)
    kinds = {t.name: topic_kind(t.name) for t in DELIVERY}
    sources: dict[tuple[str, int], str] = {}  # (topic, partition) -> "topic:partition", the ledger's watermark key
    newest = [0]  # the latest delivery event time this worker has read: ids are forgotten SEEN_TTL_S before it
    salt = env_salt()  # keys the hash a dead letter keeps of a payload it cannot read

    async def reject(source: str, reason: str, payload: Any, field: str = "") -> None:
        stats.deadletters[(topic_kind(source), reason)] += 1  # labelled like streambid_events_consumed_total
        log.warning("dead-lettered a message from %s: %s%s", source, reason, f" ({field})" if field else "")
        await deadletter_topic.send(key=source.encode(), value=orjson.dumps(dead_letter(
            source, reason, payload, int(time.time() * 1000), salt, field)))

    def send_example(ex: Any, ts_ms: int) -> None:
        outbox.send(topics.EXAMPLES.name, ex.campaign.encode(), orjson.dumps(ex.to_event(ts_ms)), 0)  # one partition
        produced["examples"] += 1

    def admitted(kind: str, msg: Any, latest_ok: int) -> dict[str, Any]:
        """The checked event of a delivery record; EventError for one the ledger must not count.

        Beyond the event's own check: the record's key must be its campaign (the key picks the partition, hence
        the worker that counts it), and its time must be neither past `latest_ok` (one clock far ahead would move
        the dedup horizon past every event) nor SEEN_TTL_S before the newest (its id may be forgotten: it could
        be a copy of one counted).
        """
        ev = check_event(kind, msg.value)
        if msg.key != ev["campaign"].encode():
            raise EventError("key_mismatch", "the record's key must be its campaign", "campaign")
        ts = ev["ts"]
        if ts > newest[0]:
            if ts > latest_ok:
                raise EventError("from_the_future", f"event time more than {FUTURE_S // 3600} h ahead", "ts")
            newest[0] = ts
        elif ts < newest[0] - SEEN_TTL_S * 1000:
            raise EventError("older_than_dedup_horizon", f"{SEEN_TTL_S // 86400} days before the newest event", "ts")
        return ev

    @app.batch_agent(delivery_topic)
    async def deliver(records: Sequence[Any]) -> None:
        """One fetch of delivery events: a totals entry written by many of them goes to the changelog once."""
        if not first_event:
            first_event.update(at=time.time(), cpu_s=time.process_time())
        consumed = stats.consumed
        handle = delivery.handle
        latest_ok = int(clock() * 1000) + FUTURE_S * 1000
        tpkey: tuple[str, int] | None = None
        source = ""
        for msg in records:
            if tpkey is None or msg.partition != tpkey[1] or msg.topic != tpkey[0]:
                tpkey = (msg.topic, msg.partition)
                source = sources.get(tpkey) or sources.setdefault(tpkey, f"{msg.topic}:{msg.partition}")
                kind = kinds[msg.topic]
                outbox.at(msg.partition)
            consumed[kind] += 1
            positions[tpkey] = msg.offset  # read, whatever it holds: a malformed last record must not look unread
            try:
                ev = admitted(kind, msg, latest_ok)
            except EventError as e:
                await reject(msg.topic, e.reason, msg.value, e.field)
                tpkey = None  # the tick may have run meanwhile and moved the tables off this partition
                continue
            if kind == "bids":
                observe_bid(ev)
            try:
                examples = handle(kind, ev, (source, msg.offset))
            except EventError as e:  # one that contradicts what the worker holds (its bid's campaign)
                await reject(msg.topic, e.reason, msg.value, e.field)
                tpkey = None
                continue
            except Exception as e:  # a bug must cost one event (kept on the dead-letter topic), not the worker
                log.exception("event %s from %s could not be applied", ev.get("id"), source)
                await reject(msg.topic, f"internal: {type(e).__name__}", msg.value)
                tpkey = None
                continue
            for ex in examples:
                send_example(ex, ev["ts"])
            if ev["ts"] > latest_ts.get(tpkey, 0):
                latest_ts[tpkey] = ev["ts"]
        await outbox.flush()  # before the batch is acknowledged, so before its offsets can be committed

    expected: dict[int, int] = {}  # examples partition -> the next offset the learner's state has not learned
    resuming = [False]  # while the learner catches up, its state and `expected` disagree: no checkpoint then

    def learn_new(ev: dict[str, Any]) -> bool:
        """Learn a checked example unless its id was learned already."""
        if not learner.is_new(ev):
            return False
        stats.learned(ev, learner.learn(ev))  # progressive logloss: the score it had before it was learned
        return True

    def learn_value(value: bytes) -> bool:
        """An example read again from the topic: one that fails its check was dead-lettered when first consumed."""
        try:
            return learn_new(check_event("examples", value))
        except EventError:
            return False

    async def resume(partition: int, offset: int) -> int:
        """Bring the learner to `offset`, where the consumer now hands it records; returns the offset below which
        records are already learned.

        The newest checkpoint is taken over when it covers more of the partition than this process learned (a
        restart, or a partition coming back after another worker learned on); the examples between its offset and
        `offset` are then read from the topic and learned.  Without one the learner starts where the consumer
        stands.  Either way the ids learned just before that point are recalled, so an example a crash put on the
        topic again is not learned twice.
        """
        at = expected.get(partition)
        found = await read_latest(bootstrap, learner_topic.get_topic_name())
        if found is not None:
            cid, data = found
            try:
                covered = checkpoint_offsets(data).get(partition)
                if covered is not None and (at is None or covered > at):
                    learner.restore(data)
                    at = covered
                    stats.checkpoint["restored"] = {"id": cid, "offset": covered, "at": time.time()}
            except ValueError as e:
                log.warning("learner checkpoint %d is not usable (%s); the learner goes on without it", cid, e)
        if at is None:
            at = offset
        if at > 0:
            start = max(at - learner.recent.capacity, 0)
            for eid in await read_event_ids(bootstrap, examples_topic.get_topic_name(), partition, start, at):
                learner.recent.add(eid)
        if at < offset:
            caught_up = sum(learn_value(value) for _, value in await read_values(
                bootstrap, examples_topic.get_topic_name(), partition, at, offset))
            log.info("learner caught up on %d examples between offsets %d and %d", caught_up, at, offset)
        return at

    @app.batch_agent(examples_topic)
    async def learn(records: Sequence[Any]) -> None:
        for msg in records:
            covered = expected.get(msg.partition)
            if covered is None or msg.offset > covered:  # a start, or a gap: a restart or a rebalance
                resuming[0] = True
                try:
                    covered = expected[msg.partition] = max(await resume(msg.partition, msg.offset), msg.offset)
                finally:
                    resuming[0] = False
            if msg.offset < covered:
                continue  # learned already (by this process, or in the checkpoint it took over)
            expected[msg.partition] = msg.offset + 1
            stats.consumed["examples"] += 1
            try:
                ev = check_event("examples", msg.value)
            except EventError as e:
                await reject(topics.EXAMPLES.name, e.reason, msg.value, e.field)
                continue
            try:
                learn_new(ev)
            except Exception as e:  # as for delivery events: one example lost to the dead-letter topic, not the learner
                log.exception("example %s could not be learned", ev.get("id"))
                await reject(topics.EXAMPLES.name, f"internal: {type(e).__name__}", msg.value)

    async def write_checkpoint() -> None:
        """The learner's state and the offsets it covers, on the learner topic, in parts."""
        labels = learner.labels[0] + learner.labels[1]
        offsets = {str(p): o for p, o in expected.items()}
        encode = learner.capture_checkpoint(dict(expected))  # a copy taken between events; encoded off the loop
        data = await asyncio.to_thread(encode)
        cid = time.time_ns()
        for key, value in frame(cid, data):
            await learner_topic.send(key=key, value=value)
        stats.checkpoint.update(written={"id": cid, "bytes": len(data), "offsets": offsets, "at": time.time()},
                                labels=labels)

    @app.agent(config_topic)
    async def configure(stream: faust.StreamT) -> None:
        async for event in stream.events():
            stats.consumed["campaigns"] += 1
            try:
                config_campaign(event.value)
            except ConfigError as e:
                await reject(topics.CAMPAIGNS.name, f"invalid_config: {e}", event.value or b"")

    def owned_partitions() -> frozenset[int] | None:
        """Delivery partitions assigned to this worker and recovered; None while a rebalance is under way."""
        if app.rebalancing:
            return None
        try:
            assigned = app.consumer.assignment()
        except Exception:  # consumer not started yet
            return None
        return frozenset(tp.partition for tp in assigned if tp.topic in DELIVERY_NAMES)

    def event_time(now_ms: int, owned: frozenset[int]) -> dict[int, int]:
        """Per owned partition, the event time up to which every delivery topic has been read.

        A topic that has nothing left to read does not hold it back (it stands at `now_ms`); one with a
        backlog holds it at the latest event time processed from it (0, closing nothing, if none yet).
        """
        consumer = app.consumer
        committed = getattr(consumer, "_committed_offset", {})
        out = {}
        for p in owned:
            wm = now_ms
            for name in DELIVERY_NAMES:
                tp = TP(name, p)
                try:
                    high = consumer.highwater(tp)
                except Exception:  # revoked meanwhile
                    high = None
                done = positions.get((name, p))
                # nothing read here yet: the next record is the committed one, or the log's first if retention
                # removed everything before it (a new group, or one that lagged past retention)
                next_needed = done + 1 if done is not None else max(committed.get(tp) or 0,
                                                                    log_starts.get((name, p), 0))
                if high is None or high > next_needed:
                    wm = min(wm, latest_ts.get((name, p), 0))
            out[p] = wm
        return out

    forgotten_at = [time.time()]
    reassigned = [False]

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # Faust's hint omits coroutine receivers
    async def forget_positions(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        """A partition that comes back resumes from its committed offset, not from where this worker left it."""
        for tp in revoked:
            positions.pop((tp.topic, tp.partition), None)
            latest_ts.pop((tp.topic, tp.partition), None)
            log_starts.pop((tp.topic, tp.partition), None)
        reassigned[0] = True

    finding_starts: list[asyncio.Future | None] = [None]

    def note_log_starts(owned: frozenset[int]) -> None:
        """Learn, in the background, where the log begins on each owned delivery partition this worker has read
        nothing from: a partition whose records retention removed has a high watermark above its committed offset
        and nothing to read, and would otherwise hold event time back for every campaign.  Asked once per
        assignment, on a connection of its own: the tick never waits on the group's consumer, busy in a rebalance."""
        task = finding_starts[0]
        if task is not None and not task.done():
            return
        unread = [(name, p) for p in owned for name in DELIVERY_NAMES
                  if (name, p) not in positions and (name, p) not in log_starts]
        if unread:
            finding_starts[0] = asyncio.ensure_future(find_log_starts(unread))

    async def find_log_starts(unread: list[tuple[str, int]]) -> None:
        try:
            found = await asyncio.wait_for(log_start_offsets(bootstrap, unread), LOG_STARTS_TIMEOUT_S)
        except Exception as e:  # the broker is away: a later tick asks again
            log.debug("log start offsets not available yet: %s", e)
            return
        owned = owned_partitions() or frozenset()
        log_starts.update((key, offset) for key, offset in found.items() if key[1] in owned)

    async def close_windows(bound: int, reached: dict[int, int], owned: frozenset[int], now_ms: int) -> None:
        """Negatives for the click windows that closed, EXPIRE_SLICE windows at a time.

        After a backlog, 10^5 windows can close at once; in slices, the agents, the pacing timer, commits and
        /status get the loop in between.  Event time only moves forward, so `reached` stays a safe bound; a
        rebalance stops the slicing, and the next tick closes the rest under the new assignment.
        """
        def now_of(bid_id: str) -> int:
            partition = pending.partition_of(bid_id)
            return reached.get(partition, 0) if partition is not None else 0

        while True:
            outbox.at(None)  # outside any event: each key is written to its own partition
            for ex in delivery.expire(bound, now_of, EXPIRE_SLICE):
                send_example(ex, now_ms)
            await outbox.flush()
            if not delivery.attribution.cut_short:
                return
            await asyncio.sleep(0)
            if owned_partitions() != owned or reassigned[0]:
                return

    @app.timer(interval=tick_s)
    async def tick() -> None:
        ready = owned_partitions()
        owned = ready or frozenset()
        if ready is not None and (owned != totals.owned or reassigned[0]):
            reassigned[0] = False
            for view in views:
                view.owned = owned
            delivery.attribution.reindex()  # entries recovered for newly assigned partitions need their due times
        elif ready is None:
            for view in views:
                view.owned = owned
        now = clock()
        now_ms = int(now * 1000)
        reached: dict[int, int] = {}
        if owned:
            note_log_starts(owned)
            reached = event_time(now_ms, owned)
            if time.time() - forgotten_at[0] >= FORGET_EVERY_S:
                forgotten_at[0] = time.time()
                forget_seen_ids(outbox, delivery.ledger, newest[0] - SEEN_TTL_S * 1000)
            stats.windows_close_at = min(reached.values())
            await close_windows(stats.windows_close_at, reached, owned, now_ms)
        else:
            stats.windows_close_at = None
        total_labels = learner.labels[0] + learner.labels[1]
        if total_labels != stats.published_labels:
            stats.published_labels = total_labels
            await model_topic.send(key=b"ctr", value=learner.snapshot_bytes())
            stats.model_published = time.time()  # wall time: the model's age is about the machine
        written = stats.checkpoint.get("written") or {}
        if (total_labels != stats.checkpoint.get("labels", 0) and not resuming[0] and expected
                and time.time() - written.get("at", 0.0) >= checkpoint_s):
            await write_checkpoint()
        board.doc = status_doc(app_id, ready is not None, owned, positions, totals, stats, learner, delivery, produced)
        board.doc["first_event"] = dict(first_event)
        board.doc["event_time"] = {str(p): t for p, t in sorted(reached.items())}  # where windows close, per partition
        board.doc["read_ts"] = {f"{t}:{p}": ts for (t, p), ts in sorted(latest_ts.items())}
        forecast = pacer.forecast
        if forecast is not None:  # what tomorrow's plans will follow: the share of requests per UTC hour
            weights = forecast.utc_weights(now)
            board.doc["forecast"] = {"days": forecast.days, "utc_weights": [round(w, 5) for w in weights] if weights else None}

    primed = [False, False]  # the last published pacing states are read back; the tables are recovered

    @app.task
    async def read_back_pacing() -> None:
        """Each campaign's controller starts from its last published lambda of the day, not from 0: a worker
        restarted mid-day would otherwise bid as if budget cost nothing, and run ahead of plan for hours."""
        try:
            docs = await asyncio.wait_for(last_pacing_docs(bootstrap, topics.PACING.name, set(campaigns.by_id),
                                                           int(time.time() * 1000) - PACING_BACK_MS),
                                          PACING_READ_TIMEOUT_S)
        except Exception as e:  # no topic yet, or the broker away: start from 0 as before
            log.warning("last pacing states not read back (%s); controllers start from lambda 0", e)
            docs = {}
        states = [st for st in map(pacing_state, docs.values()) if st is not None]
        for state in states:
            pacer.remember(state)
        log.info("read back the last pacing state of %d campaigns", len(states))
        primed[0] = True

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # as above
    async def tables_recovered(app: faust.App, **kwargs: Any) -> None:
        newest[0] = max(newest[0], newest_seen(seen.held_values()))
        primed[1] = True

    @app.timer(interval=pace_s)
    async def pace() -> None:
        if not all(primed):  # a controller stepped before then would start from 0, or on spend not yet recovered
            return
        now = clock()
        await follow_moves()
        local = {k.split("|", 1)[0] for k in totals}
        for state in pacer.update(now, delivery.ledger):
            if state.campaign in local:
                await pacing_topic.send(key=state.campaign.encode(), value=orjson.dumps(pacing_doc(state)))

    paced_on: list[frozenset[int] | None] = [None]  # the partitions owned at the last step; None before the first

    async def follow_moves() -> None:
        """The campaigns of partitions this worker was just given start as after a restart: their state here was
        stepped on a ledger that did not see their spend (conversion rate, controller, lifetime spend), so it is
        forgotten, and their last published lambda of the day is read back (the first step's were, at start)."""
        owned = owned_partitions()
        if owned is None:  # a rebalance under way: the next step sees where it ended
            return
        before, paced_on[0] = paced_on[0], owned
        gained = owned - before if before is not None else frozenset()
        came = {k.split("|", 1)[0] for k in totals if totals.partition_of(k) in gained}
        for cid in came:
            pacer.forget(cid)
        if not came:
            return
        try:
            docs = await asyncio.wait_for(last_pacing_docs(bootstrap, topics.PACING.name, came,
                                                           int(time.time() * 1000) - PACING_BACK_MS),
                                          PACING_READ_TIMEOUT_S)
        except Exception as e:  # the broker away: they start from lambda 0, as after a restart without it
            log.warning("pacing states of %d campaigns new here not read back (%s)", len(came), e)
            return
        for state in filter(None, map(pacing_state, docs.values())):
            pacer.remember(state)

    def apply_config(key: bytes, value: bytes | None) -> None:
        try:
            camp = config_campaign(value)
        except ConfigError:
            return  # the config agent dead-letters it; the previous valid version stays in force
        campaigns.by_id[camp.id] = camp
        log.info("campaign %s version in force (%d known)", camp.id, len(campaigns.by_id))

    follower = StateFollower(bootstrap, {topics.CAMPAIGNS.name: apply_config})

    @app.task
    async def follow_config() -> None:
        await follower.start()

    return app, stats


def forget_seen_ids(outbox: Outbox, ledger: SpendLedger, before_ms: int) -> int:
    """Drop the event ids past the dedup horizon, outside any event: each deletion goes to its id's own changelog
    partition.  Left on the partition of the last event processed, it would miss the partition whose next owner
    recovers the id, and that owner would remember it for good."""
    outbox.at(None)
    return ledger.forget_before(before_ms)


def pacing_doc(state: Any) -> dict[str, Any]:
    """The pacing topic record for one campaign."""
    return {
        "v": 1, "campaign": state.campaign, "day": state.day, "lam": state.lam, "spent_today": state.spent_today,
        "budget_today": state.budget_today, "exhausted": state.exhausted,
        "impressions_today": getattr(state, "impressions_today", 0), "clicks_today": getattr(state, "clicks_today", 0),
        "value_today": getattr(state, "value_today", 0), "cvr": getattr(state, "cvr", 0.0),
        "plan_share": getattr(state, "plan_share", None),  # the plan the pacer follows: what bidders show as the plan
        "ts": int(time.time() * 1000),  # publication time: the bidders' pacing age counts from it, across restarts
    }


def pacing_state(doc: Any) -> PacingState | None:
    """The state a pacing record publishes, or None for one that is not usable (a reader must never fail on what
    is on a topic)."""
    if not isinstance(doc, dict):
        return None
    campaign, day, lam, exhausted = doc.get("campaign"), doc.get("day"), doc.get("lam"), doc.get("exhausted")
    if type(campaign) is not str or type(day) is not str or type(exhausted) is not bool:
        return None
    lam = read_lambda(lam)
    if lam is None:
        return None
    return PacingState(campaign=campaign, day=day, lam=lam, exhausted=exhausted)


def newest_by_campaign(values: Sequence[bytes | None], wanted: set[str], found: dict[str, Any]) -> None:
    """Add to `found` the newest pacing document of each campaign of `wanted` not in it yet; `values` in log order."""
    for value in reversed(values):
        try:
            doc = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            continue
        cid = doc.get("campaign") if isinstance(doc, dict) else None
        if type(cid) is str and cid in wanted and cid not in found:
            found[cid] = doc


async def last_pacing_docs(bootstrap: str, topic: str, wanted: set[str], since_ms: int) -> dict[str, Any]:
    """The newest pacing document of each campaign of `wanted` on `topic` (partition 0), read back from its end.

    Every worker publishes each campaign it paces at every step, so the last records hold the newest state of
    every campaign paced lately.  Windows grow back from the end until all of `wanted` are found, the records
    are older than `since_ms` (no state of a day still running is), or PACING_TAIL_MAX records were read: the
    topic is compacted, but only in closed segments, so reading it whole could mean millions of records.
    """
    tp = TopicPartition(topic, 0)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        since = (await c.offsets_for_times({tp: since_ms}))[tp]
        floor = max(since.offset if since is not None else end, end - PACING_TAIL_MAX)
        found: dict[str, Any] = {}
        stop, window = end, max(4 * len(wanted), 1000)
        while stop > floor and not wanted <= found.keys():
            start = max(floor, stop - window)
            newest_by_campaign(await read_range(c, tp, start, stop), wanted, found)
            stop, window = start, window * 4
        return found
    finally:
        await c.stop()


async def read_range(c: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int) -> list[bytes | None]:
    """Values at offsets [start, stop) of the assigned `tp` (fewer where compaction removed records)."""
    c.seek(tp, start)
    values: list[bytes | None] = []
    while await c.position(tp) < stop:
        for msg in (await c.getmany(tp, timeout_ms=1000, max_records=10_000)).get(tp, []):
            if msg.offset < stop:
                values.append(msg.value)
    return values


def status_doc(app_id: str, ready: bool, owned: frozenset[int], positions: dict[tuple[str, int], int], totals: TableView,
               stats: WorkerStats, learner: Learner, delivery: DeliveryProcessor, produced: dict[str, int]) -> dict[str, Any]:
    """The /status document: this worker's partitions, how far it got in each, and the totals it holds there."""
    return {
        "app_id": app_id,
        "ready": ready,
        "partitions": sorted(owned),
        "positions": {f"{t}:{p}": off for (t, p), off in sorted(positions.items()) if p in owned},
        "totals": {key: {f: t.get(f, 0) for f in FIELDS} for key, t in totals.items()},
        "consumed": dict(stats.consumed),
        "produced": dict(produced),
        "outcomes": dict(delivery.outcomes),
        "learner": {"labels": {str(k): v for k, v in learner.labels.items()}, "duplicates": learner.duplicates,
                    "version": learner.version, "checkpoint": stats.checkpoint,
                    "by_campaign": {f"{c}:{label}": n for (c, label), n in stats.examples.items()}},
        "at": time.time(),
        "cpu_s": time.process_time(),
    }
