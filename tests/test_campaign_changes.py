"""A bidder following the config topic applies a fetch of campaign changes in one index rebuild, not one each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.pacing import PacingState
from bidder.slices import drain
from bidder.targeting import CampaignIndex
from bidder.wiring import CampaignChanges
from models.snapshot import ModelSnapshot
from tests.helpers import campaign, record_calls


def test_a_fetch_of_changes_is_one_rebuild_and_the_last_message_per_campaign_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = BidEngine(EngineConfig(secret=b"s"), [parse_campaign(campaign(id="kept"))], ModelSnapshot.empty(),
                       sink=lambda *a: None)
    rebuilds = record_calls(monkeypatch, engine, "install_index", len)
    changes = CampaignChanges(engine)
    for i in range(300):  # a start, or a bulk edit: one batch of many messages
        changes.on_config(b"c%d" % i, orjson.dumps({"campaign": campaign(id=f"c{i}")}))
    changes.on_config(b"c7", orjson.dumps({"campaign": campaign(id="c7", status="paused")}))  # a later edit wins
    changes.on_config(b"c8", None)  # a tombstone sets nothing
    changes.on_config(b"c9", b"{not json")
    assert rebuilds == []  # nothing rebuilt while the batch is read; once after it
    changes.apply()
    assert rebuilds == [301]
    assert set(engine.index.campaigns) == {"kept"} | {f"c{i}" for i in range(300)}
    assert engine.index.campaigns["c7"].status == "paused" and engine.index.campaigns["c8"].status == "active"
    changes.on_config(b"c1", orjson.dumps({"campaign": campaign(id="c1", targeting={"countries": ["FRA"]})}))
    changes.apply()  # the next change is a new rebuild of its own
    assert rebuilds == [301, 301] and engine.index.campaigns["c1"].targeting.countries == {"FRA"}
    changes.on_config(b"c1", orjson.dumps({"campaign": campaign(id="c1", status="paused", targeting={"countries": ["FRA"]})}))
    changes.apply()  # a pause alone is swapped into the index in place
    assert rebuilds == [301, 301] and engine.index.campaigns["c1"].status == "paused"


async def settled(changes: CampaignChanges) -> int:
    """Wait (at most 5 s) until no index is being built and nothing waits; how many loop turns that took."""
    give_up, turns = time.monotonic() + 5, 0
    while (changes.building is not None or changes.pending) and time.monotonic() < give_up:
        turns += 1
        await asyncio.sleep(0)
    assert changes.building is None and not changes.pending, "the changes were never applied"
    return turns


def change(doc: dict) -> bytes:
    return orjson.dumps({"campaign": doc})


def test_an_index_builds_in_steps_that_end_built() -> None:
    index = CampaignIndex([parse_campaign(campaign(id=f"c{i}")) for i in range(50)])
    steps, pauses = index.build_steps(), 0
    for _ in steps:
        pauses += 1
        assert not index._built  # nobody may read a half-built index as built
    assert pauses >= 15 and index._built and len(index.slots_of("c3")) == 1


def test_no_step_of_an_index_build_grows_with_the_campaigns(monkeypatch: pytest.MonkeyPatch) -> None:
    """With thousands of campaigns (each with its own domains), no step makes more than STEP_SETS slot sets: each is
    a short hold of the event loop whatever the number of campaigns and targeted values."""
    from bidder import targeting
    from loadtest.campaign_gen import make_campaigns

    bits_of, made = targeting._bits_of, [0]

    def counted(indices):  # type: ignore[no-untyped-def]
        made[0] += 1
        return bits_of(indices)

    monkeypatch.setattr(targeting, "_bits_of", counted)
    camps = [parse_campaign(d) for d in make_campaigns(3000, seed=2)]
    numbering = targeting.CampaignIndex.steps(camps)  # the slots of a change are numbered in steps too
    assert sum(1 for _ in numbering) >= len(camps) // (targeting.STEP_SETS * 4)
    index = targeting.CampaignIndex(camps)
    per_step = []
    for _ in index.build_steps():
        per_step.append(made[0])
        made[0] = 0
    assert index._built and len(index.campaigns) == 3000
    assert sum(per_step) > 20 * targeting.STEP_SETS  # thousands of sets in all (one per campaign, per domain, ...)
    assert max(per_step) <= targeting.STEP_SETS + 4, max(per_step)  # a few whole-index sets besides


async def test_serving_a_rebuild_is_built_between_bids_and_changes_meanwhile_follow_it() -> None:
    engine = BidEngine(EngineConfig(secret=b"s"), [parse_campaign(campaign(id=f"c{i}")) for i in range(200)],
                       ModelSnapshot.empty(), sink=lambda *a: None)
    engine.prepare()
    old = engine.index
    changes = CampaignChanges(engine)
    changes.on_config(b"c1", change(campaign(id="c1", targeting={"countries": ["FRA"]})))
    changes.apply()
    assert changes.building is not None and engine.index is old  # bids go on with the old index meanwhile
    changes.on_config(b"c2", change(campaign(id="c2", status="paused")))  # a pause while it builds: it waits
    changes.on_config(b"n1", change(campaign(id="n1")))
    changes.apply()
    assert old.campaigns["c2"].status == "active" and "n1" not in old.campaigns
    assert await settled(changes) >= 2  # the loop ran other work while the index was built
    assert engine.index is not old and engine.index.campaigns["c1"].targeting.countries == {"FRA"}
    assert engine.index.campaigns["c2"].status == "paused" and "n1" in engine.index.campaigns
    assert "c2" not in engine.live() and "c1" in engine.live()


async def test_a_failed_build_keeps_the_campaigns_in_force(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    engine = BidEngine(EngineConfig(secret=b"s"), [parse_campaign(campaign(id="a"))], ModelSnapshot.empty(),
                       sink=lambda *a: None)
    old = engine.index
    real = CampaignIndex.build_steps

    def broken(self: CampaignIndex) -> Generator[None, None, None]:
        yield
        raise RuntimeError("bug")

    monkeypatch.setattr(CampaignIndex, "build_steps", broken)
    changes = CampaignChanges(engine)
    changes.on_config(b"a", change(campaign(id="a", targeting={"countries": ["FRA"]})))
    changes.apply()
    await settled(changes)
    assert engine.index is old and "building the campaign index failed" in caplog.text
    monkeypatch.setattr(CampaignIndex, "build_steps", real)
    changes.on_config(b"b", change(campaign(id="b")))
    changes.apply()
    await settled(changes)
    assert set(engine.index.campaigns) == {"a", "b"}


async def test_the_live_set_of_a_new_index_is_computed_between_bids_not_by_the_next_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bidder.engine import BidEngine as Engine

    engine = BidEngine(EngineConfig(secret=b"s"), [parse_campaign(campaign(id=f"c{i}")) for i in range(3000)],
                       ModelSnapshot.empty(), sink=lambda *a: None)
    engine.prepare()
    whole = record_calls(monkeypatch, Engine, "_live_campaigns", lambda self, now, campaigns=None: campaigns is None)
    changes = CampaignChanges(engine)
    changes.on_config(b"c1", change(campaign(id="c1", targeting={"countries": ["FRA"]})))
    changes.on_config(b"n1", change(campaign(id="n1")))
    changes.apply()
    await settled(changes)
    assert whole and not any(whole)  # only ever a part of the campaigns at a time
    assert len(engine.live()) == 3001 and engine.index.live_bits(engine.live()) == (1 << len(engine.index.slots)) - 1
    assert not any(whole)  # and the first request finds it made


def test_a_live_set_computed_aside_that_went_stale_is_computed_again_at_install(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_780_000_000.0 - 1_780_000_000.0 % 900 + 600]  # five minutes before a quarter hour
    camps = [parse_campaign(campaign(id=f"c{i}")) for i in range(5)]
    engine = BidEngine(EngineConfig(secret=b"s"), camps, ModelSnapshot.empty(), sink=lambda *a: None,
                       clock=lambda: now[0])
    engine.prepare()
    day = engine.campaign_day(camps[0], now[0])

    def aside(country: str) -> tuple:
        """A campaign change's index and its live set, built aside."""
        camps = engine.stage_campaigns([parse_campaign(campaign(id="c1", targeting={"countries": [country]}))])
        assert camps is not None
        staged = drain(CampaignIndex.steps(camps))
        drain(staged.build_steps())
        return staged, drain(engine.live_steps(staged))

    # a budget running out after the set was computed: that campaign must not bid on the new index
    staged, live = aside("FRA")
    assert "c3" in live.campaigns
    engine.set_pacing(PacingState(campaign="c3", day=day, exhausted=True))
    engine.install_index(staged, live=live)
    engine.prepare()
    assert "c3" not in engine.live() and len(engine.live()) == 4

    # a quarter hour turning meanwhile: the set of the one before is not taken
    engine.set_pacing(PacingState(campaign="c3", day=day, exhausted=False))
    staged, live = aside("DEU")
    now[0] += 400
    calls = record_calls(monkeypatch, engine, "_live_campaigns", lambda t, campaigns=None: campaigns)
    engine.install_index(staged, live=live)
    engine.prepare()
    assert calls == [None] and len(engine.live()) == 5  # computed again, whole, for the new quarter hour

    # and one still good is taken as it is
    staged, live = aside("ITA")
    calls.clear()
    engine.install_index(staged, live=live)
    engine.prepare()
    assert calls == [] and engine.live() is live.campaigns


