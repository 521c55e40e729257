"""Scoring tables built aside in steps (a model swap, a new index): the same tables, pacing that came meanwhile
folded in, and a serving worker bidding with the previous model until the new one's tables are ready."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import orjson
import pytest

from bidder import wiring
from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.pacing import PacingState
from bidder.scoring import STEP_SLOTS, SlotTables
from bidder.slices import drain, run_sliced
from bidder.targeting import CampaignIndex
from bidder.wiring import StateUpdates
from models.prior import DECODE_STEP
from models.snapshot import ModelSnapshot
from tests.helpers import campaign, record_calls, varied_model

N = 300


def docs() -> list[dict]:
    out = []
    for i in range(N):
        creatives = [{"id": f"cr{k}", "w": 300, "h": 250, "adm": "<a/>"} for k in range(1 + i % 3)]
        out.append(campaign(id=f"c{i:03d}", creatives=creatives))
    return out


def make_engine(seed: int = 7) -> tuple[BidEngine, list[dict]]:
    d = docs()
    engine = BidEngine(EngineConfig(secret=b"s", explore_below=200), [parse_campaign(x) for x in d],
                       varied_model(d, random.Random(seed)), sink=lambda *a: None, rng=random.Random(1))
    engine.prepare()
    return engine, d


def model(d: list[dict], version: int) -> ModelSnapshot:
    m = varied_model(d, random.Random(version))
    m.version = version
    return m


def tables_of(engine: BidEngine) -> SlotTables:
    assert engine._tables is not None
    return engine._tables


ARRAYS = ("table", "explore", "_fixed", "_neg_lam", "_neg_off", "_pool", "_next")


def test_tables_in_steps_are_the_tables_at_once() -> None:
    engine, d = make_engine()
    m = model(d, 2)
    at_once = SlotTables(engine.index, m, 200, engine.pacing, random.Random(5), engine._tables)
    at_once.fill_draws()
    steps, pauses = SlotTables.build_steps(engine.index, m, 200, engine.pacing, random.Random(5), engine._tables), 0
    while True:
        try:
            next(steps)
            pauses += 1
        except StopIteration as done:
            in_steps = done.value
            break
    for name in ARRAYS:
        assert np.array_equal(getattr(at_once, name), getattr(in_steps, name)), name
    assert in_steps.consts is tables_of(engine).consts  # same index: the constants are shared, not rebuilt
    assert 0 < at_once.explore.sum() < engine.index.n  # some creatives explore, some are trained
    assert pauses >= engine.index.n // STEP_SLOTS


def test_a_new_index_folds_in_the_pacing_that_came_while_its_tables_were_built() -> None:
    engine, _ = make_engine()
    engine.set_pacing(PacingState(campaign="c005", day="2026-12-07", lam=0.5, spent_today=0, budget_today=10**9,
                                  exhausted=False))
    camps = engine.stage_campaigns([parse_campaign(campaign(id="new", targeting={"countries": ["FRA"]}))])
    assert camps is not None
    staged = CampaignIndex(camps)
    drain(staged.build_steps())
    steps = engine.tables_steps(index=staged)
    for _ in range(3):
        next(steps)  # the constants have read the pacing states by now
    late = PacingState(campaign="c005", day="2026-12-07", lam=3.0, spent_today=0, budget_today=10**9, exhausted=False)
    engine.set_pacing(late)
    tables = drain(steps)
    engine.install_index(staged, tables)
    assert engine._tables is tables
    fresh = SlotTables(staged, engine.model, 200, engine.pacing, random.Random(1))
    slots = staged.slots_of("c005")
    assert np.array_equal(tables.consts.scale[slots], fresh.consts.scale[slots])
    assert np.array_equal(tables.consts.scale, fresh.consts.scale)


def test_a_model_arriving_after_the_index_changed_is_built_again_for_the_new_one() -> None:
    engine, d = make_engine()
    tables = drain(engine.tables_steps(model=model(d, 3)))
    engine.upsert_campaigns([parse_campaign(campaign(id="extra"))])
    engine.install_model(tables)
    assert engine.model is tables.model and engine._tables is not tables
    assert tables_of(engine).index is engine.index and tables_of(engine).model is engine.model


async def wait_built(updates: StateUpdates) -> int:
    give_up, turns = time.monotonic() + 10, 0
    while updates.building is not None and time.monotonic() < give_up:
        turns += 1
        await asyncio.sleep(0)
    assert updates.building is None, "the model was never built"
    return turns


async def test_a_serving_worker_bids_with_the_old_model_until_the_new_tables_are_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wiring, "run_sliced", lambda steps: run_sliced(steps, slice_s=0.0))  # a pause at every step
    engine, d = make_engine()
    old = engine.model
    versions = []
    real = engine.install_model

    def noted(tables: SlotTables) -> None:
        versions.append(tables.model.version)
        real(tables)

    engine.install_model = noted  # type: ignore[method-assign]
    updates = StateUpdates(engine)
    updates.on_model(b"ctr", model(d, 2).to_bytes())
    assert engine.model is old and updates.building is not None  # built between bids, not now
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert engine.model is old and updates.building is not None  # still building: bids go on with the old model
    updates.on_model(b"ctr", model(d, 3).to_bytes())  # two more while it builds: only the last is built next
    updates.on_model(b"ctr", model(d, 4).to_bytes())
    assert await wait_built(updates) >= 2
    assert versions == [2, 4] and engine.model.version == 4
    assert tables_of(engine).model is engine.model and tables_of(engine).index is engine.index


def built_at_once(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every SlotTables built at once, in one go on the event loop (tables built in steps do not call __init__)."""
    calls: list = []
    real = SlotTables.__init__

    def counted(self: SlotTables, *args: object, **kw: object) -> None:
        calls.append(args[0])
        real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(SlotTables, "__init__", counted)
    return calls


