"""The spend ledger counts every event once, in integer micros, and survives replays exactly."""

from __future__ import annotations

import copy
import random

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.notices import notice_urls
from models.snapshot import ModelSnapshot
from streams.bus import EmbeddedBus
from streams.events import EventError, check_event, make_event
from streams.ledger import SpendLedger
from streams.processor import Campaigns, DeliveryProcessor
from tests.helpers import campaign


def ledger() -> SpendLedger:
    return SpendLedger({}, {}, day_of=lambda c, ts: "2026-01-01", click_value=lambda c: 500_000)


def bill(i: int, cost: int) -> dict:
    return make_event("billing", f"bill:b{i}", 1000 + i, bid_id=f"b{i}", campaign="c1", cost=cost, day="2026-01-01")


def test_duplicates_by_event_id_count_once() -> None:
    lg = ledger()
    assert lg.apply("billing", bill(1, 1234))
    assert not lg.apply("billing", bill(1, 1234))
    assert lg.day_totals("c1", "2026-01-01")["spend"] == 1234


def test_replay_after_crash_is_exact_with_positions() -> None:
    """Events re-read from an offset before the crash are skipped even if `seen` lost them."""
    rng = random.Random(3)
    events = [bill(i, rng.randrange(1, 5000)) for i in range(200)]
    lg = ledger()
    for off, ev in enumerate(events[:150]):
        lg.apply("billing", ev, ("t:0", off))
    lg.seen.clear()  # the crash lost the seen-table writes but not the totals
    for off, ev in enumerate(events):
        lg.apply("billing", ev, ("t:0", off))
    assert lg.day_totals("c1", "2026-01-01")["spend"] == sum(e["cost"] for e in events)
    assert lg.day_totals("c1", "2026-01-01")["billed"] == 200


def test_clicks_carry_value_and_roi_inputs() -> None:
    lg = ledger()
    lg.apply("billing", bill(1, 100_000))
    lg.apply("clicks", make_event("clicks", "click:b1", 5, bid_id="b1", campaign="c1"))
    t = lg.day_totals("c1", "2026-01-01")
    assert (t["clicks"], t["value"], t["spend"]) == (1, 500_000, 100_000)


def test_post_click_conversions_count_once_with_their_event() -> None:
    lg = ledger()
    conv = make_event("conversions", "conv:b1", 5, bid_id="b1", campaign="c1", value=7)
    assert lg.apply("conversions", conv, ("t:0", 0), post_click=1)
    assert not lg.apply("conversions", conv, ("t:0", 0), post_click=1)  # re-read from the same offset
    assert not lg.apply("conversions", conv, ("t:0", 9), post_click=1)  # re-sent
    t = lg.day_totals("c1", "2026-01-01")
    assert (t["conversions"], t["post_click_conversions"], t["value"]) == (1, 1, 7)


def test_totals_written_before_post_click_counts_read_as_zero() -> None:
    lg = ledger()
    lg.totals["c1|2026-01-01"] = {"spend": 5, "conversions": 2}  # an entry from before the count existed
    assert lg.day_totals("c1", "2026-01-01")["post_click_conversions"] == 0


# -- post-click conversions through attribution, exact across replays ------------------------------------------

def delivery_log(seed: int) -> list[tuple[str, dict, tuple[str, int]]]:
    """Bids first, then impressions, clicks and conversions interleaved at random (each topic in its own order),
    some conversions without a click, some of unknown bids, a few events re-sent; with their positions."""
    rng = random.Random(seed)
    bids = [make_event("bids", f"bid:b{i}", 1000, bid_id=f"b{i}", campaign="c1", creative="k", features=[i])
            for i in range(60)]
    streams: dict[str, list[dict]] = {"impressions": [], "clicks": [], "conversions": []}
    for i in range(60):
        streams["impressions"].append(make_event("impressions", f"imp:b{i}", 2000, bid_id=f"b{i}", campaign="c1",
                                                 creative="k"))
        if i % 2 == 0:
            streams["clicks"].append(make_event("clicks", f"click:b{i}", 3000, bid_id=f"b{i}", campaign="c1",
                                                creative="k"))
        for n in range(rng.choice((0, 1, 1, 2))):
            streams["conversions"].append(make_event("conversions", f"conv:b{i}:{n}", 9000, bid_id=f"b{i}",
                                                     campaign="c1", value=100))
    streams["conversions"] += [make_event("conversions", f"conv:x{i}", 9000, bid_id=f"x{i}", campaign="c1", value=1)
                               for i in range(5)]
    for events in streams.values():
        rng.shuffle(events)
        events += [rng.choice(events) for _ in range(3)]  # re-sent by their producers
    log = [("bids", ev, ("bids:0", off)) for off, ev in enumerate(bids)]
    cursors = dict.fromkeys(streams, 0)
    while any(cursors[k] < len(v) for k, v in streams.items()):
        kind = rng.choice([k for k, v in streams.items() if cursors[k] < len(v)])
        log.append((kind, streams[kind][cursors[kind]], (f"{kind}:0", cursors[kind])))
        cursors[kind] += 1
    return log