async def test_a_bulk_pause_is_built_between_bids_not_swapped_in_place_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pause swapped in place copies the live set: 10,000 of them in one batch (`campaign set` of a whole
    file, or a budget edit of every campaign) held a serving worker's event loop for about a second."""
    from bidder.wiring import IN_PLACE_MAX

    docs = [campaign(id=f"c{i}") for i in range(500)]
    engine = BidEngine(EngineConfig(secret=b"s"), [parse_campaign(d) for d in docs], ModelSnapshot.empty(),
                       sink=lambda *a: None)
    engine.prepare()
    rechecked = record_calls(monkeypatch, engine, "_recheck_live", lambda cid: cid)
    changes = CampaignChanges(engine)
    for d in docs[:IN_PLACE_MAX]:  # a few: in place, at once, as before
        changes.on_config(d["id"].encode(), change({**d, "status": "paused"}))
    changes.apply()
    assert changes.building is None and len(rechecked) == IN_PLACE_MAX and len(engine.live()) == 500 - IN_PLACE_MAX
    old, rechecked[:] = engine.index, []
    for d in docs:
        changes.on_config(d["id"].encode(), change({**d, "status": "paused", "budget": {"daily": 7.0, "total": 0}}))
    changes.apply()
    assert rechecked == [] and engine.index is old and changes.building is not None  # bidding on as before meanwhile
    await settled(changes)
    assert engine.index is not old and engine.live() == frozenset() and rechecked == []
    assert all(c.status == "paused" and c.daily_budget == 7_000_000 for c in engine.index.campaigns.values())
