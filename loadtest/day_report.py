"""What a simulated day on the real stack came to: per campaign figures, invariants, a spend-against-plan plot.

Two views meet here.  The worker's ledger (what the system counted: spend,
billed impressions, clicks, conversions, value) and the simulator's truth
(what it billed, the true expected clicks of what was shown, the hindsight
optimum).  The invariants compare them:

- ledger: the ledger's spend equals, to the micro, the sum of the billing
  notices the bidder accepted, and it counted every billed impression, click
  and conversion the simulator sent exactly once;
- budget: spend <= daily budget + bound.  The bidders bid on budget leases,
  which keep spend within the budget by themselves; this is the looser check
  that holds with leases off too, where a campaign stops when the pacing topic
  tells the bidders it is exhausted (billing -> Kafka -> worker ledger ->
  pacing step -> pacing topic -> every bidder).  The bound is what could be bought before the
  bidders knew: the billed cost of the impressions in flight when the
  simulator's billing reached the budget, plus those won until the pacing
  topic said `exhausted` (the runner follows that topic like the bidders do)
  and a grace for a bidder to act on it.  A bidder that keeps winning after
  that breaks the bound.  How long the worker took to say so is reported as
  `exhausted_after_s`: a timing, not an invariant.  When it never said so
  during the day, every impression after the budget counts as not yet known
  and the campaign is marked `told: false`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidder.campaigns import Campaign
from bidder.pacing import SpendPlan
from loadtest.day import DAY, CampaignDay
from loadtest.demo import plan_error
from loadtest.hindsight import Optimum, regret


@dataclass(slots=True)
class DayOutcome:
    """Everything the report needs, gathered by the runner."""

    campaigns: list[Campaign]
    sim: dict[str, CampaignDay]  # the simulator's truth per campaign
    ledger: dict[str, dict[str, int]]  # the worker's totals per campaign (money in micros)
    billed_ok: dict[str, int]  # micros of billing notices the bidder accepted, per campaign
    bills_ok: dict[str, int]  # how many billing notices the bidder accepted, per campaign
    optimum: dict[str, Optimum]
    start: float  # simulated midnight, unix seconds
    speedup: float
    grace_s: float  # wall seconds a bidder may take to act on `exhausted`
    run: dict[str, Any]  # counters and timings of the run
    exhausted_at: dict[str, float] = field(default_factory=dict)  # when the pacing topic first said exhausted (sim)


def budget_reached(budget: int, day: CampaignDay, start: float) -> float | None:
    """When the simulator's billing first reached `budget` (simulated unix seconds), or None."""
    return next((start + frac * DAY for frac, spent in day.curve if spent >= budget), None)


def overspend_bound(day: CampaignDay, cross: float | None, told: float | None) -> int:
    """Micros billed for impressions in flight at `cross` or won before `told` (all of them after `cross` if None).

    `told` is when the bidders may be taken to know the campaign is exhausted, grace included.  Billing
    notices that were never sent do not count.
    """
    if cross is None:
        return 0
    until = math.inf if told is None else told
    return sum(cost for won, billed, cost in day.won if billed >= cross and won <= until)


