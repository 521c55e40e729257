"""The open-loop load generator against a tiny HTTP server run by the test itself on 127.0.0.1.

The server runs its own event loop in a thread, so it can stall (block its
loop, as a GC pause or a slow handler would) without stalling the generator.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable

import orjson
import pytest

from loadtest.loadgen import RemoteTargetRefused, _dechunk, parse_target, rate_function, run_load, send_time_function
from loadtest.report import LoadReport, format_report, write_latency_png
from loadtest.traffic import RequestFactory

CLEN = re.compile(rb"content-length:\s*(\d+)", re.I)
NOBID = b"HTTP/1.1 204 No Content\r\nx-nobid-reason: %s\r\n\r\n"


def ok(body: bytes = b'{"id":"x","seatbid":[]}') -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


BID = ok(b'{"id":"x","seatbid":[{"bid":[{"id":"1","impid":"1","price":1.5}]}]}')


class TinyServer:
    """HTTP/1.1 keep-alive server; `answer(n, body)` returns (delay in s, response bytes) for the n-th request.

    A delay with `block=True` blocks the server's loop (nothing else is served
    meanwhile); otherwise only that answer is late.
    """

    def __init__(self, answer: Callable[[int, bytes], tuple[float, bytes]], block: bool = False) -> None:
        self.answer, self.block = answer, block
        self.count = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TinyServer:
        self.thread.start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bid/test"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(self.loop.create_server(lambda: _Handler(self), "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()

    def handle(self, transport: asyncio.Transport, body: bytes) -> None:
        n = self.count
        self.count += 1
        delay, response = self.answer(n, body)
        if delay and self.block:
            time.sleep(delay)
        elif delay:
            def late() -> None:
                if not transport.is_closing():
                    transport.write(response)

            self.loop.call_later(delay, late)
            return
        transport.write(response)


class _Handler(asyncio.Protocol):
    def __init__(self, server: TinyServer) -> None:
        self.server, self.buf = server, b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            m = CLEN.search(self.buf[:end])
            n = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + n:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + n], self.buf[end + 4 + n :]
            self.server.handle(self.transport, body)


BODIES = RequestFactory(1, tmax_ms=100).bodies(50)


def _accounted(r: LoadReport) -> bool:
    return r.scheduled == r.answered + r.not_sent + r.no_answer + r.conn_errors


# -- targets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://127.0.0.1:8080/bid/x", "http://127.0.0.1:8080/bid/x"),
        (":8080/bid/x", "http://127.0.0.1:8080/bid/x"),
        ("8080", "http://127.0.0.1:8080/"),
        ("127.0.0.9:81/bid", "http://127.0.0.9:81/bid"),
        ("http://localhost:8080/bid/x", "http://localhost:8080/bid/x"),
        ("http://[::1]:8080/bid/x?a=1", "http://[::1]:8080/bid/x?a=1"),
    ],
)
def test_targets_are_normalised(given, url):
    assert parse_target(given).url == url


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3:8080/bid", "http://192.168.0.10/bid", "http://8.8.8.8/", "http://[2001:db8::1]:80/"]
)
def test_non_loopback_targets_are_refused(url):
    with pytest.raises(RemoteTargetRefused):
        parse_target(url)
    assert parse_target(url, allow_remote=True).url.startswith("http://")


def test_a_host_that_does_not_resolve_is_named_as_such():
    """Not "pass --allow-remote": that would not help with a mistyped target."""
    with pytest.raises(ValueError, match="host 'bidder.invalid' cannot be resolved; give the bidder's URL") as e:
        parse_target("http://bidder.invalid:8080/bid/x")
    assert not isinstance(e.value, RemoteTargetRefused)


@pytest.mark.parametrize("url", ["", "  ", ":70000/bid", "http://127.0.0.1:abc/", "http://127.0.0.1:0/bid", "0",
                                 "http://127.0.0.1:/bid", "http://", "http://[::1]:99999/bid"])
def test_a_target_without_a_usable_port_is_refused(url):
    """These became urllib's own words ("Port out of range 0-65535"), or silently port 80."""
    with pytest.raises(ValueError, match="port|empty|neither a host nor a port") as e:
        parse_target(url)
    assert not isinstance(e.value, RemoteTargetRefused) and "Port out of range" not in str(e.value)


def test_port_80_only_when_no_port_is_written():
    assert parse_target("http://127.0.0.1/bid").port == 80 and parse_target("http://[::1]/bid").port == 80
    assert parse_target("http://127.0.0.1:65535/bid").port == 65535


def test_https_is_refused():
    with pytest.raises(ValueError):
        parse_target("https://127.0.0.1/bid")


