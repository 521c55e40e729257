"""The HTTP adapter: OpenRTB over HTTP/1.1 keep-alive on uvloop + httptools.

The protocol object parses bytes straight into the engine and writes the answer
back; there is no framework in between, because at a few thousand requests a
second per core every microsecond of overhead shows.  Routes:

    POST /bid[/<exchange>]          bid request -> 200 bid response | 204 no bid | 400 reason | 413
    POST /openrtb2[/<exchange>]     the same
    GET|POST /notice/{win,bill,loss}?…  signed notices -> 200 | 400 reason (a POST's body is read and ignored)
    GET  /metrics                   Prometheus text
    GET  /status                    JSON: model version, campaigns, pacing
    GET  /healthz                   200 when serving (liveness)
    GET  /readyz                    200 once bidding; 503 while the worker still reads its state topics or stops

HEAD on /metrics, /status, /healthz and /readyz gets GET's status and headers; HEAD elsewhere is refused (a HEAD must be
safe, and a notice is not), and an answer to a HEAD never has content.  Every 405 says in `Allow` what the
path takes.

Deadlines and overload.  A request's deadline is its arrival + tmax - the
network allowance.  The arrival is taken conservatively (`ArrivalClock`): bytes
read now may have waited in the kernel while the loop was busy, so while the
loop runs back to back a request counts as old as the previous busy period.
A request that has already waited `shed_after` before it is even parsed, or
three quarters of its own budget before it is decided, gets an immediate 204
(x-nobid-reason: overload), costing a few microseconds instead of a full bid;
one whose remaining time cannot cover a bid gets 204 (deadline).
So under overload the worker keeps answering fast instead of building a queue
whose every answer would be too late.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import logging
import os
import re
import time
import zlib
from collections.abc import Callable

import httptools
import orjson
from prometheus_client import CollectorRegistry

from bidder.engine import VALID_NOTICE, BidEngine
from bidder.metrics import CONTENT_TYPE, BidderCollector, BidderStats, exposition, exposition_steps
from bidder.notices import KINDS
from bidder.openrtb import BadRequest, parse_request
from bidder.slices import run_sliced

log = logging.getLogger("streambid.server")

MAX_BODY = 256 * 1024
MAX_INFLATED = 1024 * 1024
MAX_HEAD = 16 * 1024  # request line + headers
MAX_PIPELINED = 32  # requests one connection gets decided per read; the rest of a pipelined burst is shed
MAX_RENDERED = 2  # /metrics or /status pages one connection gets rendered per read (each costs milliseconds)
MAX_GZIP_MEMBERS = 16  # gzip members in one body: an exchange sends one; thousands of empty ones only cost CPU
REQUEST_TIMEOUT_S = 10.0  # a request still incomplete this long after its first bytes loses its connection, however it trickles
IDLE_TIMEOUT_S = 60.0  # a keep-alive connection without a request for this long is closed: idle ones must not use up fds
DEADLINE_RESERVE_S = 0.002  # a request with less time left than this gets a 204 without being decided
RESPOND_RESERVE_S = 0.0005  # what building and writing a response may take after the engine's last check
MIN_SHED_S = 0.002  # never shed a request younger than this
SHED_SHARE = 0.75  # shed unparsed requests that have waited this share of their budget: the rest is for deciding
LINGER_S = 2.0  # after a final answer, how long a connection's remaining input is read and dropped
READ_DRAINED = 64 * 1024  # a read shorter than this took everything the socket held
SATURATED_GAP_S = 0.00025  # a loop back at work sooner than this after its last busy period never waited for input
_204 = b"HTTP/1.1 204 No Content\r\nx-openrtb-version: 2.6\r\nx-nobid-reason: %s\r\n\r\n"
_200 = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nx-openrtb-version: 2.6\r\nContent-Length: %d\r\n\r\n"
_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS = {200: b"200 OK", 400: b"400 Bad Request", 404: b"404 Not Found", 405: b"405 Method Not Allowed",
           408: b"408 Request Timeout", 413: b"413 Payload Too Large", 414: b"414 URI Too Long",
           415: b"415 Unsupported Media Type", 431: b"431 Request Header Fields Too Large", 501: b"501 Not Implemented",
           503: b"503 Service Unavailable", 505: b"505 HTTP Version Not Supported"}
_EXCHANGE = re.compile(rb"^[A-Za-z0-9_.:-]{1,32}$")
_BID_PATH = re.compile(rb"/(?:bid|openrtb2)(?:/[^/?]*)?(?:\?|\Z)")
_GET_PATHS = ("/metrics", "/status", "/healthz", "/readyz")
_CRLF = (13, 10)
# RFC 9110 7.2: uri-host [":" port], the host an IP literal in brackets or a reg-name (RFC 3986 3.2.2), maybe empty
_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.!$&'()*+,;=_~-]+\]|[0-9A-Za-z.!$&'()*+,;=_~%-]*)(?::[0-9]*)?")
_BAD_HTTP = (b'{"error":"bad_http","detail":"not a well-formed HTTP request (framing, headers or a transfer coding '
             b'other than chunked last)"}')
_METHOD = re.compile(rb"[\r\n]*[-!#$%&'*+.^_`|~0-9A-Za-z]+ ")  # a method token (RFC 9110 5.6.2), after blank lines
_BAD_VERSION = "Invalid HTTP version"  # httptools' message for a version it cannot parse
_NO_VERSION = b'{"error":"http_version_not_supported","detail":"this server speaks HTTP/1.1 and HTTP/1.0"}'
_HEAD_NOTICE = b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, POST\r\nx-openrtb-version: 2.6\r\n\r\n"


def inflate(body: bytes) -> bytes:
    """gunzip with a hard cap, so a gzip bomb costs at most MAX_INFLATED bytes of memory.

    Every member is inflated, as gzip itself does (RFC 1952 allows several, and zero padding between them);
    the cap holds for all of them together, and at most MAX_GZIP_MEMBERS are read.
    """
    out: list[bytes] = []
    room = MAX_INFLATED
    rest = body
    while True:
        if len(out) == MAX_GZIP_MEMBERS:
            raise BadRequest("bad_gzip", f"body has more than {MAX_GZIP_MEMBERS} gzip members")
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = d.decompress(rest, room + 1)  # a max_length of 0 would mean no limit
        except zlib.error:
            raise BadRequest("bad_gzip", "body is not valid gzip") from None
        room -= len(part)
        if room < 0:
            raise BadRequest("body_too_large", f"inflated body exceeds {MAX_INFLATED} bytes")
        if not d.eof:
            raise BadRequest("bad_gzip", "gzip body is truncated")
        out.append(part)
        rest = d.unused_data.lstrip(b"\0")
        if not rest:
            return out[0] if len(out) == 1 else b"".join(out)


def supported_version(value: bytes) -> bool:
    """x-openrtb-version values this bidder answers: any 2.x (2.5 and 2.6 are read; 2.x is backward compatible).
    The header sent twice is a list (RFC 9110 5.3), which names no one version."""
    v = value.strip()
    return (v == b"2" or v.startswith(b"2.")) and b"," not in v


def origin_form(target: bytes) -> bytes:
    """The path and query of an absolute-form request target (http://host:port/bid/x?y -> /bid/x?y)."""
    _, sep, rest = target.partition(b"://")
    if not sep:
        return target
    start = rest.find(b"/")
    return rest[start:] if start >= 0 else b"/"


def bid_path(url: bytes) -> bool:
    """The documented bid endpoints only: /bid, /bid/<exchange>, /openrtb2, /openrtb2/<exchange> (query allowed)."""
    return _BID_PATH.match(url) is not None


def exchange_name(path: bytes) -> str:
    """The exchange label from /bid/<exchange>: letters, digits and _.:- only, else "invalid" (it reaches metrics)."""
    name = _exchanges.get(path)
    if name is None:
        if path.count(b"/") < 2 or not path.rsplit(b"/", 1)[1]:
            name = "default"
        else:
            raw = path.rsplit(b"/", 1)[1]
            name = raw.decode("ascii") if _EXCHANGE.match(raw) else "invalid"
        if len(_exchanges) < 1024:  # paths are client-chosen: remember only so many
            _exchanges[path] = name
    return name


_exchanges: dict[bytes, str] = {}


class ArrivalClock:
    """The earliest moment the bytes being read now can have reached the machine.

    The event loop reads every ready socket, then runs the callbacks, then polls
    again.  Bytes that arrive while callbacks run wait in the kernel until the
    next poll, unseen.  So the clock watches busy periods (from the first read
    of a loop pass to the next pass): when a period starts right after the last
    one ended, the loop never waited for input and bytes read now may be as old
    as the start of the previous period; otherwise they arrived just now.
    Each connection tightens this with its own previous read (`BidProtocol`):
    bytes read now reached the socket after the last time it was drained.
    """

    __slots__ = ("loop", "open", "start", "floor", "prev_start", "prev_end")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.open = False
        self.start = self.floor = self.prev_start = self.prev_end = 0.0

    def arrival(self, now: float) -> float:
        """For bytes read at `now` (perf_counter)."""
        if self.open:
            return self.floor
        self.floor = self.prev_start if now - self.prev_end < SATURATED_GAP_S else now
        self.start = now
        if self.loop is not None:
            self.open = True
            self.loop.call_soon(self._close)  # runs at the start of the next loop pass, just before it polls
        return self.floor

    def busy_until(self, now: float) -> None:
        """Work done after the pass was closed (the answers written at its end) still kept input waiting."""
        if not self.open:
            self.prev_end = now

    def _close(self) -> None:
        self.open = False
        self.prev_start = self.start
        self.prev_end = time.perf_counter()


class BidApp:
    """Everything a worker process's connections share: the engine, counters and settings."""

    def __init__(self, engine: BidEngine, stats: BidderStats, worker: str = "0",
                 status: Callable[[], dict] | None = None, shed_after_ms: float = 60.0) -> None:
        self.engine = engine
        self.stats = stats
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BidderCollector(stats, engine, worker))
        self.status_extra = status or dict
        self.network_s = engine.cfg.network_ms / 1000.0
        self.shed_after_s = shed_after_ms / 1000.0
        self.clock = ArrivalClock()
        self.connections: set[BidProtocol] = set()
        self.outbox: list[tuple[asyncio.Transport, bytes, bool]] = []  # answers decided this loop pass, written at its end
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sweeper: asyncio.Future | None = None
        self._last_internal_log = 0.0
        self.warming: tuple[str, ...] = ()  # what this worker still reads before it bids (bidder.wiring.Warmup)
        self.draining = False  # stopping (`drain`): /readyz says 503, and every answer closes its connection
        self._page: asyncio.Future[bytes] | None = None  # the /metrics text being rendered between bids

    def bid(self, body: bytes, gz: bool, exchange: str, started: float, version: bytes = b"",
            arrived: float = 0.0) -> bytes:
        """One bid request to raw HTTP response bytes; never raises for bad input.

        `started`: when its first bytes arrived, where the deadline counts from.  `arrived`: when its last bytes
        did (0: with the first), where waiting in this worker counts from; a body the client sent late (after a
        100 Continue, or over a slow link) waited for the client, not for us.  Before parsing, only `shed_after`
        can shed: the request's own budget is not known yet, and another request's could be far shorter.  Once
        parsed, its own budget sets how long it may have waited.
        """
        stats = self.stats
        if time.perf_counter() - max(started, arrived) > self.shed_after_s:
            return self.shed(exchange, started)
        try:
            if version and not supported_version(version):
                raise BadRequest("unsupported_version", "x-openrtb-version must be 2.x (2.5 and 2.6 are supported)")
            if gz:
                body = inflate(body)
            req = parse_request(body, self.engine.cfg.salt)
        except BadRequest as e:
            if e.reason == "too_many_imps":  # a valid request, only more than is read: a no-bid, not an error
                stats.requests[(exchange, "nobid", e.reason)] += 1
                stats.observe(time.perf_counter() - started)
                return _204 % b"too_many_imps"
            stats.requests[(exchange, "error", e.reason)] += 1
            status = 413 if e.reason == "body_too_large" else 400  # a gzip body too large once inflated, as when sent
            return response(status, orjson.dumps({"error": e.reason, "detail": e.detail}))
        if self.warming:
            stats.requests[(exchange, "nobid", "warming")] += 1
            stats.observe(time.perf_counter() - started)
            return _204 % b"warming"
        budget = req.tmax / 1000.0 - self.network_s
        deadline = started + budget
        now = time.perf_counter()
        if now + DEADLINE_RESERVE_S > deadline:
            stats.requests[(exchange, "nobid", "deadline")] += 1
            stats.observe(now - started)
            if budget > 0 and now > deadline:
                stats.past_deadline += 1
            return _204 % b"deadline"
        if now - started > max(budget * SHED_SHARE, MIN_SHED_S):
            return self.shed(exchange, started)
        out = self.engine.bid(req, exchange, deadline - RESPOND_RESERVE_S)
        end = time.perf_counter()
        stats.observe(end - started)
        if end > deadline:
            stats.past_deadline += 1
        if out.status == 204:
            stats.requests[(exchange, "nobid", out.reason)] += 1
            return _204 % out.reason.encode()
        stats.requests[(exchange, "bid", "")] += 1
        return _200 % (b"application/json", len(out.body)) + out.body

    def send(self, transport: asyncio.Transport, out: bytes, close: bool) -> None:
        """Queue an answer (and the hang-up after it, if `close`); answers go out at the end of the loop pass.

        Written one by one as decided, each write would wake the peer's process for one answer; written together
        after every ready connection has been read, a pass's answers cost one wake-up, and the kernel's network
        work comes in one run instead of between every two decisions.  Answers on one connection keep their order.
        """
        if not self.outbox and self.loop is not None:
            if not self.clock.open:  # a pass that writes without reading (a hang-up, a page) is a busy period too:
                self.clock.arrival(time.perf_counter())  # else its flush would extend the last read's, however old
            self.loop.call_soon(self.flush)
        self.outbox.append((transport, out, close))
        if self.loop is None:  # not serving (tests drive protocols by hand): write at once
            self.flush()

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, []
        for transport, out, close in outbox:
            if not transport.is_closing():
                transport.write(out)
                if close:
                    transport.close()
        self.clock.busy_until(time.perf_counter())  # the writes were loop work too: input waited through them

    def shed(self, exchange: str, started: float) -> bytes:
        """The immediate no-bid for a request that cannot be decided now (overload).

        Its time is observed like every answer's: the slowest answers are the ones that waited, and a latency
        SLO that left them out would read well exactly while the exchange sees timeouts.
        """
        self.stats.shed += 1
        self.stats.requests[(exchange, "nobid", "overload")] += 1
        self.stats.observe(time.perf_counter() - started)
        return _204 % b"overload"

    def internal_error(self, exchange: str | None, e: Exception) -> bytes:
        """A bug must not become a 500 or a dead worker: bid requests get a no-bid, the rest a 400; log the place only."""
        now = time.monotonic()
        if now - self._last_internal_log > 60.0:  # the message could hold request data, so only type and place
            self._last_internal_log = now
            tb = e.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
            log.error("internal error %s at %s (further ones this minute are only counted)", type(e).__name__, where)
        if exchange is not None:
            self.stats.requests[(exchange, "nobid", "internal_error")] += 1
            return _204 % b"internal_error"
        return response(400, b'{"error":"internal"}')

    def notice(self, kind: str, query: str) -> bytes:
        outcome = self.engine.notice(kind, query)
        self.stats.notices[(kind if kind in KINDS else "unknown", outcome)] += 1
        if outcome in VALID_NOTICE:  # a test auction's notice is valid, only not billable; "won" too
            return response(200, b'{"ok":true}')
        return response(400, orjson.dumps({"error": outcome}))

    def metrics(self) -> bytes:
        """The /metrics answer rendered at once (where no loop serves bids: tests driving protocols by hand)."""
        return response(200, exposition(self.stats, self.engine), CONTENT_TYPE)

    def metrics_page(self) -> asyncio.Future[bytes]:
        """The /metrics text, rendered in slices between bids (with thousands of campaigns it takes tens of
        milliseconds, longer than a request may wait).  Scrapes arriving meanwhile share the render under way."""
        page = self._page
        if page is None or page.done():
            page = self._page = asyncio.ensure_future(run_sliced(exposition_steps(self.stats, self.engine)))
        return page

    def status(self) -> bytes:
        e = self.engine
        doc = {
            "bidder": e.cfg.bidder_id,
            "pid": os.getpid(),  # which worker process of the port answered
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


def closing(out: bytes) -> bytes:
    """`out` saying the connection closes after it (RFC 9112 9.6), so a pooled client does not send on it again."""
    return out.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)


