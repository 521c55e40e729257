"""Metrics as Prometheus would read them: per-campaign business counters, the multi-process sum, worker health."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple
from urllib.parse import urlsplit

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.forecast import TrafficForecast
from bidder.metrics import (
    MAX_EXCHANGES,
    BidderCollector,
    BidderStats,
    Family,
    PoolRenderer,
    WorkerPool,
    plan_fraction,
    render,
    worker_doc,
)
from bidder.pacing import PacingState
from bidder.server import BidApp
from bidder.wiring import _pacing_state
from models.learner import CTRLearner
from models.snapshot import ModelSnapshot
from streams.app import pacing_doc
from streams.processor import Campaigns, Learner, Pacer
from streams.worker_metrics import WorkerStats, consumer_lag
from tests.conftest import ROOT
from tests.helpers import body, campaign, request

NOW = 1_780_000_000.0  # inside the helper campaign's flight


def parse(text: bytes) -> dict[tuple[str, frozenset], float]:
    """Exposition text parsed back by prometheus_client: (sample name, labels) -> value."""
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(app_or_registry: BidApp | CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    """What GET /metrics answers (a BidApp), or a registry's rendering."""
    if isinstance(app_or_registry, BidApp):
        raw = app_or_registry.metrics()
        head, _, text = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in head
        return parse(text)
    return parse(generate_latest(app_or_registry))


def comparable(samples: dict) -> dict:
    """Samples with NaN (an ROI with no spend) as a string, so that two scrapes compare equal."""
    return {k: "NaN" if v != v else v for k, v in samples.items()}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def make_app(camps: list[dict] | None = None, events: list | None = None,
             exchanges: tuple[str, ...] = ()) -> tuple[BidApp, BidEngine]:
    stats = BidderStats(exchanges)
    sink = stats.tap(lambda k, key, ev: events.append((k, ev)) if events is not None else None)
    eng = BidEngine(EngineConfig(secret=b"s", explore_below=0), [parse_campaign(c) for c in camps or [campaign()]],
                    ModelSnapshot.empty(), sink=sink, clock=lambda: NOW)
    return BidApp(eng, stats), eng


def answer(app: BidApp, doc: dict, exchange: str = "ex1") -> bytes:
    return app.bid(body(doc), False, exchange, time.perf_counter())


def first_bid(raw: bytes) -> dict:
    return orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["seatbid"][0]["bid"][0]


def test_bids_wins_bills_and_spend_are_counted_per_campaign_and_exchange() -> None:
    events: list = []
    app, _ = make_app(events=events)
    bids = [first_bid(answer(app, request(id=f"r{i}"), "ex1")) for i in range(3)]
    first_bid(answer(app, request(id="other"), "ex2"))
    for b, price in zip(bids[:2], ("1.5", "1.25"), strict=True):
        assert app.notice("win", urlsplit(b["nurl"]).query.replace("${AUCTION_PRICE}", price)).startswith(b"HTTP/1.1 200")
        assert app.notice("bill", urlsplit(b["burl"]).query.replace("${AUCTION_PRICE}", price)).startswith(b"HTTP/1.1 200")
    assert app.notice("bill", urlsplit(bids[0]["burl"]).query.replace("${AUCTION_PRICE}", "1.5")).startswith(b"HTTP/1.1 400")
    m = scrape(app)
    assert value(m, "streambid_bids_total", campaign="c1", exchange="ex1") == 3
    assert value(m, "streambid_bids_total", campaign="c1", exchange="ex2") == 1
    assert value(m, "streambid_wins_total", campaign="c1", exchange="ex1") == 2
    assert value(m, "streambid_billed_total", campaign="c1", exchange="ex1") == 2  # the replay was refused
    costs = [ev["cost"] for k, ev in events if k == "billing"]
    assert costs == [1500, 1250]
    assert value(m, "streambid_billed_spend_total", campaign="c1", exchange="ex1") == sum(costs) / 1e6
    pctr = sum(ev["pctr"] for k, ev in events if k == "bids" and ev["exchange"] == "ex1")
    assert value(m, "streambid_bids_pctr_total", campaign="c1", exchange="ex1") == pctr
    assert value(m, "streambid_bid_requests_total", exchange="ex1", outcome="bid", reason="") == 3
    assert value(m, "streambid_notices_total", kind="bill", outcome="replayed") == 1
    assert value(m, "streambid_bid_latency_seconds_count") == 4


