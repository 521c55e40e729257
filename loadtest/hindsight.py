"""The hindsight optimum of a simulated day, and how far a campaign fell short of it.

After the day the simulator knows what the bidder never could: every auction
a campaign was eligible for, the price that would have won it, and the true
click-through rate of each of its creatives there.  The best any bidder could
have done with the same money is then a fractional knapsack: buy the auctions
with the most expected clicks per micro first until the budget is spent.  The
last auction is bought in part, so the optimum is an upper bound on the
expected clicks of any real bidder: regret = 1 - ours / optimum lies in [0, 1]
whenever our purchases were auctions the campaign was eligible for, paid at no
less than their winning price.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bidder.campaigns import Campaign, Creative
from bidder.openrtb import BidRequest, Imp
from bidder.privacy import restriction
from bidder.targeting import deal_for, fits_imp, matches
from loadtest.day import cost_micros


def eligible_creatives(camp: Campaign, req: BidRequest, imp: Imp, seat: str = "streambid") -> list[Creative]:
    """The creatives of `camp` the bidder may offer on `imp`, by the engine's hard rules.

    Time (flight and dayparting), money (floors, pacing, budget) and per-user
    state (frequency counts) are left out: the first is checked by the caller
    at the auction's time, the others are what a bidder chooses or spends.
    A campaign with a frequency cap cannot bid without a usable user id.
    """
    if not camp.active or camp.currency not in (req.cur or ("USD",)):
        return []
    t = camp.targeting
    if t.countries and req.country not in t.countries:
        return []
    if (camp.freq_per_hour or camp.freq_per_day) and (restriction(req.privacy) or not req.user_key):
        return []
    out = []
    for cr in camp.creatives:
        if not fits_imp(cr, imp) or matches(camp, cr, req):
            continue
        if deal_for(camp, imp, seat) is None and (t.deal_only or imp.private_auction):
            continue
        out.append(cr)
    return out


@dataclass(frozen=True, slots=True)
class Offered:
    """An auction the exchange offered the bidder: when, the parsed request, the price to beat, the hidden context."""

    when: float  # unix seconds (simulated)
    req: BidRequest
    market_cpm: float
    ctx: Any


@dataclass(frozen=True, slots=True)
class Opportunity:
    """One auction a campaign could have bought: at its market price, with its best creative's true CTR."""

    when: float
    cost: int  # micros for the impression at the market price
    ctr: float


def opportunities(camp: Campaign, offered: Iterable[Offered], true_ctr: Callable[[str, Any], float]) -> list[Opportunity]:
    """The offered auctions `camp` could have won, each with its best eligible creative's true CTR."""
    out = []
    for a in offered:
        if not camp.in_flight(dt.datetime.fromtimestamp(a.when, dt.UTC)):
            continue
        creatives = [cr for imp in a.req.imps for cr in eligible_creatives(camp, a.req, imp)]
        if creatives:
            out.append(Opportunity(a.when, cost_micros(a.market_cpm), max(true_ctr(cr.id, a.ctx) for cr in creatives)))
    return out


@dataclass(frozen=True, slots=True)
class Optimum:
    expected_clicks: float
    spend: int  # micros
    impressions: float  # the last one may be bought in part


def hindsight_optimum(opps: Sequence[Opportunity], budget: int) -> Optimum:
    """Most expected clicks `budget` micros could buy knowing every price and CTR: best CTR per micro first."""
    order = sorted(opps, key=lambda o: o.ctr / o.cost if o.cost else math.inf, reverse=True)
    left, clicks, n = budget, 0.0, 0.0
    for o in order:
        if o.cost <= left:
            left -= o.cost
            clicks += o.ctr
            n += 1
        else:
            if left > 0:
                clicks += o.ctr * left / o.cost
                n += left / o.cost
                left = 0
            break
    return Optimum(clicks, budget - left, n)


def regret(ours: float, optimum: float) -> float:
    """1 - ours / optimum: 0 when we matched the optimum (or nothing could be bought), 1 when we got nothing."""
    return 1.0 - ours / optimum if optimum > 0 else 0.0
