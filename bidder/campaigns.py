"""Campaigns: what a marketer sets, validated once, then read-only.

The same schema arrives from a JSON/YAML file, from `streambid campaign set`,
and from the campaign config topic.  `parse_campaign` is the single gate: it
either returns a frozen `Campaign` (money in integer micros) or raises
`ConfigError` naming the offending field, so a bad config never reaches the
bid path.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import orjson

from bidder import vast
from bidder.money import MICROS, AmountTooLarge, is_whole_micros, to_micros
from bidder.money import to_text as money_text
from bidder.native import NativeCreative, NativeError, native_adm, parse_native_creative
from bidder.openrtb import Media

CURRENCIES = frozenset({"USD", "EUR", "GBP", "CNY", "JPY", "CAD", "AUD", "CHF", "SEK", "INR", "BRL"})
KINDS = frozenset({"banner", "video", "native", "audio"})
GOALS = frozenset({"cpc", "cpa"})
# IAB Content Category 1.0: IAB1 to IAB26, with their subcategories; always used whole (fullmatch): "IAB26\n" is not
IAB_CAT = re.compile(r"IAB(?:[1-9]|1[0-9]|2[0-6])(-\d{1,2})?")
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# ISO 3166-1 alpha-3, as OpenRTB writes device.geo.country: a code outside it (GER for DEU, ZZZ) never matches a
# request, so a campaign naming it would silently lose that country.  XKX: Kosovo, which has no ISO code of its
# own, in the user-assigned code in common use.
COUNTRIES = frozenset((
    "ABW AFG AGO AIA ALA ALB AND ARE ARG ARM ASM ATA ATF ATG AUS AUT AZE BDI BEL BEN BES BFA BGD BGR BHR BHS BIH BLM BLR "
    "BLZ BMU BOL BRA BRB BRN BTN BVT BWA CAF CAN CCK CHE CHL CHN CIV CMR COD COG COK COL COM CPV CRI CUB CUW CXR CYM CYP "
    "CZE DEU DJI DMA DNK DOM DZA ECU EGY ERI ESH ESP EST ETH FIN FJI FLK FRA FRO FSM GAB GBR GEO GGY GHA GIB GIN GLP GMB "
    "GNB GNQ GRC GRD GRL GTM GUF GUM GUY HKG HMD HND HRV HTI HUN IDN IMN IND IOT IRL IRN IRQ ISL ISR ITA JAM JEY JOR JPN "
    "KAZ KEN KGZ KHM KIR KNA KOR KWT LAO LBN LBR LBY LCA LIE LKA LSO LTU LUX LVA MAC MAF MAR MCO MDA MDG MDV MEX MHL MKD "
    "MLI MLT MMR MNE MNG MNP MOZ MRT MSR MTQ MUS MWI MYS MYT NAM NCL NER NFK NGA NIC NIU NLD NOR NPL NRU NZL OMN PAK PAN "
    "PCN PER PHL PLW PNG POL PRI PRK PRT PRY PSE PYF QAT REU ROU RUS RWA SAU SDN SEN SGP SGS SHN SJM SLB SLE SLV SMR SOM "
    "SPM SRB SSD STP SUR SVK SVN SWE SWZ SXM SYC SYR TCA TCD TGO THA TJK TKL TKM TLS TON TTO TUN TUR TUV TWN TZA UGA UKR "
    "UMI URY USA UZB VAT VCT VEN VGB VIR VNM VUT WLF WSM YEM ZAF ZMB ZWE "
    "XKX").split())
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
NOT_BLANK = re.compile(r"\S(?:.*\S)?")
# a domain or app bundle as exchanges send it in site.domain / app.bundle / adomain: no scheme, path or spaces
# an app store id as OpenRTB's `bapp` and `bid.bundle` carry it: a package name, a store number, a CTV store's id
APP_ID = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.:-]{0,254}[A-Za-z0-9_])?")
DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")
LANG = re.compile(r"[a-z]{2,3}(-[a-z0-9]{1,8})*")
# The largest amount of money a campaign field may hold, in currency units: far above any real budget, and small
# enough that every sum of a campaign's micros fits in 64 bits and every amount survives the trip through JSON.
MAX_MONEY = 1_000_000_000
# The largest count, size or code a campaign may state: exchanges keep OpenRTB integers in 32 bits, and a larger one
# would not even survive the config topic's JSON (64 bits at most), so `campaign set` could not publish it.
MAX_INT = 2**31 - 1
# The fields of each object of the schema: a misspelt field would otherwise be ignored, and its default (no cap,
# every country, all day) would take its place without a word.
FIELDS: dict[str, frozenset[str]] = {
    "": frozenset({"id", "advertiser", "currency", "status", "budget", "flight", "dayparting", "goal", "frequency_cap",
                   "targeting", "creatives", "version", "bundle"}),
    "budget.": frozenset({"daily", "total"}),
    "flight.": frozenset({"start", "end", "timezone"}),
    "goal.": frozenset({"type", "value_per_click", "value_per_conversion", "max_bid_cpm"}),
    "frequency_cap.": frozenset({"per_hour", "per_day"}),
    "targeting.": frozenset({"countries", "regions", "cities", "device_types", "os", "domains", "categories", "deals",
                             "deal_only"}),
    "creatives[].": frozenset({"id", "type", "w", "h", "cat", "adm", "mimes", "protocol", "duration", "linearity", "lang",
                               "apis", "attr"}),
}


EXAMPLES = {DOMAIN: "news.example or com.example.app, with no https:// or path",
            NOT_BLANK: "iOS or Android, with no spaces around it"}
# top-level keys of a config-topic message (as `campaign show --history --json` prints), not of a campaign document
MESSAGE_KEYS = frozenset({"campaign", "action", "at", "by"})


class ConfigError(ValueError):
    """A campaign document that must not be applied; `field` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.problems: list[str] = []  # every problem of the document, when validation collected several