def test_privacy_restricted_and_frequency_capped_requests_are_counted() -> None:
    app, _ = make_app([campaign(id="capped", frequency_cap={"per_day": 3}), campaign(id="open")])
    answer(app, request(regs={"coppa": 1}))
    answer(app, request(regs={"gdpr": 1}))
    answer(app, request(user={}))  # no user id: the capped campaign cannot keep its cap
    m = scrape(app)
    assert value(m, "streambid_privacy_restricted_requests_total", reason="coppa") == 1
    assert value(m, "streambid_privacy_restricted_requests_total", reason="gdpr") == 1
    assert value(m, "streambid_frequency_capped_total", campaign="capped") == 3
    assert ("streambid_frequency_capped_total", frozenset({("campaign", "open")})) not in m


def test_todays_budget_is_what_the_lifetime_total_leaves_and_roi_needs_spend() -> None:
    """The overspend alert reads today's budget: against the daily one, 5x a day's budget the total cut to 10 read
    as 20% spent.  A click after midnight on yesterday's impression is value without spend: no ROI, not 0%."""
    app, eng = make_app([campaign(id="c1", budget={"daily": 250.0, "total": 7500.0})])
    today = dt.datetime.fromtimestamp(NOW, dt.UTC).date().isoformat()
    eng.set_pacing(PacingState("c1", today, spent_today=50_000_000, budget_today=10_000_000, exhausted=True))
    m = scrape(app)
    assert value(m, "streambid_campaign_budget_daily", campaign="c1") == 250.0
    assert value(m, "streambid_campaign_budget_today", campaign="c1") == 10.0
    eng.set_pacing(PacingState("c1", today, spent_today=0, budget_today=250_000_000, value_today=10_000_000))
    assert math.isnan(value(scrape(app), "streambid_campaign_roi_today", campaign="c1"))
    # the lifetime total spent before today: today's budget is 0, and whatever is spent today is overspend
    eng.set_pacing(PacingState("c1", today, spent_today=40_000_000, budget_today=0, exhausted=True))
    m = scrape(app)
    assert value(m, "streambid_campaign_budget_today", campaign="c1") == 0.0
    assert value(m, "streambid_campaign_budget_remaining", campaign="c1") == 0.0
    assert value(m, "streambid_campaign_plan_spend_today", campaign="c1") == 0.0
    eng.set_pacing(PacingState("c1", today, spent_today=40_000_000))  # no budget published: the daily one
    assert value(scrape(app), "streambid_campaign_budget_today", campaign="c1") == 250.0


def test_campaign_gauges_show_todays_pacing_state_and_the_plan() -> None:
    app, eng = make_app([campaign(id="c1", budget={"daily": 80.0, "total": 0})])
    today = dt.datetime.fromtimestamp(NOW, dt.UTC).date().isoformat()
    eng.set_pacing(PacingState("c1", today, lam=0.5, spent_today=3_000_000, budget_today=80_000_000,
                               impressions_today=7, clicks_today=2, value_today=4_500_000))
    m = scrape(app)
    assert value(m, "streambid_campaign_roi_today", campaign="c1") == (4_500_000 - 3_000_000) / 3_000_000
    assert value(m, "streambid_campaign_spend_today", campaign="c1") == 3.0
    assert value(m, "streambid_campaign_budget_remaining", campaign="c1") == 77.0
    assert value(m, "streambid_campaign_pacing_lambda", campaign="c1") == 0.5
    assert value(m, "streambid_campaign_live", campaign="c1") == 1
    frac = (NOW % 86400) / 86400
    assert math.isclose(value(m, "streambid_campaign_plan_spend_today", campaign="c1"), frac * 80.0, rel_tol=1e-9)
    assert value(m, "streambid_campaign_budget_today", campaign="c1") == 80.0
    # a state from yesterday says nothing about today's spend
    eng.set_pacing(PacingState("c1", "2000-01-01", lam=0.5, spent_today=3_000_000, budget_today=80_000_000))
    m = scrape(app)
    assert value(m, "streambid_campaign_spend_today", campaign="c1") == 0
    assert value(m, "streambid_campaign_budget_remaining", campaign="c1") == 80.0


