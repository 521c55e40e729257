"""Pricing: from pCTR and the marketer's goal to a bid price (CPM, integer micros).

value = pCTR x value-per-click (or pCVR x value-per-conversion) x 1000.  Pacing
shades it to the paced value v = value / (1 + lambda), the Lagrangian form of
"maximise value subject to the budget": lambda is the price of one unit of
budget, so an impression is worth buying only when v clears its price.

- Second price: bidding v is optimal (truthful for the paced value).
- First price: the price paid is the bid, so bid b <= v maximising the expected
  surplus (v - b) * P(win | b) on the bid landscape.
- Fixed-price deals: the price is the deal floor; bid it when v clears it.

Every path caps at the campaign's max bid and returns 0 (no bid) rather than a
price under the floor.  Pure functions, no I/O.
"""

from __future__ import annotations

from bidder.campaigns import Campaign
from bidder.landscape import WinRateModel


def impression_value_cpm(pctr: float, campaign: Campaign, pcvr: float = 0.0) -> int:
    """Expected value of one thousand impressions, in micros of the campaign currency."""
    if campaign.goal == "cpa":
        return int(_probability(pcvr) * campaign.value_per_conversion * 1000)
    return int(_probability(pctr) * campaign.value_per_click * 1000)


def _probability(p: float) -> float:
    """Clamp a model output to [0, 1]; NaN counts as 0 so a broken model never bids."""
    return min(max(p, 0.0), 1.0) if p == p else 0.0


def paced_value(value_cpm: int, lam: float, max_bid_cpm: int) -> int:
    """value / (1 + lambda), capped at the max bid: the most this impression is worth paying today."""
    return min(int(value_cpm / (1.0 + max(lam, 0.0))), max_bid_cpm)


def bid_price(value_cpm: int, lam: float, max_bid_cpm: int, floor_cpm: int, first_price: bool,
              landscape: WinRateModel | None = None, fixed_price: bool = False) -> int:
    """Paced bid in CPM micros, or 0 when the paced value does not clear the floor.

    `fixed_price` is a deal whose price is its floor (OpenRTB deal.at = 3).
    First price without a landscape bids the paced value (no data to shade on).
    """
    v = paced_value(value_cpm, lam, max_bid_cpm)
    if v <= 0 or v < floor_cpm:
        return 0
    if fixed_price:
        return floor_cpm if floor_cpm > 0 else v
    if not first_price or landscape is None:
        return v
    return shade_first_price(v, floor_cpm, landscape)


def shade_first_price(v: int, floor_cpm: int, landscape: WinRateModel) -> int:
    """The bid in [floor, v] maximising (v - b) * P(win | b); v itself when the landscape sees no win below v.

    P(win | b) only steps up at observed market prices, and between steps a
    lower bid has more surplus, so the optimum is the floor or a price point.
    Of several optima it takes the lowest, which never falls as the floor rises
    nor, under `landscape.monotone_below`, as v rises: the engine prunes on that.
    """
    lo = max(floor_cpm, 1)  # a bid is at least one micro: 0 means no bid
    best, best_surplus = v, (v - lo) * landscape.win_rate(lo)
    if best_surplus > 0.0:
        best = lo
    # every price point at once (a landscape holds thousands): the first of the largest surpluses, as a walk in
    # ascending order keeping only a strictly larger one would find
    points, rates = landscape.step_arrays(lo, v)
    if len(points):
        surplus = (v - points) * rates
        k = int(surplus.argmax())
        if surplus[k] > best_surplus:
            best = int(points[k])
    return best
