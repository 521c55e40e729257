"""Pacing: spend each daily budget along a plan, by pricing budget with a multiplier lambda.

Bids are value / (1 + lambda) (see `bidder.pricing`).  lambda is the dual price
of the budget constraint: 0 when the budget does not bind, larger when it does.
`PacingController` finds it online, as in adaptive pacing (Balseiro & Gur,
2019): every control step it compares what was spent with what the plan asked
for and takes a projected gradient step on the multiplier.

Choices, and why:

- The step works on u = log(1 + lambda).  Spend responds to the bid roughly as
  a power of it, so equal relative errors deserve equal relative corrections,
  whatever the campaign's scale.
- The step's target is the *remaining* budget spread over the remaining plan,
  not the original plan.  A controller that lagged catches up gradually
  instead of chasing the old curve, and a budget changed mid-day simply
  changes what remains.
- The error is divided by the daily budget, not by the step's target, so the
  gain is per day and the same whatever the step length; a step with a lucky
  expensive win moves lambda by cost / budget * gain, not by a huge ratio.
- A proportional term on the cumulative deviation from plan damps drift
  (PI on spend); the integral is clamped to [0, log(1 + lam_max)] (anti-windup).

Pure objects, no I/O; the streams side calls `update` with ledger totals.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from models.conversion import DEFAULT_CVR

HOURS = 24
MAX_LAMBDA = 100.0  # the highest price of budget: bids at 1% of value


@dataclass(slots=True)
class PacingState:
    """What a bidder needs to know about one campaign's pacing, published by the streams side."""

    campaign: str
    day: str
    lam: float = 0.0
    spent_today: int = 0  # micros
    budget_today: int = 0  # micros
    exhausted: bool = False
    impressions_today: int = 0
    clicks_today: int = 0
    value_today: int = 0  # micros
    cvr: float = 0.0  # P(conversion | click) for CPA campaigns (models.conversion), published with the pacing
    # share of the day's budget the plan the pacer follows calls for by this step (traffic-shaped, from the
    # worker's forecast), so the bidders' plan gauge shows that plan; None: not published (the flat plan is shown)
    plan_share: float | None = None
    published_ms: int = 0  # the worker's wall clock when it published this state (0: not known, e.g. in-process)


def day_fraction(timezone: str, now: float) -> tuple[str, float, int]:
    """(local day, share of it elapsed, local hour) at `now` in `timezone`.

    The share is of the day's real length, midnight to midnight: on the day clocks go back (25 hours) or forward
    (23), a wall-clock share would run backwards for an hour or jump, and the pacer would read the plan wrong.
    """
    tz = ZoneInfo(timezone)
    local = dt.datetime.fromtimestamp(now, tz)
    day = local.date()
    start = dt.datetime.combine(day, dt.time(), tz).timestamp()
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz).timestamp()
    return day.isoformat(), min(max((now - start) / (end - start), 0.0), 1.0), local.hour


def conversion_rate(state: PacingState | None) -> float:
    """The P(conversion | click) to price a CPA campaign with: the published one, else the prior."""
    if state is None or not 0.0 < state.cvr <= 1.0:  # none published yet (or NaN): the prior
        return DEFAULT_CVR
    return state.cvr


class SpendPlan:
    """Target cumulative fraction of the daily budget spent by each local time of day.

    Spend is planned in proportion to expected traffic: 24 hourly weights
    (uniform by default), zero outside the campaign's dayparting hours, linear
    within an hour.  Buying evenly over the *opportunities* rather than over
    the clock is what keeps the marginal price of the budget flat all day.
    """

    __slots__ = ("hours", "weights", "_cum")

    def __init__(self, hours: frozenset[int] | set[int] | Sequence[int] = frozenset(),
                 weights: Sequence[float] | None = None) -> None:
        if weights is not None and (len(weights) != HOURS or any(w < 0 or w != w for w in weights)):
            raise ValueError("an hourly forecast needs 24 non-negative weights")
        self.hours = frozenset(hours)
        allowed = [not self.hours or h in self.hours for h in range(HOURS)]
        w = [float(weights[h]) if weights is not None else 1.0 for h in range(HOURS)]
        w = [x if ok else 0.0 for x, ok in zip(w, allowed, strict=True)]
        if sum(w) <= 0:  # a forecast of no traffic in every allowed hour: fall back to uniform over them
            w = [1.0 if ok else 0.0 for ok in allowed]
        total = sum(w)
        self.weights = tuple(x / total for x in w)
        cum = [0.0]
        for x in self.weights:
            cum.append(min(cum[-1] + x, 1.0))  # float sums may overshoot 1 by an ulp
        cum[-1] = 1.0
        self._cum = tuple(cum)

    def target(self, fraction_of_day: float) -> float:
        """Fraction of the daily budget the plan has spent by this point of the local day (0..1)."""
        if fraction_of_day <= 0.0:
            return 0.0
        if fraction_of_day >= 1.0:
            return 1.0
        x = fraction_of_day * HOURS
        h = int(x)
        return min(self._cum[h] + self.weights[h] * (x - h), 1.0)


