"""The targeting index: from an impression to the creatives that may serve it.

Every creative of a campaign, paused or not, is a *slot*.  For each targeting
dimension the index holds, per value, the set of slots that may serve there
(the campaigns that target the value plus those that do not target the
dimension at all), as a Python int whose bit i is slot i: ANDing two sets of a
few thousand slots costs tens of nanoseconds.  A request ANDs one set per
dimension, so its cost hardly grows with the number of campaigns, and what
comes out has passed every static rule: media and size, country, active,
region, city, device, OS, domain, content category, live, currency, blocks,
deals and frequency caps.  Only then are the surviving slots turned into an
index array for scoring (`bidder.scoring`).

`fits`, `matches` and `deal_for` stay the plain statement of the rules, one
candidate at a time; the arrays are built from the same campaign fields and a
test checks that both give the same answer on generated traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

import numpy as np

from bidder.campaigns import Campaign, Creative
from bidder.frequency import FrequencyStore, cap_clock
from bidder.native import NativeRequest, native_adm, native_fills
from bidder.openrtb import BidRequest, Imp, Media
from bidder.slices import Steps, drain

Candidate = tuple[Campaign, Creative]
Deal = tuple[str, float, str, "int | None"]

# No-bid reasons, by how far a candidate got: the furthest one any candidate reached is the request's reason.
STAGES = ("no_match", "not_live", "currency", "size", "targeting", "blocked_advertiser", "blocked_category", "blocked_app",
          "deal", "frequency_cap", "below_floor", "budget")
NO_FLOOR_TO_BID = 1 << 62  # micros: a floor no bid reaches (a length the floors cannot price)
REQUEST_BITS_CACHE = 8192  # targeting sets remembered (per distinct place, device and site)
STEP_SLOTS = 2048  # slots walked between two pauses of an index build (bidder.slices)
STEP_SETS = 128  # slot sets made between two pauses of an index build
MEDIA_RULES_CACHE = 256  # player rules, native requests and language lists remembered (each recurs per placement)
NO_MATCH, NOT_LIVE, CURRENCY, TARGETING, BLOCKED_ADV, BLOCKED_CAT, BLOCKED_APP, DEAL, FREQUENCY_CAP = 0, 1, 2, 4, 5, 6, 7, 8, 9
_EMPTY = np.zeros(0, dtype=np.intp)
K = TypeVar("K")
V = TypeVar("V")


def _size_keys(kind: str, w: int, h: int) -> list[tuple[str, int, int]]:
    if kind in ("native", "audio"):
        return [(kind, 0, 0)]
    if kind == "video":
        return [("video", w, h)] if w else [("video", 0, 0)]  # (0, 0): unsized, plays at any size
    return [(kind, w, h)]


def _bits_of(indices: Iterable[int]) -> int:
    """A set of slots as an int whose bit i is slot i: ANDing two of them costs tens of nanoseconds."""
    idx = list(indices)
    if len(idx) < 64:
        out = 0
        for i in idx:
            out |= 1 << i
        return out
    members = np.zeros(max(idx) + 1, dtype=bool)
    members[idx] = True
    return int.from_bytes(np.packbits(members, bitorder="little").tobytes(), "little")


def _slots_of_keys(keys_of_slot: Iterable[Iterable[object]]) -> Steps[dict[object, list[int]]]:
    """Per key, the slots that carry it, ascending; pausing every STEP_SLOTS slots."""
    lists: dict[object, list[int]] = {}
    slots = iter(keys_of_slot)
    start = 0
    while chunk := list(islice(slots, STEP_SLOTS)):
        for i, keys in enumerate(chunk, start):
            for k in keys:
                lists.setdefault(k, []).append(i)
        start += len(chunk)
        yield
    return lists


class _Dimension:
    """One targeting dimension: per value, the slots that may serve there (targeting it, or not targeting at all).

    A value few campaigns target (one of thousands of domains) is kept as its own slots only, shifted down to the
    first: a set as wide as every slot for each of a million values would take gigabytes.  The slots that target
    nothing are added back when it is read.
    """

    __slots__ = ("any", "by_value")

    def __init__(self, any_value: int, by_value: dict[object, int | tuple[int, int]]) -> None:
        self.any = any_value  # the slots that target nothing in this dimension
        self.by_value = by_value

    @staticmethod
    def steps(targets: list[frozenset]) -> Steps[_Dimension]:
        """The dimension of each slot's `targets`, built in steps of STEP_SLOTS slots walked or STEP_SETS sets made."""
        members = yield from _slots_of_keys(targets)
        any_value = _bits_of(i for i, t in enumerate(targets) if not t)
        yield
        wide = len(targets) // 4
        def values(idx: list[int]) -> int | tuple[int, int]:
            low = idx[0]  # ascending
            return (low, _bits_of(i - low for i in idx)) if idx[-1] - low < wide else any_value | _bits_of(idx)

        return _Dimension(any_value, (yield from _sets_steps(members, values)))

    def one(self, value: object) -> int:
        bits = self.by_value.get(value, self.any)
        return bits if isinstance(bits, int) else self.any | (bits[1] << bits[0])

    def any_of(self, values: Iterable[object]) -> int:
        """Slots that may serve where at least one of `values` holds (content categories: any match)."""
        out = self.any
        get = self.by_value.get
        for v in values:
            bits = get(v, 0)
            out |= bits if isinstance(bits, int) else bits[1] << bits[0]
        return out


