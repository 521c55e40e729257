"""Event records: compact dicts with an id, a time and a schema version.

Every event that moves money or state carries an `id` that is unique for the
real-world fact it records (e.g. `bill:<bid id>`), so counting by id is
counting once.  `check_event` is the gate every consumer applies before an
event may touch state; what fails it goes to the dead-letter topic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from typing import Any

import orjson

from bidder.campaigns import ID as CAMPAIGN_ID
from bidder.keyed import blake2b_key
from models.features import HASH_MASK

SCHEMA_VERSION = 1
DEFAULT_SALT = b"streambid"  # what STREAMBID_SALT falls back to (serve warns when it is not set)

# required fields (name -> type) per topic suffix, beyond id/ts/v
_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "bids": {"bid_id": str, "campaign": str, "creative": str, "price": int, "pctr": float, "features": list},
    "wins": {"bid_id": str, "campaign": str, "price": int},
    "billing": {"bid_id": str, "campaign": str, "cost": int},  # and `day`, when its bidder knew the campaign
    "losses": {"bid_id": str, "campaign": str},
    "impressions": {"bid_id": str, "campaign": str},
    "clicks": {"bid_id": str, "campaign": str},
    "conversions": {"bid_id": str, "campaign": str, "value": int},
    "examples": {"campaign": str, "creative": str, "features": list, "label": int},
}


# fields a kind may leave out, checked (and kept in a dead letter) when present
_OPTIONAL: dict[str, tuple[str, ...]] = {"billing": ("day",), "bids": ("exp",)}
# What a stream worker (and the embedded bus, which does as it does) admits and how long it remembers event ids:
SEEN_TTL_S = 3 * 86400  # event ids are remembered (for dedup) this long before the newest event time; older are refused
FUTURE_S = 86400  # how far ahead of the clock an event time may be (producers' clocks drift, none by a day)
FORGET_EVERY_S = 3600.0  # how often the ids past the dedup horizon are dropped
MAX_EXP_S = 86_400  # a bid's `exp` (the seconds its impression may take to come, as the exchange stated) beyond a day


class EventError(ValueError):
    """An event that must not touch state; `reason` is its dead-letter label, `field` the field at fault (a schema
    name, never a value: the dead letter carries it to whoever fixes the producer)."""

    def __init__(self, reason: str, detail: str = "", field: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.field = field


def make_event(kind: str, event_id: str, ts_ms: int, **fields: Any) -> dict[str, Any]:
    """A new event record of `kind` (a topic suffix such as 'billing')."""
    return {"v": SCHEMA_VERSION, "type": kind, "id": event_id, "ts": ts_ms, **fields}


def topic_kind(topic: str) -> str:
    """'streambid.billing' -> 'billing'."""
    return topic.rsplit(".", 1)[-1]


def check_event(kind: str, raw: Any) -> dict[str, Any]:
    """Decode (if bytes) and validate an event; raise EventError naming what is wrong."""
    if type(raw) is bytes or isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise EventError("bad_json", "payload is not JSON") from None
    if type(raw) is dict and _plainly_valid(raw, _FAST.get(kind, ())):
        return _sane(kind, raw)
    return _check(kind, raw)


# Event times a ledger day can be built from (years 2000 to 2099), and the most one event may move (a billion
# currency units in micros): beyond either, an event is a producer's bug, and counting it would break a total.
TS_MIN_MS, TS_MAX_MS = 946_684_800_000, 4_102_444_800_000
MAX_MONEY_MICROS = 10**15
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_NON_EMPTY = ("campaign", "bid_id", "creative")


def _sane(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The checks beyond types: times, amounts, ids, days and feature ids an event must have to be counted."""
    ts = raw["ts"]
    if not TS_MIN_MS <= ts <= TS_MAX_MS:
        raise EventError("bad_value", "ts must be a time in milliseconds since 1970 between 2000 and 2100", "ts")
    kind_of = raw.get("type")
    if kind_of is not None and kind_of != kind:
        raise EventError("wrong_topic", f"a {str(kind_of)[:32]!r} event on the {kind} topic", "type")
    for name in _NON_EMPTY:
        if name in raw and not raw[name]:
            raise EventError("bad_value", f"{name} must not be empty", name)
    # the id a campaign is configured under: anything else names no budget, and a "|" would reach another's totals
    if "campaign" in raw and (type(raw["campaign"]) is not str or not CAMPAIGN_ID.fullmatch(raw["campaign"])):
        raise EventError("bad_value", "campaign must be a campaign id: 1-64 letters, digits or _.:-", "campaign")
    for money in _MONEY:
        if money in raw and raw[money] > MAX_MONEY_MICROS:
            raise EventError("bad_value", f"{money} is more than {MAX_MONEY_MICROS} micros", money)
    if kind in ("bids", "examples"):
        features = raw["features"]
        if not all(type(f) is int for f in features):
            raise EventError("bad_type", "features must be integer feature ids", "features")
        if not all(0 <= f <= HASH_MASK for f in features):  # the learner and the bidders' weight arrays hold no others
            raise EventError("bad_value", f"feature ids must lie in 0..{HASH_MASK}", "features")
    if kind == "bids":
        _check_bid_log(raw)
    if kind == "examples" and raw["label"] not in (0, 1):
        raise EventError("bad_value", "label must be 0 or 1", "label")
    if kind == "billing" and "day" in raw:  # the only day the ledger reads: other events count on their campaign's
        _check_day(raw["day"], ts)  # date at `ts`, and so does a bill whose bidder did not know the campaign
    return raw


