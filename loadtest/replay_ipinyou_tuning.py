"""Choosing the replay's pacer knobs on auctions synthesised from training statistics only, never the test log.

    python -m loadtest.replay_ipinyou_tuning --data ../shared/data [--episodes 10] [--json]

info.json gives the training price histogram, average CTR and cost, but no
pCTR distribution, so the synthetic markets span what it leaves open:

- prices: drawn from the training histogram, optionally drifting per episode
  by a lognormal factor (the test market need not be the training one);
- pCTR: lognormal with the training average CTR as its mean and spread sigma;
- optionally a Gaussian-copula correlation between pCTR and price (slots that
  click more may cost more), which a marginal landscape cannot see.

Each knob setting runs the same episodes (same seeds) at every c0 and is
scored by expected clicks (sum of pCTR won) as a share of hindsight's: click
labels would only add noise.  The feedback controller runs alongside for
reference.  Progress on stderr; one JSON document with --json.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from statistics import NormalDist
from typing import Any

import orjson

from bidder.arguments import positive
from loadtest.replay_ipinyou import (
    C0_DEFAULT,
    FEN_CPM,
    MAX_BID_FEN,
    Auction,
    TrainingStats,
    load,
    paced_setup,
    run_feedback,
    run_hindsight,
    run_predictive,
)

PHI = NormalDist().cdf


@dataclass(frozen=True, slots=True)
class Market:
    """One synthetic market: pCTR spread, pCTR-price correlation, price drift per episode and within one (log sd)."""

    sigma: float
    corr: float
    drift: float
    walk: float = 0.0  # log sd of a random walk of the price level over one episode

    @property
    def name(self) -> str:
        return f"sigma={self.sigma} corr={self.corr} drift={self.drift}" + (f" walk={self.walk}" if self.walk else "")


MARKETS = tuple(Market(s, c, d) for s in (0.5, 1.0) for c in (0.0, 0.3) for d in (0.0, 0.2))
HARD_MARKETS = tuple(Market(s, c, 0.4, w) for s in (0.5, 1.0) for c in (0.3, 0.6) for w in (0.0, 0.3))
KNOBS: tuple[dict[str, float], ...] = (
    {"prior_auctions": 100, "seed_requests": 10, "every": 10},
    {"prior_auctions": 0, "seed_requests": 10, "every": 10},
    {"prior_auctions": 30, "seed_requests": 10, "every": 10},
    {"prior_auctions": 300, "seed_requests": 10, "every": 10},
    {"prior_auctions": 1000, "seed_requests": 10, "every": 10},
    {"prior_auctions": 100, "seed_requests": 1, "every": 10},
    {"prior_auctions": 100, "seed_requests": 50, "every": 10},
    {"prior_auctions": 100, "seed_requests": 10, "every": 3},
    {"prior_auctions": 100, "seed_requests": 10, "every": 30},
)
HARD_KNOBS: tuple[dict[str, float], ...] = tuple({"prior_auctions": p, "seed_requests": 10, "every": 10}
                                                 for p in (30, 100, 300, 1000))
MARKET_SETS = {"standard": (MARKETS, KNOBS), "hard": (HARD_MARKETS, HARD_KNOBS)}


def synthetic_episode(stats: TrainingStats, market: Market, size: int, rng: random.Random) -> list[Auction]:
    """`size` auctions from the training price histogram and a lognormal pCTR with the training mean."""
    cum, n = [], 0
    for c in stats.price_counts:
        n += c
        cum.append(n)
    scale = math.exp(rng.gauss(0.0, market.drift)) if market.drift else 1.0
    rho, s = market.corr, market.sigma
    step = market.walk / math.sqrt(size)
    out = []
    for _ in range(size):
        if step:
            scale *= math.exp(rng.gauss(0.0, step))
        z = rng.gauss(0.0, 1.0)
        pctr = min(stats.avg_ctr * math.exp(s * z - s * s / 2), 1.0)
        u = PHI(rho * z + math.sqrt(1 - rho * rho) * rng.gauss(0.0, 1.0))
        fen = bisect.bisect_right(cum, u * n)
        fen = min(round(min(fen, len(cum) - 1) * scale), MAX_BID_FEN)
        out.append((int(rng.random() < pctr), fen * FEN_CPM, pctr))
    return out


def score(stats: TrainingStats, eps: Sequence[list[Auction]], c0: Fraction, size: int,
          knobs: dict[str, float]) -> dict[str, float]:
    """Expected clicks as a share of hindsight's, budget used and overspent episodes, for both pacers."""
    budget_fen = stats.budget_fen(c0, size)
    budget = budget_fen * 10
    setup = paced_setup(stats, budget_fen, {size}, **knobs)
    got = {"predictive": 0.0, "feedback": 0.0, "hindsight": 0.0}
    used = {"predictive": 0, "feedback": 0}
    over = 0
    for ep in eps:
        for name, r in (("predictive", run_predictive(ep, budget, setup)), ("feedback", run_feedback(ep, budget, setup)),
                        ("hindsight", run_hindsight(ep, budget))):
            got[name] += r.pctr_sum
            if name in used:
                used[name] += r.spend
                over += r.spend > budget
    total = budget * len(eps)
    return {"predictive": got["predictive"] / got["hindsight"], "feedback": got["feedback"] / got["hindsight"],
            "predictive_used": used["predictive"] / total, "feedback_used": used["feedback"] / total, "overspent": over}


