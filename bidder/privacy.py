"""Privacy signals: decide, once per request, whether user-level data may be used.

COPPA, GDPR without a TCF consent granting the needed purposes, or a US opt-out
(us_privacy or GPP US sections) all make a request *restricted*: no user
features, no frequency-cap reads or writes, and depending on policy either a
context-only bid or no bid.
"""

from __future__ import annotations

import base64

from bidder.openrtb import Privacy

# TCF v2 core string: purpose consents start at bit 152 (after the fixed header fields).
_TCF_PURPOSES_OFFSET = 152
# Store/access information (1), create a personalised ads profile (3), select personalised ads (4).
NEEDED_PURPOSES = (1, 3, 4)
# GPP section ids of US national and state privacy strings; a request signalling any of them
# without a us_privacy "N" is treated as opted out, the conservative reading.
_GPP_US_SECTIONS = frozenset(range(7, 24))


def tcf_grants(consent: str, purposes: tuple[int, ...] = NEEDED_PURPOSES) -> bool:
    """True when a TCF v2 consent string grants every purpose in `purposes`; False if unreadable."""
    core = consent.split(".", 1)[0]
    if not core:
        return False
    try:
        raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (ValueError, TypeError):
        return False
    if len(raw) * 8 < _TCF_PURPOSES_OFFSET + 24 or raw[0] >> 2 != 2:
        return False
    bits = int.from_bytes(raw, "big")
    total = len(raw) * 8
    for p in purposes:
        pos = _TCF_PURPOSES_OFFSET + p - 1
        if not (bits >> (total - 1 - pos)) & 1:
            return False
    return True


def us_opt_out(privacy: Privacy) -> bool:
    """us_privacy 1-Y-- style strings: the third character 'Y' means the user opted out of sale."""
    usp = privacy.us_privacy
    if len(usp) == 4 and usp[2] == "Y":
        return True
    if privacy.gpp and _GPP_US_SECTIONS.intersection(privacy.gpp_sid):
        return not (len(usp) == 4 and usp[2] == "N")
    return False


def restriction(privacy: Privacy) -> str:
    """'' when user-level data may be used, else the reason: coppa, gdpr or us_optout."""
    if privacy.coppa:
        return "coppa"
    if privacy.gdpr and not tcf_grants(privacy.consent):
        return "gdpr"
    if us_opt_out(privacy):
        return "us_optout"
    return ""
