"""The bid engine on its own: protocol rules, floors, deals, blocks, privacy and frequency caps."""

from __future__ import annotations

import datetime as dt
import math
import random
import re
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from bidder.campaigns import Campaign, load_campaigns, parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.openrtb import parse_request
from bidder.pacing import PacingState
from models.snapshot import ModelSnapshot
from tests.helpers import body, campaign, request

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "loadtest" / "examples").glob("*.json"))
NOW = 1_780_000_000.0  # a fixed instant inside every example campaign's flight


def engine(camps: list, events: list | None = None, **cfg) -> BidEngine:
    sink = (lambda k, key, ev: events.append((k, ev))) if events is not None else (lambda *a: None)
    cfg.setdefault("explore_below", 0)
    return BidEngine(EngineConfig(secret=b"s", **cfg), camps, ModelSnapshot.empty(), sink=sink, clock=lambda: NOW)


def bid(e: BidEngine, doc: dict, exchange: str = "x"):
    return e.bid(parse_request(body(doc)), exchange, math.inf)


def test_each_example_request_gets_a_valid_bid() -> None:
    e = engine(load_campaigns(ROOT / "deploy" / "campaigns.example.json"))
    assert len(EXAMPLES) == 6
    for path in EXAMPLES:
        doc = orjson.loads(path.read_bytes())
        out = bid(e, doc)
        assert out.status == 200, f"{path.name}: no bid ({out.reason})"
        resp = orjson.loads(out.body)
        assert resp["id"] == doc["id"] and resp["cur"] in (doc.get("cur") or ["USD"])
        imps = {i["id"]: i for i in doc["imp"]}
        for b in resp["seatbid"][0]["bid"]:
            imp = imps[b["impid"]]
            floor = imp.get("bidfloor", 0)
            deal = next((d for d in (imp.get("pmp") or {}).get("deals", []) if d["id"] == b.get("dealid")), None)
            assert b["price"] >= (deal["bidfloor"] if deal else floor), path.name
            assert set(b["cat"]).isdisjoint(doc.get("bcat", [])) and not set(b["adomain"]) & set(doc.get("badv", []))
            for url in (b["nurl"], b["burl"], b["lurl"]):
                assert urlsplit(url).path.startswith("/notice/") and "s=" in url
            if "banner" in imp and "w" in b:
                sizes = [(imp["banner"].get("w"), imp["banner"].get("h"))] + [
                    (f["w"], f["h"]) for f in imp["banner"].get("format", [])]
                assert (b["w"], b["h"]) in sizes, path.name
            if (imp.get("pmp") or {}).get("private_auction"):
                assert b.get("dealid"), path.name


def test_floor_above_value_means_no_bid() -> None:
    e = engine([parse_campaign(campaign())])
    doc = request()
    doc["imp"][0]["bidfloor"] = 19.0
    out = bid(e, doc)
    assert out.status == 204 and out.reason == "below_floor"


def test_blocks_and_currency_and_seat() -> None:
    e = engine([parse_campaign(campaign())])
    assert bid(e, request(bcat=["IAB3"])).reason == "blocked_category"  # parent category blocks IAB3-1
    assert bid(e, request(badv=["shop.example"])).reason == "blocked_advertiser"
    assert bid(e, request(cur=["EUR"])).reason == "currency"
    assert bid(e, request(wseat=["someone-else"])).reason == "seat"
    assert bid(e, request()).status == 200


