"""OpenRTB Native 1.2 (Dynamic Native Ads API): read an impression's native request, fit a creative's response to it.

An embedded native response is aligned with the request by asset id: each response asset must carry the id of the
request asset it fills, and every request asset marked `required: 1` must be there.  A creative is written once, so
its asset ids are only labels; here its assets are matched to the request's by kind, type and limits, renumbered,
and the rest of its response (link, trackers, ...) is kept as written.

Pure functions, no I/O.  `parse_native_request` runs on the bid path for every native impression, so it decodes with
orjson into small slotted objects and remembers recent request strings (exchanges send the same few templates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from bidder import vast

ASSET_KINDS = ("title", "img", "video", "data")
REQUEST_CACHE_SIZE = 4096


class NativeError(ValueError):
    """A native request or response that cannot be used; the message names the problem."""


class RequestAsset(NamedTuple):
    """One asset slot of a native request; None means the request does not state that limit.

    A named tuple rather than a frozen dataclass: as immutable, and several times cheaper to build on the bid path.
    """

    id: int
    required: bool
    kind: str  # "title" | "img" | "video" | "data"
    type: int | None = None  # img or data asset type
    max_len: int | None = None  # title.len / data.len: most characters the slot shows
    w: int | None = None  # exact width, unless wmin is given too
    h: int | None = None
    wmin: int | None = None
    hmin: int | None = None
    player: Player | None = None  # a video asset's rules


class Player(NamedTuple):
    """A native video asset's rules (Native 1.2 section 4.5), or what a creative's VAST tag says of the same."""

    mimes: tuple[str, ...] = ()
    minduration: int = 0
    maxduration: int = 0
    protocols: tuple[int, ...] = ()

    def plays(self, ad: Player) -> bool:
        """Whether an ad with `ad`'s MIME types, length (`maxduration`) and protocol (`protocols`) meets these rules;
        what the ad's markup does not state does not meet a rule that asks for it."""
        if self.mimes and ad.mimes and not set(self.mimes).intersection(ad.mimes):
            return False
        length = ad.maxduration
        if (self.maxduration and not 0 < length <= self.maxduration) or (self.minduration and length < self.minduration):
            return False
        return not self.protocols or bool(set(self.protocols).intersection(ad.protocols))


@dataclass(frozen=True, slots=True)
class NativeRequest:
    """One impression's parsed native.request; equal `key`s mean equal requests, so fitted adms can be shared."""

    key: str
    ver: str
    assets: tuple[RequestAsset, ...]
    wrapped: bool = False  # sent as {"native": {...}}, the form before Native 1.1: answered in that form too
    # event -> the tracking methods the request allows for it (`eventtrackers`); None: the request states none
    trackers: dict[int, frozenset[int]] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CreativeAsset:
    """One asset of a creative's response, with what matching needs pulled out; `body` is the asset as written."""

    id: int
    kind: str
    type: int | None = None
    text_len: int | None = None  # characters of title.text / data.value
    w: int | None = None
    h: int | None = None
    body: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    player: Player | None = None  # a video asset: its VAST tag's MIME types, length (as maxduration) and protocol


@dataclass(frozen=True, slots=True)
class NativeCreative:
    """A creative's native response, checked once at campaign load.  Hashable on its adm and parsed assets."""

    adm: str
    wrapped: bool  # the adm was written {"native": {...}}; answers take the request's form
    assets: tuple[CreativeAsset, ...]
    response: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


# --- requests -------------------------------------------------------------------------------------------------------


def parse_native_request(raw: object) -> NativeRequest:
    """From imp.native.request: a JSON string, the request itself or wrapped as {"native": {...}} (Native 1.0/1.1).

    Unknown fields and unknown enumerated values are kept out of the way, not refused (OpenRTB 2.6 §2.6); what the
    bidder cannot read safely (no asset list, an asset without integer id or with no or several media) is refused.
    """
    if type(raw) is dict:  # an object where the string belongs: read, not refused (some exchanges send it so)
        return _parse_request_text(orjson.dumps(raw).decode())
    if not isinstance(raw, str):
        raise NativeError("native.request is not a string (Native 1.1+ sends the request as a JSON string)")
    return _parse_request_text(raw)


