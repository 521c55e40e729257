"""`streambid serve` at its edges: a worker catching up again after a lost connection while it serves, the
hang-up signal (a closed terminal) stopping it as SIGTERM does, and start-up problems said in one line."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bidder import wiring
from bidder.campaigns import parse_campaign
from bidder.wiring import ServeOptions, run_worker
from loadtest.campaign_gen import make_campaigns
from models.snapshot import ModelSnapshot
from streams import topics
from tests.conftest import ROOT, free_port
from tests.helpers import http
from tests.test_bidder_serve import _ask

# -- a worker's state followers, driven by hand -----------------------------------------------------------------------


class FakeFollower:
    """A StateFollower whose reading the test plays: the handlers and callbacks run_worker gave it."""

    made: list[FakeFollower] = []

    def __init__(self, bootstrap: str, handlers: dict[str, Callable[[bytes, bytes], None]], from_end: bool = False,
                 since: Any = None, on_behind: Callable[[], None] | None = None,
                 on_caught_up: Callable[[], None] | None = None, after_batch: Callable[[], None] | None = None) -> None:
        self.handlers, self.on_behind, self.on_caught_up, self.after_batch = handlers, on_behind, on_caught_up, after_batch
        self.applied, self.behind = 0, 0
        FakeFollower.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def read(self, topic: str, records: list[bytes]) -> None:
        for value in records:
            self.handlers[topic](b"", value)
        if self.after_batch is not None:
            self.after_batch()


class FakeProducer:
    sent = spilled = replayed = failed = set_aside = 0
    buffer: list = []
    connected = running = True

    @classmethod
    def for_worker(cls, *args: Any) -> FakeProducer:
        return cls()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def emit(self, *args: Any) -> None:
        pass


def _model(version: int) -> bytes:
    m = ModelSnapshot.empty()
    m.version = version
    return m.to_bytes()


async def test_caught_up_again_after_a_lost_connection_a_serving_worker_builds_the_changes_between_bids(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A broker blip makes the follower read every state topic from its start again.  While warming, what it read
    is applied at once (nothing is bid before); serving, the new index and model are built between bids, as any
    change is, instead of holding the event loop for the whole rebuild (hundreds of ms with thousands of campaigns)."""
    import streams.kafka_io as kafka_io

    async def no_topics(broker: str) -> None:
        pass

    FakeFollower.made = []
    monkeypatch.setattr(kafka_io, "StateFollower", FakeFollower)
    monkeypatch.setattr(kafka_io, "EventProducer", FakeProducer)
    monkeypatch.setattr(wiring, "_ensure_topics_if_reachable", no_topics)
    docs = make_campaigns(300, seed=5)
    opts = ServeOptions(host="127.0.0.1", port=free_port(), workers=1, campaigns=[parse_campaign(d) for d in docs],
                        broker="127.0.0.1:9", secret=b"s", salt=b"s", network_ms=20, notice_base="http://x",
                        model_path=None, spill_dir=tmp_path, restricted_policy="context", drain_s=0.0)
    before = signal.getsignal(signal.SIGTERM)
    worker = asyncio.ensure_future(run_worker(opts, 0))
    try:
        for _ in range(500):  # serving: its stop signal is set last
            if worker.done() or signal.getsignal(signal.SIGTERM) is not before:
                break
            await asyncio.sleep(0.01)
        assert not worker.done() and len(FakeFollower.made) == 2
        state, billed = FakeFollower.made
        changes = state.handlers[topics.CAMPAIGNS.name].__self__  # type: ignore[attr-defined]
        engine = changes.engine

        def configs(**edits: dict) -> list[bytes]:
            return [orjson.dumps({"campaign": {**d, **edits.get(d["id"], {})}}) for d in docs] + \
                [orjson.dumps({"campaign": {**docs[0], "id": "new-one"}})]

        first = docs[1]["id"]
        assert state.on_behind is not None and state.on_caught_up is not None and billed.on_caught_up is not None
        state.on_behind()
        state.read(topics.CAMPAIGNS.name, configs())
        state.read(topics.MODEL.name, [_model(1)])
        state.on_caught_up()  # warming: applied before it returns
        assert "new-one" in engine.index.campaigns and engine.model.version == 1
        billed.on_caught_up()
        await asyncio.sleep(0)
        old = engine.index

        state.on_behind()  # the connection was lost: every topic is read again from its start
        state.read(topics.CAMPAIGNS.name, configs(**{first: {"targeting": {"countries": ["DEU"]}}}))
        state.read(topics.MODEL.name, [_model(1), _model(2)])
        state.on_caught_up()  # serving: nothing built yet, the worker bids on what it has meanwhile
        assert engine.index is old and engine.model.version == 1
        give_up = time.monotonic() + 10
        while (engine.index is old or engine.model.version != 2) and time.monotonic() < give_up:
            await asyncio.sleep(0.005)
        assert engine.index.campaigns[first].targeting.countries == {"DEU"} and engine.model.version == 2
    finally:
        if not worker.done() and signal.getsignal(signal.SIGTERM) is not before:
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's own handler: drains and stops
            await asyncio.wait_for(worker, 10)
        elif not worker.done():
            worker.cancel()
    worker.result()


