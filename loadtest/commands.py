"""Subcommands this package adds to `streambid`."""

from __future__ import annotations

import argparse
from pathlib import Path

from bidder.arguments import positive

REPLAY_DESCRIPTION = """\
Replay the iPinYou campaign-2997 auction log (RLB paper protocol, Cai et al.
WSDM 2017) through the bidder's own pricer, paced by its predictive pacer
(the feedback controller alongside for reference), next to a linear-bidding
baseline and the hindsight optimum.

The log is cut into episodes of T auctions with budget
B = int(cost_train / imp_train * c0 * T); an auction is won when the bid is
>= its market price, which is then paid; no bid exceeds the budget left.
Parameters come from the training statistics (info.json) and what the
episode has revealed so far, never from the test log.

Prints clicks, impressions, spend and eCPC per strategy and c0, the targets
(clicks >= 97% of hindsight, >= 78 at c0 = 1/32, no episode over budget), and
writes a spend-against-plan PNG to --out.

examples:
  streambid replay ipinyou --data ../shared/data
  streambid replay ipinyou --data ../shared/data/ipinyou-2997 --c0 1/32 --json
"""


def _c0(text: str):
    from fractions import Fraction

    try:
        c0 = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (e.g. 1/32)") from None
    if not 0 < c0 <= 1:
        raise argparse.ArgumentTypeError("c0 must be in (0, 1]")
    return c0


def _cmd_replay_ipinyou(args: argparse.Namespace) -> int:
    from loadtest.replay_ipinyou import command

    return command(args)


def register_replay(groups: dict[str, argparse._SubParsersAction]) -> None:
    """`streambid replay ipinyou`."""
    p = groups["replay"].add_parser(
        "ipinyou",
        help="pacer + pricer on the iPinYou 2997 log vs linear bidding and hindsight (RLB protocol)",
        description=REPLAY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--data", type=Path, required=True, metavar="DIR",
      help="directory with info.json and test.theta.txt (or the shared data directory holding ipinyou-2997/)")
    a("--c0", type=_c0, action="append", metavar="F",
      help="budget level as a fraction, e.g. 1/32; repeat for several (default: 1/32 1/16 1/8 1/4 1/2)")
    a("--episode", type=positive(int), default=1000, metavar="T", help="auctions per episode (default: %(default)s)")
    a("--json", action="store_true", help="print the report as one JSON document on stdout")
    a("--out", type=Path, default=Path("out"), metavar="DIR",
      help="directory for replay_ipinyou_pacing.png (default: %(default)s)")
    a("--no-progress", action="store_true", help="no status line on stderr")
    p.set_defaults(func=_cmd_replay_ipinyou)


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add this package's subcommands to the command tree."""
    from loadtest.day_commands import register_day
    from loadtest.load_commands import register_loadtest

    register_replay(groups)
    register_loadtest(groups)
    register_day(groups)
