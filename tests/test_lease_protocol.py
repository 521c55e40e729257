"""The lease protocol's pure parts: the worker's desk, the bidder's client, and the notice relay between workers.

The real-broker behaviour (bidder processes sharing a budget, a bidder cut
off) is in tests/test_streams_leases.py; here each piece runs on its own.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder import lease_client
from bidder.campaigns import Campaign, parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.lease import LEDGER
from bidder.lease_client import LeaseClient
from bidder.metrics import BidderStats
from bidder.notice_relay import NoticeRelay, notice_bidder
from bidder.openrtb import parse_request
from bidder.server import BidApp
from bidder.wiring import _orphan, _relaying
from models.snapshot import ModelSnapshot
from streams.leases import REQUEST_TTL_S, LeaseDesk, min_slice
from streams.leases import parse_request as parse_lease_request
from tests.helpers import body, campaign, request

NOW = 1_780_000_000.0
DAY = "2026-05-28"  # NOW's day in UTC
BUDGET = 100_000  # micros: 0.1 a day
CAMP = parse_campaign(campaign(budget={"daily": BUDGET / 1e6, "total": 1.0},
                               goal={"type": "cpc", "value_per_click": 1000.0, "max_bid_cpm": 2.5}))
SLICE = 4 * 2_500  # the campaign's min slice: 4 impressions at its max bid


def req(bidder: str, granted: int = 0, spent: int = 0, day: str = DAY, frac: float = 0.05, ts: float = NOW,
        reserved: int = 0) -> dict[str, Any]:
    return {"v": 1, "bidder": bidder, "campaign": CAMP.id, "day": day, "granted": granted, "spent": spent,
            "reserved": reserved, "frac": frac, "ts": ts}


def answered(desk: LeaseDesk, doc: dict[str, Any], camp: Campaign | None, ledger_spend: int) -> dict[str, Any]:
    """The desk's grant for a request it must answer now (a known campaign, today's, fresh, not held back)."""
    g = desk.answer(doc, camp, ledger_spend, NOW)
    assert g is not None, doc
    return g


# -- the worker's desk ----------------------------------------------------------------


def test_min_slice_is_four_impressions_at_the_max_bid() -> None:
    assert min_slice(CAMP) == SLICE


def test_slices_are_topped_up_and_never_commit_past_the_budget() -> None:
    desk = LeaseDesk()
    a = desk.answer(req("a"), CAMP, 0, NOW)
    assert a is not None and a["granted"] == SLICE and a["bidder"] == "a" and a["day"] == DAY
    assert answered(desk, req("a", granted=SLICE), CAMP, 0)["granted"] == SLICE  # unspent: nothing more
    # a spends most of it: topped up to one slice again
    assert answered(desk, req("a", granted=SLICE, spent=8_000), CAMP, 8_000)["granted"] == 8_000 + SLICE
    granted = {"a": 8_000 + SLICE}
    spent = {"a": 8_000}
    for _ in range(40):  # two bidders spend everything they are given
        for b in ("a", "b"):
            g = answered(desk, req(b, granted.get(b, 0), spent.get(b, 0)), CAMP, sum(spent.values()))
            granted[b] = g["granted"]
            spent[b] = granted[b]
    assert sum(granted.values()) == BUDGET
    assert answered(desk, req("c"), CAMP, BUDGET)["granted"] == 0  # nothing left for a newcomer


def test_spend_only_the_ledger_knows_comes_off_the_pool() -> None:
    desk = LeaseDesk()
    desk.answer(req("a"), CAMP, 0, NOW)
    # 85,000 billed that no bidder reports (bidders restarted under new ids), and a holds a slice: 5,000 left
    g = answered(desk, req("b"), CAMP, 85_000)
    assert g["granted"] == BUDGET - 85_000 - SLICE
    assert answered(desk, req("c"), CAMP, 85_000)["granted"] == 0
    assert desk.granters[CAMP.id]._accounts[LEDGER].billed == 85_000


def test_a_worker_that_takes_over_learns_what_bidders_hold_from_their_requests() -> None:
    before = LeaseDesk()
    for b in ("a", "b"):
        before.answer(req(b), CAMP, 0, NOW)
    after = LeaseDesk()  # restarted: knows nothing; the ledger has 2,000 billed, reported by a
    g = answered(after, req("a", granted=SLICE, spent=2_000), CAMP, 2_000)
    assert g["granted"] == 2_000 + SLICE  # topped up from what a reported, not granted afresh
    g = answered(after, req("b", granted=SLICE, spent=0), CAMP, 2_000)
    assert g["granted"] == SLICE
    acc = after.granters[CAMP.id]
    assert acc.committed == before.granters[CAMP.id].committed + 2_000


def test_a_worker_just_given_the_campaign_only_listens_until_bidders_have_reported() -> None:
    desk = LeaseDesk()
    assert desk.answer(req("a", granted=60_000, spent=10_000), CAMP, 10_000, NOW, hold=True) is None
    assert desk.answer(req("b", granted=30_000, spent=0), CAMP, 10_000, NOW, hold=True) is None
    # after the hold: a and b still hold 50,000 + 30,000 unspent; only 10,000 is left for c
    assert answered(desk, req("c"), CAMP, 10_000)["granted"] == BUDGET - 60_000 - 30_000
    assert desk.counts["held"] == 2
    desk.drop([CAMP.id])  # the campaign moved to another worker
    assert CAMP.id not in desk.granters and CAMP.id not in desk.days


def test_requests_for_a_day_over_or_too_old_get_no_answer() -> None:
    desk = LeaseDesk()
    assert desk.answer(req("a"), CAMP, 0, NOW) is not None
    assert desk.answer(req("a", day="2026-05-27"), CAMP, 0, NOW) is None
    assert desk.answer(req("a", ts=NOW - REQUEST_TTL_S - 1), CAMP, 0, NOW) is None
    assert desk.answer(req("a"), None, 0, NOW) is None
    nxt = answered(desk, req("a", day="2026-05-29"), CAMP, 0)  # a new day: a new budget
    assert nxt["granted"] == SLICE and desk.days[CAMP.id] == "2026-05-29"
    assert desk.counts == {"granted": 2, "past_day": 1, "stale": 1, "unknown_campaign": 1}


def test_a_first_request_for_a_day_after_tomorrow_does_not_become_the_campaigns_day() -> None:
    """Before any request set the campaign's day, a far-future date held every grant until that date came."""
    desk = LeaseDesk()
    assert desk.answer(req("a", day="2099-01-01"), CAMP, 0, NOW) is None
    assert desk.answer(req("a", day="2026-05-30"), CAMP, 0, NOW) is None  # NOW is 2026-05-28 in the campaign's zone
    assert desk.counts == {"future_day": 2} and CAMP.id not in desk.days
    assert answered(desk, req("a"), CAMP, 0)["granted"] == SLICE
    assert answered(desk, req("b", day="2026-05-29"), CAMP, 0)["day"] == "2026-05-29"  # tomorrow, near midnight


