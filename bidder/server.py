"""The HTTP adapter: OpenRTB over HTTP/1.1 keep-alive on uvloop + httptools.

The protocol object parses bytes straight into the engine and writes the answer
back; there is no framework in between, because at a few thousand requests a
second per core every microsecond of overhead shows.  Routes:

    POST /bid[/<exchange>]          bid request -> 200 bid response | 204 no bid | 400 reason
    GET  /notice/{win,bill,loss}?…  signed notices -> 200 | 400 reason
    GET  /metrics                   Prometheus text
    GET  /status                    JSON: model version, campaigns, pacing
    GET  /healthz                   200 when serving
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Callable

import httptools
import orjson
from prometheus_client import CollectorRegistry, generate_latest

from bidder.engine import BidEngine
from bidder.metrics import BidderCollector, BidderStats
from bidder.openrtb import BadRequest, parse_request

MAX_BODY = 256 * 1024
MAX_INFLATED = 1024 * 1024
OPENRTB_VERSION = b"2.6"
_204 = b"HTTP/1.1 204 No Content\r\nx-openrtb-version: 2.6\r\nx-nobid-reason: %s\r\n\r\n"
_200 = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nx-openrtb-version: 2.6\r\nContent-Length: %d\r\n\r\n"
_STATUS = {200: b"200 OK", 400: b"400 Bad Request", 404: b"404 Not Found", 405: b"405 Method Not Allowed",
           413: b"413 Payload Too Large", 503: b"503 Service Unavailable"}


def inflate(body: bytes) -> bytes:
    """gunzip with a hard cap, so a gzip bomb costs at most MAX_INFLATED bytes of memory."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, MAX_INFLATED)
    except zlib.error:
        raise BadRequest("bad_gzip", "body is not valid gzip") from None
    if d.unconsumed_tail:
        raise BadRequest("body_too_large", f"inflated body exceeds {MAX_INFLATED} bytes")
    return out


class BidApp:
    """Everything a worker process's connections share: the engine, counters and settings."""

    def __init__(self, engine: BidEngine, stats: BidderStats, worker: str = "0",
                 status: Callable[[], dict] | None = None, shed_lag_ms: float = 5.0) -> None:
        self.engine = engine
        self.stats = stats
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BidderCollector(stats, engine, worker))
        self.status_extra = status or dict
        self.network_s = engine.cfg.network_ms / 1000.0
        self.shed_lag_s = shed_lag_ms / 1000.0
        self.overloaded = False

    def bid(self, body: bytes, gz: bool, exchange: str, started: float) -> bytes:
        """One bid request to raw HTTP response bytes; never raises."""
        stats = self.stats
        if self.overloaded:
            stats.shed += 1
            stats.requests[(exchange, "nobid", "overload")] += 1
            return _204 % b"overload"
        try:
            if gz:
                body = inflate(body)
            req = parse_request(body, self.engine.cfg.salt)
        except BadRequest as e:
            stats.requests[(exchange, "error", e.reason)] += 1
            return response(400, orjson.dumps({"error": e.reason, "detail": e.detail}))
        deadline = started + max(req.tmax / 1000.0 - self.network_s, 0.0)
        out = self.engine.bid(req, exchange, deadline)
        elapsed = time.perf_counter() - started
        stats.observe(elapsed)
        if out.status == 204:
            stats.requests[(exchange, "nobid", out.reason)] += 1
            return _204 % out.reason.encode()
        if started + elapsed > deadline:
            stats.past_deadline += 1
        stats.requests[(exchange, "bid", "")] += 1
        return _200 % (b"application/json", len(out.body)) + out.body

    def notice(self, kind: str, query: str) -> bytes:
        outcome = self.engine.notice(kind, query)
        self.stats.notices[(kind, outcome)] += 1
        if outcome == "ok":
            return response(200, b'{"ok":true}')
        return response(400, orjson.dumps({"error": outcome}))

    def metrics(self) -> bytes:
        return response(200, generate_latest(self.registry), b"text/plain; version=0.0.4; charset=utf-8")

    def status(self) -> bytes:
        e = self.engine
        doc = {
            "bidder": e.cfg.bidder_id,
            "campaigns": len(e.index),
            "live": sorted(e.live()),
            "model": {"version": e.model.version, "examples": getattr(e.model, "n_seen", 0)},
            "pacing": {cid: {"lam": p.lam, "spent_today": p.spent_today, "exhausted": p.exhausted}
                       for cid, p in e.pacing.items()},
            **self.status_extra(),
        }
        return response(200, orjson.dumps(doc))


def response(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %s\r\nContent-Type: %s\r\nx-openrtb-version: 2.6\r\nContent-Length: %d\r\n\r\n"
            % (_STATUS[status], ctype, len(body))) + body


class BidProtocol(asyncio.Protocol):
    """One keep-alive connection: httptools callbacks feed the app, answers go out in order."""

    __slots__ = ("app", "transport", "parser", "url", "body", "size", "gz", "started", "too_large")

    def __init__(self, app: BidApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0
        self.gz = False
        self.too_large = False
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close(400, b'{"error":"upgrade_not_supported"}')
        except httptools.HttpParserError:
            self._close(400, b'{"error":"bad_http"}')

    def _close(self, status: int, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response(status, body))
            self.transport.close()

    def on_message_begin(self) -> None:
        self._reset()
        self.started = time.perf_counter()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 16 and name.lower() == b"content-encoding":
            self.gz = value.strip().lower() == b"gzip"
        elif len(name) == 14 and name.lower() == b"content-length":
            try:
                self.too_large = int(value) > MAX_BODY
            except ValueError:
                self.too_large = True

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_BODY:
            self.too_large = True
        elif not self.too_large:
            self.body.append(chunk)

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            out = self._route()
        except Exception as e:  # the last line of defence: never a 500 without a reason, never a dead worker
            out = response(400, orjson.dumps({"error": "internal", "detail": type(e).__name__}))
        transport.write(out)
        if not self.parser.should_keep_alive():
            transport.close()

    def _route(self) -> bytes:
        url = self.url
        method = self.parser.get_method()
        if method == b"POST" and (url.startswith(b"/bid") or url.startswith(b"/openrtb")):
            path = url.split(b"?", 1)[0]
            exchange = path.rsplit(b"/", 1)[1].decode("ascii", "replace")[:32] if path.count(b"/") > 1 else "default"
            if self.too_large:
                self.app.stats.requests[(exchange, "error", "body_too_large")] += 1
                return response(413, b'{"error":"body_too_large","detail":"bid requests are limited to 256 KiB"}')
            return self.app.bid(b"".join(self.body), self.gz, exchange, self.started)
        if method != b"GET":
            return response(405, b'{"error":"method_not_allowed"}')
        path, _, query = url.decode("latin-1").partition("?")
        if path.startswith("/notice/"):
            return self.app.notice(path[8:], query)
        if path == "/metrics":
            return self.app.metrics()
        if path == "/status":
            return self.app.status()
        if path == "/healthz":
            return response(200, b'{"ok":true}')
        return response(404, b'{"error":"not_found"}')


def gzip_body(body: bytes) -> bytes:
    """For clients and tests: a gzip-compressed request body."""
    return gzip.compress(body)


async def watch_lag(app: BidApp, interval: float = 0.005) -> None:
    """Mark the worker overloaded while its event loop runs late: shed instead of queueing."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval)
        app.overloaded = loop.time() - t0 - interval > app.shed_lag_s


async def start_server(app: BidApp, host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BidProtocol(app), host, port, reuse_port=True, backlog=4096)
    asyncio.ensure_future(watch_lag(app))
    return server
