"""Open-loop HTTP/1.1 load generator for bid endpoints.

An exchange does not wait for a slow bidder before sending the next request,
so neither does this generator: requests leave on a fixed schedule (constant,
ramp or step) and each latency is measured from the request's *intended* send
time.  When every connection is busy a request queues, its clock still
running; one that cannot be sent within tmax is dropped and counted as a
timeout, as an exchange would.  This avoids coordinated omission: a stall
makes every request scheduled during it slow, instead of silently pausing
the load.

It has to offer more load than one bidder core can take from one process, so
the hot path is lean: uvloop transports, request bytes built once, one
request in flight per keep-alive connection, responses parsed from raw bytes
(status line, Content-Length or chunked, one header), samples appended to
flat arrays, and all percentile work done after the run.  The scheduler
spins on the event loop (`call_soon`) when the next request is due within
1.5 ms, because loop timers only have millisecond resolution and a late
send would be charged to the server.

`rate <= 0` switches to closed-loop saturation: every connection sends its
next request as soon as the previous one is answered, which measures the
server's maximum throughput.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import math
import socket
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np  # imported up front: a first import inside the run would stall the loop for ~0.1 s
import orjson

from loadtest.report import LoadReport, format_report, histogram_of

__all__ = [
    "LoadReport",
    "RemoteTargetRefused",
    "Target",
    "format_report",
    "parse_target",
    "rate_function",
    "run_load",
    "send_time_function",
]

PROFILES = ("const", "ramp", "step")
STEPS = 5  # the step profile climbs in this many equal stairs
_SPIN_WITHIN = 0.0015  # seconds: closer than this to the next send, spin instead of arming a timer
_CONNECT_BATCH = 64
TIMELINE_BINS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # seconds: the finest with <= 120 bins ...
MIN_PER_BIN = 20  # ... and enough answers per bin for its p99 to mean something
MAX_SAMPLES = 20_000  # individual latencies kept for the scatter plot


class RemoteTargetRefused(ValueError):
    """The target is not on this machine and remote targets were not allowed."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str
    url: str


TARGET_EXAMPLE = "e.g. http://127.0.0.1:8080/bid/ex1 or :8080/bid/ex1"


def parse_target(url: str, allow_remote: bool = False) -> Target:
    """Normalise `url` (scheme and host optional, host defaults to 127.0.0.1) and refuse non-loopback hosts.

    A load test must only hit servers on this machine unless the operator says
    otherwise, so every address the host name resolves to must be loopback.
    ValueError says what is wrong with `url` without repeating it.
    """
    raw = url.strip()
    if not raw:
        raise ValueError(f"empty; give the bidder's bid URL, {TARGET_EXAMPLE}")
    if raw.isdigit():
        raw = f":{raw}"
    if "://" not in raw:
        raw = "http://" + (raw if not raw.startswith(":") else "127.0.0.1" + raw)
    parts = urlsplit(raw)
    if parts.scheme != "http":
        raise ValueError(f"only http:// targets are supported, not {parts.scheme}://")
    port = _target_port(parts.netloc)
    if not parts.hostname and port is None:
        raise ValueError(f"names neither a host nor a port; give the bidder's bid URL, {TARGET_EXAMPLE}")
    host = parts.hostname or "127.0.0.1"
    port = port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not allow_remote and not _is_loopback(host, port):
        raise RemoteTargetRefused(
            f"refusing to load {host}: not a loopback address (127.0.0.0/8, ::1); pass --allow-remote for a host you run"
        )
    shown_host = f"[{host}]" if ":" in host else host
    return Target(host, port, path, f"http://{shown_host}:{port}{path}")


def _target_port(netloc: str) -> int | None:
    """The port written in a URL's `netloc`, None when none is: urllib reads `:0` and `:` as none, so 80."""
    _, colon, text = netloc.rpartition("@")[2].rpartition("]")[2].rpartition(":")
    if not colon:
        return None
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535; give the bidder's port, {TARGET_EXAMPLE}")
    return int(text)


