"""OpenRTB 2.6 rules beyond floors and blocks: test auctions, allowed categories, deal advertisers, impression
expiry, players' protocols and durations, languages, values the spec has not defined yet, and what one request's
several impressions may take together (frequency caps, budget leases)."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from bidder import vast
from bidder.campaigns import ConfigError, parse_campaign
from bidder.engine import MAX_NOTICE_TTL_S, BidEngine, EngineConfig
from bidder.frequency import FrequencyStore
from bidder.notices import notice_urls
from bidder.openrtb import BadRequest, parse_request
from models.features import request_features
from models.snapshot import ModelSnapshot
from streams.events import check_event
from tests.helpers import NATIVE_ADM, body, campaign, request

NOW = 1_780_000_000.0
VAST40 = ('<VAST version="4.0"><Ad id="a"><InLine><AdSystem>s</AdSystem><AdTitle>t</AdTitle><Creatives><Creative>'
          '<Linear><Duration>00:00:15</Duration><MediaFiles><MediaFile type="video/mp4">https://x.example/a.mp4'
          '</MediaFile></MediaFiles></Linear></Creative></Creatives></InLine></Ad></VAST>')


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, kind: str, key: str, ev: dict) -> None:
        self.events.append((kind, ev))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


def engine(*docs: dict, sink: Sink | None = None, clock=lambda: NOW, **cfg) -> BidEngine:
    cfg.setdefault("explore_below", 0)
    return BidEngine(EngineConfig(secret=b"s", **cfg), [parse_campaign(d) for d in docs], ModelSnapshot.empty(),
                     sink=sink or (lambda *a: None), clock=clock)


def bids(e: BidEngine, doc: dict) -> list[dict]:
    out = e.bid(parse_request(body(doc)), "x", math.inf)
    return orjson.loads(out.body)["seatbid"][0]["bid"] if out.status == 200 else []


def reason(e: BidEngine, doc: dict) -> str:
    return e.bid(parse_request(body(doc)), "x", math.inf).reason


def query(url: str, price: str = "1.5") -> str:
    return urlsplit(url.replace("${AUCTION_PRICE}", price)).query


def imps(n: int) -> list[dict]:
    return [{"id": str(i), "banner": {"w": 300, "h": 250}, "bidfloor": 0.01, "bidfloorcur": "USD"} for i in range(1, n + 1)]


# -- test auctions ---------------------------------------------------------------------------


def test_a_test_auction_is_answered_but_its_notices_move_no_money_counts_or_events() -> None:
    sink = Sink()
    e = engine(campaign(frequency_cap={"per_hour": 1, "per_day": 1}), sink=sink, lease_slice=1)
    e.grant("c1", "2026-05-28", 1_000_000)
    [b] = bids(e, request(test=1))
    assert parse_qs(urlsplit(b["burl"]).query)["t"] == ["1"]
    assert sink.kinds() == []  # no bid event: test traffic teaches the model and the forecast nothing
    assert e.leases["c1"].reserved_micros == 0
    assert e.notice("win", query(b["nurl"])) == "test" and e.notice("bill", query(b["burl"])) == "test"
    assert sink.kinds() == [] and e.leases["c1"].spent_micros == 0
    assert bids(e, request())  # the cap was not used up by the test impression
    forged = query(b["burl"]).replace("&t=1", "")  # a test notice cannot be passed off as a billable one
    assert e.notice("bill", forged) == "bad_signature"


def test_an_undefined_test_value_is_read_as_test() -> None:
    assert parse_request(body(request(test=2))).test and not parse_request(body(request(test=0))).test


# -- categories, deals, languages -------------------------------------------------------------


def test_acat_allows_only_the_listed_categories_and_their_children() -> None:
    e = engine(campaign())  # the creative is IAB3-1
    assert bids(e, request(acat=["IAB3"])) and bids(e, request(acat=["IAB3-1", "IAB9"]))
    assert reason(e, request(acat=["IAB9"])) == "blocked_category"
    untagged = campaign(id="c2", creatives=[{"id": "x", "type": "banner", "w": 300, "h": 250, "adm": "<a/>"}])
    assert reason(engine(untagged), request(acat=["IAB3"])) == "blocked_category"  # cannot be shown to be allowed


def test_category_lists_in_another_taxonomy_are_not_guessed_at() -> None:
    e = engine(campaign())
    assert reason(e, request(cattax=2, bcat=["483"])) == "blocked_category"
    assert reason(e, request(cattax=6, acat=["IAB3"])) == "blocked_category"
    assert bids(e, request(cattax=2))  # no list: nothing to read
    assert bids(e, request(cattax=1, bcat=["IAB9"]))


def test_a_deal_restricted_to_other_advertisers_is_not_bid() -> None:
    dealer = campaign(targeting={"countries": ["USA"], "deals": ["d1"], "deal_only": True})
    e = engine(dealer)

    def deal(**extra: object) -> dict:
        return request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, "pmp": {"private_auction": 1, "deals": [
            {"id": "d1", "bidfloor": 0.5, **extra}]}}])

    assert reason(e, deal(wadomain=["other.example"])) == "deal"
    [b] = bids(e, deal(wadomain=["other.example", "SHOP.example"]))  # domains compare without case
    assert b["dealid"] == "d1"


def test_wlang_and_wlangb_allow_only_creatives_in_their_languages() -> None:
    def lang(tag: str) -> dict:
        return campaign(creatives=[{"id": "x", "type": "banner", "w": 300, "h": 250, "adm": "<a/>", "lang": tag}])

    assert bids(engine(lang("en")), request(wlang=["en", "fr"]))
    assert reason(engine(lang("en")), request(wlang=["de"])) == "targeting"
    assert bids(engine(lang("en-GB")), request(wlang=["en"]))  # its primary language
    assert bids(engine(lang("en-GB")), request(wlangb=["en"]))  # a BCP-47 range matches its sub-tags
    assert reason(engine(lang("en")), request(wlangb=["en-US"])) == "targeting"  # but not the other way round
    assert reason(engine(campaign()), request(wlang=["en"])) == "targeting"  # no language stated: not shown to fit
    assert bids(engine(campaign()), request())
    with pytest.raises(ConfigError, match="lang"):
        parse_campaign(lang("english language"))


def test_a_bid_states_its_creative_language_for_the_exchange_to_check() -> None:
    def lang(tag: str) -> dict:
        return campaign(creatives=[{"id": "x", "type": "banner", "w": 300, "h": 250, "adm": "<a/>", "lang": tag}])

    [b] = bids(engine(lang("en")), request(wlang=["en"]))
    assert b["language"] == "en" and "langb" not in b  # ISO 639-1
    [b] = bids(engine(lang("en-GB")), request(wlangb=["en"]))
    assert b["langb"] == "en-gb" and "language" not in b  # finer than 639-1: BCP-47, and only one of the two
    [b] = bids(engine(campaign()), request())
    assert "language" not in b and "langb" not in b  # not stated: not claimed


def test_a_secure_impression_takes_only_markup_without_plain_http() -> None:
    def markup(adm: str) -> dict:
        return campaign(creatives=[{"id": "x", "type": "banner", "w": 300, "h": 250, "adm": adm}])

    plain = markup('<a href="https://shop.example/"><img src="http://cdn.shop.example/a.jpg"></a>')
    safe = markup('<a href="https://shop.example/"><img src="https://cdn.shop.example/a.jpg"></a>')

    def imp(**extra: object) -> dict:
        return request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, **extra}])

    assert reason(engine(plain), imp(secure=1)) == "targeting"
    assert bids(engine(safe), imp(secure=1))
    assert bids(engine(plain), imp(secure=0)) and bids(engine(plain), imp())  # unstated: plain HTTP may be assumed
    assert reason(engine(plain), imp(secure=2)) == "targeting"  # a value not defined yet: the safe reading
    adm = NATIVE_ADM.replace("https://", "http://").replace("/", "\\/")
    native = parse_campaign(campaign(creatives=[{"id": "n", "type": "native", "adm": adm}]))
    assert not native.creatives[0].secure  # JSON may write http:// as http:\/\/


def test_an_impression_sold_by_the_multiple_is_not_bid() -> None:
    """DOOH: one purchase of `qty.multiplier` 14.2 is billed as 14.2 impressions; prices, leases and spend here are
    per impression, so such an impression is never bid (rather than bought at 1/14.2 of its cost)."""
    def imp(**extra: object) -> dict:
        return request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, **extra}])

    e = engine(campaign())
    assert reason(e, imp(qty={"multiplier": 14.2, "sourcetype": 1})) == "targeting"
    assert reason(e, imp(qty={"multiplier": 0.5})) == "targeting"
    assert bids(e, imp(qty={"multiplier": 1}))
    assert bids(e, imp(qty={"sourcetype": 1}))  # no multiplier stated: one impression
    with pytest.raises(BadRequest, match="qty.multiplier"):
        parse_request(body(imp(qty={"multiplier": "14"})))


# -- when notices count ----------------------------------------------------------------------


@pytest.mark.parametrize(("exp", "life"), [(0, 3600), (60, 3600), (7200, 7200), (10**9, MAX_NOTICE_TTL_S)])
def test_notices_are_accepted_as_long_as_the_impression_may_come(exp: int, life: int) -> None:
    now = [NOW]
    e = engine(campaign(), clock=lambda: now[0])
    [b] = bids(e, request(imp=[{**imps(1)[0], "exp": exp}]))
    assert b["exp"] == life
    now[0] = NOW + life - 1
    assert e.notice("bill", query(b["burl"])) == "ok"
    [b] = bids(e, request(imp=[{**imps(1)[0], "exp": exp}]))
    now[0] += life + 1
    assert e.notice("bill", query(b["burl"])) == "expired"


@pytest.mark.parametrize(("exp", "stated"), [(0, None), (600, 600), (10**9, MAX_NOTICE_TTL_S)])
def test_the_bid_event_carries_how_late_the_exchange_said_the_impression_may_come(exp: int, stated: int | None) -> None:
    """Attribution keeps the bid that long (past its ten minutes) to learn from a late impression."""
    sink = Sink()
    e = engine(campaign(), sink=sink)
    bids(e, request(imp=[{**imps(1)[0], "exp": exp}]))
    [(kind, ev)] = sink.events
    assert kind == "bids" and ev.get("exp") == stated
    assert check_event("bids", orjson.dumps(ev)) == ev


def test_a_notice_signed_for_an_earlier_run_is_not_charged_to_this_runs_lease() -> None:
    """A replay after a restart reaches a bidder whose replay memory is new: the ledger dedups it by id, but
    the lease must not count it, or it would hold back budget this bidder never spent."""
    e = engine(campaign(), lease_slice=1, bidder_id="now")
    e.grant("c1", "2026-05-28", 1_000_000)
    old = notice_urls("http://b", b"s", "then-1", "c1", "cr1", 2_000_000, int(NOW) + 60, "x", "then")[1]
    assert e.notice("bill", query(old)) == "ok"
    assert e.leases["c1"].spent_micros == 0


def test_a_loss_notice_saying_the_bid_won_keeps_its_reservation() -> None:
    """Loss reason 0 is "Bid Won": the bill that follows charges the reservation, so freeing it on the loss notice
    would let another bid spend the same budget (and the bid would count as lost too)."""
    events = Sink()
    e = engine(campaign(), sink=events, lease_slice=1, bidder_id="b")
    e.grant("c1", "2026-05-28", 1_000_000)
    [b] = bids(e, request())
    reserved = e.leases["c1"].reserved_micros
    assert reserved > 0

    def lurl(code: str) -> str:
        return query(b["lurl"].replace("${AUCTION_LOSS}", code).replace("${AUCTION_MIN_TO_WIN}", ""))

    assert e.notice("loss", lurl("0")) == "won"
    assert e.leases["c1"].reserved_micros == reserved and "losses" not in events.kinds()
    assert e.notice("bill", query(b["burl"], "1.0")) == "ok"
    assert e.leases["c1"].spent_micros == 1000 and e.leases["c1"].reserved_micros == 0
    [b] = bids(e, request())
    assert e.notice("loss", lurl("102")) == "ok"  # a real loss frees it
    assert e.leases["c1"].reserved_micros == 0


# -- players ---------------------------------------------------------------------------------


def test_the_markup_states_protocol_duration_and_linearity() -> None:
    assert (vast.protocol(VAST40), vast.duration(VAST40), vast.linearity(VAST40)) == (7, 15, 1)
    assert vast.protocol(VAST40.replace("4.0", "4.2").replace("InLine", "Wrapper")) == 14
    assert vast.protocol('<DAAST version="1.0">') == 9 and vast.protocol("<div>") == 0
    assert vast.duration("<Duration>00:01:02.500</Duration>") == 63  # rounded up: 62.5 s fits no 62 s limit
    pod = '<VAST version="4.0"><Ad><Duration>00:00:15</Duration></Ad><Ad><Duration>00:01:00</Duration></Ad></VAST>'
    assert vast.duration(pod) == 60  # each ad must fit the player's limit: the longest decides
    assert vast.linearity("<VAST><NonLinearAds/></VAST>") == 2 and vast.linearity("<a/>") == 0


@pytest.mark.parametrize(("player", "fits"), [
    ({}, True),
    ({"protocols": [2, 3, 7]}, True),
    ({"protocols": [2, 3]}, False),
    ({"maxduration": 10}, False),
    ({"minduration": 30}, False),
    ({"minduration": 5, "maxduration": 15}, True),
    ({"rqddurs": [15, 30]}, True),
    ({"rqddurs": [30]}, False),
    ({"linearity": 2}, False),
    ({"linearity": 1}, True),
    ({"mimes": ["video/webm"]}, False),
])
def test_a_video_creative_must_meet_the_players_rules(player: dict, fits: bool) -> None:
    doc = campaign(creatives=[{"id": "v", "type": "video", "w": 640, "h": 480, "adm": VAST40, "mimes": ["video/mp4"]}])
    e = engine(doc)
    got = bids(e, request(imp=[{"id": "1", "video": {"w": 640, "h": 480, **player}}]))
    assert bool(got) == fits


def _fifteen_seconds(**goal: float) -> dict:
    return campaign(creatives=[{"id": "v", "type": "video", "w": 640, "h": 480, "adm": VAST40}],
                    goal={"type": "cpc", "value_per_click": 40.0, "max_bid_cpm": 20.0, **goal},
                    targeting={"countries": ["USA"], "deals": ["d1"]})


def _video(video: dict | None = None, **imp: object) -> dict:
    return request(imp=[{"id": "1", "video": {"w": 640, "h": 480, **(video or {})}, "bidfloor": 0.5, **imp}])


@pytest.mark.parametrize(("video", "floor"), [
    ({"durfloors": [{"mindur": 1, "maxdur": 15, "bidfloor": 3.0}]}, 3.0),  # 15 s lies in 1-15
    ({"durfloors": [{"mindur": 16, "bidfloor": 9.0}]}, 0.5),  # no range for 15 s: the impression's floor
    ({"durfloors": [{"maxdur": 20, "bidfloor": 1.0}, {"mindur": 10, "bidfloor": 4.0}]}, 4.0),  # overlapping: highest
    ({"durfloors": [{"maxdur": 30, "bidfloor": 0.1}]}, 0.1),  # it replaces the impression's floor, even lower
    ({"mincpmpersec": 0.2}, 3.0),  # 15 s at 0.2 a second
])
def test_a_video_floor_by_creative_length_is_the_floor(video: dict, floor: float) -> None:
    """2.6 section 7.11: the video object's floor guidance before the impression's; a creative whose length no
    range covers keeps the impression's floor."""
    e = engine(_fifteen_seconds(max_bid_cpm=round(floor - 0.01, 2)))
    assert reason(e, _video(video)) == "below_floor"
    [b] = bids(engine(_fifteen_seconds()), _video(video))
    assert b["price"] >= floor