async def turns_until(done: object, what: str) -> None:
    give_up = time.monotonic() + 10
    while not done() and time.monotonic() < give_up:  # type: ignore[operator]
        await asyncio.sleep(0)
    assert done(), what  # type: ignore[operator]


async def test_a_model_installed_during_a_campaign_change_is_gathered_between_bids_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wiring, "run_sliced", lambda steps: run_sliced(steps, slice_s=0.0))
    engine, d = make_engine()
    at_once = built_at_once(monkeypatch)
    changes = wiring.CampaignChanges(engine)
    builds = record_calls(monkeypatch, engine, "tables_steps", lambda **kw: kw)
    changes.on_config(b"c001", orjson.dumps({"campaign": campaign(id="c001", targeting={"countries": ["FRA"]})}))
    changes.apply()
    await turns_until(lambda: builds, "the new index's tables were never begun")
    await asyncio.sleep(0)
    assert changes.building is not None  # into the tables of the new index, with the model in force then
    newer = model(d, 8)
    engine.install_model(drain(engine.tables_steps(model=newer)))  # a model swap finishes meanwhile
    assert engine.model is newer
    await turns_until(lambda: changes.building is None, "the change was never installed")
    assert engine.index.campaigns["c001"].targeting.countries == {"FRA"}
    assert tables_of(engine).index is engine.index and tables_of(engine).model is newer
    assert at_once == []  # neither the new index's tables nor the model's were built in one go
    ours = [kw for kw in builds if "index" in kw]  # the change's builds, not the test's own model swap
    assert len(ours) == 2 and ours[1]["previous"].index is engine.index  # the second kept the constants
    fresh = SlotTables(engine.index, newer, 200, engine.pacing, random.Random(1))
    assert np.array_equal(tables_of(engine).explore, fresh.explore)
    assert np.array_equal(tables_of(engine).consts.creative_fids, fresh.consts.creative_fids)


