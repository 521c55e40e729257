"""Subcommands of the bidder: `serve` and `demo`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import IO

import orjson

from bidder.arguments import base_url, broker_address_problem, non_negative, out_dir_problem, port_or_zero, positive
from bidder.campaigns import Campaign, ConfigError, campaign_file_error, idle_warnings, load_campaigns
from bidder.clock import from_env as clock_from_env
from streams.events import env_salt

# more processes than this only add memory (each holds its own engine and model): a typo of 100000 would fill it
MAX_WORKERS = 8 * (os.cpu_count() or 1)
MAX_DRAIN_S = 60.0  # a rolling restart's grace; service managers stop waiting sooner (Kubernetes: 30 s)
# where a snapshot file comes from: the workers publish models only to the model topic
MODEL_SOURCES = ("one saved by `streambid model export --out FILE` (the model the workers last published) or by "
                 "`streambid bench bidder` (out/bench-model-*.snap)")


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    top = groups["top"]
    d = top.add_parser("demo", help="simulate two days in one process (no Kafka) and print ROI per campaign",
                       description="An in-process exchange sends OpenRTB requests to the bidder, simulated users click, "
                                   "events flow into the online CTR learner, the spend ledger and the pacer. Yesterday "
                                   "starts cold; today starts from the model, the traffic forecast and the pacing "
                                   "multipliers yesterday left, and is also played as fast as possible and with a fixed "
                                   "bid for comparison. The run ends with today's ROI table, the three strategies side by "
                                   "side and a PNG of their spend curves against the plan. The same seed plays the same "
                                   "days.")
    d.add_argument("--requests", type=positive(int), default=60_000,
                   help="bid requests in each simulated day (default: %(default)s)")
    d.add_argument("--seed", type=int, default=7, help="random seed of the simulated market (default: %(default)s)")
    d.add_argument("--campaigns", type=Path, metavar="FILE", help="campaign file (default: the bundled demo campaigns)")
    d.add_argument("--out", type=Path, default=Path("out"), metavar="DIR", help="where the PNG goes (default: %(default)s)")
    d.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    d.set_defaults(func=cmd_demo)

    s = top.add_parser("serve", help="answer OpenRTB bid requests over HTTP",
                       description="Serve POST /bid/<exchange> (OpenRTB 2.6; 2.5 accepted), signed notices at "
                                   "/notice/{win,bill,loss}, /metrics, /status, /healthz (liveness) and /readyz "
                                   "(readiness).")
    s.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    s.add_argument("--port", type=port_or_zero, default=8080, help="listen port, 1-65535, or 0 for any free one (default: "
                                                           "%(default)s)")
    s.add_argument("--workers", type=positive(int, MAX_WORKERS), default=1,
                   help=f"processes sharing the port via SO_REUSEPORT, one per core is the usual choice; at most "
                        f"{MAX_WORKERS}, 8 per core here (default: %(default)s)")
    s.add_argument("--campaigns", type=Path, metavar="FILE",
                   help="JSON/YAML campaign file; with a broker the config topic is followed too")
    s.add_argument("--broker", metavar="HOST:PORT",
                   help="Kafka bootstrap HOST:PORT (default: $KAFKA_BOOTSTRAP; none: no events are sent)")
    s.add_argument("--no-kafka", action="store_true", help="ignore $KAFKA_BOOTSTRAP: serve from the campaign file only")
    s.add_argument("--model", type=Path, metavar="FILE",
                   help=f"a model snapshot file to start warm from instead of the prior: {MODEL_SOURCES}; with a broker "
                        "the model topic is followed too")
    s.add_argument("--network-ms", type=int, default=20, metavar="MS",
                   help="round-trip allowance taken off tmax when computing the deadline, 0 to 999 (default: "
                        "%(default)s)")
    s.add_argument("--notice-base", type=base_url,
                   help="public base URL for notice URLs, http:// or https:// (default: http://HOST:PORT)")
    s.add_argument("--shed-ms", type=float, default=60.0, metavar="MS",
                   help="answer 204 (x-nobid-reason: overload) at once to a request that has already waited three "
                        "quarters of its deadline budget, or this many ms if less, when its turn comes, instead of "
                        "queueing it (default: %(default)s)")
    s.add_argument("--restricted", choices=("context", "nobid"), default="context",
                   help="for COPPA, GDPR-without-consent, US opt-out and Do Not Track requests: bid on context only, "
                        "or not at all (default: %(default)s)")
    s.add_argument("--tcf-vendor-id", type=non_negative(int), default=0, metavar="ID",
                   help="this bidder's id on the IAB TCF Global Vendor List: under GDPR a consent string must then "
                        "grant that vendor as well as purposes 1, 3 and 4; 0 checks the purposes only (default: "
                        "%(default)s)")
    s.add_argument("--explore-below", type=int, default=200, metavar="N",
                   help="Thompson-sample the pCTR of creatives with fewer impressions than this, so new ones are not "
                        "starved; 0 turns exploration off (default: %(default)s)")
    s.add_argument("--lease-slice", type=float, default=0.05, metavar="FRACTION",
                   help="with a broker, spend only from budget leases granted by `streambid worker`, each slice this "
                        "share of the campaign's remaining daily budget (at least 4 impressions at its max bid); a "
                        "bidder cut off from the workers stops when its lease is spent; 0 to 0.5, 0 turns leases "
                        "off (default: %(default)s)")
    s.add_argument("--spill-dir", type=Path, default=Path(".streambid-spill"), metavar="DIR",
                   help="where events wait while Kafka is unreachable (default: %(default)s)")
    s.add_argument("--warmup-s", type=non_negative(float), default=60.0, metavar="SECONDS",
                   help="with a broker, a worker answers 204 (x-nobid-reason: warming) and /readyz 503 until it has "
                        "read the campaign, model, pacing and billing topics up to where they ended when it started; "
                        "after this many seconds it bids on what it has read (default: %(default)s)")
    s.add_argument("--exchanges", type=exchange_names, metavar="NAME[,NAME...]",
                   help="the exchanges metrics name (the path segment after /bid/; `default` for /bid itself): any "
                        "other is counted as `other`, so no client can add labels; at most 64 (default: the first 64 "
                        "names seen, of which names whose requests were all malformed take half at most)")
    s.add_argument("--drain-s", type=non_negative(float, MAX_DRAIN_S), default=5.0, metavar="SECONDS",
                   help="on SIGTERM or SIGHUP, how long a worker goes on answering the connections still open (each "
                        "answer closing its connection, /readyz 503) before it stops; it stops at once when none is; "
                        f"0 to {MAX_DRAIN_S:g} (default: %(default)s)")
    s.set_defaults(func=cmd_serve)


def exchange_names(text: str) -> tuple[str, ...]:
    """An argparse `type=` for `--exchanges`: comma-separated names a bid path can carry, at most 64."""
    from bidder.metrics import MAX_EXCHANGES
    from bidder.server import exchange_name

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n != "default" and exchange_name(b"/bid/" + n.encode()) != n]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{bad[0] if bad else text!r} is no exchange name: use 1-32 letters, digits "
                                         "or _.:- each, comma-separated (e.g. adx,openx)")
    if len(names) > MAX_EXCHANGES:
        raise argparse.ArgumentTypeError(f"{len(names)} names: at most {MAX_EXCHANGES}")
    return names


def cmd_serve(args: argparse.Namespace) -> int:
    from bidder.wiring import ServeOptions, serve

    try:
        campaigns = load_campaigns(args.campaigns) if args.campaigns else []
    except ConfigError as e:
        print(campaign_file_error(args.campaigns, e, "Nothing was served"), file=sys.stderr)
        return 2
    for line in idle_warnings(campaigns):
        print(f"streambid: {line}", file=sys.stderr)
    problem = _serve_problem(args)
    if problem:
        print(f"streambid: {problem}", file=sys.stderr)
        return 2
    broker = None if args.no_kafka else (args.broker or os.environ.get("KAFKA_BOOTSTRAP"))
    if not campaigns and not broker:
        follow = "" if args.no_kafka else " or --broker to follow the config topic"
        print(f"streambid: nothing to bid for: pass --campaigns FILE (e.g. deploy/campaigns.example.json){follow}",
              file=sys.stderr)
        return 2
    try:
        port = free_to_listen(args.host, args.port)
        if broker:
            _reach_broker(broker)
            _held.append(_hold_spill_dir(args.spill_dir))
    except ValueError as e:
        print(f"streambid: {e}", file=sys.stderr)
        return 2
    _warn_defaults(args)
    secret = os.environ.get("STREAMBID_SECRET", "")
    here = f"http://{_url_host(args.host)}:{port}"
    opts = ServeOptions(
        host=args.host, port=port, workers=args.workers, campaigns=campaigns, broker=broker,
        secret=(secret or "streambid-dev-secret").encode(), salt=env_salt(),
        network_ms=args.network_ms, notice_base=args.notice_base or here,
        model_path=args.model, spill_dir=args.spill_dir, restricted_policy=args.restricted, explore_below=args.explore_below,
        tcf_vendor=args.tcf_vendor_id,
        shed_ms=args.shed_ms, lease_frac=args.lease_slice, warmup_s=args.warmup_s, drain_s=args.drain_s,
        exchanges=args.exchanges or (),
    )
    print(f"streambid: {serving_line(len(campaigns), f'{here}/bid', args.workers, broker)}", file=sys.stderr)
    return serve(opts)


_held: list[IO[str]] = []  # the spill directory's lock, open for as long as this serve runs


def _hold_spill_dir(directory: Path) -> IO[str]:
    """The spill directory, this bidder's alone (ValueError saying what to do when it is not)."""
    from streams.kafka_io import SpillDirInUse, lock_spill_dir

    try:
        return lock_spill_dir(directory)
    except SpillDirInUse as e:
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"--spill-dir {directory}: cannot be used ({e.strerror or e}); give a writable directory") from None


