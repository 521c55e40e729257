"""The `serve --workers N` supervisor: a worker that keeps failing is restarted with a growing wait and never costs
its siblings; a worker restarted while the broker is down still serves; workers stop when the supervisor dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from bidder.wiring import RESTART_FIRST_S, RESTART_MAX_S, RESTART_STEADY_S, Restarts, Workers
from tests.conftest import ROOT, free_port
from tests.helpers import http


def test_a_worker_that_keeps_exiting_waits_longer_each_time_up_to_a_cap_and_is_never_given_up_on() -> None:
    r = Restarts()
    now, waits = 0.0, []
    for _ in range(40):
        now += 0.3  # each start fails a moment later
        wait = r.after_exit(0, now)
        waits.append(wait)
        now += wait
    assert waits[0] == 0.0 and waits[1] == RESTART_FIRST_S  # at once the first time, then the backoff
    assert all(b == min(2 * a, RESTART_MAX_S) for a, b in zip(waits[1:], waits[2:], strict=False))
    assert waits[-1] == RESTART_MAX_S  # capped, and still a wait (never None: never given up)
    assert r.after_exit(0, now + RESTART_STEADY_S) == 0.0  # after a steady run: a crash by chance, at once
    assert r.after_exit(0, now + RESTART_STEADY_S + 1.0) == RESTART_FIRST_S  # and the backoff starts over
    assert Restarts().after_exit(1, 0.0) == 0.0 and r.after_exit(2, 0.0) == 0.0  # per worker


class FakeProc:
    """A worker process whose death the test decides."""

    pids = iter(range(1000, 10_000))

    def __init__(self, index: int, dies: bool) -> None:
        self.index, self.pid, self.alive = index, next(self.pids), not dies
        self.exitcode: int | None = None if self.alive else 1
        self.terminated = False

    def is_alive(self) -> bool:
        return self.alive

    def terminate(self) -> None:
        self.terminated, self.alive, self.exitcode = True, False, -signal.SIGTERM

    def join(self, timeout: float | None = None) -> None:
        pass


def test_a_failing_worker_is_restarted_with_growing_waits_without_blocking_and_its_siblings_keep_running() -> None:
    started: list[tuple[int, float]] = []
    now = [0.0]
    procs: list[FakeProc] = []

    def spawn(index: int) -> FakeProc:
        started.append((index, now[0]))
        procs.append(FakeProc(index, dies=index == 1))  # worker 1 fails at every start (a broker outage, say)
        return procs[-1]

    lines: list[str] = []
    retired: list[int | None] = []
    workers = Workers(spawn, 3, retire=retired.append, say=lines.append)
    steps = 0
    while now[0] < 300.0:
        now[0] += 0.25  # a step exact in binary: the gaps below compare exactly
        t0 = time.monotonic()
        workers.step(now[0])
        assert time.monotonic() - t0 < 0.1  # the supervisor's loop never waits for a restart
        steps += 1
    restarts = [t for i, t in started if i == 1][1:]
    gaps = [b - a for a, b in zip(restarts, restarts[1:], strict=False)]
    assert len(restarts) >= 10 and not workers.stopping
    assert all(b >= a for a, b in zip(gaps, gaps[1:], strict=False)) and gaps[-1] >= RESTART_MAX_S
    assert all(g <= RESTART_MAX_S + 0.5 for g in gaps)  # capped, and started again on time
    assert [i for i, _ in started].count(0) == 1 and [i for i, _ in started].count(2) == 1  # siblings never restarted
    assert not any(p.terminated for p in procs) and all(p.alive for p in procs if p.index != 1)
    assert len(lines) == len(restarts) + (1 if workers.due else 0) < steps / 10  # one line per restart, not per step
    assert all(line.startswith("streambid: worker 1 ") and "restarting in" in line for line in lines)
    assert retired == [p.pid for p in procs if p.index == 1][: len(retired)]  # each dead one's counts kept once
    assert set(workers.pids()) <= {p.pid for p in procs if p.alive}
    workers.stop()
    assert all(p.terminated for p in procs if p.index != 1)  # stopping the bidder stops everyone, as before


def test_a_worker_that_cannot_be_started_is_tried_again_later_without_stopping_the_supervisor() -> None:
    """A fork refused (a container's pid or memory limit) must not end the supervisor and with it every worker."""
    now = [0.0]
    refuse = [False]
    procs: list[FakeProc] = []

    def spawn(index: int) -> FakeProc:
        if refuse[0]:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        procs.append(FakeProc(index, dies=index == 1 and len(procs) < 3))
        return procs[-1]

    lines: list[str] = []
    workers = Workers(spawn, 2, say=lines.append)
    refuse[0] = True
    for _ in range(40):
        now[0] += 0.25
        workers.step(now[0])
    assert 1 in workers.due and procs[0].alive and len(procs) == 2
    assert any(line.startswith("streambid: cannot start worker 1 (Resource temporarily unavailable)") for line in lines)
    refuse[0] = False
    for _ in range(200):
        now[0] += 0.25
        workers.step(now[0])
    assert 1 not in workers.due and workers.procs[1].is_alive() and len(workers.pids()) == 2


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`, each with its start time (a reused pid is another process)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and int(stat[1]) == pid:
                found[int(entry.name)] = stat[19]
    return found


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, …; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _gone(pid: int, start: str) -> bool:
    stat = _stat(pid)
    return stat is None or stat[0] in ("Z", "X") or stat[19] != start  # a zombie is gone (its parent may not reap it)


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, log.read_text()
        try:
            if http(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"serve did not come up:\n{log.read_text()}")


def _bidders(port: int, want: int, timeout: float = 20.0) -> set[str]:
    """Bidder ids answering /status on the port (new connections spread over the workers)."""
    seen: set[str] = set()
    end = time.time() + timeout
    while len(seen) < want and time.time() < end:
        status, data = http(f"http://127.0.0.1:{port}/status", timeout=2)
        assert status == 200
        seen.add(orjson.loads(data)["bidder"])
    return seen


def _stop(proc: subprocess.Popen) -> None:
    """Leave nothing running: the supervisor, then every process of its session (workers it left behind too)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def _port_free(port: int) -> bool:
    with socket.socket() as s:  # closed connections may linger in TIME_WAIT: that is not a listener
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def test_workers_stop_when_the_supervisor_is_killed_and_leave_the_port_free(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([str(ROOT / ".venv/bin/streambid"), "serve", "--workers", "2", "--no-kafka", "--host",
                             "127.0.0.1", "--port", str(port), "--campaigns", str(ROOT / "deploy/campaigns.example.json"),
                             "--spill-dir", str(tmp_path / "spill")],
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "STREAMBID_SECRET": "supervision-test"})
    try:
        _wait_healthy(proc, port, log)
        assert len(_bidders(port, 2)) == 2, log.read_text()
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        end = time.time() + 5
        while time.time() < end and not all(_gone(pid, start) for pid, start in workers.items()):
            time.sleep(0.1)
        assert all(_gone(pid, start) for pid, start in workers.items()), log.read_text()
        assert _port_free(port)
        assert "Traceback" not in log.read_text()
    finally:
        _stop(proc)


WITHOUT_BROKER = """
import sys
from pathlib import Path
from bidder.campaigns import load_campaigns
from bidder.wiring import ServeOptions, serve

port, broker, spill = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
sys.exit(serve(ServeOptions(
    host="127.0.0.1", port=port, workers=2, campaigns=load_campaigns(Path("deploy/campaigns.example.json")),
    broker=broker, secret=b"supervision-test", salt=b"supervision-test", network_ms=20,
    notice_base=f"http://127.0.0.1:{port}", model_path=None, spill_dir=spill, restricted_policy="context")))
"""


def test_workers_started_while_the_broker_is_down_serve_and_are_not_restarted(tmp_path: Path) -> None:
    """serve() past the command's broker check, as after an outage begins: the workers cannot create the topics."""
    port, nobody = free_port(), free_port()  # nothing listens on `nobody`: every connection to it is refused
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-c", WITHOUT_BROKER, str(port), f"127.0.0.1:{nobody}", str(tmp_path)],
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(proc, port, log)
        assert len(_bidders(port, 2)) == 2, log.read_text()
        time.sleep(2.0)  # long enough for the old give-up: 5 quick exits
        assert proc.poll() is None, log.read_text()
        assert http(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200
        proc.send_signal(signal.SIGTERM)  # the supervisor stops its workers
        assert proc.wait(30) == 0, log.read_text()
        text = log.read_text()
        assert "exited with" not in text and "Traceback" not in text, text
        assert text.count("to check the topics") == 2, text  # one warning per worker
    finally:
        _stop(proc)


def test_the_kafka_clients_complaints_are_let_through_once_per_kind_and_period() -> None:
    """In a broker outage the client logs each failed connection; a worker's log gets one line per kind per period,
    which says how many it held back."""
    import logging

    from bidder.wiring import OncePer

    now = [0.0]
    f = OncePer(30.0, clock=lambda: now[0])

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, msg, args, None)

    shown = []
    for i in range(240):
        now[0] = i * 0.25  # four a second for a minute
        r = record("Unable connect to node with id %s: %s", 1, "refused")
        if f.filter(r):
            shown.append(r.getMessage())
    assert len(shown) == 2
    assert shown[0] == "Unable connect to node with id 1: refused"
    assert shown[1].endswith("(and 119 more like it in the last 30s)")
    assert f.filter(record("another kind of message"))  # each kind has its own allowance


def test_the_throttle_sees_what_the_client_logs_on_its_child_loggers() -> None:
    """On the `aiokafka` logger the filter saw nothing the client logged (it logs on child loggers): 354 lines of one
    kind in an 18 s outage."""
    import io
    import logging

    from bidder.wiring import throttle_client_log

    root, client = logging.getLogger(), logging.getLogger("aiokafka")
    out = io.StringIO()
    saved, level = root.handlers[:], client.level
    root.handlers = [logging.StreamHandler(out)]
    client.setLevel(logging.NOTSET)  # as a worker has it (commands that only test the broker raise it for a moment)
    try:
        throttle_client_log()
        for _ in range(100):
            logging.getLogger("aiokafka.consumer.fetcher").error("Failed fetch messages from %s: %s", 1, "refused")
            logging.getLogger("streambid.kafka").error("ours")
    finally:
        root.handlers, client.level = saved, level
    lines = out.getvalue().splitlines()
    assert lines.count("Failed fetch messages from 1: refused") == 1 and lines.count("ours") == 100