def test_a_multi_impression_answer_keeps_one_currency_and_still_bids_on_every_impression() -> None:
    """The first pick sets the answer's currency; a later impression whose best bid is in another currency takes
    the best one in the answer's currency rather than going unbid."""
    both = parse_campaign(campaign(id="usd", creatives=[
        {"id": "a", "type": "banner", "w": 300, "h": 250, "cat": ["IAB3-1"], "adm": "<img>"},
        {"id": "b", "type": "banner", "w": 728, "h": 90, "cat": ["IAB3-1"], "adm": "<img>"}]))
    dearer = parse_campaign(campaign(
        id="eur", currency="EUR", goal={"type": "cpc", "value_per_click": 8.0, "max_bid_cpm": 80.0},
        creatives=[{"id": "w", "type": "banner", "w": 728, "h": 90, "cat": ["IAB3-1"], "adm": "<img>"}]))
    doc = request(cur=["USD", "EUR"], imp=[{"id": "1", "banner": {"w": 300, "h": 250}},
                                           {"id": "2", "banner": {"w": 728, "h": 90}}])
    alone = orjson.loads(bid(engine([dearer]), request(cur=["USD", "EUR"], imp=doc["imp"][1:])).body)
    assert alone["cur"] == "EUR"  # on its own, the second impression goes to the EUR campaign
    out = orjson.loads(bid(engine([both, dearer]), doc).body)
    assert out["cur"] == "USD"
    assert sorted((b["impid"], b["cid"]) for b in out["seatbid"][0]["bid"]) == [("1", "usd"), ("2", "usd")]


def test_size_must_fit() -> None:
    e = engine([parse_campaign(campaign())])
    doc = request()
    doc["imp"][0]["banner"] = {"w": 728, "h": 90}
    assert bid(e, doc).status == 204


def test_deal_floor_applies_before_imp_floor() -> None:
    camp = parse_campaign(campaign(targeting={"countries": ["USA"], "deals": ["d1"]}))
    e = engine([camp])
    doc = request()
    doc["imp"][0]["pmp"] = {"private_auction": 1, "deals": [{"id": "d1", "bidfloor": 1.5}]}
    out = bid(e, doc)
    b = orjson.loads(out.body)["seatbid"][0]["bid"][0]
    assert b["dealid"] == "d1" and b["price"] >= 1.5
    doc["imp"][0]["pmp"]["deals"][0]["bidfloor"] = 50.0
    assert bid(e, doc).reason == "below_floor"


@pytest.mark.parametrize(("private", "deal_only", "bids"), [(0, False, True), (1, False, False), (0, True, False)])
def test_a_deal_floored_in_another_currency_leaves_the_open_auction_open(private: int, deal_only: bool,
                                                                          bids: bool) -> None:
    """A USD campaign cannot bid on a deal floored in EUR.  Where an open auction runs beside the deal, it bids there
    (at the impression's USD floor, with no dealid) unless it is deal-only; in a private auction it sits out."""
    camp = parse_campaign(campaign(targeting={"countries": ["USA"], "deals": ["d"], "deal_only": deal_only}))
    doc = request(cur=["USD", "EUR"])
    doc["imp"][0].update(bidfloor=0.5, pmp={"private_auction": private,
                                            "deals": [{"id": "d", "bidfloor": 1.0, "bidfloorcur": "EUR"}]})
    out = bid(engine([camp]), doc)
    if not bids:
        assert out.status == 204 and out.reason == "currency"
        return
    b = orjson.loads(out.body)["seatbid"][0]["bid"][0]
    assert out.status == 200 and "dealid" not in b and b["price"] >= 0.5 and orjson.loads(out.body)["cur"] == "USD"


def test_of_several_deals_a_campaign_bids_on_the_cheapest_in_its_currency() -> None:
    camp = parse_campaign(campaign(targeting={"countries": ["USA"], "deals": ["dear", "cheap", "euro"]}))
    doc = request()
    doc["imp"][0]["pmp"] = {"private_auction": 1, "deals": [
        {"id": "dear", "bidfloor": 50.0}, {"id": "euro", "bidfloor": 0.5, "bidfloorcur": "EUR"},
        {"id": "cheap", "bidfloor": 1.5}, {"id": "other", "bidfloor": 0.1}]}
    b = orjson.loads(bid(engine([camp]), doc).body)["seatbid"][0]["bid"][0]
    assert b["dealid"] == "cheap" and b["price"] >= 1.5  # the first it may bid on (dear) is out of its reach


