"""Frequency caps across bidders on a real broker: every bidder counts every bidder's billed impressions.

Two `streambid serve` processes (as on two hosts: separate ports, no shared memory) follow one topic prefix.  An
impression billed through one of them must count toward the user's cap on the other, and on a bidder that starts
later the same day.
"""

from __future__ import annotations

import signal
import subprocess
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

    def start(name: str) -> tuple[str, subprocess.Popen]:
        port = free_port()
        # no budget leases (no worker here): each bidder spends freely, only the caps are shared
        p = procs.start(name, "serve", "--port", str(port), "--spill-dir", str(tmp_path / name), "--explore-below",
                        "0", "--lease-slice", "0")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: cid in (get_json(f"{base}/status") or {}).get("live", []), 60,
                 f"{name} to read the campaign from the config topic")
        return base, p

    try:
        yield {"start": start, "site": {"id": "s1", "domain": f"{cid}.example", "publisher": {"id": "p1"}}}
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


def test_an_impression_billed_on_one_bidder_counts_toward_the_cap_on_another_and_after_a_restart(
        two_bidders: dict) -> None:
    start, site = two_bidders["start"], two_bidders["site"]
    (a, _), (b, b_proc) = start("serve-a"), start("serve-b")
    bill(a, site, "user-7")
    assert capped_on(b, site, "user-7", 10.0)  # the cap is 1 a day: the other bidder stops bidding for this user
    assert capped_on(a, site, "user-7", 10.0)  # and the bidder that took the notice too, from the same event
    assert answer(b, site, "user-8")[0] == 200  # others still get bids
    b_proc.send_signal(signal.SIGTERM)
    b_proc.wait(20)
    bill(a, site, "user-9")  # billed while no second bidder runs
    b2, _ = start("serve-b2")  # a restart: counts in memory are gone, the day's billing events are not
    assert capped_on(b2, site, "user-7", 10.0) and capped_on(b2, site, "user-9", 10.0)
    assert answer(b2, site, "user-8")[0] == 200
