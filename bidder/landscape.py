"""Bid landscape: how likely a bid is to win, and what winning costs, from observed market prices.

A market price is the lowest bid that would have won (the clearing price of a
second-price auction, or the highest competing bid of a first-price one).  The
model is an empirical distribution of those prices, in integer CPM micros.  It
answers the two questions pricing and pacing ask:

- first-price shading needs P(win | b) to trade surplus against win rate;
- pacing needs the expected second-price spend per auction at a bid, to pick a
  starting multiplier before any of today's spend has been seen.

A bid wins when it is >= the market price (ties go to us), so P(win | b) is the
CDF at b and only changes at observed price points: those are the only bids
worth considering when maximising (v - b) * P(win | b).  Pure object, no I/O.

A first-price win whose notice names no market price says only "the market
price was at most our bid": a left-censored observation (`add_at_most`).
Leaving such wins out while keeping the losses' prices (all above our bids)
would teach the model that nothing cheaper ever wins, and shading would never
bid below the value; with censored wins the distribution is the reverse
Kaplan-Meier estimate, the empirical one when nothing is censored.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

import numpy as np


class WinRateModel:
    """Empirical market-price distribution: P(win | bid) and expected spend at a bid.

    Built from (price, count) pairs; `add` folds in newly observed prices (win
    notices' clearing prices, loss notices' minimum-to-win) and the cumulative
    tables are rebuilt lazily on the next query.
    """

    __slots__ = ("_counts", "_bounds", "_points", "_cum_n", "_cum_cost", "_total", "_dirty", "_point_array",
                 "_rate_array", "_monotone_below")

    def __init__(self, counts: Mapping[int, float] | None = None, bounds: Mapping[int, float] | None = None) -> None:
        self._counts: dict[int, float] = {}
        self._bounds: dict[int, float] = dict(bounds or {})  # left-censored: market price <= bound, with weights
        self._points: list[int] = []
        self._cum_n: list[float] = []
        self._cum_cost: list[float] = []
        self._total = 0.0
        self._dirty = True
        self._point_array = np.zeros(0, dtype=np.int64)
        self._rate_array = np.zeros(0)
        self._monotone_below = math.inf
        for price, n in (counts or {}).items():
            self.add(price, n)

    @classmethod
    def from_prices(cls, prices: Iterable[int]) -> WinRateModel:
        """One observation per market price (CPM micros)."""
        model = cls()
        for p in prices:
            model.add(p)
        return model

    @classmethod
    def from_histogram(cls, counts: Iterable[float], unit_micros: int) -> WinRateModel:
        """A histogram whose bucket i holds prices of i * unit_micros (e.g. CNY fen -> unit 10_000)."""
        return cls({i * unit_micros: n for i, n in enumerate(counts) if n > 0})

    def add(self, price_cpm: int, weight: float = 1.0) -> None:
        """Fold in one observed market price (CPM micros)."""
        if price_cpm < 0 or not 0 < weight < math.inf:  # NaN fails it too
            raise ValueError("market prices must be >= 0 and weights finite and > 0")
        self._counts[price_cpm] = self._counts.get(price_cpm, 0.0) + weight
        self._dirty = True

    def add_at_most(self, bound_cpm: int, weight: float = 1.0) -> None:
        """Fold in an auction whose market price is only known to be <= `bound_cpm` (a first-price win)."""
        if bound_cpm < 0 or not 0 < weight < math.inf:
            raise ValueError("market prices must be >= 0 and weights finite and > 0")
        self._bounds[bound_cpm] = self._bounds.get(bound_cpm, 0.0) + weight
        self._dirty = True

    def frozen_copy(self) -> WinRateModel:
        """A copy with its tables built, for the bid path to read while this one keeps learning."""
        copy = WinRateModel(self._counts, self._bounds)
        copy._build()
        return copy

    @property
    def observations(self) -> float:
        """Total weight of the auctions seen: prices and wins known only to be at most a bid."""
        self._build()
        return self._total

    def _build(self) -> None:
        if not self._dirty:
            return
        self._points = sorted(self._counts)
        if self._bounds and self._points:
            self._cum_n, self._cum_cost, self._total = self._censored_tables()
        else:
            cum_n, cum_cost, n, cost = [], [], 0.0, 0.0
            for p in self._points:
                n += self._counts[p]
                cost += p * self._counts[p]
                cum_n.append(n)
                cum_cost.append(cost)
            self._cum_n, self._cum_cost, self._total = cum_n, cum_cost, n + sum(self._bounds.values())
        # the same win rates as arrays, for shading: the same float division, element by element
        self._point_array = np.array(self._points, dtype=np.int64)
        total = self._total
        self._rate_array = np.array(self._cum_n, dtype=np.float64) / total if total else np.zeros(0)
        steps = np.diff(self._rate_array, prepend=0.0)
        self._monotone_below = float(steps.min()) * 2.0**50 if len(steps) else math.inf
        self._dirty = False

    def _censored_tables(self) -> tuple[list[float], list[float], float]:
        """(cumulative weight, cumulative cost, total) at each price point, from the reverse Kaplan-Meier estimate.

        Read from the highest price down, an auction is "at risk" at price x while its price, or its bound, is
        <= x; P(price < x) is the product of (1 - d/n) over the price points >= x (d the prices at a point, n
        those at risk there).  The share censored below the lowest price point has no price of its own: a bid
        under that point is given no chance to win, and the expected spend leaves it out.
        """
        points = np.array(self._points, dtype=np.int64)
        d = np.array([self._counts[p] for p in self._points], dtype=np.float64)
        bounds = sorted(self._bounds)
        at_or_below = np.cumsum(np.array([self._bounds[b] for b in bounds], dtype=np.float64))
        k = np.searchsorted(np.array(bounds, dtype=np.int64), points, side="right")  # bounds <= each point
        n = np.cumsum(d) + np.where(k > 0, at_or_below[np.maximum(k - 1, 0)], 0.0)
        below = np.cumprod((1.0 - d / n)[::-1])[::-1]  # P(price < x_i)
        cdf = np.append(below[1:], 1.0)  # P(price <= x_i) = P(price < x_{i+1})
        total = float(d.sum()) + float(at_or_below[-1])
        mass = np.diff(cdf, prepend=below[0])
        return (cdf * total).tolist(), np.cumsum(points * mass * total).tolist(), total

    @property
    def monotone_below(self) -> float:
        """Paced values (CPM micros) under which first-price shading never bids less for a higher value.

        Exactly, the lowest maximiser of (v - b) * P(win | b) never falls as v rises.  In floats, one micro more
        of v raises a higher price point's surplus over a lower one's by at least the smallest win-rate step; while
        that step exceeds a surplus's rounding (at most v * 2^-52) the two keep their order, past it they can round
        to a tie that goes to the lower bid.  2^-50 leaves room for the rounding of the steps themselves.
        """
        self._build()
        return self._monotone_below

    def win_rate(self, bid_cpm: int) -> float:
        """P(market price <= bid): the chance this bid wins."""
        self._build()
        i = bisect.bisect_right(self._points, bid_cpm)
        return self._cum_n[i - 1] / self._total if i else 0.0

    def expected_spend(self, bid_cpm: int) -> float:
        """Expected second-price payment per auction (CPM micros): E[price * 1{price <= bid}]."""
        self._build()
        i = bisect.bisect_right(self._points, bid_cpm)
        return self._cum_cost[i - 1] / self._total if i else 0.0

    def price_points(self, lo_cpm: int, hi_cpm: int) -> list[int]:
        """Observed prices in [lo, hi]: the bids at which the win rate steps up."""
        self._build()
        return self._points[bisect.bisect_left(self._points, lo_cpm) : bisect.bisect_right(self._points, hi_cpm)]

    def win_steps(self, lo_cpm: int, hi_cpm: int) -> list[tuple[int, float]]:
        """(price point, win rate when bidding it) for every observed price in [lo, hi], in one pass."""
        self._build()
        i, j = bisect.bisect_left(self._points, lo_cpm), bisect.bisect_right(self._points, hi_cpm)
        total = self._total
        return [(self._points[k], self._cum_n[k] / total) for k in range(i, j)]

    def step_arrays(self, lo_cpm: int, hi_cpm: int) -> tuple[np.ndarray, np.ndarray]:
        """`win_steps` as two arrays (price points, win rates), views that cost no walk over the points."""
        self._build()
        i, j = bisect.bisect_left(self._points, lo_cpm), bisect.bisect_right(self._points, hi_cpm)
        return self._point_array[i:j], self._rate_array[i:j]

    def bid_for_spend(self, spend_per_auction_cpm: float) -> int:
        """Smallest price point whose expected second-price spend per auction reaches the target.

        Used to seed pacing: with no spend seen yet today, the multiplier that
        makes the average request's paced bid land here spends about the target.
        Returns the highest price point when the target cannot be reached.
        """
        self._build()
        if not self._points:
            raise ValueError("an empty landscape cannot price a bid")
        need = spend_per_auction_cpm * self._total
        i = bisect.bisect_left(self._cum_cost, need)
        return self._points[min(i, len(self._points) - 1)]
