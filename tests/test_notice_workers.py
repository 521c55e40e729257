"""`serve --workers N`: a notice is counted and charged once per host, whichever worker it lands on.

Each worker keeps its own bids' replay memory (and lease), so a notice signed for a sibling's bidder id is handed to
that sibling whole (bidder.notice_relay), leases or not; a forged or expired one is refused where it lands.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.metrics import BidderStats
from bidder.notice_relay import NoticeRelay
from bidder.openrtb import parse_request
from bidder.server import BidApp
from bidder.wiring import _relaying
from models.snapshot import ModelSnapshot
from tests.conftest import ROOT, free_port
from tests.helpers import body, campaign, http, request

NOW = 1_780_000_000.0


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for found, value in re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def test_a_notice_sent_many_times_to_two_workers_is_counted_and_charged_once(tmp_path: Path) -> None:
    cfile = tmp_path / "campaigns.json"
    cfile.write_bytes(orjson.dumps({"campaigns": [campaign()]}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bidder.cli", "serve", "--no-kafka", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2", "--campaigns", str(cfile), "--spill-dir", str(tmp_path / "spill"), "--explore-below", "0",
         "--notice-base", base + "/"],  # a trailing slash is tolerated
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "STREAMBID_SECRET": "notice-workers-test"})
    try:
        # both workers up: bids from two bidder ids
        owners: dict[str, dict] = {}
        end = time.time() + 30
        while len(owners) < 2 and time.time() < end:
            assert proc.poll() is None, log.read_text()
            try:
                status, out = http(f"{base}/bid/x", body(request()), timeout=2)
            except OSError:
                time.sleep(0.1)
                continue
            if status == 200:
                b = orjson.loads(out)["seatbid"][0]["bid"][0]
                owners.setdefault(b["id"].rsplit("-", 1)[0], b)
        assert len(owners) == 2, log.read_text()
        bid = next(iter(owners.values()))
        burl, nurl = bid["burl"].replace("${AUCTION_PRICE}", "1.234567"), bid["nurl"].replace("${AUCTION_PRICE}", "1.5")
        assert urlsplit(burl).path == "/notice/bill" and "//notice" not in burl
        assert round(bid["price"] * 1e6) >= 1_500_000  # the prices sent are below our bid

        bills = [http(burl)[0] for _ in range(20)]  # each on a new connection: the kernel spreads them over workers
        wins = [http(nurl)[0] for _ in range(10)]
        forged = http(burl.replace("&s=", "&s=%C3%A9"))
        assert forged[0] == 400 and orjson.loads(forged[1])["error"] == "bad_signature"
        # the first is accepted; a repeat is refused, or (landing first on the other worker) answered 200 there
        # and refused by the owner: at most one 200 per worker, and only one of them is counted
        assert bills[0] == 200 and set(bills) <= {200, 400} and bills.count(200) <= 2, bills
        assert wins[0] == 200 and set(wins) <= {200, 400} and wins.count(200) <= 2, wins

        def settled() -> str | None:  # every worker publishes its counters once a second
            text = http(f"{base}/metrics")[1].decode()
            done = (metric(text, "streambid_notices_total", kind="bill") == 21
                    and metric(text, "streambid_notices_total", kind="win") == 10)
            return text if done else None

        end = time.time() + 20
        while (text := settled()) is None:
            assert time.time() < end, http(f"{base}/metrics")[1].decode()
            time.sleep(0.2)
        assert metric(text, "streambid_billed_total", campaign="c1") == 1
        assert metric(text, "streambid_billed_spend_total", campaign="c1") == 0.001234  # 1.234567 CPM: 1234 micros
        assert metric(text, "streambid_wins_total", campaign="c1") == 1
        assert metric(text, "streambid_notices_total", kind="bill", outcome="ok") == 1
        assert metric(text, "streambid_notices_total", kind="bill", outcome="replayed") == 19
        assert metric(text, "streambid_notices_total", kind="bill", outcome="bad_signature") == 1
        assert metric(text, "streambid_notices_total", kind="win", outcome="ok") == 1
        # and notices did land on the worker that did not bid, which handed them over
        forwarded = 0
        for _ in range(40):
            forwarded = max(forwarded, orjson.loads(http(f"{base}/status")[1])["notice_relay"]["forwarded"])
        assert forwarded > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _worker(name: str, events: list) -> BidApp:
    cfg = EngineConfig(secret=b"s", explore_below=0, bidder_id=name)
    e = BidEngine(cfg, [parse_campaign(campaign(frequency_cap={"per_hour": 1}))], ModelSnapshot.empty(),
                  sink=lambda k, key, ev: events.append((name, k, ev)), clock=lambda: NOW)
    return BidApp(e, BidderStats())


def test_a_siblings_notice_is_handed_over_whole_without_leases(tmp_path: Path) -> None:
    """In process: worker B takes notices of worker A's bids; A counts, charges and caps them, B answers 200 once."""

    async def run() -> None:
        events: list = []
        apps = {n: _worker(n, events) for n in ("bA", "bB")}
        relays = {}
        for n, app in apps.items():
            relays[n] = NoticeRelay(tmp_path, n, app.notice)
            relays[n].start(asyncio.get_running_loop())
            app.notice = _relaying(app, relays[n])  # type: ignore[method-assign]
        a, b = apps["bA"], apps["bB"]
        won = orjson.loads(a.engine.bid(parse_request(body(request())), "x", math.inf).body)["seatbid"][0]["bid"][0]
        bill = urlsplit(won["burl"]).query.replace("${AUCTION_PRICE}", "0")  # a clearing price of 0: charged 0
        assert b.notice("bill", bill).startswith(b"HTTP/1.1 200")  # valid: answered, handed to its owner
        assert b'"replayed"' in b.notice("bill", bill)  # B remembers what it handed over
        assert b'"bad_signature"' in b.notice("bill", bill.replace("s=", "s=A"))  # refused and counted where it lands
        for _ in range(100):
            if relays["bA"].received:
                break
            await asyncio.sleep(0.01)
        assert b'"replayed"' in a.notice("bill", bill)  # A took it: its replay memory has it
        assert [(who, ev["bidder"], ev["cost"]) for who, k, ev in events if k == "billing"] == [("bA", "bA", 0)]
        assert a.stats.notices == {("bill", "ok"): 1, ("bill", "replayed"): 1}
        assert b.stats.notices == {("bill", "replayed"): 1, ("bill", "bad_signature"): 1}
        assert a.engine.bid(parse_request(body(request())), "x", math.inf).reason == "frequency_cap"  # A's cap moved
        assert relays["bB"].forwarded == 1 and relays["bA"].received == 1
        # a sibling gone (restarted under a new id): its notice is handled where it lands, once
        relays["bA"].close()
        lost = orjson.loads(a.engine.bid(parse_request(body(request(user={"id": "u2"}))), "x",
                                         math.inf).body)["seatbid"][0]["bid"][0]
        loss = urlsplit(lost["lurl"]).query.replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "9")
        assert b.notice("loss", loss).startswith(b"HTTP/1.1 200")
        assert relays["bB"].unreachable == 1 and b.stats.notices[("loss", "ok")] == 1
        assert [who for who, k, _ in events if k == "losses"] == ["bB"]
        relays["bB"].close()

    asyncio.run(run())


