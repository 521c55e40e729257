"""Privacy decisions: COPPA, GDPR consent (TCF v2 purposes) and US opt-out."""

from __future__ import annotations

import base64
from collections.abc import Set as AbstractSet

import pytest

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
    # a header listing sections 6 to 8 over one section: which string is which cannot be told
    assert restriction(Privacy(gpp="DBABzYA~1YNN", gpp_sid=(6,), us_privacy="1YNN")) == "us_optout"
    assert restriction(Privacy(gpp="DBABTA~1YNN", gpp_sid=(6,))) == ""  # the US Privacy section: not opted out
    assert restriction(Privacy(gpp="DBABMA~CP", gpp_sid=(2,))) == "gdpr"
    assert restriction(Privacy(gpp_sid=(2,), consent=tcf_string({1, 3, 4}))) == ""
    assert restriction(Privacy(us_privacy="1---")) == ""  # not applicable: nothing to opt out of
    assert restriction(Privacy(dnt=True)) == "dnt"
    assert restriction(Privacy(dnt=True, coppa=True)) == "coppa"  # the legal reason is the one counted
    assert restriction(Privacy(dnt=True, us_privacy="1YYN")) == "us_optout"


def tcf_with_vendors(purposes: set[int], vendors: set[int], ranged: bool,
                     restrictions: tuple[tuple[int, int, set[int]], ...] | None = (), li_vendors: frozenset[int] = frozenset(),
                     ) -> str:
    """A TCF v2 core string: purposes, the vendor consent and legitimate-interest sections (each a bit field or
    ranges, one per id), then the publisher restrictions (purpose, type, vendors); `restrictions=None` ends the
    string before NumPubRestrictions."""
    bits = ["0"] * 213
    bits[0:6] = list(format(2, "06b"))
    for p in purposes:
        bits[152 + p - 1] = "1"
    bits += vendor_section(vendors, ranged) + vendor_section(li_vendors, not ranged)
    if restrictions is not None:
        bits += list(format(len(restrictions), "012b"))
        for purpose, kind, ids in restrictions:
            bits += list(format(purpose, "06b") + format(kind, "02b") + format(len(ids), "012b"))
            bits += [b for v in sorted(ids) for b in "0" + format(v, "016b")]
    bits += ["0"] * (-len(bits) % 8)
    raw = int("".join(bits), 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def vendor_section(vendors: AbstractSet[int], ranged: bool) -> list[str]:
    """MaxVendorId, IsRangeEncoding, then a bit field or one single-id range entry per vendor."""
    top = max(vendors, default=0)
    bits = list(format(top, "016b")) + ["1" if ranged else "0"]
    if ranged:
        bits += list(format(len(vendors), "012b"))
        for v in sorted(vendors):
            bits += ["0"] + list(format(v, "016b"))
    else:
        bits += ["1" if v in vendors else "0" for v in range(1, top + 1)]
    return bits


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


# -- GPP: a small encoder for test strings, written from the GPP v1 field layouts --------------------------------

SEXTETS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NOTICE, OPTED_OUT, DID_NOT_OPT_OUT = 1, 1, 2
# each US section's core segment after its 6-bit Version (MspaVersion for 24-27), as named in its specification, up to
# and including its last opt-out field (all 2 bits wide); lists and MSPA fields follow and are written as zeros
US_FIELDS: dict[int, tuple[str, ...]] = {
    7: ("SharingNotice", "SaleOptOutNotice", "SharingOptOutNotice", "TargetedAdvertisingOptOutNotice",
        "SensitiveDataProcessingOptOutNotice", "SensitiveDataLimitUseNotice", "SaleOptOut", "SharingOptOut",
        "TargetedAdvertisingOptOut"),
    8: ("SaleOptOutNotice", "SharingOptOutNotice", "SensitiveDataLimitUseNotice", "SaleOptOut", "SharingOptOut"),
    **dict.fromkeys((9, 10, 12, 14), ("SharingNotice", "SaleOptOutNotice", "TargetedAdvertisingOptOutNotice", "SaleOptOut",
                                      "TargetedAdvertisingOptOut")),
    11: ("SharingNotice", "SaleOptOutNotice", "TargetedAdvertisingOptOutNotice", "SensitiveDataProcessingOptOutNotice",
         "SaleOptOut", "TargetedAdvertisingOptOut"),
    **dict.fromkeys((13, 15, 16, 17, 19, 20, 21, 22, 23), ("ProcessingNotice", "SaleOptOutNotice",
                                                           "TargetedAdvertisingOptOutNotice", "SaleOptOut",
                                                           "TargetedAdvertisingOptOut")),
    18: ("ProcessingNotice", "SaleOptOutNotice", "TargetedAdvertisingOptOutNotice", "SensitiveDataOptOutNotice",
         "SaleOptOut", "TargetedAdvertisingOptOut"),
    **dict.fromkeys((24, 25, 26, 27), ("MspaCoveredTransaction", "MspaMode", "ProcessingNotice", "SaleOptOutNotice",
                                       "TargetedAdvertisingOptOutNotice", "SaleOptOut", "TargetedAdvertisingOptOut")),
}
OPT_OUT_FIELDS = ("SaleOptOut", "SharingOptOut", "TargetedAdvertisingOptOut")


def sextets(bits: str, whole_bytes: bool = True) -> str:
    """Bits as GPP's base64url: no padding characters, zero bits up to whole bytes (as encoders write it) and then to
    a whole last sextet (all a reader may count on)."""
    bits += "0" * (-len(bits) % 8 if whole_bytes else 0)
    bits += "0" * (-len(bits) % 6)
    return "".join(SEXTETS[int(bits[i:i + 6], 2)] for i in range(0, len(bits), 6))


def fibonacci(n: int) -> str:
    """n >= 1 as a Fibonacci code: a bit per term 1, 2, 3, 5, ... (greedy, so no two 1s in a row), then a closing 1."""
    terms = [1, 2]
    while terms[-1] + terms[-2] <= n:
        terms.append(terms[-1] + terms[-2])
    out = ["0"] * len(terms)
    for i in range(len(terms) - 1, -1, -1):
        if terms[i] <= n:
            out[i], n = "1", n - terms[i]
    return "".join(out).rstrip("0") + "1"


def gpp_header(ids: list[int]) -> str:
    """Type 3, Version 1, then the section ids as Fibonacci-coded ranges, each an offset from the id before it."""
    groups: list[list[int]] = []
    for sid in sorted(ids):
        if groups and sid == groups[-1][-1] + 1:
            groups[-1].append(sid)
        else:
            groups.append([sid])
    bits, last = format(3, "06b") + format(1, "06b") + format(len(groups), "012b"), 0
    for g in groups:
        if len(g) == 1:
            bits += "0" + fibonacci(g[0] - last)
        else:
            bits += "1" + fibonacci(g[0] - last) + fibonacci(g[-1] - g[0])
        last = g[-1]
    return sextets(bits)


def us_section(sid: int, version: int = 1, **values: int) -> str:
    """A US section's core segment: notices given (1), opt-outs 'did not opt out' (2) unless `values` says else."""
    fields = US_FIELDS[sid]
    bits = format(version, "06b")
    for name in fields:
        default = DID_NOT_OPT_OUT if name in OPT_OUT_FIELDS else NOTICE if name.endswith("Notice") else 1
        bits += format(values.pop(name, default), "02b")
    assert not values, f"section {sid} has no fields {sorted(values)}"
    return sextets(bits + "0" * 48)  # the lists and MSPA fields that follow


def gpp(sections: dict[int, str]) -> str:
    return "~".join([gpp_header(list(sections)), *(sections[s] for s in sorted(sections))])


def read_fields(segment: str, widths: list[tuple[str, int]]) -> dict[str, int]:
    bits = "".join(format(SEXTETS.index(c), "06b") for c in segment)
    out, at = {}, 0
    for name, width in widths:
        out[name], at = int(bits[at:at + width], 2), at + width
    return out


USNAT_TA_OPT_OUT = "DBABLA~CFQpAAAAAACA.QA"  # usnat version 2: opted out of targeted advertising only
USNAT_ALL_OPT_OUT = "DBABLA~CFQVAAAAAABA.QA"  # usnat version 2: opted out of sale, sharing and targeted advertising
USMD_OPT_OUT = "DBABEYA~BRVQ.QA"  # Maryland: opted out of sale and targeted advertising
USPV1_OPT_OUT = "DBABTA~1YYN"  # the US Privacy section: opted out of sale


def test_the_quoted_strings_say_what_the_tests_take_them_to_say() -> None:
    """The example strings, read field by field with this file's own reading of the layouts."""
    assert gpp_header([7]) == "DBABLA" and gpp_header([24]) == "DBABEYA" and gpp_header([6]) == "DBABTA"
    assert gpp_header([2]) == "DBABMA" and gpp_header([6, 7, 8]) == "DBABzYA"
    header = read_fields("DBABLA", [("Type", 6), ("Version", 6), ("NumRanges", 12), ("IsRange", 1), ("Id", 5)])
    assert header == {"Type": 3, "Version": 1, "NumRanges": 1, "IsRange": 0, "Id": int("01011", 2)}  # 2 + 5 = 7
    usnat = [("Version", 6)] + [(name, 2) for name in US_FIELDS[7]]
    ta = read_fields(USNAT_TA_OPT_OUT.split("~")[1].split(".")[0], usnat)
    assert (ta["Version"], ta["SaleOptOut"], ta["SharingOptOut"], ta["TargetedAdvertisingOptOut"]) == (2, 2, 2, 1)
    every = read_fields(USNAT_ALL_OPT_OUT.split("~")[1].split(".")[0], usnat)
    assert (every["Version"], every["SaleOptOut"], every["SharingOptOut"], every["TargetedAdvertisingOptOut"]) == (2, 1, 1, 1)
    md = read_fields("BRVQ", [("MspaVersion", 6)] + [(name, 2) for name in US_FIELDS[24]])
    assert (md["MspaVersion"], md["SaleOptOut"], md["TargetedAdvertisingOptOut"]) == (1, 1, 1)
    # this encoder writes the same bits
    assert us_section(7, 2, SharingNotice=0, SensitiveDataProcessingOptOutNotice=0, SensitiveDataLimitUseNotice=0,
                      TargetedAdvertisingOptOut=OPTED_OUT).startswith("CFQp")
    assert us_section(24, 1, MspaMode=0, SaleOptOut=OPTED_OUT, TargetedAdvertisingOptOut=OPTED_OUT).startswith("BRVQ")


def test_a_gpp_opt_out_is_not_unlocked_by_us_privacy() -> None:
    """us_privacy 'N' and GPP are combined with OR: either one's opt-out restricts."""
    assert restriction(Privacy(gpp=USNAT_TA_OPT_OUT, gpp_sid=(7,), us_privacy="1YNN")) == "us_optout"
    assert restriction(Privacy(gpp=USPV1_OPT_OUT, gpp_sid=(6,), us_privacy="1YNN")) == "us_optout"
    assert restriction(Privacy(gpp=gpp({7: us_section(7, 2)}), gpp_sid=(7,), us_privacy="1YYN")) == "us_optout"


def test_gpp_sections_that_did_not_opt_out_leave_user_data_usable() -> None:
    for version in (1, 2):  # usnat's two versions keep the opt-outs at the same bits
        assert restriction(Privacy(gpp=gpp({7: us_section(7, version)}), gpp_sid=(7,))) == ""
    assert restriction(Privacy(gpp=gpp({7: us_section(7, SaleOptOut=0, SharingOptOut=0)}), gpp_sid=(7,))) == ""
    assert restriction(Privacy(gpp=gpp({6: "1YN-"}), gpp_sid=(6,))) == ""
    assert restriction(Privacy(gpp=gpp({2: "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA", 7: us_section(7)}),
                               gpp_sid=(7,))) == ""


def test_without_gpp_sid_every_section_the_header_lists_applies() -> None:
    assert restriction(Privacy(gpp=USNAT_ALL_OPT_OUT)) == "us_optout"
    assert restriction(Privacy(gpp=USMD_OPT_OUT)) == "us_optout"
    assert restriction(Privacy(gpp=gpp({7: us_section(7), 8: us_section(8, SharingOptOut=OPTED_OUT)}))) == "us_optout"
    assert restriction(Privacy(gpp=gpp({7: us_section(7), 8: us_section(8)}))) == ""
    assert restriction(Privacy(gpp="%%~1YNN")) == "us_optout"  # no gpp_sid, no readable header: anything may apply
    # with gpp_sid, only the sections it names apply
    assert restriction(Privacy(gpp=gpp({7: us_section(7), 8: us_section(8, SaleOptOut=OPTED_OUT)}), gpp_sid=(7,))) == ""


@pytest.mark.parametrize("sid", sorted(US_FIELDS))
def test_every_us_state_section_is_read(sid: int) -> None:
    """Sections 7 to 27: each opt-out field restricts on its own; none set leaves the request unrestricted."""
    assert restriction(Privacy(gpp=gpp({sid: us_section(sid)}), gpp_sid=(sid,))) == ""
    opt_outs = [name for name in US_FIELDS[sid] if name in OPT_OUT_FIELDS]
    assert len(opt_outs) >= 2
    for name in opt_outs:
        opted = gpp({sid: us_section(sid, **{name: OPTED_OUT})})
        assert restriction(Privacy(gpp=opted, gpp_sid=(sid,))) == "us_optout", name
        assert restriction(Privacy(gpp=opted, gpp_sid=(sid,), us_privacy="1YNN")) == "us_optout", name
        assert restriction(Privacy(gpp=opted)) == "us_optout", name
        no_value = gpp({sid: us_section(sid, **{name: 3})})  # 3 is no defined value: unreadable
        assert restriction(Privacy(gpp=no_value, gpp_sid=(sid,))) == "us_optout", name


def test_the_new_state_sections_restrict() -> None:
    assert restriction(Privacy(gpp=USMD_OPT_OUT, gpp_sid=(24,))) == "us_optout"
    header_in_whole_sextets = sextets(format(3, "06b") + format(1, "06b") + format(1, "012b") + "0" + fibonacci(24), False)
    assert header_in_whole_sextets == "DBABEY" and restriction(Privacy(gpp="DBABEY~BRVQ.QA")) == "us_optout"
    for sid, string in ((25, "DBABUYA~BRVQ.AAA"), (26, "DBABCYA~BRVQ.AAA"), (27, "DBABSYA~BRVQ.AAA")):
        assert gpp_header([sid]) == string.split("~")[0]
        assert restriction(Privacy(gpp=string, gpp_sid=(sid,))) == "us_optout", sid


def test_a_us_section_that_cannot_be_read_restricts() -> None:
    unknown = gpp({40: us_section(7)})  # a section id from 6 up that this bidder has no layout for
    assert restriction(Privacy(gpp=unknown, gpp_sid=(40,))) == "us_optout"
    assert restriction(Privacy(gpp=unknown)) == "us_optout"
    assert restriction(Privacy(gpp_sid=(7,), us_privacy="1YNN")) == "us_optout"  # named, but no GPP string
    assert restriction(Privacy(gpp="DBABMA~CPXx", gpp_sid=(2, 7), us_privacy="1YNN", gdpr=False,
                               consent=tcf_string({1, 3, 4}))) == "us_optout"  # named, but missing from the string
    assert restriction(Privacy(gpp=gpp({7: us_section(7, 3)}), gpp_sid=(7,))) == "us_optout"  # an unknown Version
    assert restriction(Privacy(gpp=gpp({24: us_section(24, 2)}), gpp_sid=(24,))) == "us_optout"
    assert restriction(Privacy(gpp=gpp({7: "CF"}), gpp_sid=(7,))) == "us_optout"  # ends before its opt-outs
    assert restriction(Privacy(gpp=gpp({7: "CFQq%AAA"}), gpp_sid=(7,))) == "us_optout"  # not base64url
    assert restriction(Privacy(gpp=gpp({6: "1Y"}), gpp_sid=(6,))) == "us_optout"
    assert restriction(Privacy(gpp="DBABLA", gpp_sid=(7,))) == "us_optout"
    assert restriction(Privacy(gpp="DBABLA~" + us_section(7) + "~" + us_section(8), gpp_sid=(7,))) == "us_optout"
    assert restriction(Privacy(gpp="DBACLA~" + us_section(7), gpp_sid=(7,))) == "us_optout"  # header Version 2
    assert restriction(Privacy(gpp="D" * 400 + "~" + us_section(7), gpp_sid=(7,))) == "us_optout"
    padded = gpp({2: "C" + "A" * 20000, 7: us_section(7)})  # longer than any real string: not read, nor remembered
    assert restriction(Privacy(gpp=padded, gpp_sid=(7,))) == "us_optout" and restriction(Privacy(gpp=padded)) == "us_optout"
    assert restriction(Privacy(gpp=padded, gpp_sid=(2,), consent=tcf_string({1, 3, 4}))) == ""
    # a section id no registry could reach: unreadable, not a list of millions of ids
    huge = sextets(format(3, "06b") + format(1, "06b") + format(1, "012b") + "1" + fibonacci(1) + "0" * 60 + "11")
    assert restriction(Privacy(gpp=huge + "~x", gpp_sid=(7,))) == "us_optout"


def test_gpp_is_decoded_only_when_there_is_one_and_each_pair_once() -> None:
    from bidder import privacy

    privacy._gpp_us_opt_out.cache_clear()
    for p in (Privacy(), Privacy(us_privacy="1YNN"), Privacy(gpp_sid=(2,), consent=tcf_string({1, 3, 4}))):
        assert restriction(p) == ""
    assert privacy._gpp_us_opt_out.cache_info().misses == 0
    for _ in range(3):
        assert restriction(Privacy(gpp=USNAT_TA_OPT_OUT, gpp_sid=(7,))) == "us_optout"
    info = privacy._gpp_us_opt_out.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    assert info.maxsize is not None and info.maxsize <= 4096


def test_gpp_strings_from_the_fuzzer_never_raise() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=2000, deadline=None, derandomize=True, database=None)
    @given(st.text(alphabet=SEXTETS + "~.%", max_size=40), st.lists(st.integers(0, 64), max_size=3))
    def check(text: str, sids: list[int]) -> None:
        assert restriction(Privacy(gpp=text, gpp_sid=tuple(sids))) in ("", "us_optout", "gdpr")
        assert restriction(Privacy(gpp="DBABLA~" + text, gpp_sid=tuple(sids))) in ("", "us_optout", "gdpr")

    check()