def expected_post_click(log: list[tuple[str, dict, tuple[str, int]]]) -> int:
    """Conversions (each id once) of a known bid that has a click: post-click, whatever order they were read in."""
    clicked = {ev["bid_id"] for kind, ev, _ in log if kind == "clicks"}
    bids = {ev["bid_id"] for kind, ev, _ in log if kind == "bids"}
    return len({ev["id"] for kind, ev, _ in log if kind == "conversions" and ev["bid_id"] in clicked & bids})


def processor() -> DeliveryProcessor:
    camps = Campaigns()
    camps.by_id["c1"] = parse_campaign(campaign(flight={"start": "2020-01-01", "end": "2099-12-31",
                                                        "timezone": "UTC"}))
    return DeliveryProcessor(camps, {}, {}, {})


def post_click(proc: DeliveryProcessor) -> int:
    return sum(t.get("post_click_conversions", 0) for t in proc.ledger.totals.values())


@pytest.mark.parametrize("seed", range(6))
def test_post_click_conversions_are_exact_in_any_order_and_across_a_crash(seed: int) -> None:
    """Each post-click conversion is counted once, read before or after its click, and a worker that lost some
    table writes and reads its topics again from an earlier point ends with the same count."""
    log = delivery_log(seed)
    clean = processor()
    for kind, ev, pos in log:
        clean.handle(kind, ev, pos)
    assert post_click(clean) == expected_post_click(log) > 0
    cut = random.Random(seed).randrange(len(log) // 3, len(log))
    for lost in ("totals", "attribution", "none"):
        proc = processor()
        tables = {"totals": proc.ledger.totals, "attribution": proc.attribution.pending}
        for i, (kind, ev, pos) in enumerate(log):
            if i == cut and lost != "none":
                saved = copy.deepcopy(tables[lost])  # what the changelog holds: later writes of it are lost
            proc.handle(kind, ev, pos)
        if lost != "none":
            tables[lost].clear()
            tables[lost].update(saved)
            proc.attribution.reindex()
        for kind, ev, pos in log[cut // 2:]:  # read again from an offset before the crash
            proc.handle(kind, ev, pos)
        assert post_click(proc) == post_click(clean), lost
        assert proc.ledger.day_totals("c1", "1970-01-01")["conversions"] == clean.ledger.day_totals(
            "c1", "1970-01-01")["conversions"]


# -- a campaign's time zone changes between counting an event and reading it again ------------------------------

ONE_AM_UTC = 1_773_104_400_000  # 2026-03-10 01:00 UTC: still 2026-03-09 in New York
CLICK_MICROS = 2_000_000  # the value per click of tests.helpers.campaign


def zoned(camps: Campaigns, tz: str) -> None:
    camps.by_id["c1"] = parse_campaign(campaign(flight={"start": "2020-01-01", "end": "2099-12-31", "timezone": tz}))


def zoned_ledger(tz: str) -> tuple[SpendLedger, Campaigns]:
    camps = Campaigns()
    zoned(camps, tz)
    return SpendLedger({}, {}, camps.day_of, camps.click_value), camps


def impressions_and_clicks(n: int = 10) -> list[tuple[str, dict, tuple[str, int]]]:
    """`n` impressions and `n` clicks at 01:00 UTC, each topic on its own partition, with their positions."""
    out = []
    for i in range(n):
        out.append(("impressions", make_event("impressions", f"imp:b{i}", ONE_AM_UTC + i, bid_id=f"b{i}",
                                              campaign="c1", creative="cr1"), ("impressions:0", i)))
        out.append(("clicks", make_event("clicks", f"click:b{i}", ONE_AM_UTC + 60_000 + i, bid_id=f"b{i}",
                                         campaign="c1", creative="cr1"), ("clicks:0", i)))
    return out


def all_days(lg: SpendLedger) -> tuple[int, int, int]:
    return (sum(t["impressions"] for t in lg.totals.values()), sum(t["clicks"] for t in lg.totals.values()),
            sum(t["value"] for t in lg.totals.values()))


@pytest.mark.parametrize("lost", ["nothing", "seen", "totals"])
def test_a_time_zone_change_does_not_count_a_message_read_again(lost: str) -> None:
    """Counted under the UTC date, read again after the campaign moved to New York (a group rewound, or a crash
    that lost the `seen` or the totals writes of the second half): each event is counted once, on one day."""
    log = impressions_and_clicks()
    lg, camps = zoned_ledger("UTC")
    for kind, ev, pos in log[:10]:
        assert lg.apply(kind, ev, pos)
    saved = {"seen": copy.deepcopy(lg.seen), "totals": copy.deepcopy(lg.totals)}
    for kind, ev, pos in log[10:]:
        assert lg.apply(kind, ev, pos)
    if lost != "nothing":
        table = getattr(lg, lost)
        table.clear()
        table.update(saved[lost])
    zoned(camps, "America/New_York")
    for kind, ev, pos in log:
        lg.apply(kind, ev, pos)
    assert all_days(lg) == (10, 10, 10 * CLICK_MICROS)
    assert set(lg.totals) == {"c1|2026-03-10"}, "every event stays on the day it was counted on"
    assert not lg.apply("impressions", log[0][1], ("impressions:0", 99))  # and a re-sent copy is still a duplicate
    new = make_event("impressions", "imp:new", ONE_AM_UTC, bid_id="new", campaign="c1", creative="cr1")
    assert lg.apply("impressions", new, ("impressions:0", 10))  # a new event takes the new zone's date
    assert lg.day_totals("c1", "2026-03-09")["impressions"] == 1


def test_a_seen_entry_of_an_older_worker_without_its_day_still_recovers() -> None:
    lg, _ = zoned_ledger("UTC")
    imp = make_event("impressions", "imp:b1", ONE_AM_UTC, bid_id="b1", campaign="c1", creative="cr1")
    lg.seen["imp:b1"] = [ONE_AM_UTC, "impressions:0", 4]  # its totals write was lost
    assert lg.apply("impressions", imp, ("impressions:0", 4))
    assert not lg.apply("impressions", imp, ("impressions:0", 4))
    assert lg.seen["imp:b1"][3] == "2026-03-10" and lg.day_totals("c1", "2026-03-10")["impressions"] == 1


# -- only a bill's own day is read: other events count on their campaign's local date --------------------------

@pytest.mark.parametrize("kind", ["impressions", "clicks", "conversions", "wins", "losses"])
@pytest.mark.parametrize("day", ["1999-01-01", "garbage", 20991231, "2030-01-01", "x", "2026-03-10", None])
def test_a_non_billing_event_counts_on_its_campaigns_date_whatever_day_it_names(kind: str, day: object) -> None:
    lg, _ = zoned_ledger("America/New_York")
    fields = {"bid_id": "b1", "campaign": "c1", "creative": "cr1", "price": 5, "value": 7}
    if day is not None:
        fields["day"] = day
    ev = check_event(kind, orjson.dumps(make_event(kind, f"{kind}:b1", ONE_AM_UTC, **fields)))  # admitted as is
    assert lg.apply(kind, ev, (f"{kind}:0", 0))
    assert set(lg.totals) == {"c1|2026-03-09"}  # 21:00 the evening before, in New York


def test_a_bill_counts_on_its_own_day() -> None:
    lg, _ = zoned_ledger("America/New_York")
    ev = make_event("billing", "bill:b1", ONE_AM_UTC, bid_id="b1", campaign="c1", cost=5, day="2026-03-10")
    assert lg.apply("billing", ev, ("billing:0", 0))
    assert set(lg.totals) == {"c1|2026-03-10"}  # the day its bidder settled it against


def test_a_bill_from_a_bidder_that_did_not_know_the_campaign_counts_on_the_campaigns_local_day() -> None:
    """A warming bidder cannot tell a Tokyo campaign's date: it leaves the day out, and the ledger, which knows the
    campaign, dates the bill in Tokyo (20:26 UTC on 28 May is 29 May there), as it dates clicks and impressions."""
    now = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
    events: list = []
    warming = BidEngine(EngineConfig(secret=b"s", bidder_id="b"), [], ModelSnapshot.empty(),
                        sink=lambda kind, key, ev: events.append(ev), clock=lambda: now)
    burl = notice_urls("http://b", b"s", "b-1", "tok", "cr1", 2_000_000, int(now) + 60, "x", "b")[1]
    assert warming.notice("bill", burl.split("?", 1)[1].replace("${AUCTION_PRICE}", "1.5")) == "ok"
    [ev] = events
    assert "day" not in ev
    campaigns = Campaigns()
    campaigns.by_id["tok"] = parse_campaign(campaign(id="tok", flight={"timezone": "Asia/Tokyo"}))
    lg = SpendLedger({}, {}, day_of=campaigns.day_of, click_value=lambda c: 0)
    assert lg.apply("billing", check_event("billing", ev))
    assert lg.day_totals("tok", "2026-05-29")["spend"] == 1500 and lg.day_totals("tok", "2026-05-28")["spend"] == 0


def test_a_click_naming_another_campaign_than_its_bid_is_refused_before_it_counts() -> None:
    proc = processor()
    proc.handle("bids", make_event("bids", "bid:b1", 1000, bid_id="b1", campaign="c1", creative="cr1", price=1,
                                   pctr=0.1, features=[1]))
    stray = make_event("clicks", "click:b1", 2000, bid_id="b1", campaign="c2")
    with pytest.raises(EventError, match="campaign c1"):
        proc.handle("clicks", stray)
    assert not proc.ledger.totals and proc.attribution.pending["b1"]["clk"] is None  # nothing applied
    proc.handle("clicks", make_event("clicks", "click:b1", 2000, bid_id="b1", campaign="c1"))
    assert proc.ledger.day_totals("c1", "1970-01-01")["clicks"] == 1


def test_a_day_total_past_what_stays_exact_is_refused_before_anything_is_applied() -> None:
    """A producer at the wrong scale: each conversion within the per-event cap, their sum past 2**53 micros."""
    proc = processor()
    for i in range(9):  # 9 x 10**15 micros: under 2**53
        proc.handle("conversions", make_event("conversions", f"conv:{i}", 1000, bid_id=f"b{i}", campaign="c1",
                                              value=10**15))
    before = copy.deepcopy(proc.ledger.totals), copy.deepcopy(proc.attribution.pending)
    with pytest.raises(EventError, match="past 9007199254740992 micros") as refused:
        proc.handle("conversions", make_event("conversions", "conv:9", 1000, bid_id="b9", campaign="c1", value=10**15))
    assert refused.value.field == "value"
    assert (proc.ledger.totals, proc.attribution.pending) == before  # nothing of it applied
    assert orjson.dumps(proc.ledger.totals)  # what reaches the changelog still encodes
    assert proc.ledger.day_totals("c1", "1970-01-01")["value"] == 9 * 10**15
    lg = ledger()
    assert lg.apply("billing", bill(1, 2**53 - 5))
    with pytest.raises(EventError):
        lg.check_room("billing", bill(2, 6))
    lg.check_room("billing", bill(2, 5))  # exactly at the cap is still exact


def test_the_embedded_bus_counts_a_bill_of_a_campaign_it_was_not_given_and_dead_letters_by_field() -> None:
    engine = BidEngine(EngineConfig(secret=b"s", bidder_id="b", lease_slice=1000), [parse_campaign(campaign(id="c1"))],
                       ModelSnapshot.empty(), sink=lambda kind, key, ev: None, clock=lambda: 1_767_268_800.0)
    bus = EmbeddedBus(engine)
    ghost = make_event("billing", "bill:g1", 1_767_268_800_000, bid_id="g1", campaign="ghost", cost=7, bidder="b",
                       day="2026-01-01")
    bus.emit("billing", "ghost", ghost)  # a campaign added after the bus was built: no lease to charge, no crash
    assert bus.delivery.ledger.day_totals("ghost", "2026-01-01")["spend"] == 7 and not bus.granters
    bus.emit("billing", "c1", {**ghost, "id": "bill:c1", "campaign": "c1"})
    assert list(bus.granters) == [("c1", "2026-01-01")]  # a known campaign's bill reaches its lease
    bus.emit("billing", "c1", {**ghost, "id": "bill:bad", "campaign": "c1|2026-01-01"})
    assert [(d["reason"], d["field"]) for d in bus.deadletters] == [("bad_value", "campaign")]


def test_a_restarted_worker_resumes_its_dedup_horizon_from_the_ids_it_remembers() -> None:
    from streams.ledger import newest_seen

    seen = [[1_000, "billing:0", 4, "2026-01-01"], [9_000, "billing:1", 2, "2026-01-01"], [5_000, "", -1, "x"]]
    assert newest_seen(seen) == 9_000
    assert newest_seen([]) == 0
    assert newest_seen([None, [], ["x"], [True], [7_000.5], [3]]) == 3  # malformed entries are passed over
