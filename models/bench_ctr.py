"""`streambid bench ctr`: how good and how fast is the CTR learner?

Progressive validation (predict, then learn, one example at a time, in file
order) of three learners on the same streams:

* a constant rate (running mean with a weak prior): the floor to beat;
* Vowpal Wabbit with FTRL and logistic loss: the reference online learner;
* our CTRLearner, fed the same fields through the same hashing as serving.

Two streams: the iPinYou CTR sample (its train day then its test day, each in
file order: the lines of a day are not in time order) and a synthetic stream
with known true probabilities, where the excess log loss over the truth says
how much is left to learn.  Also timed: ModelSnapshot.predict, the
per-candidate cost on the bid path.
"""

from __future__ import annotations

import math
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from models.calibration import expected_calibration_error, reliability_bins
from models.features import candidate_features, hash_feature
from models.learner import CTRLearner, LearnerConfig
from models.synthetic import SyntheticStream

VW_ARGS = "--loss_function logistic --ftrl --bit_precision 20 --quiet --link logistic"
VW_MISSING = "Vowpal Wabbit is not installed: run `pip install -e '.[bench]'` to include it in the comparison."
EPS = 1e-15

# ipinyou fields that describe the candidate ad rather than the request
CAMPAIGN_FIELD = "advertiser"
CREATIVE_FIELD = "creative"


@dataclass(slots=True)
class Example:
    label: bool
    request: list[tuple[str, str]]  # request-level (field, value) pairs
    campaign: str
    creative: str
    hour: str
    domain: str
    p_true: float = float("nan")


# -- metrics -------------------------------------------------------------------------


def log_loss(preds: Iterable[float], labels: Iterable[int]) -> float:
    total, n = 0.0, 0
    for p, y in zip(preds, labels, strict=True):
        p = min(max(p, EPS), 1.0 - EPS)
        total -= math.log(p) if y else math.log(1.0 - p)
        n += 1
    return total / n if n else float("nan")


def auc(preds: list[float] | array, labels: list[int] | bytearray) -> float:
    """Exact ROC AUC via the Mann-Whitney U statistic, with tied scores given their average rank."""
    n = len(preds)
    order = sorted(range(n), key=preds.__getitem__)
    rank_sum_pos = 0.0
    n_pos = 0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and preds[order[j + 1]] == preds[order[i]]:
            j += 1
        avg_rank = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            if labels[order[k]]:
                rank_sum_pos += avg_rank
                n_pos += 1
        i = j + 1
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


# -- learners under test ----------------------------------------------------------------


class ConstantRate:
    """Running click rate with a weak prior: what you get by learning nothing about the request."""

    name = "constant"

    def __init__(self, prior_ctr: float = 0.001, strength: float = 100.0) -> None:
        self.clicks = prior_ctr * strength
        self.n = strength

    def prepare(self, ex: Example) -> None:
        return None

    def predict(self, prepared: None) -> float:
        return self.clicks / self.n

    def learn(self, prepared: None, label: bool) -> None:
        self.clicks += label
        self.n += 1


def _vw_token(text: str) -> str:
    return text.replace(" ", "_").replace(":", "_").replace("|", "_")


class VowpalWabbit:
    """VW with FTRL; every field is one `field=value` feature (VW's reference setup: no crosses)."""

    name = "vowpalwabbit"

    def __init__(self, args: str = VW_ARGS) -> None:
        from vowpalwabbit import pyvw

        self.vw = pyvw.Workspace(args)

    def line(self, ex: Example) -> str:
        tokens = [_vw_token(f"{f}={v}") for f, v in ex.request]
        tokens += [_vw_token(f"campaign={ex.campaign}"), _vw_token(f"creative={ex.creative}")]
        return f"{1 if ex.label else -1} |f " + " ".join(tokens)

    def prepare(self, ex: Example) -> object:
        """Parsed (tokenised and hashed) here, untimed, as `Ours.prepare` hashes: µs/predict is the model's alone."""
        return self.vw.parse(self.line(ex))

    def predict(self, parsed) -> float:
        return self.vw.predict(parsed)

    def learn(self, parsed, label: bool) -> None:
        self.vw.learn(parsed)
        self.vw.finish_example(parsed)


