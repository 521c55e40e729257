"""OpenRTB 2.6 bid request view (2.5 accepted).

The bid path reads only a handful of fields, so the request is decoded once
with orjson and copied into small slotted objects.  Every type the bidder
relies on is checked here, so later stages never meet a surprise and a bad
request gets a 400 that names the field.  Raw user ids, IPs and device ids are
replaced here by salted hashes: nothing downstream sees them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import orjson

from bidder.keyed import blake2b_key
from bidder.native import NativeError, NativeRequest, parse_native_request

AUCTION_FIRST_PRICE = 1
AUCTION_SECOND_PRICE = 2
DEFAULT_TMAX_MS = 200
MAX_IMPS = 64


class BadRequest(ValueError):
    """A request the bidder refuses with HTTP 400; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class LengthFloors(NamedTuple):
    """Floors by creative length (2.6 `durfloors`, or `mincpmpersec`) of a video or audio object or a deal."""

    ranges: tuple[tuple[int, int, float], ...] = ()  # (mindur, maxdur, bidfloor); a bound of 0: unbounded
    per_second: float = 0.0  # CPM per second of the creative

    def floor(self, seconds: int, otherwise: float) -> float:
        """The floor of a creative `seconds` long (0: not known), `otherwise` where these floors say nothing of
        it.  Of overlapping ranges the highest applies; a length not known could be any, so the highest that
        could apply does; per second, a length not known has no floor to bid at (inf)."""
        if self.ranges:
            hits = [f for lo, hi, f in self.ranges
                    if not seconds or ((not lo or seconds >= lo) and (not hi or seconds <= hi))]
            if not seconds:
                return max([*hits, otherwise])
            return max(hits) if hits else otherwise
        if self.per_second:
            return self.per_second * seconds if seconds else math.inf
        return otherwise


@dataclass(slots=True)
class Deal:
    id: str
    floor: float
    cur: str
    at: int | None
    wseat: tuple[str, ...]
    wadomain: frozenset[str] = frozenset()  # advertiser domains allowed on the deal (lower case); empty: any
    floors: LengthFloors | None = None  # the deal's floors by creative length, if it states them
    stated: bool = True  # whether the deal states its own `bidfloor` (else it keeps the impression's)


class Media(NamedTuple):
    """One media object an impression offers, with what a creative must meet to fill it.

    `protocols`, durations and `linearity` are video and audio rules (0 or empty: not stated); `native` is the
    parsed `native.request` of a native object.  A named tuple: one is built per impression on the bid path.
    """

    kind: str  # "banner" | "video" | "native" | "audio"
    sizes: tuple[tuple[int, int], ...] = ()
    mimes: tuple[str, ...] = ()
    protocols: tuple[int, ...] = ()
    minduration: int = 0
    maxduration: int = 0
    rqddurs: tuple[int, ...] = ()
    linearity: int = 0
    native: NativeRequest | None = None
    floors: LengthFloors | None = None  # video and audio: floors by creative length, if the object states them
    api: tuple[int, ...] = ()  # API frameworks the placement supports; one not listed is not supported
    battr: tuple[int, ...] = ()  # creative attributes it blocks
    btype: tuple[int, ...] = ()  # banner ad types it blocks (3 JavaScript, 4 iframe)

    @property
    def limits(self) -> tuple:
        """The API frameworks and blocked attributes as one hashable key."""
        return (self.kind, self.api, self.battr, self.btype)

    @property
    def plays(self) -> tuple:
        """The video/audio rules as one hashable key; () when there are none."""
        if not (self.protocols or self.minduration or self.maxduration or self.rqddurs or self.linearity):
            return ()
        return (self.kind, self.protocols, self.minduration, self.maxduration, self.rqddurs, self.linearity)


