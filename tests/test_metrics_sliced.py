"""/metrics rendered in slices between bids: the same text, pauses inside it, and a scrape never holding a bid."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

import bidder.server as server_mod
from bidder.campaigns import parse_campaign
from bidder.engine import BidEngine, EngineConfig
from bidder.metrics import BidderStats, Family, exposition_steps, families, render, render_steps
from bidder.slices import STEP_ITEMS, Steps, drain, run_sliced
from models.snapshot import ModelSnapshot
from tests.conftest import free_port
from tests.helpers import body, campaign, request
from tests.test_bidder_http import read_response, split
from tests.test_ops_metrics import NOW, parse

CAMPAIGNS = 600


def counting(n: int) -> Steps[int]:
    for _ in range(n):
        yield
    return n


def test_drain_runs_the_steps_to_their_result() -> None:
    assert drain(counting(5)) == 5 and drain(counting(0)) == 0


async def turns_during(steps: Steps[int], slice_s: float) -> tuple[int, int]:
    """`run_sliced(steps)`'s result, and how many turns another task got while it ran."""
    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    before = len(ticks)
    result = await run_sliced(steps, slice_s=slice_s)
    task.cancel()
    return result, len(ticks) - before


async def test_run_sliced_lets_other_tasks_in_only_between_slices() -> None:
    result, turns = await turns_during(counting(50), slice_s=0.0)
    assert result == 50 and turns >= 50  # a turn after every step
    assert await turns_during(counting(50), slice_s=60.0) == (50, 0)  # all in one slice


async def test_a_slice_gives_the_loop_a_turn_before_a_step_that_would_take_it_past_its_length() -> None:
    """Steps of 3 ms in slices of 5 ms: one step per turn (a slice of two would hold the loop 6 ms)."""

    def slow(n: int) -> Steps[int]:
        for _ in range(n):
            time.sleep(0.003)
            yield
        return n

    result, turns = await turns_during(slow(6), slice_s=0.005)
    assert result == 6 and turns >= 6


async def test_sliced_runs_take_turns_one_slice_per_pass_of_the_loop() -> None:
    """A model build, a campaign change and a /metrics page at once: each pass of the loop runs one slice of one of
    them, and none waits for another to finish."""
    passes = [0]
    ran: list[tuple[int, str]] = []

    async def ticker() -> None:  # runs once per pass: numbers them
        while True:
            passes[0] += 1
            await asyncio.sleep(0)

    def work(name: str, n: int) -> Steps[int]:
        for _ in range(n):
            ran.append((passes[0], name))
            yield
        return n

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    results = await asyncio.gather(*(run_sliced(work(name, 20), slice_s=0.0) for name in "abc"))
    task.cancel()
    assert results == [20, 20, 20] and len(ran) == 60
    by_pass: dict[int, set[str]] = {}
    for at, name in ran:
        by_pass.setdefault(at, set()).add(name)
    assert all(len(names) == 1 for names in by_pass.values()), by_pass  # one slice per pass, in all
    last = {name: max(i for i, (_, n) in enumerate(ran) if n == name) for name in "abc"}
    first = {name: min(i for i, (_, n) in enumerate(ran) if n == name) for name in "abc"}
    assert max(first.values()) < min(last.values())  # taking turns: none waited for another to finish


def many_app() -> server_mod.BidApp:
    docs = [campaign(id=f"c{i:04d}", advertiser=f"adv{i}.example") for i in range(CAMPAIGNS)]
    stats = BidderStats()
    engine = BidEngine(EngineConfig(secret=b"s", explore_below=0), [parse_campaign(d) for d in docs],
                       ModelSnapshot.empty(), sink=stats.tap(lambda k, key, ev: None), clock=lambda: NOW)
    app = server_mod.BidApp(engine, stats)
    for i in range(20):
        app.bid(body(request(id=f"r{i}")), False, f"ex{i % 3}", time.perf_counter())
    return app


def without_ages(text: bytes) -> dict:
    """The samples but ages (they move between two renders); NaN (an ROI with no spend) as a string, to compare."""
    return {k: "NaN" if v != v else v for k, v in parse(text).items() if not k[0].endswith("_age_seconds")}