def test_frequency_cap_counts_billed_impressions_per_hashed_user() -> None:
    events: list = []
    e = engine([parse_campaign(campaign(frequency_cap={"per_hour": 1}))], events)
    out = bid(e, request())
    b = orjson.loads(out.body)["seatbid"][0]["bid"][0]
    assert bid(e, request()).status == 200  # bids alone do not count
    assert e.notice("bill", urlsplit(b["burl"]).query.replace("${AUCTION_PRICE}", "1.0")) == "ok"
    assert bid(e, request()).reason == "frequency_cap"
    assert bid(e, request(user={"id": "someone-else"})).status == 200
    billing = [ev for k, ev in events if k == "billing"]
    assert billing and billing[0]["cost"] == 1000 and "user-42" not in orjson.dumps(billing).decode()


def test_a_caps_clock_follows_a_time_zone_change_made_in_place() -> None:
    """A change of time zone alone is swapped into the index without a rebuild: the cap kept counting on the old
    zone's clock while bills recorded on the new one's, so the campaign bid past its cap."""
    doc = campaign(frequency_cap={"per_hour": 1, "per_day": 1})
    e = engine([parse_campaign(doc)])
    first = orjson.loads(bid(e, request()).body)["seatbid"][0]["bid"][0]
    e.upsert_campaign(parse_campaign({**doc, "flight": {**doc["flight"], "timezone": "Asia/Tokyo"}}))
    assert e.index.caps["c1"][2] == "Asia/Tokyo"
    assert e.notice("bill", urlsplit(first["burl"]).query.replace("${AUCTION_PRICE}", "1.0")) == "ok"
    assert bid(e, request()).reason == "frequency_cap"


def test_shared_frequency_caps_count_every_bidders_billing_events_once() -> None:
    """With a broker the caps follow the billing topic: this bidder's own notice counts when its event comes back,
    like any other bidder's, and an event sent twice counts once."""
    events: list = []
    free = campaign(id="free", targeting={"domains": ["elsewhere.example"]})  # uncapped, and not on this site
    e = engine([parse_campaign(campaign(frequency_cap={"per_day": 2})), parse_campaign(free)], events,
               shared_frequency=True)
    b = orjson.loads(bid(e, request()).body)["seatbid"][0]["bid"][0]
    assert e.notice("bill", urlsplit(b["burl"]).query.replace("${AUCTION_PRICE}", "1.0")) == "ok"
    assert bid(e, request()).status == 200  # not counted from the notice itself ...
    [own] = [ev for k, ev in events if k == "billing"]
    assert e.count_billed(own) and not e.count_billed(own)  # ... but from its event, once
    assert bid(e, request()).status == 200  # one of two
    other = {**own, "id": "bill:another-bidders-bid", "bid_id": "another-bidders-bid"}
    assert e.count_billed(other)
    assert bid(e, request()).reason == "frequency_cap"
    assert bid(e, request(user={"id": "someone-else"})).status == 200
    assert not e.count_billed({**other, "id": "bill:no-user", "user": ""})  # restricted: no user hash to count
    assert not e.count_billed({**other, "id": "bill:uncapped", "campaign": "free"})
    assert not e.count_billed({"id": "bill:junk", "campaign": own["campaign"], "user": own["user"], "ts": "soon"})
    # at start, the day's billing can come before the campaigns: kept, and counted when the campaign arrives
    later = {**other, "id": "bill:early", "campaign": "later"}
    assert not e.count_billed(later)
    e.upsert_campaign(parse_campaign(campaign(id="later", frequency_cap={"per_day": 1})))
    assert bid(e, request()).status == 204 and "later" in e.index.campaigns  # capped for the user by the kept event
    assert bid(e, request(user={"id": "someone-else"})).status == 200
    assert not e.count_billed(later)  # and only once


def test_restricted_requests_bid_on_context_or_not_at_all() -> None:
    gdpr = request(regs={"gdpr": 1})
    assert bid(engine([parse_campaign(campaign())]), gdpr).status == 200
    assert bid(engine([parse_campaign(campaign())], restricted_policy="nobid"), gdpr).reason == "privacy"
    capped = engine([parse_campaign(campaign(frequency_cap={"per_day": 3}))])
    assert bid(capped, gdpr).reason == "frequency_cap"  # a cap cannot be kept without a user id


