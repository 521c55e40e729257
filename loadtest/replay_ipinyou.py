"""`streambid replay ipinyou`: the pacer and pricer on real iPinYou auctions, against a baseline and hindsight.

Protocol of the RLB paper (Cai et al., WSDM 2017) on its campaign-2997 log:
the test log is cut into episodes of T auctions in time order; each episode
has the budget B = int(cost_train / imp_train * c0 * T) (the trailing partial
episode gets the same B, as the paper's code does); each auction is won when
the bid is >= its market price, which is then paid; a bid never exceeds the
budget left.  Money is the paper's unit, a sum of CPM prices in CNY fen; inside,
one fen of CPM is 10,000 CPM micros and one impression costs CPM / 1000.

Strategies:
- predictive (ours): the bidder's own code.  value = pCTR x value-per-click
  (`impression_value_cpm`), bid = `bid_price(value, lam, ...)`, lam from a
  `PredictivePacer` re-solved every few auctions: the lam whose forecast spend
  over the auctions left equals the budget left, on the training price
  histogram, the values seen so far in the episode and a calibration from the
  prices of the auctions it won.
- feedback: the same pricer with lam from a `PacingController` (its default
  gains) stepped after every auction, started from the lam that spends B / T
  per auction on the training prices for an average-CTR request.
- linear: bid = b0 x pCTR / avgCTR, b0 = that same training bid, fixed.
- hindsight: knowing every price and pCTR of the episode, buy auctions in
  order of pCTR / price while they fit in the budget; clicks are the actual
  labels of what was bought.

What the pacers may know: the training statistics (info.json) and, within the
episode, each auction's pCTR once it has arrived and its price only if won.
Every episode starts afresh, as in the paper's protocol: nothing is carried
from one episode to the next.  The predictive pacer's knobs were chosen on
synthetic auctions built from the training statistics
(`loadtest.replay_ipinyou_tuning`), never on the test log.

Loading and printing are at the edges; the episode runners are pure.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson

from bidder.campaigns import Campaign, parse_campaign
from bidder.landscape import WinRateModel
from bidder.pacing import PacingController
from bidder.predictive_pacing import PredictivePacer
from bidder.pricing import bid_price, impression_value_cpm

FEN_CPM = 10_000  # CPM micros in one CNY fen of CPM
MAX_BID_FEN = 300  # the paper's bid cap, also the top of the training price histogram
VALUE_HEADROOM = 1000  # see `replay_campaign`
C0_DEFAULT = (Fraction(1, 32), Fraction(1, 16), Fraction(1, 8), Fraction(1, 4), Fraction(1, 2))
PUBLISHED_1_32 = {"linear": {"clicks": 71, "impressions": 32_208, "spend": 203_610},
                  "rlb": {"clicks": 78, "impressions": 39_680, "spend": 304_375}}
TARGET_SHARE = 0.97
TARGET_CLICKS_1_32 = 78
STRATEGIES = ("predictive", "feedback", "linear", "hindsight")

Auction = tuple[int, int, float]  # (click, market price in CPM micros, pCTR)


# -- inputs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainingStats:
    """What the training period tells us; the only source of parameters besides the episode so far."""

    impressions: int
    clicks: int
    cost_fen: int  # sum of CPM market prices, in fen
    price_counts: tuple[int, ...]  # histogram of market prices 0, 1, 2, ... fen

    @property
    def avg_ctr(self) -> float:
        return self.clicks / self.impressions

    def budget_fen(self, c0: Fraction, episode: int) -> int:
        """The paper's episode budget: B = int(cost_train / imp_train * c0 * T)."""
        return int(self.cost_fen / self.impressions * float(c0) * episode)

    def landscape(self) -> WinRateModel:
        return WinRateModel.from_histogram(self.price_counts, FEN_CPM)


TRAINING_KEYS = ("imp_train", "clk_train", "cost_train", "price_counter_train")


def parse_training(doc: Any) -> TrainingStats:
    """info.json's statistics; ValueError unless the replay can divide by them (impressions, clicks, a budget, prices)."""
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, not a {type(doc).__name__}")
    if missing := [k for k in TRAINING_KEYS if k not in doc]:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        stats = TrainingStats(int(doc["imp_train"]), int(doc["clk_train"]), int(doc["cost_train"]),
                              tuple(int(n) for n in doc["price_counter_train"]))
    except (TypeError, ValueError):
        raise ValueError("imp_train, clk_train and cost_train must be numbers, price_counter_train a list of counts") from None
    if min(stats.impressions, stats.clicks, stats.cost_fen) <= 0 or min(stats.price_counts, default=-1) < 0 \
            or not any(stats.price_counts):
        raise ValueError("imp_train, clk_train and cost_train must be > 0, price_counter_train counts >= 0 and not all 0")
    return stats


