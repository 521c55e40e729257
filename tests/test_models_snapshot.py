"""The serving snapshot: same scores as the learner, safe round trips, explanations."""

from __future__ import annotations

import random
import zlib

import orjson
import pytest

from models.features import BIAS_ID, candidate_features, hash_feature
from models.learner import CTRLearner, LearnerConfig
from models.prior import ClickCounts, PriorConfig
from models.snapshot import ModelSnapshot


def trained_learner(seed: int = 11, n: int = 8_000) -> tuple[CTRLearner, list[tuple]]:
    rng = random.Random(seed)
    learner = CTRLearner()
    cases = []
    for _ in range(n):
        domain = f"site{rng.randrange(30)}"
        hour = rng.randrange(24)
        campaign = rng.choice(("c1", "c2"))
        creative = rng.choice(("a", "b", "c"))
        req = (hash_feature("domain", domain), hash_feature("hour", hour))
        cand = candidate_features(req, hour, domain, campaign, creative)
        p = 0.05 if domain == "site3" else 0.01
        learner.learn_one(req + cand, rng.random() < p, campaign, creative)
        cases.append((req, cand, campaign, creative))
    # plus candidates the model never saw
    req = (hash_feature("domain", "new.example"), hash_feature("hour", 3))
    cases.append((req, candidate_features(req, 3, "new.example", "c1", "fresh"), "c1", "fresh"))
    cases.append((req, candidate_features(req, 3, "new.example", "c9", "fresh"), "c9", "fresh"))
    return learner, cases


def scores(snap: ModelSnapshot, cases: list[tuple]) -> list[float]:
    return [snap.predict(snap.base_score(req), cand, camp, cre) for req, cand, camp, cre in cases]


def test_snapshot_scores_like_the_learner() -> None:
    learner, cases = trained_learner()
    snap = learner.snapshot()
    for (req, cand, camp, cre), p in zip(cases[-200:], scores(snap, cases[-200:]), strict=True):
        assert p == pytest.approx(learner.predict_one(req + cand, camp, cre), rel=1e-9)


def test_a_candidate_feature_hashed_onto_a_request_feature_scores_as_it_was_trained() -> None:
    """The bid path adds the shared id's weight twice (base score, then candidate): the learner counts it twice."""
    learner, rng = CTRLearner(), random.Random(5)
    req = (hash_feature("domain", "a.example"), hash_feature("hour", 4))
    cand = (req[0], *candidate_features(req, 4, "a.example", "c1", "a")[1:])  # the campaign id collides
    for _ in range(400):
        learner.learn_one(req + cand, rng.random() < 0.2, "c1", "a")
    snap = learner.snapshot()
    assert snap.predict(snap.base_score(req), cand, "c1", "a") == pytest.approx(learner.predict_one(req + cand, "c1", "a"),
                                                                                rel=1e-9)


def test_a_feature_hashed_onto_the_bias_id_scores_as_it_was_trained() -> None:
    """One feature value in a million hashes to the bias's id: trained, the two add up; the snapshot must too."""
    domain = "d1291298.example"
    assert hash_feature("domain", domain) == BIAS_ID
    learner, rng = CTRLearner(), random.Random(0)
    colliding, plain = hash_feature("domain", domain), hash_feature("domain", "ok.example")
    for i in range(3000):
        learner.learn_one([colliding if i % 2 else plain, 11, 12], rng.random() < 0.05, "c1", "k1")
    snap = learner.snapshot()
    for f in (plain, colliding):
        assert snap.predict(snap.base_score((f, 11, 12)), (), "c1", "k1") == pytest.approx(
            learner.predict_one([f, 11, 12], "c1", "k1"), rel=1e-9)


@pytest.mark.parametrize("blend_impressions", [100.0, 0.0])
def test_a_creative_not_counted_yet_scores_like_the_learner_whatever_the_blending(blend_impressions: float) -> None:
    """With blending off (0) the learner scores a new creative by the model alone: so must the bidders' snapshot."""
    learner, rng = CTRLearner(LearnerConfig(prior=PriorConfig(blend_impressions=blend_impressions))), random.Random(8)
    req = (hash_feature("domain", "a.example"), hash_feature("hour", 4))
    for _ in range(2_000):
        feats = req + candidate_features(req, 4, "a.example", "c1", "old")
        learner.learn_one(feats, rng.random() < 0.15, "c1", "old")
    snap = learner.snapshot()
    for camp in ("c1", "c-new"):
        cand = candidate_features(req, 4, "a.example", camp, "new")
        assert snap.predict(snap.base_score(req), cand, camp, "new") == pytest.approx(
            learner.predict_one(req + cand, camp, "new"), rel=1e-9)


def test_bytes_round_trip_gives_identical_predictions() -> None:
    learner, cases = trained_learner()
    snap = learner.snapshot()
    data = snap.to_bytes()
    again = ModelSnapshot.from_bytes(data)
    assert again.version == snap.version and again.n_seen == snap.n_seen
    assert scores(again, cases) == scores(snap, cases)
    assert len(data) < 200_000  # compact: compressed, not pickled