async def test_run_load_refuses_a_remote_target_before_connecting():
    with pytest.raises(RemoteTargetRefused):
        await run_load("http://10.9.9.9:8080/bid", 100, 0.1, BODIES, progress=False)


def test_cli_refuses_a_remote_target(capsys):
    from loadtest.load_commands import register_loadtest

    parser = argparse.ArgumentParser()
    top = parser.add_subparsers(dest="c")
    groups = {"top": top}
    for name in ("loadtest", "bench"):
        groups[name] = top.add_parser(name).add_subparsers(dest=f"{name}_c", required=True)
    register_loadtest(groups)
    args = parser.parse_args(["loadtest", "run", "--target", "http://10.0.0.7:8080/bid", "--rate", "10", "--duration", "1"])
    assert args.func(args) == 2
    assert "--allow-remote" in capsys.readouterr().err
    help_text = groups["loadtest"].choices["run"].format_help()
    assert "--allow-remote" in help_text and "loopback" in help_text


async def test_nothing_listening_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError):
        await run_load(f"http://127.0.0.1:{port}/bid", 100, 0.2, BODIES, connections=2, progress=False)


# -- schedule -----------------------------------------------------------------------


def test_rate_profiles():
    const, ramp, step = (rate_function(p, 1000, 10) for p in ("const", "ramp", "step"))
    assert const(0) == const(9.9) == 1000
    assert ramp(1) < ramp(5) < ramp(9) <= 1000 and ramp(0) > 0
    assert [step(t) for t in (0, 2.5, 4.5, 9.9)] == [200, 400, 600, 1000]
    with pytest.raises(ValueError):
        rate_function("sine", 1, 1)


@pytest.mark.parametrize("profile", ["const", "ramp", "step"])
def test_send_times_follow_the_rate_profile(profile):
    """The k-th send time inverts the running count: the local rate between sends matches the profile."""
    due, rate = send_time_function(profile, 1000, 10), rate_function(profile, 1000, 10)
    times = [due(k) for k in range(0, 6000)]
    assert times == sorted(times) and times[0] == 0
    for k in (500, 2000, 5000):
        if times[k + 10] < 10:
            local = 10 / (times[k + 10] - times[k])
            assert local == pytest.approx(rate(times[k]), rel=0.05), (profile, k)


async def test_constant_rate_sends_on_schedule_and_counts_everything():
    with TinyServer(lambda n, body: (0, ok())) as srv:
        r = await run_load(srv.url, 400, 0.5, BODIES, connections=8, tmax_ms=2000, progress=False)
    assert r.scheduled == 200
    assert r.answered == 200 == srv.count
    assert r.statuses == {200: 200}
    assert _accounted(r) and r.timeouts == 0 and r.late == 0
    assert r.mode == "open" and r.bids == 0


async def test_ramp_and_step_offer_less_than_const():
    with TinyServer(lambda n, body: (0, ok())) as srv:
        ramp = await run_load(srv.url, 400, 0.5, BODIES, connections=8, profile="ramp", progress=False)
        step = await run_load(srv.url, 400, 0.5, BODIES, connections=8, profile="step", progress=False)
    assert 80 <= ramp.scheduled <= 120  # area under a line from 0 to 400/s over 0.5 s
    assert 110 <= step.scheduled <= 130  # (1+2+3+4+5)/25 of 200
    assert _accounted(ramp) and _accounted(step)


async def test_bids_nobid_reasons_and_statuses_are_counted():
    def answer(n: int, body: bytes) -> tuple[float, bytes]:
        if n % 4 == 0:
            return 0, BID
        if n % 4 == 1:
            return 0, NOBID % b"no_match"
        if n % 4 == 2:
            return 0, NOBID % b"floor"
        return 0, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}"

    with TinyServer(answer) as srv:
        r = await run_load(srv.url, 400, 0.5, BODIES, connections=4, tmax_ms=2000, progress=False)
    assert r.answered == 200
    assert r.statuses == {200: 50, 204: 100, 400: 50}
    assert r.bids == 50 and r.bid_rate == pytest.approx(0.25)
    assert r.nobid_reasons == {"no_match": 50, "floor": 50}


async def test_chunked_answers_are_read():
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"pri\r\n' + b'c\r\nce":1,"x":2}\r\n0\r\n\r\n'
    with TinyServer(lambda n, body: (0, chunked)) as srv:
        r = await run_load(srv.url, 200, 0.25, BODIES, connections=2, tmax_ms=2000, progress=False)
    assert r.answered == 50 and r.bids == 50


def test_dechunk():
    assert _dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nNEXT") == (b"abcde", 24)
    assert _dechunk(b"3\r\nabc\r\n") is None


# -- open loop: latency from the intended send time --------------------------------------


