"""Privacy end to end: raw ids never leave the parser, and restricted requests leave no user trace anywhere."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.metrics import BidderStats
from bidder.openrtb import hash_id
from bidder.server import BidApp
from models.snapshot import ModelSnapshot
from tests.helpers import body, campaign, request
from tests.test_privacy import tcf_string, us_section

RAW = {"user": "RAW-USER-7f3a9c", "buyer": "RAW-BUYER-1b2c44", "ifa": "RAW-IFA-99e1d2", "ip": "198.51.100.77",
       "ipv6": "2001:db8::beef:77"}
NOW = 1_780_000_000.0


def distinctive(**regs) -> dict:
    return request(user={"id": RAW["user"], "buyeruid": RAW["buyer"]},
                   device={"ua": "Mozilla/5.0", "ip": RAW["ip"], "ipv6": RAW["ipv6"], "ifa": RAW["ifa"], "devicetype": 2,
                           "geo": {"country": "USA", "lat": 47.61, "lon": -122.33}},
                   regs=regs)


def stack(**cfg) -> tuple[BidApp, list]:
    events: list = []
    camps = [parse_campaign(campaign()),
             parse_campaign(campaign(id="capped", frequency_cap={"per_day": 5},
                                     goal={"type": "cpc", "value_per_click": 9.0, "max_bid_cpm": 20.0}))]
    engine = BidEngine(EngineConfig(secret=b"p", salt=b"salt-1", explore_below=0, **cfg), camps, ModelSnapshot.empty(),
                       sink=lambda kind, key, ev: events.append((kind, ev)), clock=lambda: NOW)
    return BidApp(engine, BidderStats()), events


def bid_and_notify(app: BidApp, doc: dict) -> tuple[bytes, dict | None]:
    out = app.bid(body(doc), False, "privx", time.perf_counter())
    if not out.startswith(b"HTTP/1.1 200"):
        return out, None
    bid = orjson.loads(out.split(b"\r\n\r\n", 1)[1])["seatbid"][0]["bid"][0]
    for url in (bid["nurl"], bid["burl"]):
        app.notice(urlsplit(url).path.rsplit("/", 1)[1], urlsplit(url).query.replace("${AUCTION_PRICE}", "0.5"))
    loss = urlsplit(bid["lurl"])
    app.notice("loss", loss.query.replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "0.7"))
    return out, bid


RESTRICTING: dict[str, dict[str, Any]] = {
    "coppa": {"coppa": 1},
    "gdpr": {"gdpr": 1},
    "gdpr_weak_consent": {"gdpr": 1},  # consent without purposes 3 and 4
    "us_privacy": {"us_privacy": "1YYN"},
    "gpp_us": {"gpp": "DBABLA~CFQVAAAAAABA.QA", "gpp_sid": [7]},  # usnat: opted out of sale, sharing, targeting
    "gpp_gpc": {"gpp": f"DBABLA~{us_section(7)}.YA", "gpp_sid": [7]},  # usnat: no opt-out field set, but GPC set
    "ext_2_5": {"ext": {"gdpr": 1}},
    "dnt": {},  # no regs: the browser's Do Not Track (device.dnt, set below)
}
REASON = {"coppa": "coppa", "us_privacy": "us_optout", "gpp_us": "us_optout", "gpp_gpc": "us_optout", "dnt": "dnt"}


def test_raw_ids_and_ips_reach_no_event_metric_answer_or_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app, events = stack(explain_rate=1.0)
    answers = []
    for regs in ({}, *RESTRICTING.values(), {"gdpr": 1, "ext": {}}):
        out, _ = bid_and_notify(app, distinctive(**regs))
        answers.append(out)
    assert len([k for k, _ in events if k == "billing"]) >= 5  # the whole loop ran, restricted or not
    emitted = orjson.dumps([ev for _, ev in events]).decode()
    metrics = app.metrics().decode()
    status = app.status().decode()
    for place, text in (("events", emitted), ("metrics", metrics), ("answers", b"".join(answers).decode()),
                        ("status", status), ("log", caplog.text)):
        for name, raw in RAW.items():
            assert raw not in text, f"raw {name} found in {place}"
    assert "47.61" not in emitted and "-122.33" not in emitted  # nor precise location


@pytest.mark.parametrize("case", list(RESTRICTING))
def test_restricted_requests_carry_no_user_and_write_no_frequency(case: str) -> None:
    app, events = stack()
    doc = distinctive(**RESTRICTING[case])
    if case == "gdpr_weak_consent":
        doc["user"]["consent"] = tcf_string({1, 2})
    if case == "dnt":
        doc["device"]["dnt"] = 1
    out, bid = bid_and_notify(app, doc)
    assert bid is not None, out  # context-only bidding still bids
    assert bid["cid"] != "capped"  # a campaign with a cap cannot keep it without a user: it does not bid
    for url in (bid["nurl"], bid["burl"], bid["lurl"]):
        assert parse_qs(urlsplit(url).query, keep_blank_values=True)["u"] == [""]
    assert all(ev.get("user", "") == "" for _, ev in events)
    assert len(app.engine.frequency) == 0  # billing wrote no frequency count
    assert app.engine.counters.get("restricted:" + REASON.get(case, "gdpr")) == 1


def test_unrestricted_requests_use_the_salted_hash_only() -> None:
    app, events = stack()
    for regs, consent in (({}, None), ({"gdpr": 1}, tcf_string({1, 3, 4})), ({"us_privacy": "1YNN"}, None)):
        doc = distinctive(**regs)
        if consent:
            doc["user"]["consent"] = consent
        _, bid = bid_and_notify(app, doc)
        assert bid is not None and bid["cid"] == "capped"  # the capped campaign may bid: its cap can be kept
        key = hash_id(b"salt-1", RAW["user"])
        assert parse_qs(urlsplit(bid["burl"]).query)["u"] == [key]
        assert [ev["user"] for kind, ev in events if kind == "billing"][-1] == key
    assert len(app.engine.frequency) == 1  # one user, counted under its hash


def test_restricted_nobid_policy() -> None:
    app, events = stack(restricted_policy="nobid")
    out, bid = bid_and_notify(app, distinctive(coppa=1))
    assert bid is None and b"x-nobid-reason: privacy" in out and not events
