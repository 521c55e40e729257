"""The online learner: planted signals, cold start, down-sampling."""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from models.calibration import sigmoid
from models.features import candidate_features, hash_feature
from models.learner import CTRLearner, LearnerConfig, encode_state

DOMAINS = [f"site{i}.example" for i in range(20)]


def planted_event(rng: random.Random) -> tuple[tuple[int, ...], bool, float, str, str]:
    """Truth: domain site0 quadruples the odds; creative A does well at hour 20 only."""
    domain = rng.choice(DOMAINS)
    hour = rng.randrange(24)
    creative = rng.choice(("A", "B"))
    z = -4.0 + (1.4 if domain == DOMAINS[0] else 0.0) + (1.5 if creative == "A" and hour == 20 else 0.0)
    req = (hash_feature("domain", domain), hash_feature("hour", hour))
    feats = req + candidate_features(req, hour, domain, "camp", creative)
    p = sigmoid(z)
    return feats, rng.random() < p, p, "camp", creative


def test_learns_a_planted_signal() -> None:
    rng = random.Random(5)
    learner = CTRLearner()
    for _ in range(40_000):
        feats, y, _, camp, cre = planted_event(rng)
        learner.learn_one(feats, y, camp, cre)
    assert learner.n_seen == 40_000

    def pctr(domain: str, hour: int, creative: str) -> float:
        req = (hash_feature("domain", domain), hash_feature("hour", hour))
        return learner.predict_one(req + candidate_features(req, hour, domain, "camp", creative), "camp", creative)

    base = sigmoid(-4.0)
    assert 0.6 * base < pctr(DOMAINS[5], 3, "B") < 1.6 * base
    assert pctr(DOMAINS[0], 3, "B") > 2.0 * pctr(DOMAINS[5], 3, "B")  # the domain effect was learned
    assert pctr(DOMAINS[5], 20, "A") > 2.0 * pctr(DOMAINS[5], 20, "B")  # the creative x hour cross was learned
    assert pctr(DOMAINS[5], 20, "A") > 2.0 * pctr(DOMAINS[5], 3, "A")


def test_progressive_log_loss_beats_the_base_rate() -> None:
    rng = random.Random(6)
    learner = CTRLearner()
    loss_model = loss_const = 0.0
    clicks = seen = 0
    for i in range(30_000):
        feats, y, _, camp, cre = planted_event(rng)
        p = learner.predict_one(feats, camp, cre)
        c = (clicks + 0.02) / (seen + 1)
        if i >= 10_000:  # score the second part, once both have warmed up
            loss_model -= math.log(p if y else 1 - p)
            loss_const -= math.log(c if y else 1 - c)
        learner.learn_one(feats, y, camp, cre)
        clicks += y
        seen += 1
    assert loss_model < 0.98 * loss_const


def test_new_creative_starts_from_its_campaigns_rate() -> None:
    rng = random.Random(7)
    learner = CTRLearner()
    req = (hash_feature("domain", "d.example"),)
    for campaign, creative, ctr in (("good", "g1", 0.02), ("poor", "p1", 0.002)):
        feats = req + candidate_features(req, 10, "d.example", campaign, creative)
        for _ in range(20_000):
            learner.learn_one(feats, rng.random() < ctr, campaign, creative)
    observed = learner.counts.campaigns["good"][0] / learner.counts.campaigns["good"][1]
    new = learner.predict_one(req + candidate_features(req, 10, "d.example", "good", "g-new"), "good", "g-new")
    assert abs(new - observed) < 0.1 * observed
    poor_new = learner.predict_one(req + candidate_features(req, 10, "d.example", "poor", "p-new"), "poor", "p-new")
    assert poor_new < new / 3
    unknown = learner.predict_one(req, "never-seen", "x")
    assert poor_new < unknown < new  # an unknown campaign gets the global rate


def test_negative_down_sampling_is_corrected() -> None:
    rng = random.Random(8)
    learner = CTRLearner(LearnerConfig(negative_rate=0.1, calibrate=False))
    feats = (hash_feature("domain", "d"),)
    for _ in range(60_000):
        learner.learn_one(feats, rng.random() < 0.02, "c", "cr")
    assert learner.n_learned < 0.2 * learner.n_seen
    p = learner.predict_one(feats, "c", "cr")
    assert 0.015 < p < 0.027  # uncorrected it would be about 0.17