@lru_cache(maxsize=REQUEST_CACHE_SIZE)
def _parse_request_text(raw: str) -> NativeRequest:
    """Parse once per distinct request string; a request that fails raises again each time (errors are not kept)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise NativeError("native.request is not valid JSON") from None
    if type(doc) is not dict:
        raise NativeError("native.request is not a JSON object")
    wrapped = "native" in doc and "assets" not in doc
    doc = _unwrap(doc)
    if doc is None:
        raise NativeError('native.request "native" wrapper is not an object')
    assets = doc.get("assets")
    if type(assets) is not list or not assets:
        raise NativeError("native.request assets is not a non-empty array")
    parsed = tuple(_request_asset(a, i) for i, a in enumerate(assets))
    _check_unique_ids(parsed, "native.request")
    ver = doc.get("ver")
    return NativeRequest(key=raw, ver=ver if type(ver) is str else "", assets=parsed, wrapped=wrapped,
                         trackers=_tracking(doc.get("eventtrackers")))


def _tracking(raw: object) -> dict[int, frozenset[int]] | None:
    """What `eventtrackers` allows: event type -> methods.  Entries not readable are passed over (2.6 section 2.6:
    tolerate); a list of none readable allows nothing."""
    if type(raw) is not list:
        return None
    allowed: dict[int, frozenset[int]] = {}
    for t in raw:
        if type(t) is dict and type(t.get("event")) is int and type(t.get("methods")) is list:
            methods = frozenset(m for m in t["methods"] if type(m) is int)
            allowed[t["event"]] = allowed.get(t["event"], frozenset()) | methods
    return allowed


def _unwrap(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The response or request object inside an optional {"native": ...} wrapper; None for a wrapper that is no object."""
    if "native" not in doc or "assets" in doc:
        return doc
    inner = doc["native"]
    return inner if type(inner) is dict else None


def _request_asset(a: object, i: int) -> RequestAsset:
    """One request asset; error messages are built only on failure, as this runs per asset on the bid path."""
    if type(a) is not dict:
        raise NativeError(f"native.request assets[{i}] is not an object")
    aid = a.get("id")
    if type(aid) is not int:
        raise NativeError(f"native.request assets[{i}].id is not an integer")
    required = a.get("required") == 1
    if not any(k in a for k in ASSET_KINDS):  # a media kind not defined yet: nothing fills it, and only a required
        return RequestAsset(aid, required, "unknown")  # one keeps the creative out
    kind, media = _media(a, i, "native.request")
    if kind == "title":
        return RequestAsset(aid, required, kind, None, _req_int(media, "len", i, kind))
    if kind == "data":
        return RequestAsset(aid, required, kind, _req_int(media, "type", i, kind), _req_int(media, "len", i, kind))
    if kind == "img":
        return RequestAsset(
            aid,
            required,
            kind,
            _req_int(media, "type", i, kind),
            None,
            _req_int(media, "w", i, kind),
            _req_int(media, "h", i, kind),
            _req_int(media, "wmin", i, kind),
            _req_int(media, "hmin", i, kind),
        )
    if kind == "video":
        mimes, protocols = media.get("mimes"), media.get("protocols")
        return RequestAsset(aid, required, kind, player=Player(
            tuple(m.lower() for m in mimes if type(m) is str) if type(mimes) is list else (),  # MIME types have no case
            max(_req_int(media, "minduration", i, kind) or 0, 0), max(_req_int(media, "maxduration", i, kind) or 0, 0),
            tuple(p for p in protocols if type(p) is int) if type(protocols) is list else ()))
    return RequestAsset(aid, required, kind)


def _media(a: dict[str, Any], i: int, where: str) -> tuple[str, dict[str, Any]]:
    """The asset's one media object (title, img, video or data); the spec allows exactly one per asset."""
    found = [k for k in ASSET_KINDS if k in a and a[k] is not None]
    if len(found) != 1:
        got = " and ".join(found) if found else "none"
        raise NativeError(f"{where} assets[{i}] must have exactly one of title/img/video/data (has {got})")
    kind = found[0]
    media = a[kind]
    if type(media) is not dict:
        raise NativeError(f"{where} assets[{i}].{kind} is not an object")
    return kind, media


def _req_int(media: dict[str, Any], name: str, i: int, kind: str) -> int | None:
    """An optional integer field: absent or null is None; any other non-integer is refused, not guessed at."""
    v = media.get(name)
    if v is None or type(v) is int:
        return v
    raise NativeError(f"native.request assets[{i}].{kind}.{name} is not an integer")


