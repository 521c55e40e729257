"""Clocks: the real one, and a warped one that plays a whole simulated day in minutes.

Every process of a simulated run (bidders, the stream worker, the simulated
exchange) must agree on the time, or pacing, day boundaries, notice expiry
and attribution windows would each run on a different day.  They share one
setting, `STREAMBID_TIME_WARP="origin,wall_start,speedup"`:

    simulated now = origin + (time.time() - wall_start) * speedup

so all processes read the same simulated time without talking to each other.
Without the variable every process uses the real clock.  Durations that are
about the machine (request deadlines, Kafka timeouts) stay on real time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping

ENV = "STREAMBID_TIME_WARP"


class Clock:
    """Real time in unix seconds; `speedup` 1."""

    __slots__ = ()
    speedup = 1.0

    def __call__(self) -> float:
        return time.time()

    def wall_seconds(self, sim_seconds: float) -> float:
        """How long `sim_seconds` of this clock's time take on the wall clock."""
        return sim_seconds

    def __repr__(self) -> str:
        return "Clock()"


class WarpedClock(Clock):
    """Simulated time that runs `speedup` times faster than the wall clock, from `origin` at `wall_start`."""

    __slots__ = ("origin", "wall_start", "speedup")

    def __init__(self, origin: float, wall_start: float, speedup: float) -> None:
        if not (math.isfinite(origin) and math.isfinite(wall_start) and math.isfinite(speedup)) or speedup <= 0:
            raise ValueError("a time warp needs a finite origin and wall start and a speedup > 0")
        self.origin = float(origin)
        self.wall_start = float(wall_start)
        self.speedup = float(speedup)

    def __call__(self) -> float:
        return self.origin + (time.time() - self.wall_start) * self.speedup

    def wall_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.speedup

    def wall_time(self, sim: float) -> float:
        """The wall-clock time (unix seconds) at which this clock reads `sim`."""
        return self.wall_start + (sim - self.origin) / self.speedup

    def to_env(self) -> str:
        """The `STREAMBID_TIME_WARP` value for this clock (repr keeps every float exact)."""
        return f"{self.origin!r},{self.wall_start!r},{self.speedup!r}"

    def __repr__(self) -> str:
        return f"WarpedClock(origin={self.origin!r}, wall_start={self.wall_start!r}, speedup={self.speedup!r})"


def parse_warp(text: str) -> WarpedClock:
    """`"origin,wall_start,speedup"` (unix seconds, unix seconds, factor) to a clock; ValueError names the problem."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"{ENV} must be 'origin,wall_start,speedup', got {text!r}")
    try:
        origin, wall_start, speedup = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{ENV} must hold three numbers, got {text!r}") from None
    return WarpedClock(origin, wall_start, speedup)


def from_env(environ: Mapping[str, str] | None = None) -> Clock:
    """The clock this process runs on: warped when `STREAMBID_TIME_WARP` is set, else real."""
    text = (os.environ if environ is None else environ).get(ENV, "").strip()
    return parse_warp(text) if text else Clock()