def test_a_deal_floor_by_creative_length_comes_before_the_players() -> None:
    deal = {"id": "d1", "durfloors": [{"maxdur": 30, "bidfloor": 12.0}]}
    player = {"durfloors": [{"maxdur": 30, "bidfloor": 1.0}]}
    doc = _video(player, pmp={"private_auction": 1, "deals": [deal]})
    assert parse_request(body(doc)).imps[0].deals[0].cur == "USD"
    assert reason(engine(_fifteen_seconds(max_bid_cpm=11.0)), doc) == "below_floor"
    [b] = bids(engine(_fifteen_seconds()), doc)
    assert b["dealid"] == "d1" and b["price"] >= 12.0
    open_deal = _video(player, pmp={"private_auction": 1, "deals": [{"id": "d1"}]})  # no floor of its own
    [b] = bids(engine(_fifteen_seconds()), open_deal)
    assert b["dealid"] == "d1" and 1.0 <= b["price"]
    unknown = campaign(creatives=[{"id": "v", "type": "video", "adm": "https://ads.example/vast.xml"}])
    assert reason(engine(unknown), _video({"mincpmpersec": 0.01})) == "below_floor"  # no length: no price per second


@pytest.mark.parametrize("floors", [{"durfloors": [{"maxdur": 30, "bidfloor": 5.0}]}, {"mincpmpersec": 0.3}])
def test_a_deal_floored_by_length_in_another_currency_is_out_of_reach(floors: dict) -> None:
    """A deal floored by creative length alone has no `bidfloor`, yet its floors are in its `bidfloorcur`: a USD
    campaign took it, and compared the EUR floors with its USD bid as if they were one currency."""
    deal = {"id": "d1", "bidfloorcur": "EUR", **floors}
    private = _video(pmp={"private_auction": 1, "deals": [deal]})
    private["cur"] = ["USD", "EUR"]
    assert reason(engine(_fifteen_seconds()), private) == "currency"
    beside = _video(pmp={"private_auction": 0, "deals": [deal]})
    beside["cur"] = ["USD", "EUR"]
    [b] = bids(engine(_fifteen_seconds()), beside)  # an open auction beside it: bid there, at the USD floor
    assert "dealid" not in b and b["price"] >= 0.5


