"""The HTTP adapter in-process: protocol details, bad input, notices, deadlines and shedding, over real sockets."""

from __future__ import annotations

import asyncio
import gzip
import math
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from bidder import server as server_mod
from bidder.campaigns import load_campaigns, parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.metrics import BidderStats
from bidder.openrtb import parse_request
from bidder.server import MAX_PIPELINED, ArrivalClock, BidApp, start_server, sweep_stalled
from models.snapshot import ModelSnapshot
from tests.conftest import free_port
from tests.helpers import body, campaign, request

ROOT = Path(__file__).resolve().parent.parent
BANNER = (ROOT / "loadtest" / "examples" / "banner.json").read_bytes()


class Stack:
    def __init__(self, app: BidApp, port: int, events: list) -> None:
        self.app, self.port, self.events = app, port, events

    async def raw(self, data: bytes, read_until_close: bool = False, timeout: float = 5.0) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        w.write(data)
        await w.drain()
        try:
            if read_until_close:
                return await asyncio.wait_for(r.read(), timeout)
            return await asyncio.wait_for(read_response(r), timeout)
        finally:
            w.close()

    async def post(self, path: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        raw = await self.raw(f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return split(raw)

    async def get(self, url: str) -> tuple[int, dict, bytes]:
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        return split(await self.raw(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))

    async def metrics(self) -> str:
        return (await self.get("/metrics"))[2].decode()


async def read_response(r: asyncio.StreamReader) -> bytes:
    head = await r.readuntil(b"\r\n\r\n")
    m = re.search(rb"content-length: *(\d+)", head, re.I)
    return head + (await r.readexactly(int(m.group(1))) if m else b"")


def split(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture()
async def stack() -> AsyncIterator[Stack]:
    camps = load_campaigns(ROOT / "deploy" / "campaigns.example.json") + [
        parse_campaign(campaign(frequency_cap={"per_hour": 1}, goal={"type": "cpc", "value_per_click": 50.0,
                                                                     "max_bid_cpm": 60.0}))]
    events: list = []
    engine = BidEngine(EngineConfig(secret=b"test", explore_below=0), camps, ModelSnapshot.empty(),
                       sink=lambda kind, key, ev: events.append((kind, ev)))
    app = BidApp(engine, BidderStats())
    port = free_port()
    srv = await start_server(app, "127.0.0.1", port)
    try:
        yield Stack(app, port, events)
    finally:
        srv.close()
        if app.sweeper:
            app.sweeper.cancel()


async def test_a_bid_carries_every_field_an_exchange_needs(stack: Stack) -> None:
    status, headers, data = await stack.post("/bid/ex1", BANNER, {"Content-Type": "application/json"})
    assert status == 200 and headers["x-openrtb-version"] == "2.6" and headers["content-type"] == "application/json"
    resp = orjson.loads(data)
    bid = resp["seatbid"][0]["bid"][0]
    assert resp["id"] == orjson.loads(BANNER)["id"] and resp["cur"] == "USD" and resp["seatbid"][0]["seat"]
    for key in ("id", "impid", "price", "adid", "crid", "cid", "adomain", "cat", "w", "h", "mtype", "adm", "nurl", "burl",
                "lurl"):
        assert key in bid, key
    assert (bid["w"], bid["h"]) == (300, 250) and bid["mtype"] == 1 and bid["price"] >= 0.85
    assert "${AUCTION_PRICE}" in bid["nurl"] and "${AUCTION_LOSS}" in bid["lurl"] and "${AUCTION_MIN_TO_WIN}" in bid["lurl"]
    status, headers, data = await stack.post("/bid/ex1", body(request(imp=[{"id": "1", "banner": {"w": 1, "h": 1}}])))
    assert status == 204 and data == b"" and headers["x-nobid-reason"] == "no_match" and headers["x-openrtb-version"] == "2.6"


async def test_gzip_versions_and_encodings(stack: Stack) -> None:
    assert (await stack.post("/bid/ex1", gzip.compress(BANNER), {"Content-Encoding": "gzip"}))[0] == 200
    assert (await stack.post("/bid/ex1", BANNER, {"x-openrtb-version": "2.5"}))[0] == 200
    cases = [
        (gzip.compress(BANNER)[:-20], {"Content-Encoding": "gzip"}, "bad_gzip", 400),
        (gzip.compress(b" " * 3_000_000), {"Content-Encoding": "gzip"}, "body_too_large", 413),  # too large inflated
        (BANNER, {"Content-Encoding": "br"}, "bad_encoding", 415),
        (BANNER, {"x-openrtb-version": "3.0"}, "unsupported_version", 400),
    ]
    for data, headers, reason, want in cases:
        status, _, out = await stack.post("/bid/ex1", data, headers)
        assert status == want and orjson.loads(out)["error"] == reason
    text = await stack.metrics()
    for _, _, reason, _ in cases:
        assert metric(text, "streambid_bid_requests_total", outcome="error", reason=reason) == 1


async def test_bad_input_gets_a_one_line_reason_and_is_counted(stack: Stack) -> None:
    bad = {
        b"": "bad_json", b"{": "bad_json", b"[]": "bad_json", b'{"id": 1, "imp": []}': "bad_type",
        b'{"id": "x"}': "missing_field", b'{"id":"x","imp":[{"id":"1","banner":{"w":"big"}}]}': "bad_type",
        b'{"id":"x","imp":[{"id":"1"}]}': "no_media",
    }
    for data, reason in bad.items():
        status, headers, out = await stack.post("/bid/ex2", data)
        assert status == 400 and b"\n" not in out and headers["content-type"] == "application/json"
        assert orjson.loads(out)["error"] == reason and orjson.loads(out)["detail"]
    text = await stack.metrics()
    assert metric(text, "streambid_bid_requests_total", exchange="ex2", outcome="error") == len(bad)
    assert metric(text, "streambid_bid_requests_total", exchange="ex2", reason="bad_type") == 2
    assert (await stack.post("/bid/ex2", BANNER))[0] == 200  # and it keeps serving


async def test_huge_bodies_are_refused_without_being_read(stack: Stack) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(b"POST /bid/ex3 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"{" * 1000)
    await w.drain()
    out = await asyncio.wait_for(r.read(), 5)  # answered and closed long before 100 MB could arrive
    w.close()
    assert split(out)[0] == 413
    chunked = b"POST /bid/ex3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"%x\r\n%s\r\n" % (60_000, b" " * 60_000) for _ in range(6)) + b"0\r\n\r\n"
    assert split(await stack.raw(chunked, read_until_close=True))[0] == 413
    huge_header = b"POST /bid/ex3 HTTP/1.1\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n"
    assert split(await stack.raw(huge_header, read_until_close=True))[0] == 431
    assert metric(await stack.metrics(), "streambid_bid_requests_total", reason="body_too_large") == 2
    notice = b"POST /notice/bill HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
    out = await stack.raw(notice, read_until_close=True)
    assert split(out)[0] == 413 and b"request bodies are limited to 256 KiB" in out  # not "bid requests"


async def test_expect_continue_and_bad_http(stack: Stack) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(b"POST /bid/ex4 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BANNER))
    await w.drain()
    assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100 Continue")
    w.write(BANNER)
    assert split(await asyncio.wait_for(read_response(r), 5))[0] == 200
    w.close()
    out = await stack.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", read_until_close=True)
    assert split(out)[0] == 400 and b"bad_http" in out
    assert (await stack.post("/bid/ex4", BANNER))[0] == 200
    assert (await stack.get("/bid/ex4"))[0] == 405
    assert (await stack.get("/nothing"))[0] == 404


async def test_unknown_methods_other_versions_and_host_get_the_rfc_answers(stack: Stack) -> None:
    """RFC 9110 9.1 / 15.6.6 and RFC 9112 3.2: 501 for an unknown method, 505 for a version other than 1.x, 400 for
    an HTTP/1.1 request without one Host; each closes the connection after its answer."""
    cases = [
        (b"BREW /coffee HTTP/1.1\r\nHost: x\r\n\r\n", 501, "method_not_implemented"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "bad_http"),  # TLS to a plain port: no method at all
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
        (b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
        (b"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_host"),
        (b"GET /healthz HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400, "bad_host"),
        (b"POST /bid/exH HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(BANNER), BANNER), 400, "bad_host"),
        (b"GET /healthz HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "bad_host"),  # RFC 9112 3.2: an invalid value
        (b"GET /healthz HTTP/1.1\r\nHost: user@host\r\n\r\n", 400, "bad_host"),
        (b"GET /healthz HTTP/1.1\r\nHost: x:80a\r\n\r\n", 400, "bad_host"),
    ]
    for data, status, error in cases:
        out = await stack.raw(data + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", read_until_close=True)
        assert split(out)[0] == status and orjson.loads(split(out)[2])["error"] == error, data
        assert split(out)[1].get("connection") == "close" and len(re.findall(rb"HTTP/1\.1 \d{3} [A-Z]", out)) == 1, data
    assert metric(await stack.metrics(), "streambid_bid_requests_total", exchange="exH", reason="bad_host") == 1
    for host in (b"", b"x", b"bidder.example:8080", b"127.0.0.1:80", b"[::1]:8080", b"[v1.x]", b"  padded.example  "):
        out = await stack.raw(b"GET /healthz HTTP/1.1\r\nHost:%s\r\n\r\n" % host, read_until_close=False)
        assert split(out)[0] == 200, host
    # HTTP/1.0 needs no Host; a Host in a chunked body's trailer is not a second one
    assert split(await stack.raw(b"GET /healthz HTTP/1.0\r\n\r\n", read_until_close=True))[0] == 200
    chunked = b"POST /bid/exH HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nHost: y\r\n\r\n"
    assert split(await stack.raw(chunked % (len(BANNER), BANNER)))[0] == 200


async def test_more_impressions_than_are_read_is_a_no_bid_not_an_error(stack: Stack) -> None:
    """OpenRTB 2.6 2.1: 400 is for a malformed request; one with many impressions is valid, only not bid on."""
    doc = orjson.loads(BANNER)
    doc["imp"] = [{**doc["imp"][0], "id": str(i)} for i in range(65)]
    status, headers, data = await stack.post("/bid/ex19", orjson.dumps(doc))
    assert (status, headers["x-nobid-reason"], data) == (204, "too_many_imps", b"")
    text = await stack.metrics()
    assert metric(text, "streambid_bid_requests_total", exchange="ex19", outcome="nobid", reason="too_many_imps") == 1
    doc["imp"] = doc["imp"][:64]
    assert (await stack.post("/bid/ex19", orjson.dumps(doc)))[0] == 200


async def test_pipelined_bursts_are_answered_in_order_and_bounded(stack: Stack) -> None:
    n = MAX_PIPELINED + 8
    one = b"POST /bid/ex5 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BANNER) + BANNER
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(one * n)
    await w.drain()
    answers = [split(await asyncio.wait_for(read_response(r), 5)) for _ in range(n)]
    w.close()
    decided = [s for s, _, _ in answers].count(200)
    assert decided >= MAX_PIPELINED - 2  # tolerates a split read or two
    assert [h.get("x-nobid-reason") for s, h, _ in answers if s == 204] == ["overload"] * (n - decided)


async def test_answers_written_at_the_end_of_a_pass_keep_their_order_and_hang_ups(stack: Stack) -> None:
    """Answers go out together at the end of a loop pass: a burst still gets them in order, a `Connection: close`
    request its answer before the hang-up, and bad HTTP after queued answers comes after them."""
    one = b"POST /bid/ex7 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BANNER) + BANNER
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = await stack.raw(one * 3 + last, read_until_close=True)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", out) == [b"200"] * 4
    assert out.endswith(b'{"ok":true}')
    ids = [orjson.loads(part)["seatbid"][0]["bid"][0]["impid"] for part in re.findall(rb'\{"id".*?\]\}\]\}', out)]
    assert len(ids) == 3
    out = await stack.raw(one * 2 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", read_until_close=True)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", out) == [b"200", b"200", b"400"] and b'{"error":"bad_http","detail":' in out
    assert not stack.app.outbox


async def test_stalled_requests_lose_their_connection(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "REQUEST_TIMEOUT_S", 0.2)
    sweeper = asyncio.ensure_future(sweep_stalled(stack.app, interval=0.05))
    try:
        r, w = await asyncio.open_connection("127.0.0.1", stack.port)
        w.write(b"POST /bid/ex6 HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
        await w.drain()
        out = await asyncio.wait_for(r.read(), 3)
        w.close()
        assert split(out)[0] == 408
    finally:
        sweeper.cancel()


async def test_notices_over_http_and_billing_moves_frequency(stack: Stack) -> None:
    doc = request(id="r-notices", user={"id": "notice-user"})
    status, _, out = await stack.post("/bid/ex7", body(doc))
    assert status == 200
    bid = orjson.loads(out)["seatbid"][0]["bid"][0]
    assert bid["cid"] == "c1"
    win = bid["nurl"].replace("${AUCTION_PRICE}", "1.25")
    assert (await stack.get(win))[0] == 200
    status, _, out = await stack.get(win)
    assert status == 400 and orjson.loads(out)["error"] == "replayed"
    forged = bid["burl"].replace("c=c1", "c=other").replace("${AUCTION_PRICE}", "0.5")
    assert orjson.loads((await stack.get(forged))[2])["error"] == "bad_signature"
    swapped = bid["nurl"].replace("/notice/win", "/notice/bill").replace("${AUCTION_PRICE}", "0.5")
    assert orjson.loads((await stack.get(swapped))[2])["error"] == "bad_signature"
    assert orjson.loads((await stack.get(bid["burl"].replace("${AUCTION_PRICE}", "999")))[2])["error"] == "price_above_bid"
    assert (await stack.get("/notice/bogus?b=1"))[0] == 400
    assert not [ev for kind, ev in stack.events if kind == "billing"]  # nothing refused was charged
    # billing moves spend and the frequency count: the cap (1 per hour) now holds this user back
    assert (await stack.post("/bid/ex7", body(doc)))[0] == 200  # bids alone do not count
    assert (await stack.get(bid["burl"].replace("${AUCTION_PRICE}", "0.5")))[0] == 200
    billing = [ev for kind, ev in stack.events if kind == "billing"]
    assert len(billing) == 1 and billing[0]["cost"] == 500 and billing[0]["campaign"] == "c1"
    status, _, out = await stack.post("/bid/ex7", body(doc))
    assert status == 204 or orjson.loads(out)["seatbid"][0]["bid"][0]["cid"] != "c1"  # capped; others may still bid
    status, _, out = await stack.post("/bid/ex7", body(request(user={"id": "someone-else"})))
    assert orjson.loads(out)["seatbid"][0]["bid"][0]["cid"] == "c1"
    text = await stack.metrics()
    assert metric(text, "streambid_notices_total", kind="win", outcome="ok") == 1
    assert metric(text, "streambid_notices_total", kind="win", outcome="replayed") == 1
    assert metric(text, "streambid_notices_total", kind="bill", outcome="bad_signature") == 2
    assert metric(text, "streambid_notices_total", kind="unknown") == 1


def test_an_expired_notice_is_refused() -> None:
    clock = [1_780_000_000.0]
    engine = BidEngine(EngineConfig(secret=b"t", explore_below=0, notice_ttl_s=60), [parse_campaign(campaign())],
                       ModelSnapshot.empty(), sink=lambda *a: None, clock=lambda: clock[0])
    bid = orjson.loads(engine.bid(parse_request(body(request())), "x", math.inf).body)["seatbid"][0]["bid"][0]
    clock[0] += 61
    assert engine.notice("bill", urlsplit(bid["burl"]).query.replace("${AUCTION_PRICE}", "1")) == "expired"


def test_old_requests_are_shed_and_near_deadline_ones_get_a_fast_no_bid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "DEADLINE_RESERVE_S", 0.010)  # wide margins, so a slow machine cannot flip a case
    engine = BidEngine(EngineConfig(secret=b"t", explore_below=0, network_ms=20), [parse_campaign(campaign())],
                       ModelSnapshot.empty(), sink=lambda *a: None)
    app = BidApp(engine, BidderStats(), shed_after_ms=30)
    fresh = body(request(tmax=100))
    assert app.bid(fresh, False, "x", time.perf_counter()).startswith(b"HTTP/1.1 200")
    # waited 35 ms before its turn: shed before parsing
    assert b"x-nobid-reason: overload" in app.bid(fresh, False, "x", time.perf_counter() - 0.035)
    # waited 20 ms of a 100 - 20 = 80 ms budget: decided; of a 45 - 20 = 25 ms budget (5 ms left): a no-bid at once
    assert app.bid(body(request(tmax=100)), False, "x", time.perf_counter() - 0.020).startswith(b"HTTP/1.1 200")
    assert b"x-nobid-reason: deadline" in app.bid(body(request(tmax=45)), False, "x", time.perf_counter() - 0.020)
    # a tmax no longer than the network allowance leaves nothing: a no-bid at once, not counted as late
    assert b"x-nobid-reason: deadline" in app.bid(body(request(tmax=15)), False, "x", time.perf_counter())
    assert app.stats.shed == 1 and app.stats.past_deadline == 0
    assert app.stats.requests[("x", "nobid", "deadline")] == 2 and app.stats.requests[("x", "bid", "")] == 2
    # every answer is in the latency histogram, the shed one too: the SLO would read well just while requests wait
    assert sum(app.stats.latency) == 5 and app.stats.latency_sum >= 0.035 + 0.020 + 0.020


class _Loop:
    def __init__(self) -> None:
        self.soon: list = []

    def call_soon(self, fn) -> None:
        self.soon.append(fn)


def test_arrival_clock_counts_kernel_waits_while_the_loop_is_saturated() -> None:
    clock, loop = ArrivalClock(), _Loop()
    clock.loop = loop  # type: ignore[assignment]
    t0 = time.perf_counter()
    assert clock.arrival(t0) == t0  # idle loop: bytes arrived just now
    assert clock.arrival(t0 + 0.010) == t0  # same busy period, same floor
    loop.soon.pop()()  # the period ends; the loop polls again at once (saturated)
    again = time.perf_counter()
    assert clock.arrival(again) == t0  # these bytes may have waited since the previous period began
    loop.soon.pop()()
    time.sleep(0.002)  # the loop waited for input
    later = time.perf_counter()
    assert clock.arrival(later) == later


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        pass


def test_a_pass_that_only_writes_does_not_stretch_the_last_reads_busy_period() -> None:
    """A hang-up answered after a quiet spell is written in a pass that read nothing: bytes read right after it have
    waited behind that pass at most, not since the last read before the quiet spell."""
    engine = BidEngine(EngineConfig(secret=b"t"), [parse_campaign(campaign())], ModelSnapshot.empty(),
                       sink=lambda *a: None)
    app, loop = BidApp(engine, BidderStats()), _Loop()
    app.loop = app.clock.loop = loop  # type: ignore[assignment]
    t0 = time.perf_counter()
    app.clock.arrival(t0)
    loop.soon.pop(0)()  # the pass that read ends
    time.sleep(0.05)  # the loop waits for input; a client's hang-up wakes it
    app.send(_Transport(), b"", True)  # type: ignore[arg-type]
    while loop.soon:
        loop.soon.pop(0)()
    assert app.clock.arrival(app.clock.prev_end + 0.0001) >= t0 + 0.05


async def test_a_bid_after_a_client_retires_an_idle_connection_is_not_shed(stack: Stack) -> None:
    """A pooled client closes a connection it let sit and opens a new one for its next bid: that bid is fresh."""
    bid = b"POST /bid/ex15 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BANNER) + BANNER
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(bid)
    assert split(await asyncio.wait_for(read_response(r), 5))[0] == 200
    await asyncio.sleep(0.3)  # longer than the 60 ms a request may wait before it is shed
    w.close()
    status, headers, _ = await stack.post("/bid/ex15", BANNER)
    assert status == 200, headers.get("x-nobid-reason")
    assert stack.app.stats.shed == 0 and stack.app.stats.latency_sum < 0.3


def statuses(out: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]


async def test_an_upgrade_header_is_ignored_and_each_request_answered_once(stack: Stack) -> None:
    """RFC 9110 lets a server ignore Upgrade: `curl --http2` on http:// sends `Upgrade: h2c` with its bid request."""
    h2c = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    close = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    bid = b"POST /bid/ex8 HTTP/1.1\r\nHost: x\r\n" + h2c + b"Content-Length: %d\r\n\r\n" % len(BANNER) + BANNER
    out = await stack.raw(bid + close, read_until_close=True)
    assert statuses(out) == [200, 200] and b'"seatbid"' in out
    chunked = b"POST /bid/ex8 HTTP/1.1\r\nHost: x\r\n" + h2c + b"Transfer-Encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(BANNER), BANNER)
    assert statuses(await stack.raw(chunked + close, read_until_close=True)) == [200, 200]
    gz = gzip.compress(BANNER)
    gz_bid = b"POST /bid/ex8 HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nx-openrtb-version: 2.5\r\n" + h2c
    gz_bid += b"Content-Length: %d\r\n\r\n" % len(gz)
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(gz_bid)  # the body comes in a later read than the headers
    await w.drain()
    await asyncio.sleep(0.02)
    w.write(gz + bid + close)
    out = await asyncio.wait_for(r.read(), 5)
    w.close()
    assert statuses(out) == [200, 200, 200]
    ws = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert statuses(await stack.raw(ws + close, read_until_close=True)) == [200, 200]
    out = await stack.raw(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", read_until_close=True)
    assert statuses(out) == [404]  # no such resource here; and what follows a CONNECT is not HTTP, so it hangs up
    assert metric(await stack.metrics(), "streambid_bid_requests_total", exchange="ex8", outcome="bid") == 4


async def test_a_short_tmax_does_not_shed_the_next_request(stack: Stack) -> None:
    """The shed threshold before parsing is the request's own, not the one of whatever request came before."""
    assert (await stack.post("/bid/ex9", body(request(tmax=21))))[0] == 204
    data = body(request(tmax=5000))
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(b"POST /bid/ex9 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data) + data[:10])
    await w.drain()
    await asyncio.sleep(0.01)
    w.write(data[10:])
    status, headers, _ = split(await asyncio.wait_for(read_response(r), 5))
    w.close()
    assert status == 200, headers


def test_a_request_that_waited_most_of_its_own_budget_is_shed() -> None:
    engine = BidEngine(EngineConfig(secret=b"t", explore_below=0, network_ms=20), [parse_campaign(campaign())],
                       ModelSnapshot.empty(), sink=lambda *a: None)
    app = BidApp(engine, BidderStats(), shed_after_ms=1000)
    # budget 220 - 20 = 200 ms, shed after 150: waited 160 ms is shed (40 ms would be left), 100 ms is decided
    assert b"x-nobid-reason: overload" in app.bid(body(request(tmax=220)), False, "x", time.perf_counter() - 0.160)
    assert app.bid(body(request(tmax=220)), False, "x", time.perf_counter() - 0.100).startswith(b"HTTP/1.1 200")
    assert app.stats.shed == 1


async def test_an_oversized_header_gets_one_431_and_no_error(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    big = b"POST /bid/ex3 HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\nX-More: 1\r\nX-Last: 2\r\nContent-Length: 2\r\n\r\n{}"
    with caplog.at_level("ERROR"):
        out = await stack.raw(big, read_until_close=True)
        await asyncio.sleep(0.05)
    assert statuses(out) == [431]
    assert not [rec for rec in caplog.records if rec.levelname in ("ERROR", "CRITICAL")]


async def test_idle_keep_alive_connections_are_closed(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "IDLE_TIMEOUT_S", 0.3)
    sweeper = asyncio.ensure_future(sweep_stalled(stack.app, interval=0.05))
    try:
        r, w = await asyncio.open_connection("127.0.0.1", stack.port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", stack.port)  # never sends anything
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert split(await asyncio.wait_for(read_response(r), 5))[0] == 200
        started = time.perf_counter()
        assert await asyncio.wait_for(r.read(), 3) == b"" and await asyncio.wait_for(r2.read(), 3) == b""
        assert time.perf_counter() - started >= 0.2
        w.close()
        w2.close()
    finally:
        sweeper.cancel()


async def test_blank_lines_do_not_keep_an_idle_connection_open(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9112 2.2 lets a server skip empty lines before a request; they are not a request, so not activity."""
    monkeypatch.setattr(server_mod, "IDLE_TIMEOUT_S", 0.3)
    sweeper = asyncio.ensure_future(sweep_stalled(stack.app, interval=0.05))
    try:
        r, w = await asyncio.open_connection("127.0.0.1", stack.port)
        started = time.perf_counter()
        closed = asyncio.ensure_future(r.read())
        try:
            while not closed.done() and time.perf_counter() - started < 3:
                w.write(b"\r\n")
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass  # hung up on between two lines
        await asyncio.wait({closed}, timeout=3)
        gone_at = time.perf_counter() - started
        assert closed.done() and (isinstance(closed.exception(), ConnectionError) or closed.result() == b"")
        assert 0.25 <= gone_at < 2.5
        w.close()
    finally:
        sweeper.cancel()


async def test_only_the_documented_bid_paths_are_bid_endpoints(stack: Stack) -> None:
    for path in ("/bid", "/bid/ex10", "/openrtb2", "/openrtb2/ex10", "/bid/ex10?src=a"):
        assert (await stack.post(path, BANNER))[0] == 200, path
    for path in ("/bidder", "/bidXYZ", "/openrtbX", "/openrtb2x/ex10", "/bid/ex10/more", "/nothing"):
        status, _, out = await stack.post(path, BANNER)
        assert status == 404 and orjson.loads(out)["error"] == "not_found", path
    assert (await stack.get("/bidder"))[0] == 404
    assert (await stack.post("/healthz", b""))[0] == 405
    for target in (b"http://127.0.0.1/bid/ex10", b"http://bidder.example:8080/openrtb2?x=1"):  # absolute-form
        head = b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (target, len(BANNER))
        assert (await stack.raw(head + BANNER, read_until_close=True)).startswith(b"HTTP/1.1 200"), target


async def test_gzip_bodies_of_several_members_are_inflated_under_one_cap(stack: Stack) -> None:
    half = len(BANNER) // 2
    two = gzip.compress(BANNER[:half]) + gzip.compress(b"") + gzip.compress(BANNER[half:])
    assert (await stack.post("/bid/ex11", two, {"Content-Encoding": "gzip"}))[0] == 200
    big = gzip.compress(b" " * 600_000)
    status, _, out = await stack.post("/bid/ex11", big + big, {"Content-Encoding": "gzip"})
    assert status == 413 and orjson.loads(out)["error"] == "body_too_large"
    status, _, out = await stack.post("/bid/ex11", gzip.compress(BANNER) + b"junk", {"Content-Encoding": "gzip"})
    assert status == 400 and orjson.loads(out)["error"] == "bad_gzip"


def target(url: str) -> bytes:
    """The origin-form request target of a notice URL: its path and signed query."""
    parts = urlsplit(url)
    return (parts.path + ("?" + parts.query if parts.query else "")).encode()


HEALTHZ_CLOSE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
HEALTHZ_ANSWER = server_mod.closing(server_mod.response(200, b'{"ok":true}'))  # the answer to HEALTHZ_CLOSE


async def bid_urls(stack: Stack, user: str) -> dict:
    status, _, out = await stack.post("/bid/ex12", body(request(user={"id": user})))
    assert status == 200
    return orjson.loads(out)["seatbid"][0]["bid"][0]


async def test_notices_may_be_posted(stack: Stack) -> None:
    """OpenRTB 2.6 2.1 leaves POST or GET to the exchange; a POST's body is read, so the connection goes on."""
    bid = await bid_urls(stack, "post-user")
    win = target(bid["nurl"].replace("${AUCTION_PRICE}", "1.25"))
    posted = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nignored!!" % win
    assert statuses(await stack.raw(posted + HEALTHZ_CLOSE, read_until_close=True)) == [200, 200]
    status, _, out = await stack.post(win.decode(), b"")
    assert status == 400 and orjson.loads(out)["error"] == "replayed"
    assert (await stack.post(target(bid["burl"].replace("${AUCTION_PRICE}", "0.5")).decode(), b"{}"))[0] == 200
    lost = await bid_urls(stack, "loser")
    loss = target(lost["lurl"].replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "2.5"))
    assert (await stack.post(loss.decode(), b""))[0] == 200
    assert [kind for kind, _ in stack.events if kind in ("wins", "billing", "losses")] == ["wins", "billing", "losses"]
    text = await stack.metrics()
    assert metric(text, "streambid_notices_total", outcome="ok") == 3
    assert metric(text, "streambid_notices_total", kind="win", outcome="replayed") == 1


async def head(stack: Stack, path: bytes) -> tuple[int, dict, bytes]:
    """HEAD, then GET /healthz on the same connection: status, headers and every byte after the HEAD's headers."""
    return split(await stack.raw(b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % path + HEALTHZ_CLOSE, read_until_close=True))


def but_length(headers: dict) -> dict:
    """Headers but Content-Length, which a HEAD answer may leave out (and /metrics' changes between two calls)."""
    return {k: v for k, v in headers.items() if k != "content-length"}


async def test_head_gets_the_head_of_get_and_never_content(stack: Stack) -> None:
    """RFC 9110 9.1: HEAD where GET is; RFC 9112 6.3: no content, else the next answer is read as part of this one."""
    for path in ("/healthz", "/status", "/metrics"):
        status, headers, rest = await head(stack, path.encode())
        got_status, got_headers, _ = await stack.get(path)
        assert (status, rest) == (got_status, HEALTHZ_ANSWER), path
        assert but_length(headers) == but_length(got_headers), path
    assert (await head(stack, b"/healthz"))[1]["content-length"] == "11"
    status, headers, rest = await head(stack, b"/bid/ex13")
    assert (status, headers["allow"], rest) == (405, "POST", HEALTHZ_ANSWER)
    status, _, rest = await head(stack, b"/nothing")
    assert (status, rest) == (404, HEALTHZ_ANSWER)


async def test_head_on_a_notice_is_refused_without_touching_it(stack: Stack) -> None:
    """A HEAD must be safe: a link checker probing a notice URL must not record the win, nor use up its one use."""
    bid = await bid_urls(stack, "head-user")
    win = target(bid["nurl"].replace("${AUCTION_PRICE}", "1.25"))
    status, headers, rest = await head(stack, win)
    assert (status, headers["allow"], rest) == (405, "GET, POST", HEALTHZ_ANSWER)
    assert metric(await stack.metrics(), "streambid_notices_total") == 0
    assert not [ev for kind, ev in stack.events if kind == "wins"]
    assert (await stack.get(win.decode()))[0] == 200


async def test_every_405_says_what_is_allowed(stack: Stack) -> None:
    """RFC 9110 15.5.6: a 405 must carry Allow, so a client can tell what the path does take."""
    cases = [(b"GET", b"/bid/ex14", "POST"), (b"PUT", b"/openrtb2", "POST"), (b"PUT", b"/notice/win?x=1", "GET, POST"),
             (b"DELETE", b"/notice/loss", "GET, POST"), (b"POST", b"/healthz", "GET, HEAD"),
             (b"PUT", b"/status", "GET, HEAD"), (b"DELETE", b"/metrics", "GET, HEAD")]
    for method, path, allow in cases:
        out = await stack.raw(b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % (method, path))
        status, headers, data = split(out)
        assert (status, headers.get("allow"), orjson.loads(data)["error"]) == (405, allow, "method_not_allowed"), path


async def test_an_http_1_0_expectation_of_100_continue_is_ignored(stack: Stack) -> None:
    """RFC 9110 10.1.1: an HTTP/1.0 client does not know 1xx answers; a 100 would be read as the answer itself."""
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(b"POST /bid/ex15 HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BANNER))
    await w.drain()
    await asyncio.sleep(0.05)  # a 100 would have been written by now
    w.write(BANNER)
    await w.drain()
    out = await asyncio.wait_for(r.read(), 5)  # HTTP/1.0 without keep-alive: answered, then closed
    w.close()
    assert statuses(out) == [200] and b'"seatbid"' in out


async def test_an_http_1_0_keep_alive_is_confirmed_in_every_answer_it_gets(stack: Stack) -> None:
    """RFC 9112 9.3: an HTTP/1.0 connection persists only when the answer says so (`ab -k` counts on it); the
    /metrics page rendered between bids says so too, HTTP/1.1 answers never need to, and a 1.0 request without
    keep-alive is answered and closed."""
    keep = b"Connection: keep-alive\r\n"
    bid10 = b"POST /bid/ex16 HTTP/1.0\r\n%sContent-Length: %d\r\n\r\n%s" % (keep, len(BANNER), BANNER)
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    for sent in (bid10, b"GET /metrics HTTP/1.0\r\n" + keep + b"\r\n", bid10,
                 b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
        w.write(sent)
        status, headers, _ = split(await asyncio.wait_for(read_response(r), 5))
        assert status == 200 and headers.get("connection") == ("keep-alive" if b"HTTP/1.0" in sent else None)
    w.write(bid10.replace(keep, b""))
    out = await asyncio.wait_for(r.read(), 5)  # answered, then closed
    w.close()
    assert statuses(out) == [200] and b"connection: close" in out.lower()


async def test_a_100_continue_waits_behind_a_page_being_rendered(stack: Stack) -> None:
    """A 1xx belongs to the request being read: sent before the /metrics page pipelined ahead of it, the client
    would take it for the page's answer."""
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /bid/ex17 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BANNER))
    page = split(await asyncio.wait_for(read_response(r), 5))
    assert page[0] == 200 and b"streambid_bid_requests_total" in page[2]
    assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100 Continue")
    w.write(BANNER)
    assert split(await asyncio.wait_for(read_response(r), 5))[0] == 200
    w.close()


async def test_a_close_is_echoed_x_gzip_is_gzip_and_a_long_target_is_414(stack: Stack) -> None:
    """RFC 9112 9.6: the answer to a request with `Connection: close` says so (the page rendered between bids
    too); RFC 9110 8.4.1.3: x-gzip is gzip; RFC 9110 15.5.15: a target too long for the head gets 414."""
    for target in (b"POST /bid/ex18", b"GET /metrics"):
        data = BANNER if target.startswith(b"POST") else b""
        out = await stack.raw(target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(data), data), read_until_close=True)
        assert split(out)[0] == 200 and split(out)[1].get("connection") == "close", target
    assert (await stack.post("/bid/ex18", gzip.compress(BANNER), {"Content-Encoding": "x-gzip"}))[0] == 200
    out = await stack.raw(b"GET /healthz?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", read_until_close=True)
    assert split(out)[0] == 414 and orjson.loads(split(out)[2])["error"] == "uri_too_long"


async def test_a_client_that_stops_reading_its_answers_is_hung_up_on(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers piling up unread hold kernel and worker memory: the connection is dropped, not closed politely
    (a close would wait for the unread answers to be written, forever)."""
    monkeypatch.setattr(server_mod, "REQUEST_TIMEOUT_S", 0.3)
    monkeypatch.setattr(server_mod, "IDLE_TIMEOUT_S", 0.3)
    sweeper = asyncio.ensure_future(sweep_stalled(stack.app, interval=0.05))
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    try:
        await loop.sock_connect(client, ("127.0.0.1", stack.port))
        pages = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * server_mod.MAX_RENDERED
        for _ in range(400):  # never read: the answers fill the client's window, the server's buffers, then pause it
            await loop.sock_sendall(client, pages)
            await asyncio.sleep(0.005)
            for p in stack.app.connections:
                if p.transport is not None:
                    p.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            if any(p.paused for p in stack.app.connections):
                break
        assert any(p.paused for p in stack.app.connections)  # the worker stopped reading it
        for _ in range(60):
            if not stack.app.connections:
                break
            await asyncio.sleep(0.05)
        assert not stack.app.connections  # gone, with its unread answers
    finally:
        client.close()
        sweeper.cancel()


async def test_a_pipelined_burst_of_pages_is_bounded_per_read(stack: Stack) -> None:
    """Each /metrics or /status page costs milliseconds: one read gets MAX_RENDERED of them rendered, and any
    request past MAX_PIPELINED a 503, so one connection cannot hold the worker."""
    page = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(page * 6)
    await w.drain()
    got = [split(await asyncio.wait_for(read_response(r), 5))[0] for _ in range(6)]
    assert got.count(200) in (server_mod.MAX_RENDERED, 2 * server_mod.MAX_RENDERED)  # one read, or split in two
    assert set(got) == {200, 503}
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    n = MAX_PIPELINED + 8
    w.write(health * n)
    await w.drain()
    got = [split(await asyncio.wait_for(read_response(r), 5))[0] for _ in range(n)]
    assert got.count(200) >= MAX_PIPELINED - 2 and got.count(503) == n - got.count(200)
    w.close()


async def test_a_body_sent_after_100_continue_is_not_shed_for_the_clients_wait(stack: Stack) -> None:
    """The wait for a client's late body is the client's: shedding counts from its last bytes, the deadline
    from its first."""
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    slow = orjson.loads(BANNER) | {"tmax": 1000}
    data = orjson.dumps(slow)
    w.write(b"POST /bid/ex12 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(data))
    await w.drain()
    assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100 Continue")
    await asyncio.sleep(stack.app.shed_after_s + 0.05)  # longer than a queued request may wait unparsed
    w.write(data)
    status, headers, _ = split(await asyncio.wait_for(read_response(r), 5))
    w.close()
    assert status == 200, headers
    assert stack.app.stats.shed == 0


async def test_gzip_bodies_of_too_many_members_are_refused(stack: Stack) -> None:
    many = gzip.compress(b"") * (server_mod.MAX_GZIP_MEMBERS + 1)
    status, _, out = await stack.post("/bid/ex11", many, {"Content-Encoding": "gzip"})
    assert status == 400 and orjson.loads(out)["error"] == "bad_gzip"
    half = len(BANNER) // 2
    fine = gzip.compress(BANNER[:half]) + gzip.compress(b"") * (server_mod.MAX_GZIP_MEMBERS - 2) + gzip.compress(BANNER[half:])
    assert (await stack.post("/bid/ex11", fine, {"Content-Encoding": "gzip"}))[0] == 200


async def test_repeated_fields_form_a_list_and_trailers_are_not_headers(stack: Stack) -> None:
    def post(head: bytes, data: bytes = BANNER) -> bytes:
        tail = b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data)
        return b"POST /bid/ex13 HTTP/1.1\r\nHost: x\r\n" + head + tail + data

    out = await stack.raw(post(b"Content-Encoding: br\r\nContent-Encoding: gzip\r\n", gzip.compress(BANNER)), True)
    assert split(out)[0] == 415 and orjson.loads(split(out)[2])["error"] == "bad_encoding"
    assert split(out)[1]["accept-encoding"] == "gzip"  # RFC 9110 15.5.16: the codings that would have been taken
    for a, b in ((b"3.0", b"2.6"), (b"2.6", b"3.0")):
        out = await stack.raw(post(b"x-openrtb-version: %s\r\nx-openrtb-version: %s\r\n" % (a, b)), True)
        assert split(out)[0] == 400 and orjson.loads(split(out)[2])["error"] == "unsupported_version"
    size = b"%x" % len(BANNER)
    chunked = (b"POST /bid/ex13 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               + size + b"\r\n" + BANNER + b"\r\n0\r\nContent-Encoding: gzip\r\nx-openrtb-version: 3.0\r\n\r\n")
    assert split(await stack.raw(chunked, True))[0] == 200  # the trailer fields change nothing
    coded = chunked.replace(b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked")
    out = await stack.raw(coded, True)
    assert split(out)[0] == 501


async def test_a_header_line_that_never_ends_is_refused_while_it_streams(stack: Stack) -> None:
    """The parser hands over a header only once its line ends: the head limit must hold while the bytes arrive."""
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    answer = asyncio.create_task(r.read())  # done once the server has answered and closed its side
    w.write(b"POST /bid/ex1 HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    try:
        while sent < 4 * 1024 * 1024 and not answer.done():
            w.write(b"a" * 8192)
            await w.drain()
            sent += 8192
            await asyncio.sleep(0.002)  # separate reads on the server's side
    except ConnectionError:
        pass  # hung up on while still sending: what is asserted is what it answered first
    out = await asyncio.wait_for(answer, 5)
    w.close()
    assert statuses(out) == [431] and b"header_too_large" in out
    assert b"\r\nConnection: close\r\n" in out  # a pooled client must not send on it again (RFC 9112 9.6)
    assert sent < 1024 * 1024  # refused long before the client stopped: the line has no end


async def test_a_head_split_after_a_large_body_in_the_same_read_is_not_taken_for_a_long_head(stack: Stack) -> None:
    """The read that begins a head may end the message before it: a large body there is not counted as head."""
    payload = BANNER + b" " * (150_000 - len(BANNER))
    first = f"POST /bid/ex1 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
    second = f"POST /bid/ex1 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BANNER)}\r\n\r\n".encode() + BANNER
    r, w = await asyncio.open_connection("127.0.0.1", stack.port)
    w.write(first + second[:30])
    await w.drain()
    await asyncio.sleep(0.1)
    w.write(second[30:])  # the rest of the head, in a read of its own
    await w.drain()
    answers = [split(await asyncio.wait_for(read_response(r), 5))[0] for _ in range(2)]
    w.close()
    assert answers[0] == 200 and answers[1] in (200, 204)  # 204 if the wait took it past its tmax; never 431


async def test_transfer_encoding_in_an_http_1_0_request_is_faulty_framing(stack: Stack) -> None:
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; 400, and the connection closes."""
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BANNER), BANNER)
    raw = b"POST /bid/ex1 HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    out = await stack.raw(raw + b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", read_until_close=True)
    assert statuses(out) == [400] and b"HTTP/1.0" in out.split(b"\r\n\r\n", 1)[1]


def test_hang_up_aborts_a_transport_with_unsent_output_whatever_its_class() -> None:
    """uvloop's transports have abort() and get_write_buffer_size() without deriving from asyncio.WriteTransport;
    close() would wait for a client that never reads."""
    from bidder.server import hang_up

    class Transport(asyncio.BaseTransport):  # like uvloop's: not an asyncio.WriteTransport
        def __init__(self, buffered: int) -> None:
            super().__init__()
            self.buffered, self.calls = buffered, []  # type: ignore[var-annotated]

        def get_write_buffer_size(self) -> int:
            return self.buffered

        def abort(self) -> None:
            self.calls.append("abort")

        def close(self) -> None:
            self.calls.append("close")

    stuck, drained = Transport(16_000_000), Transport(0)
    hang_up(stuck)
    hang_up(drained)
    assert stuck.calls == ["abort"] and drained.calls == ["close"]
