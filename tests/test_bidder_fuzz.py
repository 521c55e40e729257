"""Whatever bytes arrive, the request parser returns a BidRequest or raises BadRequest, and the engine copes with
whatever the parser accepts.

Two generators feed it: hypothesis, for request-shaped documents whose fields take any JSON type, and a seeded
mutation fuzzer, for volume (structural and byte-level mutations of real requests).  Together they throw well
over 100,000 bodies; the count is asserted so the test cannot silently shrink.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import random
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bidder.campaigns import load_campaigns, parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.openrtb import BadRequest, BidRequest, parse_request
from bidder.server import inflate
from models.snapshot import ModelSnapshot
from tests.helpers import REQUEST, campaign

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [orjson.loads(p.read_bytes()) for p in sorted((ROOT / "loadtest" / "examples").glob("*.json"))]
SEEDS: list[dict[str, Any]] = [*EXAMPLES, REQUEST]
MUTATED_BODIES = 110_000
NOW = 1_780_000_000.0


def _engine() -> BidEngine:
    camps = load_campaigns(ROOT / "deploy" / "campaigns.example.json") + [
        parse_campaign(campaign(frequency_cap={"per_hour": 1}, targeting={})),
        parse_campaign(campaign(id="c2", targeting={"deals": ["d1"], "deal_only": True})),
    ]
    return BidEngine(EngineConfig(secret=b"k", explore_below=50), camps, ModelSnapshot.empty(), sink=lambda *a: None,
                     clock=lambda: NOW, rng=random.Random(3))


class Checker:
    """Counts bodies and outcomes; any exception other than BadRequest fails the test with the body that caused it."""

    def __init__(self) -> None:
        self.engine = _engine()
        self.bodies = self.accepted = self.bids = 0
        self.reasons: dict[str, int] = {}

    def __call__(self, body: bytes) -> None:
        self.bodies += 1
        try:
            req = parse_request(body)
        except BadRequest as e:
            assert e.reason and e.detail and "\n" not in e.detail
            self.reasons[e.reason] = self.reasons.get(e.reason, 0) + 1
            return
        except Exception as e:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"parse_request raised {type(e).__name__}: {e} on body {body[:300]!r}") from e
        assert isinstance(req, BidRequest)
        self.accepted += 1
        try:
            out = self.engine.bid(req, "fuzz", math.inf)
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"engine.bid raised {type(e).__name__}: {e} on body {body[:300]!r}") from e
        assert out.status in (200, 204)
        if out.status == 200:
            self.bids += 1
            resp = orjson.loads(out.body)
            assert resp["id"] == req.id and all(b["price"] > 0 for b in resp["seatbid"][0]["bid"])


# -- random JSON ---------------------------------------------------------------------------------

_STRINGS = ["", "0", "1", "-1", "USD", "EUR", "banner", "IAB1", "IAB1-2", "${AUCTION_PRICE}", "\u0000", "\u202e",
            "é", "🦀", "a" * 300, "null", "true", "1e999", " ", "\\", '"']
_NUMBERS: list[Any] = [0, 1, -1, 2, 3, 500, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 0.5, -0.0, 1e-300, 1e300, 1.7e308,
                       -1e9, 1e9 + 1, 99999999999]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.1:
        return None
    if r < 0.2:
        return rng.random() < 0.5
    if r < 0.4:
        return rng.choice(_NUMBERS) if rng.random() < 0.5 else rng.randint(-(2**40), 2**40)
    if r < 0.5:
        return rng.uniform(-1e6, 1e6)
    if r < 0.7:
        if rng.random() < 0.5:
            return rng.choice(_STRINGS)
        return "".join(chr(rng.choice((rng.randint(32, 126), rng.randint(0x80, 0xD7FF)))) for _ in range(rng.randint(0, 12)))
    if depth > 3:
        return []
    if r < 0.85:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["id", "w", "h", "banner", "video", "native", "format", "bidfloor", "deals", "at", "gdpr", "ext", "x"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _containers(node: Any, out: list) -> None:
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            _containers(v, out)
    elif isinstance(node, list):
        out.append(node)
        for v in node:
            _containers(v, out)


def mutate_tree(doc: dict[str, Any], rng: random.Random) -> Any:
    """1-4 structural edits at random places: replace, delete, add, duplicate, empty, wrap."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 4)):
        nodes: list = []
        _containers(doc, nodes)
        node = rng.choice(nodes)
        if isinstance(node, dict):
            op = rng.random()
            if node and op < 0.5:
                node[rng.choice(list(node))] = random_value(rng)
            elif node and op < 0.7:
                del node[rng.choice(list(node))]
            elif op < 0.9:
                node[rng.choice(["id", "imp", "tmax", "cur", "regs", "user", "pmp", "ext", "bidfloorcur", "q"])] = \
                    random_value(rng)
            elif node:
                key = rng.choice(list(node))
                node[key] = [node[key]] if rng.random() < 0.5 else {"ext": node[key]}
        elif node:
            i = rng.randrange(len(node))
            op = rng.random()
            if op < 0.5:
                node[i] = random_value(rng)
            elif op < 0.7:
                del node[i]
            elif op < 0.9:
                node.append(copy.deepcopy(node[i]))
            else:
                node.clear()
    if rng.random() < 0.02:
        return rng.choice([[], "x", 1, None, [doc]])
    return doc