LOG_LINE = "`click(0|1) market_price(>=0) pCTR(0..1)`"


def parse_log(lines: Sequence[str] | Any) -> list[Auction]:
    """`click market_price pCTR` per line; prices converted to CPM micros once; ValueError names a malformed line."""
    out = []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        auction = _auction(parts)
        if isinstance(auction, str):
            # the line itself is not quoted: a raw iPinYou log given by mistake holds user ids and IPs
            raise ValueError(f"line {n}: {auction}; each line is {LOG_LINE}: is this a test.theta.txt file?")
        out.append(auction)
    return out


def _auction(parts: list[str]) -> Auction | str:
    """One log line's auction, or what is wrong with it in words that quote none of its values."""
    if len(parts) != 3:
        return f"{len(parts)} fields, not 3"
    for name, text, kind in (("click", parts[0], int), ("market_price", parts[1], int), ("pCTR", parts[2], float)):
        try:
            kind(text)
        except ValueError:
            return f"the {name} field is not a {'whole ' if kind is int else ''}number"
    click, price, pctr = int(parts[0]), int(parts[1]), float(parts[2])
    if click not in (0, 1):
        return "the click field is neither 0 nor 1"
    if price < 0:
        return "the market_price field is negative"
    if not 0.0 <= pctr <= 1.0:
        return "the pCTR field is not between 0 and 1"
    return click, price * FEN_CPM, pctr


def resolve_data_dir(path: Path) -> Path:
    """Accept the campaign directory itself or the shared data directory holding `ipinyou-2997/`."""
    return path / "ipinyou-2997" if (path / "ipinyou-2997" / "info.json").exists() else path


def load(path: Path, with_log: bool = True) -> tuple[TrainingStats, list[Auction]]:
    """Training stats and the test log; `with_log=False` leaves the log unread (for tuning, which must not see it)."""
    d = resolve_data_dir(path)
    info, test = d / "info.json", d / "test.theta.txt"
    try:
        stats = parse_training(orjson.loads(info.read_bytes()))
    except ValueError as e:  # orjson's decode errors included
        raise ValueError(f"{info}: {e}") from None
    if not with_log:
        return stats, []
    with open(test) as f:
        try:
            log = parse_log(f)
        except ValueError as e:  # a malformed line, or bytes that are not text
            raise ValueError(f"{test}: {e}") from None
    if not log:
        raise ValueError(f"{test}: no auctions in the file")
    return stats, log


def episodes(log: list[Auction], size: int) -> list[list[Auction]]:
    return [log[i : i + size] for i in range(0, len(log), size)]


# -- one episode -----------------------------------------------------------------


@dataclass(slots=True)
class EpisodeResult:
    clicks: int = 0
    impressions: int = 0
    spend: int = 0  # micros, per impression (sum of CPM / 1000)
    pctr_sum: float = 0.0  # expected clicks by the model, the quantity hindsight maximises
    budget: int = 0  # micros
    curve: list[tuple[int, int, float]] = field(default_factory=list)  # (auction, spent micros, lam), if traced
    won: list[int] = field(default_factory=list)  # indices in the episode of the auctions won

    def win(self, auction: Auction, index: int) -> int:
        click, price, pctr = auction
        self.won.append(index)
        cost = price // 1000
        self.clicks += click
        self.impressions += 1
        self.spend += cost
        self.pctr_sum += pctr
        return cost


@dataclass(frozen=True, slots=True)
class PacedSetup:
    """The bidder's pricing inputs for the replay, derived from training statistics only.

    The predictive pacer's knobs (`prior_auctions`, `seed_requests`, `every`)
    were chosen on auctions synthesised from the training statistics
    (`loadtest.replay_ipinyou_tuning`), never on the test log; the feedback
    controller runs with `PacingController`'s defaults.
    """

    campaign: Campaign
    landscape: WinRateModel
    avg_value: int  # CPM micros: the value of an average-CTR request
    lam0_by_length: dict[int, float]
    prior_auctions: float = 300.0
    seed_requests: float = 10.0
    every: int = 10
    gain: float = 10.0
    kp: float = 1.0
    lam_max: float = 1e7  # far above any lam the budget asks for, given VALUE_HEADROOM