def _members_steps(keys_of_slot: Iterable[Iterable[object]]) -> Steps[dict[object, int]]:
    """Per key, the set of slots that carry it; pausing every STEP_SLOTS slots walked or STEP_SETS sets made."""
    lists = yield from _slots_of_keys(keys_of_slot)
    return (yield from _sets_steps(lists, _bits_of))


def _sets_steps(lists: dict[K, list[int]], make: Callable[[list[int]], V]) -> Steps[dict[K, V]]:
    """`make` of each list, pausing every STEP_SETS."""
    out: dict[K, V] = {}
    items = list(lists.items())
    for lo in range(0, len(items), STEP_SETS):
        for k, idx in items[lo:lo + STEP_SETS]:
            out[k] = make(idx)
        yield
    return out


@dataclass(slots=True)
class Eligible:
    """The slots that may bid on one impression, with the floor (micros) and deal of each; or why none may."""

    slots: np.ndarray = field(default_factory=lambda: _EMPTY)
    floors: np.ndarray | int = 0  # per slot, or one floor for all
    deals: dict[int, Deal] = field(default_factory=dict)  # position in `slots` -> the deal it bids on
    reason: int = NO_MATCH  # the furthest stage reached, meaningful when `slots` is empty
    capped: dict[str, int] = field(default_factory=dict)  # campaign -> its slots dropped by the frequency cap
    bits: int = 0  # `slots` as a set (bit i: slot i)