async def test_a_server_stall_shows_in_every_request_scheduled_during_it():
    """The server blocks 200 ms once; everything scheduled meanwhile must report the wait."""
    stall_at = 100

    def answer(n: int, body: bytes) -> tuple[float, bytes]:
        return (0.2 if n == stall_at else 0), ok()

    with TinyServer(answer, block=True) as srv:
        r = await run_load(srv.url, 500, 1.0, BODIES, connections=200, tmax_ms=1000, progress=False)
    lat = r.latency_ms()
    assert r.answered == r.scheduled == 500
    assert lat["max"] >= 190
    # ~100 requests fall inside the stall and wait from 200 ms down to 0, so about 50 (10%) wait >= 100 ms;
    # a generator that paused with the server would report at most a handful.
    assert r.histogram.get_value_at_percentile(93) >= 100_000
    assert lat["p50"] < 20  # outside the stall the server is fast
    worst = max(r.timeline, key=lambda row: row["max"])
    assert 0.1 <= worst["t"] <= 0.4  # the stall began with request 100, sent at 0.2 s


async def test_waiting_for_a_free_connection_counts_from_the_intended_time():
    """One connection, 20 ms per answer, a request every 10 ms: the queue grows and so must the latencies."""
    with TinyServer(lambda n, body: (0.02, ok())) as srv:
        r = await run_load(srv.url, 100, 0.5, BODIES, connections=1, tmax_ms=5000, progress=False)
    assert r.answered == r.scheduled == 50
    lat = r.latency_ms()
    assert lat["p50"] > 100  # a closed-loop client would report ~20 ms for every request
    assert lat["max"] > 400
    by_intended = [ms for _, ms in sorted(r.samples)]
    assert len(by_intended) == 50
    assert max(by_intended[:10]) < min(by_intended[-10:])  # each request waits behind all the earlier ones


async def test_requests_that_cannot_be_sent_within_tmax_are_timeouts():
    with TinyServer(lambda n, body: (0.05, ok())) as srv:
        r = await run_load(srv.url, 200, 0.5, RequestFactory(1, tmax_ms=30).bodies(50), connections=1, tmax_ms=30,
                           progress=False)
    assert r.not_sent > 40
    assert r.late == r.answered > 0  # each answer takes 50 ms > 30 ms tmax
    assert _accounted(r)


async def test_an_answer_is_late_past_its_own_requests_tmax_less_the_network_allowance():
    """Every answer was held to the run's --tmax, whatever tmax its request carried: a replayed request with tmax 50
    answered in 60 ms was on time, one with tmax 200 late under --tmax 40; and on loopback the trip back that the
    bidder keeps part of tmax for takes nothing, so the allowance must come off the deadline here."""
    own = [orjson.dumps({"id": "a", "imp": [], "tmax": t}) for t in (50, 200)]
    bodies = [*own, b'{"id": "b", "imp": []}', b"not json"]  # the last two have no tmax of their own: the run's
    with TinyServer(lambda n, body: (0.06, ok())) as srv:
        r = await run_load(srv.url, 40, 0.5, bodies, connections=8, tmax_ms=40, progress=False)
        allowed = await run_load(srv.url, 40, 0.5, bodies, connections=8, tmax_ms=200, progress=False, network_ms=150)
    assert r.answered == 20 and r.timeouts == 0
    assert r.late == 15  # tmax 50 and the two on the run's 40 ms: late; tmax 200: on time
    assert allowed.answered == allowed.late == 20  # due 50 ms after sending (200 - 150), or before: all late


async def test_unanswered_requests_are_given_up_after_the_answer_timeout():
    with TinyServer(lambda n, body: (10 if n == 3 else 0, ok())) as srv:
        t0 = time.perf_counter()
        r = await run_load(srv.url, 100, 0.3, BODIES, connections=4, tmax_ms=50, answer_timeout=0.3, progress=False)
    assert time.perf_counter() - t0 < 3
    assert r.no_answer == 1
    assert _accounted(r)


async def test_closed_loop_saturates():
    with TinyServer(lambda n, body: (0, ok())) as srv:
        r = await run_load(srv.url, 0, 0.3, BODIES, connections=4, progress=False)
    assert r.mode == "closed" and r.answered > 100
    assert r.scheduled == r.sent == r.answered


# -- report ----------------------------------------------------------------------------


