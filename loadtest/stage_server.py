"""`streambid serve` cut short after one stage of the bid path, for measuring what each stage costs when served.

In process, a profile shares the time of a bid among a dozen functions; served,
what counts is the CPU per answer with HTTP, the kernel and the cache misses of
a real worker included.  This server is the real `streambid serve` with the
engine stopped after a stage, answering 204 with `x-nobid-reason: cut`:

    parse    HTTP, the version and size checks, and the whole OpenRTB parse (user-id hashing included)
    match    + privacy, seats, the live set and the campaign index for every impression
    decide   + scoring, pricing and the budget checks: everything but writing the bid

`streambid bench stages` serves each in turn and reads the difference between
neighbours as the cost of a stage.  Nothing here is used when bidding for real.

    python -m loadtest.stage_server --stage match [streambid serve options]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bidder.engine import BidEngine, Outcome

STAGES = ("parse", "match", "decide")
CUT_REASON = "cut"


class _Cut(Exception):
    """Raised where a stage ends; the engine's `bid` turns it into the cut no-bid."""


def _cut(*_: Any, **__: Any) -> Any:
    raise _Cut


def _cut_outcome() -> Outcome:
    return Outcome(204, reason=CUT_REASON)


def cut_methods(stage: str) -> dict[str, Callable[..., Any]]:
    """The BidEngine methods to replace so that a bid stops after `stage` (see the module docstring)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
    full_bid = BidEngine.bid

    def bid(self: BidEngine, req: Any, exchange: str, deadline: float) -> Outcome:
        if stage == "parse":
            return _cut_outcome()
        try:
            return full_bid(self, req, exchange, deadline)
        except _Cut:
            return _cut_outcome()

    def match_only(self: BidEngine, req: Any, imp: Any, exchange: str, user: str, hour: int, weekday: int,
                   now: float, held: Any = None) -> tuple[None, int]:
        self._eligible(req, imp, user, now)
        if imp is req.imps[-1]:  # every impression has been matched
            raise _Cut
        return None, 0

    methods: dict[str, Callable[..., Any]] = {"bid": bid}
    if stage == "match":
        methods["_best_for_imp"] = match_only
    elif stage == "decide":
        methods["_respond"] = _cut  # every impression has its priced pick; only the answer is left
    return methods


def cut_engine(stage: str) -> None:
    """Make every BidEngine of this process (and of the workers it forks) stop after `stage`."""
    for name, method in cut_methods(stage).items():
        setattr(BidEngine, name, method)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.stage_server",
        description="streambid serve, with each bid cut short after a stage (204, x-nobid-reason: cut). "
                    "Every other option is passed to `streambid serve`.",
    )
    p.add_argument("--stage", required=True, choices=STAGES, help="the last stage of the bid path that runs")
    args, serve_args = p.parse_known_args(argv)
    cut_engine(args.stage)
    from bidder.cli import main as streambid

    return streambid(["serve", *serve_args])


if __name__ == "__main__":
    sys.exit(main())
