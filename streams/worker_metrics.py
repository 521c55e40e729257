"""Worker metrics: events consumed, dead letters, attribution, consumer lag, model health, per-campaign ROI.

Processing an event costs a dict increment and nothing more.  What needs the
worker's state (the totals table, the consumer's offsets) is read once a
second on the worker's own event loop into an immutable snapshot, because
Prometheus scrapes from the HTTP server's thread and must not walk a table
the agents are writing.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.ledger import FIELDS

LOGLOSS_WINDOW = 10_000  # examples in the learner's progressive logloss
_EPS = 1e-7
# ledger field -> (counter name, help); money in currency units
CAMPAIGN_COUNTERS = {
    "spend": ("streambid_campaign_spend", "Billed spend, currency units"),
    "billed": ("streambid_campaign_impressions", "Billed impressions"),
    "impressions": ("streambid_campaign_rendered", "Impressions reported rendered by the tracker"),
    "clicks": ("streambid_campaign_clicks", "Clicks"),
    "conversions": ("streambid_campaign_conversions", "Conversions"),
    "value": ("streambid_campaign_value", "Value: clicks x value per click + conversion values, currency units"),
    "wins": ("streambid_campaign_wins", "Win notices"),
    "losses": ("streambid_campaign_losses", "Loss notices"),
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the scrape thread reads: taken on the worker's loop, never changed afterwards."""

    totals: dict[str, dict[str, int]] = field(default_factory=dict)  # campaign -> ledger fields, all days, micros
    campaigns: tuple[str, ...] = ()  # known campaign ids: their learner counters are exported from 0
    lag: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> messages behind
    logloss: float = math.nan
    window_ctr: float = math.nan
    window: int = 0


