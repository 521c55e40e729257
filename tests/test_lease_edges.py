"""Budget leases at their edges: a campaign's midnight with bids in flight, days without requests, a time zone moved
back across midnight, a campaign that may not bid while its worker changes; and the overspend bound over many days
with random interleavings of requests, grants, bids, bills, losses, expiries, crashes and a lagging ledger."""

from __future__ import annotations

import datetime as dt
import heapq
import random
from dataclasses import replace
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.engine import MAX_NOTICE_TTL_S, BidEngine
from bidder.lease_client import KEEPALIVE_S, LeaseClient
from streams.leases import LeaseDesk
from streams.leases import parse_request as parse_lease_request
from tests.test_lease_protocol import BUDGET, CAMP, NOW, SLICE, Clock, bid, engine, grant, req

MIDNIGHT = (NOW // 86_400 + 1) * 86_400  # the campaign's zone is UTC


def ask(desk: LeaseDesk, e: BidEngine, client: LeaseClient, now: float) -> dict[str, Any] | None:
    """One request of `e` for the campaign, through the topic's JSON, answered by `desk` and applied as it comes."""
    doc = client.request_doc(CAMP.id, e.campaign_day(CAMP, now), e.leases.get(CAMP.id), now)
    parsed = parse_lease_request(orjson.dumps(doc))
    assert parsed is not None
    answer = desk.answer(parsed, CAMP, 0, now)
    if answer is not None:
        client.apply(answer, now)
    return answer


def test_a_campaign_without_a_request_for_a_whole_day_is_granted_again() -> None:
    """Paused over a weekend, a campaign sends no lease request; when it came back, the desk took its day for
    "a day after tomorrow" of the last one granted on, and refused it every grant from then on."""
    desk = LeaseDesk()
    assert desk.answer(req("a"), CAMP, 0, NOW) is not None
    later = NOW + 2 * 86_400
    g = desk.answer(req("a", day="2026-05-30", ts=later), CAMP, 0, later)
    assert g is not None and g["granted"] == SLICE and desk.days[CAMP.id] == "2026-05-30"
    g = desk.answer(req("b", day="2026-05-30", ts=later), CAMP, 0, later)
    assert g is not None and g["granted"] == SLICE  # nothing held from two days before: its bids are long billed
    assert desk.answer(req("a", day="2026-06-01", ts=later), CAMP, 0, later) is None  # after tomorrow: still refused
    assert desk.counts == {"granted": 3, "future_day": 1}


def test_bids_in_flight_at_midnight_are_counted_before_the_new_days_budget_is_granted() -> None:
    """Bids sent before midnight are billed after it, on the new day: a granter that did not count them gave the
    whole new budget to the first bidders to ask, and the in-flight bids of the others were billed on top of it."""
    clock = Clock(MIDNIGHT - 60)
    desk = LeaseDesk()
    bidders = {n: engine(clock, n) for n in ("bA", "bB", "bC")}
    clients = {n: LeaseClient(e, 0.5) for n, e in bidders.items()}
    for n in ("bA", "bC"):  # the day before: two bidders hold half the budget each, 40,000 of it out in bids
        assert ask(desk, bidders[n], clients[n], clock.t) is not None
        for _ in range(16):
            assert bid(bidders[n]) is not None
        assert bidders[n].leases[CAMP.id].reserved_micros == 40_000
    clock.t = MIDNIGHT + 1
    for n in ("bB", "bA", "bC"):  # a bidder with nothing in flight asks first
        assert ask(desk, bidders[n], clients[n], clock.t) is not None
    for e in bidders.values():  # every bidder spends all it may; every bid in flight is won at its price
        while bid(e) is not None:
            pass
    leases = {n: e.leases[CAMP.id] for n, e in bidders.items()}
    assert all(lease.day == "2026-05-29" for lease in leases.values())
    assert sum(lease.spent_micros + lease.reserved_micros for lease in leases.values()) <= BUDGET
    assert leases["bA"].reserved_micros == leases["bC"].reserved_micros == 50_000  # the bids of both days


def test_what_a_bidder_holds_the_day_before_is_held_until_it_reports() -> None:
    """A bidder that has not asked yet on the new day (or never will: it died) may still be billed for its bids in
    flight, up to its unspent grant of the day before; its first report says what it really has out."""
    desk = LeaseDesk()
    for b in ("a", "b"):
        g = desk.answer(req(b, frac=0.5), CAMP, 0, NOW)
        assert g is not None and g["granted"] == BUDGET // 2
    nxt = MIDNIGHT + 60
    g = desk.answer(req("c", day="2026-05-29", ts=nxt, frac=0.5), CAMP, 0, nxt)
    assert g is not None and g["granted"] == 0  # a's and b's 50,000 of the day before are held for them
    g = desk.answer(req("a", day="2026-05-29", ts=nxt, frac=0.5, reserved=5_000), CAMP, 0, nxt)
    assert g is not None and g["granted"] == BUDGET // 2  # 5,000 of it in flight: the rest of its hold is free
    g = desk.answer(req("b", day="2026-05-29", ts=nxt, frac=0.5), CAMP, 0, nxt)
    assert g is not None and g["granted"] == BUDGET // 2
    assert desk.granters[CAMP.id].committed == BUDGET


def test_a_bidder_that_died_holds_nothing_once_its_bids_can_no_longer_be_billed() -> None:
    desk = LeaseDesk()
    for b in ("a", "b"):  # both hold half the budget; a dies before midnight, b lives on
        g = desk.answer(req(b, frac=0.5), CAMP, 0, NOW)
        assert g is not None and g["granted"] == BUDGET // 2
    nxt = MIDNIGHT + 60
    g = desk.answer(req("b", day="2026-05-29", ts=nxt, frac=0.5, reserved=2_500), CAMP, 0, nxt)
    assert g is not None and g["granted"] == BUDGET // 2
    g = desk.answer(req("c", day="2026-05-29", ts=nxt, frac=0.5), CAMP, 0, nxt)
    assert g is not None and g["granted"] == 0  # a's bids of the day before may still be billed
    later = MIDNIGHT + MAX_NOTICE_TTL_S - 1
    g = desk.answer(req("c", day="2026-05-29", ts=later, frac=0.5), CAMP, 0, later)
    assert g is not None and g["granted"] == 0
    later += 1  # no notice of a bid sent before midnight is valid any more
    g = desk.answer(req("c", day="2026-05-29", ts=later, frac=0.5), CAMP, 0, later)
    assert g is not None and g["granted"] == BUDGET // 2
    assert desk.granters[CAMP.id].committed == BUDGET  # b's grant, which it reported, still stands


def test_a_lease_closed_by_its_time_zone_moving_back_across_midnight_bids_again_on_its_day() -> None:
    """Berlin's 29th begins while it is still the 28th in New York: a campaign moved from one to the other has its
    lease of the 29th closed, and when New York's 29th came its grants went to that closed lease: no bid all day."""
    clock = Clock(dt.datetime(2026, 5, 28, 23, 0, tzinfo=dt.UTC).timestamp())  # 01:00 on the 29th in Berlin
    e = engine(clock)
    e.upsert_campaign(replace(CAMP, timezone="Europe/Berlin"))
    client = LeaseClient(e, 0.05)
    assert client.apply(grant("bA", 4 * SLICE, day="2026-05-29"), clock.t) and bid(e) is not None
    e.upsert_campaign(replace(CAMP, timezone="America/New_York"))
    clock.t += 900
    assert bid(e) is None  # the 28th again: the lease of the 29th takes no bid
    clock.t = dt.datetime(2026, 5, 29, 4, 30, tzinfo=dt.UTC).timestamp()  # 00:30 on the 29th in New York
    assert client.apply(grant("bA", 5 * SLICE, day="2026-05-29"), clock.t)
    assert bid(e) is not None
    lease = e.leases[CAMP.id]
    assert (lease.day, lease.granted_micros, lease.reserved_micros) == ("2026-05-29", 5 * SLICE, 2_500)


def test_a_campaign_that_may_not_bid_now_still_reports_what_it_holds() -> None:
    """A paused campaign sent no request, so a worker given it meanwhile (a rebalance) never heard of the lease its
    bidder still held, granted that budget again to others, and the bidder spent its lease on top when resumed."""
    clock = Clock(NOW)
    a = engine(clock, "bA")
    client = LeaseClient(a, 0.05)
    assert client.apply(grant("bA", 95_000), NOW)
    a.upsert_campaign(replace(CAMP, status="paused"))
    assert CAMP.id not in a.live()
    (doc,) = client.due(NOW, NOW)
    assert (doc["day"], doc["granted"], doc["spent"]) == ("2026-05-28", 95_000, 0)
    assert client.due(NOW + KEEPALIVE_S / 2, NOW) == [] and len(client.due(NOW + KEEPALIVE_S, NOW)) == 1
    desk = LeaseDesk()  # the worker that takes the campaign over listens first
    report = parse_lease_request(orjson.dumps(doc))
    assert report is not None and desk.answer(report, CAMP, 0, NOW, hold=True) is None
    b = desk.answer(req("bB"), CAMP, 0, NOW)
    assert b is not None and b["granted"] == BUDGET - 95_000
    # and once its day is over with nothing in flight, a campaign that may not bid sends nothing
    later = MIDNIGHT + 3600
    assert client.due(later, later) == []


# -- the bound, property-based, over several days ---------------------------------------------------------------

DAY0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()


class Market:
    """Bidders (real engines: their leases, grants, midnight closing and expiry), one worker's desk, a ledger that
    lags, and the notices in flight; it counts each day's true spend and its L (bills with no reservation to settle,
    or settled on the lease of the day before), and the most today could still come to (`worst`)."""

    def __init__(self, seed: int, bidders: int, frac: float, day_steps: int, ttl: int, max_delay: int,
                 lag: bool) -> None:
        self.rng = random.Random(seed)
        self.lag = lag  # the ledger counts bills some steps after they come, else at once
        self.step_s = 86_400 / day_steps
        self.ttl, self.max_delay = ttl, max_delay
        self.clock = Clock(DAY0)
        self.frac = frac
        self.born = 0
        self.bidders: dict[str, tuple[BidEngine, LeaseClient]] = {}
        for _ in range(bidders):
            self.spawn()
        self.desk = LeaseDesk()
        self.ledger: dict[str, int] = {}
        self.unledgered: list[tuple[str, int]] = []
        self.spend: dict[str, int] = {}
        self.leaked: dict[str, int] = {}
        self.worst: dict[str, int] = {}  # day -> the most its spend could have come to, less its L, at any step
        # (step, seq, kind, bidder, bid id, cost, when its reservation expires)
        self.notices: list[tuple[int, int, str, str, str, int, float]] = []
        self.grants: list[tuple[int, int, str, dict[str, Any]]] = []  # (step, seq, bidder, grant)
        self.seq = 0

    def spawn(self) -> None:
        self.born += 1
        name = f"b{self.born}"
        e = engine(self.clock, name)
        self.bidders[name] = (e, LeaseClient(e, self.frac))

    def day(self) -> str:
        return CAMP.local_day(self.clock.t)

    def later(self, step: int, delay: int) -> tuple[int, int]:
        self.seq += 1
        return step + delay, self.seq

    def request(self, step: int, name: str) -> None:
        e, client = self.bidders[name]
        doc = client.request_doc(CAMP.id, self.day(), e.leases.get(CAMP.id), self.clock.t)
        parsed = parse_lease_request(orjson.dumps(doc))
        assert parsed is not None
        answer = self.desk.answer(parsed, CAMP, self.ledger.get(self.day(), 0), self.clock.t)
        if answer is not None:
            heapq.heappush(self.grants, (*self.later(step, self.rng.randint(0, 2)), name, answer))

    def bids(self, step: int, name: str) -> None:
        for _ in range(self.rng.randint(1, 30)):  # offered demand: several times the budget
            self.bid(step, name)

    def bid(self, step: int, name: str) -> None:
        e, _ = self.bidders[name]
        lease = e.leases.get(CAMP.id)
        price = self.rng.randint(1, 2_500)
        if lease is None or not lease.can_bid(price):  # as the engine's `_lease_allows`
            return
        self.seq += 1
        bid_id = f"{name}-{self.seq}"
        expires = self.clock.t + min(self.ttl * self.step_s, MAX_NOTICE_TTL_S)  # as a notice URL's expiry
        lease.reserve(bid_id, price, expires)
        r = self.rng.random()
        if r < 0.5:  # won: billed at most the bid (after its reservation expired, when late)
            cost = self.rng.randint(0, price)
            heapq.heappush(self.notices, (*self.later(step, self.rng.randint(0, self.max_delay)), "bill", name,
                                          bid_id, cost, expires))
        elif r < 0.8:  # lost, and told so; else lost in silence: the reservation waits for its expiry
            heapq.heappush(self.notices, (*self.later(step, self.rng.randint(0, self.max_delay)), "loss", name,
                                          bid_id, 0, expires))

    def deliver(self, step: int) -> None:
        while self.grants and self.grants[0][0] <= step:
            _, _, name, answer = heapq.heappop(self.grants)
            if name in self.bidders:
                self.bidders[name][1].apply(answer, self.clock.t)
        while self.notices and self.notices[0][0] <= step:
            _, _, kind, name, bid_id, cost, expires = heapq.heappop(self.notices)
            owner = self.bidders.get(name)
            lease = owner[0].leases.get(CAMP.id) if owner is not None else None
            if kind == "loss":
                if lease is not None:
                    lease.release(bid_id)
                continue
            day = self.day()  # a bill is dated when it comes
            self.spend[day] = self.spend.get(day, 0) + cost
            self.unledgered.append((day, cost))
            if not self.lag:
                self.flush_ledger()
            if owner is None:  # its bidder is gone: the ledger alone counts it, and its grant answers for it
                if expires <= self.clock.t:  # unless its reservation would have been gone by now (L)
                    self.leaked[day] = self.leaked.get(day, 0) + cost
                continue
            if lease is None or not lease.settle(bid_id, cost) or lease.day != day:
                self.leaked[day] = self.leaked.get(day, 0) + cost

    def tick(self, step: int) -> None:
        self.clock.t = DAY0 + step * self.step_s
        for e, _ in self.bidders.values():
            e.live()  # the engine's second-by-second refresh: a day over closes its lease, expiries free budget
        self.deliver(step)
        self.note_worst()

    def note_worst(self) -> None:
        """Today's spend if every bid in flight were won at its price (billed today) and every lease of today
        spent to the last micro, bills of the bidders gone included: what the grants must keep within budget."""
        day = self.day()
        worst = self.spend.get(day, 0) - self.leaked.get(day, 0)
        for e, _ in self.bidders.values():
            lease = e.leases.get(CAMP.id)
            if lease is not None:
                worst += lease.reserved_micros + (max(lease.remaining_micros, 0) if lease.day == day else 0)
        # a loss costs 0; a bill whose reservation has expired counts in L when it comes, like a live bidder's
        worst += sum(n[5] for n in self.notices if n[3] not in self.bidders and n[6] > self.clock.t)
        self.worst[day] = max(self.worst.get(day, 0), worst)

    def flush_ledger(self) -> None:
        for day, cost in self.unledgered:
            self.ledger[day] = self.ledger.get(day, 0) + cost
        self.unledgered.clear()


def play(seed: int, bidders: int, frac: float, day_steps: int, ttl: int, max_delay: int, p_crash: float,
         days: int, lag: bool = True) -> Market:
    """`days` days of the market, then every notice still out delivered (on the day it comes)."""
    m = Market(seed, bidders, frac, day_steps, ttl, max_delay, lag)
    steps = days * day_steps
    for step in range(steps):
        m.tick(step)
        for name in m.rng.sample(sorted(m.bidders), len(m.bidders)):
            r = m.rng.random()
            if r < p_crash:
                del m.bidders[name]  # its notices still come: the ledger counts them
                m.spawn()
            elif r < 0.4:
                m.request(step, name)
            else:
                m.bids(step, name)
        if m.rng.random() < 0.3:
            m.flush_ledger()
        m.note_worst()
    step = steps
    while m.notices or m.grants:  # the last bills still come (and count on the day they come)
        m.tick(step)
        step += 1
    return m


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32), bidders=st.integers(1, 5), frac=st.floats(0.02, 0.5),
       day_steps=st.integers(40, 150), ttl=st.integers(2, 30), max_delay=st.integers(0, 30),
       p_crash=st.sampled_from([0.0, 0.01]), days=st.integers(2, 4))
