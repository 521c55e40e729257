"""Edges of the model package: calibration that keeps the ranking, and records a bidder or worker must refuse."""

from __future__ import annotations

import random
import zlib

import orjson
import pytest

from bidder.openrtb import parse_request
from models import snapshot as snapshot_module
from models.calibration import PlattCalibrator, sigmoid
from models.features import NAME_CAPACITY, candidate_features, feature_name, hash_feature, request_features
from models.learner import CTRLearner, encode_state
from models.prior import ClickCounts
from models.snapshot import ModelSnapshot


def backwards_stream(n: int, seed: int) -> list[tuple[float, bool]]:
    """(score, label) where a higher score means fewer clicks: a model that drifted, or a broken feature."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = rng.gauss(-3.0, 1.5)
        out.append((s, rng.random() < sigmoid(-s - 6.0)))
    return out


def test_calibration_never_reverses_the_ranking() -> None:
    """Platt scaling with a negative slope would price the impressions the model likes least highest."""
    cal = PlattCalibrator()
    for s, y in backwards_stream(20_000, seed=1):
        cal.learn(s, y)
    assert cal.a < 0.0 < cal.gain  # the best Platt fit of such scores reverses them, and beats them
    assert not cal.active and cal.params() == (1.0, 0.0)
    grid = [x / 10 for x in range(-100, 20)]
    ps = [cal.apply(s) for s in grid]
    assert all(p <= q for p, q in zip(ps, ps[1:], strict=False))
    assert ps[0] < 0.2  # the lowest scores are not priced as likely clicks (reversed, s = -10 would read 0.9)


def test_a_snapshot_of_a_learner_fed_backwards_scores_is_one_bidders_take() -> None:
    """The worker publishes it: bidders must accept it, and it must still rank as the model does."""
    learner = CTRLearner()
    for s, y in backwards_stream(20_000, seed=2):
        learner.calibrator.learn(s, y)
    snap = ModelSnapshot.from_bytes(learner.snapshot().to_bytes())
    assert snap.calibration[0] >= 0.0
    low, high = snap.predict(-8.0, (), "c", "r"), snap.predict(0.0, (), "c", "r")
    assert low <= high


def test_a_restored_calibrator_with_a_falling_slope_is_not_applied() -> None:
    state = {**PlattCalibrator().state(), "a": -3.0, "b": -4.0, "gain": 10.0}
    restored = PlattCalibrator.from_state(state)
    assert restored.params() == (1.0, 0.0)
    assert restored.apply(-2.0) == sigmoid(-2.0)


def test_a_snapshot_with_a_falling_calibration_is_refused() -> None:
    doc = {**ModelSnapshot.empty().to_dict(), "calibration": [-1.0, 0.0]}
    with pytest.raises(ValueError, match="calibration slope"):
        ModelSnapshot.from_bytes(zlib.compress(orjson.dumps(doc)))


def padded(doc: dict, pad: int) -> bytes:
    """A valid document followed by `pad` bytes of JSON whitespace, compressed: kilobytes that inflate to `pad`."""
    out = zlib.compressobj()
    parts = [out.compress(orjson.dumps(doc))]
    chunk = b" " * (1 << 20)
    for _ in range(pad >> 20):
        parts.append(out.compress(chunk))
    parts.append(out.flush())
    return b"".join(parts)


def test_a_snapshot_that_inflates_past_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compressed record inflates up to a thousandfold: the model topic's 16 MiB could become 16 GiB in a bidder."""
    monkeypatch.setattr(snapshot_module, "MAX_DOCUMENT_BYTES", 1 << 20, raising=False)
    doc = ModelSnapshot.empty().to_dict()
    small = padded(doc, 0)
    assert ModelSnapshot.from_bytes(small).version == 0  # under the limit: taken
    bomb = padded(doc, 4 << 20)
    assert len(bomb) < 20_000
    with pytest.raises(ValueError, match="more than 1 MiB"):
        ModelSnapshot.from_bytes(bomb)
    with pytest.raises(ValueError, match="truncated"):
        ModelSnapshot.from_bytes(small[:-4])