class WorkerStats(Collector):
    """Counters the agents bump, plus a once-a-second snapshot of the state they keep."""

    def __init__(self, window: int = LOGLOSS_WINDOW) -> None:
        self.consumed: dict[str, int] = defaultdict(int)
        self.deadletters: dict[tuple[str, str], int] = defaultdict(int)
        self.published_labels = 0
        self.model_published = 0.0
        # learner checkpoints: "written" {id, bytes, offsets, at}, "labels" learned when written, "restored" {id, offset, at}
        self.checkpoint: dict[str, Any] = {}
        # event time (ms) up to which click windows close: the slowest owned partition's; None while nothing is owned
        self.windows_close_at: int | None = None
        self.started = time.time()
        self.examples: dict[tuple[str, int], int] = defaultdict(int)  # (campaign, label)
        self.predicted: dict[str, float] = defaultdict(float)  # campaign -> sum of pCTR over examples
        self._losses: deque[float] = deque(maxlen=window)
        self._labels: deque[int] = deque(maxlen=window)
        self._snap: Snapshot | None = None
        self._delivery: Any = None
        self._learner: Any = None
        self._campaigns: Any = None
        self._totals: Any = None

    def bind(self, delivery: Any, learner: Any, campaigns: Any, totals: Any) -> None:
        self._delivery, self._learner, self._campaigns, self._totals = delivery, learner, campaigns, totals

    def attach(self, app: Any, interval: float = 1.0) -> None:
        """Refresh the snapshot on a timer of the Faust app (its own loop, where the tables live)."""

        @app.timer(interval=interval, name="streambid-metrics-refresh")
        async def refresh_metrics() -> None:
            self.refresh(app.consumer)

    # -- called by the agents -----------------------------------------------------------

    def before_learn(self, event: Mapping[str, Any]) -> None:
        """Progressive validation: score each example with the model *before* it learns from it."""
        if self._learner is None:
            return
        self.learned(event, self._learner.learner.predict_one(event["features"], event["campaign"], event["creative"]))

    def learned(self, event: Mapping[str, Any], p: float) -> None:
        """Record an example the learner scored at `p` before learning from it (what `Learner.learn` returns)."""
        label = int(bool(event["label"]))
        p = min(max(p, _EPS), 1.0 - _EPS)
        self._losses.append(-math.log(p if label else 1.0 - p))
        self._labels.append(label)
        self.examples[(event["campaign"], label)] += 1
        self.predicted[event["campaign"]] += p

    # -- snapshot -----------------------------------------------------------------------

    def campaign_totals(self) -> dict[str, dict[str, int]]:
        """All-time totals per campaign held by this worker (its own partitions)."""
        out: dict[str, dict[str, int]] = {}
        for key, t in list(self._totals.items()) if self._totals is not None else []:
            camp = key.split("|", 1)[0]
            acc = out.setdefault(camp, dict.fromkeys(FIELDS, 0))
            for f in FIELDS:
                acc[f] += t.get(f, 0)
        return out

    def refresh(self, consumer: Any = None) -> Snapshot:
        losses, labels = list(self._losses), list(self._labels)
        n = len(losses)
        known = tuple(getattr(self._campaigns, "by_id", {}))
        snap = Snapshot(totals=self.campaign_totals(), campaigns=known,
                        lag=consumer_lag(consumer) if consumer is not None else {},
                        logloss=math.fsum(losses) / n if n else math.nan, window_ctr=sum(labels) / n if n else math.nan,
                        window=n)
        self._snap = snap
        return snap

    # -- scrape -------------------------------------------------------------------------

    def collect(self) -> Iterator:
        snap = self._snap or Snapshot()
        consumed = CounterMetricFamily("streambid_events_consumed", "Events consumed per topic", labels=["topic"])
        for topic, n in list(self.consumed.items()):
            consumed.add_metric([topic], n)
        yield consumed
        dlq = CounterMetricFamily("streambid_deadlettered", "Messages sent to the dead-letter topic",
                                  labels=["topic", "reason"])
        for (topic, reason), n in list(self.deadletters.items()):
            dlq.add_metric([topic, reason.split(":", 1)[0]], n)
        yield dlq
        attr = CounterMetricFamily("streambid_attribution", "Attribution outcomes per event kind (matched, early, late, "
                                   "duplicate, orphan, duplicate_event)", labels=["kind", "outcome"])
        for key, n in list((self._delivery.outcomes if self._delivery else {}).items()):
            kind, outcome = key.split(":", 1)
            attr.add_metric([kind, outcome], n)
        yield attr
        lag = GaugeMetricFamily("streambid_consumer_lag", "Messages between the partition's high watermark and this "
                                "worker's committed offset", labels=["topic", "partition"])
        for (topic, partition), n in sorted(snap.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        yield from self._learning(snap)
        yield from self._business(snap)

    def _learning(self, snap: Snapshot) -> Iterator:
        # counted by this process since it started, so every known campaign starts at 0: a first example then
        # shows as an increase instead of as the first sample of a new series
        examples = {(c, label): 0 for c in snap.campaigns for label in (0, 1)} | dict(list(self.examples.items()))
        predicted = dict.fromkeys(snap.campaigns, 0.0) | dict(list(self.predicted.items()))
        ex = CounterMetricFamily("streambid_learner_examples", "Labelled examples learned", labels=["campaign", "label"])
        for (camp, label), n in examples.items():
            ex.add_metric([camp, str(label)], n)
        yield ex
        pred = CounterMetricFamily("streambid_learner_predicted_clicks", "Sum of the pCTR the model gave each example "
                                   "before learning it (compare with clicks among the examples)", labels=["campaign"])
        for camp, v in predicted.items():
            pred.add_metric([camp], v)
        yield pred
        yield GaugeMetricFamily("streambid_learner_logloss", f"Progressive logloss over the last {self._losses.maxlen} "
                                "examples (each scored before it was learned)", value=snap.logloss)
        yield GaugeMetricFamily("streambid_learner_window_ctr", "Click rate among the examples of the logloss window "
                                "(the logloss of always predicting it is the baseline)", value=snap.window_ctr)
        yield GaugeMetricFamily("streambid_learner_window_examples", "Examples in the logloss window", value=snap.window)
        since = self.model_published or self.started
        yield GaugeMetricFamily("streambid_model_update_age_seconds", "Seconds since this worker last published a "
                                "model snapshot (or started)", value=time.time() - since)
        yield GaugeMetricFamily("streambid_model_version_published", "Version of the last model snapshot this worker "
                                "published (0: none)", value=getattr(self._learner, "version", 0))
        closing = self.windows_close_at
        if closing is not None:
            yield GaugeMetricFamily("streambid_click_windows_behind_seconds", "How far behind the clock click windows "
                                    "close: event time is held by the slowest partition this worker owns.  It grows "
                                    "while a backlog is read, and should not grow otherwise",
                                    value=max(time.time() - closing / 1000.0, 0.0))
        written = self.checkpoint.get("written")
        # from the start until the first write: a worker that can never write one must still show its age growing
        yield GaugeMetricFamily("streambid_learner_checkpoint_age_seconds", "Seconds since this worker last wrote a "
                                "learner checkpoint, or started (what a restart would relearn from the examples topic)",
                                value=time.time() - (written["at"] if written else self.started))
        if written:
            yield GaugeMetricFamily("streambid_learner_checkpoint_bytes", "Size of the last learner checkpoint",
                                    value=written["bytes"])

    def _business(self, snap: Snapshot) -> Iterator:
        fams = {f: CounterMetricFamily(name, f"{doc}, all days (ledger, each event counted once)", labels=["campaign"])
                for f, (name, doc) in CAMPAIGN_COUNTERS.items()}
        roi = GaugeMetricFamily("streambid_campaign_roi", "(value - spend) / spend over all days, from integer micros; "
                                "NaN while nothing was spent",
                                labels=["campaign"])
        for camp, t in snap.totals.items():
            for f, fam in fams.items():
                fam.add_metric([camp], t[f] / 1e6 if f in ("spend", "value") else t[f])
            roi.add_metric([camp], (t["value"] - t["spend"]) / t["spend"] if t["spend"] else math.nan)
        yield from fams.values()
        yield roi


def consumer_lag(consumer: Any) -> dict[tuple[str, int], int]:
    """High watermark minus committed offset for each assigned partition that has a commit.

    Both come from the consumer's memory (the fetcher's last high watermark,
    Faust's last commit), so this costs no request to the broker.
    """
    out: dict[tuple[str, int], int] = {}
    committed = getattr(consumer, "_committed_offset", None)
    if committed is None:
        return out
    try:
        assigned = list(consumer.assignment())
    except Exception:  # not started yet, or rebalancing
        return out
    for tp in assigned:
        offset = committed.get(tp)
        if offset is None:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # a partition revoked since assignment() was read
            continue
        if high is not None:
            out[(tp.topic, tp.partition)] = max(int(high) - int(offset), 0)
    return out