class Ours:
    """CTRLearner, fed through features.py's hashing, exactly as training and serving do."""

    name = "streambid"

    def __init__(self, config: LearnerConfig | None = None) -> None:
        self.learner = CTRLearner(config)
        self._ids: dict[tuple[str, str], int] = {}

    def features(self, ex: Example) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ids = self._ids
        req = []
        for fv in ex.request:
            fid = ids.get(fv)
            if fid is None:
                fid = ids[fv] = hash_feature(*fv)
            req.append(fid)
        req_t = tuple(req)
        return req_t, candidate_features(req_t, ex.hour, ex.domain, ex.campaign, ex.creative)

    def prepare(self, ex: Example) -> tuple[tuple[int, ...], str, str]:
        req, cand = self.features(ex)
        return req + cand, ex.campaign, ex.creative

    def predict(self, prepared: tuple[tuple[int, ...], str, str]) -> float:
        return self.learner.predict_one(*prepared)

    def learn(self, prepared: tuple[tuple[int, ...], str, str], label: bool) -> None:
        feats, campaign, creative = prepared
        self.learner.learn_one(feats, label, campaign, creative)


# -- progressive validation -------------------------------------------------------------


@dataclass
class Run:
    name: str
    preds: array = field(default_factory=lambda: array("d"))
    labels: bytearray = field(default_factory=bytearray)
    truth: array = field(default_factory=lambda: array("d"))
    predict_s: float = 0.0
    learn_s: float = 0.0

    def row(self, drift_at: int | None = None) -> dict:
        n = len(self.preds)
        row = {
            "learner": self.name,
            "n": n,
            "clicks": sum(self.labels),
            "logloss": log_loss(self.preds, self.labels),
            "auc": auc(self.preds, self.labels),
            "ece": expected_calibration_error(self.preds, self.labels),
            "us_predict": self.predict_s / n * 1e6 if n else float("nan"),
            "us_learn": self.learn_s / n * 1e6 if n else float("nan"),
        }
        if len(self.truth) == n and n:
            row["excess_logloss_pct"] = _excess_pct(self.preds, self.truth)
            if drift_at:
                row["excess_before_drift_pct"] = _excess_pct(self.preds[:drift_at], self.truth[:drift_at])
                row["excess_after_drift_pct"] = _excess_pct(self.preds[drift_at:], self.truth[drift_at:])
        return row


def _excess_pct(preds: array, truth: array) -> float:
    """How much worse than the true probabilities, in percent of their log loss."""
    return 100.0 * (_expected_log_loss(preds, truth) / _expected_log_loss(truth, truth) - 1.0)


def _expected_log_loss(preds: Iterable[float], truth: Iterable[float]) -> float:
    """Mean log loss expected under the true probabilities (less noisy than against sampled labels)."""
    total, n = 0.0, 0
    for p, q in zip(preds, truth, strict=True):
        p = min(max(p, EPS), 1.0 - EPS)
        total -= q * math.log(p) + (1.0 - q) * math.log(1.0 - p)
        n += 1
    return total / n


class Progress:
    """A status line on stderr, rewritten in place."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._last = 0.0

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self._last > 0.25):
            self._last = now
            sys.stderr.write(f"\r\033[K{text}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def progressive(learner, examples: Iterable[Example], total: int, label: str, progress: Progress) -> Run:
    """Predict then learn each example in order, timing both calls."""
    run = Run(learner.name)
    clock = time.perf_counter
    prepare, predict, learn = learner.prepare, learner.predict, learner.learn
    preds, labels, truth = run.preds, run.labels, run.truth
    predict_s = learn_s = 0.0
    for i, ex in enumerate(examples):
        prepared = prepare(ex)
        t0 = clock()
        p = predict(prepared)
        t1 = clock()
        learn(prepared, ex.label)
        t2 = clock()
        predict_s += t1 - t0
        learn_s += t2 - t1
        preds.append(p)
        labels.append(1 if ex.label else 0)
        if ex.p_true == ex.p_true:
            truth.append(ex.p_true)
        if i % 1000 == 0:
            progress.update(f"{label}: {learner.name} {i:,}/{total:,}")
    run.predict_s, run.learn_s = predict_s, learn_s
    return run


# -- data --------------------------------------------------------------------------------


def load_featindex(path: Path) -> dict[int, tuple[str, str]]:
    """index -> (field, value) from lines `field:value<TAB>idx`."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            name, _, idx = line.rstrip("\n").rpartition("\t")
            fld, _, value = name.partition(":")
            out[int(idx)] = (fld, value)
    return out