# -- SIGHUP ----------------------------------------------------------------------------------------------------------


SERVE = [sys.executable, "-m", "bidder.cli", "serve", "--no-kafka", "--host", "127.0.0.1", "--campaigns",
         str(ROOT / "deploy" / "campaigns.example.json")]


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    """A TMPDIR of its own, short enough for the workers' notice sockets (a pytest tmp_path may not be)."""
    path = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(tmp_path: Path, tmp: Path, *args: str, hangup_ignored: bool = False) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [*SERVE, "--port", str(port), "--spill-dir", str(tmp_path / "spill"), *args],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "STREAMBID_SECRET": "edges-test", "TMPDIR": str(tmp)},
        # as started from a terminal, or under nohup: this test itself may run under nohup, whose ignored SIGHUP
        # every child would inherit
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN if hangup_ignored else signal.SIG_DFL))
    end = time.time() + 30
    while time.time() < end:
        assert proc.poll() is None, log.read_text()
        try:
            if http(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200:
                return proc, port, log
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"serve did not come up:\n{log.read_text()}")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def test_a_closed_terminal_stops_every_worker_as_sigterm_does(tmp_path: Path, short_tmp: Path) -> None:
    """The terminal's hang-up reaches the whole group: the supervisor stops its workers, removes its directories
    and exits 0, instead of dying on the spot with its workers (their held events lost) and its directories left."""
    proc, port, log = _start(tmp_path, short_tmp, "--workers", "2")
    try:
        assert len(list(short_tmp.glob("streambid-*"))) == 2  # the metrics pool and the notice mailboxes
        os.killpg(proc.pid, signal.SIGHUP)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        _kill(proc)
    assert list(short_tmp.glob("streambid-*")) == []
    assert "Traceback" not in log.read_text()


def test_a_hangup_drains_a_single_worker(tmp_path: Path, short_tmp: Path) -> None:
    """A request sent on a pooled connection after the hang-up is answered (closing its connection), as after a
    SIGTERM; its default action would end the process with the connection unanswered."""
    proc, port, log = _start(tmp_path, short_tmp, "--drain-s", "2")
    body = (ROOT / "loadtest" / "examples" / "banner.json").read_bytes()
    bid = b"POST /bid/d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            _ask(c, bid)
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            head, _ = _ask(c, bid)
            assert re.match(rb"HTTP/1\.1 (200|204) ", head) and b"Connection: close" in head, head
        assert proc.wait(10) == 0, log.read_text()
    finally:
        _kill(proc)


def test_a_hangup_ignored_at_start_stays_ignored(tmp_path: Path, short_tmp: Path) -> None:
    """Under nohup (SIGHUP ignored) the bidder must outlive the terminal it was started from."""
    proc, port, log = _start(tmp_path, short_tmp, "--workers", "2", hangup_ignored=True)
    try:
        os.killpg(proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None, log.read_text()
        assert http(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        _kill(proc)


def test_a_temporary_directory_too_long_for_the_notice_sockets_stops_serve_with_what_to_do(tmp_path: Path) -> None:
    """Every worker would fail to make its notice socket at start and be restarted for ever, with a traceback each
    time; serve says what to change and exits 2 instead."""
    deep = tmp_path / ("d" * 80)
    deep.mkdir()
    out = subprocess.run([*SERVE, "--port", str(free_port()), "--workers", "2", "--spill-dir", str(tmp_path / "spill")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={**os.environ, "STREAMBID_SECRET": "edges-test", "TMPDIR": str(deep)})
    assert out.returncode == 2 and "TMPDIR" in out.stderr and str(deep) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "restarting" not in out.stderr
    assert list(deep.iterdir()) == []  # nothing left behind


def test_a_malformed_time_warp_stops_serve_with_one_line(tmp_path: Path) -> None:
    out = subprocess.run([*SERVE, "--port", str(free_port()), "--spill-dir", str(tmp_path / "spill")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={**os.environ, "STREAMBID_TIME_WARP": "1,2"})
    assert out.returncode == 2 and "STREAMBID_TIME_WARP must be 'origin,wall_start,speedup'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "serving" not in out.stderr
