"""Privacy signals: decide, once per request, whether user-level data may be used.

COPPA, GDPR without a TCF consent granting the needed purposes, or a US opt-out
(us_privacy or GPP US sections) all make a request *restricted*: no user
features, no frequency-cap reads or writes, and depending on policy either a
context-only bid or no bid.
"""

from __future__ import annotations

import base64
import re

from bidder.openrtb import Privacy

# TCF v2 core string: purpose consents start at bit 152 (after the fixed header fields).
_TCF_PURPOSES_OFFSET = 152
# ... then purpose legitimate interests (24), purpose one treatment (1) and publisher country (12): the vendor
# consent section starts at bit 213 with MaxVendorId (16) and IsRangeEncoding (1).
_TCF_VENDORS_OFFSET = 213
# Store/access information (1), create a personalised ads profile (3), select personalised ads (4).
NEEDED_PURPOSES = (1, 3, 4)
# GPP section ids of US privacy strings (6: the US Privacy string itself, 7-23: national and state sections);
# a request signalling any of them without a us_privacy "N" is treated as opted out, the conservative reading.
_GPP_US_SECTIONS = frozenset(range(6, 24))
_GPP_TCF_EU = 2  # the EU TCF v2 section: GDPR applies, whatever regs.gdpr says
_USP = re.compile(r"1[NY-][NY-][NY-]")  # version 1, notice, opt-out of sale, LSPA: Y, N or - (not applicable)


def tcf_grants(consent: str, purposes: tuple[int, ...] = NEEDED_PURPOSES, vendor: int = 0) -> bool:
    """True when a TCF v2 consent string grants every purpose in `purposes` and, when `vendor` (our Global Vendor
    List id) is given, consent to that vendor; False if unreadable."""
    core = consent.split(".", 1)[0]
    if not core:
        return False
    try:
        raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (ValueError, TypeError):
        return False
    if len(raw) * 8 < _TCF_PURPOSES_OFFSET + 24 or raw[0] >> 2 != 2:
        return False
    bits = _Bits(raw)
    if not all(bits.read(_TCF_PURPOSES_OFFSET + p - 1, 1) for p in purposes):
        return False
    return not vendor or _vendor_consents(bits, vendor)


def _vendor_consents(bits: _Bits, vendor: int) -> bool:
    """The core string's vendor consent section (a bit field, or ranges) says yes to `vendor`."""
    try:
        max_vendor, ranged = bits.read(_TCF_VENDORS_OFFSET, 16), bits.read(_TCF_VENDORS_OFFSET + 16, 1)
        if vendor > max_vendor:
            return False
        at = _TCF_VENDORS_OFFSET + 17
        if not ranged:
            return bool(bits.read(at + vendor - 1, 1))
        entries, at = bits.read(at, 12), at + 12
        for _ in range(entries):
            is_range, start = bits.read(at, 1), bits.read(at + 1, 16)
            end = bits.read(at + 17, 16) if is_range else start
            at += 33 if is_range else 17
            if start <= vendor <= end:
                return True
        return False
    except IndexError:  # the string ends inside the section: unreadable, so no consent
        return False


class _Bits:
    """Big-endian bit fields of a decoded TCF string."""

    __slots__ = ("value", "total")

    def __init__(self, raw: bytes) -> None:
        self.value, self.total = int.from_bytes(raw, "big"), len(raw) * 8

    def read(self, pos: int, width: int) -> int:
        if pos + width > self.total:
            raise IndexError(pos)
        return (self.value >> (self.total - pos - width)) & ((1 << width) - 1)


def us_opt_out(privacy: Privacy) -> bool:
    """us_privacy 1-Y-- style strings: the third character 'Y' means the user opted out of sale.

    A string that is not a US Privacy string counts as an opt-out, and so does a US GPP section without a
    us_privacy "N" (even with the GPP string itself missing): an unreadable signal must not unlock user data.
    """
    usp = privacy.us_privacy
    if usp and (not _USP.fullmatch(usp) or usp[2] == "Y"):
        return True
    if _GPP_US_SECTIONS.intersection(privacy.gpp_sid):
        return not (usp and usp[2] == "N")
    return False


def restriction(privacy: Privacy, vendor: int = 0) -> str:
    """'' when user-level data may be used, else the reason: coppa, gdpr or us_optout.

    `vendor`: our TCF Global Vendor List id; 0 checks the purposes only (for a bidder without one)."""
    if privacy.coppa:
        return "coppa"
    if (privacy.gdpr or _GPP_TCF_EU in privacy.gpp_sid) and not tcf_grants(privacy.consent, vendor=vendor):
        return "gdpr"
    if us_opt_out(privacy):
        return "us_optout"
    return ""
