"""Scoring the eligible creatives of an impression together, as arrays over index slots.

With a thousand campaigns an impression can have a hundred eligible
creatives; scoring and pricing them one by one in Python was most of a bid's
cost.  Here the per-creative constants (value per click, pacing lambda, max
bid, exploration posterior) sit in arrays over the index slots, rebuilt when
the index or model changes (pacing is swapped in), and an impression costs a
handful of numpy operations:

- pCTR: a Thompson draw from the creative's Beta posterior while it has fewer
  than `explore_below` billed impressions (as `models.exploration.explore_pctr`),
  else the model's prediction, which the engine computes per creative;
- an upper bound on the price, min(pCTR x value x 1000 / (1 + lambda), max
  bid): `pricing.paced_value(pricing.impression_value_cpm(...))` without its
  rounding down, and no pricing path bids above the paced value.

The engine then prices candidates in descending bound with the canonical
`pricing.bid_price` and stops as soon as the bound cannot beat the best price
found.  So the array code only orders and prunes the work; every price that
leaves the bidder comes from the one pricing function, and the tests check the
bound against it.
"""

from __future__ import annotations

import math
import random

import numpy as np

from bidder.pacing import PacingState
from bidder.targeting import CampaignIndex
from models.snapshot import ModelSnapshot

_MIN_SHAPE = 1e-9  # Beta shapes are floored here, as models.exploration.thompson_ctr does
_ROUNDING = 1.0 + 1e-9  # covers float rounding, so the bound is never a hair under the exact paced value
ALPHA, BETA, SCALE, MAX_BID = range(4)  # columns of SlotTables.table: gathered in one go per impression


class SlotTables:
    """Per-slot scoring constants for one (index, model) pair; pacing is swapped in with `set_pacing`."""

    __slots__ = ("index", "model", "explore_below", "unit", "table", "ceiling", "explore", "explore_bits", "any_explore",
                 "gen")

    def __init__(self, index: CampaignIndex, model: ModelSnapshot, explore_below: int, pacing: dict[str, PacingState],
                 rng: random.Random) -> None:
        self.index, self.model, self.explore_below = index, model, explore_below
        n = index.n
        camps = [c for c, _ in index.slots]
        # impression_value_cpm: cpc goals are worth pCTR x value per click; cpa goals need a pCVR the bid path has not
        self.unit = np.fromiter((c.value_per_click if c.goal == "cpc" else 0.0 for c in camps), dtype=np.float64, count=n)
        table = self.table = np.ones((n, 4))
        table[:, MAX_BID] = [c.max_bid_cpm for c in camps]
        self.ceiling = np.zeros(n)
        self.set_pacing(pacing)
        if explore_below > 0:
            self.explore = np.fromiter((model.creative_impressions(c.id, cr.id) < explore_below for c, cr in index.slots),
                                       dtype=bool, count=n)
        else:
            self.explore = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(self.explore).tolist():
            c, cr = index.slots[i]
            a, b = model.creative_beta(c.id, cr.id)
            table[i, ALPHA], table[i, BETA] = max(a, _MIN_SHAPE), max(b, _MIN_SHAPE)
        self.any_explore = bool(self.explore.any())
        self.explore_bits = int.from_bytes(np.packbits(self.explore, bitorder="little").tobytes(), "little")
        self.gen = np.random.default_rng(rng.getrandbits(64))

    def set_pacing(self, pacing: dict[str, PacingState]) -> None:
        """Fold each campaign's pacing lambda (negative counts as 0, as in paced_value) into the per-slot scale."""
        lam = np.zeros(len(self.unit))
        for cid, state in list(pacing.items()):
            idx = self.index.slots_of(cid)
            if len(idx) and not math.isnan(state.lam):
                lam[idx] = max(state.lam, 0.0)
        t = self.table
        t[:, SCALE] = self.unit * 1000.0 / (1.0 + lam) * _ROUNDING
        # the bound at pCTR = 1: no draw or prediction gives more, so a slot whose ceiling is under the floor
        # need not be scored at all
        self.ceiling = np.minimum(t[:, SCALE], t[:, MAX_BID])

    def _beta(self, rows: np.ndarray) -> np.ndarray:
        """Beta(alpha, beta) per row as Ga / (Ga + Gb): both gammas in one call (Generator.beta makes two
        argument checks per call, each a Python-level np.any).  0/0, possible only for vanishing shapes, reads 0."""
        g = self.gen.standard_gamma(rows[:, :2])
        return np.fmax(g[:, 0] / (g[:, 0] + g[:, 1]), 0.0)

    def draws(self, slots: np.ndarray) -> np.ndarray:
        """One Thompson draw of CTR per slot."""
        return self._beta(self.table[slots])

    def explore_all(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pCTR, price bound) per slot when every one of them explores: one gather, one draw, one bound."""
        rows = self.table[slots]
        pctr = self._beta(rows)
        v = pctr * rows[:, SCALE]
        return pctr, np.minimum(v, rows[:, MAX_BID], out=v)

    def bounds(self, slots: np.ndarray, pctr: np.ndarray, clean: bool = False) -> np.ndarray:
        """Upper bounds (CPM micros, float) on what each slot can bid at these pCTRs.

        `clean` says every pctr is already a number in [0, 1] (posterior draws are), so the clamp can be skipped.
        """
        if not clean:
            pctr = np.minimum(np.maximum(np.nan_to_num(pctr, nan=0.0), 0.0), 1.0)
        rows = self.table[slots]
        v = pctr * rows[:, SCALE]
        return np.minimum(v, rows[:, MAX_BID], out=v)