# requests per UTC hour of a day: quiet at night, busiest in the evening
EVENING_HEAVY = (0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.7, 1, 1, 1, 1, 1.1, 1.1, 1, 1, 1.2, 1.5, 2, 2.5, 2.5, 2, 1.2, 0.5)


def test_the_plan_gauge_is_the_plan_the_workers_pacer_follows() -> None:
    """The worker paces along a traffic-shaped plan; the gauge showed a flat one (a quarter of the budget away at
    times), so StreambidCampaignPacingOffPlan measured spend against a plan no pacer followed."""
    app, eng = make_app([campaign(id="c1", budget={"daily": 80.0, "total": 0})])
    today = dt.datetime.fromtimestamp(NOW, dt.UTC).date().isoformat()
    forecast = TrafficForecast()
    yesterday = (int(NOW) // 86400 - 1) * 86400
    for hour, rate in enumerate(EVENING_HEAVY):
        forecast.observe(yesterday + hour * 3600 + 10, rate * 1000)
    campaigns = Campaigns()
    campaigns.by_id.update(eng.index.campaigns)
    pacer = Pacer(campaigns, forecast)
    # no ledger: a pacer without one paces on no spend (Pacer.update checks for None, though its annotation does not)
    [state] = pacer.update(NOW, None)
    frac = (NOW % 86400) / 86400
    assert state.plan_share == 0.0  # a pacer that starts mid-day owes nothing of what was planned before it
    [state] = pacer.update(NOW + 3600, None)
    assert state.plan_share is not None
    plan = forecast.plan("UTC", today, frozenset(), NOW)
    p0, p1 = plan.target(frac), plan.target(frac + 1 / 24)
    assert math.isclose(state.plan_share, (p1 - p0) / (1 - p0), rel_tol=1e-9)  # the rest of the plan, from its start
    assert abs(state.plan_share - plan_fraction(frozenset(), frac + 1 / 24)) > 0.05  # the flat plan is another one
    eng.set_pacing(_pacing_state(orjson.loads(orjson.dumps(pacing_doc(state)))))  # as a bidder reads the topic
    m = scrape(app)
    assert math.isclose(value(m, "streambid_campaign_plan_spend_today", campaign="c1"), state.plan_share * 80.0,
                        rel_tol=1e-9)
    # a state of another day says nothing of today's plan: the flat one is shown
    eng.set_pacing(PacingState("c1", "2000-01-01", plan_share=0.99, budget_today=80_000_000))
    assert math.isclose(value(scrape(app), "streambid_campaign_plan_spend_today", campaign="c1"), frac * 80.0,
                        rel_tol=1e-9)


GOOD_PACING = {"campaign": "c1", "day": "2026-05-28", "lam": 0.5, "spent_today": 0, "budget_today": 1_000_000,
               "exhausted": False}


def test_a_pacing_message_carries_its_plan_and_publication_time() -> None:
    state = _pacing_state({**GOOD_PACING, "plan_share": 0.25, "ts": 1_780_000_000_123})
    assert state.plan_share == 0.25 and state.published_ms == 1_780_000_000_123
    older = _pacing_state(GOOD_PACING)  # from a worker that sent neither
    assert older.plan_share is None and older.published_ms == 0


@pytest.mark.parametrize("change", [{"plan_share": 1.5}, {"plan_share": -0.1}, {"plan_share": math.nan},
                                    {"plan_share": math.inf}, {"plan_share": "0.5"}, {"plan_share": True},
                                    {"ts": -1}, {"ts": "1780000000000"}, {"ts": 1.5e12}, {"ts": None}])
def test_a_pacing_message_with_a_bad_plan_or_time_is_refused(change: dict) -> None:
    with pytest.raises(ValueError):
        _pacing_state({**GOOD_PACING, **change})


def test_pacing_age_counts_from_when_the_worker_published_the_state() -> None:
    """A restarted bidder reads the compacted pacing topic again: the age of a state a stopped worker published
    ten minutes ago started over from zero, and StreambidPacingStale went quiet."""
    today = dt.datetime.fromtimestamp(NOW, dt.UTC).date().isoformat()
    app, eng = make_app()
    eng.set_pacing(_pacing_state({**GOOD_PACING, "day": today, "ts": int((time.time() - 600) * 1000)}))
    assert 600 <= value(scrape(app), "streambid_campaign_pacing_age_seconds", campaign="c1") < 660
    # without a publication time (in-process), or with one ahead of this clock: from when it arrived
    for published_ms in (0, int((time.time() + 3600) * 1000)):
        app, eng = make_app()
        eng.set_pacing(PacingState("c1", today, published_ms=published_ms))
        assert 0 <= value(scrape(app), "streambid_campaign_pacing_age_seconds", campaign="c1") < 60


def test_plan_follows_dayparting() -> None:
    hours = frozenset({12, 13})
    assert plan_fraction(hours, 11.9 / 24) == 0.0
    assert math.isclose(plan_fraction(hours, 13 / 24), 0.5)
    assert plan_fraction(hours, 14.5 / 24) == 1.0


def pool_app(root: Path, pid: int) -> BidApp:
    app, _ = make_app()
    app.stats.pool = WorkerPool(root, pid=pid)
    app.stats.workers = 3
    return app


def publish(app: BidApp, now: float | None = None) -> None:
    """What each worker's once-a-second loop does."""
    assert app.stats.pool is not None
    app.stats.pool.publish(worker_doc(app.stats, app.engine, time.time() if now is None else now))


def requests_total(samples: dict) -> float:
    return sum(v for (name, _), v in samples.items() if name == "streambid_bid_requests_total")


def test_any_worker_answers_for_all_of_them(tmp_path: Path) -> None:
    apps = [pool_app(tmp_path, pid) for pid in (101, 102, 103)]
    for n, app in enumerate(apps, start=1):
        for i in range(n):
            answer(app, request(id=f"{n}-{i}"))
        publish(app)
    PoolRenderer(tmp_path, workers=3).render([101, 102, 103])
    answers = [scrape(app) for app in apps]
    assert comparable(answers[0]) == comparable(answers[1]) == comparable(answers[2])
    m = answers[0]
    assert requests_total(m) == 6
    assert value(m, "streambid_bids_total", campaign="c1", exchange="ex1") == 6
    assert value(m, "streambid_bidder_workers_alive") == 3
    assert value(m, "streambid_bidder_workers_configured") == 3
    assert value(m, "streambid_bid_latency_seconds_count") == 6
    assert value(m, "streambid_campaign_budget_daily", campaign="c1") == 100.0


def test_a_dead_workers_counts_are_kept_and_the_sum_never_goes_down(tmp_path: Path) -> None:
    a, b = pool_app(tmp_path, 301), pool_app(tmp_path, 302)
    renderer = PoolRenderer(tmp_path, workers=2)
    seen = []
    for i in range(3):
        answer(a, request(id=f"a{i}"))
        answer(b, request(id=f"b{i}"))
        publish(a)
        publish(b)
        renderer.render([301, 302])
        seen.append(requests_total(scrape(a)))
    renderer.retire(302)  # the supervisor saw it die; a new worker takes its place
    renderer.retire(302)  # a second report changes nothing
    c = pool_app(tmp_path, 303)
    answer(c, request(id="c"))
    publish(c)
    renderer.render([301, 303])
    m = scrape(c)
    seen.append(requests_total(m))
    assert seen == [2, 4, 6, 7]
    assert not (tmp_path / "w-302.bin").exists()
    assert value(m, "streambid_bidder_workers_alive") == 2
    assert value(m, "streambid_bids_total", campaign="c1", exchange="ex1") == 7
    assert value(m, "streambid_bid_latency_seconds_count") == 7


def test_a_worker_that_stopped_publishing_is_not_alive(tmp_path: Path) -> None:
    a, b = pool_app(tmp_path, 401), pool_app(tmp_path, 402)
    publish(a)
    publish(b, now=time.time() - 60)
    PoolRenderer(tmp_path, workers=2).render([401, 402])
    assert value(scrape(a), "streambid_bidder_workers_alive") == 1


def test_renderer_ticks_once_a_second(tmp_path: Path) -> None:
    a = pool_app(tmp_path, 501)
    publish(a)
    renderer = PoolRenderer(tmp_path, workers=1)
    renderer.tick([501], now=1000.0)
    first = (tmp_path / "metrics.prom").stat().st_mtime_ns
    answer(a, request(id="later"))
    publish(a)
    renderer.tick([501], now=1000.5)
    assert (tmp_path / "metrics.prom").stat().st_mtime_ns == first
    renderer.tick([501], now=1001.0)
    assert requests_total(scrape(a)) == 1


def test_the_fast_text_is_what_prometheus_client_would_write() -> None:
    app, eng = make_app()
    for i in range(3):
        answer(app, request(id=f"r{i}"), exchange="ex1")
    answer(app, request(id="bad", imp=[]), exchange="ex2")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BidderCollector(app.stats, eng))
    ours, theirs = scrape(app), scrape(registry)
    ages = {k for k in ours if k[0].endswith("_age_seconds")}
    assert len(ours) >= 40
    assert comparable({k: v for k, v in ours.items() if k not in ages}) == comparable(
        {k: v for k, v in theirs.items() if k not in ages})