def replay_campaign(stats: TrainingStats, budget_fen: int) -> Campaign:
    """A cpc campaign whose value per click never binds: a request at 1/VALUE_HEADROOM of the average CTR is worth the max bid.

    The protocol maximises clicks under the budget and the bid cap; it has no
    value per click.  The pricer needs one and never bids above value
    (lam >= 0), so a modest value (say, the average-CTR request worth the max
    bid) would cap low-pCTR bids before the budget does and leave money unspent
    in dear episodes.  With this much headroom only the budget and the cap
    bind, and the value just sets the scale of lam.
    """
    value_per_click_fen = MAX_BID_FEN * VALUE_HEADROOM / (1000 * stats.avg_ctr)
    return parse_campaign({
        "id": "ipinyou-2997", "advertiser": "replay", "currency": "CNY",
        "budget": {"daily": budget_fen / 1e5},  # a sum of CPM fen / 1000 = fen of money = CNY / 100
        "goal": {"type": "cpc", "value_per_click": round(value_per_click_fen / 100, 6), "max_bid_cpm": MAX_BID_FEN / 100},
        "creatives": [{"id": "c", "type": "banner", "w": 300, "h": 250, "adm": "<div/>"}],
    })


def training_bid(landscape: WinRateModel, budget: int, length: int) -> int:
    """CPM micros whose expected second-price spend on the training prices is budget / length per auction."""
    return landscape.bid_for_spend(budget * 1000 / length)


def paced_setup(stats: TrainingStats, budget_fen: int, lengths: set[int], **knobs: Any) -> PacedSetup:
    camp = replay_campaign(stats, budget_fen)
    land = stats.landscape()
    avg_value = impression_value_cpm(stats.avg_ctr, camp)
    lam0 = {n: max(avg_value / max(training_bid(land, budget_fen * 10, n), 1) - 1.0, 0.0) for n in lengths}
    return PacedSetup(camp, land, avg_value, lam0, **knobs)


def run_predictive(episode: list[Auction], budget: int, setup: PacedSetup, trace: bool = False) -> EpisodeResult:
    """The bidder's pricer with the predictive pacer: lam re-solved every `every` auctions from the forecast.

    The pacer starts knowing only training statistics: the price histogram as
    its landscape and `seed_requests` average-CTR requests in its value sketch.
    It then sees each auction's value (known on arrival), our bid and the price
    we paid when we won, nothing about lost auctions' prices.
    """
    n, camp = len(episode), setup.campaign
    pacer = PredictivePacer(setup.landscape, camp.max_bid_cpm, prior_auctions=setup.prior_auctions, lam_max=setup.lam_max)
    if setup.seed_requests > 0:
        pacer.sketch.add(setup.avg_value, setup.seed_requests)
    res = EpisodeResult(budget=budget)
    left, lam = budget, 0.0
    for t, auction in enumerate(episode):
        if t % setup.every == 0:
            lam = pacer.solve(left, n - t)
        value = impression_value_cpm(auction[2], camp)
        bid = min(bid_price(value, lam, camp.max_bid_cpm, 0, False), left * 1000)
        paid = 0
        if 0 < bid and bid >= auction[1]:
            left -= res.win(auction, t)
            paid = auction[1]
        pacer.observe(value, bid, paid)
        if trace:
            res.curve.append((t + 1, budget - left, lam))
    return res


def run_feedback(episode: list[Auction], budget: int, setup: PacedSetup, trace: bool = False) -> EpisodeResult:
    """The bidder's pricer paced by the feedback `PacingController`; one control step per auction."""
    n, camp = len(episode), setup.campaign
    ctl = PacingController(lam=setup.lam0_by_length[n], gain=setup.gain, kp=setup.kp, lam_max=setup.lam_max)
    lam = ctl.update(0.0, 0, budget).lam
    res = EpisodeResult(budget=budget)
    left = budget
    for t, auction in enumerate(episode):
        price = bid_price(impression_value_cpm(auction[2], camp), lam, camp.max_bid_cpm, 0, False)
        if 0 < price and min(price, left * 1000) >= auction[1]:
            left -= res.win(auction, t)
        lam = ctl.update((t + 1) / n, budget - left, budget).lam
        if trace:
            res.curve.append((t + 1, budget - left, lam))
    return res