MAX_REQUESTS = 2**53  # a bidder's running request count: past this, a float (the forecast's rates) loses it
BIDDER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # what a bidder calls itself in bid logs, bills and lease requests


def _check_bid_log(raw: dict[str, Any]) -> None:
    """The optional fields of a bid event that feed every campaign's plan: its `exp`, and its bidder's running
    request count (`reqs`, `bidder`), from which the traffic forecast takes requests per hour."""
    if "exp" in raw and (type(raw["exp"]) is not int or not 0 <= raw["exp"] <= MAX_EXP_S):
        raise EventError("bad_value", f"exp must be whole seconds from 0 to {MAX_EXP_S}", "exp")
    if "reqs" in raw and (type(raw["reqs"]) is not int or not 0 <= raw["reqs"] < MAX_REQUESTS):
        raise EventError("bad_value", f"reqs must be a request count from 0 to {MAX_REQUESTS - 1}", "reqs")
    if "bidder" in raw and (type(raw["bidder"]) is not str or not BIDDER_ID.fullmatch(raw["bidder"])):
        raise EventError("bad_value", "bidder must be a bidder id: 1-64 letters, digits or _.-", "bidder")


def _check_day(day: object, ts: int) -> None:
    """A billing day is the campaign's local date at the bill: at most a day off the date in UTC."""
    if type(day) is not str:
        raise EventError("bad_type", "day must be a string", "day")
    try:
        local = dt.date.fromisoformat(day) if _DAY.fullmatch(day) else None
    except ValueError:
        local = None
    utc = dt.datetime.fromtimestamp(ts / 1000, dt.UTC).date()
    if local is None or abs((local - utc).days) > 1:
        raise EventError("bad_value", f"day {day[:32]!r} is not the local date of ts", "day")


_FAST: dict[str, tuple[tuple[str, tuple[type, ...]], ...]] = {
    kind: tuple((name, (int, float) if typ is float else typ if isinstance(typ, tuple) else (typ,))
                for name, typ in fields.items())
    for kind, fields in _REQUIRED.items()}
_MONEY = ("price", "cost", "value")