class CampaignIndex:
    """Index over every campaign, paused ones too, so that pausing or resuming a campaign renumbers no slot.

    A new version of a campaign that differs only in fields the index does not read (status, budgets, flight) is
    swapped in place (`swap`); any other config change builds a new index, which replaces this one whole.
    """

    def __init__(self, campaigns: Iterable[Campaign]) -> None:
        drain(self._slots_steps(campaigns))

    @classmethod
    def steps(cls, campaigns: Iterable[Campaign]) -> Steps[CampaignIndex]:
        """The index of `campaigns`, its slots numbered in steps (thousands of campaigns take milliseconds), its sets
        not built yet (`build_steps`)."""
        index = cls.__new__(cls)
        yield from index._slots_steps(campaigns)
        return index

    def _slots_steps(self, campaigns: Iterable[Campaign]) -> Steps[None]:
        self.campaigns: dict[str, Campaign] = {c.id: c for c in campaigns}
        camps = list(self.campaigns.values())
        slots: list[Candidate] = []
        first: dict[str, int] = {}  # campaign -> its first slot: a campaign's slots are consecutive
        for lo in range(0, len(camps), STEP_SETS * 4):
            yield
            for c in camps[lo:lo + STEP_SETS * 4]:
                first[c.id] = len(slots)
                slots.extend((c, cr) for cr in c.creatives)
        self.slots, self._first, self.n = slots, first, len(slots)
        self._nbytes = (self.n + 7) // 8 or 1
        self._built = False  # the sets are built on first use: a burst of config changes rebuilds nothing

    def _build(self) -> None:
        drain(self.build_steps())

    def build_steps(self) -> Steps[None]:
        """Build the sets, in steps: a serving process builds a new index between bids (`bidder.slices`) before
        it replaces the one it bids with, so thousands of campaigns cost no request a long pause."""
        camps = [c for c, _ in self.slots]
        ts = [c.targeting for c in camps]
        self.slot_campaign = [c.id for c in camps]
        by_campaign = yield from _slots_of_keys((cid,) for cid in self.slot_campaign)
        self._campaign_slots = yield from _sets_steps(by_campaign, lambda v: np.array(v, dtype=np.intp))
        self._campaign_bits = yield from _sets_steps(by_campaign, _bits_of)
        self._active = _bits_of(i for i, c in enumerate(camps) if c.active)
        yield
        self._media = yield from _members_steps(_size_keys(cr.kind, cr.w, cr.h) for _, cr in self.slots)
        self._kind = yield from _members_steps((cr.kind,) for _, cr in self.slots)
        self._country = yield from _Dimension.steps([t.countries for t in ts])
        self._region = yield from _Dimension.steps([t.regions for t in ts])
        self._city = yield from _Dimension.steps([t.cities for t in ts])
        self._device = yield from _Dimension.steps([t.device_types for t in ts])
        self._os = yield from _Dimension.steps([t.os for t in ts])
        self._domain = yield from _Dimension.steps([t.domains for t in ts])
        self._category = yield from _Dimension.steps([t.categories for t in ts])
        self._currency = yield from _members_steps((c.currency,) for c in camps)
        self._advertiser = yield from _members_steps((c.advertiser.lower(),) for c in camps)  # badv is read in lower case
        self._app = yield from _members_steps((c.bundle.lower(),) if c.bundle else () for c in camps)  # bapp: advertised apps
        player = [cr.kind in ("video", "audio") for _, cr in self.slots]
        self._mime = yield from _members_steps(cr.mimes if v else () for v, (_, cr) in zip(player, self.slots, strict=True))
        self._any_mime = _bits_of(i for i, (v, (_, cr)) in enumerate(zip(player, self.slots, strict=True))
                                  if not v or not cr.mimes)
        yield
        self._video_mime_bits: dict[tuple[str, ...], int] = {}
        self._of_kind = {k: [i for i, (_, cr) in enumerate(self.slots) if cr.kind == k] for k in ("video", "audio", "native")}
        yield
        self._play_bits: dict[tuple, int] = {}
        self._natives: dict[str, int] = {}  # native request key -> the native slots that can answer it
        self._native_fills: dict[tuple[int, str], tuple] = {}  # (slot, request key) -> which asset fills which
        self._native_adms: dict[tuple[int, str], str] = {}  # (slot, request key) -> its answer's adm, once it won
        self._lang_bits: dict[frozenset[str], int] = {}
        self._all = (1 << self.n) - 1
        # a blocked IAB1 blocks IAB1 and IAB1-2: each creative category is listed under itself and its parent
        self._blocks = yield from _members_steps({x for c in cr.cats for x in (c, c.split("-", 1)[0])}
                                                 for _, cr in self.slots)
        self._has_deals = _bits_of(i for i, t in enumerate(ts) if t.deals)
        self._deal_only = _bits_of(i for i, t in enumerate(ts) if t.deal_only)
        self._insecure = _bits_of(i for i, (_, cr) in enumerate(self.slots) if not cr.secure)
        self._limited = _bits_of(i for i, (_, cr) in enumerate(self.slots) if cr.apis or cr.attr or cr.btypes)
        self._allowed: dict[tuple, int] = {}  # Media.limits -> the `_limited` slots it allows
        yield
        self._deal_targets = yield from _members_steps(t.deals for t in ts)  # deal id -> the slots whose campaign targets it
        yield
        self.caps = {c.id: (c.freq_per_hour, c.freq_per_day, c.timezone) for c in camps if c.freq_per_hour or c.freq_per_day}
        yield
        self._capped = _bits_of(i for i, c in enumerate(camps) if c.id in self.caps)
        self._live_key: object = None
        self._live_bits = 0
        self._cur_bits: dict[tuple[str, ...], int] = {}
        self._req_bits: dict[tuple, int] = {}
        self._counts_memo: dict[int, dict[str, int]] = {}
        self._blocked: dict[tuple[int, frozenset[str]], int] = {}
        self._built = True

    def __len__(self) -> int:
        return len(self.campaigns)

    def swap(self, campaign: Campaign) -> None:
        """Put `campaign` in place of its version here, from which it differs only in fields the index does not
        read but for the live set (status, budgets, flight, time zone): its slots keep their numbers, and only the
        set of active slots moves (and a capped campaign's clock)."""
        at = self._first[campaign.id]
        for k, cr in enumerate(campaign.creatives):
            self.slots[at + k] = (campaign, cr)
        self.campaigns[campaign.id] = campaign
        if self._built:
            if campaign.id in self.caps:  # a capped campaign's time zone: its caps count hours and days on its clock
                self.caps[campaign.id] = (campaign.freq_per_hour, campaign.freq_per_day, campaign.timezone)
            bits = self._campaign_bits.get(campaign.id, 0)
            self._active = self._active | bits if campaign.active else self._active & ~bits

    def indices(self, bits: int) -> np.ndarray:
        """The slot numbers in a set of slots, ascending."""
        raw = np.frombuffer(bits.to_bytes(self._nbytes, "little"), dtype=np.uint8)
        return np.unpackbits(raw, bitorder="little").view(bool).nonzero()[0]

    # -- plain candidate lists (for tools and tests) -------------------------------------

    def candidates(self, imp: Imp, country: str) -> list[Candidate]:
        """Creatives of active campaigns whose kind, size and country fit the impression (before the finer checks)."""
        if not self._built:
            self._build()
        return [self.slots[i] for i in
                self.indices(self._media_bits(imp) & self._country.one(country) & self._active).tolist()]

    def slots_of(self, campaign: str) -> np.ndarray:
        if not self._built:
            self._build()
        return self._campaign_slots.get(campaign, _EMPTY)

    # -- the bid path ---------------------------------------------------------------------

    def _media_bits(self, imp: Imp) -> int:
        """Creatives that fit the impression's media object, or (multi-format) any one of them."""
        out = 0
        limited = self._limited
        for media in imp.media:
            bits = self._format_bits(media)
            if bits & limited:
                bits &= ~limited | self._allowed_bits(media)
            out |= bits
        return out

    def _allowed_bits(self, media: Media) -> int:
        """Of the creatives that need an API framework or have attributes, those the placement allows."""
        key = media.limits
        bits = self._allowed.get(key)
        if bits is None:
            bits = _bits_of(i for i in self.indices(self._limited).tolist() if self.slots[i][1].allowed_by(media))
            if len(self._allowed) >= MEDIA_RULES_CACHE:
                self._allowed.clear()
            self._allowed[key] = bits
        return bits

    def _format_bits(self, media: Media) -> int:
        kind = media.kind
        if kind == "banner":
            get = self._media.get
            out = 0
            for w, h in media.sizes:
                out |= get((kind, w, h), 0)
            return out
        if kind == "native":
            return self._native_bits(media.native) if media.native is not None else self._kind.get(kind, 0)
        out = self._video_bits(media.sizes, media.mimes) if kind == "video" else self._mime_bits(
            self._kind.get(kind, 0), media.mimes)
        if out and media.plays:
            out &= self._player_bits(media)
        return out

    def _player_bits(self, media: Media) -> int:
        """Video or audio creatives that meet a player's protocols, durations and linearity."""
        key = media.plays
        bits = self._play_bits.get(key)
        if bits is None:
            bits = _bits_of(i for i in self._of_kind.get(media.kind, ()) if self.slots[i][1].plays_in(media))
            if len(self._play_bits) >= MEDIA_RULES_CACHE:
                self._play_bits.clear()
            self._play_bits[key] = bits
        return bits

    def _native_bits(self, request: NativeRequest) -> int:
        """Native creatives that can fill every required asset of the request; how, is kept for `native`."""
        bits = self._natives.get(request.key)
        if bits is None:
            if len(self._natives) >= MEDIA_RULES_CACHE:
                self._natives.clear()
                self._native_fills.clear()
                self._native_adms.clear()
            bits = 0
            for i in self._of_kind.get("native", ()):
                cr = self.slots[i][1]
                fills = native_fills(cr.native, request) if cr.native is not None else ()
                if fills is not None:
                    bits |= 1 << i
                    self._native_fills[(i, request.key)] = fills
            self._natives[request.key] = bits
        return bits

    def native(self, slot: int, request: NativeRequest) -> str:
        """The adm a native slot answers `request` with (the slot passed `_native_bits` for it), rendered once."""
        key = (slot, request.key)
        adm = self._native_adms.get(key)
        if adm is None:
            cr = self.slots[slot][1]
            fills = self._native_fills.get(key)
            adm = (native_adm(cr.native, request, fills) if cr.native is not None else None) or cr.adm
            self._native_adms[key] = adm
        return adm

    def _mime_bits(self, out: int, mimes: tuple[str, ...]) -> int:
        """`out` less the video/audio creatives in none of the player's MIME types (one that names none fits)."""
        if not mimes:
            return out
        allowed = self._video_mime_bits.get(mimes)
        if allowed is None:
            allowed = self._any_mime | self._union(self._mime, mimes)
            if len(self._video_mime_bits) < 64:
                self._video_mime_bits[mimes] = allowed
        return out & allowed

    def _video_bits(self, sizes: tuple[tuple[int, int], ...], mimes: tuple[str, ...]) -> int:
        """Video creatives the player takes: in an offered size, or unsized; and in one of its MIME types, when
        both the impression and the creative name theirs."""
        if sizes:
            get = self._media.get
            out = get(("video", 0, 0), 0)
            for w, h in sizes:
                out |= get(("video", w, h), 0)
        else:
            out = self._kind.get("video", 0)
        return self._mime_bits(out, mimes)

    def live_changed(self, old: frozenset[str], new: frozenset[str], campaign: str, on: bool) -> None:
        """The live set `old` became `new` by adding (`on`) or removing one campaign: its slots alone are moved in
        the cached set, where `live_bits` would walk every slot."""
        if self._built and old is self._live_key:
            bits = self._campaign_bits.get(campaign, 0)
            self._live_bits = self._live_bits | bits if on else self._live_bits & ~bits
            self._live_key = new

    def live_bits(self, live: frozenset[str]) -> int:
        """Slots of campaigns in `live`; cached while the engine keeps the same live set."""
        if live is not self._live_key:
            self._live_key = live
            self._live_bits = _bits_of(i for i, cid in enumerate(self.slot_campaign) if cid in live)
            self._req_bits.clear()
        return self._live_bits

    def _currency_bits(self, allowed: tuple[str, ...]) -> int:
        m = self._cur_bits.get(allowed)
        if m is None:
            m = 0
            for cur in allowed:
                m |= self._currency.get(cur, 0)
            if len(self._cur_bits) < 64:
                self._cur_bits[allowed] = m
        return m

    def _request_bits(self, req: BidRequest, live: frozenset[str]) -> tuple:
        """The request-wide stage sets, in stage order.

        The targeting set is memoised on what it depends on: the same site, place and device type repeat all day.
        """
        live_m = self.live_bits(live)
        # only strings and numbers in the key and ints in the value: the garbage collector stops tracking them
        key = (req.country, req.region, req.city, req.device_type, req.os, req.domain, req.cats)
        targeting = self._req_bits.get(key)
        if targeting is None:
            targeting = (self._region.one(req.region) & self._city.one(req.city) & self._device.one(req.device_type)
                         & self._os.one(req.os.lower()) & self._domain.one(req.domain)
                         & (self._category.any_of(with_parents(req.cats)) if req.cats else self._category.any))
            if len(self._req_bits) >= REQUEST_BITS_CACHE:
                self._req_bits.clear()
            self._req_bits[key] = targeting
        if req.wlang:
            targeting &= self._speaking(req.wlang)
        not_adv = self._blocked_by(0, req.badv) if req.badv else 0
        not_cat = self._blocked_by(1, req.bcat) if req.bcat else 0
        if req.acat or (req.bcat and req.cattax != 1):
            not_cat = self._categories_refused(req, not_cat)
        not_app = self._blocked_by(3, req.bapp) if req.bapp else 0
        return (self._country.one(req.country), live_m, self._currency_bits(req.cur or ("USD",)), targeting, not_adv,
                not_cat, not_app)

    def _categories_refused(self, req: BidRequest, blocked: int) -> int:
        """Slots `bcat` and `acat` rule out.  Creatives carry IAB Content Category 1.0 codes: under another
        taxonomy (`cattax`) the lists cannot be read, so every creative is ruled out."""
        if req.cattax != 1:
            return self._all
        return blocked | self._blocked_by(2, req.acat)

    def _speaking(self, languages: frozenset[str]) -> int:
        """Slots whose creative's language `wlang`/`wlangb` allow."""
        bits = self._lang_bits.get(languages)
        if bits is None:
            bits = _bits_of(i for i, (_, cr) in enumerate(self.slots) if cr.speaks(languages))
            if len(self._lang_bits) >= MEDIA_RULES_CACHE:
                self._lang_bits.clear()
            self._lang_bits[languages] = bits
        return bits

    def _outside(self, allowed: frozenset[str]) -> int:
        """Slots with a category the `acat` allow-list does not hold (itself or its tier-1 parent), or with none."""
        return _bits_of(i for i, (_, cr) in enumerate(self.slots)
                        if not cr.cats or any(c not in allowed and c.split("-", 1)[0] not in allowed for c in cr.cats))

    def _blocked_by(self, which: int, blocked: frozenset[str]) -> int:
        """Slots a list rules out (0: blocked advertisers, 1: blocked categories, 2: outside allowed categories,
        3: blocked advertised apps); exchanges send the same lists again and again."""
        key = (which, blocked)
        bits = self._blocked.get(key)
        if bits is None:
            lists = {0: self._advertiser, 1: self._blocks, 3: self._app}
            bits = self._outside(blocked) if which == 2 else self._union(lists[which], blocked)
            if len(self._blocked) >= REQUEST_BITS_CACHE:
                self._blocked.clear()
            self._blocked[key] = bits
        return bits

    @staticmethod
    def _union(table: dict[object, int], keys: Iterable[str]) -> int:
        out = 0
        get = table.get
        for k in keys:
            out |= get(k, 0)
        return out

    def eligible(self, req: BidRequest, imp: Imp, live: frozenset[str], seat: str, user: str,
                 frequency: FrequencyStore, now: float, full: frozenset[str] = frozenset()) -> Eligible:
        """The slots that may bid on `imp`, each with its floor and deal, or the furthest stage any candidate reached.

        `now` (Unix seconds) places the frequency counts in each campaign's hour and day; `full` names the campaigns
        whose cap this request's earlier impressions have used up.
        """
        if not self._built:
            self._build()
        country, live_m, cur_m, targeting, not_adv, not_cat, not_app = self._request_bits(req, live)
        m = self._media_bits(imp) & country & self._active  # a paused campaign's slots match nothing
        if not m:
            return Eligible(reason=NO_MATCH)
        m &= live_m
        if not m:
            return Eligible(reason=NOT_LIVE)
        m &= cur_m
        if (imp.floor or imp.by_length) and not imp.deals:
            m &= self._currency.get(imp.floorcur, 0)
        if not m:
            return Eligible(reason=CURRENCY)
        m &= targeting
        if imp.secure:
            m &= ~self._insecure
        if not m:
            return Eligible(reason=TARGETING)
        if not_adv:
            m &= ~not_adv
            if not m:
                return Eligible(reason=BLOCKED_ADV)
        if not_cat:
            m &= ~not_cat
            if not m:
                return Eligible(reason=BLOCKED_CAT)
        if not_app:
            m &= ~not_app
            if not m:
                return Eligible(reason=BLOCKED_APP)
        floor = floor_micros(imp.floor)
        deals: dict[int, Deal] = {}
        if imp.deals:
            m, deals, reason = self._with_deals(m, imp, seat, floor > 0 or imp.by_length)
            if reason:
                return Eligible(reason=reason)
        else:  # no deal on offer: deal-only campaigns sit out, and a private auction has no one to bid
            m = 0 if imp.private_auction else m & ~self._deal_only
            if not m:
                return Eligible(reason=DEAL)
        capped: dict[str, int] = {}
        if m & self._capped:
            if user:
                m, capped = self._within_caps(m, user, frequency, now)
            else:  # no usable user id: no capped campaign can keep its cap
                capped = self._per_campaign(m & self._capped)
                m &= ~self._capped
            if not m:
                return Eligible(reason=FREQUENCY_CAP, capped=capped)
        if full:
            for cid in full:
                m &= ~self._campaign_bits.get(cid, 0)
            if not m:
                return Eligible(reason=FREQUENCY_CAP, capped=capped)
        slots = self.indices(m)
        if not deals:
            floors_by = self._by_length(imp, slots, floor, {}) if imp.by_length else floor
            return Eligible(slots, floors_by, {}, capped=capped, bits=m)
        floors = np.full(len(slots), floor, dtype=np.int64)
        at: dict[int, Deal] = {}
        pos = {s: p for p, s in enumerate(slots.tolist())}
        for s, d in deals.items():
            p = pos.get(s)
            if p is not None:
                at[p] = d
                floors[p] = floor_micros(d[1])
        if imp.by_length:
            floors = self._by_length(imp, slots, floors, at)
        return Eligible(slots, floors, at, capped=capped, bits=m)

    def _by_length(self, imp: Imp, slots: np.ndarray, floors: np.ndarray | int, at: dict[int, Deal]) -> np.ndarray:
        """Each candidate's floor where the impression or its deal prices by creative length (2.6 section 7.11: a
        deal's own floors first, then the video or audio object's, then the impression's)."""
        out = np.full(len(slots), floors, dtype=np.int64) if isinstance(floors, int) else floors
        by_media = {m.kind: m.floors for m in imp.media if m.floors is not None}
        by_deal = {d.id: d for d in imp.deals}
        for p, s in enumerate(slots.tolist()):
            cr = self.slots[s][1]
            taken = at.get(p)
            deal = by_deal.get(taken[0]) if taken is not None else None
            if deal is not None and deal.floors is not None:
                otherwise = deal.floor if deal.stated else imp.floor if deal.cur == imp.floorcur else math.inf
                f = deal.floors.floor(cr.duration, otherwise)
            elif (deal is not None and deal.stated) or cr.kind not in by_media:
                continue
            else:
                f = by_media[cr.kind].floor(cr.duration, imp.floor)
            out[p] = NO_FLOOR_TO_BID if f == math.inf else min(floor_micros(f), NO_FLOOR_TO_BID)
        return out

    def _with_deals(self, m: int, imp: Imp, seat: str, floored: bool) -> tuple[int, dict[int, Deal], int]:
        """Apply deal rules to an impression that offers deals; slot -> deal for those that bid on one.  `floored`:
        the impression itself has a floor (`bidfloor`, or floors by creative length), in its `bidfloorcur`."""
        deals: dict[int, Deal] = {}
        keep = m & self._has_deals if imp.private_auction else m & (~self._deal_only | self._has_deals)
        # only campaigns targeting a deal on offer have their deals read one by one; the others have none here
        targeting = m & self._has_deals
        offered = targeting & self._union(self._deal_targets, (d.id for d in imp.deals))
        elsewhere = targeting & ~offered
        if elsewhere:  # the open auction for them, unless it is private or they are deal-only
            keep &= ~(elsewhere if imp.private_auction else elsewhere & self._deal_only)
        no_deal: list[int] = []  # slots ruled out, removed together (each removal copies the whole set)
        foreign: list[int] = []  # slots whose only deal here is floored in another currency than the campaign's
        for s in (self.indices(offered).tolist() if offered else ()):
            camp = self.slots[s][0]
            d = deal_for(camp, imp, seat)
            if d is None:
                if camp.targeting.deal_only or imp.private_auction:
                    no_deal.append(s)
            elif d[1] and d[2] != camp.currency:
                foreign.append(s)
            else:
                deals[s] = d
        if no_deal:
            keep &= ~_bits_of(no_deal)
        if not keep:
            return keep, deals, DEAL
        # a deal floored in another currency than the campaign's cannot be bid on: the campaign sits out, or where an
        # open auction runs beside the deals (and it is not deal-only) bids there without the deal
        out = [s for s in foreign if imp.private_auction or self.slots[s][0].targeting.deal_only]
        if out:
            keep &= ~_bits_of(out)
        # floor currency: a deal's floor is in the deal's currency, the rest in the impression's
        if floored:
            keep &= self._currency.get(imp.floorcur, 0) | _bits_of(deals)
        if not keep:
            return keep, deals, CURRENCY
        return keep, deals, 0

    def _within_caps(self, m: int, user: str, frequency: FrequencyStore, now: float) -> tuple[int, dict[str, int]]:
        """Drop the capped campaigns this user has seen enough of."""
        drop = 0
        for cid in frequency.exhausted(user, self.caps, cap_clock(now)):
            drop |= self._campaign_bits[cid]
        drop &= m
        if not drop:
            return m, {}
        return m & ~drop, self._per_campaign(drop)

    def _per_campaign(self, bits: int) -> dict[str, int]:
        """How many slots of each campaign a set holds (for the frequency-cap metrics); the same sets recur, so
        the answers are memoised.  Callers only read them."""
        counts = self._counts_memo.get(bits)
        if counts is None:
            counts = {}
            for s in self.indices(bits).tolist():
                cid = self.slot_campaign[s]
                counts[cid] = counts.get(cid, 0) + 1
            if len(self._counts_memo) >= REQUEST_BITS_CACHE:
                self._counts_memo.clear()
            self._counts_memo[bits] = counts
        return counts