def test_a_request_for_no_date_or_a_day_after_tomorrow_cannot_stop_the_grants() -> None:
    """Taken as the campaign's latest day, either would refuse every bidder asking for the real one."""
    assert parse_lease_request(orjson.dumps(req("a", day="x"))) is None
    assert parse_lease_request(orjson.dumps(req("a", day="2026-02-31"))) is None
    assert parse_lease_request(orjson.dumps(req("a"))) is not None
    desk = LeaseDesk()
    assert desk.answer(req("a"), CAMP, 0, NOW) is not None
    assert desk.answer(req("b", day="2026-05-30"), CAMP, 0, NOW) is None
    assert desk.answer(req("c"), CAMP, 0, NOW) is not None and desk.days[CAMP.id] == DAY


def test_a_budget_cut_mid_day_holds_back_later_grants() -> None:
    desk = LeaseDesk()
    desk.answer(req("a"), CAMP, 0, NOW)
    cut = parse_campaign({**campaign(budget={"daily": 0.005, "total": 1.0}),
                          "goal": {"type": "cpc", "value_per_click": 1000.0, "max_bid_cpm": 2.5}})
    assert answered(desk, req("b"), cut, 0)["granted"] == 0  # a already holds more than the new budget


def test_malformed_requests_are_refused() -> None:
    good = req("b1x2", reserved=700)
    assert parse_lease_request(orjson.dumps(good)) == good
    older = {k: v for k, v in good.items() if k != "reserved"}  # a bidder of an earlier release: no bids in flight said
    assert parse_lease_request(orjson.dumps(older)) == {**older, "reserved": 0}
    for bad in (b"{", b"[]", orjson.dumps({**good, "v": 2}), orjson.dumps({**good, "granted": -1}),
                orjson.dumps({**good, "reserved": -1}), orjson.dumps({**good, "reserved": True}),
                orjson.dumps({**good, "reserved": 1.5}),
                orjson.dumps({**good, "spent": True}), orjson.dumps({**good, "bidder": "~ledger"}),
                orjson.dumps({**good, "bidder": "a/b"}), orjson.dumps({k: v for k, v in good.items() if k != "day"}),
                orjson.dumps({**good, "frac": "x"})):
        assert parse_lease_request(bad) is None, bad


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5_000), st.booleans()), min_size=1, max_size=120),
       st.floats(0.01, 0.5))
