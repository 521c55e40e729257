"""What the streams side does with each event, independent of Faust.

The Faust agents (on Kafka) and the embedded bus (in `make demo`) both call
these objects, so the demo exercises the same attribution, ledger, learning
and pacing code that runs in production.  State lives in mappings the adapter
supplies: Faust tables there, dicts here.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from bidder.campaigns import Campaign
from bidder.forecast import TrafficForecast
from bidder.pacing import PacingController, PacingState, SpendPlan, day_clock, day_fraction
from models.conversion import ConversionRates
from models.learner import CTRLearner, encode_state
from streams.attribution import Attribution, Example
from streams.events import EventError
from streams.ledger import POST_CLICK, SpendLedger, empty_totals

Emit = Callable[[str, str, dict[str, Any]], None]  # (topic kind, key, event)
ATTRIBUTION_KINDS = frozenset({"bids", "impressions", "clicks", "conversions"})
LEDGER_KINDS = frozenset({"billing", "impressions", "clicks", "conversions", "wins", "losses"})


class Campaigns:
    """The worker's view of campaign config, for time zones, click values and budgets."""

    DAYS_KEPT = 100_000  # (time zone, second) -> local day entries; cleared when there are more

    def __init__(self) -> None:
        self.by_id: dict[str, Campaign] = {}
        # Every zone offset is a whole number of seconds, so the local day is the same all through a second;
        # the ledger asks for the day of nearly every event, and events come thousands to the second.
        self._days: dict[tuple[str | None, int], str] = {}

    def day_of(self, campaign: str, ts_ms: int) -> str:
        c = self.by_id.get(campaign)
        key = (c.timezone if c else None, ts_ms // 1000)
        day = self._days.get(key)
        if day is None:
            if len(self._days) >= self.DAYS_KEPT:
                self._days.clear()
            tz = ZoneInfo(c.timezone) if c else dt.UTC
            day = self._days[key] = dt.datetime.fromtimestamp(ts_ms / 1000, tz).date().isoformat()
        return day

    def fraction_of_day(self, campaign: Campaign, now: float) -> tuple[str, float, int]:
        """(local day, fraction of the local day elapsed, local hour) for a campaign at `now`."""
        return day_fraction(campaign.timezone, now)

    def click_value(self, campaign: str) -> int:
        c = self.by_id.get(campaign)
        return c.value_per_click if c else 0


class DeliveryProcessor:
    """Ledger + attribution for one partition's worth of events."""

    def __init__(self, campaigns: Campaigns, totals: MutableMapping[str, Any], seen: MutableMapping[str, Any],
                 pending: MutableMapping[str, Any], click_window_ms: int | None = None) -> None:
        self.campaigns = campaigns
        self.ledger = SpendLedger(totals, seen, campaigns.day_of, campaigns.click_value)
        self.attribution = Attribution(pending) if click_window_ms is None else Attribution(pending, click_window_ms)
        self.outcomes: dict[str, int] = {}

    def handle(self, kind: str, event: dict[str, Any], position: tuple[str, int] | None = None) -> list[Example]:
        """Apply one validated event; returns the training examples it completes."""
        examples: list[Example] = []
        post_click = 0
        self.ledger.check_room(kind, event)
        if kind in ATTRIBUTION_KINDS:
            if kind != "bids":
                self._check_campaign(event)
            if kind == "bids":
                outcome, ex = self.attribution.on_bid(event)
                if ex is not None:
                    examples.append(ex)
            elif kind == "impressions":
                outcome, ex = self.attribution.on_impression(event)
                if ex is not None:
                    examples.append(ex)
            elif kind == "clicks":
                outcome, ex = self.attribution.on_click(event)
                if ex is not None:
                    examples.append(ex)
                post_click = self.attribution.book_held_conversions(event)
            else:
                outcome = self.attribution.on_conversion(event)
                post_click = self.attribution.post_click(event, outcome)
            key = f"{kind}:{outcome}"
            self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if kind in LEDGER_KINDS and not self.ledger.apply(kind, event, position, post_click):
            self.outcomes[f"{kind}:duplicate_event"] = self.outcomes.get(f"{kind}:duplicate_event", 0) + 1
        return examples

    def _check_campaign(self, event: dict[str, Any]) -> None:
        """An impression, click or conversion names its bid's campaign: one naming another would be counted there,
        and its bid's example labelled by it, so it is refused (dead letter) before anything is applied."""
        entry = self.attribution.pending.get(event["bid_id"])
        if entry is not None and entry["f"] is not None and entry["c"] != event["campaign"]:
            raise EventError("campaign_mismatch", f"bid {event['bid_id'][:64]} is campaign {entry['c']}'s, "
                                                  f"not {event['campaign'][:64]}'s", "campaign")

    def expire(self, now_ms: int, now_of: Callable[[str], int] | None = None,
               limit: int | None = None) -> list[Example]:
        examples, orphans = self.attribution.expire(now_ms, now_of, limit)
        if orphans:
            self.outcomes["any:orphan"] = self.outcomes.get("any:orphan", 0) + orphans
        return examples


# Proportional gain on the gap to plan: live traffic drifts within a day (the model learns, prices move), and a
# firmer pull back to plan keeps cumulative spend close to it (the iPinYou replay, a stationary log, uses 1).
PACING_KP = 10.0
# Below this share of the day's plan left, the same gap to plan weighs more (PacingController.tail): a shortfall
# late in the day has to be bought back from the little traffic left.
PACING_TAIL = 0.25


# How often the spend of earlier days is summed again for the lifetime budgets: it only moves with late billing
# of an earlier day (a notice stays valid an hour), and summing it reads every day's totals.
LIFETIME_REFRESH_S = 60.0


class Pacer:
    """Turns today's spend per campaign into pacing states for the bidders.

    With a traffic forecast, each day's plan follows the expected requests per local hour; the plan is fixed
    when the campaign's day starts, so the target never jumps within a day.  A campaign with a lifetime budget
    is paced on what that total leaves of its daily budget, and stops once the total is spent.  A paused campaign,
    or one outside its flight dates, keeps its lambda; when it may bid again, its controller paces what is left.
    """

    def __init__(self, campaigns: Campaigns, forecast: TrafficForecast | None = None) -> None:
        self.campaigns = campaigns
        self.forecast = forecast
        self.controllers: dict[str, PacingController] = {}
        # a campaign's last published (day, lambda), for a controller started anew on that day
        self.known_lambda: dict[str, tuple[str, float]] = {}
        # what each controller's plan was laid out for: (time zone, dayparting); a change replans the day
        self._planned: dict[str, tuple[str, frozenset[int]]] = {}
        self.conversions = ConversionRates()
        self._before: dict[str, int] = {}  # spend on the days before today, per campaign with a lifetime budget
        self._before_days: dict[str, str] = {}  # the "today" each of those sums stops at
        self._before_at = -LIFETIME_REFRESH_S

    def budget_today(self, camp: Campaign, day: str, ledger: SpendLedger | None) -> int:
        """`camp`'s budget for `day`: its daily budget, less once its lifetime total binds (micros)."""
        if not camp.total_budget:
            return camp.daily_budget
        summed = self._before_days.get(camp.id)
        if summed == day:
            return camp.budget_today(self._before.get(camp.id, 0))
        before = ledger.spend_before({camp.id: day})[camp.id] if ledger is not None else 0
        if ledger is not None and summed is not None and day > summed:
            # the day just begun, asked for before the next step sums it: every bidder asks for its lease then, and
            # each sum reads every day's totals, so it is summed once for them all
            self._before[camp.id], self._before_days[camp.id] = before, day
        return camp.budget_today(before)

    def _refresh_lifetime(self, now: float, days: dict[str, str], ledger: SpendLedger | None) -> None:
        capped = {cid: day for cid, day in days.items() if self.campaigns.by_id[cid].total_budget}
        if capped != self._before_days or now - self._before_at >= LIFETIME_REFRESH_S:
            self._before = ledger.spend_before(capped) if ledger is not None else {}
            self._before_days, self._before_at = capped, now

    def observe_bid(self, event: dict[str, Any]) -> None:
        """A bid-log event: its bidder's running request count feeds the traffic forecast."""
        reqs, bidder = event.get("reqs"), event.get("bidder")
        if self.forecast is not None and isinstance(reqs, int) and isinstance(bidder, str):
            self.forecast.observe_counter(bidder, event["ts"] / 1000.0, reqs)

    def plan(self, camp: Campaign, day: str, now: float) -> SpendPlan:
        if self.forecast is None:
            return SpendPlan(hours=camp.hours, clock=day_clock(camp.timezone, day))
        return self.forecast.plan(camp.timezone, day, camp.hours, now)

    def remember(self, state: PacingState) -> None:
        """A pacing state published before (e.g. read back from the pacing topic after a restart): a controller
        this pacer starts for that campaign on the state's day starts from its lambda, not from 0.  A state of
        another day is no guide (the end of a day says little about the next: see `PacingController.next_day`),
        nor is an exhausted one (its lambda is the maximum, whatever the price of budget was)."""
        if state.campaign not in self.controllers and not state.exhausted:
            self.known_lambda[state.campaign] = (state.day, state.lam)

    def controller(self, camp: Campaign, day: str, now: float) -> PacingController:
        """`camp`'s controller for `day`: a new day starts from yesterday's price of budget, a new controller from
        the campaign's last known one (else 0).  A day's plan is fixed when it starts, unless the campaign's
        dayparting or time zone changes: then it is laid out again for them and followed from there."""
        ctl, planned = self.controllers.get(camp.id), (camp.timezone, camp.hours)
        if ctl is None:
            known_day, lam = self.known_lambda.pop(camp.id, (day, 0.0))
            ctl = PacingController(day=day, plan=self.plan(camp, day, now), campaign=camp.id,
                                   lam=lam if known_day == day else 0.0, kp=PACING_KP, tail=PACING_TAIL)
        elif ctl.day != day:
            ctl = ctl.next_day(day, self.plan(camp, day, now))
        elif self._planned.get(camp.id, planned) != planned:
            ctl.replan(self.plan(camp, day, now))  # dayparting or zone changed today: the old plan is not the day's
        self._planned[camp.id] = planned
        self.controllers[camp.id] = ctl
        return ctl

    def forget(self, campaign: str) -> None:
        """Drop `campaign`'s state: stepped while another worker counted its spend, it was built on a ledger that
        did not see it.  Given to this worker in a rebalance, the campaign then starts as after a restart."""
        self.controllers.pop(campaign, None)
        self._planned.pop(campaign, None)
        self.known_lambda.pop(campaign, None)
        self.conversions.forget(campaign)
        self._before.pop(campaign, None)
        self._before_days.pop(campaign, None)

    def update(self, now: float, ledger: SpendLedger | None) -> list[PacingState]:
        out = []
        camps = list(self.campaigns.by_id.values())
        when = {c.id: self.campaigns.fraction_of_day(c, now) for c in camps}
        self._refresh_lifetime(now, {cid: w[0] for cid, w in when.items()}, ledger)
        for camp in camps:
            day, frac, _ = when[camp.id]
            totals = ledger.day_totals(camp.id, day) if ledger is not None else empty_totals()
            ctl = self.controller(camp, day, now)
            budget = self.budget_today(camp, day, ledger)
            if may_bid_on(camp, day):
                state = ctl.update(frac, totals["spend"], budget)
            else:
                state = ctl.hold(totals["spend"], budget)
            state.campaign = camp.id
            state.impressions_today = totals["billed"]
            state.clicks_today = totals["clicks"]
            state.value_today = totals["value"]
            if not self.conversions.knows(camp.id) and ledger is not None:  # started now: the earlier days count too
                self.conversions.add_earlier(camp.id, *ledger.clicks_before(camp.id, day))
            before = self.conversions.day_before(camp.id, day)
            if before is not None and ledger is not None:  # yesterday's clicks read since its last step count too
                late = ledger.day_totals(camp.id, before)
                self.conversions.update_day(camp.id, before, late["clicks"], late.get(POST_CLICK, 0))
            self.conversions.update_day(camp.id, day, totals["clicks"], totals.get(POST_CLICK, 0))
            state.cvr = self.conversions.rate(camp.id)
            # the plan the controller follows, for the bidders' plan gauge: from where it started or the budget changed
            state.plan_share = ctl.due(ctl.plan.target(frac))
            out.append(state)
        return out


def may_bid_on(camp: Campaign, day: str) -> bool:
    """True when `camp` is active and `day` (its local ISO date) lies in its flight; dayparting is the plan's."""
    return camp.active and camp.start.isoformat() <= day <= camp.end.isoformat()


class RecentIds:
    """The last `capacity` ids seen, oldest forgotten first: duplicates arrive close together, so this is enough."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def add(self, item: str) -> bool:
        """Remember `item`; False if it was already remembered."""
        if item in self._ids:
            return False
        self._ids.add(item)
        self._order.append(item)
        if len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())
        return True

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._order)


class Learner:
    """The CTR learner fed by labelled examples; publishes a snapshot when asked.

    Each bid yields at most one example, with id `ex:<bid id>`.  A crash can still put an example on the topic
    twice (replayed before its "done" mark was saved), or a positive after the negative for the same bid; the
    learner keeps the first and drops the rest by id, so it never learns a click twice or a flipped label.
    """

    def __init__(self, learner: CTRLearner | None = None, recent: int = 200_000) -> None:
        self.learner = learner or CTRLearner()
        self.version = 0
        self.labels = {0: 0, 1: 0}
        self.recent = RecentIds(recent)
        self.duplicates = 0

    def is_new(self, event: dict[str, Any]) -> bool:
        """True the first time an example id is seen (and remembers it); counts the rest as duplicates."""
        if self.recent.add(event["id"]):
            return True
        self.duplicates += 1
        return False

    def learn(self, event: dict[str, Any]) -> float:
        """Learn one example; returns the pCTR the model gave it just before (for progressive validation)."""
        p = self.learner.learn_one(event["features"], bool(event["label"]), event["campaign"], event["creative"])
        self.labels[int(bool(event["label"]))] += 1
        return p

    def snapshot_bytes(self) -> bytes:
        self.version += 1
        return self.learner.snapshot(version=self.version).to_bytes()

    def checkpoint_bytes(self, offsets: dict[int, int]) -> bytes:
        """The exact learner state with the examples `offsets` (partition -> next offset) it has learned up to."""
        return self.capture_checkpoint(offsets)()

    def capture_checkpoint(self, offsets: dict[int, int]) -> Callable[[], bytes]:
        """Take the state now (a copy); the returned function encodes it, and may run in another thread while this
        learner learns on."""
        head = orjson.dumps({"offsets": {str(p): o for p, o in offsets.items()}, "version": self.version,
                             "labels": {str(k): v for k, v in self.labels.items()}})
        captured = self.learner.capture_state()
        return lambda: head + b"\n" + encode_state(captured)

    def restore(self, data: bytes) -> dict[int, int]:
        """Take over a checkpoint's state; returns the offsets it covers.  ValueError if it is not a checkpoint."""
        doc, state = _checkpoint_parts(data)
        try:
            offsets = checkpoint_offsets(data)
            version, labels = int(doc["version"]), {int(k): int(v) for k, v in doc["labels"].items()}
            if version < 0:  # every snapshot published from it would be refused by the bidders
                raise ValueError(f"version {version} is negative")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a learner checkpoint: {e}") from e
        self.learner = CTRLearner.from_state_bytes(state)
        self.version, self.labels = version, {0: labels.get(0, 0), 1: labels.get(1, 0)}
        return offsets


def _checkpoint_parts(data: bytes) -> tuple[dict, bytes]:
    head, sep, state = data.partition(b"\n")
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not a learner checkpoint: {e}") from e
    if not sep or not isinstance(doc, dict):
        raise ValueError("not a learner checkpoint: no header and state")
    return doc, state


def checkpoint_offsets(data: bytes) -> dict[int, int]:
    """Examples partition -> next offset, of a checkpoint made by `Learner.checkpoint_bytes` (ValueError if not one)."""
    doc, _ = _checkpoint_parts(data)
    try:
        return {int(p): int(o) for p, o in doc["offsets"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"not a learner checkpoint: {e}") from e
