"""The real stack for a simulated day: a Kafka broker, `streambid worker` and `streambid serve` as processes.

The runner talks to them the way production does: OpenRTB and notices over
HTTP keep-alive, events over Kafka, totals from the worker's /metrics.  The
processes share the simulated clock through `STREAMBID_TIME_WARP`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from bidder.clock import ENV as WARP_ENV
from bidder.clock import WarpedClock
from streams.topics import TopicSpec

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka-local" / "kafka.sh"
STREAMBID = [sys.executable, "-m", "bidder.cli"]
WORKER_FIELDS = {"spend": "streambid_campaign_spend_total", "billed": "streambid_campaign_impressions_total",
                 "clicks": "streambid_campaign_clicks_total", "conversions": "streambid_campaign_conversions_total",
                 "value": "streambid_campaign_value_total", "wins": "streambid_campaign_wins_total"}
MONEY = frozenset({"spend", "value"})


BROKER_START_S = 300.0  # `kafka.sh start`: fetching the jars once (Maven), then the broker's start
GROUP_S = 60.0  # for the broker to take a new consumer group's offsets
STOP_S = 20.0  # on stop, how long the processes may take to finish (the worker commits, the bidders flush) before SIGKILL


# At 1440x a slice must cover every bid of a grant's round trip (~0.3 s, seven simulated minutes): the production
# default (0.05 of the remaining budget) starves campaigns at that speed, a fifth does not.
DAY_LEASE_SLICE = 0.2


class StackError(RuntimeError):
    """The stack could not be brought up; the message says what and where its logs are."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """`given` (a bootstrap address) as is, or a local broker started by deploy/kafka-local/kafka.sh and stopped after."""

    def __init__(self, given: str | None) -> None:
        self.given = given
        self.bootstrap = given or ""
        self.started = False
        self._env = {**os.environ, "STREAMBID_KAFKA_STATE": str(REPO / ".kafka-local" / f"day-{os.getpid()}.state")}

    def __enter__(self) -> str:
        if self.given:
            return self.given
        if not KAFKA_SH.exists():
            raise StackError(f"no broker: set KAFKA_BOOTSTRAP or pass --broker ({KAFKA_SH} is not here to start one)")
        self.started = True  # from here on a broker may be running: every way out of here stops it
        try:
            proc = self._kafka_sh("start", BROKER_START_S)
        except subprocess.TimeoutExpired:
            self.__exit__()
            raise StackError(f"kafka.sh start did not finish within {BROKER_START_S:.0f} s (fetching the broker's jars "
                             "or starting it); run `deploy/kafka-local/kafka.sh start` to see why, or pass --broker") from None
        except BaseException:  # Ctrl-C: kafka.sh is stopped, the broker it may have started already is not
            self.__exit__()
            raise
        found = [ln.split("=", 1)[1].strip() for ln in proc.stdout.splitlines() if ln.startswith("KAFKA_BOOTSTRAP=")]
        if proc.returncode != 0 or not found:
            self.__exit__()
            raise StackError(f"kafka.sh start failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}".rstrip())
        self.bootstrap = found[0]
        return self.bootstrap

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.started = False
            try:
                self._kafka_sh("stop", 60.0)
            except subprocess.TimeoutExpired:
                pass

    def _kafka_sh(self, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """`kafka.sh action` in a session of its own, killed with all it runs (Maven, the readiness probe) after
        `timeout` s or at a Ctrl-C: killing bash alone leaves them holding its output, and the wait would go on.
        The broker itself runs in a session of its own; `stop` ends it."""
        proc = subprocess.Popen(["bash", str(KAFKA_SH), action], env=self._env, cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            _signal_group(proc, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


async def start_group_at_end(bootstrap: str, group: str, specs: Iterable[TopicSpec], timeout: float = GROUP_S) -> None:
    """Commit the end of each topic for consumer group `group`, so a new worker skips what other runs left there.

    StackError after `timeout` s: the client waits for a group coordinator without end, and a one-broker cluster
    left with the default offsets.topic.replication.factor (3) never has one."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tps = [TopicPartition(t.name, p) for t in specs for p in range(t.partitions)]
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        c.assign(tps)
        async with asyncio.timeout(timeout):
            await c.commit(dict(await c.end_offsets(tps)))
    except TimeoutError:
        raise StackError(f"timed out after {timeout:.0f} s waiting for the broker at {bootstrap} to take the offsets "
                         f"of consumer group {group}: it has no group coordinator (on a one-broker cluster, set "
                         "offsets.topic.replication.factor=1)") from None
    finally:
        await c.stop()