def serving_line(n_campaigns: int, url: str, workers: int, broker: str | None) -> str:
    """What serve says it starts.  The config topic is read once the workers run, so with a broker the only count
    known here is the file's, and a count of 0 would read as nothing to bid for."""
    if broker is None:
        return f"serving {n_campaigns} campaign(s) on {url} with {workers} worker(s)"
    from_file = f" {n_campaigns} campaign(s) from the file" if n_campaigns else ""
    return f"serving{from_file} on {url} with {workers} worker(s), following the campaign config topic on Kafka at {broker}"


def _serve_problem(args: argparse.Namespace) -> str:
    """What is wrong with serve's flags, in one line naming the flag; "" when nothing is."""
    if args.no_kafka and args.broker:
        return "--no-kafka and --broker contradict each other: pass one of them"
    if not 0 <= args.lease_slice <= 0.5:
        return (f"--lease-slice {args.lease_slice:g}: must lie in [0, 0.5], a share of the campaign's remaining daily "
                "budget (0 turns leases off)")
    if not 0 <= args.network_ms < 1000:
        return f"--network-ms {args.network_ms}: the allowance must be 0 to 999 ms (exchanges give tmax of 100-1000 ms)"
    if not 0 < args.shed_ms < math.inf:
        return f"--shed-ms {args.shed_ms}: must be a positive number of milliseconds"
    if args.explore_below < 0:
        return f"--explore-below {args.explore_below}: must be >= 0 (0 turns exploration off)"
    if not args.no_kafka and (problem := broker_address_problem(args.broker)):
        return problem
    try:
        clock_from_env()
    except ValueError as e:  # names the variable and what it must hold
        return str(e)
    if args.model is not None:
        from models.snapshot import ModelSnapshot

        try:
            ModelSnapshot.load(args.model)
        except (OSError, ValueError) as e:
            why = f"cannot be read ({e.strerror or e})" if isinstance(e, OSError) else str(e)
            return f"--model {args.model}: {why}; pass {MODEL_SOURCES}, or leave --model out to start from the prior"
    return ""