def test_the_sliced_page_is_the_page_and_pauses_within_the_campaigns() -> None:
    app = many_app()
    steps = exposition_steps(app.stats, app.engine)
    pauses = 0
    while True:
        try:
            next(steps)
            pauses += 1
        except StopIteration as done:
            text = done.value
            break
    assert without_ages(text) == without_ages(app.metrics().partition(b"\r\n\r\n")[2])
    assert sum(1 for line in text.splitlines() if line.startswith(b"streambid_campaign_budget_daily{")) == CAMPAIGNS
    # eleven per-campaign gauges, each written STEP_ITEMS series at a time, and the campaign view taken in steps too
    per_family = -(-CAMPAIGNS // STEP_ITEMS)
    assert pauses >= 11 * per_family + CAMPAIGNS // STEP_ITEMS


def test_render_is_the_same_whatever_the_step() -> None:
    odd = 'a"b\\c\nd'
    fams = [Family("x", "counter", "help", ("a", "b"), [((f"v{i}", odd), i) for i in range(10)]),
            Family("y", "gauge", "h", ("a", "b", "c"), [(("1", "2", odd), 0.5), (("3", "4", "5"), float("inf"))]),
            Family("z", "gauge", "h", ("l",), [((str(i),), -float("inf")) for i in range(7)])]
    text = render(fams)
    assert all(drain(render_steps(fams, step)) == text for step in (1, 3, 10, 100))
    m = parse(text)
    assert m[("x_total", frozenset({("a", "v3"), ("b", odd)}))] == 3
    assert m[("y", frozenset({("a", "3"), ("b", "4"), ("c", "5")}))] == float("inf")
    assert m[("z", frozenset({("l", "6")}))] == -float("inf")


def test_families_in_steps_are_the_families() -> None:
    app = many_app()
    doc = drain(exposition_steps(app.stats, app.engine))
    again = render(families(*_doc_args(app)))
    assert without_ages(doc) == without_ages(again)


def _doc_args(app: server_mod.BidApp) -> tuple:
    from bidder.metrics import own_doc
    now = time.time()
    return own_doc(app.stats, app.engine, now), now, 1, app.stats.workers


@pytest.fixture()
async def many() -> object:
    app = many_app()
    port = free_port()
    srv = await server_mod.start_server(app, "127.0.0.1", port)
    try:
        yield app, port
    finally:
        srv.close()
        if app.sweeper:
            app.sweeper.cancel()


def each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render with a pause after every step, so a page takes many loop turns however fast the machine is."""
    monkeypatch.setattr(server_mod, "run_sliced", lambda steps: run_sliced(steps, slice_s=0.0))


async def begun(app: server_mod.BidApp) -> None:
    """Wait until the worker has begun rendering a page (at most 5 s)."""
    give_up = time.monotonic() + 5
    while app._page is None and time.monotonic() < give_up:
        await asyncio.sleep(0.001)
    assert app._page is not None, "no page is being rendered"


BID = b"POST /bid/exA HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
PAGE = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_bid_is_answered_while_a_page_is_rendered(many: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    app, port = many
    each_step(monkeypatch)
    bid = body(request(id="during"))
    ra, wa = await asyncio.open_connection("127.0.0.1", port)
    rb, wb = await asyncio.open_connection("127.0.0.1", port)
    wa.write(PAGE)
    await wa.drain()
    await begun(app)
    wb.write(BID % (len(bid), bid))
    await wb.drain()
    order: list[str] = []

    async def read(name: str, r: asyncio.StreamReader) -> bytes:
        raw = await asyncio.wait_for(read_response(r), 10)
        order.append(name)
        return raw

    page, answer = await asyncio.gather(read("page", ra), read("bid", rb))
    wa.close()
    wb.close()
    assert order == ["bid", "page"]
    assert split(answer)[0] == 200 and orjson.loads(split(answer)[2])["id"] == "during"
    status, headers, text = split(page)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert text.count(b"\nstreambid_campaign_budget_daily{") == CAMPAIGNS


async def test_requests_behind_a_page_on_its_connection_keep_their_order(many: tuple,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelined behind a page: a bid is shed at once (its answer could only leave after the page), the rest are
    answered as usual, a second page (here a HEAD) from the first's render.  All in the order they were asked."""
    app, port = many
    each_step(monkeypatch)
    bid = body(request(id="behind"))
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(PAGE + BID % (len(bid), bid) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await w.drain()
    raw = await asyncio.wait_for(r.read(), 10)
    w.close()
    answers = [split(b"HTTP/1.1 " + part) for part in raw.split(b"HTTP/1.1 ")[1:]]
    assert [status for status, _, _ in answers] == [200, 204, 200, 200]
    assert answers[1][1]["x-nobid-reason"] == "overload" and answers[2][2] == b'{"ok":true}'
    page, head = answers[0], answers[3]
    assert page[2].count(b"\nstreambid_campaign_budget_daily{") == CAMPAIGNS
    assert head[2] == b"" and head[1]["content-length"] == str(len(page[2]))  # the same render, without content
    assert app.stats.shed == 1


async def test_a_client_gone_before_its_page_breaks_nothing(many: tuple, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    app, port = many
    each_step(monkeypatch)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(PAGE)
    await w.drain()
    await begun(app)
    w.transport.abort()
    await app._page
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(PAGE)
    await w.drain()
    status, _, text = split(await asyncio.wait_for(read_response(r), 10))
    w.close()
    assert status == 200 and text.count(b"\nstreambid_campaign_budget_daily{") == CAMPAIGNS
    assert not [rec for rec in caplog.records if rec.levelname in ("ERROR", "CRITICAL")]


async def test_scrapes_during_a_render_share_it(many: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = many
    each_step(monkeypatch)
    first, second = app.metrics_page(), app.metrics_page()
    assert first is second
    text = await first
    third = app.metrics_page()
    assert third is not first and without_ages(await third) == without_ages(text)


async def test_bad_http_behind_a_page_is_answered_after_it(many: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection cannot be trusted past bad HTTP: its 400 goes out after the page it follows, then it closes."""
    _, port = many
    each_step(monkeypatch)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(PAGE + b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n")
    await w.drain()
    raw = await asyncio.wait_for(r.read(), 10)  # read to the hang-up
    w.close()
    answers = [split(b"HTTP/1.1 " + part) for part in raw.split(b"HTTP/1.1 ")[1:]]
    assert [status for status, _, _ in answers] == [200, 400]
    assert answers[0][2].count(b"\nstreambid_campaign_budget_daily{") == CAMPAIGNS
    assert orjson.loads(answers[1][2])["error"] == "bad_http"
