"""The bid engine: one request in, a priced response (or a no-bid reason) out.

Pure domain: no sockets, no Kafka.  It reads immutable snapshots (campaign
index, model, pacing) that adapters swap whole, and hands events to a sink
callable.  The HTTP server and the embedded demo drive the very same object.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import math
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson

from bidder.campaigns import Campaign, Creative
from bidder.frequency import FrequencyStore, cap_buckets
from bidder.landscape import WinRateModel
from bidder.lease import BudgetLease
from bidder.notices import Notice, NoticeError, notice_urls, verify_notice
from bidder.openrtb import AUCTION_FIRST_PRICE, BidRequest, Imp
from bidder.pacing import PacingState, conversion_rate
from bidder.pricing import bid_price, impression_value_cpm, paced_value, shade_first_price
from bidder.privacy import restriction
from bidder.scoring import SlotTables
from bidder.slices import Steps
from bidder.targeting import CampaignIndex, Eligible
from models.features import candidate_features, request_features
from models.snapshot import ModelSnapshot
from streams.events import make_event

EventSink = Callable[[str, str, dict[str, Any]], None]  # (topic kind, key, event)
MTYPE = {"banner": 1, "video": 2, "audio": 3, "native": 4}
# No-bid reasons, by how far a candidate got: the furthest one is the request's reason.
STAGES = ("no_match", "not_live", "currency", "size", "targeting", "blocked_advertiser", "blocked_category", "blocked_app",
          "deal", "frequency_cap", "below_floor", "budget")
_RANK = {r: i for i, r in enumerate(STAGES)}
# notice outcomes of a valid notice, answered 200: "won" is a loss notice whose reason says the bid won
VALID_NOTICE = frozenset({"ok", "test", "won", "audit"})
AUCTION_FIXED_PRICE = 3  # deal.at = 3: the deal's bidfloor is the agreed price
MIN_LANDSCAPE = 200  # market prices needed before first-price bids are shaded
LANDSCAPE_REBUILD_S = 60.0  # how often the shading landscape takes in new market prices
PRICE_STEP = 10_000  # market prices are kept to a cent of CPM, which bounds the landscape's size
# Every time zone in use is a whole number of quarter hours off UTC, so a campaign's local date and hour (its flight
# and dayparting) can only change at a UTC quarter hour: the live set is recomputed then, and when campaigns change.
LIVE_SLOT_S = 900
LIVE_STEP = 256  # campaigns checked between two pauses of a live set computed aside (`live_steps`)
UNKNOWN_BILLS = 100_000  # billing events kept for campaigns not known yet
RESPOND_PER_BID_S = 0.00005  # writing one bid of the answer (notice URLs, event), with room on a slow core
COUNTED_BILLS = 200_000  # billing event ids remembered against a second count (a spill replay's window, many times over)
MAX_NOTICE_TTL_S = 4 * 3600  # the longest an impression may come after its auction (imp.exp), notices accepted as long
NATIVE_FRAGMENTS = 4096  # native answers' JSON kept (per creative and native request)
# Campaign fields that only decide whether a campaign is live (status, flight, dayparting) or what budget it may
# lease: neither the index, the scoring tables nor the pricing read them.  A change to these alone is swapped into
# the index in place; any other field not named here rebuilds it.
LIVE_ONLY_FIELDS = ("status", "daily_budget", "total_budget", "start", "end", "timezone", "hours", "version")


@dataclass(slots=True)
class EngineConfig:
    secret: bytes
    salt: bytes = b"streambid"
    seat: str = "streambid"
    notice_base: str = "http://127.0.0.1:8080"
    network_ms: int = 20  # allowance for the trip back to the exchange, taken off tmax
    notice_ttl_s: int = 3600
    restricted_policy: str = "context"  # "context": bid without user data; "nobid"
    # 64 random bits: process ids repeat across containers (pid 1 in each) and restarts, and two bidders sharing an id
    # would share bid ids (one's bills deduplicated away as the other's) and lease grants
    bidder_id: str = field(default_factory=lambda: f"b{secrets.token_hex(8)}")
    explain_rate: float = 0.01
    bid_log_rate: float = 1.0
    lease_slice: int = 0  # micros; 0: no lease needed (single-process demo and tests), else wait for grants
    explore_below: int = 200  # Thompson-sample creatives with fewer billed impressions than this; 0 turns it off
    # frequency counts come from every bidder's billing events (count_billed, fed by the adapter from the billing
    # topic) rather than from this process's own billing notices: a cap then holds across processes and hosts
    shared_frequency: bool = False
    tcf_vendor: int = 0  # our TCF Global Vendor List id: GDPR consent must name it; 0 checks the purposes only
    shade: bool = True  # shade first-price bids on the market prices seen; False bids the paced value, as a fixed bid


@dataclass(slots=True)
class Outcome:
    """What the adapter answers: 200 with `body`, 204 with `reason`, and the events already emitted."""

    status: int
    body: bytes = b""
    reason: str = ""
    bids: int = 0


_NONE_FULL: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LiveSet:
    """The campaigns of an index that may bid, computed aside (`BidEngine.live_steps`): good for the quarter hour
    `slot`, while no campaign's liveness has moved since (`changes`)."""

    campaigns: frozenset[str]
    slot: int
    changes: int