def _is_loopback(host: str, port: int) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise ValueError(f"host {host!r} cannot be resolved; give the bidder's URL, {TARGET_EXAMPLE}") from None
    addrs = {str(info[4][0]) for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def build_requests(target: Target, bodies: Sequence[bytes], headers: dict[str, str] | None = None) -> list[bytes]:
    """Whole HTTP/1.1 POST requests, built once so sending is a single write."""
    host = f"{target.host}:{target.port}" if ":" not in target.host else f"[{target.host}]:{target.port}"
    head = [f"POST {target.path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json", "x-openrtb-version: 2.6"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    prefix = ("\r\n".join(head) + "\r\nContent-Length: ").encode()
    return [prefix + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]


def answer_deadlines(bodies: Sequence[bytes], tmax: float, network: float = 0.0) -> list[float]:
    """Seconds after its intended send by which each body's answer is due: the request's own `tmax` (the run's
    `tmax` when it has no positive one, or is not JSON), less `network`, the round trip a real network would add
    to a loopback one (the bidder keeps that much of tmax for it)."""
    out = []
    for body in bodies:
        try:
            own = orjson.loads(body).get("tmax")
        except (orjson.JSONDecodeError, AttributeError):
            own = None
        due = own / 1000 if type(own) is int and own > 0 else tmax
        out.append(due - network)
    return out


def send_time_function(profile: str, rate: float, duration: float) -> Callable[[int], float]:
    """Seconds into the run at which request number k (from 0) is due: the inverse of the profile's running count.

    Computing each send time from k (instead of adding intervals) keeps long
    runs free of drift and starts a ramp correctly from zero.
    """
    if profile == "const":
        return lambda k: k / rate
    if profile == "ramp":
        return lambda k: math.sqrt(2.0 * duration * k / rate)  # count(t) = rate * t^2 / (2 * duration)
    if profile == "step":
        width = duration / STEPS
        rates = [rate * (j + 1) / STEPS for j in range(STEPS)]
        firsts = [0.0]
        for r in rates[:-1]:
            firsts.append(firsts[-1] + r * width)

        def at(k: int) -> float:
            j = bisect.bisect_right(firsts, k) - 1
            return j * width + (k - firsts[j]) / rates[j]

        return at
    raise ValueError(f"profile must be one of {', '.join(PROFILES)}")


def rate_function(profile: str, rate: float, duration: float) -> Callable[[float], float]:
    """Requests/s wanted at `t` seconds into the run: flat, a linear climb, or stairs up to `rate`."""
    if profile == "const":
        return lambda t: rate
    if profile == "ramp":
        floor = rate / 100
        return lambda t: max(floor, rate * min(t, duration) / duration)
    if profile == "step":
        width = duration / STEPS
        return lambda t: rate * min(STEPS, int(t / width) + 1) / STEPS
    raise ValueError(f"profile must be one of {', '.join(PROFILES)}")


# -- the connection --------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time; parses the answer from raw bytes."""

    __slots__ = ("run", "transport", "buf", "clen", "chunked", "status", "reason", "intended", "due", "busy")

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.clen = -1  # -1: waiting for the head; else body bytes still expected
        self.chunked = False
        self.status = 0
        self.reason: bytes | None = None
        self.intended = 0.0
        self.due = 0.0  # latency past which the answer in flight is late: its request's own deadline
        self.busy = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        try:
            self._parse(self.buf + data if self.buf else data)
        except ValueError:  # not HTTP we understand: drop the connection, its request counts as a connection error
            self.buf = b""
            if self.transport is not None:
                self.transport.close()

    def _parse(self, buf: bytes) -> None:
        while True:
            if self.clen < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self.buf = buf
                    return
                self._head(buf[:end])
                buf = buf[end + 4 :]
            if self.chunked:
                done = _dechunk(buf)
                if done is None:
                    self.buf = buf
                    return
                body, used = done
                buf = buf[used:]
            else:
                if len(buf) < self.clen:
                    self.buf = buf
                    return
                body, buf = buf[: self.clen], buf[self.clen :]
            self.clen = -1
            self.chunked = False
            self.buf = b""
            if self.busy:
                self.run.answered_on(self, self.status, body, self.reason)
            if not buf:
                return

    def _head(self, head: bytes) -> None:
        try:
            self.status = int(head[9:12])
        except ValueError:
            self.status = 0
        low = head.lower()
        self.reason = None
        i = low.find(b"\r\nx-nobid-reason:")
        if i >= 0:
            j = low.find(b"\r\n", i + 2)
            self.reason = head[i + 17 : j if j >= 0 else None].strip()
        i = low.find(b"\r\ncontent-length:")
        if i >= 0:
            j = low.find(b"\r\n", i + 2)
            self.clen = int(head[i + 17 : j if j >= 0 else None])
        else:
            self.clen = 0
            self.chunked = b"\r\ntransfer-encoding: chunked" in low

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


def _dechunk(buf: bytes) -> tuple[bytes, int] | None:
    """(body, bytes consumed) of a complete chunked body at the start of `buf`, or None if incomplete."""
    pos = 0
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)
            if end < 0:
                return None
            return b"".join(parts), end + 4
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        parts.append(buf[start : start + size])
        pos = start + size + 2


# -- the run --------------------------------------------------------------------


class _Run:
    """State of one load run: the pool of connections, the schedule, the raw samples."""

    def __init__(
        self,
        target: Target,
        requests: list[bytes],
        deadlines: list[float],
        connections: int,
        tmax: float,
        rate: float,
        duration: float,
        profile: str,
        answer_timeout: float,
        progress: bool,
    ) -> None:
        self.target = target
        self.requests = requests
        self.deadlines = deadlines
        self.nreq = len(requests)
        self.ri = 0
        self.nconn = connections
        self.tmax = tmax
        self.rate = rate
        self.closed_loop = rate <= 0
        self.duration = duration
        self.profile = profile
        self.due = None if self.closed_loop else send_time_function(profile, rate, duration)
        self.answer_timeout = answer_timeout
        self.progress = progress
        self.loop = asyncio.get_running_loop()
        self.conns: list[_Conn] = []
        self.free: list[_Conn] = []
        self.pending: deque[float] = deque()
        # raw samples, in seconds on the perf_counter clock
        self.lat = array("d")
        self.lat_at = array("d")  # intended send time of each answered request
        self.lag = array("d")  # how far behind schedule each scheduler pass started
        self.lost_at = array("d")  # intended send time of each request not sent in time or never answered
        self.err_at = array("d")  # ... and of each lost with its connection (a timeout is not the same trouble)
        self.scheduled = self.sent = self.answered = self.late = self.bids = 0
        self.not_sent = self.no_answer = self.conn_errors = 0
        self.statuses: dict[int, int] = {}
        self.reasons: dict[bytes, int] = {}
        self.ticks: list[tuple[float, int, int, int, int]] = []  # (t, sent, answered, timeouts, errors)
        self.start = self.end = 0.0
        self.sending = False
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.next_t = 0.0
        self.k = 0  # requests scheduled so far; the next is due at start + due(k)
        _quantile(array("d", (0.0, 1.0)), 0.5)  # numpy's first quantile call loads code for ~10 ms: not during the run
        self.so_far = _LogBuckets()

    # connections ------------------------------------------------------------------

    async def connect_all(self) -> None:
        for i in range(0, self.nconn, _CONNECT_BATCH):
            n = min(_CONNECT_BATCH, self.nconn - i)
            results = await asyncio.gather(*(self._connect() for _ in range(n)), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors and not self.conns:
                raise ConnectionError(f"cannot connect to {self.target.url}: {errors[0]}")
        if not self.conns:
            raise ConnectionError(f"cannot connect to {self.target.url}")

    async def _connect(self) -> _Conn:
        _, conn = await self.loop.create_connection(lambda: _Conn(self), self.target.host, self.target.port)
        self.conns.append(conn)
        self.free.append(conn)
        return conn

    async def _reconnect(self) -> None:
        delay = 0.01
        while self.sending:
            try:
                conn = await self._connect()
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            self._reuse(conn, time.perf_counter())
            return

    def lost(self, conn: _Conn) -> None:
        if conn.busy:
            conn.busy = False
            self.conn_errors += 1
            self.err_at.append(conn.intended)
        if conn in self.free:
            self.free.remove(conn)
        if conn in self.conns:
            self.conns.remove(conn)
            if self.sending:
                self.loop.create_task(self._reconnect())
        self._check_done()

    # sending ---------------------------------------------------------------------

    def send(self, conn: _Conn, intended: float) -> None:
        conn.intended = intended
        conn.busy = True
        i = self.ri
        conn.due = self.deadlines[i]
        conn.transport.write(self.requests[i])  # type: ignore[union-attr]
        i += 1
        self.ri = 0 if i == self.nreq else i
        self.sent += 1

    def answered_on(self, conn: _Conn, status: int, body: bytes, reason: bytes | None) -> None:
        t = time.perf_counter()
        conn.busy = False
        intended = conn.intended
        lat = t - intended
        self.lat.append(lat)
        self.lat_at.append(intended)
        self.answered += 1
        if lat > conn.due:
            self.late += 1
        st = self.statuses
        st[status] = st.get(status, 0) + 1
        if status == 200 and b'"price"' in body:
            self.bids += 1
        if reason is not None:
            rs = self.reasons
            rs[reason] = rs.get(reason, 0) + 1
        self._reuse(conn, t)

    def _reuse(self, conn: _Conn, t: float) -> None:
        """Give a connection that just became free its next request, or park it."""
        if self.closed_loop:
            if self.sending:
                self.scheduled += 1
                self.send(conn, t)
                return
        else:
            pend = self.pending
            tmax = self.tmax
            while pend:
                intended = pend.popleft()
                if t - intended > tmax:
                    self.not_sent += 1
                    self.lost_at.append(intended)
                    continue
                self.send(conn, intended)
                return
        self.free.append(conn)
        self._check_done()

    # schedule -------------------------------------------------------------------

    def begin(self) -> None:
        self.start = time.perf_counter()
        self.end = self.start + self.duration
        self.next_t = self.start
        self.sending = True
        self.loop.call_later(1.0, self._progress_tick, 1)
        if self.closed_loop:
            self.loop.call_later(self.duration, self._stop_closed)
            for conn in list(self.free):
                self.free.remove(conn)
                self.scheduled += 1
                self.send(conn, time.perf_counter())
        else:
            self._tick()

    def _stop_closed(self) -> None:
        self.sending = False
        self._finish_sending()

    def _tick(self) -> None:
        t = time.perf_counter()
        nt = self.next_t
        end = self.end
        if nt <= t and nt < end:
            self.lag.append(t - nt)
            free, pend = self.free, self.pending
            due, start, k = self.due, self.start, self.k
            while nt <= t and nt < end:
                if free:
                    self.send(free.pop(), nt)
                else:
                    pend.append(nt)
                k += 1
                nt = start + due(k)  # type: ignore[misc]
            self.scheduled += k - self.k
            self.k = k
            self.next_t = nt
        self._expire(t)
        if nt >= end:
            self.sending = False
            self._finish_sending()
            return
        wait = nt - time.perf_counter()
        if wait > _SPIN_WITHIN:
            self.loop.call_later(wait - 0.001, self._tick)
        else:
            self.loop.call_soon(self._tick)

    def _expire(self, t: float) -> None:
        pend, tmax = self.pending, self.tmax
        while pend and t - pend[0] > tmax:
            self.lost_at.append(pend.popleft())
            self.not_sent += 1

    def _finish_sending(self) -> None:
        """Scheduling is over: keep expiring the queue and wait for answers, up to the answer timeout."""
        self.loop.call_later(self.answer_timeout, self._give_up)
        self._drain_tick()

    def _drain_tick(self) -> None:
        if self.done.done():
            return
        self._expire(time.perf_counter())
        if self.pending:
            self.loop.call_later(0.005, self._drain_tick)
        self._check_done()

    def _check_done(self) -> None:
        if self.sending or self.done.done() or self.pending:
            return
        if any(c.busy for c in self.conns):
            return
        self.done.set_result(None)

    def _give_up(self) -> None:
        if self.done.done():
            return
        self._expire(time.perf_counter() + self.tmax + 1)
        for c in self.conns:
            if c.busy:
                c.busy = False
                self.no_answer += 1
                self.lost_at.append(c.intended)
        self.done.set_result(None)

    def _progress_tick(self, second: int) -> None:
        """Once a second: check for answers that will never come, note counters, draw the status line."""
        if self.done.done():
            return
        t = time.perf_counter()
        for c in list(self.conns):
            if c.busy and t - c.intended > self.answer_timeout:
                c.busy = False
                self.no_answer += 1
                self.lost_at.append(c.intended)
                if c.transport is not None:
                    c.transport.close()
        errors = self.conn_errors + sum(v for k, v in self.statuses.items() if k >= 400)
        self.ticks.append((t - self.start, self.sent, self.answered, self.not_sent + self.no_answer, errors))
        if self.progress:
            self._print_progress(second)
        self.loop.call_at(self.loop.time() + (self.start + second + 1 - time.perf_counter()), self._progress_tick, second + 1)

    def _print_progress(self, second: int) -> None:
        prev = self.ticks[-2] if len(self.ticks) > 1 else (0.0, 0, 0, 0, 0)
        cur = self.ticks[-1]
        dt = (cur[0] - prev[0]) or 1.0
        answered = self.answered
        bid = self.bids / answered if answered else 0.0
        p99 = self.so_far.add(self.lat).quantile(0.99) * 1000
        sys.stderr.write(
            f"\r{second:4d}s  sent {(cur[1] - prev[1]) / dt:9,.0f}/s  answered {(cur[2] - prev[2]) / dt:9,.0f}/s  "
            f"bids {bid:6.1%}  errors {cur[4]:,}  timeouts {cur[3]:,}  late {self.late:,}  p99 so far {p99:8.3f} ms "
        )
        sys.stderr.flush()

    def close(self) -> None:
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()
        self.conns.clear()

    # results --------------------------------------------------------------------

    def report(self, elapsed: float, cpu: float) -> LoadReport:
        r = LoadReport(
            target=self.target.url,
            mode="closed" if self.closed_loop else "open",
            profile="saturate" if self.closed_loop else self.profile,
            rate=0.0 if self.closed_loop else self.rate,
            duration=self.duration,
            connections=self.nconn,
            tmax_ms=round(self.tmax * 1000),
            elapsed=elapsed,
            scheduled=self.scheduled,
            sent=self.sent,
            answered=self.answered,
            late=self.late,
            not_sent=self.not_sent,
            no_answer=self.no_answer,
            conn_errors=self.conn_errors,
            bids=self.bids,
            statuses=dict(self.statuses),
            nobid_reasons={k.decode(errors="replace"): v for k, v in self.reasons.items()},
            histogram=histogram_of(self.lat),
            generator_cpu=cpu / elapsed if elapsed else 0.0,
        )
        if len(self.lag):
            r.generator_lag_ms = {
                "p99": round(_quantile(self.lag, 0.99) * 1000, 3),
                "max": round(max(self.lag) * 1000, 3),
            }
        r.timeline = self._timeline()
        r.samples = self._samples()
        return r

    def _timeline(self) -> list[dict[str, float]]:
        """Rates and latency percentiles per time bin, all by intended send time."""
        per_s = len(self.lat) / self.duration
        width = next(
            (w for w in TIMELINE_BINS if self.duration / w <= 120 and per_s * w >= MIN_PER_BIN),
            next((w for w in TIMELINE_BINS if self.duration / w <= 12), TIMELINE_BINS[-1]),
        )
        nbins = max(1, int(np.ceil(self.duration / width)))
        lat = np.frombuffer(self.lat, dtype=np.float64) * 1000
        ans_bin = _bins(self.lat_at, self.start, width, nbins)
        answered = np.bincount(ans_bin, minlength=nbins)
        lost = np.bincount(_bins(self.lost_at, self.start, width, nbins), minlength=nbins)
        failed = np.bincount(_bins(self.err_at, self.start, width, nbins), minlength=nbins)
        order = np.argsort(ans_bin, kind="stable")
        lat_sorted = lat[order]
        bounds = np.searchsorted(ans_bin[order], np.arange(nbins + 1))
        rows = []
        for b in range(nbins):
            span = min(width, self.duration - b * width)  # the last bin may be cut short by the end of the run
            chunk = lat_sorted[bounds[b] : bounds[b + 1]]
            row = {
                "t": round(b * width, 3),
                "offered": round(float(answered[b] + lost[b] + failed[b]) / span, 1),
                "answered": round(float(answered[b]) / span, 1),
                "timeouts": round(float(lost[b]) / span, 1),  # not sent within tmax, or never answered
                "conn_errors": round(float(failed[b]) / span, 1),
                "p50": 0.0,
                "p99": 0.0,
                "p99.9": 0.0,
                "max": 0.0,
            }
            if len(chunk):
                q = np.percentile(chunk, [50, 99, 99.9])
                row.update(p50=round(float(q[0]), 3), p99=round(float(q[1]), 3), max=round(float(chunk.max()), 3))
                row["p99.9"] = round(float(q[2]), 3)
            rows.append(row)
        return rows

    def _samples(self) -> list[tuple[float, float]]:
        """Up to MAX_SAMPLES (seconds since start, latency ms) points, evenly thinned, for the scatter in the PNG."""
        n = len(self.lat)
        if not n:
            return []
        idx = np.linspace(0, n - 1, min(n, MAX_SAMPLES)).astype(np.int64)
        at = np.frombuffer(self.lat_at, dtype=np.float64)[idx] - self.start
        lat = np.frombuffer(self.lat, dtype=np.float64)[idx] * 1000
        return list(zip(at.round(4).tolist(), lat.round(4).tolist(), strict=True))


def _bins(times: array, start: float, width: float, nbins: int) -> np.ndarray:
    t = np.frombuffer(times, dtype=np.float64) if len(times) else np.zeros(0)
    return np.clip(((t - start) / width).astype(np.int64), 0, nbins - 1)


class _LogBuckets:
    """Coarse running latency histogram (1% wide log buckets) for the progress line's p99 so far.

    Fed once a second with the new samples in one numpy pass, so the status
    line costs well under a millisecond of loop time however long the run.
    """

    WIDTH = np.log(1.01)
    N = 2400  # 1 us * 1.01**2400 is far beyond any answer timeout

    def __init__(self) -> None:
        self.counts = np.zeros(self.N, dtype=np.int64)
        self.seen = 0

    def add(self, samples: array) -> _LogBuckets:
        if len(samples) > self.seen:
            new = np.frombuffer(samples, dtype=np.float64)[self.seen :]
            idx = (np.log(np.maximum(new * 1e6, 1.0)) / self.WIDTH).astype(np.int64)
            self.counts += np.bincount(np.minimum(idx, self.N - 1), minlength=self.N)
            self.seen = len(samples)
        return self

    def quantile(self, q: float) -> float:
        """Upper edge of the bucket holding quantile `q`, in seconds."""
        total = int(self.counts.sum())
        if not total:
            return 0.0
        i = int(np.searchsorted(np.cumsum(self.counts), q * total))
        return float(np.exp((i + 1) * self.WIDTH)) / 1e6


def _quantile(values: array, q: float) -> float:
    arr = np.frombuffer(values, dtype=np.float64) if isinstance(values, array) else np.asarray(values)
    return float(np.quantile(arr, q)) if len(arr) else 0.0


async def run_load(
    target: str,
    rate: float,
    duration: float,
    bodies: list[bytes],
    connections: int = 64,
    tmax_ms: int = 100,
    profile: str = "const",
    progress: bool = True,
    *,
    allow_remote: bool = False,
    answer_timeout: float | None = None,
    headers: dict[str, str] | None = None,
    network_ms: int = 0,
) -> LoadReport:
    """Offer `rate` requests/s of `bodies` (cycled) to `target` for `duration` seconds; `rate <= 0` saturates.

    Answers past their request's own tmax (`tmax_ms` for a body without one)
    less `network_ms` count as late; requests that wait longer than
    `tmax_ms` for a free connection are dropped as timeouts; requests still
    unanswered after `answer_timeout` seconds (default max(1 s, 10 x tmax))
    count as never answered and their connection is replaced.
    """
    if not bodies:
        raise ValueError("no request bodies to send")
    if duration <= 0:
        raise ValueError("duration must be positive")
    if connections < 1:
        raise ValueError("connections must be at least 1")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
    tgt = parse_target(target, allow_remote=allow_remote)
    tmax = tmax_ms / 1000
    run = _Run(
        tgt,
        build_requests(tgt, bodies, headers),
        answer_deadlines(bodies, tmax, network_ms / 1000),
        connections,
        tmax,
        rate,
        duration,
        profile,
        answer_timeout if answer_timeout is not None else max(1.0, 10 * tmax),
        progress,
    )
    await run.connect_all()
    cpu0 = time.process_time()
    run.begin()
    try:
        await run.done
    finally:
        run.sending = False
        run.close()
        if progress:
            sys.stderr.write("\n")
    elapsed = time.perf_counter() - run.start
    return run.report(elapsed, time.process_time() - cpu0)
