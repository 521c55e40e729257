"""Traffic forecast: how many bid opportunities each hour of the day brings, learned from the traffic itself.

A budget spent in proportion to the opportunities (not to the clock) keeps the
price of the budget flat through the day: the pacer does not overpay at night
to keep up with a uniform plan, nor hold back in the evening peak when the
users are there.  The forecast counts requests per UTC hour, folds each
finished day into an exponentially weighted average (yesterday counts most,
older days fade), and turns it into the 24 hourly weights of a campaign's
`SpendPlan` in the campaign's local time.

Pure object, no I/O.  The streams side feeds it from the bid log: every bid
event carries its bidder's running count of requests received, so the requests
between two events of a bidder are known without a message per request, and
the count is of the traffic, not of our bids (which pacing itself shapes).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from bidder.pacing import HOURS, SpendPlan, day_clock

DAY_S = 86400
# A day whose traffic the forecast began to see later than this after its midnight was not seen whole: a worker
# started at 15:00 has seen none of the morning, and that day as history would plan almost nothing before 15:00.
WHOLE_DAY_SLACK_S = 3600


class TrafficForecast:
    """Requests per UTC hour of day, averaged over the finished days with weight `decay` on the older ones.

    decay: how much of the past a new finished day keeps (0.5: yesterday weighs as much as all days before).
    min_share: a floor under every hour's weight, as a fraction of the mean hour, so a quiet hour in the
        history never gets a plan of zero (a campaign that could not spend then would fall behind for good).
    """

    def __init__(self, decay: float = 0.5, min_share: float = 0.05) -> None:
        if not 0.0 <= decay < 1.0 or not 0.0 <= min_share < 1.0:
            raise ValueError("decay and min_share must be in [0, 1)")
        self.decay, self.min_share = decay, min_share
        self.day: int | None = None  # UTC day number of `today`
        self.today = [0.0] * HOURS
        self.history: list[float] | None = None
        self.days = 0  # finished days folded into the history
        self._counters: dict[str, tuple[float, int]] = {}  # source -> (time, running count) at its last report
        self.since: float | None = None  # when the running counts began to be seen: nothing before it is known

    def observe(self, ts: float, count: float = 1.0) -> None:
        """Count `count` requests at unix time `ts`; a request of a new day closes the previous one."""
        day, second = divmod(int(ts), DAY_S)
        self.roll(ts)
        if day == self.day:  # not a straggler from a day already folded into the history
            self.today[second // 3600] += count

    def observe_counter(self, source: str, ts: float, counter: int) -> None:
        """A running request count `counter` reported by `source` at `ts`: the requests since its previous report
        are spread evenly over the time between the two.  A source's count only grows (a restarted bidder is a new
        source), so a report at or below the last one is a replay or arrived out of order, and counts nothing."""
        last = self._counters.get(source)
        if last is not None and (counter <= last[1] or ts < last[0]):
            return
        if self.since is None:
            self.since = ts
        self._counters[source] = (ts, counter)
        if last is None:
            return  # the first report of a source: nothing known to be before it
        t0, c0 = last
        delta = counter - c0
        if ts - t0 <= 0:
            self.observe(ts, delta)
            return
        rate, t = delta / (ts - t0), t0
        while t < ts:  # one observation per hour touched
            end = min((int(t) // 3600 + 1) * 3600, ts)
            self.observe(t, rate * (end - t))
            t = end

    def roll(self, ts: float) -> None:
        """Event time reached `ts`: a finished day goes into the history."""
        day = int(ts) // DAY_S
        if self.day is None:
            self.day = day
        elif day > self.day:
            self._close_day(day)

    def _close_day(self, day: int) -> None:
        """Fold the day just finished into the history, also when days without any request follow it: those are
        a gap in what was seen (a worker down, a bid log not read), not a day of no traffic, so they fold nothing."""
        if self._whole():
            self.history = self._folded(self.today)
            self.days += 1
        self.day, self.today = day, [0.0] * HOURS

    def _folded(self, finished: list[float]) -> list[float]:
        if self.history is None:
            return list(finished)
        return [self.decay * h + (1.0 - self.decay) * f for h, f in zip(self.history, finished, strict=True)]

    def ready(self, now: float | None = None) -> bool:
        """True once at least one whole day has been seen (by `now`, wall time, if given)."""
        return self._history(now) is not None

    def _history(self, now: float | None) -> list[float] | None:
        """The history, with the current day folded in when `now` (wall time) is past it: at midnight the day just
        ended counts before any request of the new day has come to close it.  Event time alone moves the days."""
        if now is not None and self.day is not None and int(now) // DAY_S > self.day and self._whole():
            return self._folded(self.today)
        return self.history

    def _whole(self) -> bool:
        """Whether `today` holds a day's traffic: some was seen, and from the day's start (a worker started or
        restarted mid-day saw only its rest, which as a day's shape would put the unseen hours at the floor)."""
        day = self.day
        return (day is not None and sum(self.today) > 0
                and (self.since is None or self.since < day * DAY_S + WHOLE_DAY_SLACK_S))

    def utc_weights(self, now: float | None = None) -> list[float] | None:
        """Expected share of a day's requests in each UTC hour (sums to 1), or None before the first whole day."""
        history = self._history(now)
        if history is None:
            return None
        total = sum(history)
        floor = self.min_share * total / HOURS
        w = [max(h, floor) for h in history]
        s = sum(w)
        return [x / s for x in w]

    def local_weights(self, timezone: str, day: str, now: float | None = None) -> list[float] | None:
        """The hourly weights for local wall-clock hours 0..23 of `day` (ISO date) in `timezone`.

        Each hour is shifted by the offset in force at its start: on the day clocks change, the hours before the
        change keep the old one.
        """
        utc = self.utc_weights(now)
        if utc is None:
            return None
        tz = ZoneInfo(timezone)
        date = dt.date.fromisoformat(day)
        return [_at(utc, h - _offset_hours(dt.datetime.combine(date, dt.time(h), tz))) for h in range(HOURS)]

    def plan(self, timezone: str, day: str, hours: frozenset[int] = frozenset(), now: float | None = None) -> SpendPlan:
        """The spend plan of a campaign for `day`: traffic-shaped when there is a forecast, uniform otherwise."""
        return SpendPlan(hours=hours, weights=self.local_weights(timezone, day, now), clock=day_clock(timezone, day))


def _offset_hours(local: dt.datetime) -> float:
    return (local.utcoffset() or dt.timedelta()).total_seconds() / 3600.0


def _at(weights: list[float], hour: float) -> float:
    """Weight of the hour starting at `hour` (UTC, may be fractional or out of 0..23): a half-hour zone mixes two."""
    h = hour % HOURS
    lo = int(h)
    frac = h - lo
    return (1.0 - frac) * weights[lo] + frac * weights[(lo + 1) % HOURS]
