"""`streambid demo`: one simulated day, everything in one process on the embedded bus.

The in-process exchange sends real OpenRTB request bodies through the real
parser and engine; notices go through the signed URLs; events flow through the
embedded bus into the same attribution, ledger, learner and pacer that the
Faust worker runs on Kafka.  Ends with a ROI table and a spend-vs-plan plot.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bidder.campaigns import Campaign, load_campaigns
from bidder.engine import BidEngine, EngineConfig
from bidder.openrtb import BadRequest, parse_request
from bidder.pacing import SpendPlan
from loadtest.day import DayReport, ExchangeDay
from loadtest.simulator import Market
from models.snapshot import ModelSnapshot
from streams.bus import EmbeddedBus

# The smallest budget slice the embedded granter hands the bidder (micros): overspend stays under one slice.
LEASE_SLICE = 20_000


@dataclass(slots=True)
class DemoRun:
    report: DayReport
    bus: EmbeddedBus
    engine: BidEngine
    campaigns: list[Campaign]


def demo_campaigns_path() -> Path:
    return Path(str(resources.files("loadtest") / "data" / "demo_campaigns.json"))


def run_demo(requests: int = 60_000, seed: int = 7, campaigns_file: Path | None = None, progress: bool = True) -> DemoRun:
    """Simulate one day (today, UTC) with `requests` bid requests."""
    campaigns = load_campaigns(campaigns_file or demo_campaigns_path())
    start = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), dt.UTC).timestamp()
    clock = {"now": start}
    holder: dict[str, Any] = {}
    config = EngineConfig(secret=b"demo-secret", notice_ttl_s=7200, lease_slice=LEASE_SLICE)
    engine = BidEngine(config, campaigns, ModelSnapshot.empty(),
                       sink=lambda kind, key, ev: holder["bus"].emit(kind, key, ev), clock=lambda: clock["now"])
    bus = holder["bus"] = EmbeddedBus(engine)

    def bid(body: bytes, now: float) -> tuple[int, bytes]:
        clock["now"] = now
        try:
            req = parse_request(body)
        except BadRequest:
            return 400, b""
        out = engine.bid(req, "simx", math.inf)
        return out.status, out.body

    def notice(kind: str, query: str, now: float) -> None:
        clock["now"] = now
        engine.notice(kind, query)

    def tick(now: float) -> None:
        clock["now"] = now
        bus.tick(now)

    day = ExchangeDay(Market(seed), campaigns, bid, notice, bus.emit, tick)
    report = day.run(requests, start, progress=progress)
    return DemoRun(report, bus, engine, campaigns)


def roi_rows(run: DemoRun) -> list[dict[str, Any]]:
    """Per-campaign figures from the ledger (what the system counted), beside the simulator's truth."""
    rows = []
    day = dt.datetime.fromtimestamp(time.time(), dt.UTC).date().isoformat()
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
            "roi": (value - spend) / spend if spend else 0.0,
            "max_plan_error_pct": plan_error(camp, sim.curve),
        })
    return rows


def plan_error(camp: Campaign, curve: list[tuple[float, int]]) -> float:
    """Largest gap between cumulative spend and the plan, in % of the daily budget."""
    plan = SpendPlan(hours=camp.hours)
    worst = 0.0
    for frac, spent in curve:
        worst = max(worst, abs(spent - plan.target(frac) * camp.daily_budget) / camp.daily_budget)
    return round(100.0 * worst, 2)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'campaign':<14} {'budget':>8} {'spend':>8} {'spent%':>7} {'imps':>7} {'clicks':>6} {'exp.clk':>7} " \
           f"{'eCPC':>7} {'value':>8} {'ROI':>7} {'plan err%':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ecpc = f"{r['ecpc']:.3f}" if r["ecpc"] is not None else "-"
        lines.append(f"{r['campaign']:<14} {r['budget']:>8.2f} {r['spend']:>8.2f} {r['spend_pct']:>6.1f}% "
                     f"{r['impressions']:>7,} {r['clicks']:>6,} {r['expected_clicks']:>7.1f} {ecpc:>7} "
                     f"{r['value']:>8.2f} {r['roi']:>7.2f} {r['max_plan_error_pct']:>9.2f}")
    return "\n".join(lines)


def plot_day(run: DemoRun, rows: list[dict[str, Any]], path: Path) -> Path:
    """Spend against plan per campaign, and ROI per campaign, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for camp in run.campaigns:
        curve = run.report.campaigns[camp.id].curve
        plan = SpendPlan(hours=camp.hours)
        xs = [i / 96 for i in range(97)]
        line = ax1.plot([x * 24 for x, _ in curve], [s / 1e6 for _, s in curve], label=f"{camp.id} spend")[0]
        ax1.plot([x * 24 for x in xs], [plan.target(x) * camp.daily_budget / 1e6 for x in xs], "--",
                 color=line.get_color(), alpha=0.6, label=f"{camp.id} plan")
    ax1.set_xlabel("hour of day (UTC)")
    ax1.set_ylabel("cumulative spend (USD)")
    ax1.set_title("Spend against plan")
    ax1.legend(fontsize=7)
    ax2.bar([r["campaign"] for r in rows], [r["roi"] for r in rows], color="tab:green")
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_ylabel("ROI = (value - spend) / spend")
    ax2.set_title("ROI per campaign")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
