"""Post-click conversion rates per campaign, so CPA campaigns can price an impression.

A CPA campaign is worth pCVR x value per conversion, with pCVR = pCTR x P(conversion | click):
the CTR model already prices the click, and conversions are far too rare to
learn from request features per impression.  P(conversion | click) is a Beta
posterior per campaign: the attributed conversions over the attributed clicks,
shrunk towards a prior rate that a campaign with few clicks cannot yet move.

Pure object, no I/O: the streams side feeds it the ledger's clicks and
post-click conversions (those attribution matched to a bid with a click: a
view-through or unmatched conversion says nothing about what a click is worth)
and publishes the rate with each pacing state.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConversionPrior:
    rate: float = 0.05  # conversions per click assumed before any click (e-commerce sites convert 1-10%)
    strength: float = 20.0  # pseudo-clicks behind the prior rate


DEFAULT_CVR = ConversionPrior().rate  # what a bidder assumes for a CPA campaign before the streams side has said


class ConversionRates:
    """Clicks and conversions per campaign, accumulated across days; rate() is the posterior mean."""

    __slots__ = ("prior", "clicks", "conversions", "_seen")

    def __init__(self, prior: ConversionPrior | None = None) -> None:
        self.prior = prior or ConversionPrior()
        self.clicks: dict[str, int] = {}
        self.conversions: dict[str, int] = {}
        # campaign -> {day: (clicks, conversions) folded in}, for its last two days: a day's totals still grow after
        # the next day began (a worker catching up at midnight), and what they gain then must count as well
        self._seen: dict[str, dict[str, tuple[int, int]]] = {}

    def update_day(self, campaign: str, day: str, clicks: int, conversions: int) -> None:
        """Fold in the ledger's running totals of `day`; only what grew since the last call of that day counts."""
        days = self._seen.setdefault(campaign, {})
        c0, v0 = days.get(day, (0, 0))  # a new day: its totals start from zero
        self.clicks[campaign] = self.clicks.get(campaign, 0) + max(clicks - c0, 0)
        self.conversions[campaign] = self.conversions.get(campaign, 0) + max(conversions - v0, 0)
        days[day] = (max(clicks, c0), max(conversions, v0))
        if len(days) > 2:
            del days[min(days)]

    def day_before(self, campaign: str, day: str) -> str | None:
        """The day folded in before `day`, while its totals are still followed (for a day after it); else None."""
        earlier = [d for d in self._seen.get(campaign, ()) if d < day]
        return max(earlier) if earlier else None

    def forget(self, campaign: str) -> None:
        """Drop what is known of `campaign` (it moved to another worker): if it comes back, it starts again from
        the ledger, which by then holds what the other worker counted."""
        self.clicks.pop(campaign, None)
        self.conversions.pop(campaign, None)
        self._seen.pop(campaign, None)

    def knows(self, campaign: str) -> bool:
        """Whether any day of `campaign` was folded in yet."""
        return campaign in self._seen

    def add_earlier(self, campaign: str, clicks: int, conversions: int) -> None:
        """Fold in the days before the first one `update_day` will see (once, when the rate starts: a restarted
        worker's ledger still holds them, its memory does not)."""
        self.clicks[campaign] = self.clicks.get(campaign, 0) + max(clicks, 0)
        self.conversions[campaign] = self.conversions.get(campaign, 0) + max(conversions, 0)

    def rate(self, campaign: str) -> float:
        """P(conversion | click) for `campaign`: (conversions + s * prior) / (clicks + s)."""
        p = self.prior
        return (self.conversions.get(campaign, 0) + p.strength * p.rate) / (self.clicks.get(campaign, 0) + p.strength)
