"""The learner's written-out FTRL step against River's own update: equal bit for bit, so results cannot move."""

from __future__ import annotations

import random

import pytest

from models.learner import CTRLearner, LearnerConfig


class RiverStepLearner(CTRLearner):
    """The same learner, stepping with River's `learn_one` (the reference)."""

    def _step(self, x: dict[int, float], label: bool, margin: float) -> None:
        self._river_step(x, label)


def stream(seed: int, n: int) -> list[tuple[list[int], bool, str, str]]:
    """Hashed-looking features with a few strong ones, so weights cross the L1 threshold both ways."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        feats = [s * 1000 + int(rng.paretovariate(1.2)) % 300 for s in range(12)]
        p = 0.02 + (0.25 if feats[0] % 7 == 0 else 0.0) + (0.1 if feats[3] == 3001 else 0.0)
        out.append((feats, rng.random() < p, f"c{rng.randrange(4)}", f"r{rng.randrange(3)}"))
    return out


@pytest.mark.parametrize("config", [LearnerConfig(), LearnerConfig(alpha=0.3, l1=0.0, l2=0.0),
                                    LearnerConfig(negative_rate=0.25, seed=3), LearnerConfig(l1=2.0, calibrate=False)])
def test_written_out_step_equals_rivers(config: LearnerConfig) -> None:
    fast, ref = CTRLearner(config), RiverStepLearner(config)
    for feats, label, camp, cre in stream(7, 6000):
        before = fast.predict_one(feats, camp, cre)
        assert before == ref.predict_one(feats, camp, cre)
        assert fast.learn_one(feats, label, camp, cre) == before  # the score it had just before learning
        ref.learn_one(feats, label, camp, cre)
    assert dict(fast._optimizer.z) == dict(ref._optimizer.z)
    assert dict(fast._optimizer.n) == dict(ref._optimizer.n)
    assert fast._model._weights.to_dict() == ref._model._weights.to_dict()
    assert fast._optimizer.n_iterations == ref._optimizer.n_iterations == fast.n_learned
    assert fast._model.intercept == ref._model.intercept
    assert fast.calibrator.to_dict() == ref.calibrator.to_dict()
    assert sum(1 for w in fast.weights().values() if w != 0.0) > 50  # the stream did move many weights


def test_a_feature_id_met_twice_steps_as_rivers_with_its_count() -> None:
    """A candidate feature hashed to a request feature's id: the bid path adds its weight twice, so the learner
    counts it twice (x = 2), and the written-out step still equals River's update bit for bit."""
    fast, ref = CTRLearner(), RiverStepLearner()
    for feats, label, camp, cre in stream(11, 3000):
        feats = [*feats, feats[2], feats[2]]  # met three times
        assert fast.learn_one(feats, label, camp, cre) == ref.learn_one(feats, label, camp, cre)
    assert dict(fast._optimizer.z) == dict(ref._optimizer.z) and dict(fast._optimizer.n) == dict(ref._optimizer.n)
    assert fast._model._weights.to_dict() == ref._model._weights.to_dict()
    assert CTRLearner._x([5, 7, 5, 5]) == {5: 3.0, 7: 1.0, **CTRLearner._x([])}
