"""Array scoring (`bidder.scoring`) against the one-candidate-at-a-time model and posterior it stands in for."""

from __future__ import annotations

import gc
import math
import random
import zlib

import numpy as np
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.metrics import BidderStats
from bidder.openrtb import parse_request
from bidder.pacing import PacingState
from bidder.scoring import POOL, SlotConstants, SlotTables
from bidder.server import BidApp, settle_heap
from bidder.targeting import CampaignIndex
from loadtest.campaign_gen import make_campaigns
from models.features import HASH_MASK, candidate_features, crc_shifter, cross_prefix_crc, hash_cross, hash_feature
from models.prior import ClickCounts, PriorConfig
from models.snapshot import ModelSnapshot
from tests.helpers import body, campaign, request

DOMAINS = ["news.example", "a.io", "com.game.puzzle", "été.example", "x" * 300, ""]


def crossed_model(camps, rng: random.Random) -> ModelSnapshot:
    """Weights on every feature a candidate brings (campaign, creative, creative x domain, creative x hour), a
    calibration that is not the identity, and impressions for some creatives (so blends differ)."""
    counts = ClickCounts(PriorConfig(blend_impressions=50.0))
    weights: dict[int, float] = {}
    for c in camps:
        weights[hash_feature("campaign", c.id)] = rng.uniform(-1, 1)
        for cr in c.creatives:
            name = f"{c.id}/{cr.id}"
            weights[hash_feature("creative", name)] = rng.uniform(-1, 1)
            for d in rng.sample(DOMAINS, 3):
                weights[hash_cross("creative", name, "domain", d)] = rng.uniform(-2, 2)
            for h in rng.sample(range(24), 5):
                weights[hash_cross("creative", name, "hour", h)] = rng.uniform(-2, 2)
            for k in range(rng.choice((0, 20, 400))):
                counts.add(c.id, cr.id, clicked=k % 37 == 0)
    weights[hash_feature("domain", "news.example")] = 0.7
    return ModelSnapshot(version=3, weights=weights, bias=-3.0, counts=counts, calibration=(0.9, -0.2), logit_shift=0.1)


def test_cross_ids_from_crc_algebra_equal_hashing_the_names() -> None:
    rng = random.Random(3)
    names = [f"c{rng.randrange(10**6)}/cr-{rng.randrange(99)}" for _ in range(200)]
    prefixes = np.array([cross_prefix_crc("creative", n, "domain") for n in names], dtype=np.uint32)
    for domain in DOMAINS:
        raw = domain.encode()
        got = (crc_shifter(len(raw))(prefixes) ^ np.uint32(zlib.crc32(raw))) & np.uint32(HASH_MASK)
        assert got.tolist() == [hash_cross("creative", n, "domain", domain) for n in names]


def test_array_predictions_match_the_snapshot_one_by_one() -> None:
    rng = random.Random(7)
    camps = [parse_campaign(d) for d in make_campaigns(120, seed=2)]
    model = crossed_model(camps, rng)
    index = CampaignIndex(camps)
    tables = SlotTables(index, model, 0, {}, random.Random(1))
    all_slots = np.arange(index.n)
    checked = 0
    for domain in DOMAINS:
        for hour in (0, 7, 23):
            req_feats = (hash_feature("domain", domain), hash_feature("hour", hour))
            base = model.base_score(req_feats)
            slots = np.sort(np.array(rng.sample(all_slots.tolist(), 60)))
            got = tables.predict(slots, base, hour, domain)
            for j, s in enumerate(slots.tolist()):
                camp, cr = index.slots[s]
                want = model.predict(base, candidate_features(req_feats, hour, domain, camp.id, cr.id), camp.id, cr.id)
                assert got[j] == pytest.approx(want, rel=1e-12, abs=1e-300)
                checked += 1
    assert checked == len(DOMAINS) * 3 * 60


def test_a_model_swap_keeps_the_index_constants_and_scores_as_a_fresh_build() -> None:
    """The engine builds tables for a new model over the constants the last tables computed from the index (feature
    ids, values, pacing); the scores and bounds must be exactly those of tables built from nothing."""
    rng = random.Random(8)
    camps = [parse_campaign(d) for d in make_campaigns(120, seed=5)]
    e = BidEngine(EngineConfig(secret=b"k", explore_below=200), camps, crossed_model(camps, rng), sink=lambda *a: None)
    first = e._scoring()
    first.warm(8)
    pacing = [PacingState(campaign=c.id, day="d", lam=rng.uniform(0, 3), cvr=0.05) for c in camps[::3]]
    for state in pacing:
        e.set_pacing(state)
    newer = crossed_model(camps, random.Random(9))
    e.set_model(newer)
    swapped = e._scoring()
    assert swapped is not first and swapped.model is newer
    assert swapped.consts is first.consts  # nothing hashed again
    fresh = SlotTables(e.index, newer, 200, e.pacing, random.Random(1))
    assert fresh.consts is not first.consts
    slots = np.arange(e.index.n)
    pctr = np.array([rng.random() for _ in slots])
    assert np.array_equal(swapped.bounds(slots, pctr), fresh.bounds(slots, pctr))
    assert np.array_equal(swapped.explore, fresh.explore) and np.array_equal(swapped.table, fresh.table)
    for domain in DOMAINS:
        for hour in (0, 7, 23):
            base = newer.base_score((hash_feature("domain", domain), hash_feature("hour", hour)))
            want = fresh.predict(slots, base, hour, domain)
            assert np.array_equal(swapped.predict(slots, base, hour, domain), want)
            assert not np.array_equal(first.predict(slots, base, hour, domain), want)  # the weights did change