def test_each_days_spend_stays_within_its_budget_plus_the_bids_whose_reservation_was_gone(
        seed: int, bidders: int, frac: float, day_steps: int, ttl: int, max_delay: int, p_crash: float,
        days: int) -> None:
    """No failover, no budget cut: each day's spend <= budget + L, however requests, grants (late, or after
    midnight), bids, bills, losses, expiries, bidder crashes and the ledger interleave around midnights; and at
    no moment could the day still have come to more (every bid in flight won, every lease spent).

    The ledger lags (by steps of minutes) only while no bidder crashes: a gone bidder's spend is known only from
    the ledger, and surviving bidders' reports running ahead of it hide that much (`LeaseGranter.ledger_spend`)."""
    m = play(seed, bidders, frac, day_steps, ttl, max_delay, p_crash, days, lag=not p_crash)
    for day, spend in m.spend.items():
        assert spend <= BUDGET + m.leaked.get(day, 0), (day, spend, m.leaked)
    assert max(m.worst.values()) <= BUDGET, m.worst


def test_the_market_spends_most_of_each_days_budget() -> None:
    """The bound above is not met by starving the bidders: with demand above the budget it is nearly all spent."""
    for seed in range(3):
        m = play(seed, bidders=3, frac=0.1, day_steps=100, ttl=10, max_delay=8, p_crash=0.0, days=3)
        assert all(0.8 * BUDGET <= m.spend[day] <= BUDGET + m.leaked.get(day, 0) for day in sorted(m.spend)[:3])