def free_to_listen(host: str, port: int) -> int:
    """The port serve will listen on, after checking that nothing else listens there.

    Workers bind with SO_REUSEPORT, so a second server on the same port would start and silently take half the
    traffic; a probe bound without it fails if anyone holds the port.  Port 0 picks a free one.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: not an address this machine can listen on ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(f"--port {port}: another process already listens on {host}:{port}; stop it or "
                                 "pick another port") from None
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
        return probe.getsockname()[1]


def _reach_broker(broker: str) -> None:
    """Create the topics now, so a broker that cannot be reached is one line here, not a traceback per worker."""
    from aiokafka.errors import KafkaError

    from streams.commands import unreachable_reason
    from streams.kafka_io import ensure_topics

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        asyncio.run(ensure_topics(broker))
    except (KafkaError, OSError) as e:
        raise ValueError(f"cannot reach the Kafka broker at {broker} ({unreachable_reason(e)}); check --broker or "
                         "KAFKA_BOOTSTRAP, or pass --no-kafka to serve from the campaign file alone") from None
    finally:
        logging.getLogger("aiokafka").setLevel(logging.NOTSET)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address goes in brackets in a URL


def _warn_defaults(args: argparse.Namespace) -> None:
    """Settings fit for a laptop but not for production: said once, at start."""
    if not os.environ.get("STREAMBID_SECRET"):
        print("streambid: warning: STREAMBID_SECRET is not set; notice URLs are signed with a development key",
              file=sys.stderr)
    if not os.environ.get("STREAMBID_SALT"):
        print("streambid: warning: STREAMBID_SALT is not set; user ids are hashed with the public default salt, which "
              "anyone holding the events can reverse by hashing candidate ids: set a secret salt in production",
              file=sys.stderr)
    if args.host in ("0.0.0.0", "::") and not args.notice_base:
        print(f"streambid: warning: notice URLs will point at {args.host}, which exchanges cannot reach: pass "
              "--notice-base with this bidder's public address", file=sys.stderr)
    if args.network_ms >= 200:
        print(f"streambid: warning: --network-ms {args.network_ms} leaves nothing of a request without tmax (200 ms "
              "assumed): such requests get 204 deadline", file=sys.stderr)


def demo_campaigns_problem(camps: list[Campaign]) -> str:
    """Why the demo cannot report on these campaigns ('' when it can): it plays and reports UTC days, while a
    campaign's budget day, pacing plan and ledger follow its own time zone."""
    others = [c.id for c in camps if c.timezone != "UTC"]
    if not others:
        return ""
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    return (f"the demo plays and reports UTC days, and campaign(s) {shown} keep their day in another time zone "
            "(flight.timezone): give them \"UTC\" in a copy of the file for the demo")


