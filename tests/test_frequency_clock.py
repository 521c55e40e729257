"""Frequency caps count the campaign's own hours and days, in its time zone, wherever the impression is billed."""

from __future__ import annotations

import datetime as dt
import math
import random
import zoneinfo
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.frequency import FrequencyStore, cap_buckets, cap_clock, counted_since
from bidder.openrtb import parse_request
from models.snapshot import ModelSnapshot
from tests.helpers import body, campaign, request

EPOCH = dt.date(1970, 1, 1)


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, at: str) -> None:
        self.now = utc(at)

    def __call__(self) -> float:
        return self.now

    def set(self, at: str) -> None:
        self.now = utc(at)


def capped_engine(timezone: str, clock: Clock, **cap: int) -> BidEngine:
    doc = campaign(frequency_cap=cap)
    doc["flight"] = {**doc["flight"], "timezone": timezone}
    return BidEngine(EngineConfig(secret=b"s", explore_below=0), [parse_campaign(doc)], ModelSnapshot.empty(),
                     sink=lambda *a: None, clock=clock)


def bid_on(e: BidEngine) -> dict | None:
    out = e.bid(parse_request(body(request(user={"id": "reader-1"}))), "x", math.inf)
    return orjson.loads(out.body)["seatbid"][0]["bid"][0] if out.status == 200 else None


def show(e: BidEngine) -> None:
    """Bid, and bill the bid: one impression the cap counts."""
    b = bid_on(e)
    assert b is not None
    assert e.notice("bill", urlsplit(b["burl"].replace("${AUCTION_PRICE}", "1.0")).query) == "ok"


def test_a_day_cap_starts_again_at_the_campaigns_midnight_not_at_utc_midnight() -> None:
    clock = Clock("2026-05-28 14:30")  # 23:30 in Tokyo
    tokyo = capped_engine("Asia/Tokyo", clock, per_day=1)
    show(tokyo)
    clock.set("2026-05-28 14:50")
    assert bid_on(tokyo) is None  # the same Tokyo day
    clock.set("2026-05-28 15:10")  # 00:10 in Tokyo: a new day there, though not in UTC
    assert bid_on(tokyo) is not None

    clock.set("2026-05-28 23:30")  # 19:30 in New York
    new_york = capped_engine("America/New_York", clock, per_day=1)
    show(new_york)
    clock.set("2026-05-29 00:30")  # a new UTC day, but 20:30 the same evening in New York
    assert bid_on(new_york) is None
    clock.set("2026-05-29 04:10")  # 00:10 in New York
    assert bid_on(new_york) is not None


def test_an_hour_cap_follows_a_half_hour_zones_clock() -> None:
    clock = Clock("2026-05-28 10:10")  # 15:40 in India
    e = capped_engine("Asia/Kolkata", clock, per_hour=1)
    show(e)
    clock.set("2026-05-28 10:25")
    assert bid_on(e) is None
    clock.set("2026-05-28 10:35")  # the same UTC hour, but 16:05 in India
    assert bid_on(e) is not None


def test_a_billed_impression_from_the_topic_counts_in_the_campaigns_day() -> None:
    clock = Clock("2026-05-28 14:55")
    e = capped_engine("Asia/Tokyo", clock, per_day=1)
    user = parse_request(body(request(user={"id": "reader-1"}))).user_key
    billed_at = int(utc("2026-05-28 14:40") * 1000)  # 23:40 in Tokyo, billed by another bidder
    assert e.count_billed({"id": "billing:b1", "user": user, "campaign": "c1", "ts": billed_at})
    assert bid_on(e) is None
    clock.set("2026-05-28 15:01")
    assert bid_on(e) is not None
    # one billed before the Tokyo midnight does not count toward the new day, read late or not
    assert e.count_billed({"id": "billing:b2", "user": user, "campaign": "c1", "ts": billed_at + 60_000})
    assert bid_on(e) is not None


ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham",
         "America/St_Johns", "Pacific/Kiritimati", "Pacific/Pago_Pago", "America/Santiago", "Asia/Tokyo"]