# -- TCF publisher restrictions --------------------------------------------------------------------------------


@pytest.mark.parametrize("ranged", [False, True])
def test_a_publisher_restriction_against_our_vendor_denies(ranged: bool) -> None:
    def grants(*restrictions: tuple[int, int, set[int]]) -> bool:
        return tcf_grants(tcf_with_vendors({1, 3, 4}, {12, 755}, ranged, restrictions), vendor=755)

    assert grants()
    assert not grants((3, 0, {755}))  # purpose 3 not allowed for us
    assert grants((3, 0, {754}))  # ... for another vendor
    assert not grants((1, 2, {700, 755}))  # purpose 1 only on legitimate interest: it needs consent
    assert not grants((2, 0, {12}), (4, 2, {755}))  # the second of two restrictions
    assert grants((3, 1, {755}))  # require consent: we have it
    assert grants((2, 0, {755}), (7, 2, {755}))  # purposes this bidder does not need
    assert not grants((4, 3, {755}))  # a restriction type with no defined meaning
    cut = tcf_with_vendors({1, 3, 4}, {755}, ranged, ((2, 0, {1, 2, 3}),))[:-4]  # ends inside the restrictions
    assert not tcf_grants(cut, vendor=755)
    assert not tcf_grants(tcf_with_vendors({1, 3, 4}, {755}, ranged, None), vendor=755)  # no NumPubRestrictions
    assert tcf_grants(tcf_with_vendors({1, 3, 4}, {755}, ranged, None))  # without a vendor id: purposes only


