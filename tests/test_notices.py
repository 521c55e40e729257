"""Signed notice URLs: forged, altered, expired and replayed notices never count."""

from __future__ import annotations

import math
import re
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.metrics import BidderStats
from bidder.notices import NoticeError, notice_url, verify_notice
from bidder.openrtb import parse_request
from bidder.server import BidApp
from bidder.wiring import ServeOptions
from models.snapshot import ModelSnapshot
from tests.helpers import body, campaign, request

SECRET = b"k"
NOW = 1_780_000_000.0  # inside the test campaign's flight; a UTC day of 2026-05-28


def _url(kind: str = "bill", expires: int = 2000) -> str:
    return notice_url("http://b", SECRET, kind, "bid-1", "c1", "cr1", 2_000_000, expires, "x", "b1", "u1")


def _query(url: str, price: str = "1.5") -> str:
    return urlsplit(url).query.replace("${AUCTION_PRICE}", price)


def test_valid_notice_carries_the_clearing_price() -> None:
    n = verify_notice(SECRET, "bill", _query(_url()), now=1000)
    assert n.price_cpm == 1_500_000 and n.campaign == "c1" and n.event_id == "bill:bid-1"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda q: q.replace("c=c1", "c=c2"), "bad_signature"),
        (lambda q: q.replace("v=2000000", "v=9000000"), "bad_signature"),
        (lambda q: q.replace("x=2000", "x=9999"), "bad_signature"),
        (lambda q: q.replace("s=", "s=A"), "bad_signature"),
        (lambda q: q.replace("b=bid-1&", ""), "malformed"),
    ],
)
def test_altered_notices_are_rejected(mutate, reason: str) -> None:
    with pytest.raises(NoticeError) as e:
        verify_notice(SECRET, "bill", mutate(_query(_url())), now=1000)
    assert e.value.reason == reason


def test_expired_and_wrong_kind_and_wrong_key() -> None:
    with pytest.raises(NoticeError, match="expired"):
        verify_notice(SECRET, "bill", _query(_url(expires=999)), now=1000)
    with pytest.raises(NoticeError, match="bad_signature"):
        verify_notice(SECRET, "win", _query(_url("bill")), now=1000)
    with pytest.raises(NoticeError, match="bad_signature"):
        verify_notice(b"other", "bill", _query(_url()), now=1000)


def test_price_above_our_bid_is_refused() -> None:
    with pytest.raises(NoticeError, match="price_above_bid"):
        verify_notice(SECRET, "bill", _query(_url(), price="2.5"), now=1000)


def test_a_notice_price_is_read_exactly() -> None:
    assert verify_notice(SECRET, "bill", _query(_url(), price="0.0039995"), now=1000).price_cpm == 4000  # half-even
    assert verify_notice(SECRET, "bill", _query(_url(), price="1.5E-3"), now=1000).price_cpm == 1500


@pytest.mark.parametrize("price", ["1_000", " 2.5", "+1.5", "\u0661.\u0665", "1e999990", "-1", "nan", "inf"])
def test_a_price_that_is_not_a_plain_decimal_is_refused(price: str) -> None:
    with pytest.raises(NoticeError, match="bad_price"):
        verify_notice(SECRET, "bill", _query(_url(), price=price), now=1000)


@pytest.mark.parametrize("kind", ["win", "bill"])
def test_a_price_rounded_up_to_the_cent_is_the_bid(kind: str) -> None:
    """A bid of 1.999999 comes back as 2.00 from an exchange that writes cents: that is the bid, charged as bid;
    a price more than a cent above it is still refused."""
    url = notice_url("http://b", SECRET, kind, "bid-1", "c1", "cr1", 1_999_999, 2000, "x", "b1", "u1")
    assert verify_notice(SECRET, kind, _query(url, price="2.00"), now=1000).price_cpm == 1_999_999
    assert verify_notice(SECRET, kind, _query(url, price="1.99"), now=1000).price_cpm == 1_990_000
    with pytest.raises(NoticeError, match="price_above_bid"):
        verify_notice(SECRET, kind, _query(url, price="2.011"), now=1000)


# -- a clearing price of 0 is a price, not an absent one -----------------------------------


def _engine(events: list, **cfg) -> BidEngine:
    return BidEngine(EngineConfig(secret=SECRET, explore_below=0, **cfg), [parse_campaign(campaign())],
                     ModelSnapshot.empty(), sink=lambda k, key, ev: events.append((k, ev)), clock=lambda: NOW)


def _bid(e: BidEngine) -> dict:
    return orjson.loads(e.bid(parse_request(body(request())), "x", math.inf).body)["seatbid"][0]["bid"][0]


@pytest.mark.parametrize("price", ["0", "0.00", "0.0000001", "-0"])
def test_a_substituted_price_of_zero_is_zero_micros(price: str) -> None:
    assert verify_notice(SECRET, "bill", _query(_url(), price=price), now=1000).price_cpm == 0


@pytest.mark.parametrize("price", ["${AUCTION_PRICE}", ""])
def test_an_unsubstituted_price_is_absent(price: str) -> None:
    assert verify_notice(SECRET, "bill", _query(_url(), price=price), now=1000).price_cpm is None


@pytest.mark.parametrize("price", ["0", "0.00", "0.0000001"])
def test_a_bill_at_a_price_of_zero_charges_nothing_and_a_win_at_zero_says_so(price: str) -> None:
    events: list = []
    e = _engine(events, lease_slice=1)
    e.grant("c1", "2026-05-28", 1_000_000)
    b = _bid(e)
    assert e.notice("win", urlsplit(b["nurl"]).query.replace("${AUCTION_PRICE}", price)) == "ok"
    assert e.notice("bill", urlsplit(b["burl"]).query.replace("${AUCTION_PRICE}", price)) == "ok"
    [win] = [ev for k, ev in events if k == "wins"]
    [bill] = [ev for k, ev in events if k == "billing"]
    assert win["price"] == 0 and bill["cost"] == 0
    lease = e.leases["c1"]
    assert (lease.spent_micros, lease.reserved_micros) == (0, 0)
    assert e._new_prices == {"USD": [0]}  # a clearing price under our bid: a market price, 0 included