def campaign_rows(o: DayOutcome) -> list[dict[str, Any]]:
    """One row per campaign: the ledger's figures beside the simulator's truth and the hindsight optimum."""
    rows = []
    for camp in o.campaigns:
        sim, led, opt = o.sim[camp.id], o.ledger.get(camp.id, {}), o.optimum[camp.id]
        spend, clicks, value = led.get("spend", 0), led.get("clicks", 0), led.get("value", 0)
        cross = budget_reached(camp.daily_budget, sim, o.start)
        exhausted = o.exhausted_at.get(camp.id)
        bound = overspend_bound(sim, cross, exhausted + o.grace_s * o.speedup if exhausted is not None else None)
        last_win = max((won for won, _, _ in sim.won if won >= cross), default=None) if cross is not None else None
        overspend = max(spend - camp.daily_budget, 0)
        rows.append({
            "campaign": camp.id,
            "goal": f"{camp.goal} {camp.value_per_click / 1e6:g}/click",
            "budget": camp.daily_budget / 1e6,
            "spend": spend / 1e6,
            "spend_pct": 100.0 * spend / camp.daily_budget if camp.daily_budget else 0.0,
            "plan_error_pct": plan_error(camp, sim.curve) if camp.daily_budget else 0.0,
            "impressions": led.get("billed", 0),
            "clicks": clicks,
            "conversions": led.get("conversions", 0),
            "expected_clicks": round(sim.expected_clicks, 3),
            "optimal_clicks": round(opt.expected_clicks, 3),
            "regret": regret(sim.expected_clicks, opt.expected_clicks),
            "ecpc": spend / clicks / 1e6 if clicks else None,
            "value": value / 1e6,
            "roi": (value - spend) / spend if spend else None,  # none without spend: 0 would read as break-even
            "bids": sim.bids,
            "wins": sim.wins,
            "spend_micros": spend,
            "billed_micros": o.billed_ok.get(camp.id, 0),
            "ledger_matches_billed": spend == o.billed_ok.get(camp.id, 0),
            "sim_billed_micros": sim.spend,
            "ledger_counts_match": (led.get("billed", 0), clicks, led.get("conversions", 0))
            == (o.bills_ok.get(camp.id, 0), sim.clicks, sim.conversions),
            "overspend_micros": overspend,
            "overspend_bound_micros": bound,
            "within_budget": overspend <= bound,
            "told": cross is None or exhausted is not None,
            "budget_reached_at_h": round((cross - o.start) / 3600, 3) if cross is not None else None,
            # wall seconds from the billing reaching the budget to the pacing topic saying so, and to the last win
            "exhausted_after_s": round((exhausted - cross) / o.speedup, 3) if cross is not None and exhausted else None,
            "stopped_after_s": round((last_win - cross) / o.speedup, 3) if cross is not None and last_win is not None else None,
        })
    return rows


