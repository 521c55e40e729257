"""`streambid demo`: one simulated day, everything in one process on the embedded bus.

The in-process exchange sends real OpenRTB request bodies through the real
parser and engine; notices go through the signed URLs; events flow through the
embedded bus into the same attribution, ledger, learner and pacer that the
Faust worker runs on Kafka.  Ends with a ROI table and a spend-vs-plan plot.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import multiprocessing
import random
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from bidder.campaigns import Campaign, load_campaigns
from bidder.engine import BidEngine, EngineConfig
from bidder.landscape import WinRateModel
from bidder.openrtb import BadRequest, parse_request
from bidder.pacing import PacingState, SpendPlan
from loadtest.day import DAY, DayReport, ExchangeDay
from loadtest.simulator import Market
from models.snapshot import ModelSnapshot
from streams.bus import EmbeddedBus
from streams.ledger import SpendLedger
from streams.processor import Learner, Pacer

FIXED_PCTR = 0.001  # the constant score behind the fixed-bid baseline
# The smallest budget slice the embedded granter hands the bidder (micros): overspend stays under one slice.
LEASE_SLICE = 50_000


STRATEGIES = {
    "paced": "paced (pCTR value, lambda on a traffic-shaped plan)",
    "asap": "as fast as possible (full value, no pacing)",
    "fixed": "fixed bid (yesterday's average CPM, no pacing)",
}


@dataclass(slots=True)
class DemoRun:
    report: DayReport
    bus: EmbeddedBus
    engine: BidEngine
    campaigns: list[Campaign]
    baselines: dict[str, DayReport] = field(default_factory=dict)  # strategy -> the same day under it
    yesterday: DayReport | None = None
    start: float = 0.0  # today's simulated midnight (UTC): the ledger's day of the tables, whenever they are printed


class FlatPacer(Pacer):
    """A baseline's pacing: lambda stays 0 (full value) until the day's budget is spent."""

    def update(self, now: float, ledger: SpendLedger | None) -> list[PacingState]:
        out = []
        for camp in self.campaigns.by_id.values():
            day = self.campaigns.fraction_of_day(camp, now)[0]
            spent = ledger.day_totals(camp.id, day)["spend"] if ledger is not None else 0
            budget = self.budget_today(camp, day, ledger)
            out.append(PacingState(camp.id, day, 0.0, spent, budget, spent >= budget))
        return out


def demo_campaigns_path() -> Path:
    return Path(str(resources.files("loadtest") / "data" / "demo_campaigns.json"))


class _Stack:
    """One bidder engine and its embedded bus on a simulated clock."""

    def __init__(self, campaigns: list[Campaign], learner: Learner | None = None, strategy: str = "paced",
                 seed: int = 0) -> None:
        self.clock = 0.0
        fixed = strategy == "fixed"
        config = EngineConfig(secret=b"demo-secret", notice_ttl_s=7200, lease_slice=LEASE_SLICE)
        if fixed:  # nothing to explore (every candidate scores the same), and one price, never shaded
            config = replace(config, explore_below=0, shade=False)
        model = ModelSnapshot.empty(FIXED_PCTR) if fixed else ModelSnapshot.empty()
        self.engine = BidEngine(config, campaigns, model, sink=self._sink, clock=lambda: self.clock,
                                rng=random.Random(f"{seed}:{strategy}"))  # the same seed plays the same day
        self.bus = EmbeddedBus(self.engine, publish_model=not fixed)
        if learner is not None:
            self.bus.learner = learner
            if not fixed:
                self.engine.set_model(ModelSnapshot.from_bytes(learner.snapshot_bytes()))
        if strategy != "paced":
            self.bus.pacer = FlatPacer(self.bus.campaigns)

    def _sink(self, kind: str, key: str, event: dict[str, Any]) -> None:
        self.bus.emit(kind, key, event)

    def bid(self, body: bytes, now: float) -> tuple[int, bytes]:
        self.clock = now
        try:
            req = parse_request(body)
        except BadRequest:
            return 400, b""
        out = self.engine.bid(req, "simx", math.inf)
        return out.status, out.body

    def notice(self, kind: str, query: str, now: float) -> None:
        self.clock = now
        self.engine.notice(kind, query)

    def tick(self, now: float) -> None:
        self.clock = now
        self.bus.tick(now)

    def play(self, market: Market, campaigns: list[Campaign], requests: int, start: float, label: str,
             progress: bool) -> DayReport:
        day = ExchangeDay(market, campaigns, self.bid, self.notice, self.bus.emit, self.tick, label=label)
        return day.run(requests, start, progress=progress)


def fixed_bid_campaigns(campaigns: list[Campaign], yesterday: DayReport) -> list[Campaign]:
    """Each campaign bidding one CPM all day: what it paid on average yesterday, a price a marketer would pick.

    In the engine's terms a fixed bid is a model that scores every candidate `FIXED_PCTR` and a click worth
    CPM / (1000 x FIXED_PCTR), so that value = pCTR x value per click x 1000 = the CPM.
    """
    out = []
    for camp in campaigns:
        r = yesterday.campaigns[camp.id]
        cpm = r.spend * 1000 // r.impressions if r.impressions else camp.max_bid_cpm
        cpm = max(min(cpm, camp.max_bid_cpm), 1)
        out.append(replace(camp, goal="cpc", value_per_click=round(cpm / (1000 * FIXED_PCTR)), max_bid_cpm=cpm))
    return out


def run_demo(requests: int = 60_000, seed: int = 7, campaigns_file: Path | None = None, progress: bool = True,
             compare: bool = True) -> DemoRun:
    """Simulate yesterday and today (UTC) with `requests` bid requests each; today also under the baselines.

    Yesterday starts from nothing: an empty model, no traffic forecast, a uniform plan.  Today starts from what
    yesterday left: the learned model, the forecast and each campaign's multiplier.  The baselines play today's
    market from the same state (the same learner, the same random market), differing only in how they price.
    """
    campaigns = load_campaigns(campaigns_file or demo_campaigns_path())
    start = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), dt.UTC).timestamp()
    market = Market(seed)
    stack = _Stack(campaigns, seed=seed)
    before = stack.play(market, campaigns, requests, start - DAY, "yesterday", progress)
    # the state today starts from: the market, the learned model and the market prices seen (first-price shading)
    frozen = copy.deepcopy((market, stack.bus.learner, stack.engine.landscapes)) if compare else None
    baselines: dict[str, DayReport] = {}
    if frozen is not None:
        jobs = {name: (frozen, fixed_bid_campaigns(campaigns, before) if name == "fixed" else campaigns, name, requests,
                       start, seed) for name in BASELINES}
        with _pool() as pool:  # the baselines play on the other core while today's paced day plays here
            futures = {name: pool.submit(play_baseline, *job) for name, job in jobs.items()}
            report = stack.play(market, campaigns, requests, start, "today", progress)
            if progress:
                sys.stderr.write("baselines: waiting for the as-fast-as-possible and fixed-bid days...\n")
            baselines = {name: f.result() for name, f in futures.items()}
    else:
        report = stack.play(market, campaigns, requests, start, "today", progress)
    report.plan = lambda cid, frac: stack.bus.pacer.controllers[cid].plan.target(frac)
    return DemoRun(report, stack.bus, stack.engine, campaigns, baselines, before, start)


BASELINES = ("asap", "fixed")


def play_baseline(frozen: tuple[Market, Learner, dict[str, WinRateModel]], campaigns: list[Campaign], name: str,
                  requests: int, start: float, seed: int) -> DayReport:
    """Today under a baseline, from yesterday's market, learner and market prices (a copy: the paced day keeps its own).

    Without yesterday's prices a baseline would bid its first-price auctions unshaded until it had seen enough of
    its own, overpaying at the start of the day where the paced bidder does not.
    """
    market, learner, landscapes = copy.deepcopy(frozen)
    stack = _Stack(campaigns, learner, name, seed)
    stack.engine.landscapes = landscapes
    return stack.play(market, campaigns, requests, start, name, progress=False)


def _pool() -> Executor:
    """Worker processes forked from this one (they inherit the loaded code); in-line where fork is not available."""
    try:
        return ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork"))
    except ValueError:
        return _InlineExecutor()


class _InlineExecutor(Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def roi_rows(run: DemoRun) -> list[dict[str, Any]]:
    """Per-campaign figures of today from the ledger (what the system counted), beside the simulator's truth."""
    rows = []
    day = dt.datetime.fromtimestamp(run.start, dt.UTC).date().isoformat()  # the day played, not the clock's
    for camp in run.campaigns:
        t = run.bus.delivery.ledger.day_totals(camp.id, day)
        sim = run.report.campaigns[camp.id]
        spend, value = t["spend"], t["value"]
        rows.append({
            "campaign": camp.id,
            "budget": camp.daily_budget / 1e6,
            "spend": spend / 1e6,
            "spend_pct": 100.0 * spend / camp.daily_budget if camp.daily_budget else 0.0,
            "impressions": t["billed"],
            "clicks": t["clicks"],
            "expected_clicks": round(sim.expected_clicks, 1),
            "ecpc": spend / t["clicks"] / 1e6 if t["clicks"] else None,
            "value": value / 1e6,
            "roi": (value - spend) / spend if spend else None,  # none without spend: 0 would read as break-even
            "max_plan_error_pct": plan_error(camp, sim.curve, run.report.plan),
        })
    return rows


