"""Click counts per campaign and creative, as nested Beta priors for cold start.

A brand-new creative has no weights the model could have learned, so on its
own the model would score it like an average ad.  The counts give a better
guess: the creative's posterior CTR shrinks towards its campaign's rate, which
shrinks towards the global rate, which starts from a configured prior.  The
model's score and that posterior are blended in logit space, with the model's
share growing with the creative's impressions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bidder.slices import Steps, drain
from models.calibration import logit

CreativeKey = tuple[str, str]  # (campaign id, creative id): creative ids are unique only within a campaign


@dataclass(frozen=True, slots=True)
class PriorConfig:
    prior_ctr: float = 0.001  # CTR assumed before any impression
    global_strength: float = 1_000.0  # pseudo-impressions behind prior_ctr
    campaign_strength: float = 500.0  # pseudo-impressions of the global rate behind each campaign
    creative_strength: float = 500.0  # pseudo-impressions of the campaign rate behind each creative
    blend_impressions: float = 100.0  # creative impressions at which model and prior weigh the same

    def __post_init__(self) -> None:
        """A prior read from a snapshot or checkpoint must make sense: a rate in (0, 1), positive strengths."""
        if not 0.0 < self.prior_ctr < 1.0:
            raise ValueError(f"prior_ctr {self.prior_ctr!r} is not a rate in (0, 1)")
        for name in ("global_strength", "campaign_strength", "creative_strength"):
            v = getattr(self, name)
            if not 0.0 < v < math.inf:
                raise ValueError(f"{name} {v!r} must be a positive number")
        if not 0.0 <= self.blend_impressions < math.inf:
            raise ValueError(f"blend_impressions {self.blend_impressions!r} must be a number >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


DECODE_STEP = 1024  # items between two pauses of a decode in steps (a few milliseconds at most)

class ClickCounts:
    """Clicks and impressions, globally, per campaign and per (campaign, creative)."""

    __slots__ = ("config", "clicks", "impressions", "campaigns", "creatives")

    def __init__(self, config: PriorConfig | None = None) -> None:
        self.config = config or PriorConfig()
        self.clicks = 0
        self.impressions = 0
        self.campaigns: dict[str, list[int]] = {}  # campaign -> [clicks, impressions]
        self.creatives: dict[CreativeKey, list[int]] = {}

    def add(self, campaign: str, creative: str, clicked: bool) -> None:
        c = 1 if clicked else 0
        self.clicks += c
        self.impressions += 1
        camp = self.campaigns.get(campaign)
        if camp is None:
            camp = self.campaigns[campaign] = [0, 0]
        camp[0] += c
        camp[1] += 1
        cre = self.creatives.get((campaign, creative))
        if cre is None:
            cre = self.creatives[(campaign, creative)] = [0, 0]
        cre[0] += c
        cre[1] += 1

    # -- posterior means -----------------------------------------------------------

    def global_rate(self) -> float:
        cfg = self.config
        return (self.clicks + cfg.prior_ctr * cfg.global_strength) / (self.impressions + cfg.global_strength)

    def campaign_rate(self, campaign: str) -> float:
        clicks, imps = self.campaigns.get(campaign, (0, 0))
        k = self.config.campaign_strength
        return (clicks + self.global_rate() * k) / (imps + k)

    def creative_beta(self, campaign: str, creative: str) -> tuple[float, float]:
        """Beta(alpha, beta) posterior of the creative's CTR: the campaign rate as prior, plus its own counts."""
        clicks, imps = self.creatives.get((campaign, creative), (0, 0))
        k = self.config.creative_strength
        m = self.campaign_rate(campaign)
        return clicks + m * k, (imps - clicks) + (1.0 - m) * k

    def creative_impressions(self, campaign: str, creative: str) -> int:
        return self.creatives.get((campaign, creative), (0, 0))[1]

    def blend(self, campaign: str, creative: str) -> tuple[float, float]:
        """(lam, offset) such that the blended logit is lam * model_logit + offset."""
        a, b = self.creative_beta(campaign, creative)
        imps = self.creative_impressions(campaign, creative)
        lam = imps / (imps + self.config.blend_impressions) if self.config.blend_impressions > 0 else 1.0
        return lam, (1.0 - lam) * logit(a / (a + b))

    def blends(self) -> dict[CreativeKey, tuple[float, float]]:
        """`blend` of every creative counted, with the global and campaign rates computed once rather than once per
        creative (a model snapshot needs them all each time it is loaded).  The same arithmetic, so the same bits."""
        return drain(self.blends_steps())

    def blends_steps(self, step: int = DECODE_STEP) -> Steps[dict[CreativeKey, tuple[float, float]]]:
        """`blends`, pausing every `step` creatives."""
        cfg = self.config
        g = self.global_rate()
        k, strength, blend_imps = cfg.campaign_strength, cfg.creative_strength, cfg.blend_impressions
        rates: dict[str, float] = {}
        out: dict[CreativeKey, tuple[float, float]] = {}
        for i, (key, (clicks, imps)) in enumerate(list(self.creatives.items()), 1):
            if not i % step:
                yield
            m = rates.get(key[0])
            if m is None:
                c_clicks, c_imps = self.campaigns.get(key[0], (0, 0))
                m = rates[key[0]] = (c_clicks + g * k) / (c_imps + k)
            a, b = clicks + m * strength, (imps - clicks) + (1.0 - m) * strength
            lam = imps / (imps + blend_imps) if blend_imps > 0 else 1.0
            out[key] = (lam, (1.0 - lam) * logit(a / (a + b)))
        return out

    # -- (de)serialisation ----------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "clicks": self.clicks,
            "impressions": self.impressions,
            "campaigns": [[k, v[0], v[1]] for k, v in self.campaigns.items()],
            "creatives": [[k[0], k[1], v[0], v[1]] for k, v in self.creatives.items()],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClickCounts:
        """ValueError for counts no learner could have made (clicks above impressions, negatives, non-integers)."""
        return drain(cls.from_dict_steps(d))

    @classmethod
    def from_dict_steps(cls, d: dict, step: int = DECODE_STEP) -> Steps[ClickCounts]:
        """`from_dict`, pausing every `step` campaigns or creatives (`models.snapshot.ModelSnapshot.from_bytes_steps`)."""
        counts = cls(PriorConfig(**d["config"]))
        counts.clicks, counts.impressions = _clicks_and_impressions(d["clicks"], d["impressions"])
        rows = d["campaigns"]
        for lo in range(0, len(rows), step):
            counts.campaigns.update((str(k), list(_clicks_and_impressions(c, i))) for k, c, i in rows[lo:lo + step])
            yield
        rows = d["creatives"]
        for lo in range(0, len(rows), step):
            counts.creatives.update(((str(k), str(r)), list(_clicks_and_impressions(c, i)))
                                    for k, r, c, i in rows[lo:lo + step])
            yield
        return counts

    def copy(self) -> ClickCounts:
        return ClickCounts.from_dict(self.to_dict())


def _clicks_and_impressions(clicks: object, impressions: object) -> tuple[int, int]:
    if type(clicks) is not int or type(impressions) is not int or not 0 <= clicks <= impressions:
        raise ValueError(f"counts of {clicks!r} clicks in {impressions!r} impressions are not possible")
    return clicks, impressions
