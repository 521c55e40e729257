"""Campaigns: what a marketer sets, validated once, then read-only.

The same schema arrives from a JSON/YAML file, from `streambid campaign set`,
and from the campaign config topic.  `parse_campaign` is the single gate: it
either returns a frozen `Campaign` (money in integer micros) or raises
`ConfigError` naming the offending field, so a bad config never reaches the
bid path.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from bidder.money import to_micros

CURRENCIES = frozenset({"USD", "EUR", "GBP", "CNY", "JPY", "CAD", "AUD", "CHF", "SEK", "INR", "BRL"})
KINDS = frozenset({"banner", "video", "native", "audio"})
GOALS = frozenset({"cpc", "cpa"})
IAB_CAT = re.compile(r"^IAB\d{1,2}(-\d{1,2})?$")
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class ConfigError(ValueError):
    """A campaign document that must not be applied; `field` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Creative:
    id: str
    kind: str
    w: int
    h: int
    cats: tuple[str, ...]
    adm: str
    mimes: tuple[str, ...] = ()

    def fits(self, kind: str, sizes: tuple[tuple[int, int], ...]) -> bool:
        """Same media kind; banners match an offered size, video matches one when sizes are given."""
        if kind != self.kind:
            return False
        if kind in ("native", "audio") or (kind == "video" and not sizes):
            return True
        return (self.w, self.h) in sizes


@dataclass(frozen=True, slots=True)
class Targeting:
    countries: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    cities: frozenset[str] = frozenset()
    device_types: frozenset[int] = frozenset()
    os: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    deals: frozenset[str] = frozenset()
    deal_only: bool = False


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    advertiser: str
    currency: str
    status: str
    daily_budget: int  # micros
    total_budget: int  # micros
    start: dt.date
    end: dt.date
    timezone: str
    hours: frozenset[int]  # dayparting, local hours allowed; empty means all
    goal: str
    value_per_click: int  # micros
    value_per_conversion: int  # micros
    max_bid_cpm: int  # micros
    freq_per_hour: int  # 0 means no cap
    freq_per_day: int
    targeting: Targeting
    creatives: tuple[Creative, ...]
    version: int = 0

    @property
    def active(self) -> bool:
        return self.status == "active"

    def in_flight(self, now_utc: dt.datetime) -> bool:
        """True when `now_utc` falls inside the flight dates and dayparting, in the campaign's zone."""
        day, hour = _local_day_hour(self.timezone, now_utc)
        if not (self.start <= day <= self.end):
            return False
        return not self.hours or hour in self.hours

    def to_doc(self) -> dict[str, Any]:
        """The canonical document, as the config topic carries it."""
        t = self.targeting
        return {
            "id": self.id,
            "advertiser": self.advertiser,
            "currency": self.currency,
            "status": self.status,
            "budget": {"daily": self.daily_budget / 1e6, "total": self.total_budget / 1e6},
            "flight": {"start": self.start.isoformat(), "end": self.end.isoformat(), "timezone": self.timezone},
            "dayparting": sorted(self.hours),
            "goal": {
                "type": self.goal,
                "value_per_click": self.value_per_click / 1e6,
                "value_per_conversion": self.value_per_conversion / 1e6,
                "max_bid_cpm": self.max_bid_cpm / 1e6,
            },
            "frequency_cap": {"per_hour": self.freq_per_hour, "per_day": self.freq_per_day},
            "targeting": {
                "countries": sorted(t.countries),
                "regions": sorted(t.regions),
                "cities": sorted(t.cities),
                "device_types": sorted(t.device_types),
                "os": sorted(t.os),
                "domains": sorted(t.domains),
                "categories": sorted(t.categories),
                "deals": sorted(t.deals),
                "deal_only": t.deal_only,
            },
            "creatives": [
                {"id": c.id, "type": c.kind, "w": c.w, "h": c.h, "cat": list(c.cats), "adm": c.adm, "mimes": list(c.mimes)}
                for c in self.creatives
            ],
        }


_local: dict[tuple[str, dt.datetime], tuple[dt.date, int]] = {}