def plan_error(camp: Campaign, curve: list[tuple[float, int]],
               plan: Callable[[str, float], float] | None = None) -> float:
    """Largest gap between cumulative spend and the plan (the pacer's own, else uniform) over the whole day, in % of
    the daily budget.

    Spend moves only at bills (`curve`: fraction of the day, spend so far), so it is compared with the plan just
    before and just after each bill and at the day's end: a campaign that stops spending, or never starts, shows
    its whole shortfall (measured only at bills, one that never spent scored a perfect 0).
    """
    budget = camp.daily_budget
    if not budget:
        return 0.0
    target = (lambda f: plan(camp.id, f)) if plan is not None else SpendPlan(hours=camp.hours).target
    worst, before = 0.0, 0
    for frac, spent in curve:
        due = target(frac) * budget
        worst = max(worst, abs(before - due), abs(spent - due))
        before = spent
    worst = max(worst, abs(before - target(1.0) * budget))
    return round(100.0 * worst / budget, 2)


def spent_out_at(camp: Campaign, curve: list[tuple[float, int]], share: float = 0.99) -> float | None:
    """Hour of the day when `share` of the budget was spent, or None when it never was."""
    for frac, spent in curve:
        if spent >= share * camp.daily_budget:
            return 24.0 * frac
    return None