def _check_unique_ids(assets: tuple[RequestAsset, ...] | tuple[CreativeAsset, ...], where: str) -> None:
    """Ids align response assets with request assets, so a repeated id makes the alignment ambiguous."""
    ids = [a.id for a in assets]
    if len(set(ids)) != len(ids):
        twice = next(x for n, x in enumerate(ids) if x in ids[:n])
        raise NativeError(f"{where} asset id {twice} is used twice (asset ids must be unique)")


# --- creatives ------------------------------------------------------------------------------------------------------


def parse_native_creative(adm: str) -> NativeCreative:
    """From a creative's adm: a Native 1.2 response with embedded assets, {"native": {...}} wrapper or not.

    Checked at campaign load so a broken creative is reported to whoever wrote it, not discovered at bid time.
    """
    if not isinstance(adm, str):
        raise NativeError("native adm must be a JSON string holding a Native 1.2 response")
    try:
        doc = orjson.loads(adm)
    except orjson.JSONDecodeError as e:
        raise NativeError(f"native adm is not valid JSON ({e}); it must be a Native 1.2 response object") from None
    if type(doc) is not dict:
        raise NativeError('native adm must be a JSON object: {"assets": [...], "link": {"url": ...}}')
    wrapped = "native" in doc and "assets" not in doc
    response = _unwrap(doc)
    if response is None:
        raise NativeError('native adm "native" must be an object: {"native": {"assets": [...], "link": {...}}}')
    assets = response.get("assets")
    if type(assets) is not list or not assets:
        raise NativeError(
            'native adm needs an "assets" array with at least one title, img, video or data asset '
            "(assetsurl/dcourl responses cannot be fitted to a request)"
        )
    parsed = tuple(_creative_asset(a, i) for i, a in enumerate(assets))
    _check_unique_ids(parsed, "native adm")
    link = response.get("link")
    if type(link) is not dict or type(link.get("url")) is not str or not link["url"]:
        raise NativeError('native adm needs "link": {"url": "https://..."}, the click-through address')
    return NativeCreative(adm=adm, wrapped=wrapped, assets=parsed, response=response)


def _creative_asset(a: object, i: int) -> CreativeAsset:
    where = f"native adm assets[{i}]"
    if type(a) is not dict:
        raise NativeError(f'{where} must be an object like {{"id": 1, "title": {{"text": "..."}}}}')
    aid = a.get("id")
    if type(aid) is not int:
        raise NativeError(f'{where} needs an integer "id"')
    kind, media = _media(a, i, "native adm")
    where += "." + kind
    if kind == "title":
        return CreativeAsset(aid, kind, text_len=len(_text(media, "text", where, "the headline")), body=a)
    if kind == "data":
        value = _text(media, "value", where, "the text to show")
        return CreativeAsset(aid, kind, type=_creative_int(media, "type", where), text_len=len(value), body=a)
    if kind == "img":
        _text(media, "url", where, "the image address")
        w, h = _creative_int(media, "w", where), _creative_int(media, "h", where)
        if (w is not None and w <= 0) or (h is not None and h <= 0):
            raise NativeError(f"{where} w and h must be positive pixel sizes")
        return CreativeAsset(aid, kind, type=_creative_int(media, "type", where), w=w, h=h, body=a)
    tag = _text(media, "vasttag", where, "the VAST XML document")
    protocol = vast.protocol(tag)
    ad = Player(vast.mimes(tag), 0, vast.duration(tag), (protocol,) if protocol else ())
    return CreativeAsset(aid, kind, body=a, player=ad)


def _text(media: dict[str, Any], name: str, where: str, meaning: str) -> str:
    v = media.get(name)
    if type(v) is not str:
        raise NativeError(f'{where} needs a "{name}" string ({meaning})')
    return v


def _creative_int(media: dict[str, Any], name: str, where: str) -> int | None:
    v = media.get(name)
    if v is None or type(v) is int:
        return v
    raise NativeError(f'{where}.{name} must be a whole number, e.g. "{name}": 3')


# --- fitting a creative to a request --------------------------------------------------------------------------------


def native_fills(creative: NativeCreative, request: NativeRequest) -> tuple[tuple[int, int], ...] | None:
    """Which creative asset fills which request asset, as (request index, creative index) pairs; None when a required
    request asset cannot be filled (the exchange would drop the ad) or nothing can be.  Cheap next to rendering: the
    bid path decides with this and renders only the winner's adm."""
    fills = _assign(creative.assets, request.assets)
    return tuple(fills) if fills else None


