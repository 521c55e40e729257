"""Signed notice URLs: forged, altered, expired and replayed notices never count."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from bidder.notices import NoticeError, notice_url, verify_notice

SECRET = b"k"


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