def kept_alive(out: bytes) -> bytes:
    """`out` confirming that the connection stays open: an HTTP/1.0 client that asked for keep-alive closes it
    otherwise (RFC 9112 9.3), and a benchmark such as `ab -k` would count every request as a new connection."""
    return out.replace(b"\r\n", b"\r\nConnection: keep-alive\r\n", 1)


def not_allowed(allow: bytes, body: bytes = b'{"error":"method_not_allowed"}') -> bytes:
    """A 405 naming in `Allow` the methods the path does take, as RFC 9110 15.5.6 requires."""
    return (b"HTTP/1.1 405 Method Not Allowed\r\nAllow: %s\r\nContent-Type: application/json\r\n"
            b"x-openrtb-version: 2.6\r\nContent-Length: %d\r\n\r\n" % (allow, len(body))) + body


_405_BID = not_allowed(b"POST", b'{"error":"method_not_allowed","detail":"bid requests are POSTed"}')
_BUSY = response(503, b'{"error":"busy","detail":"too many requests pipelined in one read; send them again"}')
# from _resource: the answer is the /metrics page, rendered between bids (BidApp.metrics_page); a unique object
_LATER = bytes(bytearray(b"later"))
_NO_CODING = response(501, b'{"error":"bad_encoding","detail":"Transfer-Encoding must be chunked alone"}')
# RFC 9110 15.5.16: an unsupported content coding is a 415 whose Accept-Encoding names the codings taken
_BAD_CODING = response(415, b'{"error":"bad_encoding","detail":"Content-Encoding must be gzip or identity, once"}').replace(
    b"\r\n", b"\r\nAccept-Encoding: gzip\r\n", 1)