def comparison_rows(run: DemoRun) -> list[dict[str, Any]]:
    """Today under each strategy, per campaign: the simulator's account of spend and (expected) clicks."""
    rows = []
    reports = {"paced": run.report, **run.baselines}
    for camp in run.campaigns:
        for name, report in reports.items():
            r = report.campaigns[camp.id]
            out = spent_out_at(camp, r.curve)
            rows.append({
                "campaign": camp.id, "strategy": name,
                "spend_pct": round(100.0 * r.spend / camp.daily_budget, 2) if camp.daily_budget else 0.0,
                "impressions": r.impressions, "clicks": r.clicks, "expected_clicks": round(r.expected_clicks, 1),
                "ecpc_expected": round(r.spend / r.expected_clicks / 1e6, 3) if r.expected_clicks else None,
                "max_plan_gap_pct": plan_error(camp, r.curve, run.report.plan),
                "spent_out_hour": round(out, 1) if out is not None else None,
            })
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    w = _id_width(rows)
    head = (f"{'campaign':<{w}} {'strategy':<7} {'spent%':>7} {'imps':>7} {'clicks':>6} {'exp.clk':>7} "
            f"{'eCPC(exp)':>9} {'plan gap%':>9} {'99% spent at':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ecpc = f"{r['ecpc_expected']:.3f}" if r["ecpc_expected"] is not None else "-"
        out = f"{r['spent_out_hour']:.1f} h" if r["spent_out_hour"] is not None else "never"
        lines.append(f"{r['campaign']:<{w}} {r['strategy']:<7} {r['spend_pct']:>6.1f}% {r['impressions']:>7,} "
                     f"{r['clicks']:>6,} {r['expected_clicks']:>7.1f} {ecpc:>9} {r['max_plan_gap_pct']:>9.2f} {out:>12}")
    return "\n".join(lines)


def _id_width(rows: list[dict[str, Any]], least: int = 14) -> int:
    """The campaign column's width: its longest id, so the figures stay under their headers."""
    return max([least, *(len(r["campaign"]) for r in rows)])


def format_table(rows: list[dict[str, Any]]) -> str:
    w = _id_width(rows)
    head = f"{'campaign':<{w}} {'budget':>8} {'spend':>8} {'spent%':>7} {'imps':>7} {'clicks':>6} {'exp.clk':>7} " \
           f"{'eCPC':>7} {'value':>8} {'ROI':>7} {'plan err%':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ecpc = f"{r['ecpc']:.3f}" if r["ecpc"] is not None else "-"
        roi = f"{r['roi']:.2f}" if r["roi"] is not None else "-"
        lines.append(f"{r['campaign']:<{w}} {r['budget']:>8.2f} {r['spend']:>8.2f} {r['spend_pct']:>6.1f}% "
                     f"{r['impressions']:>7,} {r['clicks']:>6,} {r['expected_clicks']:>7.1f} {ecpc:>7} "
                     f"{r['value']:>8.2f} {roi:>7} {r['max_plan_error_pct']:>9.2f}")
    return "\n".join(lines)


STYLE = {"paced": "-", "asap": ":", "fixed": "-."}


def plot_day(run: DemoRun, rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per campaign (today's spend under each strategy against the plan) and one of ROI, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(run.campaigns) + 1
    cols = min(n, 2)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(6 * cols, 4 * ((n + cols - 1) // cols)), squeeze=False)
    flat = [ax for row in axes for ax in row]
    reports = {"paced": run.report, **run.baselines}
    xs = [i / 96 for i in range(97)]
    for ax, camp in zip(flat, run.campaigns, strict=False):
        budget = camp.daily_budget / 1e6
        ax.plot([x * 24 for x in xs], [run.report.plan(camp.id, x) * budget if run.report.plan else x * budget
                                       for x in xs], "--", color="grey", label="plan (traffic forecast)")
        for name, report in reports.items():
            curve = report.campaigns[camp.id].curve
            ax.plot([0.0] + [f * 24 for f, _ in curve], [0.0] + [s / 1e6 for _, s in curve], STYLE.get(name, "-"),
                    label=STRATEGIES.get(name, name))
        ax.axhline(budget, color="black", linewidth=0.6)
        ax.set_xlim(0, 24)
        ax.set_title(f"{camp.id}: budget {budget:.2f} {camp.currency}")
        ax.set_xlabel("hour of day (UTC)")
        ax.set_ylabel(f"cumulative spend ({camp.currency})")
        ax.legend(fontsize=7, loc="upper left")
    ax = flat[len(run.campaigns)]
    ax.bar([r["campaign"] for r in rows], [r["roi"] or 0.0 for r in rows], color="tab:green")  # no spend: no bar
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("ROI = (value - spend) / spend")
    ax.set_title("ROI per campaign, paced")
    for extra in flat[n:]:
        extra.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
