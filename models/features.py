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
from collections import OrderedDict
from collections.abc import Callable, Iterable

import numpy as np

from bidder.openrtb import BidRequest, Imp

HASH_BITS = 20
HASH_MASK = (1 << HASH_BITS) - 1
NAME_CAPACITY = 65_536
BIAS_NAME = "bias"

# An OrderedDict drops its oldest entry in O(1); a dict's first key, after many deletions from the front, is found
# by scanning past the deleted slots (tens of microseconds per new name once the map is full).
_names: OrderedDict[int, str] = OrderedDict()


def _remember(fid: int, name: str) -> None:
    """Keep the name of `fid`, dropping the least recently hashed names once over capacity."""
    names = _names
    if fid in names:
        if names[fid] != name:  # a collision: the newest name wins
            names[fid] = name
            names.move_to_end(fid)
        return
    names[fid] = name
    if len(names) > NAME_CAPACITY:
        names.popitem(last=False)


def hash_name(name: str) -> int:
    """Id of an already formatted "field=value" name."""
    fid = zlib.crc32(name.encode()) & HASH_MASK
    if _names.get(fid) == name:
        _names.move_to_end(fid)  # in use: the bid path hashes a candidate's crosses each time it prices it
    else:
        _remember(fid, name)
    return fid


_feature_ids: dict[tuple[str, type, object], int] = {}  # (field, type, value) -> id: the bid path asks for the same few
FEATURE_ID_CACHE = 262_144
# The name of every id the memos hand out, for as long as they hand it out.  Memoised ids are not hashed again, so
# in the recency map above a domain on every request would lose its name to the crosses hashed since it was first met.
_feature_names: dict[int, str] = {}


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
        name = f"{field}={value}"
        fid = zlib.crc32(name.encode()) & HASH_MASK
        if len(_feature_ids) >= FEATURE_ID_CACHE:
            _forget_feature_ids()
        _feature_ids[key] = fid
        _feature_names[fid] = name
    return fid


def _forget_feature_ids() -> None:
    """Empty the id memos together (request_features' groups hold ids from this one), names with them."""
    _feature_ids.clear()
    _feature_names.clear()
    for memo in _groups:
        memo.clear()


def hash_cross(field_a: str, value_a: object, field_b: str, value_b: object) -> int:
    """Id of the conjunction of two features (e.g. creative x domain)."""
    return hash_name(f"{field_a}={value_a}&{field_b}={value_b}")


def cross_prefix_crc(field_a: str, value_a: object, field_b: str) -> int:
    """The 32-bit CRC of a cross's name up to its second value: see `crc_shifter`."""
    return zlib.crc32(f"{field_a}={value_a}&{field_b}=".encode())


def crc_shifter(length: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function from CRCs of prefixes to the same CRCs carried over `length` more bytes, for vectors of names.

    CRC-32 is linear: crc(prefix + suffix) = carry(crc(prefix), len(suffix)) ^ crc(suffix), where the carry is
    the CRC register run over len(suffix) zero bytes (what zlib's crc32_combine computes).  So the ids of many
    crosses that share their last value (creative x domain, for every creative) cost one CRC of the value and
    one XOR per name, with the carried prefixes computed once per suffix length.
    """
    zeros = b"\0" * length
    empty = zlib.crc32(zeros)

    def carry(prefixes: np.ndarray) -> np.ndarray:
        return np.fromiter((zlib.crc32(zeros, p) ^ empty for p in prefixes.tolist()), dtype=np.uint32, count=len(prefixes))

    return carry


def feature_name(fid: int) -> str | None:
    """Readable name of an id if the feature memos hand it out or it was hashed recently in this process, else None."""
    return _feature_names.get(fid) or _names.get(fid)


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


_GROUP_CACHE = 4096  # per group of request fields: their ids, for the most recent distinct values
_groups: tuple[dict, ...] = ({}, {}, {}, {}, {}, {})


def _group(which: int, key: tuple, make: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
    memo = _groups[which]
    ids = memo.get(key)
    if ids is None:
        if len(memo) >= _GROUP_CACHE:
            memo.clear()
        ids = memo[key] = make()
    return ids


def request_features(req: BidRequest, imp: Imp, exchange: str, hour: int, weekday: int) -> tuple[int, ...]:
    """Hashed ids of the request-level features, computed once per impression.

    hour/weekday are in the user's local time (the caller applies device.geo.utcoffset).
    The bias is not among them: the learner and the snapshot add it themselves.
    The fields come in groups that repeat together all day (a site, a placement, a device, a place, a time),
    so each group's ids are memoised as a whole: six lookups instead of seventeen hashes.
    """
    h = hash_feature
    ids = (
        _group(0, (exchange, req.publisher, req.domain, req.is_app), lambda: (
            h("exchange", exchange), h("publisher", req.publisher), h("domain", req.domain), h("is_app", int(req.is_app))))
        + _group(1, (imp.kind, imp.tagid, imp.pos, imp.instl), lambda: (
            h("media", imp.kind), h("slot", imp.tagid), h("pos", imp.pos), h("instl", int(imp.instl))))
        + _group(2, (req.device_type, req.os, req.ua), lambda: (
            h("devicetype", req.device_type), h("os", req.os.lower()), h("browser", browser_family(req.ua))))
        + _group(3, (req.country, req.region, req.city), lambda: (
            h("country", req.country), h("region", f"{req.country}/{req.region}"),
            h("city", f"{req.country}/{req.region}/{req.city}")))
        + _group(4, (hour, weekday), lambda: (h("hour", hour), h("weekday", weekday)))
        + _group(5, imp.sizes, lambda: tuple(h("size", f"{w}x{hh}") for w, hh in imp.sizes) if imp.sizes
                 else (h("size", "none"),))
    )
    # two request features hashed to one id are kept once (the bid path and the learner then agree, as they do for
    # a candidate feature hashed onto a request feature's id: both count that one twice)
    return ids if len(set(ids)) == len(ids) else tuple(dict.fromkeys(ids))


def candidate_features(req_feats: tuple[int, ...], hour: int | str, domain: str, campaign_id: str,
                       creative_id: str) -> tuple[int, ...]:
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
