"""Budget leases: how many bidders share one daily budget without talking on every bid.

The streams side owns the budget and hands each bidder slices of it
(`LeaseGranter`); a bidder bids only while its slice covers the price of the
bid plus every bid still in flight (`BudgetLease`).  Billing flows back through
the ledger, and the granter tops the bidder up.  A bidder that loses contact
with the streams side stops by itself when its lease is spent, so a partition
costs at most one slice, never the whole budget.

All amounts are integer micros of the campaign currency, per impression
(a CPM bid of P micros reserves P // 1000).  Pure objects, no I/O.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass


class BudgetLease:
    """One bidder's allowance for one campaign today.

    granted_micros: cumulative allowance granted so far today (only grows).
    spent_micros: costs settled by billing notices.
    reserved_micros: prices of bids sent and not yet settled, released or expired.
    A bid is allowed only if its price fits in granted - spent - reserved, and
    the price paid is never above the bid, so spend stays within the grant as
    long as each bid's reservation is held until its bill arrives.
    """

    __slots__ = ("day", "granted_micros", "spent_micros", "reserved_micros", "_held", "_expiry", "closed")

    def __init__(self, day: str = "", granted_micros: int = 0) -> None:
        self.day = day
        self.granted_micros = granted_micros
        self.spent_micros = 0
        self.reserved_micros = 0
        self._held: dict[str, int] = {}
        self._expiry: list[tuple[float, str]] = []
        self.closed = False  # its day is over: no more bids on it (`close`)

    @property
    def remaining_micros(self) -> int:
        return self.granted_micros - self.spent_micros - self.reserved_micros

    def grant_total(self, granted_micros: int) -> None:
        """Raise the cumulative allowance; a repeated or out-of-order (smaller) grant changes nothing.

        Grants are taken only for the campaign's current day, so a lease closed when its day seemed over is
        open again (the campaign's time zone moved back across midnight: its day is this lease's day again)."""
        self.granted_micros = max(self.granted_micros, granted_micros)
        self.closed = False

    def can_bid(self, price_micros: int) -> bool:
        """True when one more bid at this per-impression price fits in the lease."""
        return 0 <= price_micros <= self.remaining_micros and not self.closed

    def close(self) -> None:
        """The campaign's day is over: bids sent now would be billed on the next day, whose granter has not given
        this bidder anything yet, so none is sent on this lease.  Its reservations stay held for the next day's."""
        self.closed = True

    def take_over(self, previous: BudgetLease) -> None:
        """Hold the bids still in flight on the previous day's lease: they are billed on this day (a bill is dated
        when it arrives), so they must count against this day's allowance like the bids sent on it."""
        for bid_id, price in previous._held.items():
            if bid_id not in self._held:
                self._held[bid_id] = price
                self.reserved_micros += price
        self._expiry.extend(previous._expiry)
        heapq.heapify(self._expiry)

    def reserve(self, bid_id: str, price_micros: int, expires: float = math.inf) -> None:
        """Hold a sent bid's price until its outcome is known, or until `expires` (unix seconds) passes."""
        if bid_id in self._held:
            self.release(bid_id)
        self._held[bid_id] = price_micros
        self.reserved_micros += price_micros
        if expires != math.inf:
            heapq.heappush(self._expiry, (expires, bid_id))
            if len(self._expiry) > 2 * len(self._held) + 1024:  # billed and lost bids leave their entries behind
                self._expiry = [e for e in self._expiry if e[1] in self._held]
                heapq.heapify(self._expiry)

    def settle(self, bid_id: str, cost_micros: int) -> bool:
        """Billing: the cost counts as spent; the reservation is freed.  False if none was held (late or unknown bid)."""
        held = self.release(bid_id)
        self.spent_micros += cost_micros
        return held

    def release(self, bid_id: str) -> bool:
        """Loss (or win without billing): free the reservation.  False if it was not held."""
        price = self._held.pop(bid_id, None)
        if price is None:
            return False
        self.reserved_micros -= price
        return True

    def expire(self, now: float) -> int:
        """Free reservations whose notice never came by their expiry; returns how many."""
        n = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, bid_id = heapq.heappop(self._expiry)
            n += self.release(bid_id)
        return n


@dataclass(slots=True)
class _Account:
    granted: int = 0
    billed: int = 0
    held: int = 0  # the bidder's reservations (bids in flight) as it last reported them
    live: bool = True
    carried: bool = False  # known only from the day before: the bidder has not reported on this day yet

    @property
    def outstanding(self) -> int:
        """What the bidder may still be charged: its unspent grant, or its bids in flight when they are more
        (bids of the day before, billed on this one, or in-flight bids left after a bill whose reservation was gone)."""
        return max(self.granted - self.billed, self.held, 0)


LEDGER = "~ledger"  # the pseudo-account of spend no bidder has reported (bidder ids never start with "~")


