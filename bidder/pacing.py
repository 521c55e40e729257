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
- That deviation is measured from where the controller started (a campaign
  created or resumed mid-day, a restarted worker) or the budget last changed,
  against the budget then left spread over the plan then left.  Measured from
  midnight, a campaign starting at 15:00 would read as hours behind a plan it
  never followed and bid full value until it had caught up.

Pure objects, no I/O; the streams side calls `update` with ledger totals.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from models.conversion import DEFAULT_CVR

HOURS = 24
MAX_LAMBDA = 100.0  # the highest price of budget: bids at 1% of value


def read_lambda(lam: object) -> float | None:
    """A published multiplier as a reader takes it, or None if it is not one (NaN, negative, too big, not a number).

    A value a few ulps above MAX_LAMBDA is MAX_LAMBDA: older workers published expm1(log1p(100)) at the clamp.
    """
    if type(lam) is not int and type(lam) is not float:
        return None
    if 0.0 <= lam <= MAX_LAMBDA:  # NaN fails both comparisons
        return float(lam)
    return MAX_LAMBDA if MAX_LAMBDA < lam <= MAX_LAMBDA * (1 + 1e-12) else None


@dataclass(slots=True)
class PacingState:
    """What a bidder needs to know about one campaign's pacing, published by the streams side."""

    campaign: str
    day: str
    lam: float = 0.0
    spent_today: int = 0  # micros
    budget_today: int | None = None  # micros; 0 once a lifetime budget is spent, None where not published
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
    """The P(conversion | click) to price a CPA campaign with: the published one, else the prior.

    A rate above 1 (more conversions than clicks) is priced at 1: falling back to the prior there would cut the
    price twentyfold as the rate crossed 1.
    """
    if state is None or not state.cvr > 0.0:  # none published yet (or NaN): the prior
        return DEFAULT_CVR
    return min(state.cvr, 1.0)


@dataclass(frozen=True, slots=True)
class DayClock:
    """The local wall-clock hour shown through each stretch of one local day, in shares of its real length.

    Plans are keyed on wall-clock hours (dayparting and the forecast are), while the controller measures the day in
    real time (`day_fraction`).  On the day clocks change, an hour is skipped or shown twice: reading the real share
    x 24 as the hour would put the plan an hour off, so the plan walks the hours the day really shows.
    """

    pieces: tuple[tuple[float, int], ...]  # (share of the day where a stretch starts, its wall hour); ends at the next


REGULAR_DAY = DayClock(tuple((h / HOURS, h) for h in range(HOURS)))


@functools.lru_cache(maxsize=4096)
def day_clock(timezone: str, day: str) -> DayClock:
    """The wall-clock hours of `day` (ISO date) in `timezone`, midnight to midnight as `day_fraction` counts it."""
    tz = ZoneInfo(timezone)
    date = dt.date.fromisoformat(day)
    start = int(dt.datetime.combine(date, dt.time(), tz).timestamp())
    end = int(dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tz).timestamp())
    if end - start == HOURS * 3600 and _offset(tz, start) == _offset(tz, end - 1):
        return REGULAR_DAY
    pieces, t = [], start
    while t < end:
        local = dt.datetime.fromtimestamp(t, tz)
        hour_end = min(t + 3600 - local.minute * 60 - local.second, end)
        pieces.append(((t - start) / (end - start), local.hour))
        t = _first_change(tz, t, hour_end)
    return DayClock(tuple(pieces))


def _offset(tz: ZoneInfo, t: int) -> dt.timedelta | None:
    return dt.datetime.fromtimestamp(t, tz).utcoffset()


def _first_change(tz: ZoneInfo, t: int, limit: int) -> int:
    """The first second in (t, limit] with another UTC offset than `t` (`limit` when none): where the clock jumps."""
    before = _offset(tz, t)
    if _offset(tz, limit - 1) == before:
        return limit
    lo, hi = t, limit - 1  # offset(lo) == before != offset(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _offset(tz, mid) == before else (lo, mid)
    return hi


