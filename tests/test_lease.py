"""Budget leases: a bidder never bids past its grant; the granter never commits past the budget.

The property test plays many bidders against one granter with random billing
delays, lost notices, expiries, reclaims of live bidders, partitions and budget
changes, and checks the overspend bound stated in `LeaseGranter`'s docstring.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.lease import BudgetLease, LeaseGranter

# -- the bidder's lease ----------------------------------------------------------


def test_bids_only_within_the_grant_counting_in_flight_bids() -> None:
    lease = BudgetLease(granted_micros=1000)
    assert lease.can_bid(600)
    lease.reserve("a", 600)
    assert not lease.can_bid(401)
    assert lease.can_bid(400)
    lease.reserve("b", 400)
    assert lease.remaining_micros == 0
    assert not lease.can_bid(1)


def test_settle_charges_the_cost_and_frees_the_bid() -> None:
    lease = BudgetLease(granted_micros=1000)
    lease.reserve("a", 600)
    assert lease.settle("a", 250)  # second price: pays less than the bid
    assert (lease.spent_micros, lease.reserved_micros, lease.remaining_micros) == (250, 0, 750)
    assert not lease.settle("zzz", 100)  # a bill for a bid no longer held still counts
    assert lease.spent_micros == 350


def test_release_and_expiry_free_reservations_once() -> None:
    lease = BudgetLease(granted_micros=1000)
    lease.reserve("a", 300, expires=10.0)
    lease.reserve("b", 300, expires=20.0)
    lease.reserve("c", 300)
    assert lease.release("a")
    assert not lease.release("a")
    assert lease.expire(15.0) == 0  # "a" is gone already
    assert lease.expire(25.0) == 1  # "b"
    assert lease.reserved_micros == 300  # "c" never expires


def test_grants_are_cumulative_and_idempotent() -> None:
    lease = BudgetLease()
    lease.grant_total(500)
    lease.grant_total(300)  # a late, smaller grant message
    lease.grant_total(500)  # a repeated one
    assert lease.granted_micros == 500


def test_a_bidder_that_loses_contact_stops_when_its_lease_is_spent() -> None:
    lease = BudgetLease(granted_micros=1000)
    bids = 0
    for i in range(100):
        if lease.can_bid(90):
            lease.reserve(str(i), 90)
            lease.settle(str(i), 90)
            bids += 1
    assert bids == 11
    assert lease.spent_micros <= 1000


# -- the granter ------------------------------------------------------------------


def test_slices_follow_the_remaining_budget() -> None:
    g = LeaseGranter(budget=100_000, min_slice=1_000, frac=0.1)
    assert g.request("a") == 10_000
    assert g.request("b") == 10_000
    g.bill("a", 9_000)
    assert g.slice_size() == 9_100  # 10% of 91,000 left
    assert g.request("a") == 9_000 + 9_100
    g.bill("b", 85_000)  # a lot of billing (a leak): little remains
    assert g.slice_size() == 1_000  # min slice


def test_never_commits_more_than_budget_minus_billed() -> None:
    g = LeaseGranter(budget=10_000, min_slice=3_000, frac=0.5)
    grants = {b: g.request(b) for b in "abcde"}
    assert sum(grants.values()) == 10_000  # 5000 + 3000 + 2000 + 0 + 0
    assert grants["d"] == grants["e"] == 0
    g.bill("a", 5_000)
    assert g.request("d") == 0  # a's spend was already committed
    assert g.committed <= g.budget


def test_reclaim_returns_a_silent_bidders_grant_to_the_pool() -> None:
    g = LeaseGranter(budget=10_000, min_slice=5_000, frac=0.5)
    assert g.request("a") == 5_000
    assert g.request("b") == 5_000
    assert g.request("c") == 0
    assert g.reclaim("a") == 5_000
    assert g.request("c") == 5_000


def test_budget_cut_stops_new_grants() -> None:
    g = LeaseGranter(budget=10_000, min_slice=4_000, frac=0.5)
    g.request("a")
    g.set_budget(3_000)
    assert g.request("b") == 0


# -- the bound, property-based ---------------------------------------------------------


@dataclass
class Day:
    """One simulated campaign-day: true spend and the terms of the overspend bound."""

    spend: int = 0
    reclaimed: int = 0  # R
    leaked: int = 0  # L
    cut: int = 0  # C
    bills: list = field(default_factory=list)  # heap of (due step, seq, bidder, bid id, cost)


def play_day(seed: int, bidders: int, budget: int, min_slice: int, frac: float, steps: int, p_lost: float,
             p_reclaim: float, p_cut: float, ttl: int = 60, max_delay: int = 120) -> tuple[Day, LeaseGranter]:
    """Bills arrive 0..max_delay steps after the win; reservations expire ttl steps after the bid."""
    rng = random.Random(seed)
    g = LeaseGranter(budget, min_slice, frac)
    names = [f"b{i}" for i in range(bidders)]
    leases = {b: BudgetLease() for b in names}
    connected = dict.fromkeys(names, True)
    ledger_backlog: dict[str, list[int]] = {b: [] for b in names}  # billing a partitioned bidder could not send yet
    day, seq = Day(), 0
    for step in range(steps):
        b = rng.choice(names)
        r = rng.random()
        if r < 0.08:
            if connected[b]:
                leases[b].grant_total(g.request(b))
        elif r < 0.08 + p_reclaim:
            day.reclaimed += g.reclaim(b)  # presumed dead, but it keeps bidding
        elif r < 0.12 + p_reclaim:
            connected[b] = not connected[b]
            if connected[b]:
                for cost in ledger_backlog[b]:
                    g.bill(b, cost)
                ledger_backlog[b].clear()
        elif r < 0.12 + p_reclaim + p_cut:
            new = rng.randint(budget // 2, budget * 2)
            if new < g.budget:
                day.cut += max(g.committed - new, 0)
            g.set_budget(new)
        else:
            price = rng.randint(1, max(24 * budget // steps, 2))  # offered demand: about 2.5x the budget
            bid_id = f"{b}-{step}"
            if leases[b].can_bid(price):
                leases[b].reserve(bid_id, price, expires=step + ttl)
                if rng.random() < 0.5:  # won: charged at most the bid
                    cost = rng.randint(0, price)
                    day.spend += cost
                    if rng.random() < p_lost:
                        day.leaked += cost  # the exchange charged; the bill never reaches us
                    else:
                        seq += 1
                        heapq.heappush(day.bills, (step + rng.randint(0, max_delay), seq, b, bid_id, cost))
                elif rng.random() > p_lost:
                    leases[b].release(bid_id)  # loss notice (else the reservation waits for expiry)
        for lease in leases.values():
            lease.expire(step)
        while day.bills and day.bills[0][0] <= step:
            _, _, bb, bid_id, cost = heapq.heappop(day.bills)
            settle(day, g, leases[bb], bb, bid_id, cost, connected[bb], ledger_backlog)
    while day.bills:  # the day ends; late bills still arrive and count
        _, _, bb, bid_id, cost = heapq.heappop(day.bills)
        settle(day, g, leases[bb], bb, bid_id, cost, True, ledger_backlog)
    return day, g


def settle(day: Day, g: LeaseGranter, lease: BudgetLease, bidder: str, bid_id: str, cost: int, connected: bool,
           backlog: dict[str, list[int]]) -> None:
    if not lease.settle(bid_id, cost):
        day.leaked += cost  # its reservation was gone (expired) before the bill: in flight, unprotected
    if connected:
        g.bill(bidder, cost)
    else:
        backlog[bidder].append(cost)


scenario = {
    "seed": st.integers(0, 2**32), "bidders": st.integers(1, 8), "budget": st.integers(1_000, 2_000_000),
    "min_slice_share": st.floats(0.001, 0.2), "frac": st.floats(0.01, 1.0), "steps": st.integers(50, 1500),
    "ttl": st.integers(1, 200), "max_delay": st.integers(0, 150),
}


@settings(max_examples=150, deadline=None)
@given(**scenario, p_lost=st.sampled_from([0.0, 0.02, 0.2]), p_reclaim=st.sampled_from([0.0, 0.01, 0.05]),
       p_cut=st.sampled_from([0.0, 0.01]))
def test_daily_spend_never_exceeds_budget_plus_the_bound(seed: int, bidders: int, budget: int, min_slice_share: float,
                                                         frac: float, steps: int, ttl: int, max_delay: int, p_lost: float,
                                                         p_reclaim: float, p_cut: float) -> None:
    min_slice = max(int(budget * min_slice_share), 10)
    day, g = play_day(seed, bidders, budget, min_slice, frac, steps, p_lost, p_reclaim, p_cut, ttl, max_delay)
    assert day.spend <= g.budget + day.reclaimed + day.leaked + day.cut
    if p_reclaim == 0 and p_cut == 0:
        assert day.spend <= g.budget + day.leaked  # no reclaims, no cuts: only unprotected in-flight bids overspend


@settings(max_examples=150, deadline=None)
@given(**scenario)
def test_no_overspend_at_all_when_every_bid_stays_reserved_until_billed(seed: int, bidders: int, budget: int,
                                                                       min_slice_share: float, frac: float, steps: int,
                                                                       ttl: int, max_delay: int) -> None:
    """Notices delayed (less than the reservation lifetime) and reordered, but none lost: spend <= budget."""
    min_slice = max(int(budget * min_slice_share), 10)
    day, g = play_day(seed, bidders, budget, min_slice, frac, steps, 0.0, 0.0, 0.0, ttl=max_delay + ttl,
                      max_delay=max_delay)
    assert day.leaked == 0
    assert day.spend <= g.budget


@pytest.mark.parametrize("seed", range(5))
def test_the_budget_is_actually_spent_when_bidders_keep_asking(seed: int) -> None:
    """The bound is not bought by starving bidders: with prompt billing most of the budget gets used."""
    day, g = play_day(seed, bidders=4, budget=200_000, min_slice=2_000, frac=0.1, steps=3000,
                      p_lost=0.0, p_reclaim=0.0, p_cut=0.0, ttl=40, max_delay=20)
    assert 0.9 * g.budget <= day.spend <= g.budget


def test_settled_and_released_bids_do_not_pile_up_in_the_expiry_queue() -> None:
    """Each bid queues its expiry, and billing or a loss frees it long before: the queue must shrink back, or a
    bidder keeps every bid of the notice lifetime (hours) in memory."""
    lease = BudgetLease(day="2026-05-28", granted_micros=10**12)
    for i in range(50_000):
        lease.reserve(f"b{i}", 1_000, expires=1e9 + i)
        if i % 2:
            lease.settle(f"b{i}", 900)
        else:
            lease.release(f"b{i}")
    lease.reserve("open", 1_000, expires=1e9)  # one bid still out, and its expiry still frees it
    assert len(lease._expiry) <= 2 * 1 + 1024 + 1
    assert lease.expire(1e9 + 1) == 1 and lease.reserved_micros == 0