def deal_for(camp: Campaign, imp: Imp, seat: str) -> Deal | None:
    """The deal this campaign may bid on in `imp`: (id, floor, currency, auction type); None when none applies.

    Of several, the lowest floor in the campaign's currency (the cheapest way in); with none in its currency, the
    first, which the caller cannot bid on (it refuses the campaign by name, or lets it bid in the open auction).
    """
    wanted = camp.targeting.deals
    if not wanted:
        return None
    adv = camp.advertiser.lower()
    open_to = [d for d in imp.deals if d.id in wanted and (not d.wseat or seat in d.wseat)
               and (not d.wadomain or adv in d.wadomain)]
    if not open_to:
        return None
    payable = [d for d in open_to if not (d.floor or d.floors) or d.cur == camp.currency]
    if payable:
        d = min(payable, key=lambda x: x.floor)
        return d.id, d.floor, d.cur, d.at
    # none in the campaign's currency: a deal floored by creative length alone has no `bidfloor`, yet its floors are
    # in its own currency too, so it is given an unbounded one: the caller sees a floor in another currency either way
    d = open_to[0]
    return d.id, d.floor or math.inf, d.cur, d.at


def with_parents(cats: tuple[str, ...]) -> tuple[str, ...]:
    """A page's categories with their tier-1 parents: a campaign targeting IAB12 (news) takes a page of IAB12-3, as a
    blocked IAB12 blocks it."""
    return tuple(dict.fromkeys((*cats, *(c.split("-", 1)[0] for c in cats if "-" in c))))