def cmd_demo(args: argparse.Namespace) -> int:
    from loadtest.demo import comparison_rows, format_comparison, format_table, plot_day, roi_rows, run_demo

    if args.campaigns is not None:
        try:
            camps = load_campaigns(args.campaigns)
        except ConfigError as e:
            print(campaign_file_error(args.campaigns, e, "Nothing was run"), file=sys.stderr)
            return 2
        unfit = demo_campaigns_problem(camps)
        if unfit:
            print(f"streambid: {unfit}. Nothing was run.", file=sys.stderr)
            return 2
        for camp in camps:
            if not camp.active:
                print(f"streambid: warning: campaign {camp.id} is paused (status): it does not bid in the demo",
                      file=sys.stderr)
    problem = out_dir_problem(args.out)
    if problem:
        print(f"streambid: {problem}", file=sys.stderr)
        return 2
    run = run_demo(requests=args.requests, seed=args.seed, campaigns_file=args.campaigns, progress=True)
    rows = roi_rows(run)
    compare = comparison_rows(run)
    png = plot_day(run, rows, args.out / "demo-spend-roi.png")
    if args.json:
        print(orjson.dumps({"campaigns": rows, "comparison": compare, "requests": run.report.requests,
                            "seconds": run.report.seconds, "plot": str(png)}).decode())
        return 0
    print("Today, paced (the ledger's figures):")
    print(format_table(rows))
    print("\nThe same day under three strategies (the simulator's figures; exp.clk is the sum of the true CTRs bought):")
    print(format_comparison(compare))
    print(f"\n{run.report.requests:,} bid requests a day, yesterday and today; "
          f"{run.bus.learner.labels[1]:,} clicks and {run.bus.learner.labels[0]:,} non-clicks learned; plot: {png}")
    return 0