def test_a_restriction_range_covers_our_vendor() -> None:
    bits = ["0"] * 213
    bits[0:6] = list(format(2, "06b"))
    for p in (1, 3, 4):
        bits[152 + p - 1] = "1"
    bits += vendor_section({755}, False) + vendor_section({9}, True)
    bits += list(format(1, "012b") + format(3, "06b") + format(0, "02b") + format(1, "012b"))
    bits += list("1" + format(700, "016b") + format(800, "016b"))  # one range entry: 700 to 800
    bits += ["0"] * (-len(bits) % 8)
    raw = int("".join(bits), 2).to_bytes(len(bits) // 8, "big")
    consent = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert not tcf_grants(consent, vendor=755) and not tcf_grants(consent[:-6], vendor=755)
    assert restriction(Privacy(gdpr=True, consent=consent), vendor=755) == "gdpr"
    assert restriction(Privacy(gdpr=True, consent=consent)) == ""  # no vendor id: the vendor sections are not read


# -- where the signals sit in the request --------------------------------------------------------------------


def parsed(regs: dict, user: dict | None = None) -> Privacy:
    from bidder.openrtb import parse_request
    from tests.helpers import body, request

    return parse_request(body(request(regs=regs, **({"user": user} if user is not None else {})))).privacy


def test_an_empty_26_field_leaves_the_25_one_in_force() -> None:
    p = parsed({"us_privacy": "", "ext": {"us_privacy": "1YYN"}})
    assert p.us_privacy == "1YYN" and restriction(p) == "us_optout"
    p = parsed({"gpp": "", "gpp_sid": [], "ext": {"gpp": USNAT_ALL_OPT_OUT, "gpp_sid": [7]}})
    assert (p.gpp, p.gpp_sid) == (USNAT_ALL_OPT_OUT, (7,)) and restriction(p) == "us_optout"
    p = parsed({"gdpr": 1}, {"consent": "", "ext": {"consent": tcf_string({1, 3, 4})}})
    assert p.consent and restriction(p) == ""
    assert parsed({"us_privacy": "1YNN", "ext": {"us_privacy": "1YYN"}}).us_privacy == "1YNN"  # 2.6 place first


def test_gpp_and_gpp_sid_are_each_read_where_they_are() -> None:
    p = parsed({"gpp": USNAT_TA_OPT_OUT, "ext": {"gpp_sid": [7]}})
    assert (p.gpp, p.gpp_sid) == (USNAT_TA_OPT_OUT, (7,))
    p = parsed({"gpp_sid": [7], "ext": {"gpp": USNAT_TA_OPT_OUT}})
    assert (p.gpp, p.gpp_sid) == (USNAT_TA_OPT_OUT, (7,))
    p = parsed({"gpp": gpp({7: us_section(7), 8: us_section(8, SaleOptOut=OPTED_OUT)}), "ext": {"gpp_sid": [7]}})
    assert restriction(p) == ""  # the ext gpp_sid narrows what applies to section 7


def test_a_wrong_type_at_either_place_names_that_place() -> None:
    from bidder.openrtb import BadRequest

    for regs, user, where in (({"us_privacy": 1}, None, "regs.us_privacy"), ({"ext": {"us_privacy": 1}}, None,
                                                                              "regs.ext.us_privacy"),
                              ({"gpp": "", "ext": {"gpp": 5}}, None, "regs.ext.gpp"),
                              ({"gpp_sid": [], "ext": {"gpp_sid": "7"}}, None, "regs.ext.gpp_sid"),
                              ({}, {"consent": "", "ext": {"consent": 5}}, "user.ext.consent")):
        with pytest.raises(BadRequest) as e:
            parsed(regs, user)
        assert e.value.reason == "bad_type" and e.value.detail.startswith(where + " must be"), e.value.detail


def test_the_gpp_eu_section_applies_gdpr_and_carries_its_consent() -> None:
    """GPP's section 2 is a TCF v2 consent string: listed by the header without a gpp_sid, it makes GDPR apply, and
    it is the consent read when user.consent is empty."""
    granted, refused = tcf_string({1, 3, 4}), tcf_string({1})
    assert restriction(Privacy(gpp=gpp({2: refused}))) == "gdpr"  # no gpp_sid: the header says section 2 is there
    assert restriction(Privacy(gpp=gpp({2: granted}))) == ""
    assert restriction(Privacy(gdpr=True, gpp=gpp({2: granted}), gpp_sid=(2,))) == ""  # consent from the section
    assert restriction(Privacy(gdpr=True, gpp=gpp({2: refused}), gpp_sid=(2,))) == "gdpr"
    assert restriction(Privacy(gdpr=True, consent=granted, gpp=gpp({2: refused}), gpp_sid=(2,))) == ""  # user.consent first
    assert restriction(Privacy(gpp=gpp({2: refused, 7: us_section(7)}), gpp_sid=(7,))) == ""  # only section 7 applies


@pytest.mark.parametrize("spoil", [lambda s: s[:10] + "!!!!" + s[10:], lambda s: s[:10] + "*%$" + s[10:],
                                   lambda s: s[:8] + " " + s[8:], lambda s: s + "==<script>", lambda s: s + "AA"])
def test_a_consent_string_that_is_not_base64url_is_no_consent(spoil) -> None:
    """The decoder skipped characters outside the alphabet and stopped at '=': the consent inside counted."""
    granted = tcf_string({1, 3, 4})
    assert tcf_grants(granted) and restriction(Privacy(gdpr=True, consent=granted)) == ""
    assert not tcf_grants(spoil(granted))
    assert restriction(Privacy(gdpr=True, consent=spoil(granted))) == "gdpr"


def test_a_gpp_header_listing_the_eu_section_applies_gdpr_even_when_the_section_is_empty() -> None:
    assert restriction(Privacy(gpp=gpp({2: ""}))) == "gdpr"
    assert restriction(Privacy(gpp=gpp({2: "", 7: us_section(7)}))) == "gdpr"
    assert restriction(Privacy(gpp=gpp({7: us_section(7)}))) == ""  # not listed: GDPR does not apply


def test_a_consent_string_is_honoured_where_gdpr_is_not_stated() -> None:
    """2.6: `regs.gdpr` omitted means unknown.  It was read as 0, so a consent string refusing every purpose still
    let user data be used; stated 0, the string is not read."""
    refusing, granting = tcf_string(set()), tcf_string({1, 3, 4})
    assert restriction(parsed({}, {"consent": refusing})) == "gdpr"
    assert restriction(parsed({"ext": {}}, {"ext": {"consent": "not-a-tcf-string"}})) == "gdpr"
    assert restriction(parsed({}, {"consent": granting})) == ""
    assert restriction(parsed({"gdpr": 0}, {"consent": refusing})) == ""  # stated: not subject to GDPR
    assert restriction(parsed({"ext": {"gdpr": 0}}, {"consent": refusing})) == ""
    assert restriction(parsed({})) == "" and restriction(parsed({"us_privacy": "1YNN"})) == ""  # no string, no GDPR
