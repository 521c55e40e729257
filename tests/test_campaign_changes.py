"""A bidder following the config topic applies a fetch of campaign changes in one index rebuild, not one each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
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
    from bidder.targeting import CampaignIndex

    index = CampaignIndex([parse_campaign(campaign(id=f"c{i}")) for i in range(50)])
    steps, pauses = index.build_steps(), 0
    for _ in steps:
        pauses += 1
        assert not index._built  # nobody may read a half-built index as built
    assert pauses >= 15 and index._built and len(index.slots_of("c3")) == 1


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
    from bidder.targeting import CampaignIndex

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