@pytest.mark.parametrize("timezone", ZONES)
def test_buckets_are_the_local_clocks_hour_and_day(timezone: str) -> None:
    """Across two years of instants, DST changes included, the buckets are the local date and hour."""
    rng = random.Random(timezone)
    start, end = utc("2026-01-01 00:00"), utc("2028-01-01 00:00")
    instants = [rng.uniform(start, end) for _ in range(3000)]
    # and either side of every change of offset in those years
    zone = ZoneInfo(timezone)
    t = start
    while t < end:
        if dt.datetime.fromtimestamp(t, zone).utcoffset() != dt.datetime.fromtimestamp(t + 900, zone).utcoffset():
            instants += [t + 899, t + 900, t + 900.5]
        t += 900
    for t in instants:
        local = dt.datetime.fromtimestamp(t, zone)
        day = (local.date() - EPOCH).days
        assert cap_buckets(timezone, t) == (day * 24 + local.hour, day), (timezone, t)


def test_a_restarted_bidder_reads_back_to_the_start_of_the_day_in_every_zone() -> None:
    """Just before `counted_since`, every zone was in an earlier day: whatever counts today was billed after it."""
    zones = sorted(zoneinfo.available_timezones() - {"Factory", "localtime"})
    # ordinary moments, and the evening of a day that is 25 hours long in New York (the clocks go back at 06:00 UTC)
    for at in ("2026-05-28 11:59", "2026-05-28 23:59", "2026-11-02 04:59"):
        now = utc(at)
        since = counted_since(now)
        for timezone in zones:
            assert cap_buckets(timezone, since - 1)[1] < cap_buckets(timezone, now)[1], (timezone, at)


def test_a_full_store_forgets_the_user_seen_longest_ago_not_the_one_seen_first() -> None:
    """A user counted early in the day and again since keeps the count: forgetting them lets the cap be passed while
    they are still browsing, when users idle for longer were there to forget."""
    hour, day = cap_buckets("UTC", utc("2026-05-28 09:10"))
    store = FrequencyStore(max_users=2)
    store.record("early-and-active", "c1", hour, day)
    store.record("idle", "c1", hour, day)
    store.record("early-and-active", "c1", hour, day)  # a second impression: at the cap of 2 a day
    store.record("newcomer", "c1", hour, day)  # the store is full: one user goes
    assert not store.allowed("early-and-active", "c1", 0, 2, hour, day)
    assert store.allowed("idle", "c1", 0, 1, hour, day) and len(store) == 2


def test_a_capped_user_still_asking_for_ads_is_not_the_one_forgotten() -> None:
    """A user at the cap gets no more impressions, so no more counts: the requests they keep sending are what show
    them to be about."""
    hour, day = cap_buckets("UTC", utc("2026-05-28 09:10"))
    caps = {"c1": (0, 1, "UTC")}
    store = FrequencyStore(max_users=2)
    store.record("capped", "c1", hour, day)
    store.record("idle", "c1", hour, day)
    assert store.exhausted("capped", caps, cap_clock(utc("2026-05-28 09:20"))) == ["c1"]  # another request
    store.record("newcomer", "c1", hour, day)
    assert store.exhausted("capped", caps, cap_clock(utc("2026-05-28 09:30"))) == ["c1"]
    assert store.allowed("idle", "c1", 0, 1, hour, day)  # the idle one went


def test_one_users_caps_of_several_campaigns_in_several_zones_each_keep_their_own_day() -> None:
    """One user, two campaigns: Tokyo's day turns at 15:00 UTC, New York's at 04:00 UTC (summer)."""
    store = FrequencyStore()
    caps = {"tokyo": (0, 1, "Asia/Tokyo"), "ny": (0, 1, "America/New_York"), "free": (0, 5, "UTC")}
    at = utc("2026-05-28 14:30")
    for cid, (_, _, zone) in caps.items():
        store.record("u", cid, *cap_buckets(zone, at))
    assert sorted(store.exhausted("u", caps, cap_clock(at))) == ["ny", "tokyo"]
    assert store.exhausted("u", caps, cap_clock(utc("2026-05-28 15:05"))) == ["ny"]  # a new day in Tokyo only
    assert store.exhausted("u", caps, cap_clock(utc("2026-05-29 04:05"))) == []