class CampaignsError(ConfigError):
    """Every problem of a campaign file, one line each ("campaigns[2] (shoes).budget.daily: must be >= 0")."""

    def __init__(self, problems: list[str]) -> None:
        field, _, message = problems[0].partition(": ")
        super().__init__(field, message)
        self.args = ("\n".join(problems),)
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Creative:
    id: str
    kind: str
    w: int
    h: int
    cats: tuple[str, ...]
    adm: str
    mimes: tuple[str, ...] = ()
    protocol: int = 0  # video/audio: the OpenRTB protocol code of the markup (e.g. 7 for VAST 4.0); 0 unknown
    duration: int = 0  # video/audio: seconds, rounded up; 0 unknown
    linearity: int = 0  # video: 1 linear, 2 non-linear; 0 unknown
    lang: str = ""  # the creative's language (BCP-47, lower case, e.g. "en" or "en-gb"); "" not stated
    native: NativeCreative | None = field(default=None, compare=False)  # a native creative's parsed response
    # no plain-HTTP URL in its markup, so it may fill a secure impression (`imp.secure` 1); derived from `adm`
    secure: bool = field(default=True, compare=False)
    apis: tuple[int, ...] = ()  # API frameworks the markup needs (AdCOM list, e.g. 2 VPAID 2.0, 5 MRAID 2)
    attr: tuple[int, ...] = ()  # the creative's attributes (AdCOM list, e.g. 6 in-banner video), for `battr`
    # a banner's OpenRTB banner ad types its markup is (3 JavaScript, 4 iframe), for `btype`; derived from `adm`
    btypes: tuple[int, ...] = field(default=(), compare=False)

    def fits(self, media: Media) -> bool:
        """Whether the creative can fill this media object.

        Same kind; a banner in an offered size; a sized video in an offered size when sizes are given (an unsized
        one plays at any size); video and audio in a MIME type the player takes when both sides name theirs, and
        meeting the player's protocols, durations and linearity; native filling every required asset.
        """
        kind = media.kind
        if kind != self.kind or not self.allowed_by(media):
            return False
        if kind == "banner":
            return (self.w, self.h) in media.sizes
        if kind == "native":
            return media.native is None or self.native is None or native_adm(self.native, media.native) is not None
        if media.mimes and self.mimes and not set(media.mimes).intersection(self.mimes):
            return False
        if media.plays and not self.plays_in(media):
            return False
        return kind == "audio" or not media.sizes or not self.w or (self.w, self.h) in media.sizes

    def allowed_by(self, media: Media) -> bool:
        """Whether the placement supports every API framework the markup needs (one it does not list, it does not
        support: OpenRTB 2.6 3.2.6/3.2.7), blocks none of the creative's attributes (`battr`) and, for a banner,
        none of the ad types its markup is (`btype`)."""
        return (all(a in media.api for a in self.apis) and not any(a in media.battr for a in self.attr)
                and not any(t in media.btype for t in self.btypes))

    def plays_in(self, media: Media) -> bool:
        """The player's rules: a protocol it lists, a length it allows, its linearity.  What the creative does not
        state cannot be shown to meet a rule the player states, so it does not."""
        if media.protocols and self.protocol not in media.protocols:
            return False
        d = self.duration
        if media.rqddurs:
            if d not in media.rqddurs:
                return False
        elif (media.maxduration and not 0 < d <= media.maxduration) or (media.minduration and d < media.minduration):
            return False
        return not media.linearity or media.linearity == self.linearity

    def speaks(self, languages: frozenset[str]) -> bool:
        """Whether the creative's language is allowed by `wlang`/`wlangb` (lower case): its primary language, or a
        BCP-47 range that matches it ("en" matches "en-gb"); a creative that states no language is not."""
        lang = self.lang
        if not lang:
            return False
        return lang in languages or lang.split("-", 1)[0] in languages or any(
            lang.startswith(x + "-") for x in languages)


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
    bundle: str = ""  # the advertised app's store id (an app-install campaign), checked against `bapp`; '' for none

    @property
    def active(self) -> bool:
        return self.status == "active"

    def budget_today(self, spent_before_today: int) -> int:
        """The day's budget (micros): the daily budget, or what the lifetime total leaves of it, 0 once spent."""
        if not self.total_budget:
            return self.daily_budget
        return max(min(self.daily_budget, self.total_budget - spent_before_today), 0)

    def idle_reason(self, now_utc: dt.datetime) -> str:
        """Why this valid campaign will not bid now or later ('' when it may): a marketer should hear it when
        setting it, not find it out from its empty delivery."""
        if not self.active:
            return "it is paused (status)"
        if self.end < _local_day_hour(self.timezone, now_utc)[0]:
            return f"its flight ended on {self.end.isoformat()} (flight.end)"
        if not self.daily_budget:
            return "its daily budget is 0 (budget.daily)"
        return ""

    def local_day(self, now: float) -> str:
        """The campaign's date (ISO) at unix time `now`, in its time zone."""
        return _local_day_hour(self.timezone, dt.datetime.fromtimestamp(now, dt.UTC))[0].isoformat()

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
            **({"bundle": self.bundle} if self.bundle else {}),
            "currency": self.currency,
            "status": self.status,
            "budget": {"daily": money_text(self.daily_budget), "total": money_text(self.total_budget)},
            "flight": {"start": self.start.isoformat(), "end": self.end.isoformat(), "timezone": self.timezone},
            "dayparting": sorted(self.hours),
            "goal": {
                "type": self.goal,
                "value_per_click": money_text(self.value_per_click),
                "value_per_conversion": money_text(self.value_per_conversion),
                "max_bid_cpm": money_text(self.max_bid_cpm),
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
                _creative_doc(c) for c in self.creatives
            ],
            **({"version": self.version} if self.version else {}),
        }