def native_adm(creative: NativeCreative, request: NativeRequest,
               fills: tuple[tuple[int, int], ...] | None = None) -> str | None:
    """The adm answering `request`: the creative's assets that fill request assets, renumbered to those assets' ids,
    in request order, with the creative's other response fields.  Its root is the response object itself (Native
    1.1 on), or a {"native": ...} wrapper when the request came so wrapped (the form of 1.0, which its reader expects).

    None when a required request asset cannot be filled (the exchange would drop the ad) or nothing can be filled.
    `fills` is `native_fills`'s answer, when the caller has it already.
    """
    if fills is None:
        fills = native_fills(creative, request)
    if not fills:
        return None
    assets = [_renumbered(creative.assets[ci].body, request.assets[ri].id) for ri, ci in fills]
    response = {k: v for k, v in creative.response.items() if k != "assets"}
    response["assets"] = assets
    allowed = request.trackers
    if allowed is not None and type(response.get("eventtrackers")) is list:  # only the methods the request allows
        kept = [t for t in response["eventtrackers"]
                if type(t) is dict and t.get("method") in allowed.get(t.get("event", -1), ())]
        if kept:
            response["eventtrackers"] = kept
        else:
            del response["eventtrackers"]
    return orjson.dumps({"native": response} if request.wrapped else response).decode()


def _renumbered(body: dict[str, Any], new_id: int) -> dict[str, Any]:
    out: dict[str, Any] = {"id": new_id}
    out.update((k, v) for k, v in body.items() if k != "id")
    return out


def fits(c: CreativeAsset, r: RequestAsset) -> bool:
    """Whether creative asset `c` may fill request asset `r`.

    A request that states a type is filled only by an asset of that type (an untyped image could be a banner shown as
    an icon, untyped text a slogan shown as a price); text must fit `len`; an image must meet wmin/hmin, or equal w/h
    when only those are given (§4.4), and one without a size cannot be shown to.
    """
    if c.kind != r.kind:
        return False
    if r.type is not None and c.type != r.type:
        return False
    if r.max_len is not None and c.text_len is not None and c.text_len > r.max_len:
        return False
    if r.player is not None:
        return r.player.plays(c.player or Player())
    return c.kind != "img" or (_side_fits(c.w, r.w, r.wmin) and _side_fits(c.h, r.h, r.hmin))


def _side_fits(have: int | None, exact: int | None, least: int | None) -> bool:
    """One image side: a minimum when given, else an exact size (a zero or negative size states nothing)."""
    if have is None:
        return least is None and (exact is None or exact <= 0)
    if least is not None:
        return have >= least
    return exact is None or exact <= 0 or have == exact


def _assign(cassets: tuple[CreativeAsset, ...], rassets: tuple[RequestAsset, ...]) -> list[tuple[int, int]] | None:
    """(request index, creative index) pairs sorted by request index, each creative asset used at most once.

    Required request assets are placed first, then optional ones, with augmenting paths (a bipartite matching), so a
    poor early choice never blocks a later required asset.  None when some required asset cannot be placed.
    """
    candidates = [_candidates(cassets, r) for r in rassets]
    owner: dict[int, int] = {}  # creative index -> request index
    for ri, r in enumerate(rassets):
        if r.required and not _augment(ri, candidates, owner, set()):
            return None
    for ri, r in enumerate(rassets):
        if not r.required and candidates[ri]:
            _augment(ri, candidates, owner, set())
    return sorted((ri, ci) for ci, ri in owner.items())


def _candidates(cassets: tuple[CreativeAsset, ...], r: RequestAsset) -> list[int]:
    """Creative assets that fit `r`, best first: same stated type, then same id as written, then creative order."""
    fitting = [i for i, c in enumerate(cassets) if fits(c, r)]
    return sorted(fitting, key=lambda i: (cassets[i].type is None or r.type is None, cassets[i].id != r.id, i))


def _augment(ri: int, candidates: list[list[int]], owner: dict[int, int], seen: set[int]) -> bool:
    """Give request asset `ri` a creative asset, taking a free one if any, else moving a holder to another."""
    for ci in candidates[ri]:
        if ci not in owner:
            owner[ci] = ri
            return True
    for ci in candidates[ri]:
        if ci not in seen:
            seen.add(ci)
            if _augment(owner[ci], candidates, owner, seen):
                owner[ci] = ri
                return True
    return False