def invariants(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's pass/fail checks, with the campaigns that broke each."""
    return {
        "ledger_equals_billed": all(r["ledger_matches_billed"] for r in rows),
        "ledger_mismatch": [r["campaign"] for r in rows if not r["ledger_matches_billed"]],
        "counted_once": all(r["ledger_counts_match"] for r in rows),
        "count_mismatch": [r["campaign"] for r in rows if not r["ledger_counts_match"]],
        "no_overspend": all(r["within_budget"] for r in rows),
        "overspent": [r["campaign"] for r in rows if not r["within_budget"]],
        "regret_in_0_1": all(0.0 <= r["regret"] <= 1.0 for r in rows),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    w = max([18, *(len(r["campaign"]) for r in rows)])
    head = (f"{'campaign':<{w}} {'budget':>7} {'spend':>7} {'spent':>6} {'plan err':>8} {'imps':>6} {'clicks':>6} "
            f"{'conv':>4} {'exp.clk':>7} {'opt.clk':>7} {'regret':>6} {'eCPC':>6} {'ROI':>6} {'over':>6} {'bound':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ecpc = f"{r['ecpc']:.2f}" if r["ecpc"] is not None else "-"
        roi = f"{r['roi']:.2f}" if r["roi"] is not None else "-"
        lines.append(
            f"{r['campaign']:<{w}} {r['budget']:>7.2f} {r['spend']:>7.2f} {r['spend_pct']:>5.1f}% {r['plan_error_pct']:>7.1f}% "
            f"{r['impressions']:>6,} {r['clicks']:>6,} {r['conversions']:>4,} {r['expected_clicks']:>7.2f} "
            f"{r['optimal_clicks']:>7.2f} {r['regret']:>6.2f} {ecpc:>6} {roi:>6} "
            f"{r['overspend_micros'] / 1e6:>6.3f} {r['overspend_bound_micros'] / 1e6:>6.3f}")
    return "\n".join(lines)


def format_invariants(rows: list[dict[str, Any]], checks: dict[str, Any], grace_s: float) -> str:
    n = len(rows)
    billed = sum(r["billed_micros"] for r in rows)
    sent = sum(r["sim_billed_micros"] for r in rows)
    spent = sum(r["spend_micros"] for r in rows)
    ok = {True: "ok  ", False: "FAIL"}
    return "\n".join([
        f"{ok[checks['ledger_equals_billed']]} ledger spend == billing notices accepted by the bidder, exact micros "
        f"({spent:,} == {billed:,}; the simulator sent {sent:,}; {n - len(checks['ledger_mismatch'])}/{n} campaigns)",
        f"{ok[checks['counted_once']]} ledger billed impressions, clicks and conversions == what the simulator sent "
        f"({n - len(checks['count_mismatch'])}/{n} campaigns)",
        f"{ok[checks['no_overspend']]} spend <= daily budget + bound (billed cost of what was in flight when the budget was "
        f"reached + won before the pacing topic said exhausted + {grace_s:g} s wall; {n - len(checks['overspent'])}/{n} "
        f"campaigns; {sum(not r['told'] for r in rows)} not told during the day)",
        f"{ok[checks['regret_in_0_1']]} regret in [0, 1] against the hindsight optimum (fractional knapsack on true CTR / price)",
    ])


def format_feedback(rows: list[dict[str, Any]]) -> str:
    """For each campaign that reached its budget: when, and how long pacing took to stop it (wall seconds)."""
    lines = []
    for r in rows:
        if r["budget_reached_at_h"] is None:
            continue
        exhausted = f"{r['exhausted_after_s']:.2f} s" if r["exhausted_after_s"] is not None else "never during the day"
        stopped = f"{r['stopped_after_s']:.2f} s" if r["stopped_after_s"] is not None else "no win after"
        lines.append(f"{r['campaign']}: budget reached at {r['budget_reached_at_h']:.2f} h simulated; pacing topic said "
                     f"exhausted after {exhausted}, last win after {stopped} (wall)")
    return "\n".join(lines) or "no campaign reached its budget"


def plot_spend(o: DayOutcome, rows: list[dict[str, Any]], path: Path) -> Path:
    """Cumulative spend against plan per campaign (% of budget), and expected clicks against the hindsight optimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    xs = [i / 96 for i in range(97)]
    for camp in o.campaigns:
        if not camp.daily_budget:
            continue
        curve = o.sim[camp.id].curve
        plan = SpendPlan(hours=camp.hours)
        line = ax1.plot([x * 24 for x, _ in curve], [100 * s / camp.daily_budget for _, s in curve], label=camp.id)[0]
        ax1.plot([x * 24 for x in xs], [100 * plan.target(x) for x in xs], "--", color=line.get_color(), alpha=0.5)
    ax1.axhline(100, color="black", linewidth=0.8)
    ax1.set_xlabel("simulated hour of day (UTC)")
    ax1.set_ylabel("cumulative spend, % of daily budget")
    ax1.set_title(f"Spend (solid) against plan (dashed), speedup {o.speedup:g}x")
    ax1.set_xlim(0, 24)
    ax1.legend(fontsize=7)
    names = [r["campaign"].rsplit("-", 1)[0] for r in rows]
    pos = range(len(rows))
    ax2.bar([p - 0.2 for p in pos], [r["expected_clicks"] for r in rows], width=0.4, label="ours (true expected)")
    ax2.bar([p + 0.2 for p in pos], [r["optimal_clicks"] for r in rows], width=0.4, label="hindsight optimum")
    ax2.set_xticks(list(pos), names, rotation=20, fontsize=8)
    ax2.set_ylabel("expected clicks")
    ax2.set_title("Expected clicks against the hindsight optimum")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
