"""The request view: what is accepted, what is refused with which field named."""

from __future__ import annotations

import pytest

from bidder.openrtb import BadRequest, parse_request
from tests.helpers import body, request


def test_parses_fields_the_bidder_uses() -> None:
    req = parse_request(body(request()))
    assert req.id == "req-1"
    assert req.imps[0].sizes == ((300, 250),)
    assert req.imps[0].kind == "banner"
    assert req.domain == "news.example"
    assert (req.country, req.region, req.city) == ("USA", "ca", "san francisco")  # matched without case
    assert req.at == 2 and req.tmax == 150


def test_user_id_is_hashed_never_kept_raw() -> None:
    req = parse_request(body(request()), salt=b"s1")
    assert req.user_key and "user-42" not in req.user_key
    assert parse_request(body(request()), salt=b"s2").user_key != req.user_key
    assert "203.0.113.7" not in repr(req)


def test_a_salt_longer_than_a_blake2b_key_still_hashes_user_ids() -> None:
    """`openssl rand -hex 64` is 128 bytes: keyed with it as it was, BLAKE2b refused every request with a user id."""
    long_salt, other = b"ab" * 64, b"ab" * 63 + b"ac"
    req = parse_request(body(request()), salt=long_salt)
    assert req.user_key and "user-42" not in req.user_key
    assert parse_request(body(request()), salt=other).user_key != req.user_key  # every byte of the salt counts


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"imp": [{"id": "1", "banner": {}}]}, "id"),
        ({"id": "x"}, "imp"),
        ({"id": "x", "imp": []}, "imp"),
        ({"id": "x", "imp": [{"banner": {"w": 1, "h": 1}}]}, "imp[0].id"),
        ({"id": "x", "imp": [{"id": "1"}]}, "imp[0]"),
        ({"id": "x", "imp": [{"id": "1", "banner": {"w": "300"}}]}, "imp[0].banner.w"),
        ({"id": "x", "imp": [{"id": "1", "banner": {}, "bidfloor": -1}]}, "imp[0].bidfloor"),
        ({"id": "x", "imp": [{"id": "1", "banner": {}}], "tmax": "fast"}, "tmax"),
        ({"id": "x", "imp": [{"id": "1", "banner": {}}], "regs": {"gdpr": "1"}}, "regs.gdpr"),
        ({"id": "x", "imp": [{"id": "1", "banner": {}, "pmp": {"deals": {}}}]}, "imp[0].pmp.deals"),
        ({"id": "x", "imp": [{"id": "1", "banner": {}}, {"id": "1", "banner": {}}]}, "imp ids"),
        ({"id": "x", "imp": [{"id": "1", "banner": {}, "video": {"w": "640"}}]}, "imp[0].video.w"),  # multi-format
    ],
)
def test_bad_requests_name_the_field(doc: dict, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_request(body(doc))
    assert e.value.detail.startswith(field)


def test_not_json_is_refused() -> None:
    with pytest.raises(BadRequest) as e:
        parse_request(b"{not json")
    assert e.value.reason == "bad_json"


def test_openrtb_25_ext_privacy_fields_are_read() -> None:
    doc = request(regs={"ext": {"gdpr": 1, "us_privacy": "1YNN"}}, user={"id": "u", "ext": {"consent": "abc"}})
    req = parse_request(body(doc))
    assert req.privacy.gdpr and req.privacy.consent == "abc" and req.privacy.us_privacy == "1YNN"


def test_deals_and_formats() -> None:
    imp = {"id": "1", "banner": {"format": [{"w": 300, "h": 250}, {"w": 320, "h": 50}]},
           "pmp": {"private_auction": 1, "deals": [{"id": "d1", "bidfloor": 2.5, "at": 1}]}}
    req = parse_request(body(request(imp=[imp])))
    assert req.imps[0].sizes == ((300, 250), (320, 50))
    assert req.imps[0].private_auction
    assert req.imps[0].deals[0].id == "d1" and req.imps[0].deals[0].floor == 2.5 and req.imps[0].deals[0].at == 1


@pytest.mark.parametrize(
    "regs",
    [
        {"coppa": None, "ext": {"coppa": 1}},
        {"gpp": None, "gpp_sid": None, "ext": {"gpp": "DBABLA~BVQqAAAAAgA.QA", "gpp_sid": [7]}},
    ],
)
def test_a_null_26_privacy_field_leaves_its_25_place_in_force(regs: dict) -> None:
    """null is absent: a COPPA or GPP signal where 2.5 put it must not be hidden by a null 2.6 field."""
    p = parse_request(body(request(regs=regs))).privacy
    assert p.coppa or (p.gpp and p.gpp_sid == (7,))


def test_a_deal_without_a_floor_keeps_the_impression_floor() -> None:
    imp = {"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 6.0, "bidfloorcur": "EUR",
           "pmp": {"deals": [{"id": "open"}, {"id": "cheap", "bidfloor": 1.5}, {"id": "zero", "bidfloor": 0},
                             {"id": "yen", "bidfloor": 500, "bidfloorcur": "JPY"}]}}
    deals = {d.id: d for d in parse_request(body(request(imp=[imp]))).imps[0].deals}
    assert (deals["open"].floor, deals["open"].cur) == (6.0, "EUR")
    assert deals["zero"].floor == 0.0  # a floor stated as 0 is the deal's own
    assert (deals["yen"].floor, deals["yen"].cur) == (500.0, "JPY")


def test_a_deal_floor_without_a_currency_is_in_usd() -> None:
    """2.6 section 3.2.12: Deal.bidfloorcur does not inherit from Imp.bidfloorcur; stated, or USD."""
    imp = {"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 100.0, "bidfloorcur": "JPY",
           "pmp": {"private_auction": 1, "deals": [{"id": "d1", "bidfloor": 5.0}]}}
    deal = parse_request(body(request(imp=[imp]))).imps[0].deals[0]
    assert (deal.floor, deal.cur) == (5.0, "USD")


@pytest.mark.parametrize("device, keyed", [
    ({"ifa": "6D92078A-8246-4BA4-AE5B-76104861E7DC"}, True),
    ({"ifa": "6D92078A-8246-4BA4-AE5B-76104861E7DC", "lmt": 1}, False),  # tracking limited: no user from the device
    ({"ifa": "6D92078A-8246-4BA4-AE5B-76104861E7DC", "lmt": 2}, False),  # a value not defined yet: the safe side
    ({"ifa": "00000000-0000-0000-0000-000000000000"}, False),  # the id of every user who denied tracking
])
def test_the_device_id_keys_a_user_only_when_tracking_is_allowed(device: dict, keyed: bool) -> None:
    doc = request(device={"devicetype": 4, **device})
    doc.pop("user", None)
    assert bool(parse_request(body(doc)).user_key) is keyed


def test_a_user_id_keys_the_user_whatever_the_device_id() -> None:
    doc = request(device={"ifa": "00000000-0000-0000-0000-000000000000", "lmt": 1}, user={"id": "u-42"})
    assert parse_request(body(doc)).user_key == parse_request(body(request(user={"id": "u-42"}))).user_key != ""


@pytest.mark.parametrize("dnt, regs, tracked", [
    (None, None, True),
    (0, None, True),
    (1, None, False),
    (2, None, False),  # a value not defined yet: the safe side
    (1, {"gdpr": 0}, False),  # read with or without other privacy signals
    (0, {"gdpr": 0}, True),
])
def test_do_not_track_is_read_from_the_device(dnt: int | None, regs: dict | None, tracked: bool) -> None:
    device: dict = {"devicetype": 2} if dnt is None else {"devicetype": 2, "dnt": dnt}
    doc = request(device=device, user={"id": "u-42"}, **({"regs": regs} if regs is not None else {}))
    assert parse_request(body(doc)).privacy.dnt is not tracked


def test_a_do_not_track_flag_that_is_not_an_integer_is_refused() -> None:
    with pytest.raises(BadRequest, match="device.dnt"):
        parse_request(body(request(device={"dnt": "1"})))
