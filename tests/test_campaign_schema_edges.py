"""Campaign documents at the edges of the schema: values that would never match, could not be published, or would
change meaning on the config topic are refused naming the field and saying what to do."""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams.commands
from bidder.campaigns import (
    MAX_INT,
    CampaignsError,
    ConfigError,
    config_campaign,
    load_campaigns,
    parse_campaign,
    parse_campaigns,
)
from bidder.cli import main
from streams.commands import ConfigEntry, Publication, change_record, config_entry
from tests.helpers import campaign

BANNER = {"id": "b", "type": "banner", "w": 300, "h": 250, "adm": "<img>"}
VPAID_VAST = ('<VAST version="4.0"><Ad><InLine><Creatives><Creative><Linear><Duration>00:00:15</Duration><MediaFiles>'
              '<MediaFile apiFramework="VPAID" type="application/javascript" width="640" height="480">'
              '<![CDATA[https://cdn.shop.example/unit.js]]></MediaFile></MediaFiles></Linear></Creative></Creatives>'
              '</InLine></Ad></VAST>')


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_campaign(doc)
    return e.value.problems or [str(e.value)]


@pytest.mark.parametrize("code", ["ZZZ", "GER", "UAS", "EUR"])
def test_a_country_code_outside_iso_3166_alpha3_is_refused(code: str) -> None:
    """GER for Germany (DEU) or a typo never matches `device.geo.country`: the campaign would silently lose it."""
    assert problems(campaign(targeting={"countries": ["USA", code]})) == [
        f"targeting.countries: {code!r} is not an ISO-3166-1 alpha-3 code, as OpenRTB uses (e.g. USA, GBR, DEU for Germany)"]


def test_every_iso_3166_alpha3_country_and_kosovo_are_taken() -> None:
    codes = ["DEU", "GBR", "USA", "CHN", "BES", "SSD", "ALA", "XKX"]
    assert parse_campaign(campaign(targeting={"countries": codes})).targeting.countries == frozenset(codes)


@pytest.mark.parametrize(("changes", "field"), [
    ({"frequency_cap": {"per_day": 10**30}}, "frequency_cap.per_day"),
    ({"frequency_cap": {"per_hour": 2**63}}, "frequency_cap.per_hour"),
    ({"creatives": [dict(BANNER, w=2**64)]}, "creatives[0].w"),
    ({"creatives": [dict(BANNER, h=MAX_INT + 1)]}, "creatives[0].h"),
    ({"creatives": [dict(BANNER, apis=[2, 2**70])]}, "creatives[0].apis"),
    ({"creatives": [dict(BANNER, attr=[2**64])]}, "creatives[0].attr"),
])
def test_a_count_size_or_code_too_large_to_publish_is_refused_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_campaign(campaign(**changes))
    assert e.value.field == field and e.value.problems == [e.value.args[0]]
    largest = parse_campaign(campaign(frequency_cap={"per_day": MAX_INT}, creatives=[dict(BANNER, w=MAX_INT, apis=[MAX_INT])]))
    assert orjson.loads(change_record(largest.to_doc(), "set"))["campaign"]["frequency_cap"]["per_day"] == MAX_INT