@pytest.mark.parametrize(("video", "field"), [({"durfloors": {}}, "imp[0].video.durfloors"),
                                              ({"durfloors": [1]}, "imp[0].video.durfloors[0]"),
                                              ({"durfloors": [{"bidfloor": "2"}]}, "imp[0].video.durfloors[0].bidfloor"),
                                              ({"mincpmpersec": -1}, "imp[0].video.mincpmpersec")])
def test_floors_by_length_that_cannot_be_read_are_a_400_naming_them(video: dict, field: str) -> None:
    with pytest.raises(BadRequest, match=field.replace("[", "\\[").replace("]", "\\]").replace(".", "\\.")):
        parse_request(body(_video(video)))


def test_a_video_creative_without_mimes_plays_the_types_its_media_files_are() -> None:
    webm = campaign(creatives=[{"id": "v", "type": "video", "adm": VAST40.replace("video/mp4", "video/webm")}])
    assert parse_campaign(webm).creatives[0].mimes == ("video/webm",)
    assert reason(engine(webm), request(imp=[{"id": "1", "video": {"mimes": ["video/mp4"]}}])) == "no_match"
    assert bids(engine(webm), request(imp=[{"id": "1", "video": {"mimes": ["video/mp4", "video/webm"]}}]))
    stated = campaign(creatives=[{"id": "v", "type": "video", "adm": VAST40, "mimes": ["video/ogg"]}])
    assert parse_campaign(stated).creatives[0].mimes == ("video/ogg",)  # the campaign's word over the markup's