@dataclass(slots=True)
class _Held:
    """What a request's earlier impressions took: micros per campaign (against its lease), impressions per capped
    campaign, and the capped campaigns that have no room left for this user."""

    micros: dict[str, int] = field(default_factory=dict)
    shown: dict[str, int] = field(default_factory=dict)
    full: frozenset[str] = frozenset()


def _language(cr: Creative) -> dict[str, str]:
    """The bid's statement of the creative's language, which lets an exchange check it against `wlang`/`wlangb`:
    a bare ISO 639-1 code as `language`, anything finer (a region, a script) as BCP-47 `langb`, never both (2.6)."""
    if not cr.lang:
        return {}
    return {"language": cr.lang} if len(cr.lang) == 2 else {"langb": cr.lang}


def _live_only_change(old: Campaign, new: Campaign) -> bool:
    """Whether `new` differs from `old` in LIVE_ONLY_FIELDS alone."""
    return replace(new, **{f: getattr(old, f) for f in LIVE_ONLY_FIELDS}) == old


def _one_currency(req: BidRequest, el: Eligible) -> bool:
    """Whether every candidate bids in one currency, so one landscape shades them all.

    The index lets a candidate bid only in a currency the request allows, and on a floored impression (no deal
    taken) only in the floor's currency: either pins one currency.
    """
    return len(req.cur) <= 1 or (not el.deals and isinstance(el.floors, int) and el.floors > 0)


def _shaded_alike(req: BidRequest, el: Eligible) -> bool:
    """Whether every candidate is priced by the same first-price shading: first price for all (the request's
    auction, and each deal's own when it states one) and one currency.  Then the shaded price never falls as the
    paced value or the floor rises (`bidder.pricing.shade_first_price`): no candidate whose paced value and floor
    are both at most the best's can outbid it."""
    return (req.at == AUCTION_FIRST_PRICE and _one_currency(req, el)
            and all(not d[3] or d[3] == AUCTION_FIRST_PRICE for d in el.deals.values()))


def _first_priced(req: BidRequest, el: Eligible, n: int) -> np.ndarray:
    """Per candidate, whether it is priced in a first-price auction: its deal's own type, else the request's."""
    first = np.full(n, req.at == AUCTION_FIRST_PRICE)
    for pos, d in el.deals.items():
        if d[3]:
            first[pos] = d[3] == AUCTION_FIRST_PRICE
    return first


def _shades_below(top: float, floor: int, price: int, landscape: WinRateModel) -> bool:
    """Whether a first-priced candidate whose paced value is at most `top` bids no more than `price` on `floor`:
    shading never bids less for a higher value (below `monotone_below`), so its bound's shaded price caps it."""
    return top < landscape.monotone_below and (top < floor or shade_first_price(int(top), floor, landscape) <= price)


