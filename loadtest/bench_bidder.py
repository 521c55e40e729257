"""`streambid bench bidder`: the bidder's throughput and latency as a ratio to the speed floor.

Absolute requests/s mean little on a shared two-core machine, so the bidder
is measured against the floor server (a bid endpoint that does nothing but
parse HTTP and JSON) in the same run, on the same core: the server under
test is pinned to core 0, this process (the load generator) to core 1.

For each server:
1. warm up, then saturate it in closed loop (every connection sends again
   as soon as it is answered): an upper bound;
2. find the highest *open-loop* rate it sustains: probes step down from that
   bound, then bisect; a rate is sustained when at most 1% of its requests
   time out, come back past their deadline (tmax less the bidder's network
   allowance), or get no decision (shed, failed, out of time);
3. measure latency at 50% of that rate, open loop, from intended send times.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from loadtest.campaign_gen import make_campaign
from loadtest.loadgen import run_load
from loadtest.report import LoadReport, write_latency_png
from loadtest.traffic import RequestFactory, load_examples

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FLOOR = PROJECT_ROOT.parent / "shared" / "bench" / "floor_server.py"
DEFAULT_BIDDER_CMD = (".venv/bin/streambid serve --workers 1 --no-kafka --host 127.0.0.1 --port {port} --campaigns {campaigns}"
                      " --model {model}")
SERVER_CORE, GENERATOR_CORE = 0, 1
TARGET_RATIO = 0.33
TARGET_P99_MS = 5.0
PROBE_STEP = 0.7  # each failed probe tries this fraction of the previous rate ...
MAX_PROBES = 12  # ... down to 0.7**11 = 2% of the closed-loop bound
REFINE = 2  # then this many bisections between the highest pass and the lowest fail above it
TOLERANCE = 0.01  # a sustained rate may lose at most 1% of requests to timeouts, lateness or shedding
# x-nobid-reason values of a 204 that decided nothing: shed, out of time, not bidding yet, or a bug caught
SHED_REASONS = ("overload", "deadline", "warming", "internal_error")
BODY_POOL = 5000
EXAMPLE_EVERY = 50  # one body in this many is one of the six example requests, in turn; the rest are generated
MODEL_REQUESTS = 60_000  # simulated requests behind the bench's trained model ...
MODEL_IMPRESSIONS_PER_IMP = 6  # ... each impression shown to this many of its eligible creatives (counts) ...
MODEL_LEARN_SHARE = 0.1  # ... of which this share also trains the weights (the learner costs ~0.2 ms an event)


class BenchError(RuntimeError):
    """The benchmark could not run (a server did not start, a port did not open)."""


# -- processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pin(core: int) -> Callable[[], None] | None:
    if (os.cpu_count() or 1) < 2:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return pin


class Server:
    """A server process under test, started in its own session so it and its workers stop together."""

    def __init__(self, name: str, argv: list[str], port: int, log_dir: Path) -> None:
        self.name, self.argv, self.port = name, argv, port
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pin(SERVER_CORE),
                start_new_session=True,
            )
        except OSError as e:
            self.log.close()
            raise BenchError(f"{name}: cannot start {shlex.join(argv)}: {e}") from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.proc.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise BenchError(f"{self.name} did not open port {self.port} within {timeout:g} s:\n{self.tail()}")

    def tail(self, n: int = 20) -> str:
        self.log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:]) or "(no output)"

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and all its descendants."""
        pids = _descendants(self.proc.pid) | {self.proc.pid}
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / tick

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self.log.close()


def floor_argv(floor: Path) -> Callable[[int], list[str]]:
    """The floor server's command line for a port."""
    return lambda port: [sys.executable, str(floor), "--host", "127.0.0.1", "--port", str(port)]


