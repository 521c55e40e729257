"""The seeded OpenRTB traffic generator, the replay file reader and the shipped example requests."""

from __future__ import annotations

import collections

import orjson
import pytest

from bidder.openrtb import BadRequest, parse_request
from loadtest.traffic import (
    EXAMPLE_NAMES,
    MALFORMED,
    MARKET_BANNER_SIZES,
    MARKET_GEOS,
    RequestFactory,
    load_examples,
    load_request_file,
)

ALPHA3 = {g.country for g in MARKET_GEOS}


def test_same_seed_same_bodies_other_seed_other_bodies():
    a = RequestFactory(42, malformed_share=0.2).bodies(300)
    b = RequestFactory(42, malformed_share=0.2).bodies(300)
    c = RequestFactory(43, malformed_share=0.2).bodies(300)
    assert a == b
    assert a != c
    assert len(set(a)) == len(a)  # request ids are unique, so no two bodies repeat


def test_valid_traffic_is_json_and_parses():
    for body in RequestFactory(7).bodies(1500):
        doc = orjson.loads(body)
        req = parse_request(body)
        assert req.id == doc["id"]
        assert req.imps
        assert req.country in ALPHA3


def test_malformed_share_is_respected_and_every_broken_body_is_rejected():
    factory = RequestFactory(11, malformed_share=0.3)
    samples = [factory.sample() for _ in range(3000)]
    broken = [(body, kind) for body, kind in samples if kind]
    assert 0.25 < len(broken) / len(samples) < 0.35
    for body, kind in samples:
        if kind:
            with pytest.raises(BadRequest):
                parse_request(body)
        else:
            parse_request(body)
    assert {kind for _, kind in broken} == set(MALFORMED)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_each_mutation_breaks_a_valid_request(kind):
    factory = RequestFactory(5)
    for _ in range(20):
        body = MALFORMED[kind](factory.request(), factory.rng)
        with pytest.raises(BadRequest):
            parse_request(body)


def test_market_mix_covers_what_a_bidder_must_handle():
    factory = RequestFactory(3)
    reqs = [factory.request() for _ in range(4000)]
    parsed = [parse_request(orjson.dumps(r)) for r in reqs]
    app_share = sum(p.is_app for p in parsed) / len(parsed)
    assert 0.28 < app_share < 0.42
    sizes = collections.Counter(s for p in parsed for imp in p.imps for s in imp.sizes[:1])
    for size in (*MARKET_BANNER_SIZES, (640, 480)):
        assert sizes[size] > 20, size
    kinds = collections.Counter(imp.kind for p in parsed for imp in p.imps)
    assert kinds["native"] > 50 and kinds["video"] > 100
    assert {p.at for p in parsed} == {1, 2}
    assert sum(bool(imp.deals) for p in parsed for imp in p.imps) > 100
    assert sum(p.privacy.coppa for p in parsed) > 5
    gdpr = [p for p in parsed if p.privacy.gdpr]
    assert gdpr and any(p.privacy.consent for p in gdpr) and any(not p.privacy.consent for p in gdpr)
    usp = collections.Counter(p.privacy.us_privacy for p in parsed if p.country == "USA")
    assert usp["1YY-"] > 20 and usp["1YN-"] > usp["1YY-"]
    assert len({p.device_type for p in parsed}) >= 4
    assert len({p.domain for p in parsed}) > 60
    assert len({p.tmax for p in parsed}) > 1
    floors = [imp.floor for p in parsed for imp in p.imps]
    assert any(f == 0 for f in floors) and max(floors) > 2


def test_fixed_tmax_is_written_into_every_request():
    assert {parse_request(b).tmax for b in RequestFactory(9, tmax_ms=80).bodies(300)} == {80}


def test_share_out_of_range_is_refused():
    with pytest.raises(ValueError):
        RequestFactory(1, malformed_share=1.5)


def test_request_file_one_json_per_line(tmp_path):
    bodies = RequestFactory(2).bodies(5)
    path = tmp_path / "reqs.jsonl"
    path.write_bytes(b"\n".join(bodies) + b"\n\n")
    assert load_request_file(path) == bodies


def test_request_file_single_document_and_array(tmp_path):
    one = tmp_path / "one.json"
    one.write_bytes(orjson.dumps(orjson.loads(load_examples()["banner"]), option=orjson.OPT_INDENT_2))
    (loaded,) = load_request_file(one)
    assert parse_request(loaded).domain == "harbordaily.com"
    many = tmp_path / "many.json"
    many.write_bytes(b"[" + b",".join(RequestFactory(4).bodies(3)) + b"]")
    assert len(load_request_file(many)) == 3


def test_request_file_keeps_broken_lines_for_replay(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"id":"a","imp":[]}\nnot json at all\n')
    assert load_request_file(path) == [b'{"id":"a","imp":[]}', b"not json at all"]


def test_empty_request_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n\n")
    with pytest.raises(ValueError):
        load_request_file(path)


def test_six_examples_parse():
    examples = load_examples()
    assert set(examples) == set(EXAMPLE_NAMES)
    parsed = {name: parse_request(body) for name, body in examples.items()}
    for name, req in parsed.items():
        assert req.country in ALPHA3 | {"CAN", "AUS"}, name
        assert req.schain_complete is True, name
        assert req.tmax > 0 and req.cur, name
    assert parsed["banner"].imps[0].kind == "banner" and (300, 250) in parsed["banner"].imps[0].sizes
    assert parsed["expandable"].imps[0].sizes == ((728, 90),)
    assert parsed["mobile_app"].is_app and parsed["mobile_app"].privacy.gdpr and parsed["mobile_app"].privacy.consent
    assert parsed["video"].imps[0].kind == "video" and parsed["video"].imps[0].video_mimes
    assert [d.id for d in parsed["pmp_deal"].imps[0].deals] and parsed["pmp_deal"].imps[0].private_auction
    assert parsed["native"].imps[0].kind == "native"
    native_req = orjson.loads(orjson.loads(examples["native"])["imp"][0]["native"]["request"])
    assert native_req["assets"]