def test_honest_bidders_are_never_granted_more_than_the_budget(steps: list, frac: float) -> None:
    """Bidders spend within their leases and report it; the ledger lags; grants never sum past the budget."""
    desk = LeaseDesk()
    granted: dict[str, int] = {}
    spent: dict[str, int] = {}
    ledger = 0
    for who, spend, ledger_catches_up in steps:
        b = f"b{who}"
        spent[b] = min(spent.get(b, 0) + spend, granted.get(b, 0))
        if ledger_catches_up:
            ledger = sum(spent.values())
        g = answered(desk, req(b, granted.get(b, 0), spent[b], frac=frac), CAMP, ledger)
        assert g["granted"] >= granted.get(b, 0)
        granted[b] = g["granted"]
        assert sum(granted.values()) <= BUDGET


# -- the bidder's client ---------------------------------------------------------------


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def engine(clock: Clock, bidder: str = "bA", events: list | None = None) -> BidEngine:
    sink = (lambda k, key, ev: events.append((k, ev))) if events is not None else (lambda *a: None)
    return BidEngine(EngineConfig(secret=b"s", bidder_id=bidder, lease_slice=1, explore_below=0), [CAMP],
                     ModelSnapshot.empty(), sink=sink, clock=clock)


def bid(e: BidEngine) -> dict | None:
    out = e.bid(parse_request(body(request())), "x", math.inf)
    return orjson.loads(out.body)["seatbid"][0]["bid"][0] if out.status == 200 else None


def grant(bidder: str, granted: int, day: str = DAY, slice_: int = SLICE) -> dict:
    return {"v": 1, "bidder": bidder, "campaign": CAMP.id, "day": day, "granted": granted, "slice": slice_, "ts": 0}


def test_no_lease_no_bid_and_a_request_goes_out_at_once() -> None:
    e = engine(Clock(NOW))
    client = LeaseClient(e, 0.05)
    assert bid(e) is None
    (doc,) = client.due(100.0, NOW)
    assert doc == {"v": 1, "bidder": "bA", "campaign": CAMP.id, "day": DAY, "granted": 0, "spent": 0, "reserved": 0,
                   "frac": 0.05, "ts": 100.0}
    assert parse_lease_request(orjson.dumps(doc)) == doc  # what the worker accepts
    assert client.due(100.0 + lease_client.ASK_EVERY_S / 2, NOW) == []  # not twice in a row
    assert len(client.due(100.0 + lease_client.ASK_EVERY_S, NOW)) == 1  # no grant came: ask again


def test_unanswered_lease_requests_back_off_and_a_grant_restores_the_full_rate() -> None:
    """A worker that fell behind (restarted, stalled) must be able to catch up: while no grant comes, a bidder asks
    for each campaign half as often after every request (up to once in ASK_BACKOFF_MAX_S), never at the full rate."""
    e = engine(Clock(NOW))
    client = LeaseClient(e, 0.05)
    asked = [t / 100 for t in range(0, 3001, 5) if client.due(100.0 + t / 100, NOW)]  # 30 s, polled every 50 ms
    assert asked[:6] == [0.0, 0.25, 0.75, 1.75, 3.75, 7.75]
    assert len(asked) == 10 and all(b - a == pytest.approx(lease_client.ASK_BACKOFF_MAX_S)
                                    for a, b in zip(asked[5:-1], asked[6:], strict=True))
    assert client.apply(grant("bA", 500), NOW)  # answered: a short lease is asked for at the full rate again
    e.leases[CAMP.id].reserve("b1", 500)  # and spent
    t = 130.0
    assert client.due(t, NOW) and not client.due(t + 0.2, NOW) and client.due(t + lease_client.ASK_EVERY_S, NOW)