def _plainly_valid(raw: dict[str, Any], required: tuple[tuple[str, tuple[type, ...]], ...]) -> bool:
    """The common case in a few exact type tests (a stream worker runs this for every event): True only where
    `_check` passes too, False where it might not, and `_check` then decides and names the problem."""
    get = raw.get
    eid, v = get("id"), get("v")
    if type(v) is not int or v != SCHEMA_VERSION or type(eid) is not str or not eid or type(get("ts")) is not int:
        return False
    for name, types in required:
        if type(get(name)) not in types:
            return False
    for money in _MONEY:
        if money in raw:
            v = raw[money]
            if type(v) is not int or v < 0:
                return False
    return True


def _check(kind: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise EventError("bad_type", "event must be a JSON object")
    v = raw.get("v")
    if type(v) is not int or v != SCHEMA_VERSION:
        raise EventError("bad_version", f"schema version must be the integer {SCHEMA_VERSION}", "v")
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        raise EventError("missing_field", "id", "id")
    if type(raw.get("ts")) is not int:
        raise EventError("missing_field" if raw.get("ts") is None else "bad_type", "ts", "ts")
    for name, typ in _REQUIRED.get(kind, {}).items():
        v = raw.get(name)
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            continue
        if not isinstance(v, typ) or isinstance(v, bool):
            raise EventError("missing_field" if v is None else "bad_type", name, name)
    for money in _MONEY:
        if money in raw and (not isinstance(raw[money], int) or raw[money] < 0):
            raise EventError("bad_value", f"{money} must be non-negative integer micros", money)
    return _sane(kind, raw)


# What a dead letter keeps of a rejected event: the fields every event has and those its kind requires.  Others (an
# upstream tracker's ip, user_id or ifa, say) are named but not kept: raw user ids and IPs reach no topic.  A known
# field holding something nested, or a string longer than any id, is dropped too: it could hide anything.
_DEAD_COMMON = ("v", "type", "id", "ts")
# A rejected config message keeps its action and time, and the campaign it sets by its id alone (what is wrong with
# the document is in the reason; the operator who sent it is not kept).
_DEAD_CONFIG_KIND, _DEAD_CONFIG = "campaigns", ("campaign", "action", "at")
# The names a dead letter lists as dropped: the fields of the events and of what trackers commonly send.  Any other
# name is only counted: a tracker keying its payload by a device id or a user id would otherwise put it on a topic.
_DEAD_NAMES = frozenset(
    {name for fields in _REQUIRED.values() for name in fields} | {n for names in _OPTIONAL.values() for n in names}
    | {"v", "type", "id", "ts", "campaign", "action", "at", "by", "exchange", "bidder", "user", "reason", "min_to_win",
       "lam", "floor", "restricted", "reqs", "explain"}
    | {"ip", "ipv6", "ua", "user_id", "userid", "uid", "buyeruid", "ifa", "idfa", "gaid", "adid", "device", "device_id",
       "cookie", "email", "phone", "geo", "lat", "lon", "consent", "gdpr", "us_privacy", "gpp", "url", "referer",
       "referrer", "domain", "site", "app", "bundle", "imp_id", "request_id", "auction_id", "timestamp", "time", "event"})
_DEAD_MAX_STR, _DEAD_MAX_LIST, _DEAD_MAX_NAMES = 256, 4096, 32


def dead_letter(topic: str, reason: str, payload: Any, ts_ms: int, salt: bytes = DEFAULT_SALT,
                field: str = "") -> dict[str, Any]:
    """The dead-letter record for a rejected message: enough to find the message and its producer's mistake, no raw id.

    A JSON object keeps its known fields (`payload`, as JSON text) and names the others (`dropped`); anything else
    (bad JSON, another top-level type) is kept as its length and a short keyed hash (`payload_bytes`, `payload_hash`).
    `salt` is the deployment's STREAMBID_SALT, the key user ids are hashed with; `field` the field at fault, when
    one is (EventError.field)."""
    raw = _payload_bytes(payload)
    digest = payload_hash(raw, salt)
    record = {"v": SCHEMA_VERSION, "id": f"dlq:{topic}:{ts_ms}:{digest}", "ts": ts_ms, "topic": topic, "reason": reason}
    if field:
        record["field"] = field
    doc = _json_object(payload, raw)
    if doc is None:
        return {**record, "payload_bytes": len(raw), "payload_hash": digest}
    kept, dropped = _known_fields(topic_kind(topic), doc)
    names = [n for n in dropped if n in _DEAD_NAMES][:_DEAD_MAX_NAMES]
    record.update(payload=orjson.dumps(kept).decode(), dropped=sorted(names))
    if len(names) < len(dropped):
        record["dropped_unlisted"] = len(dropped) - len(names)  # names that could themselves be data, or too many
    return record


PAYLOAD_HASH_PERSON = b"streambid-dlq"  # BLAKE2b's personalization: this hash is never a user-id hash


def payload_hash(raw: bytes, salt: bytes = DEFAULT_SALT) -> str:
    """A rejected payload's short hash, keyed with the salt: it still matches the producer's own copy of the message,
    but a payload that is nothing but a user id or an IP cannot be found by hashing guesses without the salt.  Its own
    personalization keeps it apart from the user-id hash made with the same salt: a payload that is a bare user id
    does not hash to the `user` its events carry, so the dead-letter topic cannot tie that user to the payload."""
    return hashlib.blake2b(raw, key=blake2b_key(salt), digest_size=8, person=PAYLOAD_HASH_PERSON).hexdigest()


def env_salt() -> bytes:
    """The deployment's salt for hashing user ids (STREAMBID_SALT), shared by bidders and workers."""
    return os.environ.get("STREAMBID_SALT", "").encode() or DEFAULT_SALT


def _payload_bytes(payload: Any) -> bytes:
    """The message as it arrived, or as JSON when it came as a value (the in-process bus hands over dicts)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    try:
        return orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, say
        return repr(payload).encode()


def _json_object(payload: Any, raw: bytes) -> dict[Any, Any] | None:
    """The message as a JSON object, or None when it is not one."""
    if isinstance(payload, dict):
        return payload
    if not isinstance(payload, bytes | bytearray | memoryview):
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _known_fields(kind: str, doc: dict[Any, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The fields of `doc` its kind's schema knows, with plain values; and the keys of all the others."""
    names: tuple[str, ...] = _DEAD_COMMON + tuple(_REQUIRED.get(kind, ())) + _OPTIONAL.get(kind, ())
    if kind == _DEAD_CONFIG_KIND:
        names += _DEAD_CONFIG
        if isinstance(doc.get("campaign"), dict):
            doc = {**doc, "campaign": doc["campaign"].get("id")}
    kept = {name: doc[name] for name in names if name in doc and _as_declared(kind, name, doc[name])}
    return kept, [key for key in doc if key not in kept]


# the types of the fields a dead letter may keep beyond each kind's required ones
_DEAD_TYPES: dict[str, type | tuple[type, ...]] = {"v": int, "ts": int, "id": str, "type": str, "day": str, "exp": int,
                                                   "campaign": str, "action": str, "at": str}


def _as_declared(kind: str, name: str, value: Any) -> bool:
    """Whether a known field holds what its schema declares: a value that failed its check may be anything (a
    tracker's user id in `ts`, a list of raw ids as `features`), so only a value of the field's own type is kept."""
    want = _REQUIRED.get(kind, {}).get(name) or _DEAD_TYPES.get(name)
    if want is None or isinstance(value, bool):
        return False
    if name == "type":  # a known kind only (a list or an object here would not even hash)
        return isinstance(value, str) and (value in _REQUIRED or value == _DEAD_CONFIG_KIND)
    if name == "day":
        return isinstance(value, str) and _DAY.fullmatch(value) is not None
    if want is list:  # feature ids
        return isinstance(value, list) and len(value) <= _DEAD_MAX_LIST and all(type(f) is int for f in value)
    return isinstance(value, (int, float) if want is float else want) and _scalar(value)


def _scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= _DEAD_MAX_STR
    if isinstance(value, int):
        return -(2**63) <= value < 2**64  # what JSON text from orjson can hold
    return value is None or isinstance(value, float)