def test_notices_are_counted_once() -> None:
    events: list = []
    e = engine([parse_campaign(campaign())], events)
    b = orjson.loads(bid(e, request()).body)["seatbid"][0]["bid"][0]
    q = urlsplit(b["nurl"]).query.replace("${AUCTION_PRICE}", "1.0")
    assert e.notice("win", q) == "ok"
    assert e.notice("win", q) == "replayed"
    assert [k for k, _ in events].count("wins") == 1


@pytest.mark.parametrize("paused", [True, False])
def test_paused_campaigns_do_not_bid(paused: bool) -> None:
    e = engine([parse_campaign(campaign(status="paused" if paused else "active"))])
    assert (bid(e, request()).status == 204) is paused


def test_live_set_follows_dayparting_at_quarter_hours_and_budget_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kathmandu is UTC+5:45, so its 10:00 falls at 04:15 UTC: the live set must turn at quarter hours, not only at
    whole UTC hours.  Between quarter hours the once-a-second refresh leaves the campaigns alone."""
    midnight = NOW // 86400 * 86400
    opens = midnight + 4 * 3600 + 15 * 60
    clock = [opens - 2.0]
    camp = parse_campaign(campaign(dayparting=[10],
                                   flight={"start": "2020-01-01", "end": "2099-12-31", "timezone": "Asia/Kathmandu"}))
    e = BidEngine(EngineConfig(secret=b"s", explore_below=0), [camp], ModelSnapshot.empty(), sink=lambda *a: None,
                  clock=lambda: clock[0])
    assert bid(e, request()).reason == "not_live"
    walks: list[dt.datetime] = []
    in_flight = Campaign.in_flight

    def counted_in_flight(self: Campaign, utc: dt.datetime) -> bool:
        walks.append(utc)
        return in_flight(self, utc)

    monkeypatch.setattr(Campaign, "in_flight", counted_in_flight)
    clock[0] = opens + 0.5
    assert bid(e, request()).status == 200
    assert len(walks) == 1
    for step in range(1, 20):  # a minute of once-a-second refreshes inside the quarter hour
        clock[0] = opens + 0.5 + 3.0 * step
        assert bid(e, request()).status == 200
    assert len(walks) == 1
    day = dt.datetime.fromtimestamp(opens, dt.UTC).date().isoformat()
    e.set_pacing(PacingState(campaign="c1", day=day, exhausted=True))
    assert bid(e, request()).reason == "not_live"  # the budget's end takes effect with the next request
    e.set_pacing(PacingState(campaign="c1", day=day, exhausted=False))
    assert bid(e, request()).status == 200
    clock[0] = opens + 3600.0  # 11:15 local, outside the daypart
    assert bid(e, request()).reason == "not_live"


def test_the_first_request_past_a_quarter_hour_sees_that_quarter_hours_live_set() -> None:
    """The once-a-second refresh must not carry the previous quarter hour's live set into a new one: a request a
    few tenths of a second past the hour goes to the campaign whose daypart starts then, never the one that ended."""
    hour = NOW // 3600 * 3600
    before = dt.datetime.fromtimestamp(hour - 1, dt.UTC).hour
    camps = [parse_campaign(campaign(id="ends", dayparting=[before])),
             parse_campaign(campaign(id="starts", dayparting=[(before + 1) % 24]))]
    clock = [hour - 0.2]
    e = BidEngine(EngineConfig(secret=b"s", explore_below=0), camps, ModelSnapshot.empty(), sink=lambda *a: None,
                  clock=lambda: clock[0])
    for t, expected in ((hour - 0.2, "ends"), (hour + 0.3, "starts"), (hour + 0.79, "starts"), (hour + 1.5, "starts")):
        clock[0] = t
        out = bid(e, request())
        assert out.status == 200 and orjson.loads(out.body)["seatbid"][0]["bid"][0]["cid"] == expected, t - hour


def test_a_budget_running_out_moves_its_campaign_alone_out_of_the_live_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recomputing the live set walks every campaign: a budget that runs out (or comes back) moves its campaign
    alone, and leaves the set and its slots exactly as a full recompute would."""
    camps = [parse_campaign(campaign(id=f"c{i}")) for i in range(30)]
    e = engine(camps)
    assert bid(e, request()).status == 200
    walks: list[str] = []
    in_flight = Campaign.in_flight

    def counted_in_flight(self: Campaign, utc: dt.datetime) -> bool:
        walks.append(self.id)
        return in_flight(self, utc)

    monkeypatch.setattr(Campaign, "in_flight", counted_in_flight)
    day = e.campaign_day(camps[0], NOW)
    for exhausted in (True, False):
        for i in range(29):  # every budget but c29's runs out (then comes back)
            e.set_pacing(PacingState(campaign=f"c{i}", day=day, exhausted=exhausted))
        out = bid(e, request())
        assert orjson.loads(out.body)["seatbid"][0]["bid"][0]["cid"] == "c29" if exhausted else out.status == 200
        assert walks == [f"c{i}" for i in range(29)]  # each change looked at its own campaign, the bid at none
        walks.clear()
        assert e.live() == e._live_campaigns(NOW)  # the same set as a full walk
        index = e.index
        assert index.live_bits(e.live()) == sum(1 << s for s, cid in enumerate(index.slot_campaign) if cid in e.live())
        walks.clear()