def test_a_creative_may_state_what_its_markup_does_not() -> None:
    doc = campaign(creatives=[{"id": "v", "type": "video", "adm": "https://ads.example/vast.xml", "protocol": 8,
                               "duration": 20}])
    c = parse_campaign(doc).creatives[0]
    assert (c.protocol, c.duration) == (8, 20)
    assert bids(engine(doc), request(imp=[{"id": "1", "video": {"protocols": [8], "maxduration": 30}}]))
    assert not bids(engine(doc), request(imp=[{"id": "1", "video": {"maxduration": 15}}]))
    unknown = campaign(creatives=[{"id": "v", "type": "video", "adm": "https://ads.example/vast.xml"}])
    assert not bids(engine(unknown), request(imp=[{"id": "1", "video": {"protocols": [2, 3, 7]}}]))
    with pytest.raises(ConfigError, match="creatives\\[0\\].duration"):
        parse_campaign(campaign(creatives=[{"id": "b", "w": 300, "h": 250, "adm": "<a/>", "duration": 5}]))


VPAID = VAST40.replace('type="video/mp4"', 'type="application/javascript" apiFramework="VPAID"')


def test_a_creative_needing_an_api_the_placement_does_not_list_is_not_bid() -> None:
    """2.6 3.2.6/3.2.7: an API framework an impression does not list, it does not support.  A VAST whose every
    media file is a VPAID unit needs VPAID; beside a plain file it plays without it.  The bid says what it needs."""
    vpaid = campaign(creatives=[{"id": "vp", "type": "video", "adm": VPAID}])
    assert parse_campaign(vpaid).creatives[0].apis == (vast.VPAID_2,)
    mixed = VPAID.replace("</MediaFiles>", '<MediaFile type="video/mp4">https://x.example/a.mp4</MediaFile></MediaFiles>')
    assert vast.apis(mixed) == () and vast.apis(VAST40) == ()
    assert reason(engine(vpaid), request(imp=[{"id": "1", "video": {"api": [7]}}])) == "no_match"
    assert reason(engine(vpaid), request(imp=[{"id": "1", "video": {}}])) == "no_match"
    [b] = bids(engine(vpaid), request(imp=[{"id": "1", "video": {"api": [2, 7]}}]))
    assert b["apis"] == [2]
    mraid = campaign(creatives=[{"id": "m", "w": 300, "h": 250, "adm": "<script src='mraid.js'></script>", "apis": [5]}])
    assert reason(engine(mraid), request()) == "no_match"  # the banner lists no api
    banner = {"w": 300, "h": 250, "api": [3, 5]}
    assert bids(engine(mraid), request(imp=[{"id": "1", "banner": banner}]))[0]["apis"] == [5]
    stated = campaign(creatives=[{"id": "vp", "type": "video", "adm": VPAID, "apis": []}])  # the campaign's word
    assert bids(engine(stated), request(imp=[{"id": "1", "video": {"api": [7]}}]))


