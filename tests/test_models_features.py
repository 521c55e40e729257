"""Feature hashing: same ids for training and serving, in every process."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from bidder.openrtb import parse_request
from models.features import (
    HASH_MASK,
    browser_family,
    candidate_features,
    feature_name,
    hash_feature,
    request_features,
)

CHROME_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def make_request(domain: str = "news.example", sizes: list[tuple[int, int]] | None = None) -> bytes:
    sizes = sizes or [(300, 250)]
    return orjson.dumps(
        {
            "id": "r1",
            "imp": [{"id": "1", "tagid": "slot-a", "banner": {"format": [{"w": w, "h": h} for w, h in sizes], "pos": 1}}],
            "site": {"domain": domain, "publisher": {"id": "pub-9"}},
            "device": {"devicetype": 2, "os": "Windows", "ua": CHROME_UA,
                       "geo": {"country": "FRA", "region": "IDF", "city": "Paris", "utcoffset": 60}},
        }
    )


def features_of(body: bytes) -> tuple[int, ...]:
    req = parse_request(body)
    return request_features(req, req.imps[0], "exchange-x", 14, 2)


def test_training_and_serving_get_the_same_ids() -> None:
    # The learner sees features computed from a logged request; the bidder from the live one.
    assert features_of(make_request()) == features_of(make_request())


def test_ids_are_in_range_and_named() -> None:
    feats = features_of(make_request())
    assert all(0 <= f <= HASH_MASK for f in feats)
    names = {feature_name(f) for f in feats}
    assert "domain=news.example" in names
    assert "browser=chrome" in names
    assert "size=300x250" in names


def test_request_features_depend_on_the_request() -> None:
    a = set(features_of(make_request("news.example")))
    b = set(features_of(make_request("games.example")))
    assert hash_feature("domain", "news.example") in a - b
    multi = features_of(make_request(sizes=[(300, 250), (728, 90)]))
    assert hash_feature("size", "728x90") in multi


def test_hashing_is_deterministic_across_processes() -> None:
    code = (
        "from models.features import hash_feature, candidate_features;"
        "print(hash_feature('domain', 'news.example'), candidate_features((), 14, 'news.example', 'c1', 'cr1'))"
    )
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1
    here = f"{hash_feature('domain', 'news.example')} {candidate_features((), 14, 'news.example', 'c1', 'cr1')}\n"
    assert outs == {here}


def test_crosses_differ_per_creative() -> None:
    req = features_of(make_request())
    a = candidate_features(req, 14, "news.example", "camp", "cr-a")
    b = candidate_features(req, 14, "news.example", "camp", "cr-b")
    assert a[0] == b[0]  # same campaign feature
    assert len(set(a[1:]) & set(b[1:])) == 0  # creative and its crosses all differ
    other_hour = candidate_features(req, 15, "news.example", "camp", "cr-a")
    assert other_hour[:3] == a[:3] and other_hour[3] != a[3]


def test_same_creative_id_in_two_campaigns_is_two_creatives() -> None:
    a = candidate_features((), 1, "d", "camp-1", "banner")
    b = candidate_features((), 1, "d", "camp-2", "banner")
    assert a[1] != b[1]


def test_browser_family() -> None:
    assert browser_family(CHROME_UA) == "chrome"
    assert browser_family("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0") == "edge"
    assert browser_family("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AppleWebKit/605.1.15 Version/17.0 Safari/604.1") == "safari"
    assert browser_family("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0") == "firefox"
    assert browser_family("") == "none"
