"""Privacy signals at their edges: consent strings of every size, vendor ids beyond a string's own bound, GPP
lists too long to remember, and the Global Privacy Control flag of the US sections."""

from __future__ import annotations

import base64
import time

from bidder import privacy
from bidder.openrtb import Privacy
from bidder.privacy import restriction, tcf_grants
from tests.test_privacy import USNAT_ALL_OPT_OUT, gpp, tcf_with_vendors, us_section

OUR_VENDOR = 755
NEEDED = {1, 3, 4}


def encode(bits: list[str]) -> str:
    bits = bits + ["0"] * (-len(bits) % 8)
    return base64.urlsafe_b64encode(int("".join(bits), 2).to_bytes(len(bits) // 8, "big")).rstrip(b"=").decode()


def core_bits() -> list[str]:
    """The core string's fixed fields: version 2 and purposes 1, 3 and 4 consented."""
    bits = ["0"] * 213
    bits[0:6] = list(format(2, "06b"))
    for p in NEEDED:
        bits[152 + p - 1] = "1"
    return bits


def ranged_section(max_vendor: int, ranges: list[tuple[int, int]]) -> list[str]:
    """MaxVendorId, IsRangeEncoding 1, then one range entry per (start, end)."""
    bits = list(format(max_vendor, "016b")) + ["1"] + list(format(len(ranges), "012b"))
    for start, end in ranges:
        bits += list("1" + format(start, "016b") + format(end, "016b"))
    return bits


def padded_with_restrictions(entries: int) -> str:
    """Consent to our vendor, then publisher restrictions (on a purpose we do not need) holding `entries` range
    entries in all: a string every byte of which is well formed, only very long."""
    bits = core_bits() + ranged_section(OUR_VENDOR, [(OUR_VENDOR, OUR_VENDOR)]) + ranged_section(0, [])
    groups = [4095] * (entries // 4095)
    bits += list(format(len(groups), "012b"))
    for n in groups:
        bits += list(format(7, "06b") + format(0, "02b") + format(n, "012b")) + list("0" + format(1, "016b")) * n
    return encode(bits)


def test_a_consent_string_far_longer_than_any_real_one_is_no_consent_and_is_not_walked() -> None:
    """A request's consent string is read on the bid path: 200 KiB of range entries took seconds of one core."""
    huge = padded_with_restrictions(4095 * 20)
    assert len(huge) > 200_000
    started = time.perf_counter()
    assert not tcf_grants(huge, vendor=OUR_VENDOR)
    assert restriction(Privacy(gdpr=True, consent=huge), vendor=OUR_VENDOR) == "gdpr"
    assert time.perf_counter() - started < 1.0


def test_a_consent_string_of_real_size_is_still_read() -> None:
    """A bit field for every vendor id up to 1500 in both vendor sections, and a few restrictions: well under the
    limit, and read as before."""
    every = set(range(1, 1501))
    full = tcf_with_vendors(NEEDED, every, False, ((2, 0, {1, 2, 3}), (7, 1, {OUR_VENDOR})), frozenset(every))
    assert 600 < len(full) < 8192
    assert tcf_grants(full, vendor=OUR_VENDOR) and tcf_grants(full + ".IF0EAAA")  # a second segment follows
    assert restriction(Privacy(gdpr=True, consent=full), vendor=OUR_VENDOR) == ""


def test_a_range_beyond_max_vendor_id_does_not_consent_for_our_vendor() -> None:
    """MaxVendorId bounds every id the section names: a string that says 100 and then covers 1 to 1000 is not one a
    CMP wrote, and its range names nobody past 100."""
    def consent(max_vendor: int) -> str:
        return encode(core_bits() + ranged_section(max_vendor, [(1, 1000)]) + ranged_section(0, [])
                      + list(format(0, "012b")))

    assert tcf_grants(consent(1000), vendor=OUR_VENDOR)
    assert not tcf_grants(consent(100), vendor=OUR_VENDOR)
    assert tcf_grants(consent(100), vendor=99)
    assert restriction(Privacy(gdpr=True, consent=consent(100)), vendor=OUR_VENDOR) == "gdpr"


def test_a_gpp_sid_too_long_to_be_real_is_decoded_but_not_remembered() -> None:
    """The memos are keyed on gpp_sid too: hundreds of thousands of ids in a 256 KiB body, each request's kept,
    held a gigabyte."""
    privacy._gpp_us_opt_out.cache_clear()
    privacy._gpp_eu.cache_clear()
    long_sids = (7,) * 100_000
    for i in range(20):
        opted_out = USNAT_ALL_OPT_OUT + "A" * i  # a distinct string each time, as an attacker would send
        assert restriction(Privacy(gpp=opted_out, gpp_sid=long_sids)) == "us_optout"
    assert restriction(Privacy(gpp=gpp({7: us_section(7)}), gpp_sid=long_sids)) == ""
    assert restriction(Privacy(gpp=gpp({2: "", 7: us_section(7)}), gpp_sid=(2,) * 100_000)) == "gdpr"
    assert privacy._gpp_us_opt_out.cache_info().currsize == 0
    assert privacy._gpp_eu.cache_info().currsize == 0
    assert restriction(Privacy(gpp=USNAT_ALL_OPT_OUT, gpp_sid=(7,))) == "us_optout"  # a real one still is
    assert privacy._gpp_us_opt_out.cache_info().currsize == 1


GPC_SET, GPC_CLEAR = ".YA", ".QA"  # SubsectionType 1 (GPC), then Gpc 1 or 0


def test_the_global_privacy_control_flag_opts_out() -> None:
    """A US section's GPC subsection with Gpc set is an opt-out of sale and sharing, whatever the core's fields say."""
    for sid in (7, 8):  # usnat and California, both with every opt-out field 'did not opt out'
        section = us_section(sid)
        assert restriction(Privacy(gpp=gpp({sid: section + GPC_CLEAR}), gpp_sid=(sid,))) == ""
        assert restriction(Privacy(gpp=gpp({sid: section + GPC_SET}), gpp_sid=(sid,))) == "us_optout", sid
        assert restriction(Privacy(gpp=gpp({sid: section + GPC_SET}))) == "us_optout", sid  # listed by the header
        assert restriction(Privacy(gpp=gpp({sid: section + GPC_SET}), gpp_sid=(sid,), us_privacy="1YNN")) == "us_optout"
    # a subsection that cannot be read may be the one that opts out
    for spoiled in (".", ".Y%", ".Y A"):
        assert restriction(Privacy(gpp=gpp({7: us_section(7) + spoiled}), gpp_sid=(7,))) == "us_optout", spoiled