def idle_warnings(campaigns: list[Campaign], now_utc: dt.datetime | None = None) -> list[str]:
    """One line per campaign that will not bid, saying why."""
    now_utc = now_utc or dt.datetime.now(dt.UTC)
    return [f"warning: campaign {c.id} is valid but will not bid: {why}"
            for c in campaigns if (why := c.idle_reason(now_utc))]


def _creative_doc(c: Creative) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": c.id, "type": c.kind, "w": c.w, "h": c.h, "cat": list(c.cats), "adm": c.adm,
                           "mimes": list(c.mimes)}
    if c.kind in ("video", "audio"):
        doc["protocol"], doc["duration"] = c.protocol, c.duration
    if c.kind == "video":
        doc["linearity"] = c.linearity
    if c.lang:
        doc["lang"] = c.lang
    if c.apis or c.kind in ("video", "audio"):  # a video's `[]` must stay said: left out, its VAST would be read again
        doc["apis"] = list(c.apis)
    if c.attr:
        doc["attr"] = list(c.attr)
    return doc


_local: dict[tuple[str, dt.datetime], tuple[dt.date, int]] = {}
_PLAIN_HTTP = re.compile(r"http:(//|\\/\\/)", re.IGNORECASE).search  # also as JSON writes it in a native adm: http:\/\/


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


class _Several(ConfigError):
    """Several problems found in one read: each bad element of a list, each unknown field of an object."""

    def __init__(self, each: list[ConfigError]) -> None:
        super().__init__(each[0].field, each[0].message)
        self.each = each


