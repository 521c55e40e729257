"""Signed notice URLs: win (nurl), billing (burl) and loss (lurl).

Each URL carries a signature over the bid id, campaign, creative, bid price,
expiry, exchange, bidder and user hash: the win, billing and loss URLs of a bid
get three different slices of one keyed BLAKE2b MAC, so an exchange (or anyone)
cannot forge, alter or stretch a notice, nor turn one kind into another; a
valid notice past its expiry is refused, and a replayed one is refused by its
event id (here for speed, downstream for truth).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, quote

from bidder.keyed import blake2b_key
from bidder.money import to_micros

KINDS = ("win", "bill", "loss")
# the minimum to win on a win too: what a winner learns of the market price in a first-price auction, where the
# clearing price is our own bid
MACROS = {"win": "p=${AUCTION_PRICE}&m=${AUCTION_MIN_TO_WIN}", "bill": "p=${AUCTION_PRICE}",
          "loss": "l=${AUCTION_LOSS}&m=${AUCTION_MIN_TO_WIN}"}


class NoticeError(ValueError):
    """A notice that must not be counted; `reason` is its metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str
    bid_id: str
    campaign: str
    creative: str
    bid_cpm: int  # micros, what we bid
    expires: int  # unix seconds
    exchange: str
    bidder: str
    user: str  # salted user hash, "" when none or not allowed
    price_cpm: int | None  # micros, the clearing price from the macro; None when absent (0 is a price: free)
    loss_reason: int
    min_to_win_cpm: int | None  # micros; None when absent
    test: bool = False  # from a test auction (OpenRTB `test: 1`): not billable
    lost: bool = True  # False for a loss notice whose reason is 0, "Bid Won" in OpenRTB's list of loss reasons

    @property
    def event_id(self) -> str:
        return f"{self.kind}:{self.bid_id}"


def _quoted(bid_id: str, campaign: str, creative: str, exchange: str, bidder: str, user: str) -> tuple[str, ...]:
    """The text fields as the URL carries them (b, c, r, e, n, u), where "|" is "%7C"."""
    return _once(bid_id), _q(campaign), _q(creative), _q(exchange), _q(bidder), _once(user)


def _tail(quoted: tuple[str, ...], bid_cpm: int, expires: int, test: bool = False) -> bytes:
    """The signed text.  Its text fields are URL-quoted (`_quoted`), so none can hold the "|" between fields:
    moving a "|" (or the test mark) from one field to another changes what is signed."""
    b, c, r, e, n, u = quoted
    tail = f"{b}|{c}|{r}|{bid_cpm}|{expires}|{e}|{n}|{u}"
    return (tail + "|test" if test else tail).encode()  # signed: a test notice cannot pass for a billable one


@lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hashlib.blake2b:
    """Keyed BLAKE2b-512 with the key block already absorbed; copied per bid (keys over 64 bytes are hashed first)."""
    return hashlib.blake2b(key=blake2b_key(secret), digest_size=64)


def _tags(secret: bytes, tail: bytes) -> str:
    """The three signatures of one bid, 24 characters each (win, bill, loss): one MAC per bid.

    Keyed BLAKE2b is a MAC by construction (no HMAC wrapper needed).  Each kind gets its own 18-byte slice
    of it, so a URL of one kind says nothing about the tag of another: the kind is bound in without a MAC
    per URL.
    """
    mac = _keyed(secret).copy()
    mac.update(tail)
    return binascii.b2a_base64(mac.digest()[:54], newline=False).translate(_URLSAFE).decode()  # = urlsafe_b64encode


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_SLICE = {"win": slice(0, 24), "bill": slice(24, 48), "loss": slice(48, 72)}


_url_safe = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch  # what quote() leaves alone
_loss_code = re.compile(r"[0-9]{1,9}").fullmatch  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


@lru_cache(maxsize=8192)
def _q(value: str) -> str:
    """URL-quoted field; ids repeat from bid to bid, so each is quoted once."""
    return quote(value, safe="")


def _once(value: str) -> str:
    """A URL-quoted field that rarely repeats (a bid id, a user hash): quoted without filling `_q`'s cache."""
    return value if _url_safe(value) else quote(value, safe="")