def test_save_and_load_round_trip(tmp_path) -> None:
    learner, cases = trained_learner(seed=12)
    snap = learner.snapshot()
    path = tmp_path / "model.snap"
    snap.save(path)
    assert scores(ModelSnapshot.load(path), cases) == scores(snap, cases)


def test_snapshot_is_frozen_while_the_learner_goes_on() -> None:
    learner, cases = trained_learner(seed=13)
    snap = learner.snapshot()
    before = scores(snap, cases[:100])
    req, cand, camp, cre = cases[0]
    for _ in range(500):
        learner.learn_one(req + cand, True, camp, cre)
    assert scores(snap, cases[:100]) == before
    newer = learner.snapshot()
    assert newer.version == snap.version + 1
    assert scores(newer, cases[:1])[0] > before[0]


def test_empty_snapshot_scores_the_prior() -> None:
    snap = ModelSnapshot.empty(prior_ctr=0.002)
    req = (hash_feature("domain", "x"),)
    p = snap.predict(snap.base_score(req), candidate_features(req, 1, "x", "c", "cr"), "c", "cr")
    assert p == pytest.approx(0.002)


def test_corrupt_bytes_are_rejected() -> None:
    with pytest.raises(ValueError):
        ModelSnapshot.from_bytes(zlib.compress(orjson.dumps({"format": 99})))
    with pytest.raises(ValueError):
        ModelSnapshot.from_bytes(b"not a snapshot")
    with pytest.raises(ValueError, match="not a model snapshot"):
        ModelSnapshot.from_bytes("not bytes at all")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"ids": [2**64 - 1], "weights": [1.0]}, "feature id"),  # would overflow the bidder's dense weight array
        ({"ids": [-1], "weights": [1.0]}, "feature id"),
        ({"bias": float("nan")}, "finite"),
        ({"weights": ["inf"], "ids": [7]}, "finite"),
        ({"calibration": [float("inf"), 0.0]}, "finite"),
        ({"bias": 1e17, "weights": [-1e17], "ids": [7]}, "beyond"),  # cancelling giants: rounding beats the bound's margin
        ({"logit_shift": -2e4}, "beyond"),
        ({"counts": {"config": {}, "clicks": 5, "impressions": 2, "campaigns": [], "creatives": []}}, "clicks"),
        ({"counts": {"config": {"prior_ctr": 0}, "clicks": 0, "impressions": 0, "campaigns": [], "creatives": []}},
         "prior_ctr"),
        ({"counts": {"config": {"nonsense": 1}, "clicks": 0, "impressions": 0, "campaigns": [], "creatives": []}},
         "nonsense"),
        ({"version": -1}, "non-negative integers"),
        ({"n_seen": 2.5}, "non-negative integers"),
        ({"format": True}, "format"),  # equal to 1 in Python, yet no format this reader knows
        ({"format": 1.0}, "format"),
    ],
)
def test_a_snapshot_no_learner_could_make_is_refused(change: dict, problem: str) -> None:
    """A bidder keeps its model rather than score with NaN, overflow or impossible counts."""
    doc = {**ModelSnapshot.empty().to_dict(), **change}
    with pytest.raises(ValueError, match=problem):
        ModelSnapshot.from_bytes(zlib.compress(orjson.dumps(doc)))


def test_explain_names_the_features_that_matter() -> None:
    learner, _ = trained_learner(seed=14, n=20_000)
    snap = learner.snapshot()
    req = (hash_feature("domain", "site3"), hash_feature("hour", 5))
    cand = candidate_features(req, 5, "site3", "c1", "a")
    exp = snap.explain(req, cand, "c1", "a", top=3)
    assert exp["pctr"] == snap.predict(snap.base_score(req), cand, "c1", "a")
    assert len(exp["top_features"]) == 3
    by_name = {f["name"]: f["weight"] for f in exp["top_features"]}
    assert by_name.get("domain=site3", 0.0) > 0.3  # the one planted effect is among the top three
    plain = snap.explain((hash_feature("domain", "site7"), req[1]), cand, "c1", "a", top=10)
    assert {f["name"]: f["weight"] for f in plain["top_features"]}["domain=site7"] < by_name["domain=site3"] - 0.3


@pytest.mark.parametrize("blend_impressions", [100.0, 0.0])
def test_all_blends_at_once_equal_each_creative_blend(blend_impressions: float) -> None:
    """A snapshot computes every creative's blend when it is loaded, with the global and campaign rates worked out
    once; each must be the bits `ClickCounts.blend` gives for that creative alone."""
    rng = random.Random(4)
    counts = ClickCounts(PriorConfig(blend_impressions=blend_impressions, prior_ctr=0.003))
    for _ in range(20_000):
        camp = f"c{rng.randrange(40)}"
        counts.add(camp, f"cr{rng.randrange(6)}", clicked=rng.random() < 0.01 * (1 + int(camp[1:]) % 5))
    got = counts.blends()
    assert len(got) == len(counts.creatives) > 200
    assert got == {key: counts.blend(*key) for key in counts.creatives}
    if blend_impressions:
        assert len(set(got.values())) > 100  # creatives do differ
    else:
        assert set(got.values()) == {(1.0, 0.0)}  # no blending: the model alone
