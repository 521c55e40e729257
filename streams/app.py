"""The Faust worker: agents and tables that turn events into spend, labels, a model and pacing.

    delivery agent   bids, wins, billing, losses, impressions, clicks, conversions (all keyed by campaign)
                     -> attribution table (by bid id), totals table (campaign|day), seen table (event id)
                     -> labelled examples topic
    learner agent    examples -> River CTR learner -> model topic (snapshot, every second when changed)
    config agent     campaign config topic -> validate -> dead letter on rejection
    pacing timer     totals of local campaigns -> pacing controller -> pacing topic

Anything that fails validation goes to the dead-letter topic with its reason;
the agents keep consuming.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import orjson

from bidder.campaigns import Campaign, ConfigError, parse_campaign
from streams import topics
from streams.events import EventError, check_event, dead_letter, topic_kind
from streams.kafka_io import StateFollower
from streams.processor import Campaigns, DeliveryProcessor, Learner, Pacer
from streams.worker_metrics import WorkerStats

log = logging.getLogger("streambid.worker")
DELIVERY = (topics.BIDS, topics.WINS, topics.BILLING, topics.LOSSES, topics.IMPRESSIONS, topics.CLICKS, topics.CONVERSIONS)


def create_app(bootstrap: str, app_id: str = "streambid-worker", partitions: int = 4,
               click_window_ms: int | None = None, tick_s: float = 1.0,
               known: dict[str, Campaign] | None = None) -> tuple[faust.App, WorkerStats]:
    """Build the Faust app with its topics, tables, agents and timers.

    `known` is the campaign config read up to the end of the config topic before start, so no event is
    valued with a missing config; the follower task keeps it current afterwards.
    """
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        web_enabled=False,
        processing_guarantee="at_least_once",
        broker_commit_every=100,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
    )
    stats = WorkerStats()
    campaigns = Campaigns()
    campaigns.by_id.update(known or {})
    json_schema = faust.Schema(key_serializer="json", value_serializer="json")
    totals = app.Table("totals", schema=json_schema, partitions=partitions)
    seen = app.Table("seen", schema=json_schema, partitions=partitions)
    pending = app.Table("attribution", schema=json_schema, partitions=partitions)
    delivery = DeliveryProcessor(campaigns, totals, seen, pending, click_window_ms)
    learner = Learner()
    pacer = Pacer(campaigns)
    stats.bind(delivery, learner, campaigns, totals)

    def tp(spec: topics.TopicSpec) -> faust.TopicT:
        return app.topic(spec.name, partitions=spec.partitions, key_serializer="raw", value_serializer="raw",
                         config=spec.config)

    delivery_topic = app.topic(*(t.name for t in DELIVERY), key_serializer="raw", value_serializer="raw")
    examples_topic, model_topic, pacing_topic = tp(topics.EXAMPLES), tp(topics.MODEL), tp(topics.PACING)
    deadletter_topic, config_topic = tp(topics.DEADLETTER), tp(topics.CAMPAIGNS)
    for spec in DELIVERY:
        tp(spec)

    async def reject(source: str, reason: str, payload: Any) -> None:
        stats.deadletters[(source, reason)] += 1
        log.warning("dead-lettered a message from %s: %s", source, reason)
        await deadletter_topic.send(key=source.encode(), value=orjson.dumps(dead_letter(source, reason, payload,
                                                                                       int(time.time() * 1000))))

    @app.agent(delivery_topic)
    async def deliver(stream: faust.StreamT) -> None:
        async for event in stream.events():
            msg = event.message
            kind = topic_kind(msg.topic)
            stats.consumed[kind] += 1
            try:
                ev = check_event(kind, event.value)
            except EventError as e:
                await reject(msg.topic, e.reason, event.value)
                continue
            for ex in delivery.handle(kind, ev, (f"{msg.topic}:{msg.partition}", msg.offset)):
                await examples_topic.send(key=ex.campaign.encode(), value=orjson.dumps(ex.to_event(ev["ts"])))

    @app.agent(examples_topic)
    async def learn(stream: faust.StreamT) -> None:
        async for value in stream:
            stats.consumed["examples"] += 1
            try:
                ev = check_event("examples", value)
            except EventError as e:
                await reject(topics.EXAMPLES.name, e.reason, value)
                continue
            learner.learn(ev)

    @app.agent(config_topic)
    async def configure(stream: faust.StreamT) -> None:
        async for event in stream.events():
            stats.consumed["campaigns"] += 1
            try:
                doc = orjson.loads(event.value)
                parse_campaign(doc.get("campaign", doc) if isinstance(doc, dict) else doc)
            except (orjson.JSONDecodeError, ConfigError) as e:
                await reject(topics.CAMPAIGNS.name, f"invalid_config: {e}", event.value)

    @app.timer(interval=tick_s)
    async def tick() -> None:
        now = time.time()
        for ex in delivery.expire(int(now * 1000)):
            await examples_topic.send(key=ex.campaign.encode(), value=orjson.dumps(ex.to_event(int(now * 1000))))
        total_labels = learner.labels[0] + learner.labels[1]
        if total_labels != stats.published_labels:
            stats.published_labels = total_labels
            await model_topic.send(key=b"ctr", value=learner.snapshot_bytes())
            stats.model_published = now
        local = {k.split("|", 1)[0] for k in list(totals.keys())}
        for state in pacer.update(now, delivery.ledger):
            if state.campaign in local:
                await pacing_topic.send(key=state.campaign.encode(), value=orjson.dumps(pacing_doc(state)))

    def apply_config(key: bytes, value: bytes) -> None:
        doc = orjson.loads(value)
        try:
            camp = parse_campaign(doc.get("campaign", doc))
        except ConfigError:
            return  # the config agent dead-letters it; the previous valid version stays in force
        campaigns.by_id[camp.id] = camp
        log.info("campaign %s version in force (%d known)", camp.id, len(campaigns.by_id))

    follower = StateFollower(bootstrap, {topics.CAMPAIGNS.name: apply_config})

    @app.task
    async def follow_config() -> None:
        await follower.start()

    return app, stats


def pacing_doc(state: Any) -> dict[str, Any]:
    """The pacing topic record for one campaign."""
    return {
        "v": 1, "campaign": state.campaign, "day": state.day, "lam": state.lam, "spent_today": state.spent_today,
        "budget_today": state.budget_today, "exhausted": state.exhausted,
        "impressions_today": getattr(state, "impressions_today", 0), "clicks_today": getattr(state, "clicks_today", 0),
        "value_today": getattr(state, "value_today", 0), "ts": int(time.time() * 1000),
    }