@dataclass(slots=True)
class Imp:
    id: str
    kind: str  # "banner" | "video" | "native" | "audio"
    sizes: tuple[tuple[int, int], ...]
    floor: float
    floorcur: str
    deals: tuple[Deal, ...]
    private_auction: bool
    tagid: str
    pos: int
    instl: bool
    media: tuple[Media, ...] = ()  # every media object offered (a multi-format imp has several), `kind`'s first
    exp: int = 0  # seconds the exchange may take from the auction to the impression; 0: not stated
    multiplier: float = 1.0  # billable impressions one purchase counts as (`qty.multiplier`, DOOH); 1: one
    secure: bool = False  # the markup must load over HTTPS only
    by_length: bool = False  # a media object or a deal states floors by creative length

    @property
    def video_mimes(self) -> tuple[str, ...]:
        return self.media[0].mimes if self.media and self.kind == "video" else ()

    def formats(self) -> tuple[Media, ...]:
        """Every media object offered, the first one (`kind`) first."""
        return self.media


@dataclass(slots=True, frozen=True)
class Privacy:
    coppa: bool = False
    gdpr: bool = False
    consent: str = ""
    us_privacy: str = ""
    gpp: str = ""
    gpp_sid: tuple[int, ...] = ()
    dnt: bool = False  # device.dnt: the browser's Do Not Track


@dataclass(slots=True)
class BidRequest:
    id: str
    imps: tuple[Imp, ...]
    at: int
    tmax: int
    cur: tuple[str, ...]
    bcat: frozenset[str]
    badv: frozenset[str]
    bapp: frozenset[str]
    wseat: frozenset[str]
    bseat: frozenset[str]
    is_app: bool
    domain: str  # site.domain or app.bundle/domain: what targeting matches on
    publisher: str
    cats: tuple[str, ...]
    device_type: int
    os: str
    ua: str
    country: str
    region: str
    city: str
    utcoffset: int  # minutes, from device.geo.utcoffset
    user_key: str  # salted hash of user/device id, "" when none or not allowed
    privacy: Privacy
    schain_complete: bool | None = None
    test: bool = False  # test mode: the auction is not billable (its notices move no money and no caps)
    acat: frozenset[str] = frozenset()  # allowed advertiser categories; empty: all
    cattax: int = 1  # the taxonomy of bcat and acat (1: IAB Content Category Taxonomy 1.0, the one creatives use)
    wlang: frozenset[str] = frozenset()  # allowed creative languages (ISO-639-1 and BCP-47, lower case); empty: all


# -- small typed getters -----------------------------------------------------


def _obj(parent: dict, key: str, path: str) -> dict:
    v = parent.get(key)
    if v is None:
        return {}
    if type(v) is not dict:
        raise BadRequest("bad_type", f"{path}{key} must be an object")
    return v


def _str(parent: dict, key: str, path: str, default: str = "") -> str:
    v = parent.get(key, default)
    if v is None:
        return default
    if type(v) is not str:
        raise BadRequest("bad_type", f"{path}{key} must be a string")
    return v


def _int(parent: dict, key: str, path: str, default: int = 0) -> int:
    v = parent.get(key, default)
    if v is None:
        return default
    if type(v) is not int:
        raise BadRequest("bad_type", f"{path}{key} must be an integer{_beyond_64_bits(v)}")
    return v


def _beyond_64_bits(v: object) -> str:
    """The reason a whole number in the JSON is still refused: JSON decoding reads one past 64 bits as a float."""
    return " within 64 bits" if type(v) is float and abs(v) >= 2**63 else ""


def _num(parent: dict, key: str, path: str, default: float = 0.0) -> float:
    v = parent.get(key, default)
    if v is None:
        return default
    t = type(v)
    if t is float or t is int:
        if v < 0 or v != v or v > 1e9:
            raise BadRequest("bad_value", f"{path}{key} must be a finite non-negative number")
        return float(v)
    raise BadRequest("bad_type", f"{path}{key} must be a number")


_is_str = str.__instancecheck__  # a JSON string is always exactly str
_NO_STRINGS: frozenset[str] = frozenset()


def _strs(parent: dict, key: str, path: str) -> tuple[str, ...]:
    v = parent.get(key)
    if v is None:
        return ()
    if type(v) is not list or not all(map(_is_str, v)):
        raise BadRequest("bad_type", f"{path}{key} must be an array of strings")
    return tuple(v)


def _str_set(parent: dict, key: str, path: str) -> frozenset[str]:
    return frozenset(_strs(parent, key, path)) if key in parent else _NO_STRINGS


