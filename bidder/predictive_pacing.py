"""Model-predictive pacing: the multiplier whose forecast spend clears the remaining budget.

Why one multiplier: in second-price auctions under a budget, the best set of
impressions (up to one item) is those with the highest value per price.
Bidding value / (1 + lambda) buys exactly the auctions whose value / price is at
least 1 + lambda, so the ideal lambda is a single number per budget period: the
one whose spend equals the budget.  A feedback controller (`bidder.pacing`)
finds it by trial and error, moving lambda while it goes; this finds it by
forecast, and re-solves as the period goes:

    forecast(lambda) = auctions_left x calibration x mean over values v of S(min(v / (1 + lambda), max_bid))
    solve forecast(lambda) = budget_left

- S(b), the expected second-price payment per auction at bid b, comes from a
  bid landscape (`WinRateModel`), e.g. yesterday's or a training period's prices.
- The values v are those of the requests seen so far (`ValueSketch`): a
  request's value is known when it arrives, whether or not it is won.
- calibration = realised spend / S-predicted spend at the bids actually placed,
  shrunk towards 1 by a prior worth `prior_auctions` auctions.  It corrects, at
  the operating point, a market dearer or cheaper than the landscape and the
  correlation between value and price that a marginal landscape ignores.  Only
  what a bidder learns counts: the prices of won auctions; a lost auction adds
  its predicted spend and nothing paid.

Pure objects, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bidder.landscape import WinRateModel


class ValueSketch:
    """Log-binned histogram of request values (CPM micros): the value distribution the forecast averages over.

    Bins are `resolution` wide in log space (5% by default), so the sketch is
    small whatever the traffic and a bid computed from a bin centre is within
    half a bin of the exact one.  Values <= 0 (never bid) are counted apart.
    """

    __slots__ = ("resolution", "_bins", "_zero", "_cache")

    def __init__(self, resolution: float = 0.05) -> None:
        if not resolution > 0:
            raise ValueError("resolution must be > 0")
        self.resolution = resolution
        self._bins: dict[int, float] = {}
        self._zero = 0.0
        self._cache: list[tuple[float, float]] | None = None

    def add(self, value_cpm: float, weight: float = 1.0) -> None:
        if weight <= 0:
            raise ValueError("weights must be > 0")
        self._cache = None  # a zero value dilutes every bin's share too
        if value_cpm <= 0:
            self._zero += weight
            return
        k = math.floor(math.log(value_cpm) / self.resolution)
        self._bins[k] = self._bins.get(k, 0.0) + weight

    @property
    def total(self) -> float:
        return self._zero + sum(self._bins.values())

    def points(self) -> list[tuple[float, float]]:
        """(bin centre value, share of all requests) per occupied bin; zero-value requests only dilute the shares."""
        if self._cache is None:
            total = self.total
            r = self.resolution
            self._cache = [(math.exp((k + 0.5) * r), n / total) for k, n in sorted(self._bins.items())] if total else []
        return self._cache


class PredictivePacer:
    """One campaign's lambda from a spend forecast: landscape x value sketch x calibration.

    prior_auctions: weight of the calibration prior (ratio 1) in auctions; the
        larger, the longer the landscape is trusted over the realised spend.
    lam_max: the multiplier when even the highest lambda would overspend.
    tolerance: precision of the solved u = log(1 + lambda); 1e-3 is 0.1% of a bid.
    """

    def __init__(self, landscape: WinRateModel, max_bid_cpm: int, sketch: ValueSketch | None = None,
                 prior_auctions: float = 100.0, lam_max: float = 1000.0, tolerance: float = 1e-3) -> None:
        if max_bid_cpm <= 0 or prior_auctions < 0 or lam_max <= 0 or tolerance <= 0:
            raise ValueError("max_bid_cpm, lam_max and tolerance must be > 0, prior_auctions >= 0")
        self.landscape = landscape
        self.max_bid_cpm = max_bid_cpm
        self.sketch = sketch if sketch is not None else ValueSketch()
        self.prior_auctions = prior_auctions
        self.u_max = math.log1p(lam_max)
        self.tolerance = tolerance
        self.u = 0.0
        self.auctions = 0
        self.predicted = 0.0  # sum of S(bid) over auctions bid on, CPM micros
        self.paid = 0  # sum of market prices paid, CPM micros

    @property
    def lam(self) -> float:
        return math.expm1(self.u)

    def observe(self, value_cpm: float, bid_cpm: int, paid_cpm: int) -> None:
        """One auction seen: its request's value, our bid (0 if none) and the price paid (0 if lost)."""
        self.sketch.add(value_cpm)
        self.auctions += 1
        if bid_cpm > 0:
            self.predicted += self.landscape.expected_spend(bid_cpm)
        self.paid += paid_cpm

    @property
    def calibration(self) -> float:
        """Realised over predicted spend, with `prior_auctions` average auctions of ratio 1 added to both."""
        if self.auctions == 0 or self.predicted <= 0.0:
            return 1.0
        prior = self.prior_auctions * self.predicted / self.auctions
        return (self.paid + prior) / (self.predicted + prior)

    def forecast(self, lam: float) -> float:
        """Expected spend per auction (CPM micros) at this lambda, calibrated."""
        return self._forecast(math.log1p(max(lam, 0.0)), self.calibration)

    def _forecast(self, u: float, calibration: float) -> float:
        scale, cap, spend = math.exp(-u), self.max_bid_cpm, self.landscape.expected_spend
        return calibration * sum(share * spend(min(int(v * scale), cap)) for v, share in self.sketch.points())

    def solve(self, budget_left: int, auctions_left: float) -> float:
        """The lambda whose forecast spend over the auctions left equals the budget left (micros); sets and returns it.

        The smallest such lambda: 0 when the budget does not bind, lam_max when
        even lam_max would overspend or nothing is left; unchanged while no
        value has been seen (nothing to forecast with: seed the sketch).
        Warm-started from the last solution, which moves little between calls.
        """
        if budget_left <= 0 or auctions_left <= 0 or not self.sketch.points():
            self.u = self.u_max if budget_left <= 0 or auctions_left <= 0 else self.u
            return self.lam
        need = budget_left * 1000 / auctions_left  # CPM micros per auction
        cal = self.calibration

        def over(u: float) -> bool:
            return self._forecast(u, cal) > need

        lo, hi = self._bracket(over)
        while hi - lo > self.tolerance:
            mid = (lo + hi) / 2
            if over(mid):
                lo = mid
            else:
                hi = mid
        self.u = hi
        return self.lam

    def _bracket(self, over: Callable[[float], bool]) -> tuple[float, float]:
        """[lo, hi] with over(lo) (or lo = 0) and not over(hi) (or hi = u_max), grown outwards from the last u."""
        step = 0.05
        if over(self.u):
            lo, hi = self.u, min(self.u + step, self.u_max)
            while hi < self.u_max and over(hi):
                lo, hi, step = hi, min(hi + step, self.u_max), step * 2
            return lo, hi
        lo, hi = max(self.u - step, 0.0), self.u
        while lo > 0.0 and not over(lo):
            hi, lo, step = lo, max(lo - step, 0.0), step * 2
        return (lo, hi) if over(lo) else (0.0, 0.0)
