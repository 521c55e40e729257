"""Every topic, defined once: name, key, value, partitions, retention.

All delivery topics are keyed by campaign id, so every event of a campaign
lands in the same partition and one worker owns all of that campaign's state
(attribution, spend, pacing); a rebalance moves whole campaigns.

The Faust app, the Kafka producer, the embedded bus and the README table all
read this list, so a topic cannot be spelled two ways.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DAY_MS = 86_400_000
# One deployment's topics share a prefix; a second stack on the same cluster (staging, a test) takes its own.
PREFIX = os.environ.get("STREAMBID_TOPIC_PREFIX", "streambid")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    value: str
    partitions: int = 4
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    history_ms: int = 0  # compacted topics: keep every version at least this long before compaction
    segment_ms: int = 0  # compacted topics: roll segments this often, so compaction (closed segments only) keeps up

    @property
    def config(self) -> dict[str, str]:
        """Topic-level Kafka config used when the topic is created."""
        if self.compacted:
            cfg = {"cleanup.policy": "compact", "max.message.bytes": str(16 * 1024 * 1024)}
            if self.history_ms:
                cfg["min.compaction.lag.ms"] = str(self.history_ms)
            if self.segment_ms:
                cfg["segment.ms"] = str(self.segment_ms)
            return cfg
        return {"retention.ms": str(self.retention_ms)}


BIDS = TopicSpec(f"{PREFIX}.bids", "campaign id", "bid: campaign, creative, price, pCTR, hashed features, auction type; "
                 "bidder id and its running request count")
WINS = TopicSpec(f"{PREFIX}.wins", "campaign id", "win notice: bid id, clearing price (CPM micros)")
BILLING = TopicSpec(f"{PREFIX}.billing", "campaign id", "billing notice: bid id, cost (micros), campaign day, user hash")
LOSSES = TopicSpec(f"{PREFIX}.losses", "campaign id", "loss notice: bid id, loss reason, min bid to win")
IMPRESSIONS = TopicSpec(f"{PREFIX}.impressions", "campaign id", "impression rendered: bid id, campaign, creative")
CLICKS = TopicSpec(f"{PREFIX}.clicks", "campaign id", "click: bid id, campaign, creative")
CONVERSIONS = TopicSpec(f"{PREFIX}.conversions", "campaign id", "conversion: bid id, campaign, value (micros)")
EXAMPLES = TopicSpec(f"{PREFIX}.examples", "campaign id", "labelled training example: features, label", partitions=1)
CAMPAIGNS = TopicSpec(f"{PREFIX}.campaigns", "campaign id", "campaign document + who/when (history kept 90 days)", partitions=1,
                      compacted=True, history_ms=90 * DAY_MS)
# the model and pacing topics take a new record every few seconds: without a segment roll, compaction never sees a
# closed segment, and a restarted bidder would read (and apply) days of superseded snapshots before the newest
MODEL = TopicSpec(f"{PREFIX}.model", "model name", "model snapshot (zlib+orjson)", partitions=1, compacted=True,
                  segment_ms=3_600_000)
LEARNER = TopicSpec(f"{PREFIX}.learner", "checkpoint part", "learner checkpoint: exact training state and the examples "
                    "offset it covers, in parts", partitions=1, compacted=True,
                    segment_ms=3_600_000)
PACING = TopicSpec(f"{PREFIX}.pacing", "campaign id", "pacing state: lambda, spend today, budget, exhausted", partitions=1,
                   compacted=True, segment_ms=3_600_000)
# Budget leases (streams/leases.py): requests are keyed by campaign and partitioned like the delivery topics, so the
# worker that owns a campaign's spend answers them; grants are keyed by bidder id, and every bidder reads them all.
LEASE_REQUESTS = TopicSpec(f"{PREFIX}.lease-requests", "campaign id",
                           "lease request: bidder id, campaign, day, its grant and spend so far", retention_ms=DAY_MS)
LEASE_GRANTS = TopicSpec(f"{PREFIX}.lease-grants", "bidder id",
                         "lease grant: bidder id, campaign, day, cumulative micros granted", partitions=1, retention_ms=DAY_MS)
DEADLETTER = TopicSpec(f"{PREFIX}.deadletter", "source topic",
                       "rejected message: topic, reason, known fields and the names of the others", partitions=1,
                       retention_ms=30 * DAY_MS)

ALL = (BIDS, WINS, BILLING, LOSSES, IMPRESSIONS, CLICKS, CONVERSIONS, EXAMPLES, CAMPAIGNS, MODEL, LEARNER, PACING, LEASE_REQUESTS,
       LEASE_GRANTS, DEADLETTER)
BY_NAME = {t.name: t for t in ALL}


def _retention(spec: TopicSpec) -> str:
    if spec.compacted:
        kept = f"; every version kept {spec.history_ms // DAY_MS} days" if spec.history_ms else ""
        return f"compacted (latest per key{kept})"
    days = spec.retention_ms // DAY_MS
    return f"{days} day{'s' if days != 1 else ''}"


def markdown_table(prefix: str = "streambid") -> str:
    """The topic table of the README, from ALL (names under `prefix`, the default one unless asked)."""
    rows = ["| topic | key | value | partitions | retention |", "|---|---|---|---|---|"]
    for spec in ALL:
        name = f"{prefix}.{spec.name.rsplit('.', 1)[-1]}"
        rows.append(f"| `{name}` | {spec.key} | {spec.value} | {spec.partitions} | {_retention(spec)} |")
    return "\n".join(rows)