def notice_urls(
    base: str, secret: bytes, bid_id: str, campaign: str, creative: str, bid_cpm: int, expires: int, exchange: str,
    bidder: str, user: str = "", test: bool = False,
) -> tuple[str, str, str]:
    """The win, billing and loss URLs of one bid (nurl, burl, lurl); the exchange substitutes the macros."""
    quoted = _quoted(bid_id, campaign, creative, exchange, bidder, user)
    tags = _tags(secret, _tail(quoted, bid_cpm, expires, test))
    b, c, r, e, n, u = quoted
    query = f"?b={b}&c={c}&r={r}&v={bid_cpm}&x={expires}&e={e}&n={n}&u={u}{'&t=1' if test else ''}&s="
    return (f"{base}/notice/win{query}{tags[0:24]}&{MACROS['win']}",
            f"{base}/notice/bill{query}{tags[24:48]}&{MACROS['bill']}",
            f"{base}/notice/loss{query}{tags[48:72]}&{MACROS['loss']}")


def notice_url(
    base: str, secret: bytes, kind: str, bid_id: str, campaign: str, creative: str, bid_cpm: int, expires: int,
    exchange: str, bidder: str, user: str = "", test: bool = False,
) -> str:
    """The signed URL for one notice kind."""
    urls = notice_urls(base, secret, bid_id, campaign, creative, bid_cpm, expires, exchange, bidder, user, test)
    return urls[KINDS.index(kind)]


AUDIT = "AUDIT"  # what an exchange puts in a price macro when it renders the creative for audit (OpenRTB 2.6 4.4)
MAX_PRICE_MICROS = 10**12  # a CPM of a million or more is no price an auction clears at
ROUNDING_MICROS = 10_000
"""How far a notice's price may exceed the bid and still be the bid: bids carry micros, and exchanges commonly write
prices in cents of CPM, rounded up or to nearest.  The price charged is then the bid, never more."""


def _price(raw: str) -> int | None:
    """A decimal CPM from a macro into micros; None when absent (empty or the macro left unsubstituted).

    A substituted price of 0 (or under half a micro) is 0 micros, a real price: never mistaken for absent.
    """
    if not raw or raw.startswith("${"):
        return None
    try:
        micros = to_micros(raw)  # exactly, as every amount: "0.0039995" is 4000 micros, never 3999
    except ValueError:
        raise NoticeError("bad_price") from None
    if not 0 <= micros < MAX_PRICE_MICROS:
        raise NoticeError("bad_price")
    return micros


def verify_notice(secret: bytes, kind: str, query: str, now: float) -> Notice:
    """Parse and authenticate a notice; raise NoticeError(reason) for forged, altered or expired ones."""
    if kind not in KINDS:
        raise NoticeError("unknown_kind")
    try:
        p = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False, max_num_fields=16))
        bid_id, campaign, creative, sig = p["b"], p["c"], p["r"], p["s"]
        bid_cpm, expires = int(p["v"]), int(p["x"])
        exchange, bidder, user = p.get("e", ""), p.get("n", ""), p.get("u", "")
        test = {"": False, "1": True}[p.get("t", "")]
    except (KeyError, ValueError):
        raise NoticeError("malformed") from None
    quoted = _quoted(bid_id, campaign, creative, exchange, bidder, user)
    expected = _tags(secret, _tail(quoted, bid_cpm, expires, test))[_SLICE[kind]]
    # as bytes: compare_digest refuses a str with non-ASCII characters (a forged `s=%C3%A9…`) with a TypeError
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        raise NoticeError("bad_signature")
    if now > expires:
        raise NoticeError("expired")
    if p.get("p") == AUDIT or p.get("m") == AUDIT:  # a creative audit fired it: genuine, but nothing was sold
        raise NoticeError("audit")
    price = _price(p.get("p", ""))
    if kind != "loss" and price is not None and price > bid_cpm and bid_cpm > 0:
        if price - bid_cpm > ROUNDING_MICROS:
            raise NoticeError("price_above_bid")
        price = bid_cpm  # the bid (1.999999) as the exchange wrote it (2.00): charged what was bid
    loss = p.get("l", "")
    if loss and not loss.startswith("${") and not _loss_code(loss):
        raise NoticeError("malformed")
    return Notice(
        kind, bid_id, campaign, creative, bid_cpm, expires, exchange, bidder, user, price,
        int(loss) if _loss_code(loss) else 0, _price(p.get("m", "")), test,
        kind != "loss" or not _loss_code(loss) or int(loss) != 0,
    )