def test_a_creative_with_a_blocked_attribute_is_not_bid_and_its_bid_states_them() -> None:
    doc = campaign(creatives=[{"id": "b1", "w": 300, "h": 250, "adm": "<a/>", "attr": [6, 1]},
                              {"id": "b2", "w": 300, "h": 250, "adm": "<b/>"}])
    assert parse_campaign(doc).creatives[0].attr == (1, 6)
    [b] = bids(engine(doc), request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "battr": [6]}}]))
    assert b["crid"] == "b2" and "attr" not in b
    only = campaign(creatives=[{"id": "b1", "w": 300, "h": 250, "adm": "<a/>", "attr": [6, 1]}])
    assert reason(engine(only), request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "battr": [1]}}])) == "no_match"
    assert bids(engine(only), request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "battr": [2, 3]}}]))[0]["attr"] == [1, 6]


def test_a_banner_whose_markup_is_a_blocked_banner_type_is_not_bid() -> None:
    """`banner.btype` (3 JavaScript, 4 iframe) was never read: a script tag bid where the placement blocks scripts."""
    doc = campaign(creatives=[{"id": "js", "w": 300, "h": 250, "adm": "<SCRIPT src='https://ad.example/a.js'></SCRIPT>"},
                              {"id": "frame", "w": 300, "h": 250, "adm": "<iframe src='https://ad.example/f'></iframe>"},
                              {"id": "img", "w": 300, "h": 250, "adm": "<img src='https://ad.example/i.png'>"}])
    assert [c.btypes for c in parse_campaign(doc).creatives] == [(3,), (4,), ()]

    def crids(btype: list[int]) -> set[str]:
        e = engine(doc)
        return {b["crid"] for _ in range(30) for b in bids(e, request(imp=[{"id": "1", "banner": {
            "w": 300, "h": 250, "btype": btype}}]))}

    assert crids([3, 4]) == {"img"}
    assert "js" not in crids([3]) and "frame" not in crids([4])
    only = campaign(creatives=[{"id": "js", "w": 300, "h": 250, "adm": "<script>x()</script>"}])
    assert reason(engine(only), request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "btype": [3]}}])) == "no_match"
    assert bids(engine(only), request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "btype": [1, 2, 4]}}]))
    with pytest.raises(BadRequest, match="imp\\[0\\]\\.banner\\.btype"):
        parse_request(body(request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "btype": ["3"]}}])))


