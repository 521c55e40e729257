"""Seeded campaign documents for benchmarks and simulations.

A benchmark with one catch-all campaign measures nothing but the HTTP stack.
These campaigns target the same market `loadtest.traffic` draws requests from
(countries, regions, devices, OS, domains and bundles, site categories, deals),
each with its own mix of restrictions, budgets, dayparting and creatives, so
generated traffic matches some campaigns, is filtered by others, and the
targeting index has real work to do.  Every document passes
`bidder.campaigns.parse_campaign`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

from loadtest.traffic import (
    MARKET_APPS,
    MARKET_BANNER_SIZES,
    MARKET_DEALS,
    MARKET_GEOS,
    MARKET_SITES,
    MARKET_VIDEO_SIZE,
)

TIMEZONES = ("UTC", "America/New_York", "America/Los_Angeles", "Europe/London", "Europe/Berlin", "Asia/Tokyo", "Australia/Sydney")
CREATIVE_CATS = ("IAB1", "IAB2", "IAB3", "IAB8", "IAB13", "IAB17", "IAB18", "IAB19", "IAB20", "IAB22", "IAB22-2", "IAB3-1")
RARE_CATS = ("IAB7-39", "IAB8-18", "IAB9-9")  # categories exchanges often block, so blocks have something to bite on
_BANNER_WEIGHTS = (40, 20, 25, 6, 9)  # same order as MARKET_BANNER_SIZES


def _money(rng: random.Random, lo: float, hi: float) -> float:
    """A price in currency units with whole cents (exact through to_micros)."""
    return round(rng.uniform(lo, hi), 2)


def _creative(rng: random.Random, cid: str, advertiser: str) -> dict[str, Any]:
    r = rng.random()
    cats = [rng.choice(CREATIVE_CATS)]
    if rng.random() < 0.05:
        cats.append(rng.choice(RARE_CATS))
    landing = f"https://{advertiser}/landing?c={cid}"
    if r < 0.80:
        w, h = rng.choices(MARKET_BANNER_SIZES, weights=_BANNER_WEIGHTS)[0]
        adm = f'<a href="{landing}"><img src="https://cdn.{advertiser}/{cid}-{w}x{h}.png" width="{w}" height="{h}"></a>'
        return {"id": cid, "type": "banner", "w": w, "h": h, "cat": cats, "adm": adm}
    if r < 0.92:
        w, h = MARKET_VIDEO_SIZE
        adm = (
            f'<VAST version="4.0"><Ad id="{cid}"><InLine><AdSystem>streambid</AdSystem><AdTitle>{cid}</AdTitle>'
            f"<Creatives><Creative><Linear><Duration>00:00:15</Duration><MediaFiles>"
            f'<MediaFile delivery="progressive" type="video/mp4" width="{w}" height="{h}">'
            f"https://cdn.{advertiser}/{cid}.mp4</MediaFile></MediaFiles></Linear></Creative></Creatives>"
            f"</InLine></Ad></VAST>"
        )
        return {"id": cid, "type": "video", "w": w, "h": h, "cat": cats, "adm": adm, "mimes": ["video/mp4"]}
    native = {
        "ver": "1.2",
        "assets": [
            {"id": 1, "title": {"text": f"Offer {cid}"}},
            {"id": 2, "img": {"type": 3, "url": f"https://cdn.{advertiser}/{cid}-1200x627.png", "w": 1200, "h": 627}},
            {"id": 3, "data": {"type": 2, "value": "Limited time only"}},
        ],
        "link": {"url": landing},
    }
    return {"id": cid, "type": "native", "cat": cats, "adm": orjson.dumps(native).decode()}


def _targeting(rng: random.Random) -> dict[str, Any]:
    t: dict[str, Any] = {}
    countries = sorted({g.country for g in MARKET_GEOS})
    weights = [sum(g.weight for g in MARKET_GEOS if g.country == c) for c in countries]
    if rng.random() < 0.85:
        chosen = sorted({rng.choices(countries, weights)[0] for _ in range(rng.choice((1, 1, 2, 3)))})
        t["countries"] = chosen
        if rng.random() < 0.12:
            regions = [g.region for g in MARKET_GEOS if g.country in chosen]
            t["regions"] = sorted(set(rng.sample(regions, min(len(regions), rng.randint(1, 2)))))
    if rng.random() < 0.35:
        t["device_types"] = rng.choice(([4, 5], [2], [4], [2, 4, 5], [3]))
    if rng.random() < 0.10:
        t["os"] = rng.choice((["ios"], ["android"], ["ios", "android"], ["windows", "macos"]))
    if rng.random() < 0.10:
        sites = [s.domain for s in rng.sample(MARKET_SITES, rng.randint(2, 8))]
        apps = [b for a in rng.sample(MARKET_APPS, rng.randint(0, 3)) for b in (a.android_bundle, a.ios_bundle)]
        t["domains"] = sorted(set(sites + apps))
    if rng.random() < 0.15:
        cats = {s.cat for s in MARKET_SITES} | {a.cat for a in MARKET_APPS}
        t["categories"] = sorted(rng.sample(sorted(cats), rng.randint(1, 3)))
    r = rng.random()
    if r < 0.08:
        t["deals"] = sorted(rng.sample(MARKET_DEALS, rng.randint(1, 3)))
        t["deal_only"] = r < 0.04
    return t


def make_campaign(rng: random.Random, i: int) -> dict[str, Any]:
    """One campaign document, drawn from `rng`."""
    cid = f"c{i:05d}"
    advertiser = f"rival{rng.randint(1, 20)}.example" if rng.random() < 0.1 else f"adv{rng.randint(1, 400)}.example"
    daily = _money(rng, 50, 5000)
    goal: dict[str, Any]
    if rng.random() < 0.8:
        goal = {"type": "cpc", "value_per_click": _money(rng, 0.2, 2.5)}
    else:
        goal = {"type": "cpa", "value_per_conversion": _money(rng, 5, 80)}
    goal["max_bid_cpm"] = _money(rng, 1.0, 25.0)
    doc: dict[str, Any] = {
        "id": cid,
        "advertiser": advertiser,
        "currency": "USD",
        "status": "paused" if rng.random() < 0.05 else "active",
        "budget": {"daily": daily, "total": round(daily * rng.choice((30, 60, 90)), 2) if rng.random() < 0.6 else 0},
        "flight": {"start": "2024-01-01", "end": "2099-12-31", "timezone": rng.choice(TIMEZONES)},
        "goal": goal,
        "targeting": _targeting(rng),
        "creatives": [_creative(rng, f"{cid}-cr{k}", advertiser) for k in range(rng.choice((1, 1, 2, 3)))],
    }
    if rng.random() < 0.03:
        doc["flight"].update(start="2025-01-01", end="2025-06-30")  # over: must never bid
    if rng.random() < 0.15:
        first = rng.randint(5, 10)
        doc["dayparting"] = list(range(first, rng.randint(first + 8, 23) + 1))
    if rng.random() < 0.5:
        doc["frequency_cap"] = {"per_hour": rng.randint(1, 5), "per_day": rng.randint(5, 20)}
    return doc


def make_campaigns(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` campaign documents; the same (n, seed) always gives the same documents."""
    rng = random.Random(seed)
    return [make_campaign(rng, i) for i in range(n)]


def write_campaigns(path: str | Path, n: int, seed: int) -> Path:
    """Write `make_campaigns(n, seed)` as {"campaigns": [...]} JSON, the layout `streambid serve --campaigns` reads."""
    path = Path(path)
    path.write_bytes(orjson.dumps({"campaigns": make_campaigns(n, seed)}, option=orjson.OPT_INDENT_2))
    return path