def tune(stats: TrainingStats, episodes_per_market: int, size: int, c0s: Sequence[Fraction],
         knobs: Sequence[dict[str, float]] = KNOBS, markets: Sequence[Market] = MARKETS, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    data = {m: [synthetic_episode(stats, m, size, rng) for _ in range(episodes_per_market)] for m in markets}
    rows = []
    for k, kn in enumerate(knobs):
        cells = {}
        for c0 in c0s:
            for m, eps in data.items():
                sys.stderr.write(f"\rknobs {k + 1}/{len(knobs)}  c0={c0}  {m.name:<42}")
                sys.stderr.flush()
                cells[f"{c0} {m.name}"] = score(stats, eps, c0, size, kn)
        pred = [c["predictive"] for c in cells.values()]
        fb = [c["feedback"] for c in cells.values()]
        by_c0 = {str(c0): sum(v["predictive"] for key, v in cells.items() if key.split()[0] == str(c0)) / len(markets)
                 for c0 in c0s}
        rows.append({"knobs": kn, "predictive_mean": sum(pred) / len(pred), "predictive_min": min(pred),
                     "feedback_mean": sum(fb) / len(fb), "feedback_min": min(fb), "predictive_by_c0": by_c0,
                     "overspent": sum(c["overspent"] for c in cells.values()),
                     "predictive_used_min": min(c["predictive_used"] for c in cells.values()), "cells": cells})
    sys.stderr.write("\r" + " " * 80 + "\r")
    return {"markets": [m.name for m in markets], "episodes_per_market": episodes_per_market, "episode": size,
            "c0": [str(c) for c in c0s], "rows": rows}


def format_table(doc: dict[str, Any]) -> str:
    c0s = doc["c0"]
    head = f"{'prior':>6} {'seed':>5} {'every':>5} {'mean%':>6} {'min%':>6} " + " ".join(f"{c:>6}" for c in c0s) + \
        f" {'used%min':>8} {'over':>4} {'fb mean%':>8} {'fb min%':>7}"
    lines = [f"synthetic markets from training stats: {len(doc['markets'])} markets x {doc['episodes_per_market']} episodes "
             f"of T={doc['episode']}; expected clicks as % of hindsight's", head, "-" * len(head)]
    for r in doc["rows"]:
        k = r["knobs"]
        lines.append(f"{k['prior_auctions']:>6g} {k['seed_requests']:>5g} {k['every']:>5g} {100 * r['predictive_mean']:>6.2f} "
                     f"{100 * r['predictive_min']:>6.2f} " + " ".join(f"{100 * r['predictive_by_c0'][c]:>6.2f}" for c in c0s)
                     + f" {100 * r['predictive_used_min']:>8.1f} {r['overspent']:>4} {100 * r['feedback_mean']:>8.2f}"
                     f" {100 * r['feedback_min']:>7.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.replay_ipinyou_tuning", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="directory with info.json (only the training stats are read)")
    ap.add_argument("--episodes", type=positive(int), default=10, help="synthetic episodes per market (default 10)")
    ap.add_argument("--episode", type=positive(int), default=1000, help="auctions per episode (default 1000)")
    ap.add_argument("--markets", choices=sorted(MARKET_SETS), default="standard",
                    help="standard: the grid the replay's knobs were chosen on; hard: larger drift, a walk within episodes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        stats, _ = load(args.data, with_log=False)
    except (OSError, ValueError) as e:
        ap.error(f"cannot read the training statistics in --data {args.data}: {e}")
    markets, knobs = MARKET_SETS[args.markets]
    doc = tune(stats, args.episodes, args.episode, C0_DEFAULT, knobs, markets)
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