class Stack:
    """`streambid worker` and `streambid serve --workers N` on the warped clock, logs in `log_dir`."""

    def __init__(self, bootstrap: str, clock: WarpedClock, secret: str, app_id: str, log_dir: Path, work_dir: Path,
                 bidder_workers: int = 2) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.log_dir, self.work_dir = log_dir, work_dir
        self.env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "STREAMBID_SECRET": secret, WARP_ENV: clock.to_env(),
                    "PYTHONUNBUFFERED": "1"}
        self.commands = {
            "worker": STREAMBID + ["worker", "--broker", bootstrap, "--app-id", app_id, "--metrics-port",
                                   str(self.metrics_port)],
            "serve": STREAMBID + ["serve", "--broker", bootstrap, "--workers", str(bidder_workers), "--port", str(self.port),
                                  "--spill-dir", str(work_dir / "spill"), "--lease-slice", str(DAY_LEASE_SLICE)],
        }
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        """Each process in a session of its own: `stop` reaches serve's worker processes too, and a Ctrl-C in the
        terminal reaches only the runner, which stops them in order."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for name, cmd in self.commands.items():
            with (self.log_dir / f"{name}.log").open("wb") as log:
                self.procs[name] = subprocess.Popen(cmd, env=self.env, cwd=self.work_dir, stdout=log,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                    start_new_session=True)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise StackError(f"streambid {name} exited with {p.returncode}; see {self.log_dir / (name + '.log')}:\n"
                                 f"{self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, wait_s: float = STOP_S) -> None:
        """SIGTERM every process group (the worker commits, the bidders flush their producers), then SIGKILL what is
        left of them after `wait_s` in all, or at once on a second Ctrl-C: serve's worker processes included, which
        its supervisor leaves running when they outlast its own stop."""
        try:
            for p in self.procs.values():
                _signal_group(p, signal.SIGTERM)
            until = time.monotonic() + wait_s
            for p in self.procs.values():
                try:
                    p.wait(max(until - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for p in self.procs.values():
                _signal_group(p, signal.SIGKILL)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    """`sig` to the process group `p` leads (its own session, `Stack.start`), whether or not `p` itself still runs."""
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):  # the whole group is gone
        pass


async def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (so repeated calls reach every process behind a SO_REUSEPORT port)."""
    conn = KeepAlive("127.0.0.1", port)
    try:
        return await asyncio.wait_for(conn.request(b"GET", path.encode()), timeout)
    finally:
        conn.close()


class KeepAlive:
    """One HTTP/1.1 keep-alive connection carrying one request at a time; reconnects after an error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._head = b"Host: %s:%d\r\n" % (host.encode(), port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: bytes, path: bytes, body: bytes = b"", timeout: float | None = None
                      ) -> tuple[int, bytes]:
        """Send one request and read its answer: (status, body).  Raises OSError (TimeoutError after `timeout` s) or
        IncompleteReadError on a broken link, which is then closed: a reset stream would fail every later request."""
        try:
            return await asyncio.wait_for(self._exchange(method, path, body), timeout)
        except BaseException:  # a reset, a timeout or a cancel leaves the link in no state to carry the next request
            self.close()
            raise

    async def _exchange(self, method: bytes, path: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(b"%s %s HTTP/1.1\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (method, path, self._head, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


_LAG = re.compile(rb"^streambid_consumer_lag\{[^}]*\} (\S+)$", re.M)


def consumer_lag(metrics_text: bytes) -> int:
    """Messages the worker has yet to consume, summed over its partitions (0 when it reports none)."""
    return sum(int(float(v)) for v in _LAG.findall(metrics_text))


_METRIC = re.compile(r'^(streambid_campaign_\w+)\{[^}]*\bcampaign="([^"]*)"[^}]*\} (\S+)$', re.M)


def worker_totals(metrics_text: str, campaigns: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per-campaign totals from the worker's /metrics, money back in exact micros (the text holds micros / 1e6)."""
    wanted = set(campaigns)
    names = {v: k for k, v in WORKER_FIELDS.items()}
    out: dict[str, dict[str, int]] = {c: dict.fromkeys(WORKER_FIELDS, 0) for c in wanted}
    for name, camp, value in _METRIC.findall(metrics_text):
        field = names.get(name)
        if field and camp in wanted:
            out[camp][field] = round(float(value) * 1e6) if field in MONEY else round(float(value))
    return out


async def wait_until(check, timeout: float, what: str, stack: Stack | None = None, every: float = 0.25):
    """Poll the async `check` until it returns something truthy; StackError after `timeout` s or if a process died."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if stack is not None:
            stack.check_alive()
        try:
            last = await check()
            if last:
                return last
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        await asyncio.sleep(every)
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