def test_set_of_a_campaign_too_large_to_publish_is_a_named_error_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.json"  # past 64 bits: orjson cannot write it into the config message
    path.write_text('{"id": "c1", "advertiser": "shop.example", "budget": {"daily": 5}, "goal": {"value_per_click": 1},'
                    '"frequency_cap": {"per_day": 1000000000000000000000000000000},'
                    '"creatives": [{"id": "b", "w": 300, "h": 250, "adm": "<img>"}]}')
    assert main(["campaign", "set", str(path), "--broker", "127.0.0.1:1", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert "campaigns[0] (c1).frequency_cap.per_day: must be at most 2,147,483,647" in err
    assert "Nothing was published" in err


def test_a_video_that_needs_no_api_keeps_saying_so_on_the_config_topic() -> None:
    """`apis: []` overrides a VAST whose every media file is VPAID; the topic's document must not read it again."""
    doc = campaign(creatives=[{"id": "v", "type": "video", "w": 640, "h": 480, "adm": VPAID_VAST, "apis": []}])
    set_here = parse_campaign(doc)
    on_topic = config_campaign(change_record(set_here.to_doc(), "set"))
    assert set_here.creatives[0].apis == on_topic.creatives[0].apis == ()
    assert on_topic == set_here
    del doc["creatives"][0]["apis"]  # not stated: read from the markup, before and after the topic
    assert config_campaign(change_record(parse_campaign(doc).to_doc(), "set")).creatives[0].apis == (2,)


def test_a_banner_of_zero_height_names_h() -> None:
    assert problems(campaign(creatives=[dict(BANNER, h=0)])) == ["creatives[0].h: banner creatives need positive w and h"]


def test_a_repeated_creative_id_names_the_creative_and_the_first_one() -> None:
    with pytest.raises(CampaignsError) as e:
        parse_campaigns([campaign(creatives=[BANNER, dict(BANNER, id="c"), dict(BANNER, w=728, h=90)])])
    assert e.value.problems == ["campaigns[0] (c1).creatives[2].id: 'b' is already the id of creatives[0]; "
                                "creative ids must be unique within a campaign"]


@pytest.mark.parametrize("adm", ["   ", "\n\t"])
def test_blank_markup_is_refused_like_missing_markup(adm: str) -> None:
    assert problems(campaign(creatives=[dict(BANNER, adm=adm)])) == [
        "creatives[0].adm: is required: the ad markup or VAST/native document"]


def test_yaml_text_read_as_a_boolean_or_a_number_is_named_with_the_quotes_it_needs(tmp_path: Path) -> None:
    """`lang: no` is Norwegian and `id: 001` an id to YAML's reader only when quoted: the error says so."""
    path = tmp_path / "c.yaml"
    path.write_text("id: c1\nadvertiser: shop.example\nbudget: {daily: 5}\ngoal: {value_per_click: 1}\n"
                    "dayparting: ['8']\n"
                    "creatives:\n  - {id: 001, w: 300, h: 250, adm: <img>, lang: no}\n")
    with pytest.raises(ConfigError) as e:
        load_campaigns(path)
    assert sorted(e.value.problems) == [
        "campaigns[0] (c1).creatives[0].id: must be a string, not a number: put it in quotes",
        "campaigns[0] (c1).creatives[0].lang: must be a string, not a boolean (in YAML, quote values like NO or ON)",
        "campaigns[0] (c1).dayparting[0]: must be an integer from 0 to 23 (write 8, without quotes)",
    ]


def test_a_change_is_recorded_by_a_user_with_no_account_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container run with a numeric --user has no passwd entry: getuser() raises, and `set` must still publish."""
    def no_name() -> str:
        raise KeyError("getpwuid(): uid not found: 54321")

    monkeypatch.setattr(getpass, "getuser", no_name)
    record = orjson.loads(change_record(parse_campaign(campaign()).to_doc(), "set"))
    assert record["by"].startswith("uid") and record["campaign"]["id"] == "c1"


def test_resuming_a_campaign_that_cannot_bid_says_why(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ended = campaign(status="paused", flight={"start": "2020-01-01", "end": "2020-12-31", "timezone": "UTC"})
    sent: list[tuple[str, bytes]] = []

    async def log(broker: str, only: str | None = None) -> list[ConfigEntry]:
        return [config_entry(b"c1", change_record(ended, "set"))]

    async def produce(broker: str, records: list[tuple[str, bytes]], pub: Publication, timeout: float) -> None:
        for record in records:
            sent.append(record)
            ack = asyncio.get_running_loop().create_future()
            ack.set_result(None)
            pub.acks.append(ack)

    monkeypatch.setattr(streams.commands, "read_config_log", log)
    monkeypatch.setattr(streams.commands, "_produce", produce)
    assert main(["campaign", "resume", "c1", "--broker", "fake:9092"]) == 0
    out, err = capsys.readouterr()
    assert out == "resumed c1\n" and len(sent) == 1
    assert "warning: campaign c1 is valid but will not bid: its flight ended on 2020-12-31 (flight.end)" in err


def test_campaigns_apart_with_yaml_document_markers_are_told_to_go_in_one_list(tmp_path: Path) -> None:
    one = ("id: {}\nadvertiser: shop.example\nbudget: {{daily: 5}}\ngoal: {{value_per_click: 1}}\n"
           "creatives: [{{id: b, w: 1, h: 1, adm: x}}]\n")
    path = tmp_path / "c.yaml"
    path.write_text("---\n" + one.format("a") + "---\n" + one.format("b"))
    with pytest.raises(ConfigError) as e:
        load_campaigns(path)
    assert e.value.field == "file" and e.value.message == (
        "holds several YAML documents (the second starts at line 7); put the campaigns in one list, each starting "
        "with '- ', not apart with ---")
    path.write_text("---\n" + one.format("a"))  # one document, marked as such: a campaign
    assert [c.id for c in load_campaigns(path)] == ["a"]


def test_vast_markup_in_a_creative_left_as_a_banner_is_refused_naming_type() -> None:
    """Without `type` a creative is a banner: its VAST would go out as a banner's HTML and show nothing."""
    vast = {"id": "v", "w": 640, "h": 480, "adm": VPAID_VAST}
    assert problems(campaign(creatives=[vast])) == [
        "creatives[0].type: is banner (not given), but adm is VAST/DAAST markup: set type to video or audio"]
    assert problems(campaign(creatives=[dict(vast, type="banner")]))[0].startswith("creatives[0].type: is banner, but")
    assert parse_campaign(campaign(creatives=[dict(vast, type="video")])).creatives[0].protocol == 7


def test_an_app_install_campaign_names_its_app_as_exchanges_list_it() -> None:
    camp = parse_campaign(campaign(bundle="com.example.game"))
    assert camp.bundle == "com.example.game" and parse_campaign(camp.to_doc()) == camp  # kept on the config topic
    assert "bundle" not in parse_campaign(campaign()).to_doc()
    for bad in ("https://play.google.com/store/apps/details?id=com.x", "com example", 12345):
        with pytest.raises(ConfigError) as e:
            parse_campaign(campaign(bundle=bad))
        assert e.value.field == "bundle", bad


@pytest.mark.parametrize(("adm", "says"), [
    ('<VAST version="4.0"><Ad><InLine>', "not well-formed XML"),  # cut short: bid into VAST 4.0 players all the same
    ("<img src='https://ads.example/v.png'>", "not well-formed XML"),
    ('<html><body>video</body></html>', "root element is <html>"),
    ("vast.xml", "neither VAST/DAAST markup nor the http(s):// URL"),
])
def test_a_video_whose_markup_no_player_can_read_is_refused_naming_adm(adm: str, says: str) -> None:
    for kind in ("video", "audio"):
        with pytest.raises(ConfigError) as e:
            parse_campaign(campaign(creatives=[{"id": "v", "type": kind, "adm": adm}]))
        assert e.value.field == "creatives[0].adm" and says in str(e.value), (kind, str(e.value))


def test_vast_markup_and_vast_tag_urls_are_taken() -> None:
    for adm in ('<?xml version="1.0"?>\n<VAST version="4.0"/>', '<DAAST version="1.0"></DAAST>',
                "https://ads.example/vast.xml?c=1&w=640", '<VAST xmlns="http://www.iab.com/VAST" version="4.2"/>'):
        kind = "audio" if "DAAST" in adm else "video"
        assert parse_campaign(campaign(creatives=[{"id": "v", "type": kind, "adm": adm}])).creatives[0].adm == adm


def test_a_campaigns_own_revision_number_is_kept_on_the_config_topic() -> None:
    camp = parse_campaign(campaign(version=7))
    assert camp.version == 7 and parse_campaign(camp.to_doc()).version == 7
    for bad in (-1, 2**40, "7"):
        with pytest.raises(ConfigError) as e:
            parse_campaign(campaign(version=bad))
        assert e.value.field == "version", bad
