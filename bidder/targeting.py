"""The targeting index: from an impression to the few creatives that may serve it.

Campaigns are indexed by (media kind, size, country) so a request looks at a
handful of lists instead of scanning every campaign.  The remaining checks
(region, device, domain, category, deals, blocks) run on those candidates only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from bidder.campaigns import Campaign, Creative
from bidder.openrtb import BidRequest, Imp

ANY = "*"
Candidate = tuple[Campaign, Creative]


def _size_keys(kind: str, w: int, h: int) -> list[tuple[str, int, int]]:
    if kind in ("native", "audio"):
        return [(kind, 0, 0)]
    if kind == "video":
        return [("video", w, h), ("video", -1, -1)] if w else [("video", 0, 0), ("video", -1, -1)]
    return [(kind, w, h)]


class CampaignIndex:
    """Immutable index over live campaigns; rebuilt and swapped whole when config changes."""

    def __init__(self, campaigns: Iterable[Campaign]) -> None:
        self.campaigns: dict[str, Campaign] = {c.id: c for c in campaigns}
        self._by_key: dict[tuple[str, int, int, str], list[Candidate]] = defaultdict(list)
        for camp in self.campaigns.values():
            if not camp.active:
                continue
            countries = camp.targeting.countries or (ANY,)
            for cr in camp.creatives:
                for kind, w, h in _size_keys(cr.kind, cr.w, cr.h):
                    for country in countries:
                        self._by_key[(kind, w, h, country)].append((camp, cr))
        self._by_key = dict(self._by_key)

    def __len__(self) -> int:
        return len(self.campaigns)

    def candidates(self, imp: Imp, country: str) -> list[Candidate]:
        """Creatives whose kind, size and country fit the impression (before the finer checks)."""
        get = self._by_key.get
        if imp.kind == "video":
            sizes = imp.sizes or ((-1, -1),)
            keys = [("video", w, h) for w, h in sizes] + [("video", 0, 0)]
        elif imp.kind in ("native", "audio"):
            keys = [(imp.kind, 0, 0)]
        else:
            keys = [(imp.kind, w, h) for w, h in imp.sizes]
        out: list[Candidate] = []
        for kind, w, h in keys:
            for c in (country, ANY) if country else (ANY,):
                found = get((kind, w, h, c))
                if found:
                    out.extend(found)
        return out


def deal_for(camp: Campaign, imp: Imp, seat: str) -> tuple[str, float, str, int | None] | None:
    """The deal this campaign may bid on in `imp`: (id, floor, currency, auction type); None when none applies."""
    wanted = camp.targeting.deals
    if not wanted:
        return None
    for d in imp.deals:
        if d.id in wanted and (not d.wseat or seat in d.wseat):
            return d.id, d.floor, d.cur, d.at
    return None


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
    if t.categories and not t.categories.intersection(req.cats):
        return "targeting"
    if req.badv and camp.advertiser in req.badv:
        return "blocked_advertiser"
    if req.bcat and any(c in req.bcat or c.split("-", 1)[0] in req.bcat for c in cr.cats):
        return "blocked_category"
    if req.is_app and req.bapp and req.domain in req.bapp:
        return "blocked_app"
    return ""

