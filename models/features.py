"""The one feature function used for both training and serving.

Training events and live bids must map the same request to the same ids, in
every process, so ids come from crc32 of "field=value" (Python's own hash() is
salted per process).  Ids live in [0, 2**20): a fixed space the model can hold
in a plain dict, where rare collisions cost little.

A bounded reverse map id -> "field=value" remembers the names seen most
recently, so explanations can say "domain=news.example" instead of 734221.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from bidder.openrtb import BidRequest, Imp

HASH_BITS = 20
HASH_MASK = (1 << HASH_BITS) - 1
NAME_CAPACITY = 65_536
BIAS_NAME = "bias"

_names: dict[int, str] = {}


def _remember(fid: int, name: str) -> None:
    """Keep the name of `fid`, dropping the oldest names once over capacity (insertion order)."""
    names = _names
    if fid in names:
        if names[fid] != name:  # a collision: the newest name wins
            del names[fid]
            names[fid] = name
        return
    names[fid] = name
    if len(names) > NAME_CAPACITY:
        del names[next(iter(names))]


def hash_name(name: str) -> int:
    """Id of an already formatted "field=value" name."""
    fid = zlib.crc32(name.encode()) & HASH_MASK
    if fid not in _names:
        _remember(fid, name)
    return fid


_feature_ids: dict[tuple[str, type, object], int] = {}  # (field, type, value) -> id: the bid path asks for the same few
FEATURE_ID_CACHE = 262_144


def hash_feature(field: str, value: object) -> int:
    """Id of one categorical feature: deterministic across processes and machines.

    Memoised: formatting and hashing the name costs more than a dict lookup, and a request asks for a
    dozen features whose values repeat.  The key holds the value's type, since 1 == True == 1.0 but
    their names differ.
    """
    key = (field, value.__class__, value)
    try:
        fid = _feature_ids.get(key)
    except TypeError:  # an unhashable value: no memo
        return hash_name(f"{field}={value}")
    if fid is None:
        fid = hash_name(f"{field}={value}")
        if len(_feature_ids) >= FEATURE_ID_CACHE:
            _feature_ids.clear()
        _feature_ids[key] = fid
    return fid


def hash_cross(field_a: str, value_a: object, field_b: str, value_b: object) -> int:
    """Id of the conjunction of two features (e.g. creative x domain)."""
    return hash_name(f"{field_a}={value_a}&{field_b}={value_b}")


def feature_name(fid: int) -> str | None:
    """Readable name of an id if it was seen recently in this process, else None."""
    return _names.get(fid)


def remember_names(names: Iterable[str]) -> None:
    """Register names hashed elsewhere (e.g. in another process) so explanations can show them."""
    for name in names:
        hash_name(name)


BIAS_ID = hash_name(BIAS_NAME)

# -- browser family --------------------------------------------------------------

# Order matters: most user agents claim to be several browsers at once.
_BROWSER_MARKERS = (
    ("bot", "bot"),
    ("spider", "bot"),
    ("Edg", "edge"),
    ("OPR/", "opera"),
    ("Opera", "opera"),
    ("SamsungBrowser", "samsung"),
    ("UCBrowser", "uc"),
    ("Firefox/", "firefox"),
    ("FxiOS", "firefox"),
    ("CriOS", "chrome"),
    ("Chrome/", "chrome"),
    ("MSIE", "ie"),
    ("Trident/", "ie"),
    ("Safari/", "safari"),
)
_BROWSER_CACHE_SIZE = 4096
_browser_cache: dict[str, str] = {}


def browser_family(ua: str) -> str:
    """Coarse browser family from a user agent, by substring markers (cached: few distinct UAs)."""
    family = _browser_cache.get(ua)
    if family is not None:
        return family
    family = "none" if not ua else "other"
    for marker, name in _BROWSER_MARKERS:
        if marker in ua:
            family = name
            break
    if len(_browser_cache) >= _BROWSER_CACHE_SIZE:
        _browser_cache.clear()
    _browser_cache[ua] = family
    return family


# -- request and candidate features ------------------------------------------------


def request_features(req: BidRequest, imp: Imp, exchange: str, hour: int, weekday: int) -> tuple[int, ...]:
    """Hashed ids of the request-level features, computed once per impression.

    hour/weekday are in the user's local time (the caller applies device.geo.utcoffset).
    The bias is not among them: the learner and the snapshot add it themselves.
    """
    h = hash_feature
    feats = [
        h("exchange", exchange),
        h("publisher", req.publisher),
        h("domain", req.domain),
        h("is_app", int(req.is_app)),
        h("media", imp.kind),
        h("slot", imp.tagid),
        h("pos", imp.pos),
        h("instl", int(imp.instl)),
        h("devicetype", req.device_type),
        h("os", req.os.lower()),
        h("browser", browser_family(req.ua)),
        h("country", req.country),
        h("region", f"{req.country}/{req.region}"),
        h("city", f"{req.country}/{req.region}/{req.city}"),
        h("hour", hour),
        h("weekday", weekday),
    ]
    if imp.sizes:
        feats.extend(h("size", f"{w}x{hh}") for w, hh in imp.sizes)
    else:
        feats.append(h("size", "none"))
    return tuple(feats)


def candidate_features(req_feats: tuple[int, ...], hour: int, domain: str, campaign_id: str, creative_id: str) -> tuple[int, ...]:
    """Hashed ids of the features that depend on the candidate creative.

    The crosses let the model learn that a creative does well on one site or at
    one time of day without moving its overall weight.  `req_feats` is part of
    the signature so crosses with other request features can be added later
    without touching callers; the current crosses need only hour and domain.
    """
    creative = f"{campaign_id}/{creative_id}"  # creative ids are unique only within a campaign
    return (
        hash_feature("campaign", campaign_id),
        hash_feature("creative", creative),
        hash_cross("creative", creative, "domain", domain),
        hash_cross("creative", creative, "hour", hour),
    )
