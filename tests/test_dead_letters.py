"""Dead letters keep what finds a rejected message and its producer's mistake, never a raw user id or IP."""

from __future__ import annotations

import orjson
import pytest

from bidder.openrtb import hash_id
from streams.events import dead_letter, make_event, payload_hash

TS = 1_767_268_800_000  # 2026-01-01 12:00 UTC
RAW = {"ip": "198.51.100.211", "user_id": "CNRYuid5501x", "ifa": "6D92078A-8246-4BA4-AE5B-76104861E7DC"}


def text(record: dict) -> str:
    return orjson.dumps(record).decode()


@pytest.mark.parametrize("as_bytes", [True, False])  # the worker hands over bytes, the in-process bus a dict
def test_an_upstream_trackers_ids_are_named_not_kept(as_bytes: bool) -> None:
    click = {**make_event("clicks", "click:dlq-1", TS, bid_id="b1", campaign="open", creative="cr1"), "ts": "late",
             **RAW, "device": {"ip": RAW["ip"]}}
    record = dead_letter("streambid.clicks", "bad_type", orjson.dumps(click) if as_bytes else click, TS)
    for value in RAW.values():
        assert value not in text(record)
    kept = orjson.loads(record["payload"])
    assert kept == {"v": 1, "type": "clicks", "id": "click:dlq-1", "bid_id": "b1", "campaign": "open"}
    # names only; creative is not required, and a `ts` that is no time could be anything
    assert record["dropped"] == ["creative", "device", "ifa", "ip", "ts", "user_id"]
    assert (record["topic"], record["reason"], record["ts"]) == ("streambid.clicks", "bad_type", TS)
    assert "click:dlq-1" in record["payload"]  # what operators (and the Kafka tests) find a dead letter by


def test_a_known_field_that_could_hide_anything_is_dropped() -> None:
    bill = make_event("billing", "bill:1", TS, bid_id="b1", campaign={"user": RAW["user_id"]}, cost=5, day="x" * 300)
    record = dead_letter("billing", "bad_type", bill, TS)
    assert RAW["user_id"] not in text(record) and "x" * 300 not in text(record)
    assert record["dropped"] == ["campaign", "day"] and orjson.loads(record["payload"])["cost"] == 5
    odd_names = {**make_event("wins", "win:1", TS, bid_id="b", campaign="c", price=1), RAW["ip"]: 1, "x" * 80: 2}
    record = dead_letter("wins", "bad_value", odd_names, TS)
    assert RAW["ip"] not in text(record) and record["dropped"] == [] and record["dropped_unlisted"] == 2


@pytest.mark.parametrize("changes", [
    {"features": [f"uid={RAW['user_id']}", f"ip={RAW['ip']}"]},  # un-hashed feature names
    {"bid_id": [RAW["user_id"], RAW["ip"]]},  # a list where an id belongs
    {"v": RAW["user_id"]}, {"ts": RAW["ip"]}, {"type": RAW["ifa"]}, {"type": [RAW["ifa"]]}, {"price": RAW["ip"]},
])
def test_a_known_field_that_failed_its_check_is_dropped_not_kept(changes: dict) -> None:
    """The field that made an event fail may hold anything: only a value of the field's own type is kept."""
    bid = {**make_event("bids", "bid:1", TS, bid_id="b1", campaign="c", creative="r", price=1, pctr=0.1, features=[3]),
           **changes}
    record = dead_letter("streambid.bids", "bad_type", orjson.dumps(bid), TS)
    for value in RAW.values():
        assert value not in text(record)
    assert list(changes)[0] in record["dropped"]
    bill = make_event("billing", "bill:1", TS, bid_id="b1", campaign="c", cost=5, day=RAW["ip"])
    assert RAW["ip"] not in text(dead_letter("billing", "bad_value", bill, TS))  # a day that is no date


def test_a_payload_keyed_by_a_device_or_user_id_lists_no_such_name() -> None:
    """Names that look like field names may be ids themselves: only the schema's and trackers' usual names are listed."""
    ifa, uid = "AEBE52E7-03EE-455A-B3C4-E57283966239", "u-4c1f9a0e7b2d"
    imp = {**make_event("impressions", "imp:1", TS, bid_id="b", campaign="c"), "ts": "x", ifa: 1, uid: {"seen": 2}}
    record = dead_letter("streambid.impressions", "bad_type", orjson.dumps(imp), TS)
    assert ifa not in text(record) and uid not in text(record)
    assert record["dropped"] == ["ts"] and record["dropped_unlisted"] == 2  # `ts` failed: named, not kept


@pytest.mark.parametrize("payload", [b"{this is not an event", b'["198.51.100.211"]', b'"CNRYuid5501x"', b"\xff\xfe", b""])
def test_a_payload_that_is_not_an_object_is_kept_as_its_length_and_a_hash(payload: bytes) -> None:
    record = dead_letter("streambid.clicks", "bad_json", payload, TS)
    assert "payload" not in record and "dropped" not in record
    assert record["payload_bytes"] == len(payload)
    assert record["payload_hash"] == payload_hash(payload) != payload_hash(payload, b"another deployment's salt")
    for value in RAW.values():
        assert value not in text(record)
    if payload:
        assert payload.decode("utf-8", "replace") not in text(record)


def test_a_rejected_config_message_names_its_campaign() -> None:
    message = {"campaign": {"id": "camp-7", "budget": {"daily": -5}, "note": RAW["user_id"]}, "action": "set",
               "by": "someone-else", "at": "2026-01-01T00:00:00+00:00"}
    record = dead_letter("streambid.campaigns", "invalid_config: budget.daily: must be >= 0", orjson.dumps(message), TS)
    assert orjson.loads(record["payload"]) == {"campaign": "camp-7", "action": "set", "at": "2026-01-01T00:00:00+00:00"}
    assert "camp-7" in record["payload"] and record["dropped"] == ["by"]
    assert RAW["user_id"] not in text(record) and "someone-else" not in text(record)


def test_dead_letter_ids_tell_messages_apart() -> None:
    a = dead_letter("streambid.clicks", "bad_json", b"{a", TS)
    b = dead_letter("streambid.clicks", "bad_json", b"{b", TS)
    assert a["id"] != b["id"] and a["id"] == dead_letter("streambid.clicks", "bad_json", b"{a", TS)["id"]
    assert a["id"].startswith(f"dlq:streambid.clicks:{TS}:")
    big = dead_letter("clicks", "bad_type", {"v": 1, "id": "c", "ts": 2**70}, TS)  # beyond what JSON text carries here
    assert orjson.loads(big["payload"]) == {"v": 1, "id": "c"} and big["dropped"] == ["ts"]


def test_a_payload_that_is_a_bare_user_id_does_not_hash_to_that_users_hash() -> None:
    """Same salt, different purpose: the dead-letter hash of a bare id is not the `user` hash its events carry."""
    salt = b"deployment salt"
    uid = "u-4c1f9a0e7b2d"
    record = dead_letter("streambid.clicks", "bad_json", uid.encode(), TS, salt=salt)
    assert record["payload_hash"] == payload_hash(uid.encode(), salt)
    assert record["payload_hash"] != hash_id(salt, uid)
    assert len(record["payload_hash"]) == len(hash_id(salt, uid)) == 16


def test_a_dead_letter_names_the_field_at_fault_and_only_when_there_is_one() -> None:
    bill = make_event("billing", "bill:1", TS, bid_id="b1", campaign="c1", cost=-5)
    assert dead_letter("streambid.billing", "bad_value", bill, TS, field="cost")["field"] == "cost"
    assert "field" not in dead_letter("streambid.billing", "bad_json", b"{", TS)
