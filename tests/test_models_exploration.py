"""Exploration: a new creative gets a chance to win."""

from __future__ import annotations

import random

from models.exploration import explore_pctr, is_exploring
from models.features import hash_feature
from models.learner import CTRLearner


def snapshot_with_an_established_creative():
    rng = random.Random(21)
    learner = CTRLearner()
    feats = (hash_feature("domain", "d"),)
    for _ in range(20_000):
        learner.learn_one(feats, rng.random() < 0.01, "camp", "old")
    return learner.snapshot(), feats


def test_new_creative_sometimes_beats_the_established_one() -> None:
    snap, feats = snapshot_with_an_established_creative()
    base = snap.base_score(feats)
    rng = random.Random(1)
    old_p = explore_pctr(snap, rng, snap.predict(base, (), "camp", "old"), "camp", "old")
    assert old_p == snap.predict(base, (), "camp", "old")  # enough impressions: the model's own pCTR
    assert is_exploring(snap, "camp", "new") and not is_exploring(snap, "camp", "old")
    wins = sum(explore_pctr(snap, rng, 0.0, "camp", "new") > old_p for _ in range(2_000))
    assert 0 < wins < 2_000  # a real chance, but not a certainty


def test_draws_are_reproducible_with_a_seed() -> None:
    snap, _ = snapshot_with_an_established_creative()
    a = [explore_pctr(snap, random.Random(5), 0.0, "camp", "new") for _ in range(3)]
    b = [explore_pctr(snap, random.Random(5), 0.0, "camp", "new") for _ in range(3)]
    assert a == b


def test_draws_narrow_as_impressions_accumulate() -> None:
    rng = random.Random(22)
    learner = CTRLearner()
    feats = (hash_feature("domain", "d"),)
    for _ in range(5_000):
        learner.learn_one(feats, rng.random() < 0.01, "camp", "old")
    for _ in range(800):
        learner.learn_one(feats, rng.random() < 0.01, "camp", "newish")
    snap = learner.snapshot()

    def spread(creative: str) -> float:
        r = random.Random(3)
        draws = sorted(explore_pctr(snap, r, 0.0, "camp", creative) for _ in range(2_000))
        return draws[1_900] - draws[100]

    assert spread("newish") < spread("brand-new")