def test_a_video_bid_states_the_length_and_protocol_its_floor_was_checked_against() -> None:
    """2.6 4.2.3 `dur` and `protocol`: with floors by length (3.2.35) the exchange checks which floor the bid met."""
    [b] = bids(engine(_fifteen_seconds()), _video({"durfloors": [{"maxdur": 15, "bidfloor": 1.0}]}))
    assert (b["dur"], b["protocol"]) == (15, 7)
    [b] = bids(engine(campaign()), request())
    assert "dur" not in b and "protocol" not in b  # a banner has neither


def test_a_dooh_request_with_a_site_or_app_is_refused_naming_both() -> None:
    for src in ("site", "app"):
        doc = request(dooh={"id": "screen-1"}, **{src: {"id": "s", "domain": "x.example", "bundle": "x"}})
        doc.pop("app" if src == "site" else "site", None)
        with pytest.raises(BadRequest, match=f"dooh and {src}"):
            parse_request(body(doc))
    doc = request(dooh={"id": "screen-1"})
    doc.pop("site", None)
    assert parse_request(body(doc)).imps


@pytest.mark.parametrize("bad", [[0], ["5"], 5, [1.5]])
def test_api_and_attribute_codes_that_are_not_positive_integers_are_refused_naming_the_field(bad: object) -> None:
    for key in ("apis", "attr"):
        with pytest.raises(ConfigError, match=f"creatives\\[0\\]\\.{key}"):
            parse_campaign(campaign(creatives=[{"id": "b", "w": 300, "h": 250, "adm": "<a/>", key: bad}]))
    with pytest.raises(BadRequest, match="imp\\[0\\]\\.banner\\.battr"):
        parse_request(body(request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "battr": ["6"]}}])))


def test_audio_mime_types_are_honoured() -> None:
    doc = campaign(creatives=[{"id": "pod", "type": "audio", "adm": "<VAST version=\"4.0\"/>", "mimes": ["audio/mpeg"]}])
    e = engine(doc)
    assert not bids(e, request(imp=[{"id": "1", "audio": {"mimes": ["audio/mp4"]}}]))
    [b] = bids(e, request(imp=[{"id": "1", "audio": {"mimes": ["audio/mp4", "audio/mpeg"], "protocols": [7]}}]))
    assert b["mtype"] == 3


# -- values not defined yet ------------------------------------------------------------------


def test_values_the_spec_has_not_defined_are_tolerated_on_the_safe_side() -> None:
    e = engine(campaign())
    req = parse_request(body(request(at=3, imp=[{**imps(1)[0], "instl": 2}], regs={"coppa": 2, "gdpr": 7},
                                     source={"schain": {"ver": "1.0", "complete": 2, "nodes": []}})))
    assert req.at == 1  # priced as first price: never more than the bid is paid
    assert not req.imps[0].instl and req.schain_complete is False
    assert req.privacy.coppa and req.privacy.gdpr  # privacy fails closed
    assert bids(e, request(at=3)) and bids(e, request(at=501))
    private = parse_request(body(request(imp=[{**imps(1)[0], "pmp": {"private_auction": 2, "deals": []}}])))
    assert private.imps[0].private_auction  # only deals, the narrower reading


# -- one request, several impressions --------------------------------------------------------