def head_of(out: bytes) -> bytes:
    """The answer to a HEAD: a response without its content (RFC 9112 6.3), else the client reads it as the next one."""
    return out[:out.index(b"\r\n\r\n") + 4]


class BidProtocol(asyncio.Protocol):
    """One keep-alive connection: httptools callbacks feed the app, answers go out in order."""

    __slots__ = ("app", "transport", "parser", "url", "body", "size", "head", "gz", "encoding", "version", "expect",
                 "started", "receiving", "too_large", "budget", "dead", "last_read", "read_floor", "seen", "length",
                 "coding", "upgrade_body", "rendered", "paused", "in_trailer", "held", "head_read", "hosts", "host_ok",
                 "keep10")

    def __init__(self, app: BidApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.receiving = 0.0  # perf_counter when the message being read began; 0 between messages
        self.last_read = 0.0  # perf_counter of the last read that drained the socket
        self.read_floor = 0.0  # earliest arrival of the bytes being parsed now
        self.seen = time.perf_counter()  # the last read, for the idle timeout
        self.dead = False
        self.budget = MAX_PIPELINED
        self.rendered = MAX_RENDERED
        self.paused = 0.0  # perf_counter when the client stopped reading its answers; 0 while it reads
        # (answer, close, HEAD, HTTP/1.0 keep-alive) of each request behind a page being rendered
        self.held: list[tuple[bytes, bool, bool, bool]] | None = None
        self.head_read = 0  # bytes read while the head of the message being read was still incomplete
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0
        self.head = 0
        self.gz = False
        self.encoding = b""
        self.version = b""
        self.expect = False
        self.too_large = False
        self.started = 0.0
        self.length = b""  # Content-Length and Transfer-Encoding as sent: an ignored upgrade restates them
        self.coding = b""
        self.upgrade_body = False
        self.in_trailer = False  # past the head: trailer fields are never merged into it (RFC 9110 6.5.1)
        self.hosts = 0  # Host header lines: an HTTP/1.1 request must have one, and no request may have two
        self.host_ok = True  # every Host value is a host[:port] (or empty)
        self.keep10 = False  # an HTTP/1.0 request: its answer confirms keep-alive when the connection stays open

    # -- transport events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.app.connections.discard(self)

    def eof_received(self) -> bool:
        """The client has sent all it will (a half-close): it is still owed the answers to what it sent, so the
        connection closes after them, not now.  Closing now would drop a /metrics page still being rendered."""
        if self.held is not None:
            self.held.append((b"", True, False, False))
            return True
        if self.dead or self.transport is None:
            return False
        self.app.send(self.transport, b"", True)  # queued behind this pass's answers, in order
        return True

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its requests until it catches up (the sweeper
        hangs up on one that does not within REQUEST_TIMEOUT_S)."""
        self.paused = time.perf_counter()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = 0.0
        if self.held is None and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        now = time.perf_counter()
        floor = self.app.clock.arrival(now)
        self.read_floor = floor if floor > self.last_read else self.last_read
        if len(data) < READ_DRAINED:  # a short read emptied the socket: what comes next arrived after now
            self.last_read = now
        if data[0] not in _CRLF or data.strip(b"\r\n"):  # blank lines between requests are no activity (RFC 9112 2.2)
            self.seen = now
        self.budget = MAX_PIPELINED
        self.rendered = MAX_RENDERED
        message = self.receiving  # when the message being read began; 0 between messages
        mid_head = message and not self.in_trailer  # a head begun in an earlier read and not yet complete
        try:
            while True:
                try:
                    self.parser.feed_data(data)
                    break
                except httptools.HttpParserUpgrade as e:
                    data = self._ignore_upgrade(data[e.args[0]:])
        except httptools.HttpParserInvalidMethodError:
            if not message and self.budget == MAX_PIPELINED and _METHOD.match(data):  # this read began the request
                # RFC 9110 9.1: a well-formed method this server does not know (bytes that are no token are bad HTTP)
                self._close(501, b'{"error":"method_not_implemented","detail":"this server takes GET, HEAD and POST"}')
                return
            self._close(400, _BAD_HTTP)
            return
        except httptools.HttpParserError as e:
            if str(e) == _BAD_VERSION:  # HTTP/1.2, HTTP/3.0, ...: llhttp knows only 0.9, 1.0, 1.1 and 2.0
                self._close(505, _NO_VERSION)
                return
            self._close(400, _BAD_HTTP)
            return
        if self.receiving and not self.in_trailer and not self.dead:  # the read ended inside a head
            self._count_head(len(data) if mid_head and self.receiving == message else 0)

    def _count_head(self, n: int) -> None:
        """Refuse a head that keeps coming without ending, as it arrives.

        The parser hands over a header only once its line ends, and until then keeps growing a copy of it (at a
        cost that grows with the square of its length), so the per-header check sees nothing of a line that never
        ends.  Every read that leaves the head still incomplete was head, bar the first, which may also hold the
        end of the message before: it is not counted, so at most one read passes unchecked.
        """
        self.head_read += n
        if self.head_read > MAX_HEAD:
            self._close(431, b'{"error":"header_too_large"}')

    def _ignore_upgrade(self, rest: bytes) -> bytes:
        """Go on in HTTP/1.1 where httptools stopped for an Upgrade (RFC 9110 lets a server ignore it); the rest to parse.

        httptools ends an upgrade request at its headers.  One without a body was answered then, and the same
        parser reads on.  One with a body gets a fresh parser, fed first a head restating what this request's
        headers set, so the body is read and the request answered as usual.  After a CONNECT come tunnel bytes.
        """
        if self.dead or self.parser.get_method() == b"CONNECT":
            return b""
        if not self.upgrade_body:
            return rest
        method, close = self.parser.get_method(), not self.parser.should_keep_alive()
        head = [b"%s %s HTTP/1.1" % (method, self.url), b"Host: restated"]  # its Host was checked; not used after
        for name, value in ((b"Content-Length", self.length), (b"Transfer-Encoding", self.coding),
                            (b"Content-Encoding", self.encoding), (b"x-openrtb-version", self.version)):
            if value:
                head.append(name + b": " + value)
        if close:
            head.append(b"Connection: close")
        self.parser = httptools.HttpRequestParser(self)
        floor, self.read_floor = self.read_floor, self.started  # the request keeps its arrival, later ones their own
        self.parser.feed_data(b"\r\n".join(head) + b"\r\n\r\n")
        self.read_floor = floor
        return rest

    def _close(self, status: int, body: bytes) -> None:
        """Answer once more and hang up: after this the connection's byte stream cannot be trusted.

        The write side closes first and what the client still sends is read and dropped for a moment
        (a lingering close): closing a socket with unread input resets it, and the reset can destroy the
        answer before the client has read it.
        """
        if self.dead:  # answered and hung up already; after write_eof() a write would raise
            return
        self.dead = True
        t = self.transport
        if t is None or t.is_closing():
            return
        out = closing(response(status, body))
        if self.url and self.parser.get_method() == b"HEAD":  # url is set once this message's method is known
            out = head_of(out)
        if self.held is not None:  # an earlier request's page is still being rendered: this answer follows it
            self.held.append((out, True, False, False))
            return
        if self.app.outbox:  # answers to earlier requests go first
            self.app.flush()
        t.write(out)
        if t.can_write_eof():
            t.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, hang_up, t)
        else:
            hang_up(t)

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.head_read = 0
        self.receiving = time.perf_counter()
        self.started = self.read_floor

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head += len(url)
        if self.head > MAX_HEAD:  # the target comes before any header: it alone is too long
            self._close(414, b'{"error":"uri_too_long","detail":"request targets are limited to 16 KiB"}')

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += len(name) + len(value)
        if self.head > MAX_HEAD:
            self._close(431, b'{"error":"header_too_large"}')
            return
        if self.in_trailer:
            return
        n = len(name)
        if n == 16 and name.lower() == b"content-encoding":  # sent twice, the codings form one list (RFC 9110 5.3)
            coding = value.strip().lower()
            self.encoding = self.encoding + b", " + coding if self.encoding else coding
            self.gz = self.encoding == b"gzip" or self.encoding == b"x-gzip"  # RFC 9110 8.4.1.3: the same
        elif n == 14 and name.lower() == b"content-length":
            self.length = value
            try:
                self.too_large = int(value) > MAX_BODY
            except ValueError:
                self.too_large = True
        elif n == 17:
            lower = name.lower()
            if lower == b"x-openrtb-version":
                self.version = self.version + b", " + value if self.version else value
            elif lower == b"transfer-encoding":
                self.coding = self.coding + b", " + value if self.coding else value
        elif n == 6 and name.lower() == b"expect":
            self.expect = value.strip().lower() == b"100-continue"
        elif n == 4 and name.lower() == b"host":
            self.hosts += 1
            self.host_ok = self.host_ok and _HOST.fullmatch(value.strip(b" \t")) is not None  # OWS kept

    def on_headers_complete(self) -> None:
        self.in_trailer = True
        if self.dead:
            return
        if self.url[:1] != b"/":  # absolute-form (RFC 9112 3.2.2): every server must take it; route by its path
            self.url = origin_form(self.url)
        http = self.parser.get_http_version()
        self.keep10 = http == "1.0"
        if http != "1.1" and http != "1.0":  # 0.9 and 2.0 parse, but neither is spoken here
            self._close(505, _NO_VERSION)
        elif (self.hosts != 1 and (self.hosts or http == "1.1")) or not self.host_ok:  # RFC 9112 3.2: MUST answer 400
            self._bad_host()
        elif self.coding and http == "1.0":
            # RFC 9112 6.1: an HTTP/1.0 peer knows no chunked coding, so the two ends may disagree where it ends
            self._close(400, b'{"error":"bad_http","detail":"Transfer-Encoding in an HTTP/1.0 request: send '
                             b'Content-Length, or HTTP/1.1"}')
        elif self.too_large:
            self._too_large()
        elif self.expect and self.transport is not None and http != "1.0":
            # RFC 9110 10.1.1: an HTTP/1.0 client cannot read a 100, so its expectation is ignored
            if self.held is not None:  # behind a page being rendered: the 100 must not overtake its answer
                self.held.append((_100, False, False, False))
                return
            if self.app.outbox:
                self.app.flush()
            self.transport.write(_100)

    def _bad_host(self) -> None:
        """400 and hang up: without exactly one Host the request's target is unclear (RFC 9112 3.2 asks for the
        400); counted on the bid paths, where an exchange's client sending it would show in the error rate."""
        if bid_path(self.url):
            self.app.stats.requests[(exchange_name(self.url.split(b"?", 1)[0]), "error", "bad_host")] += 1
        detail = (b"a Host value that is no host[:port]" if not self.host_ok else
                  b"two Host headers" if self.hosts else b"an HTTP/1.1 request must carry a Host header")
        self._close(400, b'{"error":"bad_host","detail":"%s (RFC 9112 3.2)"}' % detail)

    def on_body(self, chunk: bytes) -> None:
        if self.dead:
            return
        self.size += len(chunk)
        if self.size > MAX_BODY:
            self._too_large()
        else:
            self.body.append(chunk)

    def _too_large(self) -> None:
        """413 at once and hang up, rather than reading (and discarding) the rest of a huge body."""
        if bid_path(self.url):
            self.app.stats.requests[(exchange_name(self.url.split(b"?", 1)[0]), "error", "body_too_large")] += 1
            self._close(413, b'{"error":"body_too_large","detail":"bid requests are limited to 256 KiB"}')
        else:
            self._close(413, b'{"error":"body_too_large","detail":"request bodies are limited to 256 KiB"}')

    def on_message_complete(self) -> None:
        self.receiving = 0.0
        transport = self.transport
        if self.dead or transport is None or transport.is_closing():
            return
        parser = self.parser
        close = not parser.should_keep_alive() or self.app.draining
        if parser.should_upgrade():
            if parser.get_method() == b"CONNECT":
                close = True
            elif self.length or self.coding:  # httptools has not read the body: _ignore_upgrade does
                self.upgrade_body = True
                return
        try:
            out = self._route()
        except Exception as e:  # the last line of defence: never a 500, never a dead worker
            out = self.app.internal_error(exchange_name(self.url.split(b"?", 1)[0]) if bid_path(self.url) else None, e)
            if parser.get_method() == b"HEAD":
                out = head_of(out)
        keep10 = self.keep10 and not close  # RFC 9112 9.3: an HTTP/1.0 client keeps only a confirmed connection
        if close and out is not _LATER:  # RFC 9112 9.6: the last answer says the connection closes
            out = closing(out)
        if self.held is not None:
            self.held.append((out, close, parser.get_method() == b"HEAD", keep10))
        elif out is _LATER:
            self._hold(self.app.metrics_page(), close, parser.get_method() == b"HEAD", keep10)
        else:
            self.app.send(transport, kept_alive(out) if keep10 else out, close)

    def _hold(self, page: asyncio.Future[bytes], close: bool, head: bool, keep10: bool) -> None:
        """Answer with `page` once it is rendered; until then read nothing more from this connection, and queue
        the answers to what it has already sent behind the page, in order (a page among them is the same text)."""
        self.held = []
        if self.transport is not None:
            self.transport.pause_reading()
        page.add_done_callback(lambda done: self._release(done, close, head, keep10))

    def _release(self, page: asyncio.Future[bytes], close: bool, head: bool, keep10: bool) -> None:
        held, self.held = self.held or [], None
        t = self.transport
        if t is None or t.is_closing() or page.cancelled():  # cancelled: the worker is stopping
            return
        try:
            out = response(200, page.result(), CONTENT_TYPE)
        except Exception as e:  # as in on_message_complete: a bug in rendering must not kill the connection
            out = self.app.internal_error(None, e)
        own = head_of(out) if head else out
        self.app.send(t, kept_alive(own) if keep10 else closing(own) if close else own, close)
        for answer, hang, cut, keep in held:
            if answer is _LATER:
                answer = head_of(out) if cut else out
                answer = closing(answer) if hang else answer
            self.app.send(t, kept_alive(answer) if keep else answer, hang)
            close = close or hang
        if not close and not self.paused and not t.is_closing():
            t.resume_reading()

    def _route(self) -> bytes:
        url = self.url
        method = self.parser.get_method()
        self.budget -= 1  # one connection pipelining a burst (of anything) must not hold the worker
        if bid_path(url):
            if method != b"POST":
                return head_of(_405_BID) if method == b"HEAD" else _405_BID
            exchange = exchange_name(url.split(b"?", 1)[0])
            if self.budget < 0 or self.held is not None:  # behind a page: its answer could only go out late
                return self.app.shed(exchange, self.started)
            if self._coding_refused():
                self.app.stats.requests[(exchange, "error", "bad_encoding")] += 1
                return _NO_CODING
            if self.encoding and not self.gz and self.encoding != b"identity":
                self.app.stats.requests[(exchange, "error", "bad_encoding")] += 1
                return _BAD_CODING
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            return self.app.bid(body, self.gz, exchange, self.started, self.version, self.read_floor)
        if self.budget < 0:
            return _BUSY
        if self._coding_refused():
            return _NO_CODING
        out = self._resource(url, method)
        return head_of(out) if method == b"HEAD" and out is not _LATER else out

    def _coding_refused(self) -> bool:
        """A transfer coding besides chunked: httptools has read the body as chunked alone, so it is not the body."""
        return bool(self.coding) and self.coding.strip().lower() != b"chunked"

    def _resource(self, url: bytes, method: bytes) -> bytes:
        """Every path but the bid endpoints.  A HEAD gets the whole GET answer here; `_route` cuts its content."""
        path, _, query = url.decode("latin-1").partition("?")
        if path.startswith("/notice/"):
            if method == b"GET" or method == b"POST":  # OpenRTB 2.6 2.1: either, at the exchange's discretion
                return self.app.notice(path[8:], query)
            if method == b"HEAD":  # not verified, not counted; no Content-Length, as a GET's would differ
                return _HEAD_NOTICE
            return not_allowed(b"GET, POST")
        if path not in _GET_PATHS:
            return response(404, b'{"error":"not_found"}')
        if method != b"GET" and method != b"HEAD":
            return not_allowed(b"GET, HEAD")
        if path == "/healthz":
            return response(200, b'{"ok":true}')
        if path == "/readyz":
            if self.app.draining:
                return response(503, b'{"ready":false,"draining":true}')
            if self.app.warming:
                return response(503, orjson.dumps({"ready": False, "reading": self.app.warming}))
            return response(200, b'{"ready":true}')
        self.rendered -= 1
        if self.rendered < 0:  # each page costs milliseconds: a burst of them must not hold the worker
            return _BUSY
        if path == "/status":
            return self.app.status()
        return _LATER if self.app.loop is not None else self.app.metrics()


