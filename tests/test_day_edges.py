"""`streambid loadtest day` when things go wrong, without a broker: processes stopped, waits bounded, events counted."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import streams.kafka_io
from bidder.clock import WarpedClock
from loadtest import day_kafka, day_stack
from loadtest.day import DAY
from loadtest.day_kafka import DayOptions, DayPlayer, PlayStats, plan_day, run_stack_day
from loadtest.day_stack import Broker, KeepAlive, Stack, StackError

ROOT = Path(__file__).resolve().parent.parent

# -- the HTTP link ----------------------------------------------------------------------------------


async def _server(handle: Any) -> tuple[asyncio.Server, int]:
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


async def test_a_connection_reset_costs_one_request_not_every_later_one() -> None:
    """A bidder process that dies resets its connections; serve starts another, and the next request must reach it."""
    seen = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer)
        if len(seen) == 1:  # the first connection is reset (RST) after reading the request
            await reader.readuntil(b"\r\n\r\n")
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        await _answer_ok(reader, writer)

    srv, port = await _server(handle)
    conn = KeepAlive("127.0.0.1", port)
    try:
        with pytest.raises(ConnectionResetError):
            await conn.request(b"GET", b"/x")
        assert await conn.request(b"GET", b"/x") == (200, b"ok")
        assert await conn.request(b"GET", b"/x") == (200, b"ok")
        assert len(seen) == 2
    finally:
        conn.close()
        srv.close()


async def test_a_request_nobody_answers_gives_up_after_its_time_and_the_next_goes_on_a_new_connection() -> None:
    seen = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer)
        if len(seen) == 1:  # reads, never answers
            await asyncio.sleep(30)
            return
        await _answer_ok(reader, writer)

    srv, port = await _server(handle)
    conn = KeepAlive("127.0.0.1", port)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await conn.request(b"GET", b"/x", timeout=0.3)
        assert time.monotonic() - t0 < 5.0
        assert await conn.request(b"GET", b"/x", timeout=5.0) == (200, b"ok")  # not the late answer of the first
        assert len(seen) == 2
    finally:
        conn.close()
        srv.close()


async def test_a_bidder_that_stops_answering_ends_the_day_with_an_error_naming_it(monkeypatch, tmp_path) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    async def no_pacing(self: DayPlayer) -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(day_kafka, "REQUEST_TIMEOUT_S", 0.2, raising=False)
    monkeypatch.setattr(day_kafka, "STALL_S", 1.0, raising=False)
    monkeypatch.setattr(DayPlayer, "_watch_pacing", no_pacing)
    srv, port = await _server(hang)
    plan = plan_day(DayOptions(requests=400))
    opts = DayOptions(requests=400, progress=False, tail_s=0.0)
    clock = WarpedClock(plan.start + DAY + 1, time.time(), 1440.0)  # the day is over: every request leaves at once
    stack = SimpleNamespace(port=port, metrics_port=port, log_dir=tmp_path, check_alive=lambda: None)
    player = DayPlayer(plan, clock, stack, "127.0.0.1:1", SimpleNamespace(emit=lambda *a: None), opts)  # type: ignore[arg-type]
    try:
        with pytest.raises(StackError, match="answers to the bid requests.*answered nothing for 1 s"):
            await asyncio.wait_for(player.play(), 20.0)
    finally:
        srv.close()


# -- the runner's events ----------------------------------------------------------------------------


class FakeProducer:
    """What run_stack_day uses of an EventProducer: `on_disk` holds `disk` records for its first `calls` reads."""

    def __init__(self, spilled: int = 0, disk: int = 0, calls: int = 0, failed: int = 0, stop_fails: bool = False) -> None:
        self.buffer: list[Any] = []
        self.in_flight = 0
        self.spilled, self.failed, self.stop_fails = spilled, failed, stop_fails
        self.disk, self.calls = disk, calls
        self.spill_path = Path("runner-spill.jsonl")
        self.stopped = 0

    def on_disk(self) -> list[Any]:
        self.calls -= 1
        return [("impressions", b"c", b"{}")] * self.disk if self.calls >= 0 else []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped += 1
        if self.stop_fails:
            raise OSError("the spill disk is full")


class FakeStack:
    """Records that it was started and stopped; `start` can fail after starting its first process."""

    def __init__(self, *args: Any, fail_start: bool = False) -> None:
        self.started = self.stopped = False
        self.fail_start = fail_start

    def start(self) -> None:
        self.started = True
        if self.fail_start:
            raise OSError("cannot start streambid serve")

    def stop(self) -> None:
        self.stopped = True


def _fake_day(monkeypatch, producer: FakeProducer, stack: FakeStack) -> None:
    async def nothing(*args: Any, **kw: Any) -> None:
        return None

    async def totals(*args: Any, **kw: Any) -> tuple[dict, bool]:
        return {}, True

    class Player:
        def __init__(self, *args: Any) -> None:
            pass

        async def play(self) -> PlayStats:
            return PlayStats(sent_at=[])

    monkeypatch.setattr(streams.kafka_io, "ensure_topics", nothing)
    monkeypatch.setattr(streams.kafka_io, "EventProducer", lambda *a, **kw: producer)
    monkeypatch.setattr(day_kafka, "publish_campaigns", nothing)
    monkeypatch.setattr(day_kafka, "start_group_at_end", nothing)
    monkeypatch.setattr(day_kafka, "wait_ready", nothing)
    monkeypatch.setattr(day_kafka, "Stack", lambda *a, **kw: stack)
    monkeypatch.setattr(day_kafka, "DayPlayer", Player)
    monkeypatch.setattr(day_kafka, "collect_totals", totals)


async def test_events_written_to_disk_while_kafka_was_slow_and_sent_from_there_are_not_lost(monkeypatch, tmp_path) -> None:
    """A batch unacknowledged for 250 ms is written down (`spilled`) and sent from the disk: the day goes on."""
    producer, stack = FakeProducer(spilled=5000, disk=3, calls=3), FakeStack()
    _fake_day(monkeypatch, producer, stack)
    plan = plan_day(DayOptions(requests=50))
    stats, _, totals = await run_stack_day(plan, "127.0.0.1:1", DayOptions(progress=False), tmp_path, tmp_path)
    assert producer.calls < 0 and producer.stopped >= 1 and stack.stopped  # it waited for the disk to empty
    assert totals == {} and stats.ledger_complete


async def test_events_that_never_reach_kafka_stop_the_day_with_a_count() -> None:
    producer = FakeProducer(disk=7, calls=10**9, failed=2)
    t0 = time.monotonic()
    with pytest.raises(StackError, match=r"9 of the exchange's events did not reach Kafka \(7 not sent within 0 s.*2 refused"):
        await day_kafka.deliver_events(producer, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 5.0 and producer.stopped == 1


@pytest.mark.parametrize("case", ["start fails", "producer stop fails"])
async def test_the_stack_is_stopped_whatever_fails(monkeypatch, tmp_path, case: str) -> None:
    producer = FakeProducer(stop_fails=case == "producer stop fails")
    stack = FakeStack(fail_start=case == "start fails")
    _fake_day(monkeypatch, producer, stack)
    plan = plan_day(DayOptions(requests=50))
    with pytest.raises(OSError):
        await run_stack_day(plan, "127.0.0.1:1", DayOptions(progress=False), tmp_path, tmp_path)
    assert stack.started and stack.stopped


# -- processes --------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stopping_the_stack_stops_the_processes_its_processes_started(tmp_path) -> None:
    """serve --workers N forks its workers: they go with it, even when they outlast its own stop."""
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import pathlib, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        time.sleep(60)
    """)
    stack = Stack("127.0.0.1:1", WarpedClock(0.0, time.time(), 1.0), "s", "app", tmp_path / "logs", tmp_path / "work")
    stack.commands = {"serve": [sys.executable, "-c", script]}
    stack.start()
    try:
        end = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < end, "the child never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _alive(child)
    finally:
        stack.stop()
    end = time.monotonic() + 10
    while _alive(child) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(child)
    assert stack.procs["serve"].poll() is not None


