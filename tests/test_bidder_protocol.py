"""OpenRTB rules the engine must keep on every bid: floors, deals, currencies, blocks, seats, sizes, response shape."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.notices import NoticeError, notice_urls, verify_notice
from bidder.openrtb import DEFAULT_TMAX_MS, parse_request
from bidder.server import exchange_name, supported_version
from models.snapshot import ModelSnapshot
from tests.helpers import NATIVE_ADM, NATIVE_REQUEST, body, campaign, request

NOW = 1_780_000_000.0
DEAL_CAMPAIGN = campaign(id="dealer", targeting={"countries": ["USA"], "deals": ["d1", "d2"]},
                         goal={"type": "cpc", "value_per_click": 6.0, "max_bid_cpm": 20.0})


def engine(*docs: dict, **cfg) -> BidEngine:
    cfg.setdefault("explore_below", 0)
    return BidEngine(EngineConfig(secret=b"s", **cfg), [parse_campaign(d) for d in docs], ModelSnapshot.empty(),
                     sink=lambda *a: None, clock=lambda: NOW)


def bids(e: BidEngine, doc: dict) -> list[dict]:
    out = e.bid(parse_request(body(doc)), "x", math.inf)
    return orjson.loads(out.body)["seatbid"][0]["bid"] if out.status == 200 else []


def reason(e: BidEngine, doc: dict) -> str:
    return e.bid(parse_request(body(doc)), "x", math.inf).reason


def with_deals(deals: list[dict], private: int = 1, floor: float = 0.5) -> dict:
    return request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": floor,
                         "pmp": {"private_auction": private, "deals": deals}}])


def test_fixed_price_deal_bids_exactly_the_deal_floor() -> None:
    e = engine(DEAL_CAMPAIGN)  # paced value: 0.001 x 6.00 x 1000 = 6.00 CPM
    [b] = bids(e, with_deals([{"id": "d1", "bidfloor": 4.25, "at": 3}]))
    assert b["price"] == 4.25 and b["dealid"] == "d1"
    assert reason(e, with_deals([{"id": "d1", "bidfloor": 6.5, "at": 3}])) == "below_floor"  # value under the price
    [b] = bids(e, with_deals([{"id": "d2", "bidfloor": 4.25, "at": 1}]))  # first price: bids its value
    assert b["price"] == pytest.approx(6.0, abs=1e-5) and b["dealid"] == "d2"


def test_deal_floor_applies_before_the_imp_floor_and_seats_are_kept() -> None:
    e = engine(DEAL_CAMPAIGN)
    [b] = bids(e, with_deals([{"id": "d1", "bidfloor": 1.0}], floor=5.0))
    assert b["dealid"] == "d1" and b["price"] >= 1.0
    assert reason(e, with_deals([{"id": "d1", "bidfloor": 7.0}], floor=1.0)) == "below_floor"
    assert reason(e, with_deals([{"id": "d1", "bidfloor": 1.0, "wseat": ["other-seat"]}])) == "deal"
    assert reason(e, with_deals([{"id": "zz", "bidfloor": 1.0}])) == "deal"  # private auction, no deal of ours
    [b] = bids(e, with_deals([{"id": "zz", "bidfloor": 1.0}], private=0))  # open auction: imp floor, no dealid
    assert "dealid" not in b
    assert reason(e, with_deals([{"id": "d1", "bidfloor": 1.0, "bidfloorcur": "EUR"}])) == "currency"


def test_open_auction_campaigns_sit_out_private_auctions_and_deal_only_ones_open_auctions() -> None:
    e = engine(campaign(), campaign(id="deal-only", targeting={"countries": ["USA"], "deals": ["d1"], "deal_only": True}))
    assert {b["cid"] for b in bids(e, with_deals([{"id": "d1", "bidfloor": 0.1}]))} == {"deal-only"}
    assert {b["cid"] for b in bids(e, request())} == {"c1"}


def test_floors_currencies_blocks_and_seats() -> None:
    e = engine(campaign())  # paced value 1.999999 CPM (0.001 x 2.00 x 1000, rounded down to the micro)
    assert reason(e, request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 2.0}])) == "below_floor"
    [b] = bids(e, request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 1.999999}]))
    assert b["price"] == 1.999999  # never below the floor, even by a micro
    assert reason(e, request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 1.0, "bidfloorcur": "EUR"}])) \
        == "currency"
    assert reason(e, request(cur=["EUR", "GBP"])) == "currency"
    assert bids(e, request(cur=["EUR", "USD"]))
    assert reason(e, request(bcat=["IAB3-1"])) == "blocked_category"
    assert reason(e, request(bcat=["IAB3"])) == "blocked_category"  # the parent blocks its children
    assert bids(e, request(bcat=["IAB3-2", "IAB30"]))
    assert reason(e, request(badv=["shop.example"])) == "blocked_advertiser"
    assert reason(e, request(wseat=["someone"])) == "seat" and reason(e, request(bseat=["streambid"])) == "seat"
    assert bids(e, request(wseat=["someone", "streambid"]))
    assert bids(e, request(bapp=["com.other"]))


def test_bapp_blocks_the_advertised_app_not_the_publishers() -> None:
    """`bapp` lists apps the publisher will not have advertised (app-install ads, which bid `bundle`); it was
    compared with the publisher's own app, so a blocked app's install campaign bid on."""
    installs = campaign(id="install", bundle="com.Game.Blocked")
    e = engine(installs, campaign(id="plain"))
    app = {"id": "a1", "bundle": "com.news.app", "publisher": {"id": "p"}}
    for doc in (request(bapp=["com.game.blocked"]), request(site=None, app=app, bapp=["COM.GAME.BLOCKED"])):
        assert {b["cid"] for b in bids(e, doc)} == {"plain"}  # on a site or in an app, without case
    assert reason(engine(installs), request(bapp=["com.game.blocked"])) == "blocked_app"
    [b] = bids(engine(installs), request(site=None, app=app, bapp=["com.news.app"]))  # the publisher's own: no block
    assert b["bundle"] == "com.Game.Blocked" and b["cid"] == "install"
    assert "bundle" not in bids(engine(campaign()), request())[0]


def test_sizes_media_and_response_shape() -> None:
    video = campaign(id="v", creatives=[{"id": "vast", "type": "video", "w": 640, "h": 480, "adm": "<VAST/>"}])
    native = campaign(id="n", creatives=[{"id": "nat", "type": "native", "adm": NATIVE_ADM}])
    e = engine(campaign(), video, native)
    assert reason(e, request(imp=[{"id": "1", "banner": {"w": 728, "h": 90}}])) == "no_match"
    [b] = bids(e, request(imp=[{"id": "1", "banner": {"format": [{"w": 320, "h": 50}, {"w": 300, "h": 250}]}}]))
    assert (b["w"], b["h"], b["mtype"]) == (300, 250, 1)
    three = request(imp=[{"id": "a", "banner": {"w": 300, "h": 250}}, {"id": "b", "video": {"w": 640, "h": 480}},
                         {"id": "c", "native": {"request": NATIVE_REQUEST}}, {"id": "d", "video": {"w": 1, "h": 1}}])
    out = e.bid(parse_request(body(three)), "x", math.inf)
    resp = orjson.loads(out.body)
    by_imp = {b["impid"]: b for b in resp["seatbid"][0]["bid"]}
    assert resp["id"] == "req-1" and resp["cur"] == "USD" and set(by_imp) == {"a", "b", "c"}
    assert by_imp["b"]["mtype"] == 2 and (by_imp["b"]["w"], by_imp["b"]["h"]) == (640, 480)
    assert by_imp["c"]["mtype"] == 4 and "w" not in by_imp["c"]
    assert [a["id"] for a in orjson.loads(by_imp["c"]["adm"])["assets"]] == [7]  # the request's asset id
    assert len({b["id"] for b in by_imp.values()}) == 3 and all(b["adomain"] == ["shop.example"] for b in by_imp.values())


def test_openrtb_25_placements_and_odd_values_are_read() -> None:
    req = parse_request(body(request(regs={"ext": {"gpp": "DBABLA~x", "gpp_sid": [7], "coppa": 1}}, tmax=0)))
    assert req.privacy.gpp == "DBABLA~x" and req.privacy.gpp_sid == (7,) and req.privacy.coppa
    assert req.tmax == DEFAULT_TMAX_MS  # 0 gives no usable deadline
    req = parse_request(body(request(regs={"gpp": "A", "gpp_sid": [2], "ext": {"gpp": "B"}})))
    assert req.privacy.gpp == "A"  # 2.6 placement wins
    req = parse_request(body(request(imp=[{"id": "1", "banner": {"w": -300, "h": 250, "format": [{"w": 0, "h": 5}]}}])))
    assert req.imps[0].sizes == ()  # non-positive sizes offer nothing


@pytest.mark.parametrize(("value", "ok"), [(b"2.6", True), (b"2.5", True), (b" 2.6 ", True), (b"2", True), (b"3.0", False),
                                           (b"", False), (b"26", False), (b"banana", False)])
def test_version_header(value: bytes, ok: bool) -> None:
    assert supported_version(value) is ok


def test_exchange_names_from_paths() -> None:
    assert exchange_name(b"/bid/adx-eu.1") == "adx-eu.1"
    assert exchange_name(b"/bid") == "default" and exchange_name(b"/openrtb2/") == "default"
    assert exchange_name(b"/bid/" + b"x" * 40) == "invalid" and exchange_name(b"/bid/a\xffb") == "invalid"
    assert exchange_name(b"/bid/a%20b") == "invalid"


@pytest.mark.parametrize("secret", [b"k", b"x" * 64, b"long-" * 40])
def test_notice_tags_bind_the_kind_for_any_key_length(secret: bytes) -> None:
    urls = notice_urls("http://b", secret, "bid-7", "c1", "cr1", 1_500_000, 2_000, "ex", "b1", "u1")
    tags = [parse_qs(urlsplit(u).query)["s"][0] for u in urls]
    assert len(set(tags)) == 3 and all(len(t) == 24 for t in tags)
    for kind, url in zip(("win", "bill", "loss"), urls, strict=True):
        query = urlsplit(url).query
        assert verify_notice(secret, kind, query, now=1_000).bid_id == "bid-7"
        for other in {"win", "bill", "loss"} - {kind}:
            with pytest.raises(NoticeError, match="bad_signature"):
                verify_notice(secret, other, query, now=1_000)
    with pytest.raises(NoticeError, match="bad_signature"):
        verify_notice(secret + b"!", "win", urlsplit(urls[0]).query, now=1_000)