def run_linear(episode: list[Auction], budget: int, base_bid: int, avg_ctr: float) -> EpisodeResult:
    """bid = b0 x pCTR / avgCTR, capped at the max bid and the budget left."""
    res = EpisodeResult(budget=budget)
    left, cap = budget, MAX_BID_FEN * FEN_CPM
    for t, auction in enumerate(episode):
        bid = min(int(base_bid * auction[2] / avg_ctr), cap, left * 1000)
        if bid > 0 and bid >= auction[1]:
            left -= res.win(auction, t)
    return res


def run_hindsight(episode: list[Auction], budget: int) -> EpisodeResult:
    """Greedy by pCTR per unit price over the whole episode, skipping what no longer fits."""
    res = EpisodeResult(budget=budget)
    left = budget
    for t in sorted(range(len(episode)), key=lambda i: -episode[i][2] / episode[i][1] if episode[i][1] else -math.inf):
        if episode[t][1] // 1000 <= left:
            left -= res.win(episode[t], t)
    return res


# -- the benchmark ---------------------------------------------------------------


@dataclass(slots=True)
class Totals:
    clicks: int = 0
    impressions: int = 0
    spend: int = 0  # micros
    pctr_sum: float = 0.0
    budget: int = 0  # micros
    overspent_episodes: int = 0
    max_overspend: int = 0  # micros

    def add(self, r: EpisodeResult) -> None:
        self.clicks += r.clicks
        self.impressions += r.impressions
        self.spend += r.spend
        self.pctr_sum += r.pctr_sum
        self.budget += r.budget
        over = r.spend - r.budget
        self.overspent_episodes += over > 0
        self.max_overspend = max(self.max_overspend, over)

    def summary(self, reference: Totals | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["spend_fen"] = self.spend / 10  # the paper's unit: sum of CPM prices in fen
        d["ecpc_fen"] = self.spend / 10_000 / self.clicks if self.clicks else None  # money: fen per click
        d["budget_used"] = self.spend / self.budget if self.budget else 0.0
        if reference is not None:
            d["clicks_vs_hindsight"] = self.clicks / reference.clicks if reference.clicks else None
            d["pctr_vs_hindsight"] = self.pctr_sum / reference.pctr_sum if reference.pctr_sum else None
        return d


@dataclass(slots=True)
class Luck:
    """How much of a click gap between two strategies is chance: only the impressions one bought and not the other count.

    Clicks on those impressions are Bernoulli draws; with pCTR scaled by the
    log's realised clicks per unit of pCTR (an evaluation-only figure, never
    used to bid), the gap has a mean and a standard deviation to hold the
    realised gap against.
    """

    ctr_scale: float  # realised clicks / sum of pCTR over the whole log
    expected_gap: float = 0.0
    variance: float = 0.0
    realised_gap: int = 0
    only_ours: int = 0
    only_theirs: int = 0

    def add(self, episode: list[Auction], ours: EpisodeResult, theirs: EpisodeResult) -> None:
        a, b = set(ours.won), set(theirs.won)
        for idx, sign in ((b - a, 1), (a - b, -1)):
            for i in idx:
                click, _, pctr = episode[i]
                p = min(pctr * self.ctr_scale, 1.0)
                self.expected_gap += sign * p
                self.variance += p * (1 - p)
                self.realised_gap += sign * click
        self.only_ours += len(a - b)
        self.only_theirs += len(b - a)

    def summary(self) -> dict[str, Any]:
        sd = math.sqrt(self.variance)
        return {"ctr_scale": self.ctr_scale, "expected_gap": self.expected_gap, "sd": sd, "realised_gap": self.realised_gap,
                "z": (self.realised_gap - self.expected_gap) / sd if sd else 0.0,
                "impressions_only_ours": self.only_ours, "impressions_only_hindsight": self.only_theirs}


Progress = Callable[[str], None]


def replay_c0(stats: TrainingStats, eps: list[list[Auction]], c0: Fraction, size: int, traced: set[int],
              progress: Progress, ctr_scale: float = 1.0) -> tuple[dict[str, Any], dict[int, EpisodeResult]]:
    """Every strategy on every episode at one budget level."""
    budget_fen = stats.budget_fen(c0, size)
    budget = budget_fen * 10
    setup = paced_setup(stats, budget_fen, {len(e) for e in eps})
    land = stats.landscape()
    totals = {s: Totals() for s in STRATEGIES}
    traces: dict[int, EpisodeResult] = {}
    luck = Luck(ctr_scale)
    for i, ep in enumerate(eps):
        ours = run_predictive(ep, budget, setup, trace=i in traced)
        if i in traced:
            traces[i] = ours
        totals["predictive"].add(ours)
        totals["feedback"].add(run_feedback(ep, budget, setup))
        totals["linear"].add(run_linear(ep, budget, training_bid(land, budget, len(ep)), stats.avg_ctr))
        best = run_hindsight(ep, budget)
        totals["hindsight"].add(best)
        luck.add(ep, ours, best)
        if i % 10 == 0 or i == len(eps) - 1:
            progress(f"c0={c0}  episode {i + 1}/{len(eps)}")
    ref = totals["hindsight"]
    result = {"c0": str(c0), "budget_fen": budget_fen, "episodes": len(eps),
              "lam0": setup.lam0_by_length[size] if size in setup.lam0_by_length else None,
              "strategies": {s: t.summary(ref) for s, t in totals.items()}, "luck_vs_hindsight": luck.summary()}
    result["targets"] = targets(result, c0)
    return result, traces


def targets(result: dict[str, Any], c0: Fraction) -> dict[str, Any]:
    s = result["strategies"]
    share = s["predictive"]["clicks_vs_hindsight"]  # None when hindsight had no click: any count then meets 97% of it
    out = {"clicks_vs_hindsight>=0.97": share is None or share >= TARGET_SHARE,
           "zero_overspend": all(v["overspent_episodes"] == 0 for v in s.values())}
    if c0 == Fraction(1, 32):
        out["clicks>=78"] = s["predictive"]["clicks"] >= TARGET_CLICKS_1_32
    return out


Traces = dict[str, dict[int, EpisodeResult]]


def run_replay(stats: TrainingStats, log: list[Auction], c0s: Sequence[Fraction], size: int,
               progress: Progress = lambda s: None, traced: int = 4) -> tuple[dict[str, Any], Traces]:
    eps = episodes(log, size)
    full = sum(len(e) == size for e in eps) or len(eps)  # trace whole episodes, not the trailing stub
    picks = {round(k * (full - 1) / max(traced - 1, 1)) for k in range(traced)} if traced else set()
    results, traces = [], {}
    pctr_total = sum(a[2] for a in log)
    ctr_scale = sum(a[0] for a in log) / pctr_total if pctr_total else 1.0  # evaluation only: sizes the luck figures
    for c0 in c0s:
        res, tr = replay_c0(stats, eps, c0, size, picks, progress, ctr_scale)
        results.append(res)
        traces[str(c0)] = tr
    report = {"benchmark": "replay ipinyou", "auctions": len(log), "episode": size, "episodes": len(eps),
              "clicks_in_log": sum(a[0] for a in log), "results": results, "published_c0_1_32": PUBLISHED_1_32}
    return report, traces


# -- output ----------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return f"{100 * x:>6.1f}" if x is not None else f"{'-':>6}"


def format_table(report: dict[str, Any]) -> str:
    head = (f"{'c0':>5} {'B':>6} {'strategy':<10} {'clicks':>6} {'%hind':>6} {'E[clk]':>7} {'E%hind':>6} {'imps':>7} "
            f"{'spend':>10} {'eCPC':>7} {'used%':>6} {'over':>4}")
    lines = [f"iPinYou 2997 replay: {report['auctions']:,} auctions, {report['episodes']} episodes of T={report['episode']}; "
             "spend: sum of CPM prices in fen (the paper's unit); eCPC: fen per click", head, "-" * len(head)]
    for r in report["results"]:
        for name, s in r["strategies"].items():
            ecpc = f"{s['ecpc_fen']:7.2f}" if s["ecpc_fen"] is not None else f"{'-':>7}"
            lines.append(f"{r['c0']:>5} {r['budget_fen']:>6} {name:<10} {s['clicks']:>6} {_pct(s['clicks_vs_hindsight'])} "
                         f"{s['pctr_sum']:>7.1f} {_pct(s['pctr_vs_hindsight'])} {s['impressions']:>7,} {s['spend_fen']:>10,.0f} "
                         f"{ecpc} {_pct(s['budget_used'])} {s['overspent_episodes']:>4}")
        met = ", ".join(f"{k} {'met' if v else 'NOT MET'}" for k, v in r["targets"].items())
        lines.append(f"{'':>5} targets: {met}")
        lk = r["luck_vs_hindsight"]
        lines.append(f"{'':>5} hindsight - predictive, on the {lk['impressions_only_hindsight']:,} + "
                     f"{lk['impressions_only_ours']:,} impressions only one bought: expected {lk['expected_gap']:+.1f} "
                     f"+- {lk['sd']:.1f} clicks, "
                     f"realised {lk['realised_gap']:+d} (z {lk['z']:+.1f})")
    pub = report["published_c0_1_32"]
    lines.append("published at c0=1/32 (paper's code README): " + "; ".join(
        f"{k} {v['clicks']} clicks / {v['impressions']:,} imps / {v['spend']:,} spend" for k, v in pub.items()))
    lines.append("%hind: clicks as % of hindsight's; E[clk]: expected clicks, the sum of pCTR over the impressions won; "
                 "E%hind: that as % of hindsight's; over: episodes spending more than B")
    return "\n".join(lines)


def plot(traces: Traces, size: int, out_dir: Path) -> Path:
    """Spend against plan and 1 + lam over each traced episode, one column per c0 (lam's scale fits all but the last 3%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(traces), 1)
    # at least the title's width: one column (a single --c0) would clip it on both sides
    fig, axes = plt.subplots(2, cols, figsize=(max(4.2 * cols, 6.5), 7), squeeze=False, sharex=True)
    for j, (c0, eps) in enumerate(traces.items()):
        top, bottom = axes[0][j], axes[1][j]
        for i, r in sorted(eps.items()):
            n = len(r.curve)
            line, = top.plot([t / n for t, _, _ in r.curve], [s / r.budget for _, s, _ in r.curve], lw=1, label=f"episode {i}")
            bottom.plot([t / n for t, _, _ in r.curve], [1 + lam for _, _, lam in r.curve], lw=1, color=line.get_color())
        body = [1 + lam for r in eps.values() for t, _, lam in r.curve if t <= 0.97 * len(r.curve)]
        if body:  # the last auctions swing to 0 or lam_max as the budget runs out or stops binding: keep them off the scale
            bottom.set_ylim(min(body) / 1.3, max(body) * 1.3)
        top.plot([0, 1], [0, 1], "k--", lw=1, label="plan")
        top.set_title(f"c0 = {c0}")
        top.set_ylabel("spent / budget")
        bottom.set_ylabel("1 + lambda  (bid = value / (1 + lambda))")
        bottom.set_yscale("log")
        bottom.set_xlabel(f"auction index / episode length (T={size})")
        top.legend(fontsize=7)
    fig.suptitle("Predictive pacer: spend against a uniform plan, iPinYou 2997 episodes")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "replay_ipinyou_pacing.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def command(args: Any) -> int:
    """Entry point of `streambid replay ipinyou`."""
    from bidder.arguments import out_dir_problem

    def refuse(problem: str) -> int:
        print(f"streambid replay ipinyou: {problem}", file=sys.stderr)
        return 2

    if args.episode <= 0:
        return refuse(f"--episode {args.episode}: must be > 0 (auctions per episode)")
    if problem := out_dir_problem(args.out):
        return refuse(problem)
    try:
        stats, log = load(args.data)
    except (OSError, ValueError) as e:
        return refuse(f"cannot read the iPinYou data in --data {args.data}: {e}; give the directory holding a valid "
                      "info.json and test.theta.txt")
    c0s = args.c0 or C0_DEFAULT
    for c0 in c0s:
        if stats.budget_fen(c0, args.episode) <= 0:
            shown = str(c0) if c0.denominator < 10**6 else f"{float(c0):.3g}"
            return refuse(f"--c0 {shown} leaves a budget of 0 fen per episode of {args.episode} auctions; "
                          "give a larger --c0 or --episode")
    quiet = getattr(args, "no_progress", False)

    def progress(msg: str) -> None:
        if not quiet:
            sys.stderr.write(f"\r{msg:<60}")
            sys.stderr.flush()

    report, traces = run_replay(stats, log, c0s, args.episode, progress)
    if not quiet:
        sys.stderr.write("\r" + " " * 60 + "\r")
    report["plot"] = str(plot(traces, args.episode, args.out))
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(report))
        print(f"plot: {report['plot']}")
    return 0