def measure_each(servers: list[tuple[str, Callable[[int], list[str]]]], work: Path,
                 measure: Callable[[Server, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Start each (name, argv for a port) server in turn on the server core and `measure(server, base URL)` it from
    the generator core, one at a time so they never share a core; logs go to `work`."""
    results = []
    saved_affinity = os.sched_getaffinity(0)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {GENERATOR_CORE})
    try:
        for name, argv_of in servers:
            port = free_port()
            server = Server(name, argv_of(port), port, work)
            try:
                server.wait_ready()
                results.append(measure(server, f"http://127.0.0.1:{port}"))
            finally:
                server.stop()
    finally:
        os.sched_setaffinity(0, saved_affinity)
    return results


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


# -- measurement --------------------------------------------------------------------


def _load(
    url: str, rate: float, duration: float, bodies: list[bytes], connections: int, tmax_ms: int, progress: bool,
    network_ms: int = 0,
) -> LoadReport:
    import uvloop

    return uvloop.run(run_load(url, rate, duration, bodies, connections=connections, tmax_ms=tmax_ms, progress=progress,
                               network_ms=network_ms))


def ok_answers(report: LoadReport) -> int:
    """Answers that carry a decision: not an error status, nor a 204 that decided nothing (SHED_REASONS)."""
    shed = sum(report.nobid_reasons.get(r, 0) for r in SHED_REASONS)
    good = sum(n for status, n in report.statuses.items() if 200 <= status < 300)
    return good - shed


def sustained(report: LoadReport) -> tuple[bool, str]:
    """Did the server keep up with the schedule?  (verdict, why not)"""
    allowed = max(1, int(report.scheduled * TOLERANCE))
    if report.timeouts > allowed:
        return False, f"{report.timeouts} timeouts"
    if report.late > allowed:
        return False, f"{report.late} answers past tmax"
    if report.scheduled - ok_answers(report) > allowed:
        return False, f"{report.scheduled - ok_answers(report)} requests without a decision (errors, shed or out of time)"
    return True, ""


def max_sustained(bound: float, try_rate: Callable[[float], bool]) -> tuple[float, float]:
    """Highest rate `try_rate` passes, searching down from `bound`: (best, lowest failed rate above it); best 0 if none.

    Steps down geometrically until a rate passes, then bisects between that
    rate and the failure above it.
    """
    best, failed_at, rate = 0.0, 0.0, bound
    for _ in range(MAX_PROBES):
        if try_rate(rate):
            best = rate
            break
        failed_at, rate = rate, rate * PROBE_STEP
    if best and failed_at:
        for _ in range(REFINE):
            mid = (best + failed_at) / 2
            if try_rate(mid):
                best = mid
            else:
                failed_at = mid
    return best, failed_at


def _phase(msg: str) -> None:
    sys.stderr.write(f"{msg}\n")
    sys.stderr.flush()


def saturate(server: Server, url: str, bodies: list[bytes], duration: float, connections: int, tmax_ms: int
             ) -> dict[str, Any]:
    """Warm up, then saturate `server` in closed loop: its answers per second and the CPU each one took."""
    name = server.name
    _phase(f"[{name}] warm-up")
    _load(url, 0, 1.5, bodies, connections, tmax_ms, progress=False)

    _phase(f"[{name}] closed-loop saturation, {duration:g} s")
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    sat = _load(url, 0, duration, bodies, connections, tmax_ms, progress=True)
    cpu_used = server.cpu_seconds() - cpu0
    answered = ok_answers(sat)  # decided ones: a shed or refused request costs little, and is no bid decided
    bound = answered / duration
    if bound <= 0:
        raise BenchError(f"{name} gave no usable answers under load: statuses {sat.statuses}, reasons {sat.nobid_reasons}")
    return {
        "closed_loop_rps": round(bound),
        "server_cpu": round(cpu_used / (time.perf_counter() - t0), 3),
        # the steadier figure on a noisy machine: it does not depend on how much of its core the server got
        "cpu_us_per_answer": round(cpu_used / answered * 1e6, 1) if answered else None,
        "generator_cpu": round(sat.generator_cpu, 3),
        "statuses": {str(k): v for k, v in sorted(sat.statuses.items())},
        "nobid_reasons": sat.nobid_reasons,
    }


def measure_server(
    server: Server, url: str, bodies: list[bytes], duration: float, probe: float, connections: int, tmax_ms: int, out: Path,
    network_ms: int = 0,
) -> dict[str, Any]:
    name = server.name
    saturation = saturate(server, url, bodies, duration, connections, tmax_ms)
    bound = saturation["closed_loop_rps"]
    probes: list[dict[str, Any]] = []

    def try_rate(rate: float) -> bool:
        _phase(f"[{name}] open-loop probe at {rate:,.0f} req/s, {probe:g} s")
        rep = _load(url, rate, probe, bodies, connections, tmax_ms, progress=True, network_ms=network_ms)
        ok, why = sustained(rep)
        probes.append({"rate": round(rate), "sustained": ok, "why": why, "p99_ms": round(rep.latency_ms()["p99"], 3),
                       "generator_lag_p99_ms": rep.generator_lag_ms.get("p99", 0.0)})
        time.sleep(0.5)  # let the server drain before the next probe
        return ok

    best, failed_at = max_sustained(bound, try_rate)
    if not best:
        _phase(f"[{name}] sustained none of the probed rates, down to {probes[-1]['rate']:,} req/s")
    half = (best or probes[-1]["rate"]) / 2
    _phase(f"[{name}] latency at 50% load: {half:,.0f} req/s, {duration:g} s")
    lat = _load(url, half, duration, bodies, connections, tmax_ms, progress=True, network_ms=network_ms)
    png = write_latency_png(lat, out / f"bench-bidder-{name}-latency.png")
    lms = lat.latency_ms()
    return {
        "name": name,
        "command": shlex.join(server.argv),
        "max_rps": round(best),
        "saturation": saturation,
        "probes": probes,
        "half_load": {
            "rate": round(half),
            "p50_ms": round(lms["p50"], 3),
            "p99_ms": round(lms["p99"], 3),
            "p99.9_ms": round(lms["p99.9"], 3),
            "max_ms": round(lms["max"], 3),
            "past_deadline": lat.late,
            "timeouts": lat.timeouts,
            "bid_rate": round(lat.bid_rate, 4),
            "statuses": {str(k): v for k, v in sorted(lat.statuses.items())},
            "nobid_reasons": lat.nobid_reasons,
            "generator_lag_ms": lat.generator_lag_ms,
        },
        "png": str(png),
    }


def bench_start(floor: Path | None, out: Path, seed: int, tmax_ms: int) -> tuple[float, Path, list[bytes]]:
    """What a bid-path bench starts from: the load average before it (see `reliability_warnings`), the floor
    server's checked absolute path (servers run from the project root), and the request bodies; `out` is created."""
    load_at_start = os.getloadavg()[0]
    floor = (floor or DEFAULT_FLOOR).resolve()
    if not floor.is_file():
        raise BenchError(f"floor server not found at {floor} (use --floor PATH)")
    out.mkdir(parents=True, exist_ok=True)
    return load_at_start, floor, bench_bodies(seed, tmax_ms)


def bench_bodies(seed: int, tmax_ms: int) -> list[bytes]:
    """The bench's request pool: generated traffic in the market's proportions, with the six example requests
    spread through it (one body in EXAMPLE_EVERY, in turn), every one with the bench's tmax."""
    bodies = RequestFactory(seed, tmax_ms=tmax_ms).bodies(BODY_POOL)
    examples = [orjson.dumps({**orjson.loads(b), "tmax": tmax_ms}) for b in load_examples().values()]
    for n, i in enumerate(range(0, len(bodies), EXAMPLE_EVERY)):
        bodies[i] = examples[n % len(examples)]
    return bodies


@contextmanager
def bench_files(campaigns: int, seed: int, out: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(work directory for the servers' logs, campaign file, trained model) for a bid-path bench; the work
    directory and the campaign file go when the bench ends, the model stays in `out` for the next run."""
    with tempfile.TemporaryDirectory(prefix="streambid-bench-") as tmp:
        work = Path(tmp).resolve()
        camp_file = bench_campaigns(work, campaigns, seed)
        # absolute: the servers run in PROJECT_ROOT, where a relative --out would name another directory
        yield work, camp_file, bench_model(camp_file, seed, out.resolve())


def bidder_cmd_problem(bidder_cmd: str) -> str | None:
    """Why --bidder-cmd cannot be run (None: it can), found before the floor server's phase rather than after it."""
    try:
        argv = shlex.split(bidder_cmd.format(port=0, campaigns="campaigns.json", model="model.snap"))
    except (KeyError, IndexError) as e:
        name = f"{{{e.args[0]}}}" if isinstance(e, KeyError) else "{}"
        return (f"--bidder-cmd {bidder_cmd!r}: unknown placeholder {name}; only {{port}}, {{campaigns}} and {{model}} "
                "are filled in")
    except ValueError as e:  # a lone brace, or unbalanced quotes
        return f"--bidder-cmd {bidder_cmd!r}: {e}; double a literal brace ({{{{ }}}}) and close every quote"
    if not argv:
        return "--bidder-cmd is empty; give the command that serves the bidder on {port}"
    if server_program(argv[0]) is None:
        return (f"--bidder-cmd {bidder_cmd!r}: no program {argv[0]!r} found (a relative path is taken from {PROJECT_ROOT}, "
                "where the servers run); give a path to it or put it on PATH")
    return None


def network_allowance_ms(argv: list[str]) -> int:
    """The share of each request's tmax the served bidder keeps for the trip back (its `--network-ms`, else serve's
    default): on loopback that trip takes nothing, so an answer later than tmax less this would be late at an
    exchange across a real network."""
    from bidder.engine import EngineConfig

    value = EngineConfig(secret=b"").network_ms
    for i, arg in enumerate(argv):
        if arg == "--network-ms" and i + 1 < len(argv):
            text = argv[i + 1]
        else:
            text = arg.removeprefix("--network-ms=") if arg.startswith("--network-ms=") else ""
        if text.isdigit():
            value = int(text)
    return value


def server_program(name: str) -> str | None:
    """The program `name` a server's Popen runs, or None: Popen takes a relative path from its cwd, PROJECT_ROOT, not
    from wherever the bench was started, and a bare name from PATH."""
    if os.sep in name and not os.path.isabs(name):
        name = str(PROJECT_ROOT / name)
    return shutil.which(name)


def bench_bidder(
    *,
    duration: float = 8.0,
    probe: float = 3.0,
    campaigns: int = 1000,
    floor: Path | None = None,
    bidder_cmd: str = DEFAULT_BIDDER_CMD,
    path: str = "/bid/bench",
    connections: int = 64,
    tmax_ms: int = 100,
    seed: int = 1,
    out: Path = Path("out"),
) -> dict[str, Any]:
    """Run the whole benchmark and return its result document (see `format_bench`)."""
    load_at_start, floor, bodies = bench_start(floor, out, seed, tmax_ms)
    network_ms = network_allowance_ms(shlex.split(bidder_cmd.format(port=0, campaigns="", model="")))
    with bench_files(campaigns, seed, out) as (work, camp_file, model_file):
        servers = [
            ("floor", floor_argv(floor)),
            ("bidder", lambda port: shlex.split(bidder_cmd.format(port=port, campaigns=camp_file, model=model_file))),
        ]
        results = measure_each(servers, work, lambda server, base: measure_server(
            server, base + path, bodies, duration, probe, connections, tmax_ms, out, network_ms))
    floor_r, bidder_r = results
    ratio = bidder_r["max_rps"] / floor_r["max_rps"] if floor_r["max_rps"] else 0.0
    half = bidder_r["half_load"]
    missed = half["past_deadline"] + half["timeouts"]  # an exchange hears nothing in time from either
    targets = {
        "ratio": {"want": f">= {TARGET_RATIO}", "got": round(ratio, 3), "met": ratio >= TARGET_RATIO},
        "p99_ms_at_half_load": {"want": f"<= {TARGET_P99_MS}", "got": half["p99_ms"], "met": half["p99_ms"] <= TARGET_P99_MS},
        "past_deadline": {"want": "0", "got": missed, "met": missed == 0},
    }
    return {
        "machine": {"cpus": os.cpu_count(), "server_core": SERVER_CORE, "generator_core": GENERATOR_CORE},
        "generator": "streambid open-loop generator (uvloop)",
        "duration_s": duration,
        "probe_s": probe,
        "connections": connections,
        "tmax_ms": tmax_ms,
        "network_ms": network_ms,
        "campaigns": campaigns,
        "servers": results,
        "ratio": round(ratio, 3),
        "targets": targets,
        "targets_met": all(t["met"] for t in targets.values()),
        "warnings": reliability_warnings(results, load_at_start),
    }


def reliability_warnings(results: list[dict[str, Any]], load_at_start: float) -> list[str]:
    """Reasons not to trust this run's figures: a busy machine, a starved server, a generator behind schedule."""
    out = []
    if load_at_start > 0.7:
        out.append(f"the machine was busy at the start (load average {load_at_start:.1f}): other processes share the cores")
    for r in results:
        cpu = r["saturation"]["server_cpu"]
        if cpu < 0.85:
            out.append(
                f"{r['name']} used only {cpu:.0%} of its core while saturated: it was starved by other processes "
                "or the generator was the limit, so its max req/s is understated"
            )
        lag = r.get("half_load", {}).get("generator_lag_ms", {}).get("p99", 0.0)  # none: saturation only
        if lag > 1.0:
            out.append(
                f"the generator fell behind schedule at 50% load on {r['name']} (p99 {lag:.1f} ms): latencies include that delay"
            )
        above = [p for p in r.get("probes", []) if not p["sustained"] and p["rate"] > r["max_rps"]]
        capped = min(above, key=lambda p: p["rate"]) if above else {}
        if capped.get("generator_lag_p99_ms", 0.0) > 1.0:
            out.append(
                f"the generator fell behind schedule in the probe at {capped['rate']:,} req/s that {r['name']} failed "
                f"(p99 {capped['generator_lag_p99_ms']:.1f} ms): its max req/s may be the generator's, not the server's"
            )
    return out


def bench_campaigns(work: Path, n: int, seed: int) -> Path:
    """Generated campaigns, each checked with the bidder's own validator before the bidder sees them: drawn until `n`
    are active (not paused, flight not over, a budget), the others drawn among them kept for the bidder to filter."""
    import datetime as dt
    import random

    from bidder.campaigns import ConfigError, parse_campaign

    rng, now = random.Random(seed), dt.datetime.now(dt.UTC)
    docs: list[dict[str, Any]] = []
    active = 0
    while active < n:
        doc = make_campaign(rng, len(docs))  # the same draws as make_campaigns(n, seed), and on
        try:
            camp = parse_campaign(doc)
        except ConfigError as e:
            raise BenchError(f"generated campaign {len(docs)} is invalid: {e}") from None
        docs.append(doc)
        active += not camp.idle_reason(now)  # dayparting aside: the file must not change with the hour
    path = work / "campaigns.json"
    path.write_bytes(orjson.dumps({"campaigns": docs}))
    return path


def bench_model(camp_file: Path, seed: int, out: Path) -> Path:
    """The trained model for these campaigns, from `out/` when an earlier run trained it (training takes a while)."""
    import zlib

    data = camp_file.read_bytes()
    path = out / f"bench-model-{zlib.crc32(data) ^ seed:08x}-{MODEL_REQUESTS}.snap"
    if not path.exists():
        _phase(f"training a model on {MODEL_REQUESTS:,} simulated requests (kept in {path})")
        train_bench_model(orjson.loads(data)["campaigns"], seed, path)
    return path


def train_bench_model(docs: list[dict[str, Any]], seed: int, path: Path) -> Path:
    """A model trained on simulated impressions of the benchmark's campaigns and traffic, saved at `path`.

    A bidder with an empty model scores every creative by a Thompson draw; a production bidder mostly scores
    creatives its model knows.  So the bench serves a model whose click counts put most creatives past the
    exploration threshold (popular ones far past it, creatives that rarely match still exploring) and whose
    weights are learned from a sample of those impressions, labelled by a seeded ground truth.
    """
    import random
    import zlib

    from bidder.campaigns import parse_campaign
    from bidder.engine import BidEngine, EngineConfig
    from bidder.openrtb import BadRequest, parse_request
    from models.features import candidate_features, request_features
    from models.learner import CTRLearner
    from models.snapshot import ModelSnapshot

    def effect(name: str, sd: float) -> float:  # a fixed effect per name, roughly N(0, sd)
        u = (zlib.crc32(name.encode()) & 0xFFFF) / 0xFFFF
        return sd * 3.4 * (u - 0.5)

    engine = BidEngine(EngineConfig(secret=b"bench"), [parse_campaign(d) for d in docs], ModelSnapshot.empty(),
                       sink=lambda kind, key, ev: None)
    live = frozenset(c.id for c in engine.index.campaigns.values() if c.active)  # every hour of the day, so all flights
    rng = random.Random(seed)
    learner = CTRLearner()
    factory = RequestFactory(seed + 101)
    for n in range(MODEL_REQUESTS):
        try:
            req = parse_request(factory.body())
        except BadRequest:
            continue
        hour = rng.randrange(24)
        for imp in req.imps:
            el = engine.index.eligible(req, imp, live, engine.cfg.seat, req.user_key, engine.frequency, 0.0)
            slots = el.slots.tolist()
            if not slots:
                continue
            feats = request_features(req, imp, "bench", hour, rng.randrange(7))
            for s in rng.sample(slots, min(MODEL_IMPRESSIONS_PER_IMP, len(slots))):
                camp, cr = engine.index.slots[s]
                z = -5.3 + effect(f"{camp.id}/{cr.id}", 0.5) + effect(req.domain, 0.4) + effect(f"{cr.id}@{hour}", 0.2)
                clicked = rng.random() < 1.0 / (1.0 + math.exp(-z))
                if rng.random() < MODEL_LEARN_SHARE:
                    learner.learn_one(feats + candidate_features(feats, hour, req.domain, camp.id, cr.id), clicked,
                                      camp.id, cr.id)
                else:
                    learner.counts.add(camp.id, cr.id, clicked)
        if n % 2000 == 0:
            sys.stderr.write(f"\rtraining the bench model: {n:,}/{MODEL_REQUESTS:,} requests")
            sys.stderr.flush()
    sys.stderr.write("\n")
    learner.snapshot(version=1).save(path)
    return path


def format_bench(result: dict[str, Any]) -> str:
    """The result as a table plus the targets."""
    head = (
        f"{'server':<8}{'max req/s':>11}{'ratio':>7}{'50% load':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'past tmax':>11}{'timeouts':>10}"
    )
    lines = [
        f"bench bidder: server on core {SERVER_CORE}, generator on core {GENERATOR_CORE}; "
        f"{result['connections']} connections, tmax {result['tmax_ms']} ms, {result['campaigns']} active campaigns",
        f"past tmax: answers later than tmax less the bidder's {result.get('network_ms', 0)} ms network allowance "
        "(the target counts the timeouts with them)",
        "",
        head,
        "-" * len(head),
    ]
    floor_rps = result["servers"][0]["max_rps"]
    for s in result["servers"]:
        h = s["half_load"]
        ratio = s["max_rps"] / floor_rps if floor_rps else 0.0  # as the result's ratio: none without a floor
        lines.append(
            f"{s['name']:<8}{s['max_rps']:>11,}{ratio:>7.2f}{h['rate']:>10,}{h['p50_ms']:>9.3f}"
            f"{h['p99_ms']:>9.3f}{h['p99.9_ms']:>10.3f}{h['past_deadline']:>11,}{h['timeouts']:>10,}"
        )
    lines.append("")
    for s in result["servers"]:
        sat = s["saturation"]
        lines.append(
            f"{s['name']}: closed-loop bound {sat['closed_loop_rps']:,} req/s with the server at {sat['server_cpu']:.0%} "
            f"of its core (generator {sat['generator_cpu']:.0%}); bid rate at 50% load {s['half_load']['bid_rate']:.1%}"
        )
    cpu = [s["saturation"].get("cpu_us_per_answer") for s in result["servers"]]
    if all(cpu):
        lines.append(
            f"server CPU per answer, saturated: floor {cpu[0]:,.1f} µs, bidder {cpu[1]:,.1f} µs "
            f"(floor / bidder {cpu[0] / cpu[1]:.3f}: the ratio with each server given all of its core)"
        )
    lines.append("")
    lines.append("targets for the bidder")
    for key, t in result["targets"].items():
        lines.append(f"  {key:<22}{t['want']:>8}   got {t['got']!s:<10} {'PASS' if t['met'] else 'FAIL'}")
    for w in result.get("warnings", []):
        lines.append(f"warning: {w}")
    lines.append("")
    lines.append("latency over time: " + ", ".join(s["png"] for s in result["servers"]))
    return "\n".join(lines)