async def test_report_dict_text_and_png(tmp_path):
    with TinyServer(lambda n, body: (0, NOBID % b"no_match")) as srv:
        r = await run_load(srv.url, 300, 0.5, BODIES, connections=4, tmax_ms=2000, progress=False)
    d = orjson.loads(orjson.dumps(r.to_dict()))
    for key in ("target", "sent_per_s", "answered_per_s", "bid_rate", "late", "timeouts", "statuses", "nobid_reasons"):
        assert key in d
    assert set(d["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max", "mean"}
    assert d["latency_ms"]["p50"] <= d["latency_ms"]["p99"] <= d["latency_ms"]["max"]
    assert d["statuses"] == {"204": 150} and d["nobid_reasons"] == {"no_match": 150}
    assert sum(row["answered"] for row in d["timeline"]) * (d["timeline"][1]["t"] - d["timeline"][0]["t"]) == pytest.approx(150)
    assert d["histogram"]  # encoded HdrHistogram, for merging runs later
    text = format_report(r)
    assert "p99.9" in text and "no_match" in text and "150" in text
    png = write_latency_png(r, tmp_path / "lat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _server(mode: str) -> tuple[socket.socket, int]:
    """A loopback server that never answers ("hole"), or ("drop") answers 204 on every second connection and hangs
    up on the others as soon as a request arrives."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def answer(conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    def serve() -> None:
        n = 0
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            n += 1
            if mode == "hole":
                held.append(conn)  # kept open, never answered
            elif n % 2:
                conn.recv(65536)
                conn.close()  # the request is lost with its connection
            else:
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_a_run_the_bidder_answered_none_of_exits_1(tmp_path, capsys) -> None:
    """A dead or hung bidder passed a script's `loadtest run` with status 0 and an empty report."""
    from bidder.cli import main

    srv, port = _server("hole")
    try:
        code = main(["loadtest", "run", "--target", f":{port}/bid/x", "--rate", "50", "--duration", "1", "--tmax", "50",
                     "--connections", "4", "--no-progress", "--json", "--out", str(tmp_path)])
    finally:
        srv.close()
    out, err = capsys.readouterr()
    assert code == 1 and orjson.loads(out)["answered"] == 0 and "answered none of the 50 requests" in err


def test_connection_errors_are_not_timeouts_in_the_timeline() -> None:
    """Requests lost with their connection were drawn as "timeouts/s" while the report counted no timeout."""
    async def go() -> LoadReport:
        srv, port = _server("drop")
        try:
            return await run_load(f":{port}/bid/x", 100, 2.0, [b"{}"], connections=8, tmax_ms=200, progress=False)
        finally:
            srv.close()

    report = asyncio.run(go())
    assert report.conn_errors > 0 and report.answered > 0
    rows = report.timeline
    width = rows[1]["t"] - rows[0]["t"] if len(rows) > 1 else report.duration

    def total(field: str) -> int:  # the rates back to counts: each bin spans `width`, the last maybe less
        return round(sum(row[field] * min(width, report.duration - row["t"]) for row in rows))

    assert total("timeouts") == report.timeouts and total("conn_errors") == report.conn_errors


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def test_a_run_answered_only_with_error_statuses_exits_1(tmp_path, capsys) -> None:
    """A --target with a wrong path got 100% 404 and exited 0: a script took it for a load test."""
    from bidder.cli import main

    with TinyServer(lambda n, body: (0, NOT_FOUND)) as srv:
        code = main(["loadtest", "run", "--target", f":{srv.port}/wrong", "--rate", "40", "--duration", "0.5",
                     "--connections", "2", "--no-progress", "--json", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1 and set(orjson.loads(out)["statuses"]) == {"404"}
    assert "every request with an error status (404: " in err and "--target" in err


def test_some_decided_answers_pass_a_run() -> None:
    from loadtest.load_commands import failed_run

    def report(statuses: dict[int, int]) -> LoadReport:
        r = LoadReport(target="http://127.0.0.1:1/bid", mode="open", profile="const", rate=10, duration=1,
                       connections=1, tmax_ms=100, scheduled=sum(statuses.values()) or 5, statuses=statuses)
        r.answered = sum(statuses.values())
        return r

    assert failed_run(report({200: 3, 404: 9})) is None and failed_run(report({204: 1, 500: 1})) is None
    assert "error status (500: 2)" in (failed_run(report({500: 2})) or "")
    assert "answered none" in (failed_run(report({})) or "")


def test_json_prints_a_report_also_when_nothing_could_be_connected(tmp_path, capsys) -> None:
    """Its help promises the report on exit 1; a refused connection printed nothing on stdout."""
    from bidder.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["loadtest", "run", "--target", f":{port}/bid/x", "--rate", "10", "--duration", "1", "--no-progress",
                 "--json", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    doc = orjson.loads(out)
    assert code == 1 and doc["answered"] == 0 and doc["sent"] == 0 and "cannot connect" in doc["error"]
    assert doc["target"] == f"http://127.0.0.1:{port}/bid/x" and "cannot connect" in err