def test_a_notice_sent_to_a_closing_worker_is_refused_and_handled_by_its_sender(tmp_path: Path) -> None:
    """A datagram a sibling sent between a closing worker's last read of its mailbox and the close was accepted
    (forward said True), then dropped with the socket: a bill the exchange had been answered 200 for."""

    async def run() -> None:
        handled: dict[str, list[str]] = {"bA": [], "bB": []}

        def handler(name: str) -> Callable[[str, str], None]:
            return lambda kind, query: handled[name].append(query)

        relays = {name: NoticeRelay(tmp_path, name, handler(name)) for name in handled}
        for relay in relays.values():
            relay.start(asyncio.get_running_loop())
        a, b = relays["bA"], relays["bB"]
        assert b.forward("bA", "bill", "q1")  # in A's mailbox, not read yet: A handles it as it closes
        last_read, sent_after = a._drain, list[bool]()

        def then_a_sibling_sends() -> None:  # B, another process, sends right after A's last read
            last_read()
            sent_after.append(b.forward("bA", "bill", "q2"))

        a._drain = then_a_sibling_sends  # type: ignore[method-assign]
        a.close()
        assert handled["bA"] == ["q1"]
        assert sent_after == [False] and b.unreachable == 1  # refused: B's caller handles q2 where it landed
        b.close()

    asyncio.run(run())
