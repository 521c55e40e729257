"""Scoring the eligible creatives of an impression together, as arrays over index slots.

With a thousand campaigns an impression can have a hundred eligible
creatives; scoring and pricing them one by one in Python was most of a bid's
cost.  Here the per-creative constants (value per click, pacing lambda, max
bid, exploration posterior) sit in arrays over the index slots: what comes
from the index alone (`SlotConstants`: values, feature ids, pacing, updated
per campaign) is built once per index, and a new model only gathers its
weights at those ids (`SlotTables`).  An impression costs a handful of numpy
operations:

- pCTR: a Thompson draw from the creative's Beta posterior while it has fewer
  than `explore_below` billed impressions (as `models.exploration.explore_pctr`;
  taken from a per-creative pool of ready draws, `next_draws`), else the
  model's prediction, for all trained creatives at once (`predict`):
  the model's weights as a dense array, each creative's own feature ids as
  columns, and its creative x domain ids derived from one CRC per request;
- an upper bound on the price, min(pCTR x value x 1000 / (1 + lambda), max
  bid): `pricing.paced_value(pricing.impression_value_cpm(...))` without its
  rounding down, and no pricing path bids above the paced value.

The engine then prices candidates in descending bound with the canonical
`pricing.bid_price` and stops as soon as the bound cannot beat the best price
found.  So the array code only orders and prunes the work; every price that
leaves the bidder comes from the one pricing function (with, for a trained
creative, `ModelSnapshot.predict`'s own pCTR), and the tests check the bound
against it.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from bidder.pacing import PacingState, conversion_rate
from bidder.slices import STEP_ITEMS, Steps, drain
from bidder.targeting import CampaignIndex
from models.conversion import DEFAULT_CVR
from models.features import HASH_MASK, crc_shifter, cross_prefix_crc, hash_cross, hash_feature
from models.snapshot import ModelSnapshot

_MIN_SHAPE = 1e-9  # Beta shapes are floored here, as models.exploration.thompson_ctr does
_ROUNDING = 1.0 + 1e-9  # covers float rounding (and numpy's exp against math.exp), so the bound is never a hair under
_CLIP = 30.0  # as ModelSnapshot.predict
_LONGEST_DOMAIN = 256  # longer domains (bytes) get their cross ids one by one
STEP_SLOTS = STEP_ITEMS  # slots between two pauses of a build in steps
POOL = 64  # Thompson draws kept ready per exploring slot
ALPHA, BETA = range(2)  # columns of SlotTables.table


def _filled_steps(n: int, dtype: type, values: Callable[[int, int], Iterable[Any]]) -> Steps[np.ndarray]:
    """An array of `n` items, `values(lo, hi)` giving those of slots lo..hi, filled a few STEP_SLOTS at a time."""
    out: np.ndarray = np.empty(n, dtype=dtype)
    for lo in range(0, n, STEP_SLOTS * 4):
        hi = min(lo + STEP_SLOTS * 4, n)
        out[lo:hi] = np.fromiter(values(lo, hi), dtype=dtype, count=hi - lo)
        yield
    return out


class SlotConstants:
    """What the scoring arrays take from the index and the pacing states alone, kept across model swaps.

    The streams side publishes a model every few seconds; hashing every creative's feature names again for each
    (campaign, creative, creative x hour, creative x domain prefixes) cost a bidder tens of milliseconds per swap.
    Here they are computed once per index, and a new model only gathers its weights at these ids.
    """

    __slots__ = ("index", "unit", "per_conversion", "max_bid", "scale", "ceiling", "campaign_fids", "creative_fids",
                 "creative_names", "domain_crc", "_domain_shift", "_hour_fids", "_previous", "paced")

    def __init__(self, index: CampaignIndex, pacing: dict[str, PacingState], previous: SlotConstants | None = None) -> None:
        """`previous`: the constants of the index this one replaces.  A campaign change keeps most creatives, and
        their per-hour and per-domain-length ids are then a gather from it rather than a hash per creative."""
        drain(self._build_steps(index, pacing, previous))

    @classmethod
    def build_steps(cls, index: CampaignIndex, pacing: dict[str, PacingState],
                    previous: SlotConstants | None = None) -> Steps[SlotConstants]:
        """The constants in steps, for a server to build between bids.  The pacing states are those of when
        it began (`paced`): the caller folds in those that arrived since."""
        consts = cls.__new__(cls)
        yield from consts._build_steps(index, pacing, previous)
        return consts

    def _build_steps(self, index: CampaignIndex, pacing: dict[str, PacingState],
                     previous: SlotConstants | None) -> Steps[None]:
        self.index = index
        slots = index.slots
        n = len(slots)
        camps = [c for c, _ in slots]
        # impression_value_cpm: cpc goals are worth pCTR x value per click, cpa goals pCTR x P(conversion | click)
        # x value per conversion, with the conversion rate the pacing state carries (set_pacing)
        self.unit = np.fromiter((c.value_per_click if c.goal == "cpc" else 0.0 for c in camps), dtype=np.float64, count=n)
        yield
        self.per_conversion = np.fromiter((c.value_per_conversion if c.goal == "cpa" else 0.0 for c in camps),
                                          dtype=np.float64, count=n)
        self.max_bid = np.fromiter((c.max_bid_cpm for c in camps), dtype=np.float64, count=n)
        self.scale = np.zeros(n)
        self.ceiling = np.zeros(n)
        yield
        self.paced = dict(pacing)
        yield from self._pacing_steps(self.paced)
        names: list[str] = []
        for lo in range(0, n, STEP_SLOTS * 4):
            names.extend(f"{c.id}/{cr.id}" for c, cr in slots[lo:lo + STEP_SLOTS * 4])  # as candidate_features names
            yield
        self.creative_names = names
        self.campaign_fids = yield from _filled_steps(n, np.intp, lambda lo, hi: (
            hash_feature("campaign", c.id) for c in camps[lo:hi]))
        self.creative_fids = yield from _filled_steps(n, np.intp, lambda lo, hi: (
            hash_feature("creative", name) for name in names[lo:hi]))
        self.domain_crc = yield from _filled_steps(n, np.uint32, lambda lo, hi: (
            cross_prefix_crc("creative", name, "domain") for name in names[lo:hi]))
        self._domain_shift: dict[int, np.ndarray] = {}  # domain length -> per slot prefix CRC carried over that many bytes
        self._hour_fids: dict[int, np.ndarray] = {}  # hour -> per slot creative x hour feature id
        self._previous: tuple | None = None
        if previous is not None:  # only its memos are kept, not the object: no chain of old indexes
            at = {name: i for i, name in enumerate(previous.creative_names)}
            src = np.fromiter((at.get(name, -1) for name in names), dtype=np.intp, count=n)
            kept = np.flatnonzero(src >= 0)
            self._previous = (previous._domain_shift, previous._hour_fids, src[kept], kept, np.flatnonzero(src < 0))

    def set_pacing(self, pacing: dict[str, PacingState]) -> None:
        """Fold each campaign's pacing lambda (negative counts as 0, as in paced_value) into the per-slot scale."""
        drain(self._pacing_steps(pacing))

    def _pacing_steps(self, pacing: dict[str, PacingState]) -> Steps[None]:
        """`set_pacing`, pausing every STEP_SLOTS campaigns (one state each, with thousands of campaigns); the
        scale changes at the end, in one go."""
        lam = np.zeros(len(self.unit))
        cvr = np.full(len(self.unit), DEFAULT_CVR)
        states = list(pacing.items())
        for lo in range(0, len(states), STEP_SLOTS):
            for cid, state in states[lo:lo + STEP_SLOTS]:
                idx = self.index.slots_of(cid)
                if len(idx) and not math.isnan(state.lam):
                    lam[idx] = max(state.lam, 0.0)
                if len(idx):
                    cvr[idx] = conversion_rate(state)
            yield
        self.scale[:] = (self.unit + self.per_conversion * cvr) * 1000.0 / (1.0 + lam) * _ROUNDING
        # the bound at pCTR = 1: no draw or prediction gives more
        np.minimum(self.scale, self.max_bid, out=self.ceiling)

    def set_campaign_pacing(self, state: PacingState) -> None:
        """One campaign's new pacing state, folded into its own slots only: the streams side sends a state per
        campaign, and rebuilding every slot's scale for each would cost the bid path a thousandfold.  Element for
        element the same arithmetic as `set_pacing`, so both leave the same bits."""
        idx = self.index.slots_of(state.campaign)
        if not len(idx):
            return
        lam = 0.0 if math.isnan(state.lam) else max(state.lam, 0.0)
        scale = (self.unit[idx] + self.per_conversion[idx] * conversion_rate(state)) * 1000.0 / (1.0 + lam) * _ROUNDING
        self.scale[idx] = scale
        self.ceiling[idx] = np.minimum(scale, self.max_bid[idx])

    def domain_shift(self, length: int) -> np.ndarray:
        """Per slot, its creative x domain prefix CRC carried over `length` more bytes (masked to the id space)."""
        shifted = self._domain_shift.get(length)
        if shifted is None:
            shift = crc_shifter(length)
            shifted = self._domain_shift[length] = self._per_slot(
                0, length, lambda rows: shift(self.domain_crc[rows]).astype(np.intp) & HASH_MASK)
        return shifted

    def hour_fids(self, hour: int) -> np.ndarray:
        ids = self._hour_fids.get(hour)
        if ids is None:
            names = self.creative_names
            ids = self._hour_fids[hour] = self._per_slot(1, hour, lambda rows: np.fromiter(
                (hash_cross("creative", names[i], "hour", hour) for i in rows.tolist()), dtype=np.intp, count=len(rows)))
        return ids

    def _per_slot(self, memo: int, key: int, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """A per-slot array that depends only on each slot's creative name: gathered from the previous constants'
        memo (0: domain shifts, 1: hour ids) where it has one, computed for the creatives it did not have."""
        n = len(self.creative_names)
        previous = self._previous
        old = previous[memo].get(key) if previous is not None else None
        if previous is None or old is None:
            return compute(np.arange(n))
        _, _, src, kept, fresh = previous
        out = np.empty(n, dtype=old.dtype)
        out[kept] = old[src]
        if len(fresh):
            out[fresh] = compute(fresh)
        return out


class SlotTables:
    """Per-slot scoring arrays for one (index, model) pair: the model's columns over the index's `SlotConstants`.

    A new model builds new tables over the same constants; a new index builds both.
    """

    __slots__ = ("index", "model", "explore_below", "consts", "table", "explore", "explore_bits", "any_explore", "gen",
                 "weights", "_fixed", "_neg_lam", "_neg_off", "_by_hour", "_pool", "_next", "_row_start", "_calls")
    consts: SlotConstants

    def __init__(self, index: CampaignIndex, model: ModelSnapshot, explore_below: int, pacing: dict[str, PacingState],
                 rng: random.Random, previous: SlotTables | None = None) -> None:
        """`previous`: the tables these replace; over the same index its constants are kept, `pacing` already in them."""
        drain(self._build_steps(index, model, explore_below, pacing, rng, previous))

    @classmethod
    def build_steps(cls, index: CampaignIndex, model: ModelSnapshot, explore_below: int, pacing: dict[str, PacingState],
                    rng: random.Random, previous: SlotTables | None = None) -> Steps[SlotTables]:
        """The tables in steps, their draws filled: for a server to build between bids, then swap in whole
        (a model swap, a new index).  Over a new index the constants hold the pacing states of when it began
        (`SlotConstants.paced`): whoever swaps the tables in folds in those that arrived since."""
        tables = cls.__new__(cls)
        yield from tables._build_steps(index, model, explore_below, pacing, rng, previous)
        yield from tables._refill_steps()
        return tables

    def _build_steps(self, index: CampaignIndex, model: ModelSnapshot, explore_below: int,
                     pacing: dict[str, PacingState], rng: random.Random, previous: SlotTables | None) -> Steps[None]:
        self.index, self.model, self.explore_below = index, model, explore_below
        consts: SlotConstants
        if previous is not None and previous.index is index:
            consts = previous.consts
        else:
            consts = yield from SlotConstants.build_steps(index, pacing, previous.consts if previous else None)
        self.consts = consts
        n = index.n
        slots = index.slots
        table = self.table = np.ones((n, 2))  # the exploration posterior: ALPHA, BETA
        self.explore = np.zeros(n, dtype=bool)
        if explore_below > 0:
            for lo in range(0, n, STEP_SLOTS):
                hi = min(lo + STEP_SLOTS, n)
                self.explore[lo:hi] = np.fromiter((model.creative_impressions(c.id, cr.id) < explore_below
                                                   for c, cr in slots[lo:hi]), dtype=bool, count=hi - lo)
                yield
        rows = np.flatnonzero(self.explore)
        for lo in range(0, len(rows), STEP_SLOTS):
            part = rows[lo:lo + STEP_SLOTS]
            shapes = [model.creative_beta(slots[i][0].id, slots[i][1].id) for i in part.tolist()]
            table[part] = np.maximum(np.array(shapes, dtype=np.float64), _MIN_SHAPE)
            yield
        self.any_explore = bool(self.explore.any())
        self.explore_bits = int.from_bytes(np.packbits(self.explore, bitorder="little").tobytes(), "little")
        self.gen = np.random.default_rng(rng.getrandbits(64))
        self._pool = np.zeros(n * POOL)  # slot s's ready draws at [s * POOL, (s + 1) * POOL)
        self._row_start = np.arange(n, dtype=np.intp) * POOL
        self._next = self._row_start + POOL  # per slot, the position of its next unused draw; the row's end: none left
        self._calls = POOL // 2  # so the first call fills every exploring slot's pool
        yield
        yield from self._model_columns(model)

    @property
    def scale(self) -> np.ndarray:
        return self.consts.scale

    @property
    def max_bid(self) -> np.ndarray:
        return self.consts.max_bid

    @property
    def ceiling(self) -> np.ndarray:
        return self.consts.ceiling

    def set_campaign_pacing(self, state: PacingState) -> None:
        self.consts.set_campaign_pacing(state)

    def _model_columns(self, model: ModelSnapshot) -> Steps[None]:
        """Per slot, what ModelSnapshot.predict looks up per candidate, folded into as few columns as possible."""
        slots = self.index.slots
        n = len(slots)
        consts = self.consts
        self.weights = w = model.dense_weights()
        yield
        self._fixed = w[consts.campaign_fids] + w[consts.creative_fids]
        # predict: s = a * (lam * z + offset) + c, clipped, then 1 / (1 + exp(-s)); kept here as -s = neg_lam * z + neg_off
        a, c = model.calibration
        blends: list[tuple[float, float]] = []
        for lo in range(0, n, STEP_SLOTS * 4):
            blends.extend(model.blend_for(cp.id, cr.id) for cp, cr in slots[lo:lo + STEP_SLOTS * 4])
            yield
        self._neg_lam = -a * np.fromiter((b[0] for b in blends), dtype=np.float64, count=n)
        self._neg_off = -(a * np.fromiter((b[1] for b in blends), dtype=np.float64, count=n) + c)
        self._by_hour: dict[int, np.ndarray] = {}  # hour -> per slot fixed weights + its creative x hour weight

    def warm(self, longest: int = 64) -> None:
        """Build now what `predict` would otherwise build on first use (per hour, per domain length): at startup,
        rather than as a pause in the first requests."""
        for hour in range(24):
            self._hour_weights(hour)
        for n in range(1, longest + 1):
            self.consts.domain_shift(n)

    def _domain_fids(self, slots: np.ndarray, domain: str) -> np.ndarray:
        """creative x domain feature ids of `slots`: the names differ only in a shared suffix, so CRC algebra gives
        each from its slot's prefix CRC (memoised per suffix length) and the suffix's own CRC."""
        raw = domain.encode()
        n = len(raw)
        if n > _LONGEST_DOMAIN:
            names = self.consts.creative_names
            return np.fromiter((hash_cross("creative", names[s], "domain", domain) for s in slots.tolist()),
                               dtype=np.intp, count=len(slots))
        ids = self.consts.domain_shift(n)[slots]
        ids ^= zlib.crc32(raw) & HASH_MASK  # the carried prefixes are kept masked: masking commutes with XOR
        return ids

    def _hour_weights(self, hour: int) -> np.ndarray:
        fixed = self._by_hour.get(hour)
        if fixed is None:
            fixed = self._by_hour[hour] = self._fixed + self.weights[self.consts.hour_fids(hour)]
        return fixed

    def predict(self, slots: np.ndarray, base: float, hour: int, domain: str) -> np.ndarray:
        """The model's pCTR of each slot, as ModelSnapshot.predict(base, candidate_features(...)) gives one by one.

        The same terms, summed in another order and with numpy's exp: equal to a few units in the last place,
        which the price bound's margin covers; prices themselves take ModelSnapshot.predict's value.  A NaN
        weight gives the lowest score rather than NaN, so the result is always in [0, 1].
        """
        z = self._hour_weights(hour)[slots]
        z += self.weights[self._domain_fids(slots, domain)]
        z += base
        z *= self._neg_lam[slots]
        z += self._neg_off[slots]  # -s
        # predict clips s to [-30, 30]; only the lower clip matters here (above 30 the unclipped pCTR is a hair higher,
        # which a bound may be).  fmin reads NaN as its other argument: a NaN score becomes s = -30.
        np.fmin(z, _CLIP, out=z)
        np.exp(z, out=z)
        z += 1.0
        return np.reciprocal(z, out=z)

    def _beta(self, rows: np.ndarray) -> np.ndarray:
        """Beta(alpha, beta) per row as Ga / (Ga + Gb): both gammas in one call (Generator.beta makes two
        argument checks per call, each a Python-level np.any).  0/0, possible only for vanishing shapes, reads 0."""
        g = self.gen.standard_gamma(rows[:, :2])
        return np.fmax(g[:, 0] / (g[:, 0] + g[:, 1]), 0.0)

    def draws(self, slots: np.ndarray) -> np.ndarray:
        """One fresh Thompson draw of CTR per slot (slots may repeat)."""
        return self._beta(self.table[slots])

    def next_draws(self, slots: np.ndarray) -> np.ndarray:
        """One Thompson draw of CTR per slot, each used once, from the slots' pools of ready draws.

        `slots` must be distinct and exploring (the engine passes an impression's exploring candidates).

        A draw costs a gamma generator call with its argument checks; an impression needs one for each of dozens of
        creatives.  So each exploring slot keeps POOL independent draws from its posterior and an impression takes
        the next unused one of each: the same distribution, every draw still used for one impression only.  A call
        takes at most one draw per slot, so refilling, every POOL / 2 calls, each slot that has used half its pool
        or more means no slot ever runs out in between (and no call has to check): refills come in batches, and
        about as many draws are made as used.  The posterior only changes with the model, and a new model builds
        new tables.
        """
        self._calls += 1
        if self._calls >= POOL // 2:
            self._refill()
        at = self._next[slots]
        self._next[slots] = at + 1
        return self._pool[at]

    def fill_draws(self) -> None:
        """Fill every exploring slot's pool now rather than in the first impression that needs a draw."""
        if self.any_explore:
            self._refill()

    def _refill(self) -> None:
        drain(self._refill_steps(len(self._next)))

    def _refill_steps(self, step: int = STEP_SLOTS) -> Steps[None]:
        """`_refill` a few hundred slots at a time: the draws come from the generator in the same order."""
        self._calls = 0
        rows = np.flatnonzero(self.explore & (self._next - self._row_start >= POOL // 2))
        for lo in range(0, len(rows), step):
            part = rows[lo:lo + step]
            fresh = self._beta(np.repeat(self.table[part], POOL, axis=0))
            self._pool.reshape(-1, POOL)[part] = fresh.reshape(len(part), POOL)
            self._next[part] = self._row_start[part]
            yield

    def explore_all(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pCTR, price bound) per slot when every one of them explores: one gather, pooled draws, one bound."""
        pctr = self.next_draws(slots)
        c = self.consts
        v = pctr * c.scale[slots]
        return pctr, np.minimum(v, c.max_bid[slots], out=v)

    def bounds(self, slots: np.ndarray, pctr: np.ndarray, clean: bool = False) -> np.ndarray:
        """Upper bounds (CPM micros, float) on what each slot can bid at these pCTRs.

        `clean` says every pctr is already a number in [0, 1] (posterior draws are), so the clamp can be skipped.
        """
        if not clean:
            pctr = np.fmin(np.fmax(pctr, 0.0), 1.0)  # fmax reads NaN as the other argument: NaN -> 0
        c = self.consts
        v = pctr * c.scale[slots]
        return np.minimum(v, c.max_bid[slots], out=v)