def mutate_bytes(body: bytes, rng: random.Random) -> bytes:
    b = bytearray(body)
    op = rng.random()
    if op < 0.3:
        return bytes(b[: rng.randrange(len(b) + 1)])
    if op < 0.6:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if op < 0.8:
        i = rng.randrange(len(b) + 1)
        return bytes(b[:i]) + rng.randbytes(rng.randint(1, 16)) + bytes(b[i:])
    if op < 0.9:
        return rng.randbytes(rng.randint(0, 64))
    depth = rng.choice((10, 500, 1100))
    return b"[" * depth + b"]" * depth


def mutated_bodies(n: int, seed: int = 20260301):
    rng = random.Random(seed)
    for _ in range(n):
        doc = rng.choice(SEEDS)
        r = rng.random()
        if r < 0.75:
            yield orjson.dumps(mutate_tree(doc, rng))
        elif r < 0.95:
            yield mutate_bytes(orjson.dumps(doc), rng)
        else:
            yield orjson.dumps(doc)


# -- hypothesis: request-shaped documents with any types ------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def anything(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, sometimes any JSON at all (so some documents get through and reach the engine)."""
    return st.integers(0, 11).flatmap(lambda k: plausible if k else json_values)


sizes = st.fixed_dictionaries({}, optional={"w": anything(st.integers(0, 2000)), "h": anything(st.integers(0, 2000)),
                                            "format": anything(st.lists(st.fixed_dictionaries(
                                                {"w": st.integers(-5, 2000), "h": st.integers(-5, 2000)}), max_size=3))})
deal = st.fixed_dictionaries({"id": anything(st.sampled_from(["d1", "DL-WANDER-OPEN-007", ""]))},
                             optional={"bidfloor": anything(st.floats(0, 100)), "at": anything(st.integers(0, 4)),
                                       "bidfloorcur": anything(st.sampled_from(["USD", "EUR"])),
                                       "wseat": anything(st.lists(st.text(max_size=4), max_size=2))})
imp = st.fixed_dictionaries(
    {"id": anything(st.sampled_from(["1", "2"]))},
    optional={"banner": anything(sizes), "video": anything(sizes), "native": anything(st.just({"request": "{}"})),
              "audio": anything(st.just({})), "bidfloor": anything(st.floats(0, 50)),
              "bidfloorcur": anything(st.sampled_from(["USD", "EUR", ""])), "instl": anything(st.integers(0, 2)),
              "pmp": anything(st.fixed_dictionaries({"deals": st.lists(deal, max_size=3)},
                                                    optional={"private_auction": anything(st.integers(0, 2))}))})
