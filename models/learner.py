"""The online CTR learner: River logistic regression with FTRL-Proximal.

Why FTRL-Proximal: per-coordinate learning rates suit hashed categorical
features, where a domain seen a million times and one seen twice need very
different step sizes, and the L1 term keeps the weight dict sparse.

On top of the linear model sit the cold-start prior (Beta click counts per
campaign and creative, see models.prior) and an online Platt calibration
trained on the scores the model gave before it saw each label.  Every label
updates the calibrator first, then the counts, then the weights, so nothing
is ever scored on data it was trained on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from river import linear_model, optim

from models.calibration import PlattCalibrator, logit, sigmoid
from models.features import BIAS_ID
from models.prior import ClickCounts, PriorConfig
from models.snapshot import ModelSnapshot


@dataclass(frozen=True, slots=True)
class LearnerConfig:
    """Hyperparameters; the defaults are the ones tuned with `streambid bench ctr`."""

    alpha: float = 0.1
    beta: float = 1.0
    l1: float = 0.2
    l2: float = 1.0
    prior: PriorConfig = field(default_factory=PriorConfig)
    calibrate: bool = True
    calibration_prior: float = 20.0  # Fisher information holding the calibration at the identity
    calibration_window: float = 200_000.0  # events over which the calibration's evidence decays
    negative_rate: float = 1.0  # fraction of non-clicks the weights learn from (1.0: all)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class CTRLearner:
    """Learns pCTR from (features, clicked) one event at a time; freezes into ModelSnapshots."""

    def __init__(self, config: LearnerConfig | None = None) -> None:
        cfg = self.config = config or LearnerConfig()
        if not 0.0 < cfg.negative_rate <= 1.0:
            raise ValueError("negative_rate must be in (0, 1]")
        self._optimizer = optim.FTRLProximal(alpha=cfg.alpha, beta=cfg.beta, l1=cfg.l1, l2=cfg.l2)
        # River's intercept stays fixed at logit(prior_ctr), so the model starts from the prior CTR rather
        # than 0.5; the learned intercept is the weight of BIAS_ID, updated by FTRL like every other weight.
        self._model = linear_model.LogisticRegression(
            optimizer=self._optimizer, l2=0.0, intercept_init=logit(cfg.prior.prior_ctr), intercept_lr=0.0
        )
        self.counts = ClickCounts(cfg.prior)
        self.calibrator = PlattCalibrator(prior_weight=cfg.calibration_prior, window=cfg.calibration_window)
        self.n_seen = 0
        self.n_learned = 0  # events the weights learned from (after down-sampling)
        # Added at prediction time only: a model trained on a fraction w of the negatives over-predicts by 1/w in odds.
        self._shift = math.log(cfg.negative_rate)
        self._rng = random.Random(cfg.seed)
        self._version = 0

    # -- scoring --------------------------------------------------------------------------

    @staticmethod
    def _x(features: Sequence[int]) -> dict[int, float]:
        x = dict.fromkeys(features, 1.0)
        x[BIAS_ID] = 1.0
        return x

    def _raw_logit(self, x: dict[int, float], campaign: str, creative: str) -> float:
        """Model logit (down-sampling undone) blended with the creative's prior; before calibration."""
        lam, offset = self.counts.blend(campaign, creative)
        return lam * (self._model._raw_dot_one(x) + self._shift) + offset

    def predict_one(self, features: Sequence[int], campaign: str, creative: str) -> float:
        """Calibrated pCTR; `features` are request + candidate ids (the bias is added here)."""
        s = self._raw_logit(self._x(features), campaign, creative)
        if self.config.calibrate:
            return self.calibrator.apply(s)
        return sigmoid(s)

    # -- learning -------------------------------------------------------------------------

    def learn_one(self, features: Sequence[int], label: bool, campaign: str, creative: str) -> None:
        """Learn from one impression and whether it was clicked."""
        x = self._x(features)
        label = bool(label)
        if self.config.calibrate:
            self.calibrator.learn(self._raw_logit(x, campaign, creative), label)
        self.counts.add(campaign, creative, label)
        self.n_seen += 1
        rate = self.config.negative_rate
        if label or rate >= 1.0 or self._rng.random() < rate:
            self._model.learn_one(x, label)
            self._refresh(x)
            self.n_learned += 1

    def _refresh(self, x: dict[int, float]) -> None:
        """Recompute the touched weights from FTRL's (z, n) state.

        River's FTRL step computes each weight from the state *before* the
        update it then applies, so stored weights lag one update behind, and a
        weight whose |z| fell under l1 keeps its old value instead of becoming 0.
        Recomputing after each step gives the exact FTRL-Proximal weights.
        """
        cfg = self.config
        z, n, w = self._optimizer.z, self._optimizer.n, self._model._weights
        alpha, beta, l1, l2 = cfg.alpha, cfg.beta, cfg.l1, cfg.l2
        for i in x:
            zi = z[i]
            if zi > l1:
                w[i] = -(zi - l1) / ((beta + math.sqrt(n[i])) / alpha + l2)
            elif zi < -l1:
                w[i] = -(zi + l1) / ((beta + math.sqrt(n[i])) / alpha + l2)
            else:
                w[i] = 0.0

    # -- freezing -------------------------------------------------------------------------

    def weights(self) -> dict[int, float]:
        """Non-zero weights, including the bias under BIAS_ID."""
        return {i: w for i, w in self._model._weights.to_dict().items() if w != 0.0}

    def snapshot(self, version: int | None = None) -> ModelSnapshot:
        """Freeze the current state into an immutable scorer (version increments unless given)."""
        self._version = self._version + 1 if version is None else version
        weights = self.weights()
        bias = weights.pop(BIAS_ID, 0.0)
        calibration = self.calibrator.params() if self.config.calibrate else (1.0, 0.0)
        return ModelSnapshot(
            version=self._version,
            weights=weights,
            bias=bias,
            counts=self.counts.copy(),
            calibration=calibration,
            logit_shift=self._model.intercept + self._shift,
            n_seen=self.n_seen,
        )