def test_an_unsubstituted_price_charges_our_bid() -> None:
    events: list = []
    e = _engine(events)
    b = _bid(e)
    assert e.notice("win", urlsplit(b["nurl"]).query) == "ok"
    assert e.notice("bill", urlsplit(b["burl"]).query) == "ok"
    bid_micros = round(b["price"] * 1e6)
    assert [ev["price"] for k, ev in events if k == "wins"] == [bid_micros]
    assert [ev["cost"] for k, ev in events if k == "billing"] == [bid_micros // 1000]
    assert e._new_prices == {}  # paid our bid: says nothing of the market


# -- forged notices are refused and counted, never an internal error -------------------------


def test_a_non_ascii_signature_is_a_bad_signature() -> None:
    for sig in ("%C3%A9", "%C3%A9" * 24, "%F0%9F%98%80"):
        with pytest.raises(NoticeError, match="bad_signature"):
            verify_notice(SECRET, "bill", _query(_url()).replace("&s=", f"&s={sig}"), now=1000)


def test_a_loss_reason_that_is_not_ascii_digits_is_malformed() -> None:
    loss = urlsplit(_url("loss")).query.replace("${AUCTION_MIN_TO_WIN}", "2.5")
    assert verify_notice(SECRET, "loss", loss.replace("${AUCTION_LOSS}", "102"), now=1000).loss_reason == 102
    assert verify_notice(SECRET, "loss", loss, now=1000).loss_reason == 0  # not substituted: unknown
    for bad in ("%C2%B2", "%D9%A3", "abc", "-1", "1" * 5000):  # "²", Arabic-Indic 3, ...: isdigit() but not a code
        with pytest.raises(NoticeError, match="malformed"):
            verify_notice(SECRET, "loss", loss.replace("${AUCTION_LOSS}", bad), now=1000)


def test_forged_notices_through_the_app_are_400_and_counted() -> None:
    events: list = []
    app = BidApp(_engine(events), BidderStats())
    b = _bid(app.engine)
    bill = urlsplit(b["burl"]).query.replace("${AUCTION_PRICE}", "0.5")
    answer = app.notice("bill", re.sub(r"&s=[^&]*", "&s=%C3%A9", bill))
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_signature"' in answer
    loss = urlsplit(b["lurl"]).query.replace("${AUCTION_MIN_TO_WIN}", "2")
    answer = app.notice("loss", loss.replace("${AUCTION_LOSS}", "%C2%B2"))
    assert answer.startswith(b"HTTP/1.1 400") and b'"malformed"' in answer
    assert app.stats.notices[("bill", "bad_signature")] == 1 and app.stats.notices[("loss", "malformed")] == 1
    assert not events[1:]  # only the bid's own event: nothing refused was sent on


# -- the notice base ------------------------------------------------------------------------


def test_a_notice_base_with_a_trailing_slash_makes_no_double_slash() -> None:
    opts = ServeOptions(host="127.0.0.1", port=1, workers=1, campaigns=[], broker=None, secret=SECRET, salt=b"s",
                        network_ms=20, notice_base="https://bid.example/", model_path=None, spill_dir=Path("."),
                        restricted_policy="context")
    assert opts.notice_base == "https://bid.example"
    e = BidEngine(EngineConfig(secret=SECRET, explore_below=0, notice_base=opts.notice_base),
                  [parse_campaign(campaign())], ModelSnapshot.empty(), sink=lambda *a: None, clock=lambda: NOW)
    for url in (_bid(e)[k] for k in ("nurl", "burl", "lurl")):
        assert urlsplit(url).path in ("/notice/win", "/notice/bill", "/notice/loss")


def test_first_price_bids_are_shaded_on_market_prices_of_their_own_currency_and_meet_them() -> None:
    """Losses at a minimum-to-win of 1.234567 USD: a first-price USD bid is shaded to no less than that (rounded
    down to the cent it lost every auction), and a EUR campaign's bid is not shaded on USD prices."""
    clock = [NOW]
    usd = parse_campaign(campaign(id="usd", goal={"type": "cpc", "value_per_click": 5.0, "max_bid_cpm": 20.0}))
    eur = parse_campaign(campaign(id="eur", currency="EUR", goal={"type": "cpc", "value_per_click": 5.0,
                                                                  "max_bid_cpm": 20.0}))
    e = BidEngine(EngineConfig(secret=SECRET, explore_below=0), [usd], ModelSnapshot.empty(), sink=lambda *a: None,
                  clock=lambda: clock[0])
    for _ in range(250):
        lurl = _bid(e)["lurl"].replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "1.234567")
        assert e.notice("loss", urlsplit(lurl).query) == "ok"
    clock[0] += 61  # the landscape takes in new prices once a minute
    first = request(at=1)
    value = _bid(e)["price"]  # second price: the paced value itself
    shaded = orjson.loads(e.bid(parse_request(body(first)), "x", math.inf).body)["seatbid"][0]["bid"][0]["price"]
    assert 1.234567 <= shaded < value
    e.set_campaigns([eur])
    first["cur"], first["imp"][0]["bidfloorcur"] = ["EUR"], "EUR"
    unshaded = orjson.loads(e.bid(parse_request(body(first)), "x", math.inf).body)["seatbid"][0]["bid"][0]["price"]
    assert unshaded == value  # no EUR market prices: the paced value, not a USD-shaded price
