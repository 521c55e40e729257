"""Signed notice URLs: win (nurl), billing (burl) and loss (lurl).

Each URL carries an HMAC-SHA256 over the notice kind, bid id, campaign,
creative, bid price and expiry, so an exchange (or anyone) cannot forge,
alter or stretch a notice; a valid notice past its expiry is refused, and a
replayed one is refused by its event id (here for speed, downstream for truth).
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

KINDS = ("win", "bill", "loss")
MACROS = {"win": "p=${AUCTION_PRICE}", "bill": "p=${AUCTION_PRICE}", "loss": "l=${AUCTION_LOSS}&m=${AUCTION_MIN_TO_WIN}"}


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
    price_cpm: int  # micros, the clearing price from the macro (0 when absent)
    loss_reason: int
    min_to_win_cpm: int

    @property
    def event_id(self) -> str:
        return f"{self.kind}:{self.bid_id}"


def _sign(secret: bytes, msg: str) -> str:
    return base64.urlsafe_b64encode(hmac.digest(secret, msg.encode(), "sha256")[:16]).rstrip(b"=").decode()


def _message(kind: str, bid_id: str, campaign: str, creative: str, bid_cpm: int, expires: int, exchange: str, bidder: str,
             user: str) -> str:
    return f"{kind}|{bid_id}|{campaign}|{creative}|{bid_cpm}|{expires}|{exchange}|{bidder}|{user}"


def notice_url(
    base: str, secret: bytes, kind: str, bid_id: str, campaign: str, creative: str, bid_cpm: int, expires: int,
    exchange: str, bidder: str, user: str = "",
) -> str:
    """The signed URL for one notice kind; the exchange substitutes the macros."""
    sig = _sign(secret, _message(kind, bid_id, campaign, creative, bid_cpm, expires, exchange, bidder, user))
    q = quote
    return (
        f"{base}/notice/{kind}?b={q(bid_id)}&c={q(campaign)}&r={q(creative)}&v={bid_cpm}&x={expires}"
        f"&e={q(exchange)}&n={q(bidder)}&u={user}&s={sig}&{MACROS[kind]}"
    )


def _price(raw: str) -> int:
    """A decimal CPM from a macro into micros; an unsubstituted macro counts as absent."""
    if not raw or raw.startswith("${"):
        return 0
    try:
        value = float(raw)
    except ValueError:
        raise NoticeError("bad_price") from None
    if not 0 <= value < 1e6 or value != value:
        raise NoticeError("bad_price")
    return round(value * 1_000_000)


def verify_notice(secret: bytes, kind: str, query: str, now: float) -> Notice:
    """Parse and authenticate a notice; raise NoticeError(reason) for forged, altered or expired ones."""
    if kind not in KINDS:
        raise NoticeError("unknown_kind")
    try:
        p = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False, max_num_fields=16))
        bid_id, campaign, creative, sig = p["b"], p["c"], p["r"], p["s"]
        bid_cpm, expires = int(p["v"]), int(p["x"])
        exchange, bidder, user = p.get("e", ""), p.get("n", ""), p.get("u", "")
    except (KeyError, ValueError):
        raise NoticeError("malformed") from None
    expected = _sign(secret, _message(kind, bid_id, campaign, creative, bid_cpm, expires, exchange, bidder, user))
    if not hmac.compare_digest(expected, sig):
        raise NoticeError("bad_signature")
    if now > expires:
        raise NoticeError("expired")
    price = _price(p.get("p", ""))
    if kind != "loss" and price > bid_cpm and bid_cpm > 0:
        raise NoticeError("price_above_bid")
    loss = p.get("l", "")
    return Notice(
        kind, bid_id, campaign, creative, bid_cpm, expires, exchange, bidder, user, price,
        int(loss) if loss.isdigit() else 0, _price(p.get("m", "")),
    )