def test_one_request_never_takes_more_impressions_than_the_users_cap_allows() -> None:
    e = engine(campaign(frequency_cap={"per_hour": 2, "per_day": 6}))
    assert len(bids(e, request(imp=imps(4)))) == 2
    user = parse_request(body(request())).user_key
    e.frequency.record(user, "c1", int(NOW // 3600), int(NOW // 86400))
    assert len(bids(e, request(imp=imps(4)))) == 1  # one impression seen this hour: room for one more
    assert len(bids(e, request(imp=imps(4), user={"id": "someone-else"}))) == 2


def test_one_request_never_takes_more_than_the_lease_holds() -> None:
    [b] = bids(engine(campaign()), request(imp=imps(1)))
    per_imp = round(b["price"] * 1e6) // 1000
    e = engine(campaign(), lease_slice=1)
    e.grant("c1", "2026-05-28", per_imp * 2 + per_imp // 2)  # room for two and a half impressions
    assert len(bids(e, request(imp=imps(4)))) == 2
    assert e.leases["c1"].remaining_micros == per_imp // 2


def test_a_late_bill_of_an_earlier_hour_or_day_does_not_reset_the_current_count() -> None:
    s = FrequencyStore()
    day, hour = 20601, 20601 * 24 + 5
    s.record("u", "c", hour, day)
    s.record("u", "c", hour, day)
    s.record("u", "c", hour - 6, day - 1)  # yesterday's, read late
    assert not s.allowed("u", "c", 0, 2, hour, day) and not s.allowed("u", "c", 2, 0, hour, day)
    s.record("u", "c", hour - 1, day)  # an earlier hour of today: counts today, not this hour
    assert s.room("u", "c", 5, 5, hour, day) == 2 and s.room("u", "c", 0, 0, hour, day) > 10**6


# -- features and explanations ---------------------------------------------------------------


def test_a_size_listed_twice_is_one_size_and_one_feature() -> None:
    req = parse_request(body(request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "format": [
        {"w": 300, "h": 250}, {"w": 320, "h": 50}]}}])))
    assert req.imps[0].sizes == ((300, 250), (320, 50))
    feats = request_features(req, req.imps[0], "x", 12, 3)
    assert len(feats) == len(set(feats))


def test_an_explanation_gives_the_pctr_the_price_used_and_says_when_it_was_an_exploration_draw() -> None:
    sink = Sink()
    e = engine(campaign(), sink=sink, explore_below=200, explain_rate=1.0)
    bids(e, request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}}]))  # no floor: however small the draw, it bids
    [(kind, ev)] = sink.events
    assert kind == "bids" and ev["explain"]["explored"] is True and ev["explain"]["pctr_used"] == ev["pctr"]
    sink.events.clear()
    e = engine(campaign(), sink=sink, explore_below=0, explain_rate=1.0)
    bids(e, request())
    [(_, ev)] = sink.events
    assert ev["explain"]["explored"] is False and ev["explain"]["pctr_used"] == ev["pctr"]
    assert math.isclose(ev["explain"]["pctr"], ev["pctr"], rel_tol=1e-9)



def test_a_test_auctions_notice_is_answered_200_and_counted_as_test() -> None:
    from bidder.metrics import BidderStats
    from bidder.server import BidApp

    e = engine(campaign())
    app = BidApp(e, BidderStats())
    [b] = bids(e, request(test=1))
    assert app.notice("bill", query(b["burl"])).startswith(b"HTTP/1.1 200")
    assert app.stats.notices[("bill", "test")] == 1 and app.stats.notices[("bill", "ok")] == 0


# -- edge cases of the above -----------------------------------------------------------------


def test_a_notice_fired_by_a_creative_audit_is_answered_but_charges_and_uses_up_nothing() -> None:
    """OpenRTB 2.6 4.4: an exchange rendering a creative for audit writes AUDIT in its price macros.  The notice is
    genuine (signed) but sells nothing: not charged, not counted as a bad notice, and the real one still counts."""
    sink = Sink()
    e = engine(campaign(), sink=sink)
    [b] = bids(e, request())
    sink.events.clear()
    assert e.notice("bill", query(b["burl"], "AUDIT")) == "audit" and e.notice("win", query(b["nurl"], "AUDIT")) == "audit"
    assert sink.kinds() == []
    forged = query(b["burl"], "AUDIT").replace("&s=", "&s=0")
    assert e.notice("bill", forged) == "bad_signature"  # the mark does not skip the signature
    assert e.notice("bill", query(b["burl"])) == "ok" and sink.kinds() == ["billing"]


def test_the_test_mark_cannot_be_moved_into_another_field() -> None:
    """The signed fields are URL-quoted: a "|" in one can never stand for the separator before the test mark."""
    e = engine(campaign(), bidder_id="b")
    [b] = bids(e, request(test=1))
    q = parse_qs(query(b["burl"]))
    moved = query(b["burl"]).replace("&t=1", "").replace("u=" + q["u"][0], "u=" + q["u"][0] + "%7Ctest")
    assert e.notice("bill", moved) == "bad_signature"


