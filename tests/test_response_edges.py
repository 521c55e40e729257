"""What a bid states about its creative, whatever the kind, and how native requests' rules are read."""

from __future__ import annotations

import math

import orjson

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.native import parse_native_creative, parse_native_request
from bidder.openrtb import parse_request
from models.snapshot import ModelSnapshot
from tests.helpers import NATIVE_ADM, NATIVE_REQUEST, body, campaign, request

NOW = 1_780_000_000.0
VAST40 = ('<VAST version="4.0"><Ad id="a"><InLine><Creatives><Creative><Linear><Duration>00:00:15</Duration>'
          '<MediaFiles><MediaFile type="video/mp4">https://x.example/a.mp4</MediaFile></MediaFiles></Linear>'
          '</Creative></Creatives></InLine></Ad></VAST>')


def engine(*docs: dict) -> BidEngine:
    return BidEngine(EngineConfig(secret=b"s", explore_below=0), [parse_campaign(d) for d in docs],
                     ModelSnapshot.empty(), sink=lambda *a: None, clock=lambda: NOW)


def bids(e: BidEngine, doc: dict) -> list[dict]:
    out = e.bid(parse_request(body(doc)), "x", math.inf)
    return orjson.loads(out.body)["seatbid"][0]["bid"] if out.status == 200 else []


def test_a_native_bid_states_the_apis_and_attributes_of_its_creative() -> None:
    native = campaign(creatives=[{"id": "nat", "type": "native", "cat": ["IAB3-1"], "adm": NATIVE_ADM,
                                  "apis": [7], "attr": [3]}])
    [b] = bids(engine(native), request(imp=[{"id": "1", "native": {"request": NATIVE_REQUEST, "api": [7]}}]))
    assert b["mtype"] == 4 and b["apis"] == [7] and b["attr"] == [3]


def test_a_native_bid_of_a_creative_stating_neither_states_neither() -> None:
    native = campaign(creatives=[{"id": "nat", "type": "native", "cat": ["IAB3-1"], "adm": NATIVE_ADM}])
    [b] = bids(engine(native), request(imp=[{"id": "1", "native": {"request": NATIVE_REQUEST}}]))
    assert "apis" not in b and "attr" not in b


def _video_asset_request(mime: str) -> str:
    return orjson.dumps({"ver": "1.2", "assets": [{"id": 3, "required": 1, "video": {
        "mimes": [mime], "minduration": 5, "maxduration": 30, "protocols": [7]}}]}).decode()


def test_a_native_video_asset_takes_its_mime_types_without_case() -> None:
    adm = orjson.dumps({"assets": [{"id": 1, "video": {"vasttag": VAST40}}], "link": {"url": "https://x.example/"}})
    creative = parse_native_creative(adm.decode())
    for mime in ("video/mp4", "Video/MP4"):
        player = parse_native_request(_video_asset_request(mime)).assets[0].player
        assert player is not None and player.mimes == ("video/mp4",)
    e = engine(campaign(creatives=[{"id": "nv", "type": "native", "cat": ["IAB3-1"], "adm": adm.decode()}]))
    [b] = bids(e, request(imp=[{"id": "1", "native": {"request": _video_asset_request("video/MP4")}}]))
    assert [a["id"] for a in orjson.loads(b["adm"])["assets"]] == [3]
    assert creative.assets[0].player is not None and creative.assets[0].player.mimes == ("video/mp4",)
    # a type the tag does not hold is still refused, in any case
    assert not bids(e, request(imp=[{"id": "1", "native": {"request": _video_asset_request("VIDEO/WEBM")}}]))
