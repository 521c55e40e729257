"""Privacy decisions: COPPA, GDPR consent (TCF v2 purposes) and US opt-out."""

from __future__ import annotations

import base64

from bidder.openrtb import Privacy
from bidder.privacy import restriction, tcf_grants


def tcf_string(purposes: set[int]) -> str:
    """A minimal TCF v2 core string with the given purpose consents set."""
    bits = ["0"] * 304
    bits[0:6] = list(format(2, "06b"))  # version 2
    for p in purposes:
        bits[152 + p - 1] = "1"
    raw = int("".join(bits), 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_tcf_purposes() -> None:
    assert tcf_grants(tcf_string({1, 2, 3, 4, 7}))
    assert not tcf_grants(tcf_string({1, 2}))
    assert not tcf_grants("not-a-tcf-string")


def test_restrictions() -> None:
    assert restriction(Privacy()) == ""
    assert restriction(Privacy(coppa=True)) == "coppa"
    assert restriction(Privacy(gdpr=True)) == "gdpr"
    assert restriction(Privacy(gdpr=True, consent=tcf_string({1, 3, 4}))) == ""
    assert restriction(Privacy(us_privacy="1YYN")) == "us_optout"
    assert restriction(Privacy(us_privacy="1YNN")) == ""
    assert restriction(Privacy(gpp="DBABMA~x", gpp_sid=(7,))) == "us_optout"


def test_an_unreadable_or_partial_signal_restricts() -> None:
    """A malformed us_privacy, a US GPP section without its string, the US Privacy section in GPP, and the EU TCF
    section in GPP without regs.gdpr: none may unlock user data."""
    assert restriction(Privacy(us_privacy="1YY")) == "us_optout"  # three characters, opt-out in third place
    assert restriction(Privacy(us_privacy="1NYNX")) == "us_optout"
    assert restriction(Privacy(us_privacy="garbage")) == "us_optout"
    assert restriction(Privacy(gpp_sid=(7,))) == "us_optout"  # a US section signalled, its string missing
    assert restriction(Privacy(gpp="DBABzYA~1YNN", gpp_sid=(6,))) == "us_optout"
    assert restriction(Privacy(gpp="DBABzYA~1YNN", gpp_sid=(6,), us_privacy="1YNN")) == ""  # not opted out
    assert restriction(Privacy(gpp="DBABMA~CP", gpp_sid=(2,))) == "gdpr"
    assert restriction(Privacy(gpp_sid=(2,), consent=tcf_string({1, 3, 4}))) == ""
    assert restriction(Privacy(us_privacy="1---")) == ""  # not applicable: nothing to opt out of


def tcf_with_vendors(purposes: set[int], vendors: set[int], ranged: bool) -> str:
    """A TCF v2 core string: purposes, then the vendor consent section as a bit field or as ranges (one per id)."""
    bits = ["0"] * 213
    bits[0:6] = list(format(2, "06b"))
    for p in purposes:
        bits[152 + p - 1] = "1"
    top = max(vendors, default=0)
    bits += list(format(top, "016b")) + ["1" if ranged else "0"]
    if ranged:
        bits += list(format(len(vendors), "012b"))
        for v in sorted(vendors):
            bits += ["0"] + list(format(v, "016b"))
    else:
        bits += ["1" if v in vendors else "0" for v in range(1, top + 1)]
    bits += ["0"] * (-len(bits) % 8)
    raw = int("".join(bits), 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_bidder_with_a_vendor_id_needs_consent_for_itself() -> None:
    """Purposes granted, but to other vendors only: a bidder on the Global Vendor List may not use the data."""
    for ranged in (False, True):
        mine = tcf_with_vendors({1, 3, 4}, {12, 755}, ranged)
        others = tcf_with_vendors({1, 3, 4}, {12, 754}, ranged)
        assert tcf_grants(mine, vendor=755) and not tcf_grants(others, vendor=755), ranged
        assert tcf_grants(others) and not tcf_grants(others, vendor=99_999)  # no vendor id: the purposes only
        assert restriction(Privacy(gdpr=True, consent=others), vendor=755) == "gdpr"
        assert restriction(Privacy(gdpr=True, consent=mine), vendor=755) == ""
    assert not tcf_grants(tcf_string({1, 3, 4}), vendor=755)  # the string ends before its vendor section


def test_the_engine_checks_consent_for_its_own_vendor_id() -> None:
    import math

    from bidder.campaigns import parse_campaign
    from bidder.engine import BidEngine, EngineConfig
    from bidder.openrtb import parse_request
    from models.snapshot import ModelSnapshot
    from tests.helpers import body, campaign, request

    def user_in_notices(vendor: int, consent: str) -> bool:
        e = BidEngine(EngineConfig(secret=b"s", explore_below=0, tcf_vendor=vendor), [parse_campaign(campaign())],
                      ModelSnapshot.empty(), sink=lambda *a: None, clock=lambda: 1_780_000_000.0)
        doc = request(regs={"gdpr": 1}, user={"id": "u-1", "consent": consent})
        out = e.bid(parse_request(body(doc)), "x", math.inf)
        return "&u=&" not in out.body.decode()

    others = tcf_with_vendors({1, 3, 4}, {12}, ranged=False)
    assert user_in_notices(0, others) and not user_in_notices(755, others)
    assert user_in_notices(755, tcf_with_vendors({1, 3, 4}, {755}, ranged=True))