def test_a_learner_state_that_inflates_past_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_module, "MAX_DOCUMENT_BYTES", 1 << 20, raising=False)
    learner = CTRLearner()
    learner.learn_one([1, 2, 3], True, "c", "r")
    doc = orjson.loads(zlib.decompress(learner.state_bytes()))
    assert CTRLearner.from_state_bytes(padded(doc, 0)).n_seen == 1
    with pytest.raises(ValueError, match="more than 1 MiB"):
        CTRLearner.from_state_bytes(padded(doc, 4 << 20))


def test_a_foreign_document_is_named_not_echoed() -> None:
    """Something else written to the model topic: the refusal, logged by every bidder, stays one short line."""
    for foreign in ([0] * 200_000, "x" * 200_000, {"format": "y" * 200_000}):
        with pytest.raises(ValueError, match="unsupported model snapshot format") as e:
            ModelSnapshot.from_bytes(zlib.compress(orjson.dumps(foreign)))
        assert len(str(e.value)) < 120


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.update(rng=[3, [1] * 624 + [2**63], None]), "not a usable learner state"),
        (lambda s: s.update(rng=[3, [-1] * 624 + [624], None]), "not a usable learner state"),
        (lambda s: s.update(n_seen=-5), "negative"),
        (lambda s: s.update(version=-1), "negative"),
    ],
)
def test_a_learner_state_a_worker_cannot_use_is_a_value_error(change, problem: str) -> None:
    """The worker skips a checkpoint it cannot use (ValueError) and learns on; anything else stops it, and a
    negative count would make every model it publishes one that bidders refuse."""
    learner = CTRLearner()
    learner.learn_one([1, 2, 3], True, "c", "r")
    captured = learner.capture_state()
    change(captured)
    with pytest.raises(ValueError, match=problem):
        CTRLearner.from_state_bytes(encode_state(captured))


def test_explanations_keep_the_names_of_features_in_constant_use() -> None:
    """A bidder prices many candidates per request, each hashing its creative's crosses: tens of thousands of new
    names an hour.  The domain on half the requests (memoised, so never hashed again) must keep its name, and so
    must the crosses of the creative that keeps winning."""
    req = parse_request(orjson.dumps({"id": "r", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
                                      "site": {"domain": "top.example"}}))
    feats = request_features(req, req.imps[0], "x", 9, 1)
    domain = hash_feature("domain", "top.example")
    assert domain in feats
    winner = candidate_features(feats, 9, "top.example", "camp-w", "win")
    for i in range(NAME_CAPACITY + 10_000):  # other creatives on other sites
        candidate_features((), i % 24, f"site{i}.example", f"camp{i % 97}", f"cr{i}")
        if i % 1000 == 0:
            assert request_features(req, req.imps[0], "x", 9, 1) == feats
            assert candidate_features(feats, 9, "top.example", "camp-w", "win") == winner
    assert feature_name(domain) == "domain=top.example"
    assert feature_name(winner[2]) == "creative=camp-w/win&domain=top.example"
    snap = ModelSnapshot(1, {domain: 0.7, winner[2]: 0.3}, 0.0, ClickCounts())
    named = {f["name"] for f in snap.explain(feats, winner, "camp-w", "win")["top_features"]}
    assert {"domain=top.example", "creative=camp-w/win&domain=top.example"} <= named


def test_a_full_feature_memo_starts_over_with_names_for_every_id_it_hands_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The id memo and request_features' group memos are emptied together: no group keeps an id whose name went."""
    from models import features

    monkeypatch.setattr(features, "FEATURE_ID_CACHE", 64)
    req = parse_request(orjson.dumps({"id": "r", "imp": [{"id": "1", "banner": {"w": 320, "h": 50}}],
                                      "site": {"domain": "memo.example"}}))
    feats = request_features(req, req.imps[0], "x", 3, 2)
    for i in range(200):  # fills and empties the id memo a few times
        hash_feature("slot", f"s{i}")
    assert request_features(req, req.imps[0], "x", 3, 2) == feats
    assert feature_name(hash_feature("domain", "memo.example")) == "domain=memo.example"
    assert all(feature_name(f) is not None for f in feats)
