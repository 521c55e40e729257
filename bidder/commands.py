"""Subcommands of the bidder: `serve` and `demo`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from bidder.campaigns import ConfigError, campaign_file_error, load_campaigns


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
    d.add_argument("--requests", type=int, default=60_000,
                   help="bid requests in each simulated day (default: %(default)s)")
    d.add_argument("--seed", type=int, default=7, help="random seed of the simulated market (default: %(default)s)")
    d.add_argument("--campaigns", type=Path, help="campaign file (default: the bundled demo campaigns)")
    d.add_argument("--out", type=Path, default=Path("out"), help="where the PNG goes (default: %(default)s)")
    d.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    d.set_defaults(func=cmd_demo)

    s = top.add_parser("serve", help="answer OpenRTB bid requests over HTTP",
                       description="Serve POST /bid/<exchange> (OpenRTB 2.6; 2.5 accepted), signed notices at "
                                   "/notice/{win,bill,loss}, /metrics, /status and /healthz.")
    s.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    s.add_argument("--port", type=int, default=8080, help="listen port (default: %(default)s)")
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port via SO_REUSEPORT (default: 1)")
    s.add_argument("--campaigns", type=Path, help="JSON/YAML campaign file; with a broker the config topic is followed too")
    s.add_argument("--broker", help="Kafka bootstrap HOST:PORT (default: $KAFKA_BOOTSTRAP; none: no events are sent)")
    s.add_argument("--no-kafka", action="store_true", help="ignore $KAFKA_BOOTSTRAP: serve from the campaign file only")
    s.add_argument("--model", type=Path, help="a saved model snapshot to start warm from")
    s.add_argument("--network-ms", type=int, default=20,
                   help="round-trip allowance taken off tmax when computing the deadline (default: %(default)s)")
    s.add_argument("--notice-base", help="public base URL for notice URLs (default: http://HOST:PORT)")
    s.add_argument("--shed-ms", type=float, default=60.0,
                   help="answer 204 (x-nobid-reason: overload) at once to a request that has already waited three "
                        "quarters of its deadline budget, or this many ms if less, when its turn comes, instead of "
                        "queueing it (default: %(default)s)")
    s.add_argument("--restricted", choices=("context", "nobid"), default="context",
                   help="for COPPA/GDPR-without-consent/opt-out requests: bid on context only, or not at all")
    s.add_argument("--explore-below", type=int, default=200,
                   help="Thompson-sample the pCTR of creatives with fewer impressions than this, so new ones are not "
                        "starved; 0 turns exploration off (default: %(default)s)")
    s.add_argument("--lease-slice", type=float, default=0.05, metavar="FRACTION",
                   help="with a broker, spend only from budget leases granted by `streambid worker`, each slice this "
                        "share of the campaign's remaining daily budget (at least 4 impressions at its max bid); a "
                        "bidder cut off from the workers stops when its lease is spent; 0 turns leases off "
                        "(default: %(default)s)")
    s.add_argument("--spill-dir", type=Path, default=Path(".streambid-spill"),
                   help="where events wait while Kafka is unreachable (default: %(default)s)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from bidder.wiring import ServeOptions, serve

    try:
        campaigns = load_campaigns(args.campaigns) if args.campaigns else []
    except ConfigError as e:
        print(campaign_file_error(args.campaigns, e, "Nothing was served"), file=sys.stderr)
        return 2
    if args.model is not None:
        from models.snapshot import ModelSnapshot

        try:
            ModelSnapshot.load(args.model)
        except OSError as e:
            print(f"streambid: --model {args.model}: cannot be read ({e.strerror or e}); pass a snapshot saved by "
                  "`streambid bench ctr` or a worker, or leave --model out to start from the prior", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"streambid: --model {args.model}: {e}; pass a snapshot saved by `streambid bench ctr` or a worker, "
                  "or leave --model out to start from the prior", file=sys.stderr)
            return 2
    broker = None if args.no_kafka else (args.broker or os.environ.get("KAFKA_BOOTSTRAP"))
    if not 0 <= args.lease_slice <= 0.5:
        print("streambid: --lease-slice must lie in [0, 0.5]", file=sys.stderr)
        return 2
    if not campaigns and not broker:
        print("streambid: nothing to bid for: pass --campaigns FILE (e.g. deploy/campaigns.example.json) "
              "or --broker to follow the config topic", file=sys.stderr)
        return 2
    secret = os.environ.get("STREAMBID_SECRET", "")
    if not secret:
        print("streambid: warning: STREAMBID_SECRET is not set; notice URLs are signed with a development key",
              file=sys.stderr)
    if not os.environ.get("STREAMBID_SALT"):
        print("streambid: warning: STREAMBID_SALT is not set; user ids are hashed with the public default salt, which "
              "anyone holding the events can reverse by hashing candidate ids: set a secret salt in production",
              file=sys.stderr)
    opts = ServeOptions(
        host=args.host, port=args.port, workers=args.workers, campaigns=campaigns, broker=broker,
        secret=(secret or "streambid-dev-secret").encode(), salt=os.environ.get("STREAMBID_SALT", "streambid").encode(),
        network_ms=args.network_ms, notice_base=args.notice_base or f"http://{args.host}:{args.port}",
        model_path=args.model, spill_dir=args.spill_dir, restricted_policy=args.restricted, explore_below=args.explore_below,
        shed_ms=args.shed_ms, lease_frac=args.lease_slice,
    )
    print(f"streambid: serving {len(campaigns)} campaign(s) on http://{args.host}:{args.port}/bid "
          f"with {args.workers} worker(s){' and Kafka at ' + broker if broker else ''}", file=sys.stderr)
    return serve(opts)


def cmd_demo(args: argparse.Namespace) -> int:
    from loadtest.demo import comparison_rows, format_comparison, format_table, plot_day, roi_rows, run_demo

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
