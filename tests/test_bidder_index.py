"""The targeting index and array scoring against the plain rules they stand in for.

`bidder.targeting.matches`, `Creative.fits`, `deal_for`, the frequency store and `bidder.pricing` state the rules
one candidate at a time; the index and `bidder.scoring` evaluate them for all candidates at once.  These tests run
both on generated campaigns and traffic and require the same answers, and check that the index looks only at
creatives that can serve, however many campaigns there are.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from bidder import engine as engine_mod
from bidder.campaigns import COUNTRIES, Campaign, parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.frequency import FrequencyStore, cap_buckets
from bidder.openrtb import AUCTION_FIRST_PRICE, hash_id, parse_request
from bidder.pacing import PacingState, conversion_rate
from bidder.pricing import bid_price, impression_value_cpm, paced_value
from bidder.privacy import restriction
from bidder.scoring import ALPHA, BETA, SlotTables
from bidder.slices import drain
from bidder.targeting import STAGES, CampaignIndex, _Dimension, deal_for, fits_imp, matches
from loadtest.campaign_gen import make_campaigns
from loadtest.traffic import RequestFactory
from models.features import candidate_features, hash_feature, request_features
from models.prior import ClickCounts
from models.snapshot import ModelSnapshot
from tests.helpers import NATIVE_ADM, body, campaign, request

NOW = 1_780_000_000.0
SEAT = "streambid"


def value_cpm(pctr: float, camp: Campaign, pace: PacingState | None) -> int:
    """The engine's value of an impression: a cpa goal's pCVR is the (clamped) pCTR times the conversion rate."""
    p = min(max(pctr, 0.0), 1.0) if pctr == pctr else 0.0
    return impression_value_cpm(p, camp, p * conversion_rate(pace) if camp.goal == "cpa" else 0.0)


def trained_model(camps: list, rng: random.Random) -> ModelSnapshot:
    """A snapshot that tells creatives apart: campaign weights, and impressions for about half the creatives."""
    counts = ClickCounts()
    for c in camps:
        for cr in c.creatives:
            if rng.random() < 0.5:
                for k in range(rng.choice((50, 300, 1200))):
                    counts.add(c.id, cr.id, clicked=k % rng.randint(50, 900) == 0)
    weights = {hash_feature("campaign", c.id): rng.uniform(-1.5, 1.5) for c in camps}
    return ModelSnapshot(version=1, weights=weights, bias=0.0, counts=counts)


class MeanDraws:
    """Stands in for the random generator: every gamma 'draw' is its mean, so a Beta draw is the posterior mean."""

    @staticmethod
    def standard_gamma(shape):
        return np.array(shape, dtype=float)


def reference_candidates(camps, req, imp) -> Iterator[tuple[Campaign, Any, tuple | None, float]]:
    """(campaign, creative, deal, floor) of every creative the plain per-candidate rules let bid on `imp`
    (frequency caps aside): active, currency, country, size and the other targeting, deals, floor currency."""
    for camp in camps:
        if not camp.active or camp.currency not in (req.cur or ("USD",)):
            continue
        if camp.targeting.countries and req.country not in camp.targeting.countries:
            continue
        for cr in camp.creatives:
            if not fits_imp(cr, imp) or matches(camp, cr, req):
                continue
            deal = deal_for(camp, imp, SEAT)
            if deal is None and (camp.targeting.deal_only or imp.private_auction):
                continue
            floor, floorcur = (deal[1], deal[2]) if deal else (imp.floor, imp.floorcur)
            if floor and floorcur != camp.currency:
                continue
            yield camp, cr, deal, floor


def reference_price(e: BidEngine, req, imp, exchange: str, user: str, hour: int, weekday: int,
                    shown: dict[str, int] | None = None) -> tuple[int, str]:
    """The best price on `imp` by the plain per-candidate rules, in micros (0 for no bid), and its campaign.

    Exploring creatives (engine.cfg.explore_below) bid on their posterior mean, as `MeanDraws` makes the engine do.
    `shown` counts the request's earlier impressions per campaign: a capped campaign has that much less room.
    """
    best, best_campaign = 0, ""
    live = e.live()
    for camp, cr, deal, floor in reference_candidates(e.index.campaigns.values(), req, imp):
        if camp.id not in live:
            continue
        if camp.freq_per_hour or camp.freq_per_day:
            if not user or e.frequency.room(user, camp.id, camp.freq_per_hour, camp.freq_per_day,
                                            *cap_buckets(camp.timezone, NOW)) <= (shown or {}).get(camp.id, 0):
                continue
        feats = request_features(req, imp, exchange, hour, weekday)
        pctr = e.model.predict(e.model.base_score(feats), candidate_features(feats, hour, req.domain, camp.id, cr.id),
                               camp.id, cr.id)
        if e.cfg.explore_below and e.model.creative_impressions(camp.id, cr.id) < e.cfg.explore_below:
            a, b = e.model.creative_beta(camp.id, cr.id)
            a, b = max(a, 1e-9), max(b, 1e-9)
            pctr = a / (a + b)
        pace = e.pacing.get(camp.id)
        at = deal[3] if deal and deal[3] else req.at
        price = bid_price(value_cpm(pctr, camp, pace), pace.lam if pace else 0.0, camp.max_bid_cpm,
                          round(floor * 1e6), at == AUCTION_FIRST_PRICE, None, fixed_price=at == 3)
        if price > best:
            best, best_campaign = price, camp.id
    return best, best_campaign


@pytest.mark.parametrize(("explore_below", "trained"), [(0, True), (200, True), (200, False)])
def test_engine_picks_the_same_best_price_as_the_plain_rules(explore_below: int, trained: bool) -> None:
    """Model scores only, a mix of scored and exploring creatives, and exploring creatives only."""
    rng = random.Random(11)
    camps = [parse_campaign(d) for d in make_campaigns(400, seed=4)]
    model = trained_model(camps, rng) if trained else ModelSnapshot.empty()
    e = BidEngine(EngineConfig(secret=b"k", explore_below=explore_below), camps, model, sink=lambda *a: None,
                  clock=lambda: NOW)
    e._scoring().gen = MeanDraws()  # type: ignore[assignment]  # a stand-in: scoring only calls standard_gamma
    for c in camps[::7]:
        e.set_pacing(PacingState(campaign=c.id, day="2026-05-28", lam=rng.uniform(0.0, 3.0)))
    users = [f"u{i}" for i in range(30)]
    for u in users[:15]:  # some users have hit some caps
        for c in rng.sample([c for c in camps if c.freq_per_hour or c.freq_per_day], 40):
            for _ in range(rng.randint(1, 25)):
                e.frequency.record(hash_id(e.cfg.salt, u), c.id, *cap_buckets(c.timezone, NOW))
    factory = RequestFactory(5, tmax_ms=100)
    bids = nobids = 0
    for i in range(1500):
        doc = orjson.loads(factory.body())
        if i % 3 == 0:
            doc.setdefault("user", {})["id"] = rng.choice(users)
        req = parse_request(orjson.dumps(doc), e.cfg.salt)
        out = e.bid(req, "x", math.inf)
        if out.reason in ("privacy", "seat"):
            continue
        user = "" if restriction(req.privacy) else req.user_key
        local = NOW + req.utcoffset * 60
        hour, weekday = int(local // 3600) % 24, (int(local // 86400) + 3) % 7
        got = {}
        if out.status == 200:
            for b in orjson.loads(out.body)["seatbid"][0]["bid"]:
                got[b["impid"]] = round(b["price"] * 1e6)
        shown: dict[str, int] = {}
        for imp in req.imps:
            want, winner = reference_price(e, req, imp, "x", user, hour, weekday, shown)
            if want:
                shown[winner] = shown.get(winner, 0) + 1
            assert got.get(imp.id, 0) == want, f"request {i} imp {imp.id}: engine {got.get(imp.id, 0)}, rules {want}"
            bids += want > 0
            nobids += want == 0
    assert bids > 300 and nobids > 20  # both outcomes were compared


def test_index_returns_exactly_the_creatives_the_rules_allow() -> None:
    camps = [parse_campaign(d) for d in make_campaigns(600, seed=8)]
    index = CampaignIndex(camps)
    live = frozenset(c.id for c in camps)
    store = FrequencyStore()
    factory = RequestFactory(9)
    compared = 0
    for k in range(800):
        doc = orjson.loads(factory.body())
        if k % 3 == 0:  # players that take only WebM, or name no type; block lists written in capitals
            for imp in doc["imp"]:
                if "video" in imp:
                    imp["video"]["mimes"] = ["video/webm"] if k % 2 else []
            doc["badv"] = [a.upper() for a in doc.get("badv", [])] + [camps[k % len(camps)].advertiser.upper()]
        req = parse_request(orjson.dumps(doc))
        for imp in req.imps:
            el = index.eligible(req, imp, live, SEAT, req.user_key, store, 0.0)
            got = {(index.slots[s][0].id, index.slots[s][1].id) for s in el.slots.tolist()}
            want = {(camp.id, cr.id) for camp, cr, _, _ in reference_candidates(camps, req, imp)
                    if req.user_key or not (camp.freq_per_hour or camp.freq_per_day)}
            assert got == want
            compared += len(want)
    assert compared > 10_000


def test_video_creatives_fit_the_player_by_size_and_mime_type() -> None:
    """A sized creative needs an offered size, an unsized one plays at any; a creative that names its MIME types
    needs one the player takes, when the player names them."""
    def video(cid: str, w: int, h: int, mimes: list[str]) -> dict:
        return {"id": cid, "type": "video", "w": w, "h": h, "adm": "<VAST/>", "mimes": mimes}

    doc = campaign(id="v", creatives=[video("mp4-640", 640, 360, ["video/mp4"]), video("webm-any", 0, 0, ["video/webm"]),
                                      video("any-any", 0, 0, []), video("mp4-1280", 1280, 720, ["video/mp4"])])
    camps = [parse_campaign(doc)]
    index = CampaignIndex(camps)
    cases = [
        ({"w": 640, "h": 360, "mimes": ["video/mp4"]}, {"mp4-640", "any-any"}),
        ({"w": 640, "h": 360, "mimes": ["video/webm", "video/mp4"]}, {"mp4-640", "webm-any", "any-any"}),
        ({"w": 640, "h": 360}, {"mp4-640", "webm-any", "any-any"}),
        ({"mimes": ["video/webm"]}, {"webm-any", "any-any"}),
        ({"w": 300, "h": 250, "mimes": ["video/mp4"]}, {"any-any"}),
    ]
    for player, want in cases:
        req = parse_request(body(request(imp=[{"id": "1", "video": player}])))
        el = index.eligible(req, req.imps[0], frozenset({"v"}), SEAT, "", FrequencyStore(), 0.0)
        assert {index.slots[s][1].id for s in el.slots.tolist()} == want, player
        assert {cr.id for _, cr, _, _ in reference_candidates(camps, req, req.imps[0])} == want, player


def test_a_multi_format_impression_takes_a_creative_of_any_of_its_media() -> None:
    doc = campaign(id="m", creatives=[
        {"id": "b300", "type": "banner", "w": 300, "h": 250, "adm": "<a/>"},
        {"id": "b728", "type": "banner", "w": 728, "h": 90, "adm": "<a/>"},
        {"id": "vid", "type": "video", "w": 640, "h": 360, "adm": "<VAST/>", "mimes": ["video/mp4"]},
        {"id": "nat", "type": "native", "adm": NATIVE_ADM}])
    camps = [parse_campaign(doc)]
    index = CampaignIndex(camps)
    imp = {"id": "1", "banner": {"w": 300, "h": 250}, "video": {"w": 640, "h": 360, "mimes": ["video/mp4"]}}
    req = parse_request(body(request(imp=[imp])))
    assert [m.kind for m in req.imps[0].formats()] == ["banner", "video"]
    el = index.eligible(req, req.imps[0], frozenset({"m"}), SEAT, "", FrequencyStore(), 0.0)
    assert {index.slots[s][1].id for s in el.slots.tolist()} == {"b300", "vid"}
    assert {cr.id for _, cr, _, _ in reference_candidates(camps, req, req.imps[0])} == {"b300", "vid"}
    out = BidEngine(EngineConfig(secret=b"s", explore_below=0), camps, ModelSnapshot.empty(), sink=lambda *a: None,
                    clock=lambda: NOW).bid(req, "x", math.inf)
    bid = orjson.loads(out.body)["seatbid"][0]["bid"][0]
    assert bid["mtype"] == {"b300": 1, "vid": 2}[bid["crid"]]  # the answer says which of the media it fills


def test_candidate_counts_stay_small_with_thousands_of_campaigns() -> None:
    """5,000 campaigns over 50 countries and 4 sizes: an impression sees only the ~1/200 that can serve it."""
    countries = sorted(COUNTRIES)[:50]
    sizes = [(300, 250), (728, 90), (320, 50), (160, 600)]
    docs = []
    for i in range(5000):
        w, h = sizes[i % 4]
        docs.append(campaign(id=f"k{i}", targeting={"countries": [countries[(i // 4) % 50]]},
                            creatives=[{"id": "cr", "type": "banner", "w": w, "h": h, "adm": "<img>"}]))
    camps = [parse_campaign(d) for d in docs]
    index = CampaignIndex(camps)
    live = frozenset(c.id for c in camps)
    for country in countries[:5]:
        req = parse_request(body(request(device={"geo": {"country": country}})))
        el = index.eligible(req, req.imps[0], live, SEAT, req.user_key, FrequencyStore(), 0.0)
        assert len(el.slots) == 25  # exactly the campaigns for this country and 300x250
        assert {index.slots[s][0].targeting.countries for s in el.slots.tolist()} == {frozenset({country})}
        assert len(index.candidates(req.imps[0], country)) == 25


def test_price_bounds_hold_for_the_pricing_functions() -> None:
    """The array bound is never under what bid_price can return, and no more than rounding above the paced value."""
    rng = random.Random(2)
    camps = [parse_campaign(d) for d in make_campaigns(300, seed=3)]
    index = CampaignIndex(camps)
    pacing = {c.id: PacingState(campaign=c.id, day="d", lam=rng.choice((0.0, -0.5, rng.uniform(0, 20)))) for c in camps}
    tables = SlotTables(index, ModelSnapshot.empty(), 0, pacing, random.Random(1))
    slots = np.arange(index.n)
    for _ in range(20):
        pctr = np.array([rng.choice((rng.random(), rng.random() ** 6, 0.0, 1.0, 1.5, -0.1, math.nan)) for _ in slots])
        got = tables.bounds(slots, pctr)
        for s in slots.tolist():
            c = index.slots[s][0]
            v = paced_value(value_cpm(float(pctr[s]), c, pacing[c.id]), pacing[c.id].lam, c.max_bid_cpm)
            assert v <= got[s] <= v + 2 + v * 1e-8  # the two roundings down of paced_value, and float error
            assert got[s] <= tables.ceiling[s]
            for first, fixed, floor in ((False, False, 0), (True, False, v // 2), (False, True, v // 3)):
                assert bid_price(value_cpm(float(pctr[s]), c, pacing[c.id]), pacing[c.id].lam, c.max_bid_cpm, floor,
                                 first, None, fixed_price=fixed) <= got[s]


def test_pacing_updates_one_campaign_at_a_time_leave_the_tables_of_a_full_rebuild() -> None:
    """The engine folds each pacing message into its campaign's slots alone; the bounds must come out bit for bit
    as a rebuild from all the states would make them, whatever order the messages came in."""
    rng = random.Random(9)
    camps = [parse_campaign(d) for d in make_campaigns(300, seed=12)]
    assert {c.goal for c in camps} == {"cpc", "cpa"}
    index = CampaignIndex(camps)
    tables = SlotTables(index, ModelSnapshot.empty(), 0, {}, random.Random(1))
    pacing: dict[str, PacingState] = {}
    for _ in range(900):
        c = rng.choice(camps)
        state = PacingState(campaign=c.id, day="d", lam=rng.choice((0.0, -0.5, math.nan, rng.uniform(0, 20))),
                            cvr=rng.choice((0.0, rng.random() * 0.2)))
        pacing[c.id] = state
        tables.set_campaign_pacing(state)
    tables.set_campaign_pacing(PacingState(campaign="no-such-campaign", day="d", lam=3.0))  # ignored
    rebuilt = SlotTables(index, ModelSnapshot.empty(), 0, pacing, random.Random(1))
    assert len(pacing) > 250  # most campaigns got states, many of them several
    for name in ("table", "scale", "max_bid", "ceiling"):
        assert np.array_equal(getattr(tables, name), getattr(rebuilt, name), equal_nan=True), name
    assert not np.array_equal(tables.scale, SlotTables(index, ModelSnapshot.empty(), 0, {}, random.Random(1)).scale)


@pytest.mark.parametrize("explore_below", [0, 200])
def test_exploration_table_follows_the_model_counts(explore_below: int) -> None:
    rng = random.Random(5)
    camps = [parse_campaign(d) for d in make_campaigns(100, seed=6)]
    model = trained_model(camps, rng)
    index = CampaignIndex(camps)
    tables = SlotTables(index, model, explore_below, {}, random.Random(1))
    for s, (c, cr) in enumerate(index.slots):
        exploring = explore_below > 0 and model.creative_impressions(c.id, cr.id) < explore_below
        assert tables.explore[s] == exploring
        if exploring:
            a, b = model.creative_beta(c.id, cr.id)
            assert tables.table[s, ALPHA] == pytest.approx(a) and tables.table[s, BETA] == pytest.approx(b)
    if explore_below:
        draws = tables.draws(np.repeat(np.flatnonzero(tables.explore)[:1], 20_000))
        c, cr = index.slots[int(np.flatnonzero(tables.explore)[0])]
        a, b = model.creative_beta(c.id, cr.id)
        assert draws.mean() == pytest.approx(a / (a + b), rel=0.1)  # draws come from the creative's posterior


def test_index_and_engine_name_the_stages_alike() -> None:
    """The index reports stages by number; the engine turns them into the no-bid reason an exchange sees."""
    assert STAGES == engine_mod.STAGES


def test_a_targeting_dimension_keeps_rare_values_compact_and_reads_them_as_every_other() -> None:
    """A million rare values (domains) each as wide as every slot would take gigabytes: a rare value keeps only its
    own slots, and reads back exactly as the plain set would, the untargeted slots included."""
    rng = random.Random(5)
    shared = [f"big{i}.example" for i in range(5)]  # sites many campaigns target, spread over every slot
    # a campaign's creatives are neighbouring slots: its own long list of domains is targeted there alone
    targets = [frozenset({f"own{i // 4}.example", f"own{i // 4 + 1}.example", rng.choice(shared)})
               if rng.random() < 0.8 else frozenset() for i in range(3000)]
    dim = drain(_Dimension.steps(targets))
    untargeted = {i for i, t in enumerate(targets) if not t}
    values = {v for t in targets for v in t}
    for v in [*values, "nowhere"]:
        plain = {i for i, t in enumerate(targets) if v in t} | untargeted
        assert dim.one(v) == sum(1 << i for i in plain), v
    pair = {"own7.example", shared[0]}
    assert dim.any_of(pair) == sum(1 << i for i, t in enumerate(targets) if not t or t & pair)
    assert all(isinstance(dim.by_value[v], int) for v in shared)
    assert all(isinstance(dim.by_value[v], tuple) for v in values - set(shared))  # the rare ones are kept compact