def test_an_undefined_deal_auction_type_is_priced_as_first_price() -> None:
    req = parse_request(body(request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, "pmp": {"deals": [
        {"id": "d1", "at": 4}, {"id": "d2", "at": 3}, {"id": "d3", "at": 501}]}}])))
    assert [d.at for d in req.imps[0].deals] == [1, 3, 501]


def test_a_creative_may_state_its_linearity() -> None:
    doc = campaign(creatives=[{"id": "v", "type": "video", "adm": "https://ads.example/vast.xml", "protocol": 7,
                               "duration": 15, "linearity": 1}])
    assert bids(engine(doc), request(imp=[{"id": "1", "video": {"linearity": 1, "protocols": [7]}}]))
    assert not bids(engine(doc), request(imp=[{"id": "1", "video": {"linearity": 2}}]))
    with pytest.raises(ConfigError, match="linearity"):
        parse_campaign(campaign(creatives=[{"id": "a", "type": "audio", "adm": "<VAST/>", "linearity": 1}]))
    assert vast.protocol('<VAST version="4.3"><Ad><InLine/></Ad></VAST>') == 15


def test_an_unreadable_native_request_leaves_the_impressions_other_media_biddable() -> None:
    from bidder.openrtb import BadRequest

    e = engine(campaign())
    assert bids(e, request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}, "native": {"request": "not json"}}]))
    with pytest.raises(BadRequest, match="imp\\[0\\].native.request"):
        parse_request(body(request(imp=[{"id": "1", "native": {"request": "not json"}}])))


def test_gdpr_written_as_a_boolean_or_a_float_is_read() -> None:
    from bidder.openrtb import BadRequest

    for value in (True, 1.0):
        assert parse_request(body(request(regs={"ext": {"gdpr": value}}))).privacy.gdpr
    assert not parse_request(body(request(regs={"ext": {"gdpr": False}}))).privacy.gdpr
    with pytest.raises(BadRequest, match="regs.ext.gdpr"):
        parse_request(body(request(regs={"ext": {"gdpr": "1"}})))


def test_a_long_lived_notice_does_not_keep_shorter_ones_in_the_replay_memory() -> None:
    now = [NOW]
    e = engine(campaign(), clock=lambda: now[0])
    [long_lived] = bids(e, request(imp=[{**imps(1)[0], "exp": 14_400}]))
    assert e.notice("win", query(long_lived["nurl"])) == "ok"
    for _ in range(50):
        [b] = bids(e, request())
        assert e.notice("win", query(b["nurl"])) == "ok"
    now[0] += 2 * 3600
    e.live()  # the once-a-second refresh forgets expired notices
    assert len(e._seen_notices) == 1
    assert e.notice("win", query(long_lived["nurl"])) == "replayed"


def test_test_requests_are_not_counted_as_traffic() -> None:
    e = engine(campaign())
    for _ in range(5):
        bids(e, request(test=1))
    bids(e, request())
    assert e.requests_seen == 1


def test_a_campaign_targeting_a_tier1_category_takes_its_subcategories() -> None:
    news = engine(campaign(targeting={"countries": ["USA"], "categories": ["IAB12"]}))
    assert bids(news, request(site={"domain": "n.example", "cat": ["IAB12-3"]}))
    assert reason(news, request(site={"domain": "n.example", "cat": ["IAB3"]})) == "targeting"
    narrow = engine(campaign(targeting={"countries": ["USA"], "categories": ["IAB12-3"]}))
    assert reason(narrow, request(site={"domain": "n.example", "cat": ["IAB12"]})) == "targeting"  # not the converse


def test_mime_types_regions_and_cities_match_whatever_their_case() -> None:
    doc = campaign(creatives=[{"id": "v", "type": "video", "w": 640, "h": 480, "adm": VAST40, "mimes": ["Video/MP4"]}],
                   targeting={"countries": ["USA"], "regions": ["wa"], "cities": ["Seattle"]})
    got = bids(engine(doc), request(imp=[{"id": "1", "video": {"w": 640, "h": 480, "mimes": ["video/mp4"]}}],
                                    device={"geo": {"country": "USA", "region": "WA", "city": "SEATTLE"}}))
    assert got


def test_a_2_5_players_single_protocol_is_read_when_it_sends_no_list() -> None:
    doc = campaign(creatives=[{"id": "v", "type": "video", "w": 640, "h": 480, "adm": VAST40}])
    vast2_only = request(imp=[{"id": "1", "video": {"w": 640, "h": 480, "protocol": 2}}])  # VAST 2.0 only
    assert not bids(engine(doc), vast2_only)
    vast4 = request(imp=[{"id": "1", "video": {"w": 640, "h": 480, "protocol": 7}}])
    assert bids(engine(doc), vast4)