class SpendPlan:
    """Target cumulative fraction of the daily budget spent by each point of the local day.

    Spend is planned in proportion to expected traffic: 24 weights per wall-clock
    hour (uniform by default), zero outside the campaign's dayparting hours, linear
    within an hour.  Buying evenly over the *opportunities* rather than over
    the clock is what keeps the marginal price of the budget flat all day.
    `clock` (`day_clock`) lays the hours on the real day: on a day of 23 or 25
    hours an hour is left out or planned twice, and the whole budget is still due
    by midnight.
    """

    __slots__ = ("hours", "weights", "clock", "_starts", "_ends", "_share", "_cum")

    def __init__(self, hours: frozenset[int] | set[int] | Sequence[int] = frozenset(),
                 weights: Sequence[float] | None = None, clock: DayClock = REGULAR_DAY) -> None:
        if weights is not None and (len(weights) != HOURS or any(w < 0 or w != w for w in weights)):
            raise ValueError("an hourly forecast needs 24 non-negative weights")
        self.hours = frozenset(hours)
        allowed = [not self.hours or h in self.hours for h in range(HOURS)]
        w = [float(weights[h]) if weights is not None else 1.0 for h in range(HOURS)]
        w = [x if ok else 0.0 for x, ok in zip(w, allowed, strict=True)]
        if sum(w) <= 0:  # a forecast of no traffic in every allowed hour: fall back to uniform over them
            w = [1.0 if ok else 0.0 for ok in allowed]
        total = sum(w)
        self.weights = tuple(x / total for x in w)  # per wall-clock hour
        self.clock = clock
        self._starts = tuple(start for start, _ in clock.pieces)
        self._ends = (*self._starts[1:], 1.0)
        mass = [self.weights[h] * (e - s) * HOURS for (s, h), e in zip(clock.pieces, self._ends, strict=True)]
        day_total = sum(mass)  # 0 only when no allowed hour occurs on this day (one skipped by the clock change)
        self._share = tuple(m / day_total if day_total > 0 else 0.0 for m in mass)
        cum = [0.0]
        for x in self._share:
            cum.append(min(cum[-1] + x, 1.0))  # float sums may overshoot 1 by an ulp
        self._cum = tuple(cum)

    def target(self, fraction_of_day: float) -> float:
        """Fraction of the daily budget the plan has spent by this share of the local day's real length (0..1)."""
        if fraction_of_day <= 0.0:
            return 0.0
        if fraction_of_day >= 1.0:
            return 1.0
        i = bisect.bisect_right(self._starts, fraction_of_day) - 1
        start, end = self._starts[i], self._ends[i]
        return min(self._cum[i] + self._share[i] * (fraction_of_day - start) / (end - start), 1.0)


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
        self.lam_max = lam_max
        self.u_max = math.log1p(lam_max)
        self.u_int = min(max(math.log1p(max(lam, 0.0)), 0.0), self.u_max)
        self.u = self.u_int
        self._last: tuple[float, int] | None = None  # (plan fraction, spent) at the previous step
        self._base: tuple[float, float] | None = None  # (plan fraction, share of budget spent) the plan restarts at
        self._budget: int | None = None  # the budget of the previous step
        self._u_sum = self._u_weight = 0.0  # u over the day, weighted by plan progress (for next_day)

    @property
    def lam(self) -> float:
        """exp(u) - 1, and exactly lam_max at the clamp: expm1(log1p(100)) is 100.00000000000003, which every
        reader would refuse as beyond MAX_LAMBDA, so no bidder would hear of a spent budget."""
        return self.lam_max if self.u >= self.u_max else min(math.expm1(self.u), self.lam_max)

    def next_day(self, day: str, plan: SpendPlan | None = None) -> PacingController:
        """A controller for a new day that starts from today's multiplier: yesterday's price of budget.

        That is the day's average of u over the plan (each step weighted by the share of the plan it covered), not
        its last value: the end of a day, when a shortfall is bought back or a budget is spent out, is no guide to
        the start of the next.  `plan` replaces today's plan (a fresher traffic forecast); by default it is kept.
        """
        u0 = self._u_sum / self._u_weight if self._u_weight > 0 else self.u_int
        return PacingController(day, plan or self.plan, self.campaign, math.expm1(u0), self.gain, self.kp,
                                self.lam_max, self.max_step, self.tail)

    def replan(self, plan: SpendPlan) -> None:
        """Follow `plan` from here on: the campaign's dayparting or time zone changed mid-day.

        Like a budget change, the budget left is paced over what the new plan has left: measured against the new
        plan from midnight, hours it newly allows that are gone would read as a gap to rush, and a step from the old
        plan's share to the new one's as spend to correct.
        """
        self.plan = plan
        self._last = self._base = None

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
            if self._base is None or budget != self._budget:
                self._rebase(p, spent, budget)
            due = self.due(p)
            ahead = spent / budget - due
            self.u = min(max(self.u_int + self.kp * ahead / max(1.0 - due, self.tail), 0.0), self.u_max)
        self._budget = budget
        if exhausted:
            self.u = self.u_max
        elif p_step > 0.0:
            self._u_sum += self.u * p_step
            self._u_weight += p_step
        return PacingState(self.campaign, self.day, self.lam, spent, budget, exhausted)

    def hold(self, spent: int, budget: int) -> PacingState:
        """The state of a campaign that may not bid now (paused, outside its flight), without a control step.

        Its spend says nothing about the price of budget, so lambda keeps its last value, and the next `update`
        starts over from that point: the budget left is then paced over the plan left, not chased to the old curve.
        """
        self._last = self._base = None
        exhausted = budget <= 0 or spent >= budget
        if exhausted:
            self.u = self.u_max
        return PacingState(self.campaign, self.day, self.lam, spent, budget, exhausted)

    def due(self, plan: float) -> float:
        """Share of the budget due when the day's plan is at `plan`: since the controller started or the budget
        last changed, the budget then left spread over the plan then left."""
        if self._base is None:
            return plan
        p0, f0 = self._base
        if p0 >= 1.0:
            return f0
        return f0 + (1.0 - f0) * max(plan - p0, 0.0) / (1.0 - p0)

    def _rebase(self, plan: float, spent: int, budget: int) -> None:
        """Start the plan over here: a controller that starts mid-day, or sees its budget change, has no gap to
        close from what was planned before (the proportional term would otherwise rush to the old curve)."""
        self._base = (plan, min(spent / budget, 1.0))

    def _step(self, dp: float, plan_left: float, spent_step: int, budget_left: int, budget: int) -> None:
        """Projected gradient step on the integral part; no step when the plan did not move (dayparting)."""
        if dp <= 0.0 or plan_left <= 0.0:
            return
        target = max(budget_left, 0) * min(dp / plan_left, 1.0)
        du = self.gain * (spent_step - target) / budget
        du = min(max(du, -self.max_step), self.max_step)
        self.u_int = min(max(self.u_int + du, 0.0), self.u_max)
