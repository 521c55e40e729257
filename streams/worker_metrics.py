"""Worker metrics: events consumed, dead letters, attribution outcomes, model age, per-campaign ROI.

Collected at scrape time from the worker's own state, so processing an event
costs a dict increment and nothing more.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.ledger import FIELDS


class WorkerStats(Collector):
    """Counters the agents bump, plus read access to the state they keep."""

    def __init__(self) -> None:
        self.consumed: dict[str, int] = defaultdict(int)
        self.deadletters: dict[tuple[str, str], int] = defaultdict(int)
        self.published_labels = 0
        self.model_published = 0.0
        self._delivery: Any = None
        self._learner: Any = None
        self._campaigns: Any = None
        self._totals: Any = None

    def bind(self, delivery: Any, learner: Any, campaigns: Any, totals: Any) -> None:
        self._delivery, self._learner, self._campaigns, self._totals = delivery, learner, campaigns, totals

    def campaign_totals(self) -> dict[str, dict[str, int]]:
        """All-time totals per campaign held by this worker (its own partitions)."""
        out: dict[str, dict[str, int]] = {}
        for key, t in list(self._totals.items()) if self._totals is not None else []:
            camp = key.split("|", 1)[0]
            acc = out.setdefault(camp, dict.fromkeys(FIELDS, 0))
            for f in FIELDS:
                acc[f] += t.get(f, 0)
        return out

    def collect(self) -> Iterator:
        consumed = CounterMetricFamily("streambid_events_consumed", "Events consumed per topic", labels=["topic"])
        for topic, n in list(self.consumed.items()):
            consumed.add_metric([topic], n)
        yield consumed
        dlq = CounterMetricFamily("streambid_deadlettered", "Messages sent to the dead-letter topic",
                                  labels=["topic", "reason"])
        for (topic, reason), n in list(self.deadletters.items()):
            dlq.add_metric([topic, reason.split(":", 1)[0]], n)
        yield dlq
        attr = CounterMetricFamily("streambid_attribution", "Attribution outcomes per event kind",
                                   labels=["kind", "outcome"])
        for key, n in list((self._delivery.outcomes if self._delivery else {}).items()):
            kind, outcome = key.split(":", 1)
            attr.add_metric([kind, outcome], n)
        yield attr
        if self._learner is not None:
            ex = CounterMetricFamily("streambid_learner_examples", "Labelled examples learned", labels=["label"])
            for label, n in self._learner.labels.items():
                ex.add_metric([str(label)], n)
            yield ex
        age = time.time() - self.model_published if self.model_published else float("nan")
        yield GaugeMetricFamily("streambid_model_update_age_seconds", "Seconds since the last model snapshot", value=age)
        yield from self._business()

    def _business(self) -> Iterator:
        names = {"spend": "streambid_campaign_spend", "billed": "streambid_campaign_impressions",
                 "clicks": "streambid_campaign_clicks", "conversions": "streambid_campaign_conversions",
                 "value": "streambid_campaign_value", "wins": "streambid_campaign_wins"}
        fams = {f: CounterMetricFamily(n, f"Campaign {f} (money in currency units)", labels=["campaign"])
                for f, n in names.items()}
        roi = GaugeMetricFamily("streambid_campaign_roi", "(value - spend) / spend", labels=["campaign"])
        for camp, t in self.campaign_totals().items():
            for f, fam in fams.items():
                fam.add_metric([camp], t[f] / 1e6 if f in ("spend", "value") else t[f])
            roi.add_metric([camp], (t["value"] - t["spend"]) / t["spend"] if t["spend"] else 0.0)
        yield from fams.values()
        yield roi
