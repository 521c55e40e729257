"""`streambid loadtest run` and `streambid bench bidder`: the load generator's command lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bidder.arguments import connections, non_negative, out_dir_problem, positive

if TYPE_CHECKING:
    from loadtest.report import LoadReport

RUN_DESCRIPTION = """\
Play an exchange against a running bidder: send OpenRTB 2.6 bid requests on an
open-loop schedule (the next request leaves on time whatever the bidder does)
and report latency from each request's intended send time, so stalls are not
hidden.  Requests come from a seeded traffic generator (or --requests FILE) and
are cycled from a pre-built pool.

Only the given URL is ever sent traffic.  The target must be on this machine
(loopback: 127.0.0.0/8 or ::1) unless --allow-remote is given; use that only for
a host you run.

Exit status: 0 when the bidder answered, 1 when it could not be reached,
answered none of the requests or answered every one with an error status (no
200 or 204: is --target its bid URL?), 2 for bad arguments.  On status 1 the
report is printed all the same; when no connection could be made at all, only
--json prints one: empty, with an "error" field saying why.

examples:
  streambid loadtest run --target http://127.0.0.1:8080/bid/test --rate 2000 --duration 30
  streambid loadtest run --target :8080/bid/test --rate 5000 --duration 60 --profile ramp --json
  streambid loadtest run --target :8080/bid/test --rate 0 --duration 10        # saturate (closed loop)
"""

BENCH_DESCRIPTION = """\
Throughput and latency of the bidder against the speed floor of a Python bid
endpoint, in one run on this machine.  The floor server (a no-op httptools +
orjson + uvloop endpoint) and then the bidder are each pinned to core 0 while
this process, the load generator, is pinned to core 1.  For each server:
closed-loop saturation gives an upper bound, open-loop probes stepping down
from it find the max sustained rate (at most 1% of requests timed out, shed,
failed or past their deadline: tmax less the bidder's --network-ms), then
latency is measured open loop at 50% of that rate.  Both get the same
requests: generated traffic with the six example requests spread through it.

Prints a table with the targets the bidder must meet: ratio bidder/floor
>= 0.33, p99 <= 5 ms at 50% load, no answers after the deadline (nor
timeouts).  Latency-over-time
PNGs go to --out.  To try the harness with the floor server as both:
  streambid bench bidder --bidder-cmd ".venv/bin/python ../shared/bench/floor_server.py --port {port}"
"""


STAGES_DESCRIPTION = """\
Where a served bid's CPU goes.  One after the other on core 0, with this
process generating load on core 1, it saturates in closed loop: the floor
server, the bidder cut short after each stage of the bid path (204 with
x-nobid-reason: cut), and the whole bidder:

  parse    HTTP, the version and size checks, and the whole OpenRTB parse
  match    + privacy, seats, the live set and the campaign index
  decide   + scoring, pricing and the budget checks
  bidder   + the answer: signed notice URLs, the bid event, the JSON

and prints each one's CPU per answer, what it adds to the row above, and
the ratio to the floor it would reach with all of its core, then the CPU per
answer that the 0.33 ratio target leaves.  The bars go to --out as a PNG.
The cut servers are `python -m loadtest.stage_server --stage STAGE`, which
takes every `streambid serve` option; use them with `bench bidder
--bidder-cmd` or a profiler to look closer at one stage.
"""


def register_loadtest(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add `loadtest run`, `bench bidder` and `bench stages` to the command tree."""
    _register_run(groups["loadtest"])
    _register_bench(groups["bench"])
    _register_stages(groups["bench"])


def _register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="open-loop load test against a running bidder (loopback only unless --allow-remote)",
        description=RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--target", required=True, metavar="URL",
      help="bid URL, http:// with a port from 1 to 65535 (80 when none is written), e.g. http://127.0.0.1:8080/bid/test "
           "or :8080/bid/test (host defaults to 127.0.0.1)")
    a(
        "--rate",
        type=non_negative(float),
        required=True,
        metavar="R",
        help="requests/s to offer (peak for ramp/step); 0: closed-loop saturation",
    )
    a("--duration", type=positive(float), required=True, metavar="S", help="seconds of load")
    a("--connections", type=connections, default=64, metavar="C",
      help="keep-alive connections, one request in flight each (default: %(default)s)")
    a("--tmax", type=positive(int), default=100, metavar="MS",
      help="deadline in ms, also the tmax of generated requests; an answer is late past its own request's tmax, "
           "this one for a replayed request without one (default: %(default)s)")
    a("--profile", choices=("const", "ramp", "step"), default="const",
      help="const rate, linear ramp to R, or 5 equal steps to R (default: %(default)s)")
    a("--requests", type=Path, metavar="FILE", help="replay bodies from FILE (one JSON request per line) instead of generating")
    a("--seed", type=int, default=1, metavar="N", help="traffic generator seed (default: %(default)s)")
    a("--malformed", type=float, default=0.0, metavar="F",
      help="share of deliberately malformed bodies, 0..1 (default: %(default)s)")
    a("--pool", type=positive(int), default=5000, metavar="N",
      help="distinct generated bodies to cycle through (default: %(default)s)")
    a("--allow-remote", action="store_true", help="allow a non-loopback target; only for a host you run")
    a("--json", action="store_true", help="print the report as one JSON document on stdout")
    a("--out", type=Path, default=Path("out"), metavar="DIR", help="directory for latency-over-time.png (default: %(default)s)")
    a("--no-progress", action="store_true", help="no status line on stderr")
    p.set_defaults(func=cmd_run)