def hang_up(t: asyncio.BaseTransport) -> None:
    """Close a connection now.  close() would first wait to write what is buffered, forever if the client has
    stopped reading; abort() drops that.  Asked for by method, not by class: uvloop's transports have both
    methods without deriving from asyncio.WriteTransport."""
    buffered = getattr(t, "get_write_buffer_size", None)
    abort = getattr(t, "abort", None)
    if abort is not None and buffered is not None and buffered():
        abort()
    else:
        t.close()


def gzip_body(body: bytes) -> bytes:
    """For clients and tests: a gzip-compressed request body."""
    return gzip.compress(body)


async def sweep_stalled(app: BidApp, interval: float = 1.0) -> None:
    """Hang up on connections that began a request and stopped sending it: they must not hold memory forever.

    Idle keep-alive connections are closed too: each holds a file descriptor, and enough of them would keep
    the worker from accepting the connections that bring requests.
    """
    while True:
        await asyncio.sleep(interval)
        now = time.perf_counter()
        for proto in list(app.connections):
            if proto.paused:  # not reading its answers: a 408 would only join them in the buffer
                if now - proto.paused > REQUEST_TIMEOUT_S and proto.transport is not None:
                    proto.dead = True
                    hang_up(proto.transport)
            elif proto.receiving:
                if now - proto.receiving > REQUEST_TIMEOUT_S:
                    proto._close(408, b'{"error":"request_timeout"}')
            elif now - proto.seen > IDLE_TIMEOUT_S and proto.transport is not None:
                hang_up(proto.transport)