def test_label_values_are_escaped() -> None:
    odd = 'a"b\\c\nd'
    text = render([Family("x", "counter", "help", ("l",), [((odd,), 2)]), Family("y", "gauge", "h", (), [((), math.nan)])])
    m = parse(text)
    assert m[("x_total", frozenset({("l", odd)}))] == 2 and math.isnan(m[("y", frozenset())])


def test_exchange_labels_are_capped_and_nothing_is_lost() -> None:
    app, _ = make_app()
    n = MAX_EXCHANGES + 40
    for i in range(n):
        answer(app, request(id=f"r{i}"), exchange=f"ex{i}")
    app.stats.fold_exchanges()
    m = scrape(app)
    exchanges = {dict(labels)["exchange"] for (name, labels) in m if name == "streambid_bid_requests_total"}
    assert len(exchanges) == MAX_EXCHANGES + 1 and "other" in exchanges and "ex0" in exchanges
    assert value(m, "streambid_bid_requests_total", exchange="other", outcome="bid", reason="") == 40
    assert sum(v for (name, _), v in m.items() if name == "streambid_bids_total") == n


def test_junk_posted_to_made_up_exchange_names_takes_half_the_labels_at_most() -> None:
    """A scanner posting junk to /bid/<anything> took the 64 places for good: real exchanges then showed as other."""
    app, _ = make_app()
    for i in range(MAX_EXCHANGES + 6):
        assert app.bid(b"junk", False, f"junk{i}", time.perf_counter()).startswith(b"HTTP/1.1 400")
    app.stats.fold_exchanges()
    for i in range(MAX_EXCHANGES // 2):
        answer(app, request(id=f"real-{i}"), exchange=f"real{i}")
    m = scrape(app)
    half = {f"junk{i}" for i in range(MAX_EXCHANGES // 2)}
    assert exchanges(m) == {"other"} | half | {f"real{i}" for i in range(MAX_EXCHANGES // 2)}
    assert value(m, "streambid_bid_requests_total", exchange="other", outcome="error", reason="bad_json") == (
        MAX_EXCHANGES + 6 - len(half))
    app.stats.fold_exchanges()
    assert by_exchange(scrape(app)) == by_exchange(m)


def test_an_exchange_allow_list_names_those_exchanges_only_in_every_scrape_and_over_all_workers(tmp_path: Path) -> None:
    """`serve --exchanges adx,openx`: no client can add a label, valid requests or not."""
    app, _ = make_app(exchanges=("adx", "openx"))
    answer(app, request(id="r1"), exchange="adx")
    for i in range(5):
        answer(app, request(id=f"x{i}"), exchange=f"made-up{i}")
    app.bid(b"junk", False, "junk", time.perf_counter())
    m = scrape(app)  # before the once-a-second fold too
    assert exchanges(m) == {"adx", "other"} and requests_total(m) == 7
    app.stats.fold_exchanges()
    assert exchanges(scrape(app)) == {"adx", "other"}
    renderer = PoolRenderer(tmp_path, workers=2, exchanges=("adx", "openx"))
    for pid, name in ((801, "openx"), (802, "elsewhere")):
        worker = pool_app(tmp_path, pid)
        answer(worker, request(id=f"p{pid}"), exchange=name)
        publish(worker)
    text = renderer.render([801, 802]).decode()
    assert 'exchange="openx"' in text and 'exchange="other"' in text and "elsewhere" not in text


def exchanges(samples: dict) -> set[str]:
    return {dict(labels)["exchange"] for (name, labels) in samples if name == "streambid_bid_requests_total"}


def by_exchange(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if k[0] in ("streambid_bid_requests_total", "streambid_bids_total")}


def test_a_scrape_between_two_folds_shows_no_more_exchanges_than_the_cap() -> None:
    """The fold ran once a second: a scrape in between showed every name sent meanwhile (thousands)."""
    app, _ = make_app()
    n = MAX_EXCHANGES + 40
    for i in range(n):
        answer(app, request(id=f"r{i}"), exchange=f"ex{i}")
    m = scrape(app)  # before the once-a-second fold
    assert exchanges(m) == {f"ex{i}" for i in range(MAX_EXCHANGES)} | {"other"}
    assert requests_total(m) == n
    app.stats.fold_exchanges()
    assert by_exchange(scrape(app)) == by_exchange(m)  # the fold keeps what the scrape showed


def test_the_exchange_cap_holds_over_all_workers_and_their_restarts(tmp_path: Path) -> None:
    """Each process kept its own 64: N of them showed up to N x 64, and each restart added a dead one's for good."""
    renderer = PoolRenderer(tmp_path, workers=2)

    def worker(pid: int, prefix: str) -> BidApp:
        app = pool_app(tmp_path, pid)
        for i in range(MAX_EXCHANGES):
            answer(app, request(id=f"{pid}-{i}"), exchange=f"{prefix}{i}")
        app.stats.fold_exchanges()  # as publish_loop does before publishing
        publish(app)
        return app

    a, _ = worker(701, "a"), worker(702, "b")
    renderer.render([701, 702])
    before = scrape(a)
    assert len(exchanges(before)) == MAX_EXCHANGES + 1 and requests_total(before) == 2 * MAX_EXCHANGES
    live = 701
    for n, pid in enumerate((703, 704, 705), start=1):  # the second worker dies and is replaced, three times
        renderer.retire(702 if n == 1 else pid - 1)
        worker(pid, f"w{pid}-")
        renderer.render([live, pid])
        m = scrape(a)
        assert len(exchanges(m)) == MAX_EXCHANGES + 1 and requests_total(m) == (2 + n) * MAX_EXCHANGES
        assert all(m.get(k, 0) >= v for k, v in by_exchange(before).items()), "a counter went down"
        before = m
    assert len(renderer.retired["requests"]) <= MAX_EXCHANGES + 1  # what the dead left behind is capped too


def test_the_readme_documents_every_metric() -> None:
    """Each metric a bidder or worker exports has a row in the README's metrics tables (`_x` abbreviates a name
    sharing the row's first name but for its last two words)."""
    section = (ROOT / "README.md").read_text().split("\n### Metrics\n", 1)[1].split("\n### ", 1)[0]
    documented = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            names = re.findall(r"`(_?[a-z_]+)`", row.split("|")[1])
            prefix = "_".join(names[0].split("_")[:-2])
            documented |= {name if name.startswith("streambid_") else prefix + name for name in names}
    app, _ = make_app()
    worker = WorkerStats()
    worker.windows_close_at, worker.checkpoint["written"] = 0, {"at": time.time(), "bytes": 1}  # shown once they exist
    registry = CollectorRegistry(auto_describe=False)
    registry.register(worker)
    exported = set()
    for text in (app.metrics().split(b"\r\n\r\n", 1)[1], generate_latest(registry)):
        for fam in text_string_to_metric_families(text.decode()):
            exported.add(fam.name + ("_total" if fam.type == "counter" else ""))
    assert len(exported) > 50
    assert exported - documented == set(), "metrics missing from README.md's metrics tables"


# -- worker ------------------------------------------------------------------------------------------------


def example(i: int) -> dict:
    return {"features": [i % 7, 100 + i % 3], "label": int(i % 5 == 0), "campaign": "c1" if i % 2 else "c2",
            "creative": "r"}


def test_progressive_logloss_scores_each_example_before_learning_it() -> None:
    stats, learner = WorkerStats(window=50), Learner()
    stats.bind(None, learner, SimpleNamespace(by_id={"c1": None, "quiet": None}), {})
    shadow = CTRLearner()
    losses, predicted = [], {"c1": 0.0, "c2": 0.0}
    for i in range(80):
        ev = example(i)
        p = shadow.predict_one(ev["features"], ev["campaign"], ev["creative"])
        shadow.learn_one(ev["features"], bool(ev["label"]), ev["campaign"], ev["creative"])
        losses.append(-math.log(p if ev["label"] else 1 - p))
        predicted[ev["campaign"]] += p
        stats.before_learn(ev)
        learner.learn(ev)
    snap = stats.refresh()
    assert snap.window == 50
    assert math.isclose(snap.logloss, sum(losses[-50:]) / 50, rel_tol=1e-9)
    assert snap.window_ctr == sum(example(i)["label"] for i in range(30, 80)) / 50
    reg = CollectorRegistry(auto_describe=False)
    reg.register(stats)
    m = scrape(reg)
    assert math.isclose(value(m, "streambid_learner_predicted_clicks_total", campaign="c1"), predicted["c1"], rel_tol=1e-9)
    assert value(m, "streambid_learner_examples_total", campaign="c2", label="1") == sum(
        1 for i in range(80) if i % 2 == 0 and i % 5 == 0)
    # a known campaign without examples yet is exported at 0, so its first example shows as an increase
    assert value(m, "streambid_learner_examples_total", campaign="quiet", label="0") == 0
    assert value(m, "streambid_learner_predicted_clicks_total", campaign="quiet") == 0


def test_click_windows_behind_is_shown_only_while_the_worker_owns_partitions() -> None:
    stats = WorkerStats()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(stats)
    assert "streambid_learner_logloss" in {name for name, _ in scrape(reg)}
    assert "streambid_click_windows_behind_seconds" not in {name for name, _ in scrape(reg)}  # nothing owned
    stats.windows_close_at = int((time.time() - 600) * 1000)
    assert 600 <= value(scrape(reg), "streambid_click_windows_behind_seconds") < 660
    stats.windows_close_at = int((time.time() + 5) * 1000)  # event times a little ahead of this machine's clock
    assert value(scrape(reg), "streambid_click_windows_behind_seconds") == 0


def test_campaign_counters_and_roi_come_from_the_ledger_totals() -> None:
    stats = WorkerStats()
    totals = {"c1|2026-01-01": {"spend": 1_000_000, "billed": 10, "impressions": 9, "clicks": 2, "conversions": 0,
                                "value": 5_000_000, "wins": 11, "losses": 3},
              "c1|2026-01-02": {"spend": 2_000_001, "billed": 20, "clicks": 1, "value": 2_500_000, "wins": 21},
              "c2|2026-01-02": {"spend": 0, "wins": 1}}
    stats.bind(SimpleNamespace(outcomes={"clicks:late": 2, "any:orphan": 1}), None, None, totals)
    stats.refresh()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(stats)
    m = scrape(reg)
    assert value(m, "streambid_campaign_spend_total", campaign="c1") == 3_000_001 / 1e6
    assert value(m, "streambid_campaign_impressions_total", campaign="c1") == 30
    assert value(m, "streambid_campaign_rendered_total", campaign="c1") == 9
    assert value(m, "streambid_campaign_conversions_total", campaign="c2") == 0  # present at 0: increase() sees the first
    assert value(m, "streambid_campaign_roi", campaign="c1") == (7_500_000 - 3_000_001) / 3_000_001
    assert math.isnan(value(m, "streambid_campaign_roi", campaign="c2"))  # nothing spent: no return, not break-even
    assert value(m, "streambid_attribution_total", kind="clicks", outcome="late") == 2
    assert value(m, "streambid_attribution_total", kind="any", outcome="orphan") == 1


def test_the_checkpoint_age_grows_from_the_start_until_a_checkpoint_is_written() -> None:
    """Absent until the first write, the age could not raise StreambidLearnerCheckpointStale for a worker that never
    manages to write one."""
    stats = WorkerStats()
    stats.started -= 2000  # a worker up for 2,000 s that never wrote a checkpoint
    stats.bind(SimpleNamespace(outcomes={}), None, None, {})
    stats.refresh()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(stats)
    m = scrape(reg)
    assert value(m, "streambid_learner_checkpoint_age_seconds") >= 2000
    assert ("streambid_learner_checkpoint_bytes", frozenset()) not in m
    stats.checkpoint["written"] = {"id": 1, "bytes": 512, "offsets": {}, "at": time.time() - 5}
    m = scrape(reg)
    assert 5 <= value(m, "streambid_learner_checkpoint_age_seconds") < 60
    assert value(m, "streambid_learner_checkpoint_bytes") == 512


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    """The three things consumer_lag reads from a Faust consumer."""

    def __init__(self, high: dict, committed: dict) -> None:
        self.high, self._committed_offset = high, committed

    def assignment(self) -> set:
        return set(self.high)

    def highwater(self, tp):
        if tp.topic == "revoked":
            raise AssertionError("Partition is not assigned")
        return self.high[tp]


def test_consumer_lag_is_high_watermark_minus_committed() -> None:
    high = {TP("t", 0): 120, TP("t", 1): 40, TP("new", 0): 9, TP("revoked", 0): 5}
    committed = {TP("t", 0): 100, TP("t", 1): 40, TP("revoked", 0): 1}  # ("new", 0): nothing committed yet
    assert consumer_lag(FakeConsumer(high, committed)) == {("t", 0): 20, ("t", 1): 0}
    assert consumer_lag(SimpleNamespace()) == {}  # a consumer that is not started yet


def test_the_flat_plan_gauge_follows_the_wall_clock_on_days_the_clocks_change() -> None:
    """Dayparted 9-17 in New York: half the budget is due at 13:00 local on the 23- and 25-hour days too."""
    from zoneinfo import ZoneInfo

    from bidder.pacing import day_clock, day_fraction

    for day in ("2026-03-08", "2026-11-01", "2026-06-01"):
        t = dt.datetime.fromisoformat(f"{day}T13:00").replace(tzinfo=ZoneInfo("America/New_York")).timestamp()
        _, frac, _ = day_fraction("America/New_York", t)
        share = plan_fraction(frozenset(range(9, 17)), frac, day_clock("America/New_York", day))
        assert math.isclose(share, 0.5, abs_tol=1e-9), day