def _register_bench(sub: argparse._SubParsersAction) -> None:
    from loadtest.bench_bidder import DEFAULT_BIDDER_CMD

    p = sub.add_parser(
        "bidder",
        help="bidder throughput and latency vs the floor server, on pinned cores",
        description=BENCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--duration", type=positive(float), default=8.0, metavar="S",
      help="seconds of saturation and of the 50%% load run (default: %(default)s)")
    a("--probe", type=positive(float), default=3.0, metavar="S",
      help="seconds per open-loop probe for the max sustained rate (default: %(default)s)")
    _bench_inputs(a)
    a(
        "--bidder-cmd",
        default=DEFAULT_BIDDER_CMD,
        metavar="CMD",
        help="bidder command; {port}, {campaigns} and {model} (the bench's trained model) are filled in "
             "(default: %(default)s)",
    )
    a("--path", default="/bid/bench", metavar="PATH", help="URL path requests are posted to (default: %(default)s)")
    _bench_load(a, "the latency PNGs")
    a("--strict", action="store_true", help="exit with status 3 when the bidder misses a target")
    p.set_defaults(func=cmd_bench_bidder)


def _register_stages(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stages",
        help="the CPU of each stage of a served bid, against the floor server, on pinned cores",
        description=STAGES_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--duration", type=positive(float), default=6.0, metavar="S",
      help="seconds of saturation per server (default: %(default)s)")
    _bench_inputs(a)
    _bench_load(a, "bench-stages.png")
    p.set_defaults(func=cmd_bench_stages)


def _bench_inputs(a: Callable[..., Any]) -> None:
    """The options both bid-path benches take for what they serve."""
    a("--campaigns", type=positive(int), default=1000, metavar="N",
      help="generated active campaigns loaded into the bidder, with the paused and ended ones drawn among them "
           "(default: %(default)s)")
    a("--floor", type=Path, metavar="PATH",
      help="floor server script (default: ../shared/bench/floor_server.py beside the project)")


def _bench_load(a: Callable[..., Any], pngs: str) -> None:
    """The options both bid-path benches take for the load they send and what they write."""
    a("--connections", type=connections, default=64, metavar="C",
      help="keep-alive connections, in every phase (default: %(default)s)")
    a("--tmax", type=positive(int), default=100, metavar="MS",
      help="deadline in ms, also the requests' tmax (default: %(default)s)")
    a("--seed", type=int, default=1, metavar="N", help="traffic and campaign seed (default: %(default)s)")
    a("--json", action="store_true", help="print one JSON document on stdout")
    a("--out", type=Path, default=Path("out"), metavar="DIR", help=f"directory for {pngs} (default: %(default)s)")