def test_prepare_builds_what_a_campaign_change_invalidates_before_the_next_request() -> None:
    e = engine([parse_campaign(campaign()), parse_campaign(campaign(id="c2"))], explore_below=200)
    e.rng = random.Random(3)  # the draw pools come from it: a seeded run, where no draw prices under the floor
    assert bid(e, request()).status == 200
    first = e._tables
    # a targeting change: the index is rebuilt (a pause alone is swapped into it in place)
    e.upsert_campaign(parse_campaign(campaign(id="c2", status="paused", targeting={"countries": ["FRA"]})))
    e.prepare()
    prepared = e._tables
    assert prepared is not None
    assert prepared is not first and prepared.index is e.index and e.index._built
    assert e.live() == frozenset({"c1"})
    assert bid(e, request()).status == 200
    assert e._tables is prepared  # the request rebuilt nothing
    e.prepare()  # nothing changed since: nothing is rebuilt or redrawn
    assert e._tables is prepared


def test_a_fresh_bidder_bids_on_the_examples_only_when_its_exploration_draw_clears_the_floor() -> None:
    """What the README tells a first-time user: with no model, a creative's pCTR is a Thompson draw from the prior,
    and a low draw prices under the floor.  Without exploration the prior mean clears every example's floor."""
    camps = load_campaigns(ROOT / "deploy" / "campaigns.example.json")
    exploring = BidEngine(EngineConfig(secret=b"s", explore_below=200), camps, ModelSnapshot.empty(),
                          sink=lambda *a: None, clock=lambda: NOW, rng=random.Random(7))
    for path in EXAMPLES:
        doc = orjson.loads(path.read_bytes())
        outs = [bid(exploring, doc) for _ in range(300)]
        share = sum(o.status == 200 for o in outs) / len(outs)
        assert 0.3 < share < 0.8, (path.name, share)  # 0.40-0.65 over 1,000 requests each
        assert {o.reason for o in outs if o.status == 204} == {"below_floor"}, path.name


def test_new_creatives_are_explored_with_posterior_draws() -> None:
    e = engine([parse_campaign(campaign())], explore_below=200)
    outs = [bid(e, request()) for _ in range(40)]
    prices = {orjson.loads(o.body)["seatbid"][0]["bid"][0]["price"] for o in outs if o.status == 200}
    assert len(prices) > 10  # draws vary; with exploration off the price is one fixed value
    e_off = engine([parse_campaign(campaign())])
    assert len({orjson.loads(bid(e_off, request()).body)["seatbid"][0]["bid"][0]["price"] for _ in range(5)}) == 1


