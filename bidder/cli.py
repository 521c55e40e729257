"""The `streambid` command: one entry point, a manual in `--help`.

Each package adds its own subcommands through a `register(groups)` function in
its `commands` module, so this file only lays out the command tree.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

DESCRIPTION = """\
streambid: a real-time OpenRTB 2.6 bidder with online CTR learning and budget pacing.

Start here:
  streambid demo                      simulate two days in one process (no Kafka): ROI per campaign, pacing vs baselines
  streambid serve --campaigns FILE    answer bid requests on http://127.0.0.1:8080/bid/<exchange>
  streambid worker --broker HOST:PORT run the stream processors (attribution, spend, learning, pacing)
  streambid campaign set FILE         validate a campaign file and publish it to the config topic

Every command that reports figures also takes --json and then prints one JSON document on stdout.
Run `streambid COMMAND --help` for the details of each command.
"""

EPILOG = """\
environment:
  KAFKA_BOOTSTRAP      broker address used when --broker is not given (e.g. 127.0.0.1:9092)
  STREAMBID_SECRET     key for signing win/billing/loss notice URLs (set the same on every bidder)
  STREAMBID_SALT       salt for hashing user ids before they reach frequency caps and events
  STREAMBID_TOPIC_PREFIX  first part of every Kafka topic name (default: streambid), to run several stacks on one
                       broker; bidders, workers and the campaign commands of one stack must share it
"""

PACKAGES = ("bidder.commands", "streams.commands", "models.commands", "loadtest.commands")
GROUPS = {
    "bench": "benchmarks that print tables (never part of the test suite)",
    "campaign": "manage campaigns on the config topic",
    "loadtest": "play the exchange against a running bidder",
    "model": "the CTR model the workers publish",
    "replay": "replay real auction logs through the pacer and pricer",
}


def build_parser() -> argparse.ArgumentParser:
    """The full command tree, from every package's `register` hook."""
    parser = argparse.ArgumentParser(
        prog="streambid", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {"top": top}
    for name, help_text in GROUPS.items():
        g = top.add_parser(name, help=help_text, description=help_text)
        groups[name] = g.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", required=True)
    for module in PACKAGES:
        importlib.import_module(module).register(groups)
    return parser


def package_version() -> str:
    """The installed package's version, for bug reports; "unknown" when run from a tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streambid")
    except PackageNotFoundError:
        return "unknown"


def chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command's own parser that `args` went through: `streambid campaign set` for `campaign set FILE`."""
    for dest in ("command", f"{getattr(args, 'command', '')}_command"):
        name = getattr(args, dest, None)
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if name is None or sub is None:
            break
        parser = sub.choices[name]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:  # Ctrl-C ends a command quietly, also while the commands' modules still load (the first ~0.3 s)
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named by the command they were given to, with its usage, not the top-level one
            chosen(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