def _ints(parent: dict, key: str, path: str) -> tuple[int, ...]:
    v = parent.get(key)
    if v is None:
        return ()
    if type(v) is not list or any(type(x) is not int for x in v):
        raise BadRequest("bad_type", f"{path}{key} must be an array of integers")
    return tuple(v)


def _flag(parent: dict, key: str, path: str, unknown: bool = False) -> bool:
    """A 0/1 field; a value OpenRTB has not defined (yet) is tolerated (2.6 section 2.6) and read as `unknown`,
    which callers choose on the safe side (a COPPA flag of 2 restricts)."""
    v = _int(parent, key, path, 0)
    if v == 0:
        return False
    return True if v == 1 else unknown


# -- parts ---------------------------------------------------------------------


def _banner(banner: dict, bp: str) -> Media:
    sizes: list[tuple[int, int]] = []
    w, h = _int(banner, "w", bp), _int(banner, "h", bp)
    if w > 0 and h > 0:
        sizes.append((w, h))
    fmts = banner.get("format")
    if fmts is not None:
        if type(fmts) is not list:
            raise BadRequest("bad_type", f"{bp}format must be an array")
        for i, f in enumerate(fmts):
            if type(f) is not dict:
                raise BadRequest("bad_type", f"{bp}format[{i}] must be an object")
            fw, fh = f.get("w"), f.get("h")
            if type(fw) is not int or type(fh) is not int:  # the path is formatted only for the error
                fw, fh = _int(f, "w", f"{bp}format[{i}]."), _int(f, "h", f"{bp}format[{i}].")
            if fw > 0 and fh > 0 and (fw, fh) not in sizes:  # a size listed twice is one size (and one feature)
                sizes.append((fw, fh))
    return Media("banner", tuple(sizes), api=_ints(banner, "api", bp), battr=_ints(banner, "battr", bp),
                 btype=_ints(banner, "btype", bp))


def _player(kind: str, obj: dict, p: str, sizes: tuple[tuple[int, int], ...] = ()) -> Media:
    """A video or audio object: MIME types, protocols, durations (and for video, linearity)."""
    lo, hi = _int(obj, "minduration", p), _int(obj, "maxduration", p)
    # MIME types have no case (RFC 2045); a 2.5-era `protocol` (one, deprecated) stands in for absent `protocols`
    protocols = _ints(obj, "protocols", p) or ((_int(obj, "protocol", p),) if obj.get("protocol") else ())
    return Media(kind, sizes, tuple(m.lower() for m in _strs(obj, "mimes", p)), protocols, max(lo, 0), max(hi, 0),
                 _ints(obj, "rqddurs", p), _int(obj, "linearity", p) if kind == "video" else 0,
                 floors=_length_floors(obj, p), api=_ints(obj, "api", p), battr=_ints(obj, "battr", p))


def _length_floors(obj: dict, path: str) -> LengthFloors | None:
    """`durfloors` or `mincpmpersec` of a video, audio or deal object; None when it states neither."""
    raw, per_second = obj.get("durfloors"), obj.get("mincpmpersec")
    if raw is None and per_second is None:
        return None
    if raw is not None and type(raw) is not list:
        raise BadRequest("bad_type", f"{path}durfloors must be an array")
    per_second = _num(obj, "mincpmpersec", path)
    if not raw and not per_second:
        return None
    ranges = []
    for i, d in enumerate(raw or ()):
        dp = f"{path}durfloors[{i}]."
        if type(d) is not dict:
            raise BadRequest("bad_type", f"{dp[:-1]} must be an object")
        ranges.append((max(_int(d, "mindur", dp), 0), max(_int(d, "maxdur", dp), 0), _num(d, "bidfloor", dp)))
    return LengthFloors(tuple(ranges), per_second)


