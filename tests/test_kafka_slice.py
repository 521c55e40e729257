"""The whole loop on a real broker: bid, win, billing, impression, click -> worker -> model -> bidder.

Runs `streambid serve` and `streambid worker` as real processes against the
Kafka broker the harness started, and talks to them over HTTP and Kafka only.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from streams.events import make_event, payload_hash
from tests.conftest import ROOT, free_port
from tests.helpers import body, campaign, produce, request, stop_processes
from tests.streams_support import find_record

pytestmark = pytest.mark.kafka
STREAMBID = [sys.executable, "-m", "bidder.cli"]
SALT = "test-salt"  # the stack's own: a dead letter's payload hash is keyed with it


def http(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(check, timeout: float, what: str):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def metric(text: str, name: str, campaign: str) -> float | None:
    m = re.search(rf'^{name}\{{[^}}]*campaign="{campaign}"[^}}]*\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture()
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict]:
    run = uuid.uuid4().hex[:8]
    cfile = tmp_path / "campaigns.json"
    # targeted at a domain of its own, so campaigns other tests left on a shared broker never compete
    cfile.write_bytes(orjson.dumps([campaign(id=f"slice-{run}", targeting={"countries": ["USA"],
                                                                          "domains": [f"slice-{run}.example"]},
                                             goal={"type": "cpc", "value_per_click": 3.0, "max_bid_cpm": 30.0})]))
    port, mport = free_port(), free_port()
    # topics of its own: nothing another stack left on a shared broker (a model, pacing) can reach this one
    env = {**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap, "STREAMBID_SECRET": "test-secret",
           "STREAMBID_SALT": SALT, "STREAMBID_TOPIC_PREFIX": f"t{run}"}
    logs = {n: (tmp_path / f"{n}.log").open("wb") for n in ("serve", "worker")}
    published = subprocess.run(STREAMBID + ["campaign", "set", str(cfile)], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=60)
    assert published.returncode == 0 and f"slice-{run}" in published.stdout, published.stderr
    # exploration off: a changed price must come from learning, not from a random posterior draw
    serve = subprocess.Popen(STREAMBID + ["serve", "--port", str(port), "--spill-dir", str(tmp_path / "spill"),
                                          "--explore-below", "0"],
                             cwd=tmp_path, env=env, stdout=logs["serve"], stderr=subprocess.STDOUT)
    worker = subprocess.Popen(STREAMBID + ["worker", "--app-id", f"slice-{run}", "--metrics-port", str(mport),
                                           "--click-window", "3"],
                              cwd=tmp_path, env=env, stdout=logs["worker"], stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: f"slice-{run}" in orjson.loads(http("GET", f"http://127.0.0.1:{port}/status")[1])["live"], 30,
                 "the bidder to read the campaign from the config topic")
        wait_for(lambda: http("GET", f"http://127.0.0.1:{mport}/metrics")[0] == 200, 60, "worker metrics")
        # the bidder spends only from a budget lease, which the worker grants once it owns the campaign's partition
        wait_for(lambda: (orjson.loads(http("GET", f"http://127.0.0.1:{port}/status")[1]).get("leases") or {})
                 .get(f"slice-{run}", {}).get("granted", 0) > 0, 60, "a budget lease from the worker")
        yield {"base": f"http://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{mport}/metrics",
               "campaign": f"slice-{run}", "bootstrap": kafka_bootstrap, "tmp": tmp_path,
               "topic": lambda kind: f"t{run}.{kind}",
               "site": {"id": "s1", "domain": f"slice-{run}.example", "cat": ["IAB12"], "publisher": {"id": "p1"}}}
    finally:
        stop_processes([serve, worker], logs, tmp_path, tail=3000)


def bid_once(base: str, site: dict) -> tuple[int, bytes] | None:
    """One bid request; None when the bidder shed it (204), so the caller can retry."""
    status, out = http("POST", f"{base}/bid/testx", body(request(site=site)))
    return None if status == 204 else (status, out)


def notice(url: str, **macros: str) -> tuple[int, bytes]:
    for k, v in macros.items():
        url = url.replace("${" + k + "}", v)
    return http("GET", url)


def test_bid_win_bill_click_feeds_back_into_the_bidder(stack: dict) -> None:
    base, cid, bootstrap = stack["base"], stack["campaign"], stack["bootstrap"]
    status, out = wait_for(lambda: bid_once(base, stack["site"]), 10, "a bid (a loaded machine may shed the first)")
    assert status == 200, out
    resp = orjson.loads(out)
    bid = resp["seatbid"][0]["bid"][0]
    assert resp["id"] == "req-1" and bid["cid"] == cid and bid["impid"] == "1" and bid["price"] > 0
    first_price = bid["price"]
    version0 = orjson.loads(http("GET", f"{base}/status")[1])["model"]["version"]

    # win notice -> wins topic
    assert notice(bid["nurl"], AUCTION_PRICE="0.004")[0] == 200
    win = asyncio.run(find_record(bootstrap, stack["topic"]("wins"), lambda r: r.get("bid_id") == bid["id"]))
    assert win["price"] == 4000 and win["campaign"] == cid
    assert "user-42" not in orjson.dumps(win).decode()

    # billing moves spend; a replayed or forged notice does not
    assert notice(bid["burl"], AUCTION_PRICE="0.004")[0] == 200
    assert notice(bid["burl"], AUCTION_PRICE="0.004")[0] == 400
    assert notice(bid["burl"].replace("c=" + cid, "c=other"), AUCTION_PRICE="0.004")[0] == 400

    # the tracker reports the impression and the click
    ts = int(time.time() * 1000)
    asyncio.run(produce(bootstrap, [
        (stack["topic"]("impressions"), cid, orjson.dumps(make_event("impressions", f"imp:{bid['id']}", ts, bid_id=bid["id"],
                                                                campaign=cid, creative=bid["crid"]))),
        (stack["topic"]("clicks"), cid, orjson.dumps(make_event("clicks", f"click:{bid['id']}", ts + 10, bid_id=bid["id"],
                                                           campaign=cid, creative=bid["crid"]))),
        (stack["topic"]("clicks"), cid, b"{this is not an event"),
    ]))

    def worker_counts():
        text = http("GET", stack["metrics"])[1].decode()
        spend, clicks = metric(text, "streambid_campaign_spend_total", cid), metric(text, "streambid_campaign_clicks_total", cid)
        return (spend, clicks, metric(text, "streambid_campaign_roi", cid)) if spend and clicks else None

    spend, clicks, roi = wait_for(worker_counts, 30, "worker spend and clicks in /metrics")
    assert spend == pytest.approx(0.000004) and clicks == 1
    assert roi == pytest.approx((3.0 - 0.000004) / 0.000004)

    # the learner's update reaches the bidder: new model version, and the same request is priced differently
    def new_model():
        st = orjson.loads(http("GET", f"{base}/status")[1])
        return st if st["model"]["version"] > version0 else None

    wait_for(new_model, 20, "a new model snapshot in the bidder")
    status, out = http("POST", f"{base}/bid/testx", body(request(id="req-2", site=stack["site"])))
    assert status == 200 and orjson.loads(out)["seatbid"][0]["bid"][0]["price"] != first_price

    # pacing state from the worker is exported by the bidder per campaign
    def bidder_spend():
        return metric(http("GET", f"{base}/metrics")[1].decode(), "streambid_campaign_spend_today", cid)

    assert wait_for(bidder_spend, 20, "spend in the bidder's /metrics") == pytest.approx(0.000004)

    # the malformed click went to the dead-letter topic (as its length and hash: its bytes could hold anything), and
    # the agent kept consuming
    bad = b"{this is not an event"
    dead = asyncio.run(find_record(bootstrap, stack["topic"]("deadletter"),
                                  lambda r: r.get("payload_hash") == payload_hash(bad, SALT.encode())))
    assert dead["payload_bytes"] == len(bad) and "payload" not in dead
    assert dead["reason"] == "bad_json" and dead["topic"] == stack["topic"]("clicks")


def test_bad_requests_get_400_and_the_bidder_keeps_serving(stack: dict) -> None:
    base = stack["base"]
    for bad in (b"", b"{", b"[]", b'{"id": 1, "imp": []}', b'{"id":"x","imp":[{"id":"1","banner":{"w":"big"}}]}'):
        status, out = http("POST", f"{base}/bid/testx", bad)
        assert status == 400 and orjson.loads(out)["error"]
    assert http("POST", f"{base}/bid/testx", body(request(site=stack["site"])))[0] == 200
    assert urlsplit(base).hostname == "127.0.0.1"


def test_a_malformed_last_record_does_not_hold_back_the_click_windows(stack: dict) -> None:
    """Negatives come when a click window closes in event time, and a partition with unread records holds event time
    back.  A dead-lettered record is read: when it is the last on its partition, the windows still close."""
    base, cid, bootstrap = stack["base"], stack["campaign"], stack["bootstrap"]
    bids = []
    for _ in range(2):
        status, out = wait_for(lambda: bid_once(base, stack["site"]), 10, "a bid (a loaded machine may shed the first)")
        assert status == 200, out
        bids.append(orjson.loads(out)["seatbid"][0]["bid"][0])
    for b in bids:
        assert notice(b["burl"], AUCTION_PRICE="0.004")[0] == 200
    clicked, shown = bids
    ts = int(time.time() * 1000)

    def event(kind: str, b: dict, at: int) -> bytes:
        return orjson.dumps(make_event(kind, f"{kind[:-1]}:{b['id']}", at, bid_id=b["id"], campaign=cid, creative=b["crid"]))

    asyncio.run(produce(bootstrap, [
        (stack["topic"]("impressions"), cid, event("impressions", clicked, ts)),
        (stack["topic"]("clicks"), cid, event("clicks", clicked, ts + 10)),  # the partition's last good click ...
        (stack["topic"]("impressions"), cid, event("impressions", shown, ts + 1000)),  # ... is before this window ends
        (stack["topic"]("clicks"), cid, b"{the last record of its partition is not an event"),
    ]))
    examples = stack["topic"]("examples")
    positive = asyncio.run(find_record(bootstrap, examples, lambda r: r.get("id") == f"ex:{clicked['id']}"))
    assert positive["label"] == 1
    # the click window is 3 s: the negative comes once event time passes ts + 1000 + 3000, read from the clock while
    # no partition has records left to read
    negative = asyncio.run(find_record(bootstrap, examples, lambda r: r.get("id") == f"ex:{shown['id']}", timeout=30))
    assert negative["label"] == 0 and negative["campaign"] == cid
