"""Exploration: give new creatives a fair chance to show what they can do.

A greedy bidder scores a creative with few impressions by its prior and may
never win with it, so it never learns whether the creative is good.  Thompson
sampling bids on a draw from the creative's Beta posterior instead: an unknown
creative sometimes draws high and wins, and the draws narrow as impressions
accumulate, until the model's own pCTR takes over.  The caller passes a seeded
random.Random so runs are reproducible.
"""

from __future__ import annotations

import random

from models.snapshot import ModelSnapshot

DEFAULT_MIN_IMPRESSIONS = 1_000


def thompson_ctr(rng: random.Random, alpha: float, beta: float) -> float:
    """One draw of a CTR from Beta(alpha, beta)."""
    return rng.betavariate(max(alpha, 1e-9), max(beta, 1e-9))


def explore_pctr(
    snapshot: ModelSnapshot,
    rng: random.Random,
    pctr: float,
    campaign: str,
    creative: str,
    min_impressions: int = DEFAULT_MIN_IMPRESSIONS,
) -> float:
    """The pCTR to bid with: the model's `pctr` once the creative has `min_impressions`,
    else a Thompson draw from its posterior (campaign rate as prior, plus its own clicks)."""
    if snapshot.creative_impressions(campaign, creative) >= min_impressions:
        return pctr
    alpha, beta = snapshot.creative_beta(campaign, creative)
    return thompson_ctr(rng, alpha, beta)


def is_exploring(snapshot: ModelSnapshot, campaign: str, creative: str, min_impressions: int = DEFAULT_MIN_IMPRESSIONS) -> bool:
    """True while the creative is still scored by posterior draws (useful as a metric label)."""
    return snapshot.creative_impressions(campaign, creative) < min_impressions