def _formats(imp: dict, path: str) -> list[Media]:
    """Every media object the impression offers, banner first: a multi-format impression takes any of them."""
    out = []
    if imp.get("banner") is not None:
        out.append(_banner(_obj(imp, "banner", path), path + "banner."))
    if imp.get("video") is not None:
        video, vp = _obj(imp, "video", path), path + "video."
        w, h = _int(video, "w", vp), _int(video, "h", vp)
        out.append(_player("video", video, vp, ((w, h),) if w > 0 and h > 0 else ()))
    unreadable = None
    if imp.get("native") is not None:
        native = _obj(imp, "native", path)
        try:
            out.append(Media("native", native=parse_native_request(native.get("request")),
                             api=_ints(native, "api", path + "native."), battr=_ints(native, "battr", path + "native.")))
        except NativeError as e:
            unreadable = BadRequest("bad_native", f"{path}native.request: {e}")
    if imp.get("audio") is not None:
        out.append(_player("audio", _obj(imp, "audio", path), path + "audio."))
    if unreadable is not None and not out:  # with other media, the impression is still offered in those
        raise unreadable
    if not out:
        raise BadRequest("no_media", f"{path[:-1]} has no banner, video, native or audio object")
    return out


def _deals(imp: dict, path: str, floor: float, floorcur: str) -> tuple[tuple[Deal, ...], bool]:
    """The deals on offer; a deal that states no floor of its own keeps the impression's (floor and currency)."""
    pmp = _obj(imp, "pmp", path)
    if not pmp:
        return (), False
    pp = path + "pmp."
    raw = pmp.get("deals")
    if raw is None:
        raw = []
    if type(raw) is not list:
        raise BadRequest("bad_type", f"{pp}deals must be an array")
    deals = []
    for i, d in enumerate(raw):
        dp = f"{pp}deals[{i}]."
        if type(d) is not dict:
            raise BadRequest("bad_type", f"{dp[:-1]} must be an object")
        did = _str(d, "id", dp)
        if not did:
            raise BadRequest("missing_field", f"{dp}id is required")
        at = d.get("at")
        if at is not None and type(at) is not int:
            raise BadRequest("bad_type", f"{dp}at must be an integer")
        if at is not None and at not in (0, 1, 2, 3) and at < 500:  # undefined yet: first price, as for the request
            at = AUCTION_FIRST_PRICE
        wadomain = frozenset(a.lower() for a in _strs(d, "wadomain", dp))
        by_length = _length_floors(d, dp)
        if d.get("bidfloor") is None and by_length is not None:  # its floors are its own, in its own currency
            deals.append(Deal(did, 0.0, _str(d, "bidfloorcur", dp, "USD") or "USD", at, _strs(d, "wseat", dp),
                              wadomain, by_length, stated=False))
            continue
        if d.get("bidfloor") is None:
            deals.append(Deal(did, floor, floorcur, at, _strs(d, "wseat", dp), wadomain, stated=False))
            continue
        # a deal's currency does not inherit the impression's (2.6 section 3.2.12): stated, or USD
        deals.append(Deal(did, _num(d, "bidfloor", dp), _str(d, "bidfloorcur", dp, "USD") or "USD", at,
                          _strs(d, "wseat", dp), wadomain, by_length))
    return tuple(deals), _flag(pmp, "private_auction", pp, True)  # an undefined value: the narrower reading


def _imp(raw: object, i: int) -> Imp:
    path = f"imp[{i}]."
    if type(raw) is not dict:
        raise BadRequest("bad_type", f"imp[{i}] must be an object")
    iid = _str(raw, "id", path)
    if not iid:
        raise BadRequest("missing_field", f"{path}id is required")
    formats = _formats(raw, path)
    first = formats[0]
    floorcur = _str(raw, "bidfloorcur", path, "USD") or "USD"
    floor = _num(raw, "bidfloor", path)
    deals, private = _deals(raw, path, floor, floorcur)
    banner = raw.get("banner") or {}
    return Imp(
        id=iid,
        kind=first.kind,
        sizes=first.sizes,
        floor=floor,
        floorcur=floorcur,
        deals=deals,
        private_auction=private,
        tagid=_str(raw, "tagid", path),
        pos=_int(banner, "pos", path + "banner.") if type(banner) is dict else 0,
        instl=_flag(raw, "instl", path),
        secure=_flag(raw, "secure", path, True) if "secure" in raw else False,  # unstated: plain HTTP may be assumed
        media=tuple(formats),
        exp=max(_int(raw, "exp", path), 0),
        multiplier=_num(_obj(raw, "qty", path), "multiplier", path + "qty.", 1.0) if "qty" in raw else 1.0,
        by_length=any(m.floors for m in formats) or any(d.floors for d in deals),
    )


