"""Long work on a serving process's event loop, cut into slices so bids get in between.

A computation that may take tens of milliseconds (rendering /metrics over
thousands of campaigns) is written once, as a generator that yields wherever it
may pause and returns its result: `drain` runs it at once, `run_sliced` runs
it on the event loop a slice of about `slice_s` at a time, one slice per pass
of the loop however many such computations run at once.  A request arriving
meanwhile then waits for one slice, not for the whole computation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar
from weakref import WeakKeyDictionary

T = TypeVar("T")
Steps = Generator[None, None, T]  # yields where it may pause; returns the result

SLICE_S = 0.002  # the longest a slice runs before the loop gets a turn (a single step may overrun it)
STEP_ITEMS = 256  # items between two pauses in a loop over campaigns or series: well under a millisecond


def drain(steps: Steps[T]) -> T:
    """Run `steps` to the end at once (off the bid path, or where nothing waits)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class _Turn:
    """What sliced work has had of one pass of an event loop, and which sliced runs were made to wait for it."""

    __slots__ = ("used", "owed", "resetting")

    def __init__(self) -> None:
        self.used = False
        self.owed: set[object] = set()
        self.resetting = False

    def spend(self, loop: asyncio.AbstractEventLoop) -> None:
        self.used = True
        if not self.resetting:  # runs first in the next pass: scheduled before the wake-up of whoever spent
            self.resetting = True
            loop.call_soon(self._reset)

    def _reset(self) -> None:
        self.used = self.resetting = False


_turns: WeakKeyDictionary[asyncio.AbstractEventLoop, _Turn] = WeakKeyDictionary()


async def run_sliced(steps: Steps[T], slice_s: float = SLICE_S) -> T:
    """Run `steps` on the running event loop, a slice per pass of the loop.

    A slice gives the loop its pass before a step that would take the slice past `slice_s` (one as long as the
    longest of the slice so far): stopping only once past it would make a slice of 2 ms and steps of 1.9 ms hold
    the loop 3.9 ms.  Sliced runs take turns: one slice per pass in all (a model being built, a campaign change and
    a /metrics page would otherwise each add theirs to the same pass), and one made to wait goes next.
    """
    loop = asyncio.get_running_loop()
    turn = _turns.get(loop)
    if turn is None:
        turn = _turns[loop] = _Turn()
    me = object()
    try:
        while True:
            while turn.used or (turn.owed and me not in turn.owed):  # another's slice, this pass or owed
                if turn.used:
                    turn.owed.add(me)
                await asyncio.sleep(0)
            turn.owed.discard(me)
            turn.spend(loop)
            started, longest = time.perf_counter(), 0.0
            while True:
                before = time.perf_counter()
                try:
                    next(steps)
                except StopIteration as done:
                    return done.value
                now = time.perf_counter()
                longest = max(longest, now - before)
                if now - started + longest >= slice_s:
                    break
            await asyncio.sleep(0)
    finally:
        turn.owed.discard(me)
