"""`streambid loadtest day`: its command line (registered from loadtest/commands.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bidder.arguments import broker_address_problem, positive
from bidder.commands import MAX_WORKERS

DAY_DESCRIPTION = """\
Play one simulated day through the real stack: a Kafka broker ($KAFKA_BOOTSTRAP,
--broker, or one started with deploy/kafka-local/kafka.sh and stopped at the
end), `streambid worker` and `streambid serve --workers 2` as processes, all on
one simulated clock (STREAMBID_TIME_WARP) that runs --speedup times faster
than the wall clock: 1440 plays the 24 hours in 60 s.

Five campaigns with different budgets, goals and targeting go onto the config
topic; requests follow the daily traffic curve over HTTP keep-alive; the
simulated exchange runs first- and second-price auctions against market
prices, sends win/loss notices at once and billing notices late (some never);
users click with a hidden true CTR and a few clicks convert minutes to hours
later; impressions, clicks and conversions go to their Kafka topics.

Prints per campaign: budget, spend, spend-vs-plan error (largest gap between
cumulative spend and plan, % of budget), impressions, clicks, conversions,
true expected clicks, the hindsight optimum (knowing every eligible auction,
its price and true CTR, buy the best CTR per price first until the budget is
spent) and regret = 1 - ours / optimum, eCPC, ROI; then the invariants (the
ledger's spend equals the accepted billing notices to the micro and it counted
every billed impression, click and conversion once; spend stays within budget
+ the stated bound; regret in [0, 1]).  Writes day-kafka-spend.png and the
process logs (day-logs/) to --out.  Exits 1 when an invariant fails, or when
the stack fails (a process exits, the bidder stops answering, events do not
reach Kafka).  Ctrl-C or SIGTERM stops the processes and the broker it
started and exits 130.

examples:
  streambid loadtest day --speedup 1440
  KAFKA_BOOTSTRAP=127.0.0.1:9092 streambid loadtest day --speedup 2880 --requests 6000 --json
"""


MAX_REQUESTS = 100_000  # the plan is built in memory: about 7 KB and 70 µs of planning per request


def _cmd_day(args: argparse.Namespace) -> int:
    from loadtest.day_kafka import command

    if problem := broker_address_problem(args.broker):  # the Kafka client would say only "invalid literal for int()"
        print(f"streambid loadtest day: {problem}", file=sys.stderr)
        return 2
    return command(args)


def register_day(groups: dict[str, argparse._SubParsersAction]) -> None:
    """`streambid loadtest day`."""
    p = groups["loadtest"].add_parser(
        "day",
        help="a whole simulated day through bidders, Kafka and the worker, sped up (ROI, pacing, regret)",
        description=DAY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--speedup", type=positive(float), default=1440.0, metavar="N",
      help="simulated seconds per wall second: the day takes 86400/N s (default: %(default)g, i.e. 60 s)")
    a("--requests", type=positive(int, MAX_REQUESTS), default=12_000, metavar="N",
      help=f"bid requests in the simulated day, at most {MAX_REQUESTS:,} (the day is planned in memory first, "
           "about 0.7 GB per 100,000) (default: %(default)s)")
    a("--seed", type=int, default=7, metavar="N", help="random seed of the simulated market (default: %(default)s)")
    a("--broker", metavar="HOST:PORT",
      help="Kafka bootstrap (default: $KAFKA_BOOTSTRAP; if unset, a local broker is started for the run)")
    a("--bidder-workers", type=positive(int, MAX_WORKERS), default=2, metavar="N",
      help=f"bidder processes behind the port, at most {MAX_WORKERS} as for `serve --workers` (default: %(default)s)")
    a("--warmup", type=positive(float), default=20.0, metavar="S",
      help="wall seconds from starting the processes to simulated midnight (default: %(default)s)")
    a("--grace", type=positive(float), default=1.0, metavar="S",
      help="wall seconds a bidder may take to stop a campaign once the pacing topic says it is exhausted, in the "
           "budget check (default: %(default)s)")
    a("--out", type=Path, default=Path("out"), metavar="DIR",
      help="directory for day-kafka-spend.png and the process logs (default: %(default)s)")
    a("--json", action="store_true", help="print the report as one JSON document on stdout")
    a("--no-progress", action="store_true", help="no status line on stderr")
    p.set_defaults(func=_cmd_day)