_NO_SIGNAL, _DO_NOT_TRACK = Privacy(), Privacy(dnt=True)


def _privacy(req: dict, user: dict, device: dict) -> Privacy:
    dnt = _flag(device, "dnt", "device.", True) if "dnt" in device else False
    regs = req.get("regs")
    if regs is None and user.get("consent") is None and user.get("ext") is None:
        return _DO_NOT_TRACK if dnt else _NO_SIGNAL
    regs = _obj(req, "regs", "")
    rext = _obj(regs, "ext", "regs.")
    # each field at its 2.6 place, else where 2.5 put it (under ext): null, and for strings and lists empty, count as
    # absent, so an exchange that fills both places but leaves the 2.6 one blank is still read
    gdpr, gdpr_path = regs.get("gdpr"), "regs.gdpr"
    if gdpr is None:
        gdpr, gdpr_path = rext.get("gdpr"), "regs.ext.gdpr"
    if type(gdpr) is not int and gdpr is not None:  # 2.5-era senders also write true/false or 1.0
        if type(gdpr) not in (bool, float) or gdpr not in (0, 1):
            raise BadRequest("bad_type", f"{gdpr_path} must be the integer 0 or 1")
        gdpr = int(gdpr)
    consent, consent_path = user.get("consent"), "user.consent"
    if consent is None or consent == "":
        consent, consent_path = _obj(user, "ext", "user.").get("consent") or "", "user.ext.consent"
    if type(consent) is not str:
        raise BadRequest("bad_type", f"{consent_path} must be a string")
    if gdpr is None:  # omitted: unknown (2.6), so a consent string sent is honoured; without one, GDPR is not assumed
        gdpr = 1 if consent else 0
    usp, usp_path = regs.get("us_privacy"), "regs.us_privacy"
    if usp is None or usp == "":
        usp, usp_path = rext.get("us_privacy") or "", "regs.ext.us_privacy"
    if type(usp) is not str:
        raise BadRequest("bad_type", f"{usp_path} must be a string")
    # gpp and gpp_sid each on its own: a gpp at the 2.6 place with its gpp_sid still under ext is read whole
    gpp = _str(regs, "gpp", "regs.") or _str(rext, "gpp", "regs.ext.")
    gpp_sid = _ints(regs, "gpp_sid", "regs.") or _ints(rext, "gpp_sid", "regs.ext.")
    return Privacy(
        coppa=(_flag(regs, "coppa", "regs.", True) if regs.get("coppa") is not None
               else _flag(rext, "coppa", "regs.ext.", True)),
        gdpr=gdpr != 0,  # a value not defined yet: GDPR is taken to apply
        consent=consent,
        us_privacy=usp,
        gpp=gpp,
        gpp_sid=gpp_sid,
        dnt=dnt,
    )


def _device_id(device: dict) -> str:
    """The advertising id, unless the device limits tracking (`lmt`; a value not defined yet limits too) or sends the
    all-zero id a device gives when tracking is denied: that id is every such user at once, never one user."""
    ifa = _str(device, "ifa", "device.")
    if not ifa or not ifa.strip("0-") or _flag(device, "lmt", "device.", True):
        return ""
    return ifa


def hash_id(salt: bytes, raw: str) -> str:
    """Salted, truncated hash: stable enough for frequency caps, useless to re-identify."""
    h = _keyed_id_hash(salt).copy()
    h.update(raw.encode())
    return h.hexdigest()


@lru_cache(maxsize=8)
def _keyed_id_hash(salt: bytes) -> hashlib.blake2b:
    """The keyed hash with its key block absorbed, copied per id (same digest as keying it each time).  A salt over
    64 bytes is hashed down first: keyed with it as it is, BLAKE2b refused every request that carried a user id."""
    return hashlib.blake2b(key=blake2b_key(salt), digest_size=8)