def test_a_learner_rebuilt_from_its_state_learns_on_exactly_as_the_original() -> None:
    """The checkpoint a restarted worker resumes from: z and n of every feature (not only non-zero weights), counts,
    calibrator and the down-sampling generator.  Leave any of them out and the continued model drifts."""
    rng = random.Random(11)
    events = [planted_event(rng) for _ in range(6000)]
    cfg = LearnerConfig(negative_rate=0.3, seed=4)
    straight, first = CTRLearner(cfg), CTRLearner(cfg)
    for feats, clicked, _, camp, cr in events:
        straight.learn_one(feats, clicked, camp, cr)
    for feats, clicked, _, camp, cr in events[:3500]:
        first.learn_one(feats, clicked, camp, cr)
    resumed = CTRLearner.from_state_bytes(first.state_bytes())
    for feats, clicked, _, camp, cr in events[3500:]:
        resumed.learn_one(feats, clicked, camp, cr)
    assert resumed.n_learned == straight.n_learned < straight.n_seen == resumed.n_seen
    assert resumed.weights() == straight.weights()
    assert resumed.calibrator.state() == straight.calibrator.state()
    assert resumed.snapshot(version=1).to_dict() == straight.snapshot(version=1).to_dict()
    probe = events[0]
    assert resumed.predict_one(probe[0], probe[3], probe[4]) == straight.predict_one(probe[0], probe[3], probe[4])


def test_a_damaged_or_foreign_learner_state_is_refused_with_its_reason() -> None:
    good = CTRLearner()
    good.learn_one([1, 2, 3], True, "c", "r")
    data = good.state_bytes()
    for bad in (b"not zlib", data[:-10], zlib.compress(b"[1, 2]")):
        with pytest.raises(ValueError, match="not a usable learner state"):
            CTRLearner.from_state_bytes(bad)
    doc = orjson.loads(zlib.decompress(data))
    doc["format"] = 99
    with pytest.raises(ValueError, match="unsupported learner state format 99"):
        CTRLearner.from_state_bytes(zlib.compress(orjson.dumps(doc)))
    doc["format"], doc["z"] = 1, doc["z"][:-12]  # one float short
    with pytest.raises(ValueError, match="not a usable learner state"):
        CTRLearner.from_state_bytes(zlib.compress(orjson.dumps(doc)))


def test_a_captured_state_is_a_copy_the_learner_can_learn_on_from_while_it_is_encoded() -> None:
    """A worker takes the copy between events and encodes it in a thread while it goes on learning."""
    rng = random.Random(3)
    events = [planted_event(rng) for _ in range(800)]
    learner = CTRLearner()
    for feats, clicked, _, camp, cr in events[:500]:
        learner.learn_one(feats, clicked, camp, cr)
    at_capture = learner.state_bytes()
    captured = learner.capture_state()
    for feats, clicked, _, camp, cr in events[500:]:
        learner.learn_one(feats, clicked, camp, cr)
    assert encode_state(captured) == at_capture != learner.state_bytes()


def _state_with(learner: CTRLearner, change: Callable[[dict[str, Any]], object]) -> bytes:
    captured = learner.capture_state()
    change(captured)
    return encode_state(captured)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s["w"].update({5: math.inf}), "not finite"),
        (lambda s: s["n"].update({5: -1.0}), "negative"),
        (lambda s: (s["z"].update({2**40: 0.1}), s["n"].update({2**40: 0.1})), "feature id"),
        (lambda s: s["calibrator"].update(a="nan"), "not finite"),  # float("nan") reads a string
        (lambda s: s["calibrator"].update(positives=5, n=2), "positives"),
        (lambda s: s["config"].update(alpha=0.0), "alpha"),
        (lambda s: s["counts"]["campaigns"].append(["x", 3, 1]), "clicks"),
    ],
)
def test_a_learner_state_no_learner_could_reach_is_refused(change: Callable[[dict[str, Any]], object],
                                                            problem: str) -> None:
    """A worker taking such a checkpoint over would learn nothing again, or publish models no bidder can read."""
    good = CTRLearner()
    good.learn_one([1, 2, 5], True, "c", "r")
    CTRLearner.from_state_bytes(_state_with(good, lambda s: None))  # the unchanged state is taken
    with pytest.raises(ValueError, match=problem):
        CTRLearner.from_state_bytes(_state_with(good, change))