class BidEngine:
    """Holds the snapshots and does the matching, scoring and pricing for each request."""

    def __init__(self, config: EngineConfig, campaigns: list[Campaign], model: ModelSnapshot, sink: EventSink,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.cfg = config
        self.sink = sink
        self.clock = clock
        self.rng = rng or random.Random()
        self.model = model
        self.index = CampaignIndex(campaigns)
        self.pacing: dict[str, PacingState] = {}
        self.leases: dict[str, BudgetLease] = {}
        self.requests_seen = 0
        self.frequency = FrequencyStore()
        # market prices seen in win/loss notices, per currency (a price means nothing in another), for first-price
        # shading; `_shading` holds each as of the last refresh, once it has enough data
        self.landscapes: dict[str, WinRateModel] = {}
        self._shading: dict[str, WinRateModel] = {}
        self._new_prices: dict[str, list[int]] = {}
        self._new_bounds: dict[str, list[int]] = {}  # first-price wins with no market price: it was at most the bid
        self._shading_at = -math.inf
        self._seq = itertools.count(1)
        self._live: frozenset[str] = frozenset()
        self._live_slot: int | None = None  # the UTC quarter hour `_live` was computed for; None: recompute
        self._live_changes = 0  # one campaign's liveness rechecked, or the whole set gone stale: a count
        self._refreshed = -1.0
        self._due = -1.0  # when `_refresh` must run next: a second after the last, or at the next quarter hour if sooner
        self._seen_notices: dict[str, float] = {}  # event id -> when its URL expires (replays refused until then)
        self._seen_expiry: list[tuple[float, str]] = []  # (expiry, event id), a heap: expiries differ (imp.exp)
        self._counted_bills: OrderedDict[str, None] = OrderedDict()  # billing event ids already in the caps
        # billing events of campaigns this bidder does not know yet (at start, billing can come before the config)
        self._unknown_bills: dict[str, list[dict[str, Any]]] = {}  # campaign -> its events, UNKNOWN_BILLS in all
        self._unknown_count = 0
        self.counters: dict[str, int] = {}
        self._tables: SlotTables | None = None  # scoring arrays over the index slots (bidder.scoring)
        self._fragments_of: CampaignIndex | None = None  # the index `_fragments` holds the creatives of
        self._fragments: dict[tuple, bytes] = {}  # (campaign, creative[, native request]) -> its bid fields as JSON text

    # -- snapshot swaps (called by adapters) ----------------------------------

    def set_campaigns(self, campaigns: list[Campaign]) -> None:
        self.install_index(CampaignIndex(campaigns))

    def install_index(self, index: CampaignIndex, tables: SlotTables | None = None,
                      live: LiveSet | None = None) -> tuple[CampaignIndex, SlotTables | None]:
        """Bid with `index` from now on (built or not: an unbuilt one builds on first use), and with `tables`, its
        scoring tables built aside (`tables_steps`), unless the model changed meanwhile; and with `live`, its live
        set computed aside (`live_steps`), unless that went stale meanwhile.

        Returns the index and tables it replaces: a server holding them for a turn of the loop frees thousands of
        campaigns' sets there, not in this one."""
        retired = (self.index, self._tables)
        self.index = index
        self._fragments_of, self._fragments = index, {}
        if live is not None and live.changes == self._live_changes and live.slot == int(self.clock() // LIVE_SLOT_S):
            self._live, self._live_slot = live.campaigns, live.slot
            self._due = -1.0  # the rest of `_refresh` runs before the next bid; the live set holds
        else:
            self._stale()
        if tables is not None and tables.index is index and tables.model is self.model:
            self._take(tables)
        for cid in [c for c in self._unknown_bills if c in self.index.campaigns]:  # arrived: their events count now
            waiting = self._unknown_bills.pop(cid)
            self._unknown_count -= len(waiting)
            for event in waiting:
                self.count_billed(event)
        return retired

    def tables_steps(self, index: CampaignIndex | None = None, model: ModelSnapshot | None = None,
                     previous: SlotTables | None = None) -> Steps[SlotTables]:
        """Scoring tables for `index` and `model` (by default the engine's own), built aside in steps with their
        draws, for a server to build between bids; `install_index` or `install_model` then bids with them.
        Tables over the same index as `previous` (by default the engine's) keep its constants: only the model's
        weights are gathered."""
        return SlotTables.build_steps(index or self.index, model or self.model, self.cfg.explore_below, self.pacing,
                                      self.rng, previous or self._tables)

    def install_model(self, tables: SlotTables) -> None:
        """Bid with the model `tables` were built for, and with them.  If the index changed meanwhile they are
        the old index's: the model's tables are built again, now (`set_model`)."""
        if tables.index is self.index and tables.explore_below == self.cfg.explore_below:
            self.model = tables.model
            self._take(tables)
        else:
            self.set_model(tables.model)

    def _take(self, tables: SlotTables) -> None:
        consts = tables.consts
        if self._tables is None or consts is not self._tables.consts:  # built aside: fold in the pacing since
            seen = consts.paced
            for cid, state in list(self.pacing.items()):
                if seen.get(cid) is not state:
                    consts.set_campaign_pacing(state)
        self._tables = tables

    def upsert_campaign(self, campaign: Campaign) -> None:
        self.upsert_campaigns([campaign])

    def upsert_campaigns(self, campaigns: Iterable[Campaign]) -> None:
        """Add or replace campaigns by id.  When every change is to fields only the live set and the leases read
        (a pause, a resume, a budget), each campaign is swapped into the index in place and moved alone into or
        out of the live set; otherwise all of them in one index rebuild, which walks every campaign and is followed
        by new scoring tables: hundreds of milliseconds with thousands of campaigns."""
        staged = self.stage_campaigns(campaigns)
        if staged is not None:
            self.install_index(CampaignIndex(staged))

    def stage_campaigns(self, campaigns: Iterable[Campaign]) -> list[Campaign] | None:
        """`upsert_campaigns` in two halves, for a server to build the new index between bids: a change to fields
        only the live set and the leases read is applied now (None); otherwise every campaign of the new index,
        the changes in (`CampaignIndex.steps`, `build_steps`, then `install_index`).  Changes staged later must
        start from the installed one: until then they wait."""
        changed = {c.id: c for c in campaigns}
        current = self.index.campaigns
        if all(cid in current and _live_only_change(current[cid], c) for cid, c in changed.items()):
            for campaign in changed.values():
                self.index.swap(campaign)
                self._recheck_live(campaign.id)
            return None
        camps = dict(current)
        camps.update(changed)
        return list(camps.values())

    def set_model(self, model: ModelSnapshot) -> None:
        """Builds the new model's scoring tables now, once a bidder is scoring: a swap is milliseconds of work, and
        here they are not taken from the deadline of the request that would otherwise find the tables stale.
        A model whose tables cannot be built is refused (the error is raised) and the previous one stays."""
        old, self.model = self.model, model
        if self._tables is not None:
            try:
                self.prepare()
            except Exception:
                self.model = old  # the old tables were kept: they are only replaced once the new ones are built
                raise

    def prepare(self) -> None:
        """Build now what the next request would otherwise build after a change: the index's sets, the live set,
        the scoring tables and their draws.  Adapters call it after applying updates, off any request's deadline."""
        self.index.slots_of("")
        self.live()
        t = self._tables
        fresh = self._scoring()
        if fresh is not t:
            fresh.fill_draws()

    def set_pacing(self, state: PacingState) -> None:
        """Takes effect with the next request: the price bounds follow the new lambda at once (a stale bound could
        prune the best bid), and the live set when the campaign's budget runs out or comes back."""
        old = self.pacing.get(state.campaign)
        self.pacing[state.campaign] = state
        if self._tables is not None:
            self._tables.set_campaign_pacing(state)
        was = (old.exhausted, old.day) if old is not None else (False, "")
        if state.exhausted != was[0] or (state.exhausted and state.day != was[1]):  # only today's exhausted budget stops
            self._recheck_live(state.campaign)

    def _recheck_live(self, campaign: str) -> None:
        """One campaign's budget ran out or came back, or its status or flight changed: move it alone into or out
        of the live set.  Recomputing the set walks every campaign and every slot, and with thousands of campaigns
        the request that finds the set stale would pay tens of milliseconds for it, once for every campaign whose
        budget runs out in a day."""
        self._live_changes += 1  # a live set being computed aside may have read it before
        if self._live_slot is None:
            return  # the whole set is recomputed before the next request anyway
        camp = self.index.campaigns.get(campaign)
        on = camp is not None and bool(self._live_campaigns(self.clock(), (camp,)))
        if on != (campaign in self._live):
            old, self._live = self._live, self._live | {campaign} if on else self._live - {campaign}
            self.index.live_changed(old, self._live, campaign, on)

    def _stale(self) -> None:
        """The live set no longer holds: recompute it before the next bid."""
        self._live_changes += 1
        self._live_slot = None
        self._refreshed = self._due = -1.0

    def grant(self, campaign: str, day: str, granted_micros: int) -> None:
        """A budget lease grant for this bidder: its cumulative allowance for `campaign` on `day`."""
        lease = self.leases.get(campaign)
        if lease is None or lease.day != day:
            previous, lease = lease, BudgetLease(day=day)
            if previous is not None and previous.day < day:  # the bids still in flight are billed on the new day
                lease.take_over(previous)
            self.leases[campaign] = lease
        lease.grant_total(granted_micros)

    def _refresh(self, now: float) -> None:
        """Once a second: expire leases and seen notices, fold in market prices, and (at a new UTC quarter hour,
        or after a change) recompute which campaigns may bid at all."""
        slot = int(now // LIVE_SLOT_S)
        if slot != self._live_slot:
            self._live_slot = slot
            self._live = self._live_campaigns(now)
            self._close_past_leases(now)
        for lease in self.leases.values():
            lease.expire(now)  # a bid whose notice never came stops holding budget once its URL has expired
        if (self._new_prices or self._new_bounds) and now - self._shading_at >= LANDSCAPE_REBUILD_S:
            # fold in the market prices seen since the last rebuild; rebuilding per notice would cost the bid path
            self._shading_at = now
            for cur in {*self._new_prices, *self._new_bounds}:
                landscape = self.landscapes.setdefault(cur, WinRateModel())
                for price in self._new_prices.get(cur, ()):
                    landscape.add(price)
                for bound in self._new_bounds.get(cur, ()):
                    landscape.add_at_most(bound)
                if landscape.observations >= MIN_LANDSCAPE and self.cfg.shade:
                    self._shading[cur] = landscape.frozen_copy()
            self._new_prices.clear()
            self._new_bounds.clear()
        self._refreshed = now
        # the live set changes at quarter hours (dayparting, flights, local midnights): the first bid past one
        # must not see the set of the quarter hour before
        self._due = min(now + 1.0, (slot + 1) * LIVE_SLOT_S)
        seen, expiry = self._seen_notices, self._seen_expiry
        while expiry and expiry[0][0] < now:
            seen.pop(heapq.heappop(expiry)[1], None)

    def _close_past_leases(self, now: float) -> None:
        """At a quarter hour (every local midnight is one): a lease of a day now over takes no more bids; the
        campaign bids again once the new day's grant comes (`grant`)."""
        days: dict[str, str] = {}
        for cid, lease in self.leases.items():
            camp = self.index.campaigns.get(cid)
            if camp is None or lease.closed:
                continue
            day = days.get(camp.timezone)
            if day is None:
                day = days[camp.timezone] = self.campaign_day(camp, now)
            if lease.day != day:
                lease.close()

    def _live_campaigns(self, now: float, campaigns: Iterable[Campaign] | None = None) -> frozenset[str]:
        """Ids of the active campaigns (of `campaigns`, or all) in flight and in their dayparting at `now` whose budget
        is not spent."""
        utc = dt.datetime.fromtimestamp(now, dt.UTC)
        live = set()
        for c in self.index.campaigns.values() if campaigns is None else campaigns:
            if not c.active or not c.in_flight(utc):
                continue
            p = self.pacing.get(c.id)
            if p is not None and p.exhausted and p.day == self.campaign_day(c, now):  # yesterday's budget is not today's
                continue
            live.add(c.id)
        return frozenset(live)

    def live_steps(self, index: CampaignIndex) -> Steps[LiveSet]:
        """The live set of `index` (built), and its slots, computed aside in steps for `install_index`: a server
        computes them between bids, where the request after the install would walk thousands of campaigns."""
        now, changes = self.clock(), self._live_changes
        camps = list(index.campaigns.values())
        live: set[str] = set()
        for lo in range(0, len(camps), LIVE_STEP):
            live |= self._live_campaigns(now, camps[lo:lo + LIVE_STEP])
            yield
        campaigns = frozenset(live)
        index.live_bits(campaigns)  # remembered there for this very set
        return LiveSet(campaigns, int(now // LIVE_SLOT_S), changes)

    def live(self) -> frozenset[str]:
        """Ids of the campaigns that may bid right now."""
        now = self.clock()
        if now >= self._due or now < self._refreshed:
            self._refresh(now)
        return self._live

    def campaign_day(self, campaign: Campaign | None, now: float) -> str:
        tz = ZoneInfo(campaign.timezone) if campaign else dt.UTC
        return dt.datetime.fromtimestamp(now, tz).date().isoformat()

    # -- the bid path -----------------------------------------------------------

    def bid(self, req: BidRequest, exchange: str, deadline: float) -> Outcome:
        """Decide on every impression of `req`; `deadline` is a time.perf_counter() value."""
        now = self.clock()
        if not req.test:  # the bid log carries it: the streams side learns the traffic per hour from it
            self.requests_seen += 1
        if now >= self._due or now < self._refreshed:
            self._refresh(now)
        restricted = restriction(req.privacy, self.cfg.tcf_vendor)
        if restricted:  # metrics: privacy-restricted requests by reason
            key = "restricted:" + restricted
            self.counters[key] = self.counters.get(key, 0) + 1
        if restricted and self.cfg.restricted_policy == "nobid":
            return Outcome(204, reason="privacy")
        seat = self.cfg.seat
        if (req.wseat and seat not in req.wseat) or seat in req.bseat:
            return Outcome(204, reason="seat")
        user = "" if restricted else req.user_key
        local = now + req.utcoffset * 60
        hour, weekday = int(local // 3600) % 24, (int(local // 86400) + 3) % 7
        best_reason = 0
        chosen: list[tuple] = []
        held = _Held() if len(req.imps) > 1 else None  # what earlier impressions took: only with several
        for imp in req.imps:
            if time.perf_counter() > deadline:  # a request of many impressions stops as its time runs out
                return Outcome(204, reason="deadline")
            pick, reason = self._best_for_imp(req, imp, exchange, user, hour, weekday, now, held)
            best_reason = max(best_reason, reason)
            if pick is not None:
                chosen.append(pick)
                if held is not None:
                    self._hold(held, pick[1], pick[3], user, now)
                    if len(req.cur) > 1:  # one answer, one currency: the first pick's; later impressions bid in it
                        req = replace(req, cur=(pick[1].currency,))
        if not chosen:
            return Outcome(204, reason=STAGES[best_reason])
        if time.perf_counter() + RESPOND_PER_BID_S * len(chosen) > deadline:  # signing many bids takes time too
            return Outcome(204, reason="deadline")
        return self._respond(req, exchange, user, chosen, now, restricted)

    def _scoring(self) -> SlotTables:
        """Per-slot scoring arrays for the current index and model; rebuilt when either is swapped."""
        t = self._tables
        if t is None or t.index is not self.index or t.model is not self.model or t.explore_below != self.cfg.explore_below:
            # over the same index a new model keeps the constants (feature ids, pacing): a swap gathers the new weights
            t = self._tables = SlotTables(self.index, self.model, self.cfg.explore_below, self.pacing, self.rng, t)
        return t

    def _hold(self, held: _Held, camp: Campaign, price: int, user: str, now: float) -> None:
        """Count a pick against what the request's later impressions may take: the campaign's lease, and its
        frequency cap (several impressions of one request reach the same user)."""
        held.micros[camp.id] = held.micros.get(camp.id, 0) + price // 1000
        if camp.freq_per_hour or camp.freq_per_day:
            n = held.shown[camp.id] = held.shown.get(camp.id, 0) + 1
            if n >= self.frequency.room(user, camp.id, camp.freq_per_hour, camp.freq_per_day,
                                        *cap_buckets(camp.timezone, now)):
                held.full = held.full | {camp.id}

    def _best_for_imp(self, req: BidRequest, imp: Imp, exchange: str, user: str, hour: int, weekday: int,
                      now: float, held: _Held | None = None) -> tuple[tuple | None, int]:
        """The highest-priced bid on `imp`, or None and the furthest stage any candidate reached.

        The index returns the creatives that pass every rule (targeting, blocks, deals, currency, caps); they are
        scored together (bidder.scoring), then priced one by one with the canonical pricing functions in descending
        order of an upper bound on their paced value, stopping once no bound left can beat the best price found, or
        (when shading prices them all alike, `_shaded_alike`) the best's paced value.
        """
        if imp.multiplier != 1.0:  # sold by the multiple (DOOH): priced and billed per impression here, so never bid
            return None, _RANK["targeting"]
        index = self.index
        el = self._eligible(req, imp, user, now, held.full if held is not None else _NONE_FULL)
        slots = el.slots
        if not len(slots):
            return None, el.reason
        tables, model = self._scoring(), self.model
        floors, explore, base = el.floors, None, 0.0
        least = max(floors, 1) if isinstance(floors, int) else np.maximum(floors, 1)  # a bid is at least 1 micro
        req_feats: tuple[int, ...] = ()
        bits = el.bits
        if tables.any_explore and not bits & ~tables.explore_bits:  # every candidate still explores
            pctr, bound = tables.explore_all(slots)
        else:
            req_feats = request_features(req, imp, exchange, hour, weekday)
            base = model.base_score(req_feats)
            pctr = tables.predict(slots, base, hour, req.domain)
            if bits & tables.explore_bits:
                explore = tables.explore[slots]
                pctr[explore] = tables.next_draws(slots[explore])
            bound = tables.bounds(slots, pctr, clean=True)
        if isinstance(least, int):
            low = least  # one floor for all: checked in the loop, on the best bound left
        else:
            bound[bound < least] = -1  # below its deal's floor: out
            low = 0
        shading = self._shading
        alike = _shaded_alike(req, el) if shading else False
        one_currency = bool(shading) and _one_currency(req, el)
        first: np.ndarray | None = None  # per candidate, first-priced or not: built when first needed
        best, best_price, best_value, reason = None, 0, 0, _RANK["below_floor"]
        while True:
            j = int(bound.argmax())
            top = bound[j]
            if top <= best_price or top < low:
                break  # nobody left can beat the best price (or, with one floor for all, clear the floor)
            if top <= best_value:
                break  # shaded alike: a paced value up to the best's shades to no more than the best price
            bound[j] = -1
            camp, cr = index.slots[slots[j]]
            deal = el.deals.get(j) if el.deals else None
            floor = floors if isinstance(floors, int) else int(floors[j])
            pace = self.pacing.get(camp.id)
            lam = pace.lam if pace is not None else 0.0
            at = deal[3] if deal and deal[3] else req.at
            landscape = shading.get(camp.currency) if shading else None
            if (best is not None and at == AUCTION_FIRST_PRICE and landscape is not None
                    and _shades_below(top, floor, best_price, landscape)):
                if one_currency:  # and so does every first-priced candidate left on this floor, bounded lower
                    if first is None:
                        first = _first_priced(req, el, len(slots))
                    bound[(bound <= top) & (floors == floor) & first] = -1
                continue
            cand = None
            if req_feats and (explore is None or not explore[j]):  # the price takes the model's own pCTR; the array's ordered
                cand = candidate_features(req_feats, hour, req.domain, camp.id, cr.id)
                p = model.predict(base, cand, camp.id, cr.id)
            else:
                p = float(pctr[j])
            pcvr = p * conversion_rate(pace) if camp.goal == "cpa" else 0.0
            value = impression_value_cpm(p, camp, pcvr)
            price = bid_price(value, lam, camp.max_bid_cpm, floor, at == AUCTION_FIRST_PRICE, landscape,
                              fixed_price=at == AUCTION_FIXED_PRICE)
            if not price:
                continue
            if not self._lease_allows(camp.id, price // 1000 + (held.micros.get(camp.id, 0) if held else 0)):
                reason = _RANK["budget"]
                continue
            if price > best_price:
                best_price = price
                if alike and landscape is not None:  # the paced value bid_price shaded
                    v = paced_value(value, lam, camp.max_bid_cpm)
                    if v < landscape.monotone_below:
                        if isinstance(floors, int):
                            best_value = v
                        else:  # a higher floor can shade to more: only those with no higher floor are outbid
                            bound[(bound <= v) & (floors <= floor)] = -1
                best = (camp, cr, price, deal[0] if deal else "", p, lam, floor, cand, int(slots[j]))
        if best is None:
            return None, reason
        camp, cr, price, dealid, p, lam, floor, cand, slot = best
        explored = cand is None
        if not req_feats:
            req_feats = request_features(req, imp, exchange, hour, weekday)
        if cand is None:
            cand = candidate_features(req_feats, hour, req.domain, camp.id, cr.id)
        return (imp, camp, cr, price, dealid, p, req_feats, cand, lam, floor, slot, explored), reason

    def _eligible(self, req: BidRequest, imp: Imp, user: str, now: float, full: frozenset[str] = frozenset()) -> Eligible:
        """The creatives the index lets bid on `imp` (every rule checked), with the frequency-capped ones counted."""
        el = self.index.eligible(req, imp, self._live, self.cfg.seat, user, self.frequency, now, full)
        for cid, n in el.capped.items():  # metrics: candidates dropped by the cap, per campaign
            key = "frequency_cap:" + cid
            self.counters[key] = self.counters.get(key, 0) + n
        return el

    def _lease_allows(self, campaign: str, price_micros: int) -> bool:
        if not self.cfg.lease_slice:
            return True
        lease = self.leases.get(campaign)
        return lease is not None and lease.can_bid(price_micros)

    def _respond(self, req: BidRequest, exchange: str, user: str, chosen: list, now: float, restricted: str) -> Outcome:
        """The 200 answer: one bid per chosen impression, each with its signed notice URLs, and the bid events.

        A test request (`test: 1`) is answered the same, but is not billable: its bids hold no lease, log no
        event, and their notices (signed as test) move no money and no counts.
        """
        cur = chosen[0][1].currency
        bids = []
        ttl = self.cfg.notice_ttl_s
        base, secret, bidder, test = self.cfg.notice_base, self.cfg.secret, self.cfg.bidder_id, req.test
        ts_ms = int(now * 1000)
        for imp, camp, cr, price, dealid, pctr, req_feats, cand, lam, floor, slot, explored in chosen:
            if camp.currency != cur:
                continue
            bid_id = f"{bidder}-{next(self._seq)}"
            # the exchange may show the ad up to imp.exp after the auction: its notices must still count then
            life = ttl if imp.exp <= ttl else min(imp.exp, MAX_NOTICE_TTL_S)
            expires = math.ceil(now) + life  # never before `exp` seconds from now, as the bid says
            if self.cfg.lease_slice and not test:
                self.leases[camp.id].reserve(bid_id, price // 1000, expires)
            urls = notice_urls(base, secret, bid_id, camp.id, cr.id, price, expires, exchange, bidder, user, test)
            bid = {"id": bid_id, "impid": imp.id, "price": price / 1e6, "nurl": urls[0], "burl": urls[1], "lurl": urls[2],
                   "exp": life}
            if dealid:
                bid["dealid"] = dealid
            bids.append(orjson.dumps(bid)[:-1] + (self._native_json(camp, cr, slot, imp) if cr.kind == "native"
                                                  else self._creative_json(camp, cr)))
            if test:
                continue
            if self.cfg.bid_log_rate >= 1.0 or self.rng.random() < self.cfg.bid_log_rate:
                ev = make_event("bids", f"bid:{bid_id}", ts_ms, bid_id=bid_id, campaign=camp.id, creative=cr.id,
                                exchange=exchange, price=price, pctr=pctr, features=list(req_feats + cand), at=req.at,
                                floor=floor, lam=lam, restricted=restricted, user=user, bidder=bidder,
                                reqs=self.requests_seen)
                if imp.exp:  # the impression may come that late: attribution keeps the bid as long
                    ev["exp"] = min(imp.exp, MAX_NOTICE_TTL_S)
                if self.cfg.explain_rate and self.rng.random() < self.cfg.explain_rate:
                    ev["explain"] = self._explain(req_feats, cand, camp, cr, pctr, explored)
                self.sink("bids", camp.id, ev)
        head = orjson.dumps({"id": req.id, "cur": cur, "seatbid": [{"seat": self.cfg.seat, "bid": []}]})
        body = b"%s%s]}]}" % (head[:-4], b",".join(bids))
        return Outcome(200, body=body, bids=len(bids))

    def _explain(self, req_feats: tuple, cand: tuple, camp: Campaign, cr: Creative, pctr: float,
                 explored: bool) -> dict[str, Any]:
        """The model's account of its score, and the pCTR the price was really computed from: an exploring
        creative is priced on a Thompson draw, not on the model's estimate."""
        out = self.model.explain(req_feats, cand, camp.id, cr.id)
        out["pctr_used"] = pctr
        out["explored"] = explored
        return out

    def _native_json(self, camp: Campaign, cr: Creative, slot: int, imp: Imp) -> bytes:
        """A native bid's creative fields: its response renumbered to the assets this impression's request asks for."""
        native = next((m.native for m in imp.media if m.kind == "native"), None)
        if native is None:
            return self._creative_json(camp, cr)
        if self._fragments_of is not self.index:
            self._fragments_of, self._fragments = self.index, {}
        key = (camp.id, cr.id, native.key)
        frag = self._fragments.get(key)
        if frag is None:
            if len(self._fragments) >= NATIVE_FRAGMENTS:
                self._fragments.clear()
            fields = {"adid": cr.id, "crid": cr.id, "cid": camp.id, "adomain": [camp.advertiser], "cat": list(cr.cats),
                      "mtype": MTYPE[cr.kind], "adm": self.index.native(slot, native), **_language(cr)}
            if camp.bundle:
                fields["bundle"] = camp.bundle
            if cr.apis:  # what the placement must run, and what `battr` was checked against, as on every other kind
                fields["apis"] = list(cr.apis)
            if cr.attr:
                fields["attr"] = list(cr.attr)
            frag = self._fragments[key] = b"," + orjson.dumps(fields)[1:]
        return frag

    def _creative_json(self, camp: Campaign, cr: Creative) -> bytes:
        """The fields of a bid that depend only on the creative, as JSON text to append to the per-bid fields
        (',"adid":…,"adm":…}'): serialised once per creative and index, not once per bid."""
        if self._fragments_of is not self.index:
            self._fragments_of, self._fragments = self.index, {}
        key = (camp.id, cr.id)
        frag = self._fragments.get(key)
        if frag is None:
            fields = {"adid": cr.id, "crid": cr.id, "cid": camp.id, "adomain": [camp.advertiser], "cat": list(cr.cats),
                      "mtype": MTYPE[cr.kind], "adm": cr.adm, **_language(cr)}
            if camp.bundle:  # the advertised app, which `bapp` was checked against
                fields["bundle"] = camp.bundle
            if cr.w:
                fields["w"], fields["h"] = cr.w, cr.h
            if cr.kind in ("video", "audio"):  # what durfloors and protocols were checked against
                if cr.duration:
                    fields["dur"] = cr.duration
                if cr.protocol:
                    fields["protocol"] = cr.protocol
            if cr.apis:  # what the placement must run, and what `battr` was checked against
                fields["apis"] = list(cr.apis)
            if cr.attr:
                fields["attr"] = list(cr.attr)
            frag = self._fragments[key] = b"," + orjson.dumps(fields)[1:]
        return frag

    # -- notices ------------------------------------------------------------------

    def notice(self, kind: str, query: str, relay: Callable[[Notice], bool] | None = None,
               remembered: bool = False) -> str:
        """Verify and record a win/bill/loss notice; returns the outcome ('ok' or a rejection reason).

        `relay` is given when sibling workers share the port (bidder.wiring): a valid, unreplayed notice signed for
        another bidder id is offered to it first, and `relay(n)` True means its owner took it (it answers, counts and
        charges it, with its own replay memory and lease): here it is only remembered as seen, and the outcome is
        'relayed'.  One the owner cannot take (gone) is handled here, without touching this engine's leases: the
        bid's reservation was in the sibling's.  `remembered`: a relayed notice whose owner went away before taking
        it, back to be handled here; its replay check was done when it landed.
        """
        now = self.clock()
        try:
            n = verify_notice(self.cfg.secret, kind, query, now)
        except NoticeError as e:
            return e.reason
        if not remembered:
            if n.event_id in self._seen_notices:
                return "replayed"
            self._seen_notices[n.event_id] = n.expires
            heapq.heappush(self._seen_expiry, (n.expires, n.event_id))
        # signed for another bidder id: a sibling worker's bid, or one of an earlier run of this process; either way
        # its reservation is not in this engine's leases, and charging them for it would withhold budget
        foreign = n.bidder != self.cfg.bidder_id
        if foreign and relay is not None and relay(n):
            return "relayed"
        if n.test:  # a test auction is not billable: its notices move no money, counts or prices
            return "test"
        camp = self.index.campaigns.get(n.campaign)
        ts_ms = int(now * 1000)
        if kind == "win":
            price = n.bid_cpm if n.price_cpm is None else n.price_cpm  # None: not substituted; 0 is a price
            if camp is not None:
                self._won_at(camp.currency, n, price)
            self.sink("wins", n.campaign, make_event("wins", n.event_id, ts_ms, bid_id=n.bid_id, campaign=n.campaign,
                                                     creative=n.creative, price=price, exchange=n.exchange,
                                                     bidder=n.bidder))
        elif kind == "bill":
            self._bill(n, camp, now, ts_ms, settle=not foreign)
        elif not n.lost:  # "lost" with reason 0, Bid Won: the bill to come charges it, so its reservation stays
            return "won"
        else:
            lease = None if foreign else self.leases.get(n.campaign)
            if lease is not None:
                lease.release(n.bid_id)
            if n.min_to_win_cpm and camp is not None:  # None: not substituted; 0 cannot be what beat our bid
                self._market_price(camp.currency, n.min_to_win_cpm)
            self.sink("losses", n.campaign, make_event("losses", n.event_id, ts_ms, bid_id=n.bid_id, campaign=n.campaign,
                                                       reason=n.loss_reason, min_to_win=n.min_to_win_cpm or 0,
                                                       price=n.bid_cpm, exchange=n.exchange))
        return "ok"

    def _won_at(self, currency: str, n: Notice, price: int) -> None:
        """What a win tells the landscape: the minimum to win (the highest other bid) when the exchange states it,
        else a price paid below our bid (second price: the market price), else (first price: we paid our bid)
        only that the market price was at most the bid."""
        if n.min_to_win_cpm is not None and 0 < n.min_to_win_cpm <= n.bid_cpm:
            self._market_price(currency, n.min_to_win_cpm)
        elif price < n.bid_cpm:
            self._market_price(currency, price)
        else:
            self._new_bounds.setdefault(currency, []).append(-(-n.bid_cpm // PRICE_STEP) * PRICE_STEP)

    def _market_price(self, currency: str, price_cpm: int) -> None:
        """Note a market price for the next landscape rebuild, rounded *up* to its step: a shaded bid at a rounded
        point then still meets the price it stands for (rounded down, it would lose every such auction)."""
        self._new_prices.setdefault(currency, []).append(-(-price_cpm // PRICE_STEP) * PRICE_STEP)

    def may_cap(self, campaign: str) -> bool:
        """Whether `campaign`'s billing events may matter to the caps: it has a cap, or it is not known yet."""
        camp = self.index.campaigns.get(campaign)
        return camp is None or bool(camp.freq_per_hour or camp.freq_per_day)

    def count_billed(self, event: dict[str, Any]) -> bool:
        """One billed impression from the billing topic, whichever bidder took its notice, toward the user's caps.

        Counted once per event id (a spilled batch can be sent again), in the campaign's hour and day at the event's
        own time, so every bidder puts it in the same buckets.  An event of a campaign not known yet is kept (a bounded
        number) until the campaigns change.  Returns whether it counted.
        """
        eid, user, campaign, ts = event.get("id"), event.get("user"), event.get("campaign"), event.get("ts")
        if not (isinstance(eid, str) and isinstance(user, str) and user and isinstance(campaign, str)
                and isinstance(ts, int)) or eid in self._counted_bills:
            return False
        camp = self.index.campaigns.get(campaign)
        if camp is None:
            if self._unknown_count < UNKNOWN_BILLS:  # beyond that a cap may let a user see an ad again, no more
                self._unknown_bills.setdefault(campaign, []).append(event)
                self._unknown_count += 1
            return False
        if not (camp.freq_per_hour or camp.freq_per_day):
            return False
        self._counted_bills[eid] = None
        if len(self._counted_bills) > COUNTED_BILLS:
            self._counted_bills.popitem(last=False)
        self.frequency.record(user, campaign, *cap_buckets(camp.timezone, ts // 1000))
        return True

    def _bill(self, n: Notice, camp: Campaign | None, now: float, ts_ms: int, settle: bool = True) -> None:
        # An exchange that did not substitute ${AUCTION_PRICE} (None) is charged at our bid: the most we agreed to pay.
        # A substituted price of 0 charges 0.  `settle` False: the bid's reservation is not in this engine's lease.
        cost = (n.bid_cpm if n.price_cpm is None else n.price_cpm) // 1000
        lease = self.leases.get(n.campaign) if settle else None
        if lease is not None:
            lease.settle(n.bid_id, cost)
        if n.user and camp is not None and (camp.freq_per_hour or camp.freq_per_day) and not self.cfg.shared_frequency:
            self.frequency.record(n.user, n.campaign, *cap_buckets(camp.timezone, now))
        # the campaign's local date; a bidder that does not know the campaign (still warming up) cannot tell it, and
        # leaves it to the ledger, which dates the bill in the campaign's zone as it dates every other event
        day = {"day": self.campaign_day(camp, now)} if camp is not None else {}
        self.sink("billing", n.campaign, make_event("billing", n.event_id, ts_ms, bid_id=n.bid_id, campaign=n.campaign,
                                                    creative=n.creative, cost=cost, exchange=n.exchange,
                                                    bidder=n.bidder, user=n.user, **day))