def test_a_request_of_many_impressions_stops_when_its_time_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each impression takes time; one that would finish past the deadline gets 204, and no bid is logged."""
    events: list = []
    e = engine([parse_campaign(campaign())], events, explore_below=0)
    imps = [{"id": str(i), "banner": {"w": 300, "h": 250}} for i in range(8)]
    assert bid(e, request(imp=imps)).bids == 8  # all eight bid when time is plenty
    events.clear()
    ticks = iter(range(10_000))
    monkeypatch.setattr("bidder.engine.time.perf_counter", lambda: next(ticks) * 0.001)  # 1 ms per look at the clock
    out = e.bid(parse_request(body(request(imp=imps))), "x", 0.0055)
    assert (out.status, out.reason) == (204, "deadline") and not events
    ticks = iter(range(10_000))
    out = e.bid(parse_request(body(request(imp=imps[:2]))), "x", 0.0055)  # two decided by 2 ms, signed in 0.1 ms
    assert out.status == 200 and out.bids == 2


def test_a_floor_between_two_micros_is_met_not_rounded_under() -> None:
    """A floor of 1.0000004 CPM: a bid of 1.0 (the nearest micro) would be under it."""
    from bidder.targeting import floor_micros

    assert (floor_micros(1.0000004), floor_micros(0.83), floor_micros(2.5)) == (1_000_001, 830_000, 2_500_000)
    # an exchange's float noise: its 0.1 + 0.2 is over 0.3, and a bid of 0.3 would be under it
    assert floor_micros(0.1 + 0.2) == 300_001 and floor_micros(1.0000000004) == 1_000_001
    assert all(floor_micros(f) / 1e6 >= f for f in (0.1 + 0.2, 0.83, 1.1, 2.675, 1e-7, 123.456789, 1e12))
    camp = parse_campaign(campaign(targeting={"countries": ["USA"], "deals": ["d"]},
                                   goal={"type": "cpc", "value_per_click": 5.0, "max_bid_cpm": 20.0}))
    doc = request()
    doc["imp"][0]["pmp"] = {"deals": [{"id": "d", "bidfloor": 1.0000004, "at": 3}]}
    b = orjson.loads(bid(engine([camp]), doc).body)["seatbid"][0]["bid"][0]
    assert b["dealid"] == "d" and b["price"] == 1.000001  # a fixed-price deal: its floor, rounded up to the micro


def test_every_bidder_gets_an_id_of_its_own() -> None:
    """Bidders started together (in containers, each its pid 1, in the same second) must still differ: bid ids,
    billing event ids and lease grants are keyed by the bidder id."""
    ids = [EngineConfig(secret=b"s").bidder_id for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", i) for i in ids)  # it names the notice relay's socket


def _first_price_market(states_min_to_win: bool, values: tuple[float, ...], n: int = 3000,
                        shade: bool = True) -> tuple[BidEngine, list]:
    """First-price auctions against a market price uniform on 0.5-5.0 CPM; the exchange fills the minimum to win
    into the win URL or leaves it out.  Returns the engine and its last 500 (paced value, price) pairs."""
    rng = random.Random(11)
    t = [NOW]
    camps = [parse_campaign(campaign(id=f"v{i}", goal={"type": "cpc", "value_per_click": v, "max_bid_cpm": 20.0}))
             for i, v in enumerate(values)]
    e = BidEngine(EngineConfig(secret=b"s", explore_below=0, shade=shade), camps, ModelSnapshot.empty(),
                  sink=lambda *a: None, clock=lambda: t[0])
    doc = request(at=1)
    doc["imp"][0]["bidfloor"] = 0.0
    late = []
    for i in range(n):
        t[0] += 0.1  # the landscape takes in new prices once a minute of this clock
        for c in camps:  # one campaign at a time, so each bids its own value
            e.set_campaigns([x for x in camps if x is c]) if len(camps) > 1 else None
            out = bid(e, doc)
            b = orjson.loads(out.body)["seatbid"][0]["bid"][0]
            market = rng.uniform(0.5, 5.0)
            if b["price"] >= market:
                query = urlsplit(b["nurl"]).query.replace("${AUCTION_PRICE}", repr(b["price"]))
                e.notice("win", query.replace("${AUCTION_MIN_TO_WIN}", f"{market:.2f}" if states_min_to_win else ""))
            else:
                query = urlsplit(b["lurl"]).query.replace("${AUCTION_LOSS}", "102")
                e.notice("loss", query.replace("${AUCTION_MIN_TO_WIN}", f"{market:.2f}"))
            if i >= n - 500:
                late.append((values[camps.index(c)], b["price"]))
    return e, late


def test_first_price_bids_are_shaded_when_wins_name_the_minimum_to_win() -> None:
    """Wins' clearing price in a first-price auction is our own bid: the market price comes from the minimum to
    win in the win URL.  Against a uniform 0.5-5.0 market, a value of 3.0 is best bid at about 1.75."""
    e, late = _first_price_market(True, (3.0,))
    prices = [p for _, p in late]
    assert max(prices) < 2.2 and min(prices) > 1.3, (min(prices), max(prices))
    assert e.landscapes["USD"].observations >= 2000


def test_an_engine_told_not_to_shade_bids_its_paced_value_whatever_the_market_prices() -> None:
    """The demo's fixed-bid baseline: one CPM on every impression it can buy, shaded by nothing."""
    e, late = _first_price_market(True, (3.0,), n=1500, shade=False)
    assert e.landscapes["USD"].observations >= 1000  # the prices are seen, and left unused
    assert {p for _, p in late} == {late[0][1]} and late[0][1] > 2.5