def test_grants_for_this_bidder_and_today_only() -> None:
    e = engine(Clock(NOW))
    client = LeaseClient(e, 0.05)
    assert not client.apply(grant("bB", 5_000), NOW)
    assert not client.apply(grant("bA", 5_000, day="2026-05-27"), NOW)
    assert client.apply(grant("bA", 5_000), NOW) and client.apply(grant("bA", 3_000), NOW)  # a late, smaller one
    assert e.leases[CAMP.id].granted_micros == 5_000
    assert (client.grants, client.ignored) == (2, 1)
    assert bid(e) is not None


def test_a_lease_below_half_a_slice_asks_for_more_and_a_full_one_only_reports() -> None:
    e = engine(Clock(NOW))
    client = LeaseClient(e, 0.05)
    assert len(client.due(0.0, NOW)) == 1  # no lease yet
    client.apply(grant("bA", SLICE), NOW)
    assert client.due(0.5, NOW) == []  # full
    b = bid(e)
    assert b is not None
    price = round(b["price"] * 1e6) // 1000
    assert e.leases[CAMP.id].reserved_micros == price == 2_500
    e.leases[CAMP.id].settle(b["id"], price)
    assert client.due(1.0, NOW) == []  # 7,500 left: more than half a slice
    bid(e)
    bid(e)  # 2,500 left
    (doc,) = client.due(2.0, NOW)
    assert (doc["granted"], doc["spent"]) == (SLICE, price)
    assert len(client.due(2.0 + lease_client.KEEPALIVE_S, NOW)) == 1