def cmd_bench_stages(args: argparse.Namespace) -> int:
    from loadtest.bench_bidder import BenchError
    from loadtest.bench_stages import bench_stages, format_stages

    if problem := out_dir_problem(args.out):
        print(f"streambid bench stages: {problem}", file=sys.stderr)
        return 2
    try:
        result = bench_stages(duration=args.duration, campaigns=args.campaigns, floor=args.floor,
                              connections=args.connections, tmax_ms=args.tmax, seed=args.seed, out=args.out)
    except BenchError as e:
        print(f"streambid bench stages: {e}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(format_stages(result))
    return 0


def _run_loop(coro):
    """Run on uvloop: the generator's speed depends on it."""
    import uvloop

    return uvloop.run(coro)


def cmd_run(args: argparse.Namespace) -> int:
    from loadtest.loadgen import RemoteTargetRefused, parse_target, run_load
    from loadtest.report import format_report, write_latency_png
    from loadtest.traffic import RequestFactory, load_request_file

    try:
        parse_target(args.target, allow_remote=args.allow_remote)
    except (RemoteTargetRefused, ValueError) as e:
        print(f"streambid loadtest run: --target {args.target!r}: {e}", file=sys.stderr)
        return 2
    if not 0.0 <= args.malformed <= 1.0:
        print("streambid loadtest run: --malformed must be between 0 and 1", file=sys.stderr)
        return 2
    if problem := out_dir_problem(args.out):
        print(f"streambid loadtest run: {problem}", file=sys.stderr)
        return 2
    if args.requests:
        try:
            bodies = load_request_file(args.requests)
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).removeprefix(f"{args.requests}: ")
            print(f"streambid loadtest run: --requests {args.requests}: {why}; give a file of JSON bid requests, "
                  "one per line", file=sys.stderr)
            return 2
    else:
        bodies = RequestFactory(args.seed, args.malformed, tmax_ms=args.tmax).bodies(args.pool)
    try:
        report = _run_loop(
            run_load(
                args.target,
                args.rate,
                args.duration,
                bodies,
                connections=args.connections,
                tmax_ms=args.tmax,
                profile=args.profile,
                progress=not args.no_progress,
                allow_remote=args.allow_remote,
            )
        )
    except ConnectionError as e:
        if args.json:  # a script reading the report gets one, empty but for why
            sys.stdout.write(orjson.dumps({**unsent_report(args).to_dict(), "error": str(e)}).decode() + "\n")
        print(f"streambid loadtest run: {e}; is the bidder running, and is --target its bid URL?", file=sys.stderr)
        return 1
    png = write_latency_png(report, args.out / "latency-over-time.png")
    if args.json:
        doc = report.to_dict()
        doc["png"] = str(png)
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print(format_report(report))
        print(f"\nlatency over time: {png}")
    if problem := failed_run(report):  # a dead, hung or misaddressed bidder must fail a script, not pass it
        print(f"streambid loadtest run: {problem}", file=sys.stderr)
        return 1
    return 0


DECIDED = (200, 204)  # the statuses of a bid and of a no-bid: any other answer is an error


def failed_run(report: LoadReport) -> str | None:
    """Why a run's report must end the command with status 1 (None: it need not)."""
    if not report.answered:
        return (f"{report.target} answered none of the {report.scheduled:,} requests; is the bidder running, and is "
                "--target its bid URL?")
    if not any(report.statuses.get(code) for code in DECIDED):
        codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(report.statuses.items()))
        return (f"{report.target} answered every request with an error status ({codes}), never 200 or 204; is "
                "--target the bidder's bid URL (http://HOST:PORT/bid/EXCHANGE)?")
    return None


def unsent_report(args: argparse.Namespace) -> LoadReport:
    """The report of a run that could not connect: nothing scheduled, nothing answered."""
    from loadtest.loadgen import parse_target
    from loadtest.report import LoadReport

    return LoadReport(target=parse_target(args.target, allow_remote=args.allow_remote).url,
                      mode="closed" if args.rate <= 0 else "open", profile=args.profile, rate=args.rate,
                      duration=args.duration, connections=args.connections, tmax_ms=args.tmax)


def cmd_bench_bidder(args: argparse.Namespace) -> int:
    from loadtest.bench_bidder import BenchError, bench_bidder, bidder_cmd_problem, format_bench

    for problem in (bidder_cmd_problem(args.bidder_cmd), out_dir_problem(args.out)):
        if problem:
            print(f"streambid bench bidder: {problem}", file=sys.stderr)
            return 2
    try:
        result = bench_bidder(
            duration=args.duration,
            probe=args.probe,
            campaigns=args.campaigns,
            floor=args.floor,
            bidder_cmd=args.bidder_cmd,
            path=args.path,
            connections=args.connections,
            tmax_ms=args.tmax,
            seed=args.seed,
            out=args.out,
        )
    except BenchError as e:
        print(f"streambid bench bidder: {e}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(format_bench(result))
    return 3 if args.strict and not result["targets_met"] else 0
