"""Long work on a serving process's event loop, cut into slices so bids get in between.

A computation that may take tens of milliseconds (rendering /metrics over
thousands of campaigns) is written once, as a generator that yields wherever it
may pause and returns its result: `drain` runs it at once, `run_sliced` runs
it on the event loop, giving the loop a turn whenever a slice has taken
`slice_s`.  A request arriving meanwhile then waits for one slice, not for the
whole computation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar

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


async def run_sliced(steps: Steps[T], slice_s: float = SLICE_S) -> T:
    """Run `steps` on the running event loop, giving it a turn before a step that would take the slice past
    `slice_s`: one as long as the longest of the slice so far.  Stopping only once past it would make a slice
    of 2 ms and steps of 1.9 ms hold the loop 3.9 ms."""
    started = time.perf_counter()
    longest = 0.0
    while True:
        before = time.perf_counter()
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        now = time.perf_counter()
        longest = max(longest, now - before)
        if now - started + longest >= slice_s:
            await asyncio.sleep(0)
            started, longest = time.perf_counter(), 0.0
