"""A bidder with a broker reads its state topics before it bids, applies a backlog in one go, and stays responsive.

A restarted bidder finds hundreds of superseded model snapshots, thousands of campaign and pacing messages and a
day of billed impressions on the topics.  It must not build scoring tables for every snapshot, bid on half-read
state (paused campaigns, an old model, frequency caps not counted yet), or hold the event loop while it reads.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.metrics import BidderStats
from bidder.server import BidApp, start_server
from bidder.wiring import CampaignChanges, StateUpdates, Warmup
from models.snapshot import ModelSnapshot
from tests.conftest import free_port
from tests.helpers import body, campaign, record_calls, request
from tests.streams_support import create_topics, get_json, http_get, produce, topic, wait_for

ROOT = Path(__file__).resolve().parent.parent


def engine(*camps: dict) -> BidEngine:
    e = BidEngine(EngineConfig(secret=b"s", explore_below=0), [parse_campaign(c) for c in camps], ModelSnapshot.empty(),
                  sink=lambda *a: None)
    e.prepare()  # a serving engine has its tables: a model swap then builds new ones
    return e


def snapshot(version: int) -> bytes:
    m = ModelSnapshot.empty()
    m.version = version
    return m.to_bytes()


def pacing(camp: str, lam: float) -> bytes:
    return orjson.dumps({"campaign": camp, "day": "2026-12-07", "lam": lam, "spent_today": 0, "budget_today": 10**9,
                         "exhausted": False})


def test_held_campaign_changes_wait_for_release_and_are_one_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    e = engine(campaign(id="kept"))
    rebuilds = record_calls(monkeypatch, e, "install_index", lambda index, *a, **kw: len(index))
    changes = CampaignChanges(e)
    changes.hold()
    for batch in range(3):  # a restart reads the topic in several batches
        for i in range(100):
            changes.on_config(b"", orjson.dumps({"campaign": campaign(id=f"c{batch}-{i}")}))
        changes.apply()  # the follower's end of batch: nothing while held
    assert rebuilds == [] and "c0-0" not in e.index.campaigns
    changes.release()
    assert rebuilds == [301] and {f"c2-{i}" for i in range(100)} <= set(e.index.campaigns)
    changes.apply()
    assert rebuilds == [301]  # nothing new: no rebuild


def test_held_model_and_pacing_apply_only_the_last_one_each(monkeypatch: pytest.MonkeyPatch) -> None:
    e = engine(campaign(id="a"), campaign(id="b"))
    swaps = record_calls(monkeypatch, e, "set_model", lambda m: m.version)
    parsed = record_calls(monkeypatch, ModelSnapshot, "from_bytes", lambda raw: raw)
    updates = StateUpdates(e)
    updates.hold()
    for v in range(1, 41):
        updates.on_model(b"ctr", snapshot(v))
    for lam in (0.5, 1.5, 2.5):
        updates.on_pacing(b"a", pacing("a", lam))
    updates.on_pacing(b"b", pacing("b", 0.25))
    assert swaps == [] and parsed == [] and e.model.version == 0 and "a" not in e.pacing
    updates.release()
    assert swaps == [40] and len(parsed) == 1 and e.model.version == 40  # one snapshot parsed, one set of tables
    assert e.pacing["a"].lam == 2.5 and e.pacing["b"].lam == 0.25
    updates.on_model(b"ctr", snapshot(41))  # caught up: each is applied as it comes
    updates.on_pacing(b"a", pacing("a", 3.0))
    assert swaps == [40, 41] and e.pacing["a"].lam == 3.0
    with pytest.raises(ValueError):
        updates.on_model(b"ctr", b"not a snapshot")  # the follower counts it; the model in force stays
    assert e.model.version == 41


def test_an_unreadable_last_snapshot_falls_back_to_the_one_before(caplog: pytest.LogCaptureFixture) -> None:
    e = engine(campaign(id="a"))
    updates = StateUpdates(e)
    updates.hold()
    for v in (1, 2, 3):
        updates.on_model(b"ctr", snapshot(v))
    updates.on_model(b"ctr", b"not a snapshot")
    updates.release()
    assert e.model.version == 3
    assert any("model snapshot refused" in r.getMessage() for r in caplog.records)


def test_a_warming_worker_answers_204_warming_until_every_part_is_read() -> None:
    e = engine(campaign(id="a"))
    app = BidApp(e, BidderStats())
    expired: list[bool] = []
    warmup = Warmup(app, ("state", "billing"), on_expire=lambda: expired.append(True))
    req = body(request())
    started = time.perf_counter()
    assert app.bid(req, False, "x", started).startswith(b"HTTP/1.1 204") and b"x-nobid-reason: warming" in \
        app.bid(req, False, "x", time.perf_counter())
    assert app.stats.requests[("x", "nobid", "warming")] == 2
    warmup.done("state")
    assert app.warming == ("billing",)
    assert b"warming" in app.bid(req, False, "x", time.perf_counter())
    assert app.bid(b"{not json", False, "x", time.perf_counter()).startswith(b"HTTP/1.1 400")  # bad input still named
    warmup.done("billing")
    assert app.warming == () and app.bid(req, False, "x", time.perf_counter()).startswith(b"HTTP/1.1 200")
    warmup.expire()
    assert expired == []  # nothing was waiting any more


def test_a_warmup_that_runs_out_bids_on_what_was_read(caplog: pytest.LogCaptureFixture) -> None:
    app = BidApp(engine(campaign(id="a")), BidderStats())
    released: list[bool] = []
    warmup = Warmup(app, ("state", "billing"), on_expire=lambda: released.append(True))
    warmup.done("state")
    warmup.expire()
    assert app.warming == () and released == [True]
    assert any("billing" in r.getMessage() and "bidding on the state read so far" in r.getMessage() for r in caplog.records)


async def test_readyz_is_503_naming_what_is_read_until_the_worker_bids() -> None:
    app = BidApp(engine(campaign(id="a")), BidderStats())
    warmup = Warmup(app, ("state",))
    port = free_port()
    srv = await start_server(app, "127.0.0.1", port)
    try:
        def get(path: str) -> tuple[int, bytes]:
            return http_get(f"http://127.0.0.1:{port}{path}")

        status, out = await asyncio.to_thread(get, "/readyz")
        assert status == 503 and orjson.loads(out) == {"ready": False, "reading": ["state"]}
        assert (await asyncio.to_thread(get, "/healthz"))[0] == 200  # alive all along
        warmup.done("state")
        assert await asyncio.to_thread(get, "/readyz") == (200, b'{"ready":true}')
    finally:
        srv.close()
        if app.sweeper:
            app.sweeper.cancel()


# -- against the real broker ----------------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_a_follower_catches_up_in_turns_of_the_event_loop_and_says_when(kafka_bootstrap: str) -> None:
    """3,000 messages whose handler takes 0.5 ms: read in one run they would hold the loop 1.5 s."""
    from streams.kafka_io import StateFollower

    prefix = f"w{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(create_topics, kafka_bootstrap, prefix)
    name = topic(prefix, "pacing")
    await produce(kafka_bootstrap, [(name, f"c{i % 50}", b"%d" % i) for i in range(3000)])
    seen: list[int] = []
    events: list[tuple[str, int]] = []

    def handler(key: bytes, value: bytes) -> None:
        end = time.perf_counter() + 0.0005
        while time.perf_counter() < end:
            pass
        seen.append(int(value))

    follower = StateFollower(kafka_bootstrap, {name: handler}, on_behind=lambda: events.append(("behind", len(seen))),
                             on_caught_up=lambda: events.append(("caught_up", len(seen))),
                             after_batch=lambda: events.append(("batch", len(seen))))
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    await follower.start()
    try:
        await asyncio.wait_for(_until(lambda: follower.caught_up), 60)
    finally:
        await follower.stop()
        tick.cancel()
    assert seen == list(range(3000))  # every message, in order, once
    assert events[0] == ("behind", 0) and events[-1] == ("caught_up", 3000) and follower.behind == 0
    assert [e for e in events if e[0] == "caught_up"] == [("caught_up", 3000)]
    assert any(e[0] == "batch" for e in events)
    assert max(gaps) < 0.25, f"the loop waited {max(gaps):.3f} s for the follower"


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.02)


@pytest.mark.kafka
def test_a_restarted_bidder_reads_the_backlog_before_it_bids_and_swaps_the_model_once(kafka_bootstrap: str,
                                                                                       tmp_path: Path) -> None:
    prefix = f"w{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, prefix)
    domain = f"{prefix}.example"
    camps = [campaign(id=f"{prefix}-{i}", targeting={"countries": ["USA"], "domains": [domain]}) for i in range(200)]
    records: list[tuple[str, str, bytes | None]] = [
        (topic(prefix, "campaigns"), c["id"], orjson.dumps({"campaign": c})) for c in camps]
    records += [(topic(prefix, "model"), "ctr", snapshot(v)) for v in range(1, 61)]
    records += [(topic(prefix, "pacing"), camps[0]["id"], pacing(camps[0]["id"], lam / 10)) for lam in range(1, 31)]
    asyncio.run(produce(kafka_bootstrap, records))
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap, "STREAMBID_TOPIC_PREFIX": prefix,
           "STREAMBID_SECRET": "test-secret", "STREAMBID_SALT": "test-salt"}
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([sys.executable, "-m", "bidder.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                              "--lease-slice", "0", "--spill-dir", str(tmp_path / "spill")],
                             cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get_json(f"{base}/status"), 30, "the bidder to answer /status")
        wait_for(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "the bidder to read its state topics")
        st = get_json(f"{base}/status")
        assert st["warming"] == [] and st["behind"] == {"state": 0, "billing": 0}
        assert st["model"]["version"] == 60 and st["campaigns"] == 200
        assert st["pacing"][camps[0]["id"]]["lam"] == pytest.approx(3.0)
        site = {"id": "s", "domain": domain, "publisher": {"id": "p"}}
        status, _ = http_get_post(f"{base}/bid/x", body(request(site=site)))
        assert status == 200
        # it says when it starts to bid
        text = (tmp_path / "serve.log").read_text()
        assert "worker 0 read its state topics in" in text, text
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        log.close()


def http_get_post(url: str, data: bytes) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_state_read_again_after_a_lost_connection_is_not_applied_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconnected follower reads every state topic from its start: the campaigns, model and pacing in force come
    again, and applying them (every campaign swapped in place, the model's tables built anew) held a serving worker's
    event loop for tens of milliseconds per thousand campaigns, to change nothing."""
    docs = [campaign(id=f"c{i}") for i in range(50)]
    e = engine(*docs)
    changes, updates = CampaignChanges(e), StateUpdates(e)
    for d in docs:
        changes.on_config(b"", orjson.dumps({"campaign": {**d, "status": "paused"}}))
    changes.apply()
    updates.on_model(b"ctr", snapshot(3))
    updates.on_pacing(b"c1", pacing("c1", 1.5))
    staged = record_calls(monkeypatch, e, "stage_campaigns", lambda camps: len(list(camps)))
    swaps = record_calls(monkeypatch, e, "set_model", lambda m: m.version)
    paced = record_calls(monkeypatch, e, "set_pacing", lambda s: s.campaign)
    changes.hold()
    updates.hold()
    for d in docs:  # the history: each campaign as first set, then paused
        changes.on_config(b"", orjson.dumps({"campaign": d}))
        changes.on_config(b"", orjson.dumps({"campaign": {**d, "status": "paused"}}))
    for v in (1, 2, 3):
        updates.on_model(b"ctr", snapshot(v))
    updates.on_pacing(b"c1", pacing("c1", 1.5))
    changes.release()
    updates.release()
    assert staged == [] and swaps == [] and paced == []
    assert all(e.index.campaigns[d["id"]].status == "paused" for d in docs) and e.model.version == 3
    changes.hold()  # what did change meanwhile still comes in
    changes.on_config(b"", orjson.dumps({"campaign": docs[0]}))
    changes.on_config(b"", orjson.dumps({"campaign": {**docs[0], "status": "paused"}}))
    changes.on_config(b"", orjson.dumps({"campaign": docs[0]}))  # resumed last
    changes.release()
    assert staged == [1] and e.index.campaigns["c0"].status == "active"