def test_a_bidder_without_grants_spends_its_lease_and_stops() -> None:
    e = engine(Clock(NOW))
    LeaseClient(e, 0.05).apply(grant("bA", 9_000), NOW)
    n = 0
    while (b := bid(e)) is not None:
        e.leases[CAMP.id].settle(b["id"], round(b["price"] * 1e6) // 1000)
        n += 1
    assert n == 3 and e.leases[CAMP.id].spent_micros == 7_500


def test_past_the_campaigns_midnight_no_bid_goes_out_until_the_new_days_grant_which_holds_the_bids_in_flight() -> None:
    """Bids sent after midnight are billed on the new day; on yesterday's lease they spent an allowance the new day's
    granter never gave, and when its grant came the bids still in flight were dropped from the lease."""
    midnight = (NOW // 86_400 + 1) * 86_400  # the campaign's time zone is UTC
    clock = Clock(midnight - 30)
    e = engine(clock)
    client = LeaseClient(e, 0.05)
    client.apply(grant("bA", 2 * SLICE), clock.t)
    late = bid(e)
    assert late is not None
    clock.t = midnight + 20
    assert bid(e) is None  # yesterday's lease takes no more bids
    (doc,) = client.due(200.0, clock.t)  # and today's is asked for at once
    assert doc["day"] == "2026-05-29"
    assert client.apply(grant("bA", SLICE, day="2026-05-29"), clock.t)
    lease = e.leases[CAMP.id]
    assert lease.day == "2026-05-29" and lease.reserved_micros == 2_500  # yesterday's last bid, still in flight
    assert [b is not None for b in (bid(e), bid(e), bid(e), bid(e))] == [True, True, True, False]  # 3 more fit
    lease.settle(late["id"], 2_500)  # billed today: it frees its own reservation
    assert lease.reserved_micros == 3 * 2_500 and lease.spent_micros == 2_500


# -- the notice relay between workers ---------------------------------------------------


def test_notice_bidder_reads_the_n_parameter() -> None:
    assert notice_bidder("b=x-1&c=c1&n=b12x34&u=&s=zz") == "b12x34"
    assert notice_bidder("n=b1&m=2") == "b1"
    assert notice_bidder("b=x&c=an=y&u=") == ""  # "n=" inside another value is not the parameter
    assert notice_bidder("b=x&c=c") == ""


def test_a_sibling_bids_notices_settle_its_own_lease(tmp_path: Path) -> None:
    """Worker B gets the billing and loss notices of worker A's bids: A's lease settles, B's is untouched."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        clock = Clock(NOW)
        events: list = []
        engines = {n: engine(clock, n, events) for n in ("bA", "bB")}
        apps = {n: BidApp(e, BidderStats()) for n, e in engines.items()}
        relays = {n: NoticeRelay(tmp_path, n, apps[n].notice) for n in engines}  # a handover: as if it landed there
        for n, r in relays.items():
            r.start(loop)
            apps[n].notice = _relaying(apps[n], r)  # type: ignore[method-assign]  # as bidder.wiring does
        for n in engines:
            LeaseClient(engines[n], 0.05).apply(grant(n, SLICE), NOW)
        won, lost = bid(engines["bA"]), bid(engines["bA"])
        assert won is not None and lost is not None
        assert engines["bA"].leases[CAMP.id].reserved_micros == 5_000

        def query(b: dict, kind: str) -> str:
            url = b[kind].replace("${AUCTION_PRICE}", "2.0").replace("${AUCTION_LOSS}", "102")
            return urlsplit(url.replace("${AUCTION_MIN_TO_WIN}", "3")).query

        assert b'"ok":true' in apps["bB"].notice("bill", query(won, "burl"))
        assert b"replayed" in apps["bB"].notice("bill", query(won, "burl"))  # refused there: nothing forwarded
        assert b'"ok":true' in apps["bB"].notice("loss", query(lost, "lurl"))
        forged = query(won, "burl").replace("s=", "s=AAAA")
        assert b"bad_signature" in apps["bB"].notice("bill", forged)
        for _ in range(50):
            if relays["bA"].received == 2:
                break
            await asyncio.sleep(0.01)
        a, b = engines["bA"].leases[CAMP.id], engines["bB"].leases[CAMP.id]
        assert (a.spent_micros, a.reserved_micros) == (2_000, 0)
        assert (b.spent_micros, b.reserved_micros, b.granted_micros) == (0, 0, SLICE)
        assert relays["bB"].forwarded == 2 and relays["bA"].received == 2
        # counted and sent on once, by the worker that made the bid (the one where it landed answered it)
        assert [(k, ev["bidder"], ev["cost"]) for k, ev in events if k == "billing"] == [("billing", "bA", 2_000)]
        assert apps["bA"].stats.notices[("bill", "ok")] == 1 and apps["bA"].stats.notices[("loss", "ok")] == 1
        assert apps["bB"].stats.notices[("bill", "ok")] == 0
        # a sibling gone (restarted under a new id): nothing to settle, the notice still counts
        relays["bA"].close()
        again = bid(engines["bA"])
        assert again is not None
        assert b'"ok":true' in apps["bB"].notice("loss", query(again, "lurl"))
        assert relays["bB"].unreachable == 1 and engines["bB"].leases[CAMP.id].reserved_micros == 0
        relays["bB"].close()

    asyncio.run(run())


def test_a_relay_refuses_ids_that_cannot_name_a_socket(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        NoticeRelay(tmp_path, "../x", lambda *a: None)
    r = NoticeRelay(tmp_path, "bA", lambda *a: None)
    assert not r.forward("bB", "bill", "b=x&n=bB")  # not started


def test_a_burst_of_notices_waits_for_room_in_a_siblings_mailbox(tmp_path: Path) -> None:
    """A sibling's mailbox holds a handful of datagrams: a burst larger than that waits, in order, and every notice
    reaches its owner (none is handled where it landed, where a replay at the owner would be charged again)."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        got: list[tuple[str, str]] = []
        owner = NoticeRelay(tmp_path, "bA", lambda kind, query: got.append((kind, query)))
        lander = NoticeRelay(tmp_path, "bB", lambda *a: None)
        owner.start(loop)
        lander.start(loop)
        sent = [("bill", f"b=x-{i}&n=bA") for i in range(300)]
        assert all(lander.forward("bA", kind, query) for kind, query in sent)  # in one loop pass: the owner reads none
        assert lander.waited > 0 and lander.unreachable == 0
        for _ in range(200):
            if len(got) == len(sent):
                break
            await asyncio.sleep(0.01)
        assert got == sent
        assert lander.forwarded == len(sent) and owner.received == len(sent)
        owner.close()
        lander.close()

    asyncio.run(run())


def test_notices_waiting_for_a_sibling_that_goes_away_are_handled_where_they_landed(tmp_path: Path) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        here: list[tuple[str, str]] = []
        owner = NoticeRelay(tmp_path, "bA", lambda *a: None)
        lander = NoticeRelay(tmp_path, "bB", lambda *a: None, orphan=lambda kind, query: here.append((kind, query)))
        owner.start(loop)
        lander.start(loop)
        sent = [("loss", f"b=y-{i}&n=bA") for i in range(100)]
        for kind, query in sent:
            lander.forward("bA", kind, query)
        waiting = lander.waited
        assert waiting > 0
        owner.close()  # before its loop ever read: the mailbox and what it held are gone
        for _ in range(100):
            if len(here) == waiting:
                break
            await asyncio.sleep(0.01)
        assert here == sent[-waiting:]  # the ones still waiting, in order
        assert lander.unreachable == waiting
        assert not lander.forward("bA", "loss", "b=z&n=bA")  # gone: handled here at once
        lander.close()

    asyncio.run(run())


def test_a_stopping_worker_loses_no_notice_it_answered_for(tmp_path: Path) -> None:
    """Notices still waiting for a sibling's mailbox, and those already in the stopping worker's own, were dropped at
    close: bills the exchange had been answered 200 for, never charged (9 of 20 in a restart during a burst)."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        at_owner: list[tuple[str, str]] = []
        here: list[tuple[str, str]] = []
        owner = NoticeRelay(tmp_path, "bA", lambda kind, query: at_owner.append((kind, query)))
        lander = NoticeRelay(tmp_path, "bB", lambda *a: None, orphan=lambda kind, query: here.append((kind, query)))
        owner.start(loop)
        lander.start(loop)
        sent = [("bill", f"b=w-{i}&n=bA") for i in range(100)]
        assert all(lander.forward("bA", kind, query) for kind, query in sent)  # one loop pass: the owner reads none
        waiting = lander.waited
        lander.close()  # the landing worker stops first: what waits for room is handled there
        assert here == sent[-waiting:] and lander.unreachable == waiting
        owner.close()  # then the owner, with its mailbox unread: it handles what it holds before closing
        assert at_owner == sent[:-waiting] and owner.received == len(sent) - waiting

    asyncio.run(run())


def test_an_orphaned_notice_is_charged_once_where_it_landed() -> None:
    """A notice that waited for a sibling which then went away comes back to the worker where it landed: it is
    counted and sent on there once (its replay check was done on landing), without touching that worker's lease."""
    clock = Clock(NOW)
    events: list = []
    owner, lander = engine(clock, "bA"), engine(clock, "bB", events)
    for n, e in (("bA", owner), ("bB", lander)):
        LeaseClient(e, 0.05).apply(grant(n, SLICE), NOW)
    won = bid(owner)
    assert won is not None
    q = urlsplit(won["burl"].replace("${AUCTION_PRICE}", "2.0")).query
    assert lander.notice("bill", q, relay=lambda n: True) == "relayed"
    app = BidApp(lander, BidderStats())
    _orphan(app)("bill", q)
    assert app.stats.notices[("bill", "ok")] == 1
    assert [(k, ev["bidder"], ev["cost"]) for k, ev in events if k == "billing"] == [("billing", "bA", 2_000)]
    assert lander.leases[CAMP.id].spent_micros == 0
    assert lander.notice("bill", q) == "replayed"


def test_reports_of_a_full_lease_do_not_slow_the_request_for_the_next_top_up() -> None:
    e = engine(Clock(NOW))
    client = LeaseClient(e, 0.05)
    full = CAMP.daily_budget
    assert client.due(100.0, NOW) and client.apply(grant("bA", full), NOW)  # asked, and answered: a full lease
    reports = [t for t in (102.0, 105.0, 107.0, 110.0, 115.0) if client.due(t, NOW)]
    assert reports == [105.0, 110.0, 115.0]  # a full lease is only reported, every KEEPALIVE_S
    e.leases[CAMP.id].reserve("big", full - 1)  # then nearly all of it is out in bids: short
    assert client.due(115.0 + lease_client.ASK_EVERY_S, NOW)  # asked for at once, not after a backed-off wait
