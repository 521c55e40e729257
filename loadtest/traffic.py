"""Seeded OpenRTB 2.6 bid request traffic, the way an exchange would send it.

A load test is only as honest as its traffic: one fixed body exercises one
path through the bidder and lets every cache hit.  `RequestFactory` draws
requests from a skewed market (a few big publishers and many small ones,
device and geo mixes, deals, privacy signals, floors, auction types) plus an
optional share of malformed bodies, so the bidder's filters, parser and
error paths all take their share of the load.  The same seed always gives the
same bodies, so two runs compare like with like.

`MARKET_*` constants are the vocabulary both this module and
`loadtest.campaign_gen` draw from, so generated campaigns can match generated
traffic.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

EXAMPLES_DIR = Path(__file__).with_name("examples")
EXAMPLE_NAMES = ("banner", "expandable", "mobile_app", "video", "pmp_deal", "native")

# -- the market ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Geo:
    country: str  # ISO-3166-1 alpha-3, as OpenRTB carries it
    region: str  # ISO-3166-2 subdivision, without the country prefix
    city: str
    utcoffset: int  # minutes
    weight: float
    zone: str  # privacy regime: "gdpr", "ccpa" or ""


@dataclass(frozen=True, slots=True)
class Device:
    devicetype: int  # OpenRTB device type list: 2 PC, 3 CTV, 4 phone, 5 tablet
    os: str
    make: str
    model: str
    ua: str
    weight: float


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    name: str
    domain: str
    cat: str
    publisher: str
    weight: float


@dataclass(frozen=True, slots=True)
class App:
    id: str
    name: str
    android_bundle: str
    ios_bundle: str  # App Store id, as iOS apps are identified on the wire
    cat: str
    publisher: str
    weight: float


MARKET_GEOS: tuple[Geo, ...] = (
    Geo("USA", "NY", "New York", -240, 9, "ccpa"),
    Geo("USA", "CA", "Los Angeles", -420, 8, "ccpa"),
    Geo("USA", "TX", "Houston", -300, 6, "ccpa"),
    Geo("USA", "IL", "Chicago", -300, 4, "ccpa"),
    Geo("USA", "WA", "Seattle", -420, 3, "ccpa"),
    Geo("USA", "FL", "Miami", -240, 4, "ccpa"),
    Geo("CAN", "ON", "Toronto", -240, 3, ""),
    Geo("CAN", "BC", "Vancouver", -420, 1.5, ""),
    Geo("GBR", "ENG", "London", 60, 5, "gdpr"),
    Geo("GBR", "SCT", "Edinburgh", 60, 1, "gdpr"),
    Geo("DEU", "BE", "Berlin", 120, 3, "gdpr"),
    Geo("DEU", "BY", "Munich", 120, 2.5, "gdpr"),
    Geo("FRA", "IDF", "Paris", 120, 3.5, "gdpr"),
    Geo("ESP", "MD", "Madrid", 120, 2, "gdpr"),
    Geo("NLD", "NH", "Amsterdam", 120, 1.5, "gdpr"),
    Geo("BRA", "SP", "Sao Paulo", -180, 3, ""),
    Geo("MEX", "CMX", "Mexico City", -360, 2, ""),
    Geo("IND", "MH", "Mumbai", 330, 4, ""),
    Geo("JPN", "13", "Tokyo", 540, 3, ""),
    Geo("AUS", "NSW", "Sydney", 600, 2, ""),
)

_CHROME = "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0"
_SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4"
_IOS = f"like Mac OS X) {_SAFARI} Mobile/15E148 Safari/604.1"
MARKET_DEVICES: tuple[Device, ...] = (
    Device(2, "Windows", "", "", f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_CHROME} Safari/537.36", 22),
    Device(2, "Windows", "", "", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0", 4),
    Device(2, "macOS", "Apple", "", f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_SAFARI} Safari/605.1.15", 8),
    Device(2, "Linux", "", "", f"Mozilla/5.0 (X11; Linux x86_64) {_CHROME} Safari/537.36", 1.5),
    Device(4, "iOS", "Apple", "iPhone", f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 {_IOS}", 24),
    Device(4, "Android", "Samsung", "SM-S921B", f"Mozilla/5.0 (Linux; Android 14; SM-S921B) {_CHROME} Mobile Safari/537.36", 18),
    Device(4, "Android", "Google", "Pixel 8", f"Mozilla/5.0 (Linux; Android 14; Pixel 8) {_CHROME} Mobile Safari/537.36", 6),
    Device(5, "iOS", "Apple", "iPad", f"Mozilla/5.0 (iPad; CPU OS 17_4 {_IOS}", 5),
    Device(5, "Android", "Samsung", "SM-X710", f"Mozilla/5.0 (Linux; Android 13; SM-X710) {_CHROME} Safari/537.36", 2.5),
    Device(3, "Android", "Generic", "Smart TV", f"Mozilla/5.0 (Linux; Android 12; Smart TV) {_CHROME} Safari/537.36", 2),
)

# (word, IAB category) pairs: the category a site or app of that kind declares.
_SITE_KINDS = (
    ("news", "IAB12"),
    ("times", "IAB12"),
    ("review", "IAB19"),
    ("kitchen", "IAB8"),
    ("gamer", "IAB9-30"),
    ("travel", "IAB20"),
    ("money", "IAB13"),
    ("style", "IAB18"),
    ("health", "IAB7"),
    ("motors", "IAB2"),
    ("weather", "IAB15-10"),
    ("sports", "IAB17"),
    ("homes", "IAB10"),
    ("parents", "IAB6"),
)
_SITE_PREFIXES = ("harbor", "metro", "summit", "pixel", "garden", "river", "north", "urban", "bright", "quiet", "rapid", "maple")
_TLDS = (".com", ".com", ".com", ".net", ".co.uk", ".de", ".fr", ".org")
_APP_KINDS = (
    ("puzzle", "IAB9-30"),
    ("racer", "IAB9-30"),
    ("solitaire", "IAB9-30"),
    ("weather", "IAB15-10"),
    ("news", "IAB12"),
    ("fitness", "IAB7"),
    ("radio", "IAB1-6"),
    ("shop", "IAB22"),
    ("recipes", "IAB8"),
    ("scores", "IAB17"),
)
_STUDIOS = ("brightpebble", "northloop", "tinyorbit", "greenkite", "lumenworks", "bluecedar", "redfox", "quickmint")


def _zipf(n: int, s: float = 0.9) -> list[float]:
    return [1.0 / (i + 1) ** s for i in range(n)]


def _build_sites(n: int = 80) -> tuple[Site, ...]:
    rng = random.Random(7001)  # fixed: the market is the same for every traffic seed
    names = sorted({(p, k) for p in _SITE_PREFIXES for k in _SITE_KINDS}, key=lambda x: (x[0], x[1][0]))
    rng.shuffle(names)
    weights = _zipf(n)
    out = []
    for i, (prefix, (kind, cat)) in enumerate(names[:n]):
        domain = f"{prefix}{kind}{rng.choice(_TLDS)}"
        out.append(Site(f"site-{1000 + i}", f"{prefix.title()} {kind.title()}", domain, cat, f"pub-{100 + i // 3}", weights[i]))
    return tuple(out)


def _build_apps(n: int = 40) -> tuple[App, ...]:
    rng = random.Random(7002)
    names = [(s, k) for s in _STUDIOS for k in _APP_KINDS]
    rng.shuffle(names)
    weights = _zipf(n)
    out = []
    for i, (studio, (kind, cat)) in enumerate(names[:n]):
        ios = str(rng.randrange(1_000_000_000, 1_999_999_999))
        out.append(
            App(
                f"app-{5000 + i}",
                f"{studio.title()} {kind.title()}",
                f"com.{studio}.{kind}",
                ios,
                cat,
                f"pub-{900 + i // 2}",
                weights[i],
            )
        )
    return tuple(out)


MARKET_SITES = _build_sites()
MARKET_APPS = _build_apps()
MARKET_DEALS: tuple[str, ...] = tuple(
    f"DL-{pub.upper()}-{n:03d}" for pub in dict.fromkeys(s.publisher for s in MARKET_SITES[:24]) for n in (1, 2, 3)
)
MARKET_BANNER_SIZES: tuple[tuple[int, int], ...] = ((300, 250), (728, 90), (320, 50), (160, 600), (300, 600))
MARKET_VIDEO_SIZE = (640, 480)
MARKET_BLOCKED_CATS = ("IAB25", "IAB26", "IAB7-39", "IAB8-18", "IAB9-9", "IAB14-1")
_DESKTOP_SIZES = (((300, 250), 35), ((728, 90), 30), ((160, 600), 12), ((300, 600), 13), ((320, 50), 0))
_MOBILE_SIZES = (((300, 250), 40), ((320, 50), 55), ((300, 600), 5), ((728, 90), 0), ((160, 600), 0))
# Local-hour weights: quiet at night, a lunch bump and an evening peak.
_HOUR_WEIGHTS = (2, 1.2, 0.8, 0.6, 0.6, 0.9, 1.8, 3.2, 4.2, 4.6, 4.8, 5, 5.6, 5.2, 4.8, 4.7, 4.9, 5.4, 6.2, 7, 7.2, 6.4, 4.8, 3.2)
_DAY0_UTC = 1_767_225_600  # 2026-01-01T00:00:00Z: the simulated day request timestamps fall on
_TMAX_CHOICES = ((80, 2), (100, 4), (120, 2), (150, 1), (200, 1))


# -- malformed bodies ------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], random.Random], bytes]


def _truncated(req: dict, rng: random.Random) -> bytes:
    raw = orjson.dumps(req)
    return raw[: rng.randrange(1, len(raw) - 1)]


def _not_json(req: dict, rng: random.Random) -> bytes:
    return b"id=" + req["id"].encode() + b"&imp=banner&w=300&h=250"


def _json_array(req: dict, rng: random.Random) -> bytes:
    return orjson.dumps([req])


def _set(path: tuple[str | int, ...], value: Any) -> Mutation:
    def mutate(req: dict, rng: random.Random) -> bytes:
        node: Any = req
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return orjson.dumps(req)

    return mutate


def _drop(key: str) -> Mutation:
    def mutate(req: dict, rng: random.Random) -> bytes:
        req.pop(key, None)
        return orjson.dumps(req)

    return mutate


def _no_media(req: dict, rng: random.Random) -> bytes:
    for k in ("banner", "video", "native", "audio"):
        req["imp"][0].pop(k, None)
    return orjson.dumps(req)


def _site_and_app(req: dict, rng: random.Random) -> bytes:
    req["site"] = {"id": "site-x", "domain": "both.example"}
    req["app"] = {"id": "app-x", "bundle": "com.both.example"}
    return orjson.dumps(req)


def _bad_banner_w(req: dict, rng: random.Random) -> bytes:
    imp = req["imp"][0]
    imp.pop("video", None)
    imp.pop("native", None)
    imp["banner"] = {"w": "300", "h": 250}
    return orjson.dumps(req)


MALFORMED: dict[str, Mutation] = {
    "truncated_json": _truncated,
    "not_json": _not_json,
    "json_array": _json_array,
    "missing_id": _drop("id"),
    "missing_imp": _drop("imp"),
    "empty_imp": _set(("imp",), []),
    "imp_not_array": lambda req, rng: _set(("imp",), req["imp"][0])(req, rng),
    "floor_as_string": _set(("imp", 0, "bidfloor"), "0.50"),
    "negative_floor": _set(("imp", 0, "bidfloor"), -1.0),
    "banner_w_as_string": _bad_banner_w,
    "no_media": _no_media,
    "site_and_app": _site_and_app,
    "bad_auction_type": _set(("at",), "first"),
    "negative_tmax": _set(("tmax",), -50),
    "bcat_as_string": _set(("bcat",), "IAB25"),
    "bad_gdpr_flag": _set(("regs", "gdpr"), "yes"),
}


# -- the factory ---------------------------------------------------------------------


def _cum(weights: list[float] | tuple[float, ...]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


class RequestFactory:
    """Seeded stream of OpenRTB 2.6 request bodies; `malformed_share` of them deliberately broken.

    Shares are probabilities per request.  `tmax_ms` fixes every request's
    tmax (the load generator passes its deadline); None draws it from a mix.
    """

    def __init__(
        self,
        seed: int,
        malformed_share: float = 0.0,
        *,
        tmax_ms: int | None = None,
        users: int = 100_000,
        app_share: float = 0.35,
        video_share: float = 0.08,
        native_share: float = 0.05,
        pmp_share: float = 0.10,
        coppa_share: float = 0.01,
        gdpr_no_consent_share: float = 0.15,
        usp_opt_out_share: float = 0.10,
        first_price_share: float = 0.8,
        two_imp_share: float = 0.08,
    ) -> None:
        if not 0.0 <= malformed_share <= 1.0:
            raise ValueError("malformed_share must be between 0 and 1")
        self.rng = random.Random(seed)
        self.malformed_share = malformed_share
        self.tmax_ms = tmax_ms
        self.users = max(1, users)
        self.app_share, self.video_share, self.native_share = app_share, video_share, native_share
        self.pmp_share, self.coppa_share = pmp_share, coppa_share
        self.gdpr_no_consent_share, self.usp_opt_out_share = gdpr_no_consent_share, usp_opt_out_share
        self.first_price_share, self.two_imp_share = first_price_share, two_imp_share
        self._geo_cum = _cum([g.weight for g in MARKET_GEOS])
        self._site_cum = _cum([s.weight for s in MARKET_SITES])
        self._app_cum = _cum([a.weight for a in MARKET_APPS])
        self._dev_cum = _cum([d.weight for d in MARKET_DEVICES])
        self._app_dev = [d for d in MARKET_DEVICES if d.devicetype != 2]
        self._app_dev_cum = _cum([d.weight for d in self._app_dev])
        self._hour_cum = _cum(_HOUR_WEIGHTS)
        self._tmax_cum = _cum([w for _, w in _TMAX_CHOICES])
        self._mutations = sorted(MALFORMED)

    # public ---------------------------------------------------------------------

    def sample(self) -> tuple[bytes, str]:
        """Next body and what is wrong with it: "" for a valid request, else the MALFORMED key."""
        req = self.request()
        if self.malformed_share and self.rng.random() < self.malformed_share:
            kind = self.rng.choice(self._mutations)
            return MALFORMED[kind](req, self.rng), kind
        return orjson.dumps(req), ""

    def body(self) -> bytes:
        return self.sample()[0]

    def bodies(self, n: int) -> list[bytes]:
        """A pool of `n` bodies for the load generator to cycle through."""
        return [self.sample()[0] for _ in range(n)]

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield self.body()

    def request(self) -> dict[str, Any]:
        """One valid bid request as a dict (always valid; malformed bodies are derived from these)."""
        rng = self.rng
        geo = self._pick(MARKET_GEOS, self._geo_cum)
        is_app = rng.random() < self.app_share
        if is_app:
            dev = self._pick(self._app_dev, self._app_dev_cum)
        else:
            dev = self._pick(MARKET_DEVICES, self._dev_cum)
        user_idx = int(self.users * rng.random() ** 3)  # a heavy head of frequent users, so caps bite
        req: dict[str, Any] = {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
        req["imp"] = self._imps(dev, is_app)
        if is_app:
            req["app"] = self._app(dev)
        else:
            req["site"] = self._site(dev)
            if rng.random() < self.pmp_share:
                req["imp"][0]["pmp"] = self._pmp(req["imp"][0].get("bidfloor", 0.0), req["site"]["publisher"]["id"])
        req["device"] = self._device(dev, geo, is_app, user_idx)
        req["user"] = {"id": f"u-{(user_idx * 2654435761 + 97) & 0xFFFFFFFFFFFF:012x}"}
        req["at"] = 1 if rng.random() < self.first_price_share else 2
        req["tmax"] = self.tmax_ms if self.tmax_ms is not None else self._pick([t for t, _ in _TMAX_CHOICES], self._tmax_cum)
        req["cur"] = ["USD"]
        req["bcat"] = list(MARKET_BLOCKED_CATS[: rng.randint(2, len(MARKET_BLOCKED_CATS))])
        if rng.random() < 0.3:
            req["badv"] = [f"rival{rng.randint(1, 20)}.example"]
        req["regs"] = self._regs(geo, req["user"])
        req["source"] = self._source(req)
        req["ext"] = {"ts": self._timestamp(geo)}
        return req

    # parts ----------------------------------------------------------------------

    def _pick(self, items, cum: list[float]):
        x = self.rng.random() * cum[-1]
        lo, hi = 0, len(cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cum[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return items[lo]

    def _floor(self, kind: str) -> float:
        if self.rng.random() < 0.1:
            return 0.0
        median = {"banner": 0.6, "video": 5.0, "native": 1.0}[kind]
        return round(median * self.rng.lognormvariate(0.0, 0.6), 2)

    def _imps(self, dev: Device, is_app: bool) -> list[dict[str, Any]]:
        rng = self.rng
        n = 2 if (not is_app and rng.random() < self.two_imp_share) else 1
        imps = []
        for i in range(n):
            r = rng.random()
            if dev.devicetype == 3 or r < self.video_share:
                imp = self._video_imp()
            elif r < self.video_share + self.native_share:
                imp = self._native_imp()
            else:
                imp = self._banner_imp(dev)
            imp = {"id": str(i + 1), **imp, "secure": 1}
            imps.append(imp)
        return imps

    def _banner_imp(self, dev: Device) -> dict[str, Any]:
        table = _DESKTOP_SIZES if dev.devicetype == 2 else _MOBILE_SIZES
        w, h = self._pick([s for s, _ in table], _cum([wt for _, wt in table]))
        banner: dict[str, Any] = {"w": w, "h": h, "pos": self.rng.choice((0, 1, 1, 3))}
        if (w, h) == (300, 250) and self.rng.random() < 0.3:
            banner["format"] = [{"w": 300, "h": 250}, {"w": 336, "h": 280}]
        imp: dict[str, Any] = {"tagid": f"slot-{w}x{h}-{self.rng.randint(1, 4)}", "banner": banner}
        floor = self._floor("banner")
        if floor:
            imp["bidfloor"], imp["bidfloorcur"] = floor, "USD"
        return imp

    def _video_imp(self) -> dict[str, Any]:
        w, h = MARKET_VIDEO_SIZE
        video = {
            "mimes": ["video/mp4", "video/webm"],
            "minduration": 5,
            "maxduration": self.rng.choice((15, 30, 30, 60)),
            "protocols": [2, 3, 5, 6, 7, 8],
            "w": w,
            "h": h,
            "startdelay": self.rng.choice((0, 0, -1)),
            "plcmt": self.rng.choice((1, 1, 2, 4)),
            "linearity": 1,
            "skip": self.rng.choice((0, 1)),
        }
        imp: dict[str, Any] = {"tagid": "player-1", "video": video}
        floor = self._floor("video")
        if floor:
            imp["bidfloor"], imp["bidfloorcur"] = floor, "USD"
        return imp

    def _native_imp(self) -> dict[str, Any]:
        native_req = (
            '{"ver":"1.2","context":1,"plcmttype":1,"assets":[{"id":1,"required":1,"title":{"len":90}},'
            '{"id":2,"required":1,"img":{"type":3,"wmin":600,"hmin":314}},{"id":3,"required":0,"data":{"type":2,"len":140}}]}'
        )
        imp: dict[str, Any] = {"tagid": "feed-native", "native": {"request": native_req, "ver": "1.2"}}
        floor = self._floor("native")
        if floor:
            imp["bidfloor"], imp["bidfloorcur"] = floor, "USD"
        return imp

    def _pmp(self, open_floor: float, publisher: str) -> dict[str, Any]:
        """The publisher's own deals when it has some, else curated deals sold across publishers."""
        rng = self.rng
        own = [d for d in MARKET_DEALS if d.startswith(f"DL-{publisher.upper()}-")] or list(MARKET_DEALS)
        deals = []
        for did in rng.sample(own, rng.choice((1, 1, 2))):
            deal: dict[str, Any] = {
                "id": did,
                "bidfloor": round(max(open_floor, 0.5) * rng.uniform(1.5, 3.0), 2),
                "bidfloorcur": "USD",
            }
            deal["at"] = rng.choice((1, 1, 3))
            if rng.random() < 0.3:
                deal["wseat"] = [f"seat-{rng.randint(1, 50)}"]
            deals.append(deal)
        return {"private_auction": 1 if rng.random() < 0.4 else 0, "deals": deals}

    def _site(self, dev: Device) -> dict[str, Any]:
        s = self._pick(MARKET_SITES, self._site_cum)
        slug = f"{s.name.split()[-1].lower()}/{self.rng.randint(1, 5000)}"
        return {
            "id": s.id,
            "name": s.name,
            "domain": s.domain,
            "page": f"https://{s.domain}/{slug}",
            "cat": [s.cat.split("-")[0], s.cat] if "-" in s.cat else [s.cat],
            "mobile": 1 if dev.devicetype in (4, 5) else 0,
            "publisher": {"id": s.publisher},
        }

    def _app(self, dev: Device) -> dict[str, Any]:
        a = self._pick(MARKET_APPS, self._app_cum)
        ios = dev.os == "iOS"
        return {
            "id": a.id,
            "name": a.name,
            "bundle": a.ios_bundle if ios else a.android_bundle,
            "storeurl": f"https://apps.apple.com/app/id{a.ios_bundle}"
            if ios
            else f"https://play.google.com/store/apps/details?id={a.android_bundle}",
            "cat": [a.cat],
            "publisher": {"id": a.publisher},
        }

    def _device(self, dev: Device, geo: Geo, is_app: bool, user_idx: int) -> dict[str, Any]:
        rng = self.rng
        out: dict[str, Any] = {
            "ua": dev.ua,
            "ip": f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randint(1, 254)}",
            "devicetype": dev.devicetype,
            "os": dev.os,
        }
        if dev.make:
            out["make"] = dev.make
        if dev.model:
            out["model"] = dev.model
        if is_app:
            lmt = rng.random() < 0.05
            out["lmt"] = 1 if lmt else 0
            out["ifa"] = (
                "00000000-0000-0000-0000-000000000000"
                if lmt
                else str(uuid.UUID(int=(user_idx * 0x9E3779B97F4A7C15) % (1 << 128), version=4))
            )
            out["connectiontype"] = rng.choice((2, 5, 6, 7))
        out["geo"] = {"country": geo.country, "region": geo.region, "city": geo.city, "utcoffset": geo.utcoffset, "type": 2}
        return out

    def _regs(self, geo: Geo, user: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        regs: dict[str, Any] = {"coppa": 1 if rng.random() < self.coppa_share else 0}
        if geo.zone == "gdpr":
            regs["gdpr"] = 1
            if rng.random() >= self.gdpr_no_consent_share:
                user["consent"] = "CQ" + "".join(
                    rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(60)
                )
        else:
            regs["gdpr"] = 0
        if geo.zone == "ccpa":
            regs["us_privacy"] = "1YY-" if rng.random() < self.usp_opt_out_share else "1YN-"
        return regs

    def _source(self, req: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        pub = (req.get("site") or req["app"])["publisher"]["id"]
        nodes = [{"asi": "exchange-one.com", "sid": pub, "hp": 1}]
        if rng.random() < 0.3:
            nodes.insert(0, {"asi": "reseller-net.com", "sid": f"r-{rng.randint(1, 99)}", "hp": 1})
        complete = 0 if rng.random() < 0.05 else 1
        return {
            "tid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "schain": {"ver": "1.0", "complete": complete, "nodes": nodes},
        }

    def _timestamp(self, geo: Geo) -> int:
        """Epoch ms on the simulated day, at a local hour drawn from the daily curve (for offline simulators)."""
        hour = self._pick(range(24), self._hour_cum)
        local_s = hour * 3600 + self.rng.randrange(3600)
        return (_DAY0_UTC + local_s - geo.utcoffset * 60) * 1000


# -- files ---------------------------------------------------------------------------


def load_request_file(path: str | Path) -> list[bytes]:
    """Bodies to replay: one JSON request per line, or a file holding one request or a JSON array of them.

    Lines are kept byte for byte (a replay may hold deliberately broken ones);
    blank lines are skipped.
    """
    raw = Path(path).read_bytes()
    try:
        whole = orjson.loads(raw)
    except orjson.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return [orjson.dumps(whole)]
    if isinstance(whole, list) and whole and all(isinstance(x, dict) for x in whole):
        return [orjson.dumps(x) for x in whole]
    bodies = [line.strip() for line in raw.splitlines() if line.strip()]
    if not bodies:
        raise ValueError(f"{path}: no requests in file")
    return bodies


def load_examples() -> dict[str, bytes]:
    """The six example requests shipped with the package, by name."""
    return {name: (EXAMPLES_DIR / f"{name}.json").read_bytes() for name in EXAMPLE_NAMES}
