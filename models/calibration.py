"""Calibration: is a predicted 1% really clicked 1% of the time?

Bid prices are pCTR x value, so a model that ranks well but is off by a factor
overpays (or never wins).  This module measures calibration (reliability bins,
expected calibration error) and corrects it online with Platt scaling in logit
space: p = sigmoid(a * s + b), with a and b learned by AdaGrad on the log loss
of the scores the model gave *before* it saw each label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LOGIT_CLIP = 30.0
P_EPS = 1e-12


def sigmoid(z: float) -> float:
    """Logistic function, safe for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z)) if z < LOGIT_CLIP else 1.0 - P_EPS
    return math.exp(z) / (1.0 + math.exp(z)) if z > -LOGIT_CLIP else P_EPS


def logit(p: float) -> float:
    """Log-odds of p, clipped away from 0 and 1."""
    p = min(max(p, P_EPS), 1.0 - P_EPS)
    return math.log(p / (1.0 - p))


def downsample_correction(p: float, negative_rate: float) -> float:
    """Undo negative down-sampling: a model trained on a fraction w of the negatives over-predicts.

    p_true = p / (p + (1 - p) / w); in logit space this is just + log(w).
    """
    return p / (p + (1.0 - p) / negative_rate)


# -- measuring ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    count: int
    mean_predicted: float
    observed_rate: float


def reliability_bins(preds: Sequence[float], labels: Sequence[bool | int], bins: int = 10) -> list[ReliabilityBin]:
    """Equal-count bins of predictions with the observed click rate in each.

    Equal-count (not equal-width) because CTR predictions crowd near zero: with
    equal-width bins almost everything would fall into the first bin.
    """
    n = len(preds)
    if n == 0:
        return []
    order = sorted(range(n), key=preds.__getitem__)
    bins = max(1, min(bins, n))
    out = []
    for b in range(bins):
        idx = order[b * n // bins : (b + 1) * n // bins]
        if not idx:
            continue
        out.append(
            ReliabilityBin(
                count=len(idx),
                mean_predicted=sum(preds[i] for i in idx) / len(idx),
                observed_rate=sum(1 for i in idx if labels[i]) / len(idx),
            )
        )
    return out


def expected_calibration_error(preds: Sequence[float], labels: Sequence[bool | int], bins: int = 10) -> float:
    """Count-weighted mean |predicted - observed| over equal-count bins."""
    table = reliability_bins(preds, labels, bins)
    total = sum(b.count for b in table)
    if not total:
        return 0.0
    return sum(b.count * abs(b.mean_predicted - b.observed_rate) for b in table) / total


# -- correcting ---------------------------------------------------------------------


class PlattCalibrator:
    """Online Platt scaling on logits, p = sigmoid(a * s + b), fitted by online Newton steps.

    Fit: it starts at the identity (a=1, b=0) with a prior worth `prior_weight`
    units of Fisher information on each parameter, and every event adds its
    own information, so it moves only as far as the evidence supports (the
    Laplace / extended-Kalman update for logistic regression).  The data part
    of the information decays over `window` events, so the correction keeps
    following a model that keeps changing.

    Use: a correction fitted on noise costs log loss when the scores were
    calibrated already, so it is applied only while it is winning: the
    prequential log-likelihood ratio of the corrected over the raw scores
    (decayed over the same window) must exceed `min_gain` nats, and its slope
    must not be negative (the correction never reverses the scores' order).
    """

    __slots__ = ("a", "b", "prior_weight", "window", "min_gain", "gain", "positives", "n", "_haa", "_hab", "_hbb", "_rho")

    def __init__(self, prior_weight: float = 20.0, window: float = 200_000.0, min_gain: float = 3.0) -> None:
        self.a = 1.0
        self.b = 0.0
        self.prior_weight = prior_weight
        self.window = window
        self.min_gain = min_gain
        self.gain = 0.0  # decayed sum of (raw log loss - corrected log loss)
        self.positives = 0
        self.n = 0
        self._haa = self._hab = self._hbb = 0.0  # information from data (decaying)
        self._rho = 1.0 - 1.0 / window if window > 0 else 1.0

    @property
    def active(self) -> bool:
        """Winning, and rising: a fit whose slope fell below 0 would rank every score in reverse, the impressions
        the model likes least priced highest, so it is not a calibration of these scores and stays unapplied."""
        return self.gain > self.min_gain and self.a >= 0.0

    def params(self) -> tuple[float, float]:
        """(a, b) to apply now: the fitted ones while they are winning, else the identity."""
        return (self.a, self.b) if self.active else (1.0, 0.0)

    def apply(self, s: float) -> float:
        """Calibrated probability for logit score s."""
        a, b = self.params()
        return sigmoid(a * s + b)

    def learn(self, s: float, label: bool) -> None:
        """Score the raw and corrected predictions on this label, then take one Newton step."""
        p = sigmoid(self.a * s + self.b)
        raw = sigmoid(s)
        if label:
            self.gain = self._rho * self.gain + math.log(p) - math.log(raw)
        else:
            self.gain = self._rho * self.gain + math.log1p(-p) - math.log1p(-raw)
        g = p - (1.0 if label else 0.0)
        w = max(p * (1.0 - p), 1e-9)
        rho = self._rho
        self._haa = rho * self._haa + w * s * s
        self._hab = rho * self._hab + w * s
        self._hbb = rho * self._hbb + w
        haa = self._haa + self.prior_weight
        hab = self._hab
        hbb = self._hbb + self.prior_weight
        det = haa * hbb - hab * hab
        ga, gb = g * s, g
        self.a -= (hbb * ga - hab * gb) / det
        self.b -= (haa * gb - hab * ga) / det
        self.n += 1
        if label:
            self.positives += 1

    def state(self) -> dict:
        """Everything `learn` reads, exactly (floats survive JSON round trips): for a learner's checkpoint."""
        return {"a": self.a, "b": self.b, "prior_weight": self.prior_weight, "window": self.window,
                "min_gain": self.min_gain, "gain": self.gain, "positives": self.positives, "n": self.n,
                "info": [self._haa, self._hab, self._hbb]}

    @classmethod
    def from_state(cls, d: dict) -> PlattCalibrator:
        """ValueError for a state no calibrator could be in: a number not finite, a count out of range."""
        cal = cls(prior_weight=float(d["prior_weight"]), window=float(d["window"]), min_gain=float(d["min_gain"]))
        cal.a, cal.b, cal.gain = float(d["a"]), float(d["b"]), float(d["gain"])
        cal.positives, cal.n = int(d["positives"]), int(d["n"])
        cal._haa, cal._hab, cal._hbb = (float(x) for x in d["info"])
        numbers = (cal.prior_weight, cal.window, cal.min_gain, cal.a, cal.b, cal.gain, cal._haa, cal._hab, cal._hbb)
        if not all(math.isfinite(x) for x in numbers) or cal.prior_weight <= 0 or cal.window <= 0:
            raise ValueError("calibrator state has a number that is not finite, or a non-positive prior or window")
        if not 0 <= cal.positives <= cal.n:
            raise ValueError(f"calibrator state counts {cal.positives} positives in {cal.n} events")
        return cal

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "active": self.active, "gain": self.gain, "prior_weight": self.prior_weight,
                "window": self.window, "positives": self.positives, "n": self.n}