class PacingController:
    """One campaign's multiplier lambda, updated from spend against plan every control step.

    gain: how far u = log(1 + lambda) moves per unit of spend error, measured in
        daily budgets: spending 1% of the budget more than the step's target
        raises u by 0.01 * gain.  With the default 10 the loop settles within
        about a fifth of the day from lambda = 0 (sooner from yesterday's, see
        `next_day`), and a single win moves lambda very little.
    kp: proportional term on the cumulative gap to plan (in budget fractions).
    tail: with tail < 1, the gap is divided by the share of the plan left (at least `tail`): the pace must change
        by gap / plan left to close it by the end of the day, so the same gap weighs more as the day runs out
        (1, the default, leaves the term as it is).
    max_step: bound on one step's change of u, against bursts of late billing.
    """

    def __init__(self, day: str = "", plan: SpendPlan | None = None, campaign: str = "", lam: float = 0.0,
                 gain: float = 10.0, kp: float = 1.0, lam_max: float = MAX_LAMBDA, max_step: float = 0.5,
                 tail: float = 1.0) -> None:
        if gain < 0 or kp < 0 or lam_max <= 0 or max_step <= 0 or not 0 < tail <= 1:
            raise ValueError("gain and kp must be >= 0, lam_max and max_step > 0, tail in (0, 1]")
        self.tail = tail
        self.day, self.campaign = day, campaign
        self.plan = plan or SpendPlan()
        self.gain, self.kp, self.max_step = gain, kp, max_step
        self.u_max = math.log1p(lam_max)
        self.u_int = min(max(math.log1p(max(lam, 0.0)), 0.0), self.u_max)
        self.u = self.u_int
        self._last: tuple[float, int] | None = None  # (plan fraction, spent) at the previous step
        self._u_sum = self._u_weight = 0.0  # u over the day, weighted by plan progress (for next_day)

    @property
    def lam(self) -> float:
        return math.expm1(self.u)

    def next_day(self, day: str, plan: SpendPlan | None = None) -> PacingController:
        """A controller for a new day that starts from today's multiplier: yesterday's price of budget.

        That is the day's average of u over the plan (each step weighted by the share of the plan it covered), not
        its last value: the end of a day, when a shortfall is bought back or a budget is spent out, is no guide to
        the start of the next.  `plan` replaces today's plan (a fresher traffic forecast); by default it is kept.
        """
        u0 = self._u_sum / self._u_weight if self._u_weight > 0 else self.u_int
        return PacingController(day, plan or self.plan, self.campaign, math.expm1(u0), self.gain, self.kp,
                                math.expm1(self.u_max), self.max_step, self.tail)

    def update(self, fraction_of_day: float, spent: int, budget: int) -> PacingState:
        """One control step: spend so far today (micros) against the plan at this time; returns the new state."""
        p = self.plan.target(fraction_of_day)
        exhausted = budget <= 0 or spent >= budget
        p_step = p - self._last[0] if self._last is not None else 0.0
        if self._last is not None and budget > 0:
            p_prev, spent_prev = self._last
            self._step(p - p_prev, 1.0 - p_prev, spent - spent_prev, budget - spent_prev, budget)
        self._last = (p, spent)
        if budget > 0:
            ahead = spent / budget - p
            self.u = min(max(self.u_int + self.kp * ahead / max(1.0 - p, self.tail), 0.0), self.u_max)
        if exhausted:
            self.u = self.u_max
        elif p_step > 0.0:
            self._u_sum += self.u * p_step
            self._u_weight += p_step
        return PacingState(self.campaign, self.day, self.lam, spent, budget, exhausted)

    def _step(self, dp: float, plan_left: float, spent_step: int, budget_left: int, budget: int) -> None:
        """Projected gradient step on the integral part; no step when the plan did not move (dayparting)."""
        if dp <= 0.0 or plan_left <= 0.0:
            return
        target = max(budget_left, 0) * min(dp / plan_left, 1.0)
        du = self.gain * (spent_step - target) / budget
        du = min(max(du, -self.max_step), self.max_step)
        self.u_int = min(max(self.u_int + du, 0.0), self.u_max)