def floor_micros(floor: float) -> int:
    """A floor in CPM micros, rounded up: a bid at the rounded floor must not be under the floor itself.  The
    float's own error (0.83 * 1e6 = 829999.9999999999) is rounded away first; then the bid as sent (micros / 1e6,
    the float an exchange compares) is raised a micro while it is still under the floor (an exchange's
    0.30000000000000004 is no floor 0.3 meets)."""
    micros = math.ceil(round(floor * 1e6, 3))
    while micros < 2**53 and micros / 1e6 < floor:  # a micro or two at most; past 2**53 no bid is made anyway
        micros += 1
    return micros


def fits_imp(cr: Creative, imp: Imp) -> bool:
    """Whether the creative fits one of the media objects the impression offers (the plain rule, per candidate),
    over HTTPS alone when the impression is secure."""
    return (cr.secure or not imp.secure) and any(cr.fits(media) for media in imp.formats())


def matches(camp: Campaign, cr: Creative, req: BidRequest) -> str:
    """'' when the campaign may bid on this request, else the no-bid reason (a metric label)."""
    t = camp.targeting
    if t.regions and req.region not in t.regions:
        return "targeting"
    if t.cities and req.city not in t.cities:
        return "targeting"
    if t.device_types and req.device_type not in t.device_types:
        return "targeting"
    if t.os and req.os.lower() not in t.os:
        return "targeting"
    if t.domains and req.domain not in t.domains:
        return "targeting"
    if t.categories and not t.categories.intersection(with_parents(req.cats)):
        return "targeting"
    if req.wlang and not cr.speaks(req.wlang):
        return "targeting"
    if req.badv and camp.advertiser.lower() in req.badv:
        return "blocked_advertiser"
    if req.bcat and any(c in req.bcat or c.split("-", 1)[0] in req.bcat for c in cr.cats):
        return "blocked_category"
    if req.acat and (not cr.cats or any(c not in req.acat and c.split("-", 1)[0] not in req.acat for c in cr.cats)):
        return "blocked_category"
    if (req.bcat or req.acat) and req.cattax != 1:
        return "blocked_category"
    if req.bapp and camp.bundle and camp.bundle.lower() in req.bapp:  # bapp blocks advertised apps, not the publisher's
        return "blocked_app"
    return ""
