"""A bidder following the config topic applies a fetch of campaign changes in one index rebuild, not one each."""

from __future__ import annotations

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
    rebuilds = record_calls(monkeypatch, engine, "set_campaigns", len)
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
