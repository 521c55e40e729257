"""A synthetic impression stream whose true click probabilities are known.

Real logs only tell how well a learner does relative to another; with a known
ground truth we can say how far it is from the best possible (excess log loss
over the true probabilities), and check that it re-adapts after the world
changes.  The truth is logistic: a bias plus one effect per value of a few
categorical fields, plus creative x domain and creative x hour crosses, each
effect a Gaussian drawn from a seed derived from the hash of its name.
Halfway through the stream the creatives' appeal changes (their main effects
and their hour crosses are redrawn) and the overall rate rises a little.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

# field -> (number of values, Zipf exponent of their popularity, effect standard deviation)
REQUEST_FIELDS: dict[str, tuple[int, float, float]] = {
    "exchange": (3, 0.5, 0.3),
    "domain": (300, 1.0, 0.5),
    "size": (6, 0.8, 0.3),
    "devicetype": (4, 0.8, 0.2),
    "os": (4, 1.0, 0.2),
    "hour": (24, 0.0, 0.2),
}
N_CAMPAIGNS = 5
CREATIVES_PER_CAMPAIGN = 4
CAMPAIGN_SD = 0.3
CREATIVE_SD = 0.4
CROSS_DOMAIN_SD = 0.3
CROSS_HOUR_SD = 0.2
BIAS = -4.6
DRIFT_BIAS = 0.2


@dataclass(slots=True)
class Event:
    fields: dict[str, str]  # request fields by name (values as strings)
    campaign: str
    creative: str
    p_true: float
    label: bool


def _effect(seed: int, name: str, sd: float) -> float:
    """A reproducible Gaussian effect for a named feature."""
    return random.Random((zlib.crc32(name.encode()) << 32) ^ seed).gauss(0.0, sd)


def _zipf_cum(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))


class SyntheticStream:
    """Deterministic stream of `n` events from `seed`, with a drift at `drift_at` (default n // 2)."""

    def __init__(self, n: int, seed: int = 7, drift_at: int | None = None) -> None:
        self.n = n
        self.seed = seed
        self.drift_at = n // 2 if drift_at is None else drift_at
        self._cums = {f: _zipf_cum(k, s) for f, (k, s, _) in REQUEST_FIELDS.items()}
        self._creatives = [(f"c{c}", f"cr{c}_{k}") for c in range(N_CAMPAIGNS) for k in range(CREATIVES_PER_CAMPAIGN)]
        self._cache: dict[tuple[int, str], float] = {}

    def effect(self, phase: int, name: str, sd: float) -> float:
        key = (phase, name)
        e = self._cache.get(key)
        if e is None:
            e = self._cache[key] = _effect(self.seed * 1_000_003 + phase, name, sd)
        return e

    def true_logit(self, fields: dict[str, str], campaign: str, creative: str, drifted: bool) -> float:
        """Ground-truth log-odds; after the drift the creative effects and creative x hour crosses change."""
        phase = 1 if drifted else 0
        z = BIAS + (DRIFT_BIAS if drifted else 0.0)
        for f, v in fields.items():
            z += self.effect(0, f"{f}={v}", REQUEST_FIELDS[f][2])
        z += self.effect(0, f"campaign={campaign}", CAMPAIGN_SD)
        z += self.effect(phase, f"creative={creative}", CREATIVE_SD)
        z += self.effect(0, f"creative={creative}&domain={fields['domain']}", CROSS_DOMAIN_SD)
        z += self.effect(phase, f"creative={creative}&hour={fields['hour']}", CROSS_HOUR_SD)
        return z

    def __iter__(self) -> Iterator[Event]:
        rng = random.Random(self.seed)
        cums = self._cums
        creatives = self._creatives
        for i in range(self.n):
            fields = {}
            for f, cum in cums.items():
                fields[f] = str(bisect.bisect_left(cum, rng.random() * cum[-1]))
            campaign, creative = creatives[rng.randrange(len(creatives))]
            p = 1.0 / (1.0 + math.exp(-self.true_logit(fields, campaign, creative, i >= self.drift_at)))
            yield Event(fields, campaign, creative, p, rng.random() < p)
