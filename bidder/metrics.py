"""Bidder metrics: counted in plain Python on the bid path, rendered as Prometheus text off it.

A prometheus_client call costs about a microsecond with its lock; the bid path
instead bumps dict counters and a bucket array (`BidderStats`).

`streambid serve --workers N` runs N processes on one port, and a scrape
reaches whichever of them the kernel picks, so every answer must be the sum
over all of them.  Rendering thousands of per-campaign series takes tens of
milliseconds, which a serving process cannot spend between bids.  So:

- each worker writes its counters and its view of the campaigns to a small
  file once a second (`WorkerPool.publish`: a marshal of the dicts, ~1 ms);
- the supervisor, which otherwise only waits, adds the files up, folds in the
  last counts of workers that died, and renders the text (`PoolRenderer`);
- /metrics in any worker returns that text as it is.

Counters therefore never go down (no false resets in Prometheus) and every
worker answers the same.  A single process (`--workers 1`) renders its own
text when scraped, in slices between bids (`bidder.slices`): a scrape never
holds a bid request for longer than one slice.
"""

from __future__ import annotations

import asyncio
import bisect
import marshal
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bidder.pacing import REGULAR_DAY, DayClock, SpendPlan, day_clock, day_fraction
from bidder.slices import STEP_ITEMS, Steps, drain, run_sliced

# seconds; resolves 0.25 ms to 50 ms
LATENCY_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.1, 0.25)
MAX_EXCHANGES = 64  # distinct exchange labels kept; the rest count as "other"
EXCHANGE_AT = (("requests", 0), ("delivery", 2), ("spend", 1), ("pctr", 1))  # counters keyed by exchange: its place
ALIVE_S = 3.0  # a worker whose counters are older than this is not counted alive
RENDERED = "metrics.prom"
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
EventSink = Callable[[str, str, dict[str, Any]], None]

SUMMED = ("requests", "notices", "delivery", "spend", "pctr", "engine")  # keyed counters in a worker document
DELIVERY = {"bids": ("streambid_bids", "Bids answered"), "wins": ("streambid_wins", "Win notices accepted"),
            "billing": ("streambid_billed", "Billing notices accepted (billed impressions)"),
            "losses": ("streambid_losses", "Loss notices accepted")}
# per-campaign gauges: the order of the tuple in a worker document
CAMPAIGN_GAUGES = (
    ("streambid_campaign_live", "1 while the campaign may bid: active, in flight and dayparting, budget left"),
    ("streambid_campaign_budget_daily", "Daily budget, currency units"),
    ("streambid_campaign_plan_spend_today", "Spend the worker's pacing plan calls for by its last step today (a flat "
     "plan over the allowed hours until one is published), currency units"),
    ("streambid_campaign_spend_today", "Spend today in campaign currency units"),
    ("streambid_campaign_impressions_today", "Billed impressions today"),
    ("streambid_campaign_clicks_today", "Clicks today"),
    ("streambid_campaign_value_today", "Value today (clicks x value per click + conversion value)"),
    ("streambid_campaign_roi_today", "ROI today: (value - spend) / spend, from integer micros; NaN while nothing was "
     "spent (value then has no return to be measured against)"),
    ("streambid_campaign_budget_remaining", "Daily budget left, currency units"),
    ("streambid_campaign_pacing_lambda", "Pacing multiplier lambda (bid = value / (1 + lambda))"),
    ("streambid_campaign_pacing_exhausted", "1 when the streams side reports the daily budget spent"),
    ("streambid_campaign_budget_today", "Today's budget: the daily budget, or less where the lifetime total leaves "
     "less, currency units"),
)