def _local_day_hour(timezone: str, now_utc: dt.datetime) -> tuple[dt.date, int]:
    """Local date and hour in `timezone`; remembered per instant, since a thousand campaigns share a few zones."""
    key = (timezone, now_utc)
    got = _local.get(key)
    if got is None:
        local = now_utc.astimezone(ZoneInfo(timezone))
        got = (local.date(), local.hour)
        if len(_local) >= 1024:
            _local.clear()
        _local[key] = got
    return got


# -- validation ----------------------------------------------------------------


def _get(doc: dict, key: str, path: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in doc or doc[key] is None:
        if default is ...:
            raise ConfigError(path + key, "is required")
        return default
    v = doc[key]
    if isinstance(v, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(path + key, f"must be {_kind_name(kind)}, not a boolean")
    if not isinstance(v, kind):
        raise ConfigError(path + key, f"must be {_kind_name(kind)}")
    return v


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "an array", bool: "true or false"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _money(doc: dict, key: str, path: str, default: Any = ...) -> int:
    v = _get(doc, key, path, (int, float, str), default)
    try:
        micros = to_micros(v)
    except ValueError:
        raise ConfigError(path + key, "must be a number") from None
    if micros < 0:
        raise ConfigError(path + key, "must be >= 0")
    return micros


def _date(doc: dict, key: str, path: str) -> dt.date:
    v = _get(doc, key, path, str)
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        raise ConfigError(path + key, "must be a date like 2026-01-31") from None


def _str_set(doc: dict, key: str, path: str, pattern: re.Pattern[str] | None = None) -> frozenset[str]:
    vals = _get(doc, key, path, list, [])
    for i, v in enumerate(vals):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{path}{key}[{i}]", "must be a non-empty string")
        if pattern and not pattern.match(v):
            raise ConfigError(f"{path}{key}[{i}]", f"{v!r} is not a valid value (expected e.g. IAB1 or IAB1-2)")
    return frozenset(vals)


def _int_set(doc: dict, key: str, path: str, lo: int, hi: int) -> frozenset[int]:
    vals = _get(doc, key, path, list, [])
    for i, v in enumerate(vals):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ConfigError(f"{path}{key}[{i}]", f"must be an integer from {lo} to {hi}")
    return frozenset(vals)


def _creative(raw: Any, i: int) -> Creative:
    path = f"creatives[{i}]."
    if not isinstance(raw, dict):
        raise ConfigError(f"creatives[{i}]", "must be an object")
    cid = _get(raw, "id", path, str)
    if not ID.match(cid):
        raise ConfigError(path + "id", "must be 1-64 letters, digits or _.:-")
    kind = _get(raw, "type", path, str, "banner")
    if kind not in KINDS:
        raise ConfigError(path + "type", f"must be one of {', '.join(sorted(KINDS))}")
    w, h = _get(raw, "w", path, int, 0), _get(raw, "h", path, int, 0)
    if kind == "banner" and (w <= 0 or h <= 0):
        raise ConfigError(path + "w", "banner creatives need positive w and h")
    adm = _get(raw, "adm", path, str, "")
    if not adm:
        raise ConfigError(path + "adm", "is required: the ad markup or VAST/native document")
    cats = tuple(sorted(_str_set(raw, "cat", path, IAB_CAT)))
    mimes = tuple(_str_set(raw, "mimes", path))
    return Creative(cid, kind, w, h, cats, adm, mimes)


def _targeting(doc: dict) -> Targeting:
    raw = _get(doc, "targeting", "", dict, {})
    p = "targeting."
    countries = _str_set(raw, "countries", p)
    for c in countries:
        if len(c) != 3 or not c.isupper():
            raise ConfigError(p + "countries", f"{c!r} is not an ISO-3166-1 alpha-3 code (e.g. USA), as OpenRTB uses")
    return Targeting(
        countries=countries,
        regions=_str_set(raw, "regions", p),
        cities=_str_set(raw, "cities", p),
        device_types=_int_set(raw, "device_types", p, 1, 8),
        os=frozenset(o.lower() for o in _str_set(raw, "os", p)),
        domains=_str_set(raw, "domains", p),
        categories=_str_set(raw, "categories", p, IAB_CAT),
        deals=_str_set(raw, "deals", p),
        deal_only=_get(raw, "deal_only", p, bool, False),
    )


def parse_campaign(doc: Any) -> Campaign:
    """Validate one campaign document; raise ConfigError naming the first bad field."""
    if not isinstance(doc, dict):
        raise ConfigError("campaign", "must be an object")
    cid = _get(doc, "id", "", str)
    if not ID.match(cid):
        raise ConfigError("id", "must be 1-64 letters, digits or _.:-")
    currency = _get(doc, "currency", "", str, "USD")
    if currency not in CURRENCIES:
        raise ConfigError("currency", f"{currency!r} is not supported; use one of {', '.join(sorted(CURRENCIES))}")
    status = _get(doc, "status", "", str, "active")
    if status not in ("active", "paused"):
        raise ConfigError("status", "must be 'active' or 'paused'")
    budget = _get(doc, "budget", "", dict)
    daily, total = _money(budget, "daily", "budget."), _money(budget, "total", "budget.", 0)
    if total and total < daily:
        raise ConfigError("budget.total", "must be >= budget.daily (or 0 for no total cap)")
    flight = _get(doc, "flight", "", dict, {})
    start = _date(flight, "start", "flight.") if "start" in flight else dt.date(2000, 1, 1)
    end = _date(flight, "end", "flight.") if "end" in flight else dt.date(2999, 12, 31)
    if end < start:
        raise ConfigError("flight.end", "must not be before flight.start")
    tz = _get(flight, "timezone", "flight.", str, "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("flight.timezone", f"{tz!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    goal = _get(doc, "goal", "", dict)
    gtype = _get(goal, "type", "goal.", str, "cpc")
    if gtype not in GOALS:
        raise ConfigError("goal.type", "must be 'cpc' or 'cpa'")
    vpc = _money(goal, "value_per_click", "goal.", 0)
    vpa = _money(goal, "value_per_conversion", "goal.", 0)
    if gtype == "cpc" and vpc == 0:
        raise ConfigError("goal.value_per_click", "must be > 0 for a cpc goal")
    if gtype == "cpa" and vpa == 0:
        raise ConfigError("goal.value_per_conversion", "must be > 0 for a cpa goal")
    cap = _get(doc, "frequency_cap", "", dict, {})
    per_hour, per_day = _get(cap, "per_hour", "frequency_cap.", int, 0), _get(cap, "per_day", "frequency_cap.", int, 0)
    if per_hour < 0 or per_day < 0:
        raise ConfigError("frequency_cap", "caps must be >= 0 (0 means no cap)")
    creatives_raw = _get(doc, "creatives", "", list)
    if not creatives_raw:
        raise ConfigError("creatives", "needs at least one creative")
    creatives = tuple(_creative(c, i) for i, c in enumerate(creatives_raw))
    if len({c.id for c in creatives}) != len(creatives):
        raise ConfigError("creatives", "creative ids must be unique within a campaign")
    return Campaign(
        id=cid,
        advertiser=_get(doc, "advertiser", "", str),
        currency=currency,
        status=status,
        daily_budget=daily,
        total_budget=total,
        start=start,
        end=end,
        timezone=tz,
        hours=_int_set(doc, "dayparting", "", 0, 23),
        goal=gtype,
        value_per_click=vpc,
        value_per_conversion=vpa,
        max_bid_cpm=_money(goal, "max_bid_cpm", "goal.", 10),
        freq_per_hour=per_hour,
        freq_per_day=per_day,
        targeting=_targeting(doc),
        creatives=creatives,
        version=_get(doc, "version", "", int, 0),
    )


def load_campaign_docs(path: Path) -> list[dict[str, Any]]:
    """Read a JSON or YAML file holding one campaign, a list, or {"campaigns": [...]}."""
    text = path.read_bytes()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = orjson.loads(text)
    if isinstance(data, dict) and "campaigns" in data:
        data = data["campaigns"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ConfigError("file", "must hold a campaign object, a list of them, or {\"campaigns\": [...]}")
    return data


def load_campaigns(path: Path) -> list[Campaign]:
    """Load and validate every campaign in a file; errors name the campaign index and field."""
    out = []
    for i, doc in enumerate(load_campaign_docs(path)):
        try:
            out.append(parse_campaign(doc))
        except ConfigError as e:
            raise ConfigError(f"campaigns[{i}].{e.field}", e.message) from None
    return out