def parse_request(body: bytes, salt: bytes = b"streambid") -> BidRequest:
    """Decode and validate an OpenRTB bid request; raise BadRequest naming the field."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("bad_json", "body is not valid JSON") from None
    if type(req) is not dict:
        raise BadRequest("bad_json", "body must be a JSON object")
    rid = _str(req, "id", "")
    if not rid:
        raise BadRequest("missing_field", "id is required")
    imps = req.get("imp")
    if type(imps) is not list or not imps:
        raise BadRequest("missing_field", "imp must be a non-empty array")
    if len(imps) > MAX_IMPS:
        raise BadRequest("too_many_imps", f"imp has more than {MAX_IMPS} entries")
    site, app = _obj(req, "site", ""), _obj(req, "app", "")
    if site and app:
        raise BadRequest("bad_value", "site and app must not both be present")
    if (site or app) and req.get("dooh"):  # 2.6 3.2.1: a DOOH request has neither
        raise BadRequest("bad_value", f"dooh and {'site' if site else 'app'} must not both be present")
    src, sp = (app, "app.") if app else (site, "site.")
    device = _obj(req, "device", "")
    geo = _obj(device, "geo", "device.")
    user = _obj(req, "user", "")
    publisher = _obj(src, "publisher", sp)
    at = _int(req, "at", "", AUCTION_SECOND_PRICE)
    if at not in (1, 2) and at < 500:  # not defined yet (2.6 section 2.6: tolerate it): priced as first price,
        at = AUCTION_FIRST_PRICE  # where we pay what we bid, the case that can never cost more than the bid
    tmax = _int(req, "tmax", "", DEFAULT_TMAX_MS)
    if tmax < 0:
        raise BadRequest("bad_value", "tmax must be non-negative")
    tmax = tmax or DEFAULT_TMAX_MS  # 0 gives no usable deadline: read it as "not stated"
    # domains have no case (RFC 4343), nor do bundles match by it: targeting's entries are kept lower case too
    domain = ((_str(src, "bundle", sp) or _str(src, "domain", sp)) if app else _str(src, "domain", sp)).lower()
    uid = _str(user, "id", "user.") or _str(user, "buyeruid", "user.") or _device_id(device)
    source = _obj(req, "source", "")
    schain = _obj(source, "schain", "source.") or _obj(_obj(source, "ext", "source."), "schain", "source.ext.")
    parsed = tuple([_imp(x, i) for i, x in enumerate(imps)])
    if len(parsed) > 1 and len({imp.id for imp in parsed}) < len(parsed):
        raise BadRequest("bad_value", "imp ids must be unique within the request (bids name their imp by id)")
    return BidRequest(
        id=rid,
        imps=parsed,
        at=at,
        tmax=tmax,
        cur=_strs(req, "cur", ""),
        bcat=_str_set(req, "bcat", ""),
        badv=frozenset(a.lower() for a in _strs(req, "badv", "")) if "badv" in req else _NO_STRINGS,  # domains: no case
        bapp=frozenset(a.lower() for a in _strs(req, "bapp", "")) if "bapp" in req else _NO_STRINGS,  # store ids: no case
        wseat=_str_set(req, "wseat", ""),
        bseat=_str_set(req, "bseat", ""),
        is_app=bool(app),
        domain=domain,
        publisher=_str(publisher, "id", sp + "publisher."),
        cats=_strs(src, "cat", sp),
        device_type=_int(device, "devicetype", "device."),
        os=_str(device, "os", "device."),
        ua=_str(device, "ua", "device."),
        country=_str(geo, "country", "device.geo."),
        region=_str(geo, "region", "device.geo.").lower(),  # matched without case, as targeting's are kept
        city=_str(geo, "city", "device.geo.").lower(),
        utcoffset=_int(geo, "utcoffset", "device.geo."),
        user_key=hash_id(salt, uid) if uid else "",
        privacy=_privacy(req, user, device),
        schain_complete=(_flag(schain, "complete", "source.schain.") if schain else None),
        test=_flag(req, "test", "", True) if "test" in req else False,
        acat=_str_set(req, "acat", ""),
        cattax=_int(req, "cattax", "", 1) or 1,
        wlang=(frozenset(x.lower() for x in (*_strs(req, "wlang", ""), *_strs(req, "wlangb", "")))
               if "wlang" in req or "wlangb" in req else _NO_STRINGS),
    )