class BidderStats:
    """Counters the bid path updates; cheap enough to touch on every request."""

    def __init__(self, exchanges: Iterable[str] = ()) -> None:
        """`exchanges`: the only exchange labels to keep (`serve --exchanges`); none given, the first 64 seen."""
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # (exchange, outcome, reason)
        self.notices: dict[tuple[str, str], int] = defaultdict(int)  # (kind, outcome)
        self.delivery: dict[tuple[str, str, str], int] = defaultdict(int)  # (event kind, campaign, exchange)
        self.spend: dict[tuple[str, str], int] = defaultdict(int)  # (campaign, exchange): billed cost, micros
        self.pctr: dict[tuple[str, str], float] = defaultdict(float)  # (campaign, exchange): sum of pCTR over bids
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.past_deadline = 0
        self.shed = 0
        self.pool: WorkerPool | None = None
        self.workers = 1
        self.model_swapped = time.time()
        self._model: object = None
        self._pacing_seen: dict[str, tuple[object, float]] = {}
        self.exchanges, self.exchange_cap = exchange_labels(exchanges)  # the labels kept, in the order first seen

    def observe(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def tap(self, sink: EventSink) -> EventSink:
        """Wrap the engine's event sink so bids, wins, bills and losses are counted per campaign and exchange."""
        delivery, spend, pctr = self.delivery, self.spend, self.pctr

        def counted(kind: str, key: str, ev: dict[str, Any]) -> None:
            camp, ex = ev.get("campaign", ""), ev.get("exchange", "")
            delivery[(kind, camp, ex)] += 1
            if kind == "bids":
                pctr[(camp, ex)] += ev.get("pctr", 0.0)
            elif kind == "billing":
                spend[(camp, ex)] += ev.get("cost", 0)
            sink(kind, key, ev)

        return counted

    def fold_exchanges(self, cap: int | None = None) -> None:
        """Keep at most `cap` exchange labels (the first seen); fold the rest into "other".

        Runs once a second on the worker's loop, between requests, so the bid path never pays for it; a scrape in
        between folds its copy the same way (`cap_exchanges`), so none shows more.
        """
        cap_exchanges({"requests": self.requests, "delivery": self.delivery, "spend": self.spend, "pctr": self.pctr},
                      self.exchanges, self.exchange_cap if cap is None else cap)

    def watch(self, engine: Any, now: float) -> None:
        """Note when the engine's model and pacing snapshots were last swapped (they are replaced whole)."""
        if engine.model is not self._model:
            if self._model is not None:
                self.model_swapped = now
            self._model = engine.model
        for cid, state in list(engine.pacing.items()):
            seen = self._pacing_seen.get(cid)
            if seen is None or seen[0] is not state:
                # the pacing age counts from when the worker published the state, so a restarted bidder that reads
                # the compacted topic again does not show it fresh; never from after it arrived (clock skew)
                published = getattr(state, "published_ms", 0) / 1000.0
                self._pacing_seen[cid] = (state, min(published, now) if published > 0 else now)


def exchange_labels(allowed: Iterable[str] = ()) -> tuple[dict[str, None], int]:
    """The exchange labels kept from the start, and how many may be kept: an allow-list is all of them (every other
    name counts as "other"); without one, names join as they come, up to MAX_EXCHANGES."""
    kept = dict.fromkeys(allowed)
    return kept, len(kept) or MAX_EXCHANGES


def cap_exchanges(doc: dict[str, Any], kept: dict[str, None], cap: int = MAX_EXCHANGES) -> None:
    """Fold the exchange labels of `doc`'s keyed counters that are not in `kept` into "other", in place.

    Names join `kept` in the order they appear until it holds `cap`; a name that joined stays, so no label later
    moves into "other" and no counter goes down.  Applied to what is exposed (one process's counters, or the sum of
    a server's processes and of those that died), it bounds every scrape, not only each process's own counters.
    A name whose requests were all refused as malformed (outcome "error") takes a place only while half of them are
    free: an exchange debugging its integration still sees its errors by name, and a scanner posting junk to
    /bid/<anything> cannot take the places of the exchanges to come.
    """
    for name, pos in EXCHANGE_AT:
        counts = doc.get(name)
        if not counts:
            continue
        if len(kept) < cap:
            for key in list(counts):
                ex = key[pos]
                if ex not in kept and ex != "other" and (name != "requests" or key[1] != "error" or len(kept) < cap // 2):
                    if len(kept) >= cap:
                        break
                    kept[ex] = None
        _fold(counts, pos, kept)


def _fold(counts: dict, pos: int, keep: dict[str, None] | set[str]) -> None:
    for key in [k for k in counts if k[pos] not in keep and k[pos] != "other"]:
        n = counts.pop(key)
        other = key[:pos] + ("other",) + key[pos + 1:]
        counts[other] = counts.get(other, 0) + n


# -- the per-process document ---------------------------------------------------------------------------


def worker_doc(stats: BidderStats, engine: Any, now: float) -> dict[str, Any]:
    """This process's counters and its view of the campaigns: plain values only (marshal-able)."""
    return drain(worker_doc_steps(stats, engine, now))


def worker_doc_steps(stats: BidderStats, engine: Any, now: float) -> Steps[dict[str, Any]]:
    """`worker_doc` in steps: the counters are copied at once (C-level dict copies, consistent with each other),
    the per-campaign view a few hundred campaigns at a time."""
    stats.watch(engine, now)
    doc = {
        "pid": os.getpid(), "ts": now,
        "requests": dict(stats.requests), "notices": dict(stats.notices), "delivery": dict(stats.delivery),
        "spend": dict(stats.spend), "pctr": dict(stats.pctr), "engine": dict(getattr(engine, "counters", {})),
        "latency": list(stats.latency), "latency_sum": stats.latency_sum, "past_deadline": stats.past_deadline,
        "shed": stats.shed,
        "lease": {cid: (lease.granted_micros, lease.spent_micros, lease.reserved_micros)
                  for cid, lease in list(getattr(engine, "leases", {}).items())},
        "model": (getattr(engine.model, "version", 0), stats.model_swapped),
        "pacing_seen": {cid: ts for cid, (_, ts) in stats._pacing_seen.items()},
    }
    yield
    doc["campaigns"] = yield from campaign_gauges_steps(engine)
    return doc


def campaign_gauges(engine: Any) -> dict[str, tuple]:
    """Per campaign, in CAMPAIGN_GAUGES order: config, plan and the delivery last published on the pacing topic.

    Days and plans follow the engine's clock (simulated under a time warp).
    """
    return drain(campaign_gauges_steps(engine))


def campaign_gauges_steps(engine: Any, step: int = STEP_ITEMS) -> Steps[dict[str, tuple]]:
    """`campaign_gauges`, pausing after every `step` campaigns."""
    sim = engine.clock()
    live = engine.live()
    out = {}
    zones: dict[str, tuple[str, float, int]] = {}  # time zone -> day_fraction now: thousands of campaigns share a few
    for i, (cid, camp) in enumerate(list(engine.index.campaigns.items()), 1):
        if not i % step:
            yield
        now = zones.get(camp.timezone)
        if now is None:
            now = zones[camp.timezone] = day_fraction(camp.timezone, sim)
        day, frac, _ = now
        budget = camp.daily_budget
        p = engine.pacing.get(cid)
        today = p is not None and p.day == day
        spend = p.spent_today if today else 0
        value = p.value_today if today else 0
        # today's budget as published (0 once the lifetime budget is spent: every spent micro is then overspend)
        budget_today = p.budget_today if today and p.budget_today is not None else budget
        # the plan the worker's pacer follows (traffic-shaped), published with today's state; else the flat plan
        share = p.plan_share if today and p.plan_share is not None else plan_fraction(camp.hours, frac,
                                                                                       day_clock(camp.timezone, day))
        out[cid] = (1 if cid in live else 0, budget / 1e6, share * budget_today / 1e6, spend / 1e6,
                    p.impressions_today if today else 0, p.clicks_today if today else 0, value / 1e6,
                    (value - spend) / spend if spend else math.nan, max(budget_today - spend, 0) / 1e6,
                    p.lam if p is not None else 0.0, 1 if today and p.exhausted else 0, budget_today / 1e6)
    return out


_PLANS: dict[tuple[frozenset[int], DayClock], SpendPlan] = {}


def plan_fraction(hours: frozenset[int], fraction_of_day: float, clock: DayClock = REGULAR_DAY) -> float:
    """The flat plan (uniform over the allowed hours): fraction of the daily budget due by this time of day.

    `clock` gives the day's wall-clock hours (a 23- or 25-hour day on a clock change; see `day_clock`).
    Shown until the worker publishes the plan its pacer follows with today's pacing state (`PacingState.plan_share`).
    """
    plan = _PLANS.get((hours, clock))
    if plan is None:
        if len(_PLANS) >= 256:
            _PLANS.clear()
        plan = _PLANS[(hours, clock)] = SpendPlan(hours=hours, clock=clock)
    return plan.target(fraction_of_day)


def merge(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up several workers' documents.

    Counters and leases (each process holds its own) are summed; the campaign view comes from the freshest
    document; the model is the oldest any worker scores with, and pacing the least recently received.
    """
    out: dict[str, Any] = {k: defaultdict(int) for k in SUMMED}
    out.update(latency=[0] * (len(LATENCY_BUCKETS) + 1), latency_sum=0.0, past_deadline=0, shed=0, campaigns={},
               lease=defaultdict(lambda: [0, 0, 0]), model=None, pacing_seen={}, ts=0.0)
    for doc in sorted(docs, key=lambda d: d.get("ts", 0.0)):
        for name in SUMMED:
            acc = out[name]
            for key, n in doc.get(name, {}).items():
                acc[key] += n
        lat = doc.get("latency") or []
        if len(lat) == len(out["latency"]):
            out["latency"] = [a + b for a, b in zip(out["latency"], lat, strict=True)]
        out["latency_sum"] += doc.get("latency_sum", 0.0)
        out["past_deadline"] += doc.get("past_deadline", 0)
        out["shed"] += doc.get("shed", 0)
        for cid, (g, s, r) in doc.get("lease", {}).items():
            acc = out["lease"][cid]
            acc[0], acc[1], acc[2] = acc[0] + g, acc[1] + s, acc[2] + r
        out["campaigns"].update(doc.get("campaigns", {}))
        if doc.get("model") is not None:
            version, swapped = doc["model"]
            out["model"] = (version, swapped) if out["model"] is None else (min(out["model"][0], version),
                                                                            min(out["model"][1], swapped))
        for cid, ts in doc.get("pacing_seen", {}).items():
            out["pacing_seen"][cid] = min(ts, out["pacing_seen"].get(cid, ts))
        out["ts"] = max(out["ts"], doc.get("ts", 0.0))
    return out


def counters_only(doc: dict[str, Any]) -> dict[str, Any]:
    """What outlives a dead worker: its counters, not its view of leases, campaigns or the model."""
    keep = (*SUMMED, "latency", "latency_sum", "past_deadline", "shed")
    return {k: (dict(doc[k]) if isinstance(doc[k], dict) else doc[k]) for k in keep if k in doc}


# -- metric families -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Family:
    """One metric family, independent of how it is written out."""

    name: str  # counters without the _total suffix
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    buckets: list[tuple[str, float]] = field(default_factory=list)  # histogram: (le, cumulative count)
    total: float = 0.0  # histogram sum


def families(m: dict[str, Any], now: float, alive: int, configured: int) -> list[Family]:
    """Every bidder metric from a merged document."""
    return drain(families_steps(m, now, alive, configured))


def families_steps(m: dict[str, Any], now: float, alive: int, configured: int) -> Steps[list[Family]]:
    """`families`, pausing between the large ones and within the per-campaign counters."""
    fams = [
        Family("streambid_bid_requests", "counter", "Bid requests by exchange, outcome (bid, nobid, error) and reason",
               ("exchange", "outcome", "reason"), [(k, n) for k, n in m["requests"].items()]),
        Family("streambid_notices", "counter", "Win/billing/loss notices by outcome", ("kind", "outcome"),
               [(k, n) for k, n in m["notices"].items()]),
    ]
    buckets, acc = [], 0
    for bound, n in zip(LATENCY_BUCKETS + (math.inf,), m["latency"], strict=True):
        acc += n
        buckets.append(("+Inf" if bound == math.inf else repr(bound), acc))
    fams.append(Family("streambid_bid_latency_seconds", "histogram", "Time from a bid request's arrival to its "
                       "answer (bids and no-bids, load sheds included; not 400s)",
                       buckets=buckets, total=m["latency_sum"]))
    fams.append(Family("streambid_answers_past_deadline", "counter", "Answers (bids and no-bids) written after the "
                       "request deadline",
                       samples=[((), m["past_deadline"])]))
    fams.append(Family("streambid_load_shed", "counter", "Requests answered 204 at once because the worker was overloaded",
                       samples=[((), m["shed"])]))
    per_kind: dict[str, list] = {kind: [] for kind in DELIVERY}
    for i, ((kind, camp, ex), n) in enumerate(list(m["delivery"].items()), 1):
        if not i % STEP_ITEMS:
            yield
        if kind in per_kind:
            per_kind[kind].append(((camp, ex), n))
    for kind, (name, doc) in DELIVERY.items():
        fams.append(Family(name, "counter", f"{doc}, per campaign and exchange", ("campaign", "exchange"), per_kind[kind]))
    yield
    fams.append(Family("streambid_billed_spend", "counter", "Cost of the billing notices accepted, currency units",
                       ("campaign", "exchange"), [(k, micros / 1e6) for k, micros in m["spend"].items()]))
    fams.append(Family("streambid_bids_pctr", "counter", "Sum of the predicted CTR of the bids answered (divide by bids "
                       "for the mean)", ("campaign", "exchange"), [(k, v) for k, v in m["pctr"].items()]))
    restricted: list[tuple[tuple[str, ...], float]] = []
    capped: list[tuple[tuple[str, ...], float]] = []
    for key, n in m["engine"].items():
        kind, _, what = key.partition(":")
        if kind == "restricted":
            restricted.append(((what,), n))
        elif kind == "frequency_cap":
            capped.append(((what,), n))
    fams.append(Family("streambid_privacy_restricted_requests", "counter", "Requests without usable user data (COPPA, "
                       "GDPR without consent, US opt-out, Do Not Track), by reason", ("reason",), restricted))
    fams.append(Family("streambid_frequency_capped", "counter", "Candidate bids dropped by the campaign's frequency cap "
                       "(or for want of a user id to keep it)", ("campaign",), capped))
    fams.append(Family("streambid_bidder_workers_alive", "gauge", "Serving processes that shared their counters in the "
                       "last 3 s", samples=[((), alive)]))
    fams.append(Family("streambid_bidder_workers_configured", "gauge", "Serving processes this server runs (--workers)",
                       samples=[((), configured)]))
    version, swapped = m["model"] or (0, now)
    fams.append(Family("streambid_model_version", "gauge", "Version of the CTR model snapshot the bidder scores with "
                       "(the oldest among its processes)", samples=[((), version)]))
    fams.append(Family("streambid_bidder_model_age_seconds", "gauge", "Seconds since the bidder last swapped in a new "
                       "model snapshot or started (the oldest among its processes)", samples=[((), now - swapped)]))
    fams.append(Family("streambid_lease_granted", "gauge", "Budget leased to this server today, currency units",
                       ("campaign",), [((cid,), g / 1e6) for cid, (g, _, _) in m["lease"].items()]))
    fams.append(Family("streambid_lease_remaining", "gauge", "Leased budget not yet spent or reserved by in-flight bids, "
                       "currency units", ("campaign",), [((cid,), (g - s - r) / 1e6) for cid, (g, s, r) in m["lease"].items()]))
    camps = m["campaigns"]
    for i, (name, doc) in enumerate(CAMPAIGN_GAUGES):
        yield
        fams.append(Family(name, "gauge", doc, ("campaign",), [((cid, ), vals[i]) for cid, vals in camps.items()]))
    fams.append(Family("streambid_campaign_pacing_age_seconds", "gauge", "Seconds since the worker published the "
                       "campaign's pacing state the bidder holds (since it arrived, if the state has no publication "
                       "time; the oldest among its processes)", ("campaign",),
                       [((cid,), now - ts) for cid, ts in m["pacing_seen"].items()]))
    return fams


_ESCAPED: dict[object, str] = {}  # label value -> as written: campaign and exchange ids repeat from scrape to scrape
MAX_ESCAPED = 200_000


def _label(value: object) -> str:
    """A label value escaped for the text format (backslash, newline, double quote)."""
    text = _ESCAPED.get(value)
    if text is None:
        if len(_ESCAPED) >= MAX_ESCAPED:
            _ESCAPED.clear()
        text = _ESCAPED[value] = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return text


def _number(v: float) -> str:
    if type(v) is int:
        return str(v)
    if v - v == 0:  # finite
        return repr(v)
    if v != v:
        return "NaN"
    return "+Inf" if v > 0 else "-Inf"


def render(fams: list[Family]) -> bytes:
    """The Prometheus text exposition format (0.0.4)."""
    return drain(render_steps(fams))


def render_steps(fams: list[Family], step: int = STEP_ITEMS) -> Steps[bytes]:
    """`render`, pausing every `step` series.  The one- and two-label families (nearly all series) are written
    by a template per family, each label value escaped once per process."""
    parts: list[str] = []
    for f in fams:
        name = f.name + "_total" if f.kind == "counter" else f.name
        parts.append(f"# HELP {name} {f.help}\n# TYPE {name} {f.kind}\n")
        if f.kind == "histogram":
            parts.extend(f'{name}_bucket{{le="{le}"}} {_number(n)}\n' for le, n in f.buckets)
            parts.append(f"{name}_count {_number(f.buckets[-1][1])}\n{name}_sum {_number(f.total)}\n")
            continue
        samples, labels = f.samples, f.labels
        if not labels:
            parts.extend(f"{name} {_number(v)}\n" for _, v in samples)
            continue
        for i in range(0, len(samples), step):
            parts.append(_series(name, labels, samples[i:i + step]))
            yield
    return "".join(parts).encode()


def _series(name: str, labels: tuple[str, ...], samples: list[tuple[tuple[str, ...], float]]) -> str:
    if len(labels) == 1:
        head = f'{name}{{{labels[0]}="'
        return "".join([f'{head}{_label(x[0])}"}} {_number(v)}\n' for x, v in samples])
    if len(labels) == 2:
        head, mid = f'{name}{{{labels[0]}="', f'",{labels[1]}="'
        return "".join([f'{head}{_label(x[0])}{mid}{_label(x[1])}"}} {_number(v)}\n' for x, v in samples])
    heads = [f'{k}="' for k in labels]
    return "".join([f"{name}{{" + '",'.join([h + _label(x) for h, x in zip(heads, xs, strict=True)]) + f'"}} {_number(v)}\n'
                    for xs, v in samples])


def exposition(stats: BidderStats, engine: Any) -> bytes:
    """What GET /metrics answers: the pool's text when there is one, else this process rendered now."""
    return drain(exposition_steps(stats, engine))


def exposition_steps(stats: BidderStats, engine: Any) -> Steps[bytes]:
    """`exposition` in steps, for a serving process to render between bids (`bidder.slices.run_sliced`)."""
    if stats.pool is not None:
        text = stats.pool.rendered()
        if text is not None:
            return text
    now = time.time()
    doc = yield from own_doc_steps(stats, engine, now)
    fams = yield from families_steps(doc, now, 1, stats.workers)
    return (yield from render_steps(fams))


def own_doc(stats: BidderStats, engine: Any, now: float) -> dict[str, Any]:
    """This process alone, as exposed: its exchange labels capped now, not only at the next once-a-second fold."""
    return drain(own_doc_steps(stats, engine, now))


def own_doc_steps(stats: BidderStats, engine: Any, now: float) -> Steps[dict[str, Any]]:
    doc = yield from worker_doc_steps(stats, engine, now)  # its counters are copies: capped in place
    cap_exchanges(doc, stats.exchanges, stats.exchange_cap)
    return doc


class BidderCollector(Collector):
    """The same families for a prometheus_client registry (this process only)."""

    def __init__(self, stats: BidderStats, engine: Any, worker: str = "0") -> None:
        self.stats = stats
        self.engine = engine
        self.worker = worker

    def collect(self) -> Iterator:
        now = time.time()
        for f in families(own_doc(self.stats, self.engine, now), now, 1, self.stats.workers):
            if f.kind == "histogram":
                h = HistogramMetricFamily(f.name, f.help)
                h.add_metric([], f.buckets, f.total)
                yield h
                continue
            fam = (CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily)(f.name, f.help, labels=list(f.labels))
            for values, v in f.samples:
                fam.add_metric([str(x) for x in values], v)
            yield fam


# -- sharing between the processes of one server ----------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return marshal.loads(path.read_bytes())
    except (FileNotFoundError, EOFError, ValueError, TypeError):
        return None


class WorkerPool:
    """A serving process's side of the pool directory: publish its document, read the rendered text."""

    def __init__(self, root: Path, pid: int | None = None) -> None:
        self.root = root
        self.pid = pid or os.getpid()

    def publish(self, doc: dict[str, Any]) -> None:
        self.write(self.encode(doc))

    @staticmethod
    def encode(doc: dict[str, Any]) -> bytes:
        # marshal: about a millisecond even for thousands of series; written and read by the same interpreter,
        # in a directory only this server's processes can write (mkdtemp, mode 0700)
        return marshal.dumps(doc)

    def write(self, data: bytes) -> None:
        _write(self.root / f"w-{self.pid}.bin", data)

    def rendered(self) -> bytes | None:
        try:
            return (self.root / RENDERED).read_bytes()
        except FileNotFoundError:
            return None


class PoolRenderer:
    """The supervisor's side: adds up the workers' documents and renders /metrics for all of them, once a second."""

    def __init__(self, root: Path, workers: int, interval: float = 1.0, max_share: float = 0.1,
                 exchanges: Iterable[str] = ()) -> None:
        self.root = root
        self.workers = workers
        self.interval = interval
        self.max_share = max_share  # of one core: with very many series, render less often than once a second
        self.retired: dict[str, Any] = {}
        self.exchanges, self.exchange_cap = exchange_labels(exchanges)  # over all workers, living and retired
        self._next = 0.0

    def tick(self, pids: Iterable[int], now: float | None = None) -> None:
        """Render when it is time; `pids` are the workers running now."""
        now = time.time() if now is None else now
        if now >= self._next:
            started = time.perf_counter()
            self.render(pids, now)
            self._next = now + max(self.interval, (time.perf_counter() - started) / self.max_share)

    def render(self, pids: Iterable[int], now: float | None = None) -> bytes:
        now = time.time() if now is None else now
        docs = [d for d in (_load(self.root / f"w-{pid}.bin") for pid in pids) if d is not None]
        alive = sum(1 for d in docs if now - d.get("ts", 0.0) <= ALIVE_S)
        merged = merge([self.retired, *docs])
        cap_exchanges(merged, self.exchanges, self.exchange_cap)  # each worker keeps 64: together, N x 64
        text = render(families(merged, now, alive, self.workers))
        _write(self.root / RENDERED, text)
        return text

    def retire(self, pid: int | None) -> None:
        """A worker died: keep its last counts for good, so the sums never go down."""
        if pid is None:
            return
        path = self.root / f"w-{pid}.bin"
        doc = _load(path)
        if doc is not None:
            merged = merge([self.retired, doc])
            cap_exchanges(merged, self.exchanges, self.exchange_cap)  # or each restart would add a worker's labels
            self.retired = counters_only(merged)
        path.unlink(missing_ok=True)


def make_pool_dir() -> Path:
    """A fresh directory for one `streambid serve` run's workers (removed again by remove_pool_dir)."""
    return Path(tempfile.mkdtemp(prefix="streambid-metrics-"))


def remove_pool_dir(root: Path | None) -> None:
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def start_publishing(stats: BidderStats, engine: Any, pool_dir: Path | None, workers: int) -> asyncio.Task:
    """For a serving process: share its counters through `pool_dir` (None: a single process renders its own)."""
    stats.workers = workers
    stats.pool = WorkerPool(pool_dir) if pool_dir is not None else None
    return asyncio.ensure_future(publish_loop(stats, engine))


async def publish_loop(stats: BidderStats, engine: Any, interval: float = 1.0) -> None:
    """Once a second: fold excess exchange labels, note snapshot swaps, share this worker's counters.

    The document is taken on the loop in slices between bids (`bidder.slices`: the per-campaign view of
    thousands of campaigns takes tens of milliseconds) and encoded there (marshal, about a millisecond); the
    file is written from a thread, so the disk never holds up a bid.
    """
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        stats.fold_exchanges()
        pool = stats.pool
        if pool is not None:
            doc = await run_sliced(worker_doc_steps(stats, engine, now))
            await loop.run_in_executor(None, pool.write, pool.encode(doc))
        else:
            stats.watch(engine, now)
