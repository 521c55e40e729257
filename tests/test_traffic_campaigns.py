"""Generated campaigns: valid for the bidder's own validator, varied, and matching generated traffic."""

from __future__ import annotations

import datetime as dt

from bidder.campaigns import parse_campaign
from bidder.openrtb import parse_request
from bidder.targeting import CampaignIndex, matches
from loadtest.campaign_gen import make_campaigns, write_campaigns
from loadtest.traffic import RequestFactory


def test_generated_campaigns_are_valid_and_deterministic():
    docs = make_campaigns(300, seed=5)
    assert docs == make_campaigns(300, seed=5)
    assert docs != make_campaigns(300, seed=6)
    campaigns = [parse_campaign(d) for d in docs]
    assert len({c.id for c in campaigns}) == 300


def test_generated_campaigns_vary():
    campaigns = [parse_campaign(d) for d in make_campaigns(500, seed=1)]
    t = [c.targeting for c in campaigns]
    assert 0 < sum(not x.countries for x in t) < 200
    assert sum(bool(x.device_types) for x in t) > 50
    assert sum(bool(x.domains) for x in t) > 20
    assert sum(x.deal_only for x in t) > 5
    assert {cr.kind for c in campaigns for cr in c.creatives} == {"banner", "video", "native"}
    assert any(not c.active for c in campaigns)
    assert any(c.hours for c in campaigns)
    assert len({c.max_bid_cpm for c in campaigns}) > 100


def test_generated_traffic_matches_some_campaigns_and_not_others():
    index = CampaignIndex(parse_campaign(d) for d in make_campaigns(300, seed=2))
    factory = RequestFactory(2)
    now = dt.datetime(2026, 3, 1, 15, tzinfo=dt.UTC)
    matched, filtered = 0, 0
    for _ in range(300):
        req = parse_request(factory.body())
        for imp in req.imps:
            for camp, cr in index.candidates(imp, req.country):
                if camp.in_flight(now) and not matches(camp, cr, req):
                    matched += 1
                else:
                    filtered += 1
    assert matched > 300
    assert filtered > 300


def test_write_campaigns_file(tmp_path):
    from bidder.campaigns import load_campaigns

    path = write_campaigns(tmp_path / "c.json", 20, seed=3)
    assert [c.id for c in load_campaigns(path)] == [d["id"] for d in make_campaigns(20, seed=3)]