class LeaseGranter:
    """Streams side, one campaign-day: grants slices of the remaining daily budget to bidders.

    A bidder's unspent grant (granted - billed) is topped up to one slice,
    slice = max(min_slice, remaining * frac) with remaining = budget - billed,
    and only from the pool budget - billed - (unspent grants of live bidders):
    the total committed never exceeds the daily budget minus billed spend.
    Billing delays are harmless: unbilled wins stay inside the bidder's unspent
    grant until billed.  Slices shrink as the day's budget runs out, so the last
    bidders share the tail finely.

    A bid is billed on the day its bill comes, so the bids a bidder still has in
    flight at the campaign's midnight are charged to the new day (its new lease
    holds them: `BudgetLease.take_over`).  The new day's granter counts them before
    it grants anything: each bidder's unspent grant of the day before (`carry`)
    until the bidder reports its reservations (`adopt`), and from then on the
    larger of its unspent grant and its reservations.

    Overspend bound.  With S the day's true spend (including charges that never
    reach the ledger), every bidder checking `can_bid` before each `reserve`:

        S - budget <= R + L + C

    R: unspent grants taken back by `reclaim` from bidders that in fact kept
       bidding (each at most one slice: a partitioned bidder spends at most its
       lease); L: costs of in-flight bids whose reservation was gone before
       their bill settled (expired, or the notice was late or lost), and of bids
       in flight at midnight billed before their bidder's new lease took them
       over (until the ledger counts them) or that the new day's granter never
       learnt of (its worker restarted at midnight); C: unspent grants beyond a
       budget lowered mid-day.  So in the usual case the
       overspend is below one lease slice plus the bids in flight.  A bidder
       that prices several impressions of one response against a single
       `can_bid` check may exceed its lease by those extra prices: at most the
       max price of one impression per extra impression, per bidder.
    """

    def __init__(self, budget: int, min_slice: int, frac: float = 0.1) -> None:
        if budget < 0 or min_slice <= 0 or not 0 < frac <= 1:
            raise ValueError("budget must be >= 0, min_slice > 0 and 0 < frac <= 1")
        self.budget, self.min_slice, self.frac = budget, min_slice, frac
        self._accounts: dict[str, _Account] = {}

    @property
    def billed(self) -> int:
        return sum(a.billed for a in self._accounts.values())

    @property
    def committed(self) -> int:
        """Billed spend plus what live bidders may still be charged (`_Account.outstanding`): what the budget is
        answering for."""
        return sum(a.billed + (a.outstanding if a.live else 0) for a in self._accounts.values())

    def granted(self, bidder: str) -> int:
        acct = self._accounts.get(bidder)
        return acct.granted if acct else 0

    def set_budget(self, budget: int) -> None:
        """A mid-day budget change: later grants follow it; grants already out stay spendable."""
        self.budget = max(budget, 0)

    def bill(self, bidder: str, cost_micros: int) -> None:
        """A billed impression attributed to `bidder` (from the ledger)."""
        self._accounts.setdefault(bidder, _Account()).billed += cost_micros

    def slice_size(self) -> int:
        remaining = self.budget - self.billed
        return max(self.min_slice, int(remaining * self.frac)) if remaining > 0 else 0

    def request(self, bidder: str) -> int:
        """Top the bidder's unspent grant up to one slice if the pool allows; returns its cumulative grant."""
        acct = self._accounts.setdefault(bidder, _Account())
        acct.live = True
        pool = self.budget - self.committed
        want = min(self.slice_size(), acct.outstanding + max(pool, 0))
        acct.granted = max(acct.granted, acct.billed + want)
        return acct.granted

    def reclaim(self, bidder: str) -> int:
        """The bidder is presumed gone: its unspent grant returns to the pool; returns how much.

        If it is in fact alive it can still spend that much (its lease), which is
        the R term of the overspend bound; a later `request` revives it.
        """
        acct = self._accounts.get(bidder)
        if acct is None or not acct.live:
            return 0
        acct.live = False
        return acct.outstanding

    def adopt(self, bidder: str, granted: int, spent: int, reserved: int = 0) -> None:
        """A bidder's own account of its grant and settled spend (after a restart of the streams side, or a
        rebalance): never lowers what is known already.  `reserved`: its bids in flight as it reports them, in
        place of what was held for it before (an earlier report, or the day before's unspent grant: `carry`)."""
        acct = self._accounts.setdefault(bidder, _Account())
        acct.granted = max(acct.granted, granted)
        acct.billed = max(acct.billed, spent)
        acct.held = max(reserved, 0)
        acct.carried = False

    def carry(self, previous: LeaseGranter) -> None:
        """Start the day after `previous`'s: every bidder that reported there may have bids in flight, billed on
        this day, up to its unspent grant there; that much is held for it until it reports its own reservations."""
        for bidder, acct in previous._accounts.items():
            if acct.live and not acct.carried and bidder != LEDGER and acct.outstanding > 0:
                self._accounts[bidder] = _Account(held=acct.outstanding, carried=True)

    def forget_carried(self) -> None:
        """The bids in flight at midnight can no longer be billed (their notices have expired): a bidder that has
        not reported since (it died) is owed nothing more."""
        for bidder in [b for b, a in self._accounts.items() if a.carried]:
            del self._accounts[bidder]

    def ledger_spend(self, spend: int) -> None:
        """The ledger's exact spend for the day: what the bidders' reports do not explain is booked to `LEDGER`."""
        reported = sum(a.billed for b, a in self._accounts.items() if b != LEDGER)
        acct = self._accounts.setdefault(LEDGER, _Account(live=False))
        acct.billed = max(spend - reported, 0)