def test_a_broker_start_that_hangs_is_given_up_on_and_stopped(monkeypatch, tmp_path) -> None:
    calls = tmp_path / "calls"
    script = tmp_path / "kafka.sh"
    # `start` hangs in a child that holds the output, as a slow Maven fetch does
    script.write_text(f'echo "$1" >> {calls}\nif [ "$1" = start ]; then sleep 60; echo never; fi\n')
    monkeypatch.setattr(day_stack, "KAFKA_SH", script)
    monkeypatch.setattr(day_stack, "BROKER_START_S", 0.5, raising=False)
    t0 = time.monotonic()
    with pytest.raises(StackError, match="did not finish within 0 s"):
        with Broker(None):
            pass
    assert time.monotonic() - t0 < 10.0
    assert calls.read_text().split() == ["start", "stop"]


def test_sigterm_stops_the_day_as_ctrl_c_does_with_everything_it_started(tmp_path) -> None:
    """`kill` or a CI time limit: the run's cleanup runs (its processes have sessions of their own) and it exits 130."""
    script = textwrap.dedent("""
        import asyncio, os, signal, sys
        import uvloop
        from bidder import cli
        from loadtest import day_kafka

        def run_day(opts):
            async def day():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    await asyncio.sleep(30)
                finally:
                    print("stopped what it started", flush=True)
            return uvloop.run(day())

        day_kafka.run_day = run_day
        sys.exit(cli.main(["loadtest", "day", "--no-progress", "--out", sys.argv[1]]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "stopped what it started" in proc.stdout


async def test_a_metrics_answer_cut_short_is_asked_again_not_the_end_of_the_run() -> None:
    """The worker's /metrics closing a link mid-answer (a restart of its server) must not end the run unreported."""
    plan = plan_day(DayOptions(requests=50))
    cid = plan.campaigns[0].id
    text = f'streambid_campaign_spend_total{{campaign="{cid}"}} 0.25\n'.encode()
    seen = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        if len(seen) == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nstreambid_")  # then the link closes
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
        await writer.drain()
        writer.close()

    srv, port = await _server(handle)
    stack = SimpleNamespace(metrics_port=port, check_alive=lambda: None)
    player = SimpleNamespace(day=SimpleNamespace(results={c.id: SimpleNamespace(clicks=0, conversions=0)
                                                          for c in plan.campaigns}),
                             stats=PlayStats(sent_at=[]))
    player.stats.billed_ok[cid] = 250_000
    try:
        totals, complete = await asyncio.wait_for(
            day_kafka.collect_totals(stack, plan, player, timeout=10.0), 20.0)  # type: ignore[arg-type]
    finally:
        srv.close()
    assert complete and totals[cid]["spend"] == 250_000 and len(seen) >= 2


async def test_a_broker_without_a_group_coordinator_is_named_not_waited_on_for_ever(monkeypatch) -> None:
    import aiokafka

    from streams import topics

    class NoCoordinator:
        """A consumer on a broker that never finds a group coordinator: `commit` waits for one without end."""

        stopped = False

        def __init__(self, *args: Any, **kw: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        def assign(self, tps: Any) -> None:
            pass

        async def end_offsets(self, tps: Any) -> dict:
            return dict.fromkeys(tps, 0)

        async def commit(self, offsets: Any) -> None:
            await asyncio.sleep(3600)

        async def stop(self) -> None:
            NoCoordinator.stopped = True

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", NoCoordinator)
    with pytest.raises(StackError, match="offsets of consumer group day-x: it has no group coordinator"):
        await asyncio.wait_for(day_stack.start_group_at_end("127.0.0.1:1", "day-x", [topics.CLICKS], timeout=0.3), 10)
    assert NoCoordinator.stopped