request_doc = st.fixed_dictionaries(
    {"id": anything(st.sampled_from(["r1", "req-2"])), "imp": anything(st.lists(imp, min_size=1, max_size=3))},
    optional={
        "site": anything(st.fixed_dictionaries({}, optional={"domain": anything(st.just("news.example")),
                                                             "cat": anything(st.lists(st.sampled_from(["IAB1", "IAB12"]))),
                                                             "publisher": anything(st.fixed_dictionaries(
                                                                 {"id": anything(st.just("p1"))}))})),
        "app": anything(st.fixed_dictionaries({}, optional={"bundle": anything(st.just("com.example")),
                                                            "domain": anything(st.just("example.com"))})),
        "device": anything(st.fixed_dictionaries({}, optional={
            "devicetype": anything(st.integers(0, 8)), "os": anything(st.just("iOS")), "ifa": anything(st.text(max_size=8)),
            "utcoffset": anything(st.integers(-10**6, 10**6)),
            "geo": anything(st.fixed_dictionaries({}, optional={"country": anything(st.sampled_from(["USA", "GBR"])),
                                                               "utcoffset": anything(st.integers(-10**9, 10**9))}))})),
        "user": anything(st.fixed_dictionaries({}, optional={"id": anything(st.text(max_size=8)),
                                                             "consent": anything(st.text(max_size=8)),
                                                             "ext": anything(st.fixed_dictionaries(
                                                                 {}, optional={"consent": json_values}))})),
        "regs": anything(st.fixed_dictionaries({}, optional={
            "coppa": anything(st.integers(0, 2)), "gdpr": anything(st.integers(0, 2)), "us_privacy": json_values,
            "gpp": json_values, "gpp_sid": anything(st.lists(st.integers(0, 30), max_size=3)),
            "ext": anything(st.fixed_dictionaries({}, optional={"gdpr": json_values, "us_privacy": json_values}))})),
        "at": anything(st.integers(-1, 600)), "tmax": anything(st.integers(-5, 10**6)),
        "cur": anything(st.lists(st.sampled_from(["USD", "EUR"]), max_size=2)),
        "bcat": anything(st.lists(st.sampled_from(["IAB3", "IAB17-26"]), max_size=2)), "badv": json_values,
        "bapp": json_values, "wseat": json_values, "bseat": json_values,
        "source": anything(st.fixed_dictionaries({}, optional={"schain": json_values, "ext": json_values})),
    },
)

HYPOTHESIS = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))


def test_parser_only_returns_a_request_or_raises_bad_request() -> None:
    check = Checker()

    @HYPOTHESIS
    @given(request_doc)
    def structured(doc: dict) -> None:
        check(json.dumps(doc).encode())  # json, not orjson: it writes integers beyond 64 bits too

    @HYPOTHESIS
    @given(st.binary(max_size=200))
    def raw(body: bytes) -> None:
        check(body)

    structured()
    raw()
    for body in mutated_bodies(MUTATED_BODIES):
        check(body)
    assert check.bodies >= 100_000
    # the fuzzer reached both sides and many different refusals, so it exercised more than the JSON decoder
    assert check.accepted > 10_000 and check.bids > 1_000
    assert {"bad_json", "bad_type", "missing_field", "bad_value", "no_media"} <= set(check.reasons)


def test_gzip_bodies_are_inflated_with_a_cap() -> None:
    body = orjson.dumps(REQUEST)
    assert inflate(gzip.compress(body)) == body
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    for bad, reason in ((bomb, "body_too_large"), (gzip.compress(body)[:-12], "bad_gzip"), (b"not gzip", "bad_gzip")):
        try:
            inflate(bad)
        except BadRequest as e:
            assert e.reason == reason
        else:
            raise AssertionError(f"inflate accepted {bad[:20]!r}")