DRAIN_TAIL_S = 1.0  # after the drain: how long a request still being read or decided may take to be answered


async def drain(app: BidApp, server: asyncio.AbstractServer, grace_s: float, cut: asyncio.Event | None = None) -> None:
    """Stop serving without dropping what a client has sent: the way a worker ends on SIGTERM.

    For up to `grace_s`, and only while connections are open, it goes on answering on the port, every answer
    saying `Connection: close` and /readyz 503, so each pooled connection closes after its next answer and a load
    balancer takes the worker out.  Then it stops listening, hangs up on idle connections, and gives those in the
    middle of a request DRAIN_TAIL_S to be answered.  `cut` set (a second Ctrl-C) ends the grace at once.
    """
    app.draining = True
    loop = asyncio.get_running_loop()
    until = loop.time() + grace_s
    while app.connections and loop.time() < until and not (cut is not None and cut.is_set()):
        await asyncio.sleep(0.05)
    server.close()
    until = loop.time() + DRAIN_TAIL_S
    while True:
        busy = False
        for proto in list(app.connections):
            if proto.receiving or proto.held is not None:
                busy = True
            elif proto.transport is not None:
                hang_up(proto.transport)
        if not busy or loop.time() >= until:
            break
        await asyncio.sleep(0.02)
    app.flush()


def settle_heap(app: BidApp) -> None:
    """Build the engine's lazy structures now, then move everything alive into the permanent GC generation.

    Whatever is left lazy is paid by the first requests: with thousands of exploring creatives, filling their pools
    of Thompson draws alone takes longer than a request's deadline.

    A full collection walks every object; with campaigns, index and model in the heap that is tens of
    milliseconds, a pause every request arriving meanwhile would pay.  Frozen objects are never walked.
    """
    engine = app.engine
    engine.live()
    engine.index.slots_of("")
    scoring = getattr(engine, "_scoring", None)
    if scoring is not None:
        tables = scoring()
        for build in ("warm", "fill_draws"):  # hour and domain columns; every exploring creative's pool of draws
            step = getattr(tables, build, None)
            if step is not None:
                step()
    gc.collect()
    gc.freeze()


async def start_server(app: BidApp, host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    settle_heap(app)
    app.clock.loop = app.loop = loop
    server = await loop.create_server(lambda: BidProtocol(app), host, port, reuse_port=True, backlog=4096)
    app.sweeper = asyncio.ensure_future(sweep_stalled(app))
    return server