def read_ipinyou(data_dir: Path) -> list[Example]:
    """train.fm.txt then test.fm.txt, in file order, as Examples."""
    index = load_featindex(data_dir / "featindex.fm.txt")
    examples = []
    for name in ("train.fm.txt", "test.fm.txt"):
        with open(data_dir / name, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                fields = [index[int(tok.partition(":")[0])] for tok in parts[1:]]
                values = dict(fields)
                request = [fv for fv in fields if fv[0] not in (CAMPAIGN_FIELD, CREATIVE_FIELD)]
                examples.append(
                    Example(
                        label=parts[0] == "1",
                        request=request,
                        campaign=values.get(CAMPAIGN_FIELD, ""),
                        creative=values.get(CREATIVE_FIELD, ""),
                        hour=values.get("hour", ""),
                        domain=values.get("domain", ""),
                    )
                )
    return examples


def synthetic_examples(n: int, seed: int = 7) -> Iterator[Example]:
    for ev in SyntheticStream(n, seed=seed):
        yield Example(
            label=ev.label,
            request=list(ev.fields.items()),
            campaign=ev.campaign,
            creative=ev.creative,
            hour=ev.fields["hour"],
            domain=ev.fields["domain"],
            p_true=ev.p_true,
        )


# -- snapshot timing ----------------------------------------------------------------------


def time_snapshot(ours: Ours, examples: list[Example], repeats: int = 5) -> dict:
    """µs per ModelSnapshot.base_score (per request) and per predict (per candidate), best of `repeats`."""
    snap = ours.learner.snapshot()
    feats = [ours.features(ex) for ex in examples]
    keys = [(ex.campaign, ex.creative) for ex in examples]
    clock = time.perf_counter
    base_score, predict = snap.base_score, snap.predict
    best_base = best_pred = float("inf")
    for _ in range(repeats):
        t0 = clock()
        bases = [base_score(req) for req, _ in feats]
        t1 = clock()
        for b, (_, cand), (camp, cre) in zip(bases, feats, keys, strict=True):
            predict(b, cand, camp, cre)
        t2 = clock()
        best_base = min(best_base, t1 - t0)
        best_pred = min(best_pred, t2 - t1)
    # consistency: the snapshot must score like the learner it came from
    worst = max(
        abs(predict(base_score(req), cand, camp, cre) - ours.learner.predict_one(req + cand, camp, cre))
        for (req, cand), (camp, cre) in zip(feats[:2000], keys[:2000], strict=True)
    )
    size = len(snap.to_bytes())
    n = len(examples)
    return {
        "us_base_score": best_base / n * 1e6,
        "us_predict": best_pred / n * 1e6,
        "weights": len(snap.weights),
        "bytes": size,
        "max_abs_diff_vs_learner": worst,
    }


SAMPLE_REQUEST = {
    "id": "bench",
    "imp": [{"id": "1", "tagid": "slot-1", "banner": {"format": [{"w": 300, "h": 250}, {"w": 336, "h": 280}], "pos": 1}}],
    "site": {"domain": "news.example", "publisher": {"id": "pub-1"}},
    "device": {
        "devicetype": 2,
        "os": "Android",
        "ua": "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36",
        "geo": {"country": "FRA", "region": "IDF", "city": "Paris", "utcoffset": 60},
    },
}


def time_features(n: int = 20_000) -> dict:
    """µs per request_features (per impression) and per candidate_features (per candidate) on a typical request."""
    import orjson

    from bidder.openrtb import parse_request
    from models.features import request_features

    req = parse_request(orjson.dumps(SAMPLE_REQUEST))
    imp = req.imps[0]
    clock = time.perf_counter
    t0 = clock()
    for _ in range(n):
        feats = request_features(req, imp, "exchange-1", 14, 2)
    t1 = clock()
    for _ in range(n):
        candidate_features(feats, 14, req.domain, "campaign-1", "creative-1")
    t2 = clock()
    return {"us_request_features": (t1 - t0) / n * 1e6, "us_candidate_features": (t2 - t1) / n * 1e6}


# -- the whole benchmark ------------------------------------------------------------------


def make_contenders(config: LearnerConfig, progress: Progress) -> tuple[list[Callable[[], object]], bool]:
    """Factories for the learners under test; VW only when it is installed."""
    factories: list[Callable[[], object]] = [ConstantRate]
    try:
        import vowpalwabbit  # noqa: F401

        have_vw = True
        factories.append(VowpalWabbit)
    except ImportError:
        have_vw = False
        progress.done()
        print(VW_MISSING, file=sys.stderr)
    factories.append(lambda: Ours(config))
    return factories, have_vw


def bench_ipinyou(data_dir: Path, config: LearnerConfig, progress: Progress) -> dict:
    progress.update("ipinyou: reading", force=True)
    examples = read_ipinyou(data_dir)
    factories, _ = make_contenders(config, progress)
    rows, runs, ours = [], {}, None
    for make in factories:
        learner = make()
        run = progressive(learner, examples, len(examples), "ipinyou", progress)
        runs[run.name] = run
        rows.append(run.row())
        if isinstance(learner, Ours):
            ours = learner
    progress.update("ipinyou: timing the snapshot", force=True)
    snap = (time_snapshot(ours, examples) | time_features()) if ours else {}
    return {"rows": rows, "snapshot": snap, "runs": runs}


def bench_synthetic(n: int, config: LearnerConfig, progress: Progress, seed: int = 7) -> dict:
    factories, _ = make_contenders(config, progress)
    rows, runs = [], {}
    drift_at = SyntheticStream(n, seed=seed).drift_at
    truth_run = None
    for make in factories:
        learner = make()
        run = progressive(learner, synthetic_examples(n, seed), n, "synthetic", progress)
        runs[run.name] = run
        truth_run = run
        rows.append(run.row(drift_at))
    if truth_run is not None:
        oracle = Run("true p", preds=truth_run.truth, labels=truth_run.labels, truth=truth_run.truth)
        rows.append(oracle.row(drift_at) | {"us_predict": None, "us_learn": None})
        runs[oracle.name] = oracle
    return {"rows": rows, "drift_at": drift_at, "runs": runs}


def check_targets(ipinyou: dict | None, synthetic: dict | None) -> list[dict]:
    """The goals this learner is held to, each marked met or not."""
    out = []
    if ipinyou:
        by = {r["learner"]: r for r in ipinyou["rows"]}
        ours, const, vw = by["streambid"], by["constant"], by.get("vowpalwabbit")
        out.append({"target": "ipinyou logloss < constant", "met": ours["logloss"] < const["logloss"]})
        if vw:
            out.append({"target": "ipinyou logloss <= VW", "met": ours["logloss"] <= vw["logloss"]})
            out.append({"target": "ipinyou AUC >= VW - 0.01", "met": ours["auc"] >= vw["auc"] - 0.01})
        snap = ipinyou.get("snapshot") or {}
        if snap:
            out.append({"target": "ModelSnapshot.predict <= 10 us", "met": snap["us_predict"] <= 10.0})
    if synthetic:
        by = {r["learner"]: r for r in synthetic["rows"]}
        out.append({"target": "synthetic excess logloss <= 2%", "met": by["streambid"]["excess_logloss_pct"] <= 2.0})
    return out


# -- reporting -------------------------------------------------------------------------------


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([_fmt(r.get(k), spec) if spec else str(r.get(k, "")) for k, _, spec in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


COLUMNS = [
    ("learner", "learner", ""),
    ("logloss", "logloss", ".5f"),
    ("auc", "AUC", ".4f"),
    ("ece", "ECE", ".5f"),
    ("us_predict", "µs/predict", ".1f"),
    ("us_learn", "µs/learn", ".1f"),
]
SYNTH_COLUMNS = COLUMNS + [
    ("excess_logloss_pct", "excess %", ".2f"),
    ("excess_before_drift_pct", "before drift %", ".2f"),
    ("excess_after_drift_pct", "after drift %", ".2f"),
]


def plot_reliability(results: dict[str, dict], path: Path) -> Path:
    """Observed vs predicted click rate per equal-count bin, one panel per stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5), squeeze=False)
    for ax, (title, res) in zip(axes[0], results.items(), strict=True):
        lo, hi = 1.0, 0.0
        for name, run in res["runs"].items():
            if name == "true p":
                continue
            bins = reliability_bins(run.preds, run.labels, bins=10)
            xs = [b.mean_predicted for b in bins]
            ys = [max(b.observed_rate, 1e-5) for b in bins]
            ax.plot(xs, ys, marker="o", label=name)
            lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", label="perfect")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("mean predicted CTR (equal-count bins)")
        ax.set_ylabel("observed CTR")
        ax.set_title(f"Reliability: {title}")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