def _raise_all(errors: list[ConfigError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise _Several(errors)


class _Problems:
    """Every problem of one campaign document, so a marketer fixes them all in one pass, not one per run."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def check(self, read: Callable[[], Any], fallback: Any = None) -> Any:
        """`read()`'s value; `fallback` once its problem(s) are noted."""
        try:
            return read()
        except _Several as e:
            self.found.extend(e.each)
        except ConfigError as e:
            self.found.append(e)
        return fallback

    def add(self, field: str, message: str) -> None:
        self.found.append(ConfigError(field, message))


def _get(doc: dict, key: str, path: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in doc or doc[key] is None:
        if default is ...:
            raise ConfigError(path + key, "is required")
        return default
    v = doc[key]
    if isinstance(v, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        quote = " (in YAML, quote values like NO or ON)" if kind is str else ""  # `lang: no` is Norwegian
        raise ConfigError(path + key, f"must be {_kind_name(kind)}, not a boolean{quote}")
    if not isinstance(v, kind):
        quote = ", not a number: put it in quotes" if kind is str and isinstance(v, int | float) else ""  # id: 001
        raise ConfigError(path + key, f"must be {_kind_name(kind)}{quote}")
    return v


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "an array", bool: "true or false"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _money(doc: dict, key: str, path: str, default: Any = ...) -> int:
    if isinstance(doc.get(key), bool):
        raise ConfigError(path + key, "must be an amount like 250 or 2.75, not a boolean")
    v = _get(doc, key, path, (int, float, str), default)
    try:
        micros = to_micros(v)
    except AmountTooLarge:
        raise ConfigError(path + key, f"must be at most {MAX_MONEY:,}") from None
    except ValueError:
        raise ConfigError(path + key, f"{v!r} is not an amount: write it like 250 or 2.75") from None
    if micros < 0:
        raise ConfigError(path + key, "must be >= 0")
    if micros > MAX_MONEY * MICROS:
        raise ConfigError(path + key, f"must be at most {MAX_MONEY:,}")
    if not is_whole_micros(v):
        raise ConfigError(path + key, f"{v!r} has more than 6 decimal places: amounts are kept to the micro")
    return micros


def _no_unknown(doc: dict, schema: str, where: str | None = None) -> None:
    """Refuse every field the schema does not have, suggesting the one that was probably meant."""
    known = FIELDS[schema]
    errors = []
    for key in doc:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"the fields here are {', '.join(sorted(known))}"
            if schema == "" and key in MESSAGE_KEYS:
                hint = "this is a config-topic message; the file takes campaign documents (`campaign show --json`)"
            nested = [inner + str(key) for inner, fields in FIELDS.items() if inner.endswith(".") and key in fields]
            if schema == "" and nested:  # `daily` at the top where `budget.daily` was meant
                hint = f"it belongs inside an object: {' or '.join(nested)}"
            errors.append(ConfigError(f"{schema if where is None else where}{key}", f"is not a campaign field; {hint}"))
    _raise_all(errors)


def _date(doc: dict, key: str, path: str) -> dt.date:
    v = doc.get(key)
    if type(v) is dt.date:  # YAML reads an unquoted 2026-01-31 as a date
        return v
    if isinstance(v, str) and DATE.match(v) and v[10:11] in ("T", "t", " "):  # a date-time
        raise ConfigError(path + key, f"{v!r} is not a date: a flight runs whole days in flight.timezone, so write "
                                      f"the date alone, like {v[:10]}")
    if not isinstance(v, str) or not DATE.fullmatch(v):
        raise ConfigError(path + key, f"{v!r} is not a date: write it like 2026-01-31")
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        raise ConfigError(path + key, f"{v!r} is not a date of the calendar: write it like 2026-01-31") from None


def _str_set(doc: dict, key: str, path: str, pattern: re.Pattern[str] | None = None) -> frozenset[str]:
    vals = _get(doc, key, path, list, [])
    errors = []
    for i, v in enumerate(vals):
        if isinstance(v, bool):  # YAML reads unquoted yes/no/on/off as booleans
            errors.append(ConfigError(f"{path}{key}[{i}]",
                                      "must be a string, not a boolean (in YAML, quote values like NO or ON)"))
        elif not isinstance(v, str) or not v:
            errors.append(ConfigError(f"{path}{key}[{i}]", "must be a non-empty string"))
        elif pattern and not pattern.fullmatch(v):
            errors.append(ConfigError(f"{path}{key}[{i}]", f"{v!r} is not a valid value (expected e.g. "
                                                          f"{EXAMPLES.get(pattern, 'IAB1 or IAB1-2')})"))
    _raise_all(errors)
    return frozenset(vals)


def _int_set(doc: dict, key: str, path: str, lo: int, hi: int) -> frozenset[int]:
    vals = _get(doc, key, path, list, [])
    errors = []
    for i, v in enumerate(vals):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            hint = f" (write {int(v)}, without quotes)" if isinstance(v, str) and v.isascii() and v.isdigit() else ""
            errors.append(ConfigError(f"{path}{key}[{i}]", f"must be an integer from {lo} to {hi}{hint}"))
    _raise_all(errors)
    return frozenset(vals)


def _id(doc: dict, path: str) -> str:
    cid = _get(doc, "id", path, str)
    if not ID.fullmatch(cid):
        raise ConfigError(path + "id", f"{cid!r} must be 1-64 letters, digits or _.:-, starting with a letter or digit")
    return cid


def _choice(doc: dict, key: str, path: str, default: str, allowed: frozenset[str], refusal: str) -> str:
    value = _get(doc, key, path, str, default)
    if value not in allowed:
        raise ConfigError(path + key, f"{value!r} {refusal}" if refusal.startswith("is") else refusal)
    return value


def _creative(raw: Any, i: int, p: _Problems) -> Creative | None:
    path = f"creatives[{i}]."
    if not isinstance(raw, dict):
        p.add(f"creatives[{i}]", "must be an object")
        return None
    before = len(p.found)
    p.check(lambda: _no_unknown(raw, "creatives[].", path))
    cid = p.check(lambda: _id(raw, path), "")
    kind = p.check(lambda: _choice(raw, "type", path, "banner", KINDS, f"must be one of {', '.join(sorted(KINDS))}"))
    w, h = p.check(lambda: _get(raw, "w", path, int, 0)), p.check(lambda: _get(raw, "h", path, int, 0))
    if w is None or h is None:  # already named: a size that is no integer
        w, h = w or 0, h or 0
    elif w < 0 or h < 0:
        p.add(path + ("w" if w < 0 else "h"), "must be >= 0")
    elif w > MAX_INT or h > MAX_INT:
        p.add(path + ("w" if w > MAX_INT else "h"), f"must be at most {MAX_INT:,}")
    elif kind == "banner" and (w <= 0 or h <= 0):
        p.add(path + ("w" if w <= 0 else "h"), "banner creatives need positive w and h")
    adm = p.check(lambda: _get(raw, "adm", path, str, ""))
    if adm is not None and not adm.strip():  # blank markup would be served as an empty ad
        p.add(path + "adm", "is required: the ad markup or VAST/native document")
    elif kind in ("video", "audio") and adm and (problem := vast.markup_problem(adm)):
        p.add(path + "adm", problem)
    elif kind == "banner" and adm and vast.protocol(adm):  # a VAST served as a banner's HTML shows nothing
        p.add(path + "type", f"is banner{'' if 'type' in raw else ' (not given)'}, but adm is VAST/DAAST markup: "
                             "set type to video or audio")
    cats = p.check(lambda: tuple(sorted(_str_set(raw, "cat", path, IAB_CAT))), ())
    mimes = p.check(lambda: tuple(sorted({m.lower() for m in _str_set(raw, "mimes", path)})), ())  # no case
    lang = p.check(lambda: _lang(raw, path), "")
    apis = p.check(lambda: _codes(raw, "apis", path, "API framework codes (e.g. 2 for VPAID 2.0, 5 for MRAID 2)"), ())
    attr = p.check(lambda: _codes(raw, "attr", path, "creative attribute codes (e.g. 6 for in-banner video)"), ())
    native = p.check(lambda: _native(adm, path)) if kind == "native" and adm else None
    protocol, duration, linearity = _playback(raw, path, kind, adm or "", p)
    if len(p.found) > before:
        return None
    mimes = mimes or (vast.mimes(adm) if kind in ("video", "audio") else ())
    if "apis" not in raw and kind in ("video", "audio"):
        apis = vast.apis(adm)
    return Creative(cid, kind, w, h, cats, adm, mimes, protocol, duration, linearity, lang, native,
                    _PLAIN_HTTP(adm) is None, apis, attr, banner_types(adm) if kind == "banner" else ())


def banner_types(adm: str) -> tuple[int, ...]:
    """The OpenRTB banner ad types (`banner.btype`) a banner's markup is: 3 when it runs JavaScript (a script
    element, or a javascript: URL), 4 when it loads an iframe.  A plain image or text banner is neither."""
    low = adm.lower()
    return tuple(t for t, found in ((3, "<script" in low or "javascript:" in low), (4, "<iframe" in low)) if found)


def _codes(raw: dict, key: str, path: str, what: str) -> tuple[int, ...]:
    """A list of AdCOM codes (positive integers; 500 and up are exchange-specific), each once, in order."""
    values = _get(raw, key, path, list, [])
    if any(type(v) is not int or not 0 < v <= MAX_INT for v in values):
        raise ConfigError(path + key, f"must be a list of {what}")
    return tuple(sorted(set(values)))


def _lang(raw: dict, path: str) -> str:
    lang = _get(raw, "lang", path, str, "").lower()
    if lang and not LANG.fullmatch(lang):
        raise ConfigError(path + "lang", f"{lang!r} is not a language tag (e.g. en or en-GB)")
    return lang


def _native(adm: str, path: str) -> NativeCreative:
    try:
        return parse_native_creative(adm)
    except NativeError as e:
        raise ConfigError(path + "adm", f"{e} (a native creative's adm is a Native 1.2 response)") from None


def _playback(raw: dict, path: str, kind: str | None, adm: str, p: _Problems) -> tuple[int, int, int]:
    """(protocol, duration, linearity) of a video or audio creative: as the document states, else as its markup
    (a VAST URL as `adm` states nothing, so the campaign must, to bid where players ask)."""
    for key in ("protocol", "duration", "linearity"):
        if raw.get(key) is not None and kind not in (("video",) if key == "linearity" else ("video", "audio")):
            p.add(path + key, f"is for {'video' if key == 'linearity' else 'video and audio'} creatives only")
    if kind not in ("video", "audio"):
        return 0, 0, 0
    return (
        p.check(lambda: _code(raw, "protocol", path, 100, partial(vast.protocol, adm),
                              "must be an OpenRTB protocol code (e.g. 7 for VAST 4.0)"), 0),
        p.check(lambda: _code(raw, "duration", path, 86_400, partial(vast.duration, adm),
                              "must be the ad's length in seconds"), 0),
        p.check(lambda: _code(raw, "linearity", path, 2, partial(vast.linearity, adm) if kind == "video" else int,
                              "must be 1 (linear, in-stream) or 2 (non-linear, overlay)"), 0),
    )


def _code(raw: dict, key: str, path: str, hi: int, from_markup: Callable[[], int], refusal: str) -> int:
    """A playback code the document states, else the one its markup states (0: unknown)."""
    value = _get(raw, key, path, int, 0) or from_markup()
    if not 0 <= value <= hi:
        raise ConfigError(path + key, refusal)
    return value


def _countries(raw: dict, path: str) -> frozenset[str]:
    countries = _str_set(raw, "countries", path)
    _raise_all([ConfigError(path + "countries", f"{c!r} is not an ISO-3166-1 alpha-3 code, as OpenRTB uses "
                                                "(e.g. USA, GBR, DEU for Germany)")
                for c in sorted(countries) if c not in COUNTRIES])
    return countries


def _targeting(doc: dict, p: _Problems) -> Targeting | None:
    raw = p.check(lambda: _get(doc, "targeting", "", dict, {}))
    if raw is None:
        return None
    path = "targeting."
    p.check(lambda: _no_unknown(raw, path))
    deals, deal_only = p.check(lambda: _str_set(raw, "deals", path)), p.check(lambda: _get(raw, "deal_only", path, bool, False))
    if deal_only and deals == frozenset():
        p.add(path + "deal_only", "needs at least one id in targeting.deals: otherwise the campaign never bids")
    return Targeting(
        countries=p.check(lambda: _countries(raw, path)),
        regions=p.check(lambda: frozenset(r.lower() for r in _str_set(raw, "regions", path))),  # no case
        cities=p.check(lambda: frozenset(c.lower() for c in _str_set(raw, "cities", path))),
        device_types=p.check(lambda: _int_set(raw, "device_types", path, 1, 8)),
        os=p.check(lambda: frozenset(o.lower() for o in _str_set(raw, "os", path, NOT_BLANK))),
        domains=p.check(lambda: frozenset(d.lower() for d in _str_set(raw, "domains", path, DOMAIN))),  # no case
        categories=p.check(lambda: _str_set(raw, "categories", path, IAB_CAT)),
        deals=deals,
        deal_only=deal_only,
    )


def parse_campaign(doc: Any) -> Campaign:
    """Validate one campaign document; raise ConfigError naming the first bad field, with `problems` listing every
    problem (a marketer fixes them all in one pass, not one per run)."""
    if not isinstance(doc, dict):
        raise ConfigError("campaign", "must be an object")
    p = _Problems()
    p.check(lambda: _no_unknown(doc, ""))
    for part in ("budget", "flight", "goal", "frequency_cap"):
        if isinstance(doc.get(part), dict):
            p.check(partial(_no_unknown, doc[part], part + "."))
    cid = p.check(lambda: _id(doc, ""))
    currency = p.check(lambda: _choice(doc, "currency", "", "USD", CURRENCIES,
                                       f"is not supported; use one of {', '.join(sorted(CURRENCIES))}"))
    status = p.check(lambda: _choice(doc, "status", "", "active", frozenset({"active", "paused"}),
                                     "must be 'active' or 'paused'"))
    daily, total = _budget(doc, p)
    start, end, tz = _flight(doc, p)
    gtype, vpc, vpa, max_bid = _goal(doc, p)
    per_hour, per_day = _frequency_cap(doc, p)
    advertiser = p.check(lambda: _advertiser(doc))
    bundle = p.check(lambda: _bundle(doc))
    creatives = _creatives(doc, p)
    hours = p.check(lambda: _int_set(doc, "dayparting", "", 0, 23))
    targeting = _targeting(doc, p)
    version = p.check(lambda: _version(doc))
    if p.found:
        first = p.found[0]
        err = ConfigError(first.field, first.message)
        err.problems = [f"{e.field}: {e.message}" for e in p.found]
        raise err
    assert targeting is not None and creatives is not None  # each is None only with a problem found
    return Campaign(
        id=cid, advertiser=advertiser, currency=currency, status=status, daily_budget=daily, total_budget=total,
        start=start, end=end, timezone=tz, hours=hours, goal=gtype, value_per_click=vpc, value_per_conversion=vpa,
        max_bid_cpm=max_bid, freq_per_hour=per_hour, freq_per_day=per_day, targeting=targeting, creatives=creatives,
        version=version, bundle=bundle,
    )


def _budget(doc: dict, p: _Problems) -> tuple[Any, Any]:
    budget = p.check(lambda: _get(doc, "budget", "", dict))
    if budget is None:
        return None, None
    daily = p.check(lambda: _money(budget, "daily", "budget."))
    total = p.check(lambda: _money(budget, "total", "budget.", 0))
    if daily is not None and total and total < daily:
        p.add("budget.total", "must be >= budget.daily (or 0 for no total cap)")
    return daily, total


def _flight(doc: dict, p: _Problems) -> tuple[Any, Any, Any]:
    flight = p.check(lambda: _get(doc, "flight", "", dict, {}), {})
    start = p.check(lambda: _date(flight, "start", "flight.") if "start" in flight else dt.date(2000, 1, 1))
    end = p.check(lambda: _date(flight, "end", "flight.") if "end" in flight else dt.date(2999, 12, 31))
    if start and end and end < start:
        p.add("flight.end", "must not be before flight.start")
    return start, end, p.check(lambda: _zone(flight))


def _zone(flight: dict) -> str:
    tz = _get(flight, "timezone", "flight.", str, "UTC")
    if tz not in _zones():  # also "localtime", which is each host's own zone, and "posixrules" or "right/..."
        raise ConfigError("flight.timezone", f"{tz!r} is not an IANA time zone (e.g. Europe/Berlin)")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a zone directory, such as "America"
        raise ConfigError("flight.timezone", f"{tz!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    return tz


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    """The IANA zones a campaign may keep its clock in: the same on every host, so not "localtime" (each host's own)
    nor "Factory" (no zone at all)."""
    return frozenset(z for z in available_timezones()
                     if z not in ("Factory", "localtime") and not z.startswith(("posix/", "right/")))


def _goal(doc: dict, p: _Problems) -> tuple[Any, Any, Any, Any]:
    goal = p.check(lambda: _get(doc, "goal", "", dict))
    if goal is None:
        return None, None, None, None
    gtype = p.check(lambda: _choice(goal, "type", "goal.", "cpc", GOALS, "must be 'cpc' or 'cpa'"))
    vpc = p.check(lambda: _money(goal, "value_per_click", "goal.", 0))
    vpa = p.check(lambda: _money(goal, "value_per_conversion", "goal.", 0))
    if gtype == "cpc" and vpc == 0:
        p.add("goal.value_per_click", "must be > 0 for a cpc goal")
    if gtype == "cpa" and vpa == 0:
        p.add("goal.value_per_conversion", "must be > 0 for a cpa goal")
    max_bid = p.check(lambda: _money(goal, "max_bid_cpm", "goal.", 10))
    if max_bid == 0:
        p.add("goal.max_bid_cpm", "must be > 0: it is the highest CPM the campaign may bid")
    return gtype, vpc, vpa, max_bid


def _frequency_cap(doc: dict, p: _Problems) -> tuple[Any, Any]:
    cap = p.check(lambda: _get(doc, "frequency_cap", "", dict, {}), {})
    per_hour = p.check(lambda: _count(cap, "per_hour"))
    per_day = p.check(lambda: _count(cap, "per_day"))
    if per_hour is not None and per_day and per_hour > per_day:
        p.add("frequency_cap.per_hour", f"{per_hour} is more than per_day ({per_day}), which would hold first")
    return per_hour, per_day


def _count(cap: dict, name: str) -> int:
    n = _get(cap, name, "frequency_cap.", int, 0)
    if n < 0:
        raise ConfigError("frequency_cap." + name, "must be >= 0 (0 means no cap)")
    if n > MAX_INT:
        raise ConfigError("frequency_cap." + name, f"must be at most {MAX_INT:,} (0 means no cap)")
    return n


def _advertiser(doc: dict) -> str:
    advertiser = _get(doc, "advertiser", "", str)
    if not advertiser.strip():
        raise ConfigError("advertiser", "is required: the advertiser's domain, sent to exchanges as adomain")
    if not DOMAIN.fullmatch(advertiser):
        raise ConfigError("advertiser", f"{advertiser!r} is not a domain: write it as exchanges read adomain, "
                                        "like shop.example (no https:// or path)")
    return advertiser


def _version(doc: dict) -> int:
    """The marketer's own revision number of the campaign, kept as given (0: none)."""
    version = _get(doc, "version", "", int, 0)
    if not 0 <= version <= MAX_INT:
        raise ConfigError("version", f"must be an integer from 0 to {MAX_INT:,}: your own revision number")
    return version


def _bundle(doc: dict) -> str:
    """The advertised app's store id: a package name (com.example.game), an App Store number, a CTV store's id."""
    bundle = _get(doc, "bundle", "", str, "")
    if bundle and not APP_ID.fullmatch(bundle):
        raise ConfigError("bundle", f"{bundle!r} is not an app store id: write it as exchanges list it in bapp, like "
                                    "com.example.game or 1234567890 (no spaces, no https://)")
    return bundle


def _creatives(doc: dict, p: _Problems) -> tuple[Creative, ...] | None:
    creatives_raw = p.check(lambda: _get(doc, "creatives", "", list))
    if creatives_raw is None:
        return None
    if not creatives_raw:
        p.add("creatives", "needs at least one creative")
    creatives = [_creative(c, i, p) for i, c in enumerate(creatives_raw)]
    first: dict[str, int] = {}
    for i, c in enumerate(creatives):
        if c is not None and c.id in first:
            p.add(f"creatives[{i}].id", f"{c.id!r} is already the id of creatives[{first[c.id]}]; "
                                        "creative ids must be unique within a campaign")
        elif c is not None:
            first[c.id] = i
    return tuple(c for c in creatives if c is not None)


def config_campaign(value: bytes | None) -> Campaign:
    """The campaign a config-topic message sets: its "campaign" document (a bare document is read as one).

    Raises ConfigError when the message sets none: a tombstone, not JSON, not an object, or an invalid campaign.
    Bidders, workers and the `campaign` commands all read the topic through this one gate.
    """
    if value is None:
        raise ConfigError("message", "is a tombstone (no value); a campaign is stopped by pausing it")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ConfigError("message", "is not JSON") from None
    if not isinstance(doc, dict):
        raise ConfigError("message", "must be a JSON object")
    return parse_campaign(doc.get("campaign", doc))


def load_campaign_docs(path: Path) -> list[Any]:
    """Read a JSON or YAML file (`-`: standard input) holding one campaign, a list, or {"campaigns": [...]}.

    Raises ConfigError (field "file") for anything that is not such a document: unreadable, not JSON or YAML, empty.
    """
    if str(path) == "-" and sys.stdin is None:  # started with standard input closed (cron, some CI runners)
        raise ConfigError("file", "is standard input, which is closed; name the campaign file instead of -")
    try:
        text = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file", "does not exist") from None
    except IsADirectoryError:
        raise ConfigError("file", "is a directory; name the campaign file in it") from None
    except OSError as e:
        raise ConfigError("file", f"cannot be read: {e.strerror or e}") from None
    text = text.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, as some editors save
    data = _decode(text, yaml=path.suffix.lower() in (".yaml", ".yml") or str(path) == "-" and text.lstrip()[:1] not in b"[{")
    if isinstance(data, dict) and "campaigns" in data:
        beside = sorted(str(k) for k in data if k != "campaigns")
        if beside:
            raise ConfigError("file", f"has {', '.join(beside)} beside \"campaigns\"; the file holds campaigns only")
        data = data["campaigns"]
    if isinstance(data, dict):
        data = [data]
    if data is None:
        raise ConfigError("file", "is empty")
    if not isinstance(data, list):
        raise ConfigError("file", "must hold a campaign object, a list of them, or {\"campaigns\": [...]}")
    if not data:
        raise ConfigError("file", "holds no campaigns")
    return data


def _decode(text: bytes, yaml: bool) -> Any:
    try:
        if not (yaml and text[:2] in (b"\xff\xfe", b"\xfe\xff")):  # YAML also reads UTF-16 that starts with a BOM
            text.decode("utf-8")
    except UnicodeDecodeError as e:
        line = text.count(b"\n", 0, e.start) + 1
        raise ConfigError("file", f"is not UTF-8 text (byte {e.start + 1}, line {line}); save it as UTF-8") from None
    if not yaml:
        try:  # the standard library's parser: orjson keeps the last of two equal keys without a word
            return json.loads(text, object_pairs_hook=_once_each, parse_constant=_no_constant) if text.strip() else None
        except json.JSONDecodeError as e:
            hint = "" if text.lstrip()[:1] in (b"[", b"{") else " (a YAML file needs a .yaml or .yml name)"
            raise ConfigError("file", f"is not valid JSON: {e}{hint}") from None
        except (ValueError, RecursionError) as e:
            raise ConfigError("file", f"is not valid JSON: {e}") from None
    import yaml as pyyaml

    try:
        return pyyaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a safe loader)
    except ValueError as e:  # a value the loader cannot construct (an explicit !!timestamp of 2026-02-30)
        raise ConfigError("file", f"is not valid YAML: {e}") from None
    except pyyaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "nesting depth" in problem:  # libyaml's own limit, where the pure-Python parser recurses
            raise ConfigError("file", "is nested too deeply to be a campaign file") from None
        if "another document" in problem and mark is not None:  # `---` between campaigns: valid YAML, several documents
            raise ConfigError("file", f"holds several YAML documents (the second starts at line {mark.line + 1}); put the "
                                      "campaigns in one list, each starting with '- ', not apart with ---") from None
        raise ConfigError("file", f"is not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise ConfigError("file", "is nested too deeply to be a campaign file") from None


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once: of two, one would silently win (a budget 100 times the other)."""
    doc = dict(pairs)
    if len(doc) < len(pairs):  # some key came twice: name the first
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"{key!r} is given twice in one object; keep one")
            seen.add(key)
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """A safe YAML loader that reads a campaign file as a marketer means it.

    YAML 1.1, which PyYAML speaks, reads 012 as 10 (octal), 1:30 as 90 (base 60) and 0x10 as 16, and turns an unquoted
    2026-02-30 into an error deep in the parser: here only plain decimals are numbers (012 is 12), dates stay text
    for the campaign's own check to name the field, and a key given twice in one mapping is an error.
    """
    import yaml as pyyaml

    # libyaml's parser where it is built in: the pure-Python one takes minutes over a file of 20,000 campaigns
    base = getattr(pyyaml, "CSafeLoader", pyyaml.SafeLoader)
    int_tag, float_tag = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
    dropped = {int_tag, float_tag, "tag:yaml.org,2002:timestamp"}

    class CampaignLoader(base):  # type: ignore[misc,valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, pyyaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    if not isinstance(key, str | int | float | bool):  # unhashable: the base class refuses it
                        continue
                    if key in seen:
                        raise pyyaml.constructor.ConstructorError(None, None, f"{key!r} is given twice in one mapping",
                                                                  key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep)

    CampaignLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in dropped]
        for first, resolvers in base.yaml_implicit_resolvers.items()}
    CampaignLoader.add_implicit_resolver(int_tag, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
    CampaignLoader.add_implicit_resolver(
        float_tag, re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"), list("-+0123456789."))
    CampaignLoader.add_constructor(int_tag, lambda loader, node: int(loader.construct_scalar(node), 10))
    return CampaignLoader


def parse_campaigns(docs: list[Any]) -> list[Campaign]:
    """Validate every campaign of a file; one ConfigError lists every problem (each as campaigns[i] (id).field: ...).

    Campaign ids must be unique: of two with one id, one would silently replace the other.
    """
    out: list[Campaign] = []
    problems: list[str] = []
    first: dict[str, int] = {}
    for i, doc in enumerate(docs):
        raw_id = doc.get("id") if isinstance(doc, dict) else None
        cid = raw_id if isinstance(raw_id, str) and ID.fullmatch(raw_id) else None
        name = f"campaigns[{i}]" + (f" ({cid})" if cid else "")
        if cid and cid in first:
            problems.append(f"{name}.id: {cid!r} is already the id of campaigns[{first[cid]}]")
        elif cid:
            first[cid] = i
        try:
            camp = parse_campaign(doc)
        except ConfigError as e:
            found = getattr(e, "problems", None)
            if not found and e.field == "campaign":  # the document itself, not one of its fields
                problems.append(f"{name}: {e.message}")
            for line in found or ([] if e.field == "campaign" else [f"{e.field}: {e.message}"]):
                problems.append(f"{name}.{line}")
            continue
        if first.get(camp.id) == i:
            out.append(camp)
    if problems:
        raise CampaignsError(problems)
    return out


def campaign_file_error(path: Path, e: ConfigError, outcome: str) -> str:
    """What a command prints when a campaign file is refused: the file, every problem, and what to do."""
    if e.field == "file":
        return f"streambid: {path}: {e.message}. {outcome}; pass a JSON or YAML campaign file (see README, Campaigns)."
    problems = getattr(e, "problems", None) or [str(e)]
    return (f"streambid: {path}: {len(problems)} problem(s):\n" + "\n".join("  " + p for p in problems)
            + f"\n{outcome}; fix the field(s) named above and run again.")


def load_campaigns(path: Path) -> list[Campaign]:
    """Load and validate every campaign in a file; errors name the campaign index and field."""
    return parse_campaigns(load_campaign_docs(path))
