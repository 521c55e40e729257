"""Frequency caps across bidders on a real broker: every bidder counts every bidder's billed impressions.

Two `streambid serve` processes (as on two hosts: separate ports, no shared memory) follow one topic prefix.  An
impression billed through one of them must count toward the user's cap on the other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port
from tests.helpers import body, campaign, request
from tests.streams_support import Procs, create_topics, get_json, wait_for
from tests.test_streams_leases import get, post

pytestmark = pytest.mark.kafka


@pytest.fixture()
def two_bidders(kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict]:
    run = uuid.uuid4().hex[:8]
    procs = Procs(kafka_bootstrap, f"t{run}", tmp_path)
    create_topics(kafka_bootstrap, procs.prefix)
    cid = f"cap-{run}"
    (tmp_path / "campaigns.json").write_bytes(orjson.dumps([campaign(
        id=cid, frequency_cap={"per_day": 1}, targeting={"countries": ["USA"], "domains": [f"{cid}.example"]})]))
    out = procs.cli("campaign", "set", str(tmp_path / "campaigns.json"))
    assert out.returncode == 0, out.stderr
    bases = []
    for name in ("serve-a", "serve-b"):
        port = free_port()
        # no budget leases (no worker here): each bidder spends freely, only the caps are shared
        procs.start(name, "serve", "--port", str(port), "--spill-dir", str(tmp_path / name), "--explore-below", "0",
                    "--lease-slice", "0")
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for base in bases:
            wait_for(lambda b=base: cid in (get_json(f"{b}/status") or {}).get("live", []), 60,
                     f"{base} to read the campaign from the config topic")
        yield {"bidders": bases, "site": {"id": "s1", "domain": f"{cid}.example", "publisher": {"id": "p1"}}}
    finally:
        procs.stop_all()


def answer(base: str, site: dict, user: str) -> tuple[int, dict | None, str]:
    """(status, the bid or None, no-bid reason) for one request from `user`."""
    status, out, reason = post(f"{base}/bid/capx", body(request(id=f"r-{uuid.uuid4().hex[:6]}", site=site,
                                                                user={"id": user})))
    return status, orjson.loads(out)["seatbid"][0]["bid"][0] if status == 200 else None, reason


def bill(base: str, site: dict, user: str) -> None:
    """Win an auction on `base` for `user` and bill it there."""
    status, bid, reason = wait_for(lambda: (a := answer(base, site, user))[0] == 200 and a, 10, f"a bid for {user}")
    assert get(bid["burl"].replace("${AUCTION_PRICE}", "1.0")) == 200


def capped_on(base: str, site: dict, user: str, within: float) -> bool:
    end = time.time() + within
    while time.time() < end:
        status, _, reason = answer(base, site, user)
        if status == 204 and reason == "frequency_cap":
            return True
        time.sleep(0.2)
    return False


def test_an_impression_billed_on_one_bidder_counts_toward_the_cap_on_another(two_bidders: dict) -> None:
    a, b = two_bidders["bidders"]
    site = two_bidders["site"]
    # each bidder reads billing from the end of the topic as it stands when its follower starts: until b's follower
    # has taken its position, a billing event can pass it by, so a few first users may go uncounted there
    live = next((u for u in (f"warm-{i}" for i in range(8)) if (bill(a, site, u) or capped_on(b, site, u, 4.0))), None)
    assert live, "no impression billed on bidder a ever reached the caps of bidder b"
    bill(a, site, "user-7")
    assert capped_on(b, site, "user-7", 10.0)  # the cap is 1 a day: the other bidder stops bidding for this user
    assert capped_on(a, site, "user-7", 10.0)  # and the bidder that took the notice too, from the same event
    assert answer(b, site, "user-8")[0] == 200  # others still get bids
