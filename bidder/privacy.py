"""Privacy signals: decide, once per request, whether user-level data may be used.

COPPA, GDPR without a TCF consent granting the needed purposes, or a US opt-out
(us_privacy, or any applicable GPP US section) all make a request *restricted*:
no user features, no frequency-cap reads or writes, and depending on policy
either a context-only bid or no bid.  A signal that cannot be read restricts too.
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache

from bidder.openrtb import Privacy

# TCF v2 core string: purpose consents start at bit 152 (after the fixed header fields).
_TCF_PURPOSES_OFFSET = 152
# ... then purpose legitimate interests (24), purpose one treatment (1) and publisher country (12): the vendor
# consent section starts at bit 213 with MaxVendorId (16) and IsRangeEncoding (1).
_TCF_VENDORS_OFFSET = 213
# Store/access information (1), create a personalised ads profile (3), select personalised ads (4).
NEEDED_PURPOSES = (1, 3, 4)
# Publisher restriction types: 0 purpose not allowed, 1 require consent, 2 require legitimate interest, 3 undefined.
# Only 1 leaves our footing as it is (consent, which we require anyway): the needed purposes cannot rest on a
# legitimate interest, and an undefined type is read on the safe side.
_TCF_REQUIRE_CONSENT = 1
# characters: a real TC string, every segment included, is at most a few thousand (a bit field per vendor of the Global
# Vendor List); one longer is not read, as every range entry it holds is walked on the bid path
_TCF_MAX_LENGTH = 8192

_GPP_TCF_EU = 2  # the EU TCF v2 section: GDPR applies, whatever regs.gdpr says
_GPP_HEADER = 3  # the header's own section id, its first 6 bits
_GPP_USP = 6  # uspv1: the US Privacy string itself, unencoded
_GPP_US_FIRST = 6  # every section id from 6 up is a US one (6 uspv1, 7 usnat, 8-27 states; a future id counts too)
_GPP_MAX_ID = 255  # beyond any id the registry could assign soon; a header naming one is not a real header
_GPP_MAX_HEADER = 256  # characters: a header listing every US section is about 20
_GPP_MAX_LENGTH = 16384  # characters: well beyond a real string (a TCF section with every vendor), so memos stay small
_GPP_MAX_SIDS = 64  # gpp_sid entries: a real list names a few sections; a longer one is decoded without a memo
_GPC_SUBSECTION = 1  # SubsectionType of a US section's GPC subsection (after a '.'), whose next bit is the Gpc flag
_USP = re.compile(r"1[NY-][NY-][NY-]")  # version 1, notice, opt-out of sale, LSPA: Y, N or - (not applicable)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_SEXTET = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}

# Where each US section's opt-outs sit in its core segment, by section id and then by the segment's Version (its
# first 6 bits): the bit offsets of the 2-bit SaleOptOut, SharingOptOut and TargetedAdvertisingOptOut fields,
# whichever the section has (values: 0 not applicable, 1 opted out, 2 did not opt out).  Every other field before
# them is 2 bits wide, and they all come before the variable-length lists, so the offsets hold for every length of
# those.  A section id or Version not listed here cannot be decoded, which restricts.
_Layouts = dict[int, tuple[int, ...]]  # Version -> opt-out offsets
_STATE_SALE_TARGETED: _Layouts = {1: (12, 14)}  # Version, 3 notices, SaleOptOut, TargetedAdvertisingOptOut
_STATE_4_NOTICES: _Layouts = {1: (14, 16)}  # Version, 4 notices (one more before the opt-outs), SaleOptOut, TargetedAdvertising
# Sections 24 on start with MspaVersion, MspaCoveredTransaction and MspaMode, then 3 notices, SaleOptOut, Targeted...:
# a string that puts anything else in its first 6 bits (a section header, say) has no known Version and restricts.
_STATE_MSPA_FIRST: _Layouts = {1: (16, 18)}
_US_OPT_OUTS: dict[int, _Layouts] = {
    # usnat: Version, 6 notices, SaleOptOut, SharingOptOut, TargetedAdvertisingOptOut.  Version 2 lengthened only
    # the sensitive-data and known-child lists that follow, so both versions have the opt-outs at the same bits.
    7: {1: (18, 20, 22), 2: (18, 20, 22)},
    8: {1: (12, 14)},  # usca: Version, 3 notices, SaleOptOut, SharingOptOut (no targeted-advertising field)
    9: _STATE_SALE_TARGETED, 10: _STATE_SALE_TARGETED,  # usva, usco
    11: _STATE_4_NOTICES,  # usut: SensitiveDataProcessingOptOutNotice before the opt-outs
    12: _STATE_SALE_TARGETED, 13: _STATE_SALE_TARGETED, 14: _STATE_SALE_TARGETED,  # usct, usfl, usmt
    15: _STATE_SALE_TARGETED, 16: _STATE_SALE_TARGETED, 17: _STATE_SALE_TARGETED,  # usor, ustx, usde
    18: _STATE_4_NOTICES,  # usia: SensitiveDataOptOutNotice before the opt-outs
    19: _STATE_SALE_TARGETED, 20: _STATE_SALE_TARGETED, 21: _STATE_SALE_TARGETED,  # usne, usnh, usnj
    22: _STATE_SALE_TARGETED, 23: _STATE_SALE_TARGETED,  # ustn, usmn
    24: _STATE_MSPA_FIRST, 25: _STATE_MSPA_FIRST, 26: _STATE_MSPA_FIRST, 27: _STATE_MSPA_FIRST,  # usmd, usin, usky, usri
}
_NOT_OPTED_OUT = (0, 2)  # not applicable, did not opt out; 1 is opted out, 3 is no value at all


def tcf_grants(consent: str, purposes: tuple[int, ...] = NEEDED_PURPOSES, vendor: int = 0) -> bool:
    """True when a TCF v2 consent string grants every purpose in `purposes` and, when `vendor` (our Global Vendor
    List id) is given, consent to that vendor with no publisher restriction against it; False if unreadable."""
    if len(consent) > _TCF_MAX_LENGTH:
        return False
    core = consent.split(".", 1)[0]
    # base64url and nothing else: the decoder would skip any other character (and stop at '='), and read the
    # consent hidden in a string no TCF decoder accepts
    if not _BASE64URL.fullmatch(core) or len(core) % 4 == 1:
        return False
    try:
        raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (ValueError, TypeError):
        return False
    if len(raw) * 8 < _TCF_PURPOSES_OFFSET + 24 or raw[0] >> 2 != 2:
        return False
    bits = _Bits(int.from_bytes(raw, "big"), len(raw) * 8)
    if not all(bits.read(_TCF_PURPOSES_OFFSET + p - 1, 1) for p in purposes):
        return False
    return not vendor or _vendor_allowed(bits, vendor, purposes)


def _vendor_allowed(bits: _Bits, vendor: int, purposes: tuple[int, ...]) -> bool:
    """The core string consents to `vendor`, and no publisher restriction takes a needed purpose from it.

    The restrictions follow the vendor consent and vendor legitimate-interest sections, so both are walked; a string
    that ends inside any of them is unreadable, hence no consent."""
    try:
        consented, at = _vendor_section(bits, _TCF_VENDORS_OFFSET, vendor)
        if not consented:
            return False
        _, at = _vendor_section(bits, at, vendor)  # legitimate interest: same layout, read only to reach what follows
        return not _publisher_restricts(bits, at, vendor, purposes)
    except IndexError:
        return False


def _vendor_section(bits: _Bits, at: int, vendor: int) -> tuple[bool, int]:
    """A vendor section at `at` (MaxVendorId, IsRangeEncoding, then a bit field or ranges): whether it names
    `vendor`, and where the section ends."""
    max_vendor, ranged, at = bits.read(at, 16), bits.read(at + 16, 1), at + 17
    if ranged:  # a range past MaxVendorId contradicts the string's own bound: it names no vendor there
        covered, end = _ranges_cover(bits, at + 12, bits.read(at, 12), vendor)
        return covered and vendor <= max_vendor, end
    return 0 < vendor <= max_vendor and bool(bits.read(at + vendor - 1, 1)), at + max_vendor


def _ranges_cover(bits: _Bits, at: int, entries: int, vendor: int) -> tuple[bool, int]:
    """`entries` range entries at `at` (IsARange, StartOrOnlyVendorId, EndVendorId if a range): whether one
    covers `vendor`, and where they end."""
    covered = False
    for _ in range(entries):
        is_range, start = bits.read(at, 1), bits.read(at + 1, 16)
        end = bits.read(at + 17, 16) if is_range else start
        at += 33 if is_range else 17
        covered = covered or start <= vendor <= end
    return covered, at


def _publisher_restricts(bits: _Bits, at: int, vendor: int, purposes: tuple[int, ...]) -> bool:
    """The publisher restrictions section at `at` (NumPubRestrictions, then PurposeId, RestrictionType, NumEntries
    and range entries per restriction) takes one of `purposes` from `vendor`."""
    count, at = bits.read(at, 12), at + 12
    for _ in range(count):
        purpose, kind, entries = bits.read(at, 6), bits.read(at + 6, 2), bits.read(at + 8, 12)
        covered, at = _ranges_cover(bits, at + 20, entries, vendor)
        if covered and purpose in purposes and kind != _TCF_REQUIRE_CONSENT:
            return True
    return False


class _Bits:
    """Big-endian bit fields of a decoded TCF or GPP string."""

    __slots__ = ("value", "total")

    def __init__(self, value: int, total: int) -> None:
        self.value, self.total = value, total

    def read(self, pos: int, width: int) -> int:
        if pos + width > self.total:
            raise IndexError(pos)
        return (self.value >> (self.total - pos - width)) & ((1 << width) - 1)


def us_opt_out(privacy: Privacy) -> bool:
    """The request carries a US opt-out, or a US signal that cannot be read.

    us_privacy: a 'Y' in third place (opted out of sale), or a string that is not a US Privacy string.  GPP: any
    applicable US section (id 6 and up) that says opted out, is missing from the string, or cannot be decoded.  The
    two are combined with OR: a us_privacy 'N' never loosens what GPP says.
    """
    usp = privacy.us_privacy
    if usp and (not _USP.fullmatch(usp) or usp[2] == "Y"):
        return True
    gpp, sids = privacy.gpp, privacy.gpp_sid
    names_us = bool(sids) and max(sids) >= _GPP_US_FIRST
    if not gpp and not names_us:
        return False  # no GPP signal for the US: nothing to decode
    if len(gpp) > _GPP_MAX_LENGTH:  # unreadable as if malformed, and not worth a place in the memo
        return names_us or not sids
    return (_gpp_us_opt_out if len(sids) <= _GPP_MAX_SIDS else _gpp_us_opt_out.__wrapped__)(gpp, sids)


@lru_cache(maxsize=512)
def _gpp_us_opt_out(gpp: str, gpp_sid: tuple[int, ...]) -> bool:
    """Whether an applicable US section of `gpp` opts out or cannot be read (memoised: exchanges repeat strings).

    The applicable sections are those in gpp_sid, or every section the header lists when gpp_sid is empty."""
    sections = _gpp_sections(gpp) if gpp else {}
    applicable = gpp_sid or (tuple(sections) if sections is not None else None)
    if applicable is None:
        return True  # no gpp_sid and an unreadable header: whether a US section applies cannot be told
    known = sections or {}
    return any(_us_section_opts_out(sid, known.get(sid)) for sid in applicable if sid >= _GPP_US_FIRST)


def _gpp_sections(gpp: str) -> dict[int, str] | None:
    """The sections of a GPP string by id (the header lists the ids in the order the sections follow it, `~`
    apart); None when the header cannot be read or does not match the sections present."""
    header, *sections = gpp.split("~")
    bits = _sextets(header) if len(header) <= _GPP_MAX_HEADER else None
    if bits is None:
        return None
    try:
        if bits.read(0, 6) != _GPP_HEADER or bits.read(6, 6) != 1:  # Type 3, Version 1
            return None
        ids = _fibonacci_ranges(bits, 12)
    except (IndexError, ValueError):
        return None
    return dict(zip(ids, sections, strict=True)) if len(ids) == len(sections) else None


def _fibonacci_ranges(bits: _Bits, at: int) -> list[int]:
    """The header's section ids: NumRanges (12 bits), then per range IsRange (1 bit) and one or two Fibonacci-coded
    integers, each an offset from the id before it.  ValueError for ids no section can have."""
    count, at = bits.read(at, 12), at + 12
    ids: list[int] = []
    last = 0
    for _ in range(count):
        is_range, at = bits.read(at, 1), at + 1
        delta, at = _fibonacci(bits, at)
        start = last + delta
        if is_range:
            delta, at = _fibonacci(bits, at)
            last = start + delta
        else:
            last = start
        if last > _GPP_MAX_ID:
            raise ValueError(last)
        ids.extend(range(start, last + 1))
    return ids


def _fibonacci(bits: _Bits, at: int) -> tuple[int, int]:
    """A Fibonacci-coded integer at `at` (one bit per term 1, 2, 3, 5, 8, ..., ended by a second 1 in a row): its
    value and where it ends."""
    value, term, next_term, previous = 0, 1, 2, 0
    while True:
        bit, at = bits.read(at, 1), at + 1
        if bit and previous:
            return value, at
        value += term if bit else 0
        term, next_term, previous = next_term, term + next_term, bit


def _us_section_opts_out(sid: int, section: str | None) -> bool:
    """A US section restricts: it is missing (None), cannot be decoded, or says the user opted out."""
    if section is None:
        return True
    if sid == _GPP_USP:
        return not _USP.fullmatch(section) or section[2] == "Y"
    layouts = _US_OPT_OUTS.get(sid)
    core, *subsections = section.split(".")
    if layouts is None or not _BASE64URL.fullmatch(core) or any(map(_gpc_opts_out, subsections)):
        return True
    bits = _sextets(core[:4])  # 24 bits: every opt-out field ends by then
    if bits is None:
        return True
    try:
        offsets = layouts.get(bits.read(0, 6))
        if offsets is None:
            return True  # a Version whose layout is not known
        return any(bits.read(at, 2) not in _NOT_OPTED_OUT for at in offsets)
    except IndexError:
        return True  # the segment ends before its opt-outs


def _gpc_opts_out(subsection: str) -> bool:
    """A subsection of a US section restricts: the GPC one with Gpc set (the browser's Global Privacy Control, which
    state laws, California's first, treat as a request to opt out of sale and sharing whatever the core's opt-out
    fields say), or one that cannot be read."""
    bits = _sextets(subsection[:1]) if _BASE64URL.fullmatch(subsection) else None
    if bits is None:
        return True
    return bits.read(0, 2) == _GPC_SUBSECTION and bool(bits.read(2, 1))


def _sextets(text: str) -> _Bits | None:
    """Base64url text as bits, 6 per character (GPP's "compressed" form: no `=` padding, a partial last sextet
    padded with zero bits, which are simply read); None for any other character or no text."""
    value = 0
    for ch in text:
        sextet = _SEXTET.get(ch)
        if sextet is None:
            return None
        value = value << 6 | sextet
    return _Bits(value, 6 * len(text)) if text else None


@lru_cache(maxsize=512)
def _gpp_eu(gpp: str, gpp_sid: tuple[int, ...]) -> tuple[bool, str]:
    """What a GPP string says of the EU: whether its TCF v2 section applies (named in gpp_sid, or listed by the
    header when gpp_sid is empty), and that section, which is a TCF consent string itself ('' if absent)."""
    sections = _gpp_sections(gpp) if len(gpp) <= _GPP_MAX_LENGTH else None
    consent = (sections or {}).get(_GPP_TCF_EU, "")
    # listed by the header, it applies even when its section is empty (no consent: restricted)
    return (_GPP_TCF_EU in gpp_sid if gpp_sid else sections is not None and _GPP_TCF_EU in sections), consent


def restriction(privacy: Privacy, vendor: int = 0) -> str:
    """'' when user-level data may be used, else the reason: coppa, gdpr, us_optout or dnt (the legal ones first).

    `vendor`: our TCF Global Vendor List id; 0 checks the purposes only (for a bidder without one)."""
    if privacy.coppa:
        return "coppa"
    gpp, sids = privacy.gpp, privacy.gpp_sid
    memo = len(gpp) <= _GPP_MAX_LENGTH and len(sids) <= _GPP_MAX_SIDS  # an oversized pair would crowd the memo
    eu_applies, eu_consent = (_gpp_eu if memo else _gpp_eu.__wrapped__)(gpp, sids) if gpp else (False, "")
    if ((privacy.gdpr or eu_applies or _GPP_TCF_EU in privacy.gpp_sid)
            and not tcf_grants(privacy.consent or eu_consent, vendor=vendor)):
        return "gdpr"
    if us_opt_out(privacy):
        return "us_optout"
    return "dnt" if privacy.dnt else ""