def test_constants_after_a_campaign_change_equal_a_fresh_build() -> None:
    """A new index takes the per-hour and per-domain-length ids of the creatives it shares with the old one from the
    old constants; creatives added, removed or renamed must not get a neighbour's ids."""
    camps = [parse_campaign(d) for d in make_campaigns(80, seed=6)]
    old = SlotConstants(CampaignIndex(camps), {})
    for h in (0, 5, 23):
        old.hour_fids(h)
    for n in (1, 7, 12, 40):
        old.domain_shift(n)
    changed = camps[5:] + [parse_campaign(dict(d, id=f"new-{i}")) for i, d in enumerate(make_campaigns(6, seed=7))]
    changed[10] = parse_campaign(dict(make_campaigns(80, seed=6)[15], creatives=[
        dict(make_campaigns(80, seed=6)[15]["creatives"][0], id="renamed")]))
    index = CampaignIndex(changed)
    carried, fresh = SlotConstants(index, {}, old), SlotConstants(index, {})
    assert carried._previous is not None and 0 < len(carried._previous[4]) < index.n  # some kept, some new
    for h in (0, 5, 23, 9):  # hour 9 was never asked of the old constants
        assert np.array_equal(carried.hour_fids(h), fresh.hour_fids(h)), h
    for n in (1, 7, 12, 40, 3):
        assert np.array_equal(carried.domain_shift(n), fresh.domain_shift(n)), n
    assert carried.hour_fids(5).dtype == fresh.hour_fids(5).dtype and carried.domain_shift(7).dtype == np.intp


def test_pooled_draws_follow_each_posterior_and_are_used_once() -> None:
    camps = [parse_campaign(d) for d in make_campaigns(60, seed=9)]
    index = CampaignIndex(camps)
    counts = ClickCounts()
    rich = index.slots[0]
    for k in range(150):  # one creative with clicks: its posterior differs from the others'
        counts.add(rich[0].id, rich[1].id, clicked=k % 5 == 0)
    model = ModelSnapshot(version=1, weights={}, bias=0.0, counts=counts)
    tables = SlotTables(index, model, 200, {}, random.Random(4))
    assert tables.explore.all()
    slots = np.array([0, 1, 2])
    draws = np.array([tables.next_draws(slots) for _ in range(6000)])
    for col, s in enumerate(slots.tolist()):
        c, cr = index.slots[s]
        a, b = model.creative_beta(c.id, cr.id)
        mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
        assert draws[:, col].mean() == pytest.approx(mean, rel=0.05)
        assert draws[:, col].var() == pytest.approx(var, rel=0.15)
        assert len(set(draws[:, col].tolist())) == len(draws)  # every impression got a draw of its own
    # consecutive impressions, within a pool and across refills (every POOL draws), get independent draws
    assert np.corrcoef(draws[1:, 1], draws[:-1, 1])[0, 1] == pytest.approx(0.0, abs=0.05)
    assert np.corrcoef(draws[POOL:, 2], draws[:-POOL, 2])[0, 1] == pytest.approx(0.0, abs=0.05)



def test_a_settled_heap_has_every_exploring_pool_filled_before_the_first_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """With thousands of exploring creatives, filling their pools takes longer than a deadline: a worker fills them
    before it serves, so no request pays for it."""
    camps = [parse_campaign(campaign(id=f"c{i}")) for i in range(20)]
    engine = BidEngine(EngineConfig(secret=b"s", explore_below=200), camps, ModelSnapshot.empty(), sink=lambda *a: None)
    try:
        settle_heap(BidApp(engine, BidderStats()))
    finally:
        gc.unfreeze()
    tables = engine._scoring()
    assert tables.any_explore

    def refill(self: SlotTables) -> None:
        raise AssertionError("a request refilled the draw pools")

    monkeypatch.setattr(SlotTables, "_refill", refill)
    assert engine.bid(parse_request(body(request())), "x", math.inf).status == 200