async def test_a_campaign_change_installed_during_a_model_swap_is_gathered_between_bids_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wiring, "run_sliced", lambda steps: run_sliced(steps, slice_s=0.0))
    engine, d = make_engine()
    updates = StateUpdates(engine)
    builds = record_calls(monkeypatch, engine, "tables_steps", lambda **kw: kw)
    updates.on_model(b"ctr", model(d, 9).to_bytes())
    await turns_until(lambda: builds, "the model's tables were never begun")
    await asyncio.sleep(0)
    assert updates.building is not None and engine.model.version != 9  # into its tables over the old index
    engine.upsert_campaigns([parse_campaign(campaign(id="extra"))])  # installed (and its tables built) meanwhile
    engine.prepare()
    at_once = built_at_once(monkeypatch)
    await wait_built(updates)
    assert engine.model.version == 9 and "extra" in engine.index.campaigns
    assert tables_of(engine).index is engine.index and tables_of(engine).model is engine.model
    assert at_once == [] and len(builds) == 2
    assert tables_of(engine).explore[engine.index.slots_of("extra")].all()  # the new campaign, scored by this model


async def test_a_model_whose_tables_fail_leaves_the_one_in_force(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    engine, d = make_engine()
    old = engine.model
    real = engine.tables_steps

    def broken(**kw: object) -> object:
        yield
        raise ValueError("bad tables")

    monkeypatch.setattr(engine, "tables_steps", broken)
    updates = StateUpdates(engine)
    updates.on_model(b"ctr", model(d, 2).to_bytes())
    await wait_built(updates)
    assert engine.model is old and "model snapshot refused: bad tables" in caplog.text
    monkeypatch.setattr(engine, "tables_steps", real)
    updates.on_model(b"ctr", model(d, 3).to_bytes())
    await wait_built(updates)
    assert engine.model.version == 3


async def test_catching_up_drops_a_model_still_being_built() -> None:
    """A reconnect holds updates while a model read before it is still being built: the held ones are newer,
    so release applies the last of them and the one in flight is never installed."""
    engine, d = make_engine()
    updates = StateUpdates(engine)
    updates.on_model(b"ctr", model(d, 2).to_bytes())
    updates.hold()
    updates.on_model(b"ctr", model(d, 5).to_bytes())
    updates.release()
    assert engine.model.version == 5
    for _ in range(200):
        await asyncio.sleep(0)
    assert engine.model.version == 5 and updates.building is None


def test_a_model_decoded_in_steps_is_the_model() -> None:
    _, d = make_engine()
    m = model(d, 6)
    raw = m.to_bytes()
    steps, pauses = ModelSnapshot.from_bytes_steps(raw), 0
    while True:
        try:
            next(steps)
            pauses += 1
        except StopIteration as done:
            decoded = done.value
            break
    assert decoded.to_dict() == ModelSnapshot.from_bytes(raw).to_dict() == m.to_dict()
    doc = m.to_dict()
    assert pauses >= 1 + len(doc["ids"]) // DECODE_STEP + 2 * (len(doc["counts"]["creatives"]) // DECODE_STEP)
    small = list(ModelSnapshot.from_dict_steps(doc, step=10))
    assert len(small) >= len(doc["ids"]) // 10  # the step bounds the work between two pauses


@pytest.mark.parametrize("change", [{"weights": "last"}, {"ids": "last"}, {"counts": "creative"}])
def test_a_bad_model_decoded_in_steps_is_refused_as_at_once(change: dict) -> None:
    _, d = make_engine()
    doc = model(d, 6).to_dict()
    if "weights" in change:
        doc["weights"][-1] = float("inf")
    elif "ids" in change:
        doc["ids"][-1] = -5
    else:
        doc["counts"]["creatives"][-1][2] = 10**9  # clicks above impressions
    with pytest.raises(ValueError) as at_once:
        ModelSnapshot.from_dict(doc)
    with pytest.raises(ValueError) as in_steps:
        drain(ModelSnapshot.from_dict_steps(doc, step=7))
    assert str(at_once.value) == str(in_steps.value) and "not a usable model snapshot" in str(in_steps.value)


async def test_an_unreadable_model_is_counted_and_the_one_in_force_stays(caplog: pytest.LogCaptureFixture) -> None:
    engine, d = make_engine()
    old = engine.model
    updates = StateUpdates(engine)
    updates.on_model(b"ctr", b"not a snapshot")  # decoded between bids: nothing raised here
    await wait_built(updates)
    assert engine.model is old and updates.refused == 1 and "model snapshot refused" in caplog.text
    updates.on_model(b"ctr", model(d, 7).to_bytes())
    await wait_built(updates)
    assert engine.model.version == 7 and updates.refused == 1
