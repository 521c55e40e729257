"""Native 1.2: requests are read strictly enough to answer them, and a creative's response is fitted to each one."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.native import NativeError, fits, native_adm, parse_native_creative, parse_native_request

ROOT = Path(__file__).resolve().parent.parent
IMG_ICON, IMG_MAIN = 1, 3
DATA_SPONSORED, DATA_DESC, DATA_CTA = 1, 2, 12
LINK = {"url": "https://brand.example/"}


def example_request_text() -> str:
    doc = orjson.loads((ROOT / "loadtest/examples/native.json").read_bytes())
    return doc["imp"][0]["native"]["request"]


def example_creative_adm() -> str:
    doc = orjson.loads((ROOT / "deploy/campaigns.example.json").read_bytes())
    return next(cr["adm"] for c in doc["campaigns"] for cr in c["creatives"] if cr["type"] == "native")


def req(*assets: dict[str, Any], **top: Any) -> str:
    return orjson.dumps({"ver": "1.2", **top, "assets": list(assets)}).decode()


def creative(*assets: dict[str, Any], wrap: bool = False, **top: Any) -> str:
    response = {"ver": "1.2", "assets": list(assets), "link": LINK, **top}
    return orjson.dumps({"native": response} if wrap else response).decode()


def answer(adm: str, request: str) -> dict[str, Any] | None:
    """The fitted response object (unwrapped), or None for no bid."""
    out = native_adm(parse_native_creative(adm), parse_native_request(request))
    if out is None:
        return None
    doc = orjson.loads(out)
    return doc.get("native", doc)


def ids(response: dict[str, Any]) -> list[int]:
    return [a["id"] for a in response["assets"]]


TITLE: dict[str, Any] = {"id": 1, "title": {"text": "Make your home greener"}}  # 22 characters
MAIN: dict[str, Any] = {"id": 2, "img": {"url": "https://cdn.example/main.jpg", "w": 1200, "h": 628, "type": IMG_MAIN}}
ICON: dict[str, Any] = {"id": 3, "img": {"url": "https://cdn.example/icon.png", "w": 80, "h": 80, "type": IMG_ICON}}
BRAND: dict[str, Any] = {"id": 4, "data": {"value": "Green Home", "type": DATA_SPONSORED}}  # 10 characters


# --- the shipped example pair ---------------------------------------------------------------------------------------


def test_iab_example_request_and_example_creative_fit() -> None:
    request = parse_native_request(example_request_text())
    out = native_adm(parse_native_creative(example_creative_adm()), request)
    assert out is not None
    doc = {"native": orjson.loads(out)}
    assert "assets" in doc["native"]  # a 1.2 request is answered with the response object at the root (1.2 section 5.1)
    got = ids(doc["native"])
    assert set(got) <= {a.id for a in request.assets}
    assert {a.id for a in request.assets if a.required} <= set(got)
    assert len(got) == len(set(got))
    assert doc["native"]["link"] == {"url": "https://greenhome.example/"}
    by_id = {a["id"]: a for a in doc["native"]["assets"]}
    assert by_id[1]["title"]["text"] == "Make your home greener"
    assert by_id[2]["img"]["w"] == 1200
    assert by_id[4]["data"]["value"] == "Green Home"


def test_example_request_parses_every_asset() -> None:
    request = parse_native_request(example_request_text())
    assert request.ver == "1.2"
    assert [(a.id, a.kind, a.required) for a in request.assets] == [
        (1, "title", True), (2, "img", True), (3, "img", False), (4, "data", True), (5, "data", False), (6, "data", False),
    ]
    assert (request.assets[1].type, request.assets[1].wmin, request.assets[1].hmin) == (IMG_MAIN, 600, 314)
    assert request.assets[2].w == 80 and request.assets[2].wmin is None
    assert request.key == example_request_text()


# --- what is filled, what is dropped, what gives no bid -------------------------------------------------------------


def test_required_asset_the_creative_lacks_gives_none() -> None:
    request = req({"id": 1, "required": 1, "title": {"len": 90}}, {"id": 2, "required": 1, "video": {"mimes": ["video/mp4"]}})
    assert answer(creative(TITLE, MAIN), request) is None


def test_optional_assets_the_creative_lacks_are_dropped() -> None:
    request = req(
        {"id": 1, "required": 1, "title": {"len": 90}},
        {"id": 2, "required": 0, "data": {"type": DATA_CTA}},
        {"id": 3, "img": {"type": IMG_ICON}},  # required absent means optional
    )
    out = answer(creative(TITLE, MAIN), request)
    assert out is not None and ids(out) == [1]


def test_nothing_fillable_gives_none() -> None:
    assert answer(creative(TITLE), req({"id": 7, "data": {"type": DATA_DESC}})) is None


def test_assets_are_renumbered_to_request_ids_in_request_order() -> None:
    request = req(
        {"id": 30, "required": 1, "data": {"type": DATA_SPONSORED}},
        {"id": 10, "required": 1, "title": {"len": 50}},
        {"id": 20, "required": 1, "img": {"type": IMG_MAIN, "wmin": 600, "hmin": 300}},
    )
    out = answer(creative(TITLE, MAIN, BRAND), request)
    assert out is not None
    assert ids(out) == [30, 10, 20]
    assert out["assets"][0]["data"]["value"] == "Green Home"
    assert out["assets"][1]["title"]["text"] == TITLE["title"]["text"]
    assert out["assets"][2]["img"]["url"] == MAIN["img"]["url"]


def test_images_fill_slots_of_their_own_type_only() -> None:
    request = req({"id": 5, "required": 1, "img": {"type": IMG_ICON}}, {"id": 6, "required": 1, "img": {"type": IMG_MAIN}})
    out = answer(creative(MAIN, ICON), request)
    assert out is not None
    assert {a["id"]: a["img"]["type"] for a in out["assets"]} == {5: IMG_ICON, 6: IMG_MAIN}
    assert answer(creative(MAIN), req({"id": 5, "required": 1, "img": {"type": IMG_ICON}})) is None


def test_request_image_without_type_takes_any_image() -> None:
    out = answer(creative(ICON), req({"id": 9, "required": 1, "img": {}}))
    assert out is not None and out["assets"][0]["img"]["type"] == IMG_ICON


def test_an_untyped_creative_asset_fills_only_untyped_request_assets() -> None:
    """Untyped text could be a slogan served as a price, an untyped image a banner served as an icon."""
    untyped = {"id": 4, "data": {"value": "Green Home"}}
    assert answer(creative(untyped), req({"id": 8, "required": 1, "data": {"type": DATA_DESC}})) is None
    out = answer(creative(untyped), req({"id": 8, "required": 1, "data": {}}))
    assert out is not None and ids(out) == [8]


def test_typed_match_is_preferred_over_untyped() -> None:
    untyped = {"id": 1, "data": {"value": "Some words"}}
    typed = {"id": 2, "data": {"value": "Brand", "type": DATA_SPONSORED}}
    out = answer(creative(untyped, typed), req({"id": 3, "required": 1, "data": {"type": DATA_SPONSORED}}))
    assert out is not None and out["assets"] == [{"id": 3, "data": {"value": "Brand", "type": DATA_SPONSORED}}]


def test_each_creative_asset_fills_one_slot_at_most() -> None:
    request = req({"id": 1, "required": 1, "title": {"len": 90}}, {"id": 2, "required": 1, "title": {"len": 90}})
    assert answer(creative(TITLE), request) is None
    other = {"id": 9, "title": {"text": "Another headline"}}
    out = answer(creative(TITLE, other), request)
    assert out is not None and sorted(ids(out)) == [1, 2]
    assert {a["title"]["text"] for a in out["assets"]} == {TITLE["title"]["text"], "Another headline"}


def test_an_early_choice_is_moved_to_fill_a_later_required_slot() -> None:
    untyped_slot = {"id": 1, "required": 1, "img": {}}
    main_slot = {"id": 2, "required": 1, "img": {"type": IMG_MAIN}}
    out = answer(creative(MAIN, ICON), req(untyped_slot, main_slot))
    assert out is not None
    assert {a["id"]: a["img"]["type"] for a in out["assets"]} == {1: IMG_ICON, 2: IMG_MAIN}


def test_optional_slots_never_cost_a_required_one() -> None:
    request = req({"id": 1, "img": {"type": IMG_MAIN}}, {"id": 2, "required": 1, "img": {}})
    out = answer(creative(MAIN), request)
    assert out is not None and ids(out) == [2]


def test_video_asset_fills_video_slot() -> None:
    video = {"id": 5, "video": {"vasttag": "<VAST version=\"4.2\"></VAST>"}}
    out = answer(creative(TITLE, video), req({"id": 1, "required": 1, "video": {"mimes": ["video/mp4"]}}))
    assert out is not None and out["assets"] == [{"id": 1, "video": {"vasttag": "<VAST version=\"4.2\"></VAST>"}}]


# --- limits ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "fits_"), [(22, True), (90, True), (21, False), (None, True)])
def test_title_len(limit: int | None, fits_: bool) -> None:
    title = {"len": limit} if limit is not None else {}
    out = answer(creative(TITLE), req({"id": 1, "required": 1, "title": title}))
    assert (out is not None) is fits_


@pytest.mark.parametrize(("limit", "fits_"), [(10, True), (25, True), (9, False)])
def test_data_len(limit: int, fits_: bool) -> None:
    out = answer(creative(BRAND), req({"id": 4, "required": 1, "data": {"type": DATA_SPONSORED, "len": limit}}))
    assert (out is not None) is fits_


def test_too_long_text_for_an_optional_slot_is_dropped_not_cut() -> None:
    request = req({"id": 1, "required": 1, "title": {"len": 90}}, {"id": 2, "data": {"type": DATA_SPONSORED, "len": 5}})
    out = answer(creative(TITLE, BRAND), request)
    assert out is not None and ids(out) == [1]


@pytest.mark.parametrize(
    ("img", "fits_"),
    [
        ({"wmin": 600, "hmin": 314}, True),
        ({"wmin": 1200, "hmin": 628}, True),
        ({"wmin": 1201, "hmin": 314}, False),
        ({"wmin": 600, "hmin": 629}, False),
        ({"w": 1200, "h": 628}, True),  # only w/h: an exact requirement
        ({"w": 1000, "h": 500}, False),
        ({"w": 1000, "wmin": 600, "h": 500, "hmin": 300}, True),  # with wmin/hmin, w/h are not exact
        ({"w": 1200}, True),
        ({"w": 0, "h": 0}, True),  # a zero size states nothing
        ({"h": 627}, False),
        ({}, True),
    ],
)
def test_image_size_rules(img: dict[str, int], fits_: bool) -> None:
    out = answer(creative(MAIN), req({"id": 2, "required": 1, "img": {"type": IMG_MAIN, **img}}))
    assert (out is not None) is fits_


def test_an_image_without_size_fills_only_requests_that_state_none() -> None:
    unsized = {"id": 2, "img": {"url": "https://cdn.example/x.jpg"}}
    assert answer(creative(unsized), req({"id": 2, "required": 1, "img": {"w": 80, "h": 80}})) is None
    assert answer(creative(unsized), req({"id": 2, "required": 1, "img": {"wmin": 80, "hmin": 80}})) is None
    out = answer(creative(unsized), req({"id": 2, "required": 1, "img": {}}))
    assert out is not None and ids(out) == [2]


def test_a_request_object_where_the_string_belongs_is_read() -> None:
    request = parse_native_request({"ver": "1.2", "assets": [{"id": 5, "required": 1, "title": {"len": 90}}]})
    assert [a.id for a in request.assets] == [5]


def test_an_asset_kind_not_defined_yet_is_tolerated_and_never_filled() -> None:
    optional = parse_native_request(req({"id": 1, "required": 1, "title": {"len": 90}}, {"id": 2, "event": {}}))
    adm = native_adm(parse_native_creative(creative(TITLE)), optional)
    assert adm is not None and ids(orjson.loads(adm)) == [1]
    required = parse_native_request(req({"id": 1, "required": 1, "title": {"len": 90}},
                                        {"id": 2, "required": 1, "event": {}}))
    assert native_adm(parse_native_creative(creative(TITLE)), required) is None


def test_fits_checks_kind_first() -> None:
    c = parse_native_creative(creative(TITLE)).assets[0]
    r = parse_native_request(req({"id": 1, "data": {"type": 1}})).assets[0]
    assert not fits(c, r)


# --- wrapper styles and kept fields ---------------------------------------------------------------------------------


def test_the_answer_takes_the_requests_form_whatever_the_creatives() -> None:
    """Before Native 1.1 the root was {"native": ...}; from 1.1 on it is the object itself: each reader expects the
    form it sent, whichever form the marketer wrote the creative in."""
    bare = {"ver": "1.2", "assets": [{"id": 1, "required": 1, "title": {"len": 90}}]}
    for creative_wrapped in (True, False):
        adm = creative({"id": 7, "title": {"text": "Hello"}}, wrap=creative_wrapped)
        root = orjson.loads(native_adm(parse_native_creative(adm), parse_native_request(orjson.dumps(bare).decode()))
                            or "null")
        assert set(root) >= {"assets", "link"} and "native" not in root
        old = orjson.dumps({"native": {**bare, "ver": "1.0"}}).decode()
        wrapped = orjson.loads(native_adm(parse_native_creative(adm), parse_native_request(old)) or "null")
        assert set(wrapped) == {"native"} and wrapped["native"]["assets"][0]["id"] == 1


def test_wrapped_request_reads_like_a_bare_one() -> None:
    bare = {"ver": "1.1", "assets": [{"id": 1, "required": 1, "title": {"len": 40}}]}
    wrapped = parse_native_request(orjson.dumps({"native": bare}).decode())
    assert wrapped.assets == parse_native_request(orjson.dumps(bare).decode()).assets
    assert wrapped.ver == "1.1"


def test_other_response_fields_are_kept() -> None:
    trackers = [{"event": 1, "method": 1, "url": "https://t.example/imp"}]
    adm = creative(TITLE, imptrackers=["https://t.example/i"], eventtrackers=trackers, privacy="https://p.example/", ext={"x": 1})
    out = answer(adm, req({"id": 5, "required": 1, "title": {"len": 90}}))
    assert out is not None
    assert out["imptrackers"] == ["https://t.example/i"] and out["eventtrackers"] == trackers
    assert out["privacy"] == "https://p.example/" and out["ext"] == {"x": 1}
    assert out["ver"] == "1.2" and out["link"] == LINK


def test_asset_level_fields_are_kept() -> None:
    asset = {"id": 1, "required": 1, "title": {"text": "Hi"}, "link": {"url": "https://a.example/"}, "ext": {"k": 2}}
    out = answer(creative(asset), req({"id": 6, "title": {"len": 10}}))
    assert out is not None and out["assets"] == [{"id": 6, **{k: v for k, v in asset.items() if k != "id"}}]


def test_unknown_fields_and_values_are_tolerated() -> None:
    request = req(
        {"id": 1, "required": 1, "img": {"type": 501, "mimes": ["image/webp"], "ext": {}}, "x-new": True},
        {"id": 2, "data": {"type": 999}},
        plcmttype=77,
        unknown={"a": 1},
    )
    exotic = {"id": 7, "img": {"url": "https://cdn.example/e.jpg", "type": 501}}
    out = answer(creative(exotic, TITLE), request)
    assert out is not None and ids(out) == [1]


def test_answers_are_deterministic_and_requests_cached_by_text() -> None:
    text = example_request_text()
    a, b = parse_native_request(text), parse_native_request(text)
    assert a == b and a.key == b.key
    c = parse_native_creative(example_creative_adm())
    assert native_adm(c, a) == native_adm(parse_native_creative(example_creative_adm()), b)
    assert hash(c) == hash(parse_native_creative(example_creative_adm()))


# --- refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "not a string"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"native": 3}', "wrapper is not an object"),
        ("{}", "assets is not a non-empty array"),
        ('{"assets": {}}', "assets is not a non-empty array"),
        ('{"assets": []}', "assets is not a non-empty array"),
        ('{"assets": [3]}', "assets[0] is not an object"),
        ('{"assets": [{"title": {}}]}', "assets[0].id is not an integer"),
        ('{"assets": [{"id": "1", "title": {}}]}', "assets[0].id is not an integer"),
        ('{"assets": [{"id": true, "title": {}}]}', "assets[0].id is not an integer"),
        ('{"assets": [{"id": 1, "title": {}, "img": {}}]}', "(has title and img)"),
        ('{"assets": [{"id": 1, "title": "x"}]}', "assets[0].title is not an object"),
        ('{"assets": [{"id": 1, "title": {"len": "90"}}]}', "assets[0].title.len is not an integer"),
        ('{"assets": [{"id": 1, "title": {}}, {"id": 2, "img": {"wmin": 1.5}}]}', "assets[1].img.wmin is not an integer"),
        ('{"assets": [{"id": 1, "title": {}}, {"id": 1, "data": {"type": 1}}]}', "asset id 1 is used twice"),
    ],
)
def test_malformed_requests_are_refused_by_name(raw: object, message: str) -> None:
    with pytest.raises(NativeError) as e:
        parse_native_request(raw)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("adm", "message"),
    [
        ("<div>banner</div>", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"native": []}', '"native" must be an object'),
        ('{"link": {"url": "https://x"}}', 'needs an "assets" array'),
        ('{"assetsurl": "https://x", "link": {"url": "https://x"}}', "assetsurl/dcourl"),
        ('{"assets": [{"id": 1, "title": {"text": "x"}}]}', 'needs "link": {"url"'),
        ('{"assets": [{"id": 1, "title": {"text": "x"}}], "link": {"url": ""}}', 'needs "link": {"url"'),
        ('{"assets": [{"title": {"text": "x"}}], "link": {"url": "u"}}', 'assets[0] needs an integer "id"'),
        ('{"assets": [{"id": 1, "title": {}}], "link": {"url": "u"}}', 'assets[0].title needs a "text" string'),
        ('{"assets": [{"id": 1, "img": {"w": 1}}], "link": {"url": "u"}}', 'assets[0].img needs a "url" string'),
        ('{"assets": [{"id": 1, "img": {"url": "u", "w": 0}}], "link": {"url": "u"}}', "w and h must be positive"),
        ('{"assets": [{"id": 1, "img": {"url": "u", "type": "main"}}], "link": {"url": "u"}}', "img.type must be a whole"),
        ('{"assets": [{"id": 1, "data": {"value": 5}}], "link": {"url": "u"}}', 'assets[0].data needs a "value" string'),
        ('{"assets": [{"id": 1, "video": {}}], "link": {"url": "u"}}', 'needs a "vasttag" string'),
        ('{"assets": [{"id": 1, "title": {"text": "a"}, "data": {"value": "b"}}], "link": {"url": "u"}}', "has title and data"),
        ('{"assets": [{"id": 1, "title": {"text": "a"}}, {"id": 1, "data": {"value": "b"}}], "link": {}}', "used twice"),
    ],
)
def test_malformed_creatives_are_refused_with_a_fix(adm: str, message: str) -> None:
    with pytest.raises(NativeError) as e:
        parse_native_creative(adm)
    assert message in str(e.value)


# --- property: any answer is valid for its request, and no bid only when none could be ------------------------------

KINDS = ("title", "img", "data", "video")


@st.composite
def request_assets(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids_ = draw(st.lists(st.integers(0, 40), min_size=1, max_size=4, unique=True))
    out = []
    for i in ids_:
        kind = draw(st.sampled_from(KINDS))
        body: dict[str, Any] = {}
        if kind == "title":
            body = draw(st.fixed_dictionaries({}, optional={"len": st.integers(0, 12)}))
        elif kind == "data":
            body = draw(st.fixed_dictionaries({"type": st.sampled_from([1, 2, 12])}, optional={"len": st.integers(0, 12)}))
        elif kind == "img":
            size = st.integers(10, 40)
            body = draw(st.fixed_dictionaries({}, optional={"type": st.sampled_from([1, 3]), "w": size, "h": size,
                                                            "wmin": size, "hmin": size}))
        asset: dict[str, Any] = {"id": i, kind: body}
        if draw(st.booleans()):
            asset["required"] = draw(st.sampled_from([0, 1]))
        out.append(asset)
    return out


@st.composite
def creative_assets(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids_ = draw(st.lists(st.integers(0, 40), min_size=1, max_size=4, unique=True))
    out: list[dict[str, Any]] = []
    for i in ids_:
        kind = draw(st.sampled_from(KINDS))
        text = st.text(st.characters(codec="utf-8"), max_size=12)
        if kind == "title":
            body: dict[str, Any] = {"text": draw(text)}
        elif kind == "data":
            body = draw(st.fixed_dictionaries({"value": text}, optional={"type": st.sampled_from([1, 2, 12])}))
        elif kind == "img":
            size = st.integers(10, 40)
            body = draw(st.fixed_dictionaries({"url": st.just("https://c.example/i.png")},
                                              optional={"type": st.sampled_from([1, 3]), "w": size, "h": size}))
        else:
            body = {"vasttag": "<VAST/>"}
        out.append({"id": i, kind: body, "ext": {"src": len(out)}})  # ext.src: which asset an answer used
    return out


def most_fillable(c_assets: tuple, r_assets: tuple) -> int:
    """Brute force: the most request assets one creative can fill while filling every required one; 0 if it cannot."""
    best = 0
    for choice in itertools.product([None, *range(len(c_assets))], repeat=len(r_assets)):
        used = [ci for ci in choice if ci is not None]
        if len(used) != len(set(used)):
            continue
        if all(ci is not None and fits(c_assets[ci], r) if r.required else ci is None or fits(c_assets[ci], r)
               for ci, r in zip(choice, r_assets, strict=True)):
            best = max(best, len(used))
    return best


@settings(max_examples=300, deadline=None)
@given(request_assets(), creative_assets(), st.booleans(), st.booleans())
def test_property_answers_are_valid_json_with_request_ids(
    r_assets: list[dict[str, Any]], c_assets: list[dict[str, Any]], wrap_req: bool, wrap_adm: bool
) -> None:
    raw = orjson.dumps({"native": {"assets": r_assets}} if wrap_req else {"assets": r_assets}).decode()
    request = parse_native_request(raw)
    made = parse_native_creative(creative(*c_assets, wrap=wrap_adm))
    out = native_adm(made, request)
    assert out == native_adm(made, request)
    best = most_fillable(made.assets, request.assets)
    if out is None:
        assert best == 0
        return
    doc = orjson.loads(out)
    response = doc["native"] if wrap_req else doc  # the request's form
    got = ids(response)
    request_ids = [a.id for a in request.assets]
    assert set(got) <= set(request_ids) and len(got) == len(set(got))
    assert {a.id for a in request.assets if a.required} <= set(got)
    assert got == [i for i in request_ids if i in got]  # request order
    assert len(got) == best
    by_id = {a.id: a for a in request.assets}
    sources = [a["ext"]["src"] for a in response["assets"]]
    assert len(sources) == len(set(sources))
    for asset, src in zip(response["assets"], sources, strict=True):
        original = c_assets[src]
        assert {k: v for k, v in asset.items() if k != "id"} == {k: v for k, v in original.items() if k != "id"}
        assert fits(made.assets[src], by_id[asset["id"]])


def test_event_trackers_use_only_the_methods_the_request_allows() -> None:
    """Native 1.2 section 5.8: the bidder must only respond with methods indicated as available in the request."""
    trackers = [{"event": 1, "method": 1, "url": "https://t.example/img"},
                {"event": 1, "method": 2, "url": "https://t.example/js.js"},
                {"event": 2, "method": 1, "url": "https://t.example/mrc50"}]
    adm = creative(TITLE, eventtrackers=trackers)
    only_img = answer(adm, req({"id": 3, "title": {}}, eventtrackers=[{"event": 1, "methods": [1]}]))
    assert only_img is not None and only_img["eventtrackers"] == trackers[:1]
    none_fit = answer(adm, req({"id": 3, "title": {}}, eventtrackers=[{"event": 3, "methods": [1]}]))
    assert none_fit is not None and "eventtrackers" not in none_fit
    unstated = answer(adm, req({"id": 3, "title": {}}))
    assert unstated is not None and unstated["eventtrackers"] == trackers  # the request says nothing: all kept


def test_a_video_asset_is_filled_only_by_a_vast_tag_that_meets_its_rules() -> None:
    """Native 1.2 section 4.5: mimes, minduration, maxduration and protocols of a video asset bind its answer."""
    def tag(mime: str, length: str, version: str = "4.0") -> dict[str, Any]:
        xml = (f'<VAST version="{version}"><Ad><InLine><Creatives><Creative><Linear><Duration>{length}</Duration>'
               f'<MediaFiles><MediaFile type="{mime}">https://v.example/a</MediaFile></MediaFiles></Linear>'
               '</Creative></Creatives></InLine></Ad></VAST>')
        return {"id": 5, "video": {"vasttag": xml}}

    asks = {"id": 9, "required": 1, "video": {"mimes": ["video/mp4"], "minduration": 5, "maxduration": 15,
                                               "protocols": [2, 7]}}
    fitting = answer(creative(tag("video/mp4", "00:00:15")), req(asks))
    assert fitting is not None and ids(fitting) == [9]
    assert answer(creative(tag("video/webm", "00:00:15")), req(asks)) is None  # a type the player cannot play
    assert answer(creative(tag("video/mp4", "00:00:30")), req(asks)) is None  # too long
    assert answer(creative(tag("video/mp4", "00:00:15", "3.0")), req(asks)) is None  # VAST 3.0: protocol 3
    assert answer(creative({"id": 5, "video": {"vasttag": "https://v.example/vast.xml"}}), req(asks)) is None
    assert answer(creative(tag("video/webm", "00:00:30")), req({"id": 9, "required": 1, "video": {}})) is not None
