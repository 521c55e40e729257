"""The simulated market: traffic with a daily shape, hidden click-through rates, market prices.

Everything the bidder must learn or pace against is generated here from a
seed: which contexts come when, how likely each creative is to be clicked
(a hidden logistic model the bidder never sees), what the competition bids,
how late clicks, conversions and notices arrive, and what a conversion is
worth.  Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

SITES = [
    ("news.example", ["IAB12"]), ("sports.example", ["IAB17"]), ("cooking.example", ["IAB8"]),
    ("tech.example", ["IAB19"]), ("travel.example", ["IAB20"]), ("finance.example", ["IAB13"]),
    ("style.example", ["IAB18"]), ("games.example", ["IAB9"]), ("autos.example", ["IAB2"]), ("health.example", ["IAB7"]),
]
APPS = [("com.example.puzzle", ["IAB9"]), ("com.example.weather", ["IAB15"]), ("com.example.runner", ["IAB17"])]
SIZES = [(300, 250), (728, 90), (320, 50), (160, 600)]
GEOS = [("USA", "CA", "San Francisco", -480), ("USA", "NY", "New York", -300), ("GBR", "ENG", "London", 0),
        ("DEU", "BE", "Berlin", 60), ("FRA", "IDF", "Paris", 60)]
DEVICES = [(2, "Windows", "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0"), (4, "iOS", "Mozilla/5.0 (iPhone) Safari/604.1"),
           (4, "Android", "Mozilla/5.0 (Linux; Android 14) Chrome/120.0"), (2, "macOS", "Mozilla/5.0 (Macintosh) Safari/605")]


def traffic_shape(hour: float) -> float:
    """Relative traffic at a local hour: quiet at night, peaks in the evening (mean about 1)."""
    return 0.35 + 0.65 * (1 + math.sin((hour - 10.0) / 24.0 * 2 * math.pi)) + 0.4 * math.exp(-((hour - 20.5) ** 2) / 4.0)


def _stable(seed: int, *parts: Any) -> random.Random:
    """A generator seeded by value, identical in every process (unlike hash() of strings)."""
    return random.Random(zlib.crc32(repr((seed,) + parts).encode()))


@dataclass(slots=True)
class Auction:
    """One impression opportunity as the simulated exchange sees it."""

    body: bytes
    ctx: tuple[str, tuple[int, int], str]  # (domain, size, country): what the hidden model keys on
    market_cpm: float  # the best competing bid, CPM
    first_price: bool
    user: str


class Market:
    """Seeded contexts, hidden CTRs and competing prices."""

    def __init__(self, seed: int = 7, malformed_share: float = 0.0, namespace: str = "") -> None:
        """`namespace` prefixes every site domain and app bundle in the requests (not in `Auction.ctx`), so the
        campaigns of one run can target its traffic alone on a broker that other campaigns share."""
        self.seed = seed
        self.rng = random.Random(seed)  # the users and the exchange's timing: clicks, conversions, billing delays
        # the requests draw from a stream of their own, so what a bidder wins (and the clicks and bills drawn for it)
        # never changes which requests follow: strategies played on copies of one market are offered the same auctions
        self._traffic = _stable(seed, "traffic")
        self.malformed_share = malformed_share
        self.namespace = namespace
        self._n = 0
        self._site_effect = {d: _stable(seed, "site", d).gauss(0, 0.5) for d, _ in SITES + APPS}
        self._size_effect = {s: _stable(seed, "size", s).gauss(0, 0.3) for s in SIZES}
        self._price_mu = {d: math.log(_stable(seed, "price", d).uniform(0.6, 2.5)) for d, _ in SITES + APPS}

    def true_ctr(self, creative: str, ctx: tuple[str, tuple[int, int], str]) -> float:
        """The hidden click probability of `creative` in a context (stable per seed)."""
        domain, size, country = ctx
        affinity = _stable(self.seed, "cross", creative, domain).gauss(0, 0.6)
        quality = _stable(self.seed, "creative", creative).gauss(0, 0.3)
        z = -6.2 + self._site_effect.get(domain, 0) + self._size_effect.get(size, 0) + affinity + quality
        z += 0.2 if country == "USA" else 0.0
        return 1 / (1 + math.exp(-z))

    def public_domain(self, domain: str) -> str:
        """The domain or bundle as the requests carry it."""
        return f"{self.namespace}.{domain}" if self.namespace else domain

    def domains(self) -> list[str]:
        """Every site domain and app bundle the requests may carry."""
        return [self.public_domain(d) for d, _ in SITES + APPS]

    def auction(self, now: float) -> Auction:
        """The next bid request at simulated time `now` (unix seconds)."""
        r = self._traffic
        self._n += 1
        is_app = r.random() < 0.25
        domain, cats = r.choice(APPS if is_app else SITES)
        w, h = r.choice(SIZES)
        country, region, city, offset = r.choice(GEOS)
        dtype, os_, ua = r.choice(DEVICES)
        user = f"u{r.randrange(20000)}"
        first = r.random() < 0.3
        market = math.exp(self._price_mu[domain] + r.gauss(0, 0.6)) * (1.3 if (w, h) == (300, 250) else 1.0)
        floor = round(market * r.uniform(0.2, 0.6), 2) if r.random() < 0.5 else 0.0
        req: dict[str, Any] = {
            "id": f"r{self._n}",
            "imp": [{"id": "1", "banner": {"w": w, "h": h, "pos": 1}, "bidfloor": floor, "bidfloorcur": "USD",
                     "tagid": f"{domain}/slot{w}x{h}"}],
            "device": {"ua": ua, "devicetype": dtype, "os": os_, "ip": "192.0.2.1",
                       "geo": {"country": country, "region": region, "city": city, "utcoffset": offset}},
            "user": {"id": user},
            "at": 1 if first else 2,
            "tmax": 120,
            "cur": ["USD"],
        }
        name = self.public_domain(domain)
        src = {"id": name, "cat": cats, "publisher": {"id": "pub-" + domain.split(".")[0]}}
        if is_app:
            req["app"] = {**src, "bundle": name}
        else:
            req["site"] = {**src, "domain": name, "page": f"https://{name}/"}
        if r.random() < 0.05:
            req["regs"] = {"gdpr": 1}
            req["user"]["consent"] = ""
        body = orjson.dumps(req)
        if self.malformed_share and r.random() < self.malformed_share:
            body = body[: len(body) // 2]
        return Auction(body, (domain, (w, h), country), market, first, user)

    def click_delay(self) -> float:
        """Seconds from impression to click: most within a minute, a long tail."""
        return self.rng.expovariate(1 / 45.0)

    def conversion_rate(self, creative: str) -> float:
        """The hidden probability that a click on `creative` converts (stable per seed): 2% to 10%."""
        return 0.02 + 0.08 * _stable(self.seed, "cvr", creative).random()

    def conversion_delay(self) -> float:
        """Seconds from click to conversion: minutes to hours (log-normal, median 40 min, within 2 min to 12 h)."""
        return min(max(self.rng.lognormvariate(math.log(2400.0), 1.0), 120.0), 43200.0)

    def conversion_value(self, value_per_conversion: int) -> int:
        """Micros one conversion is worth: the advertiser's stated value, varying per order (mean about that value)."""
        return round(value_per_conversion * self.rng.lognormvariate(-0.125, 0.5))

    def notice_delay(self) -> float:
        """Seconds until the exchange sends the billing notice, or -1 when it never does (about 1%)."""
        return -1.0 if self.rng.random() < 0.01 else self.rng.expovariate(1 / 5.0)