def test_first_price_wins_without_a_market_price_still_let_bids_shade() -> None:
    """An exchange that names no market price on wins: each win says only "at most our bid".  Counted as that
    (not left out, which kept only the losses' prices, all above our bids), bids with values spread over the
    market still come down below their values."""
    e, late = _first_price_market(False, (2.0, 3.0, 4.0), n=1500)
    for value in (3.0, 4.0):  # best bids (value + 0.5) / 2; below the lowest bid (2.0) no market price is ever seen
        prices = [p for v, p in late if v == value]
        assert max(prices) < (value + 0.5) / 2 + 0.3, (value, max(prices))
    assert e._new_bounds or e.landscapes["USD"]._bounds  # the wins were counted, as bounds


def test_site_domains_and_bundles_match_whatever_their_case() -> None:
    """Domain names have no case (RFC 4343): a campaign targeting News.Example must bid on news.example."""
    e = engine([parse_campaign(campaign(targeting={"countries": ["USA"], "domains": ["News.Example"]}))])
    for domain in ("news.example", "NEWS.example"):
        doc = request()
        doc["site"]["domain"] = domain
        assert bid(e, doc).status == 200, domain
    doc = request()
    doc["site"]["domain"] = "other.example"
    assert bid(e, doc).reason == "targeting"


def test_a_notice_stays_valid_for_the_whole_exp_the_bid_states() -> None:
    """Notice expiry was the auction's whole second plus `exp`: up to a second short of what the bid promised."""
    clock = [NOW + 0.9]
    e = BidEngine(EngineConfig(secret=b"s", explore_below=0), [parse_campaign(campaign())], ModelSnapshot.empty(),
                  sink=lambda *a: None, clock=lambda: clock[0])
    out = e.bid(parse_request(body(request())), "x", math.inf)
    assert out.status == 200
    b = orjson.loads(out.body)["seatbid"][0]["bid"][0]
    clock[0] = NOW + 0.9 + b["exp"] - 0.05  # inside the bid's stated life
    assert e.notice("bill", urlsplit(b["burl"]).query.replace("${AUCTION_PRICE}", "0.5")) == "ok"
