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
