"""`streambid bench stages`: where a served bid's CPU goes, stage by stage, against the speed floor.

A profile of one worker shares its samples among a dozen functions and says
little about what the ratio to the floor server could become.  This bench
serves, one after the other on the same pinned core, the floor server, the
bidder cut short after each stage of the bid path (`loadtest.stage_server`)
and the whole bidder, saturates each in closed loop, and reads its CPU per
answer.  The difference between neighbours is what a stage costs as served
(HTTP, kernel and cache misses included); the ratio of the floor's CPU per
answer to a row's is the ratio that row would reach with all of its core.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.bench_bidder import (
    DEFAULT_BIDDER_CMD,
    GENERATOR_CORE,
    SERVER_CORE,
    TARGET_RATIO,
    BenchError,
    bench_files,
    bench_start,
    floor_argv,
    measure_each,
    reliability_warnings,
    saturate,
)
from loadtest.stage_server import CUT_REASON, STAGES

ROWS = {  # name -> what that server does on top of the row above it
    "floor": "floor server: HTTP + JSON, nothing else",
    "parse": "HTTP, checks and the OpenRTB parse",
    "match": "+ privacy, seats, campaign index",
    "decide": "+ score, price, budget checks",
    "bidder": "+ the answer: notice URLs, bid event",
}
MIN_CUT_SHARE = 0.5  # a stage server whose answers are mostly not cut is not running the cut engine


def stage_argv(stage: str, campaigns: Path, model: Path) -> Callable[[int], list[str]]:
    """The bidder's own command line, run through the stage server (see `DEFAULT_BIDDER_CMD`)."""
    serve = shlex.split(DEFAULT_BIDDER_CMD.format(port="{port}", campaigns=campaigns, model=model))[2:]  # after "serve"
    return lambda port: [sys.executable, "-m", "loadtest.stage_server", "--stage", stage,
                         *(str(port) if a == "{port}" else a for a in serve)]


def bench_stages(
    *,
    duration: float = 6.0,
    campaigns: int = 1000,
    floor: Path | None = None,
    path: str = "/bid/bench",
    connections: int = 64,
    tmax_ms: int = 100,
    seed: int = 1,
    out: Path = Path("out"),
) -> dict[str, Any]:
    """Measure every row of `ROWS` and return the result document (see `format_stages`)."""
    load_at_start, floor, bodies = bench_start(floor, out, seed, tmax_ms)
    with bench_files(campaigns, seed, out) as (work, camp_file, model_file):
        servers = [("floor", floor_argv(floor))]
        servers += [(stage, stage_argv(stage, camp_file, model_file)) for stage in STAGES]
        servers.append(("bidder", lambda port: shlex.split(DEFAULT_BIDDER_CMD.format(
            port=port, campaigns=camp_file, model=model_file))))

        def measure(server: Any, base: str) -> dict[str, Any]:
            sat = saturate(server, base + path, bodies, duration, connections, tmax_ms)
            return {"name": server.name, "command": shlex.join(server.argv), "saturation": sat}

        rows = measure_each(servers, work, measure)
    for row in rows:
        _check_cut(row)
    result = {
        "machine": {"cpus": os.cpu_count(), "server_core": SERVER_CORE, "generator_core": GENERATOR_CORE},
        "duration_s": duration,
        "connections": connections,
        "tmax_ms": tmax_ms,
        "campaigns": campaigns,
        "rows": with_shares(rows),
        "warnings": reliability_warnings(rows, load_at_start),
    }
    floor_cpu = rows[0]["saturation"]["cpu_us_per_answer"]
    result["budget_us"] = round(floor_cpu / TARGET_RATIO, 1) if floor_cpu else None
    result["png"] = str(write_stages_png(result, out / "bench-stages.png"))
    return result


def _check_cut(row: dict[str, Any]) -> None:
    """A stage row must come from a server that cut its bids: else its figures measure something else."""
    if row["name"] not in STAGES:
        return
    sat = row["saturation"]
    answered = sum(sat["statuses"].values())
    cut = sat["nobid_reasons"].get(CUT_REASON, 0)
    if answered and cut < MIN_CUT_SHARE * answered:
        raise BenchError(f"the {row['name']} stage server cut only {cut:,} of {answered:,} bids (statuses "
                         f"{sat['statuses']}, reasons {sat['nobid_reasons']}); see its log for what it ran")


def with_shares(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add to each row the CPU it adds to the row above (`added_us`) and the floor's CPU over its own (`ratio`)."""
    floor_cpu = rows[0]["saturation"]["cpu_us_per_answer"]
    previous = None
    for row in rows:
        cpu = row["saturation"]["cpu_us_per_answer"]
        row["cpu_us"] = cpu
        row["added_us"] = round(cpu - previous, 1) if cpu is not None and previous is not None else None
        row["ratio"] = round(floor_cpu / cpu, 3) if floor_cpu and cpu else None
        previous = cpu
    return rows


def format_stages(result: dict[str, Any]) -> str:
    """The rows as a table, then the CPU per answer the ratio target leaves."""
    head = f"{'server':<8}{'does':<40}{'req/s':>9}{'CPU/answer':>13}{'this stage':>12}{'ratio':>8}"
    lines = [
        f"bench stages: server on core {SERVER_CORE}, generator on core {GENERATOR_CORE}; closed loop, "
        f"{result['connections']} connections, {result['campaigns']} campaigns, {result['duration_s']:g} s each",
        "ratio: the floor's CPU per answer over the row's (what the row would reach with all of its core)",
        "",
        head,
        "-" * len(head),
    ]
    for row in result["rows"]:
        sat = row["saturation"]
        cpu = f"{row['cpu_us']:,.1f} µs" if row["cpu_us"] is not None else "-"
        added = f"+{row['added_us']:,.1f} µs" if row.get("added_us") is not None else ""
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        lines.append(f"{row['name']:<8}{ROWS.get(row['name'], ''):<40}{sat['closed_loop_rps']:>9,}{cpu:>13}"
                     f"{added:>12}{ratio:>8}")
    budget = result.get("budget_us")
    if budget:
        within = [r["name"] for r in result["rows"][1:] if r["cpu_us"] is not None and r["cpu_us"] <= budget]
        reach = f"the rows within it: {', '.join(within)}" if within else "no row of the bidder is within it"
        lines += ["", f"a ratio of {TARGET_RATIO} leaves {budget:,.1f} µs of CPU per answer; {reach}"]
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    if result.get("png"):
        lines += ["", f"plot: {result['png']}"]
    return "\n".join(lines)


def write_stages_png(result: dict[str, Any], path: Path) -> Path:
    """CPU per answer by row as bars, with the line a ratio of TARGET_RATIO allows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["cpu_us"] is not None]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [r["name"] for r in rows]
    cpu = [r["cpu_us"] for r in rows]
    bars = ax.bar(names, cpu, color=["0.6"] + ["tab:blue"] * (len(rows) - 1))
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(f"{r['cpu_us']:,.0f} µs", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    if result.get("budget_us"):
        ax.axhline(result["budget_us"], color="tab:red", linestyle="--",
                   label=f"CPU per answer at a ratio of {TARGET_RATIO} to the floor")
        ax.legend(loc="upper left")
    ax.set_ylabel("server CPU per answer, saturated (µs)")
    ax.set_title("Where a served bid's CPU goes: each bar adds one stage of the bid path")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
