"""Edges of the demo's figures: the baselines play the paced day's auctions from its state; the plot states its units."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest

from bidder.campaigns import load_campaigns
from loadtest import demo
from loadtest.day import CampaignDay, DayReport, ExchangeDay
from loadtest.demo import DemoRun, FlatPacer, _Stack, demo_campaigns_path, plot_day, run_demo
from loadtest.simulator import Market
from tests.helpers import saved_figures


def test_what_the_users_and_the_exchange_draw_never_moves_the_requests() -> None:
    market = Market(5)
    other = copy.deepcopy(market)
    for _ in range(7):  # a win elsewhere: its billing delay, click and conversion draws
        other.notice_delay()
        other.click_delay()
        other.rng.random()
    for now in range(200):
        a, b = market.auction(float(now)), other.auction(float(now))
        assert (a.body, a.ctx, a.market_cpm, a.first_price) == (b.body, b.ctx, b.market_cpm, b.first_price)


def test_a_bidder_that_wins_is_offered_the_same_day_as_one_that_never_bids() -> None:
    """The demo plays today under each strategy on a copy of one market: the comparison is fair only if what a
    strategy wins leaves the requests that follow unchanged."""
    campaigns = load_campaigns(demo_campaigns_path())
    start = dt.datetime(2026, 3, 4, tzinfo=dt.UTC).timestamp()
    market = Market(3)
    offered: dict[str, list[bytes]] = {}
    for name in ("bids", "never"):
        stack = _Stack(campaigns, seed=3)
        seen: list[bytes] = []

        def bid(body: bytes, now: float, stack: _Stack = stack, seen: list[bytes] = seen, name: str = name
                ) -> tuple[int, bytes]:
            seen.append(body)
            return stack.bid(body, now) if name == "bids" else (204, b"")

        day = ExchangeDay(copy.deepcopy(market), campaigns, bid, stack.notice, stack.bus.emit, stack.tick)
        report = day.run(1500, start, progress=False)
        offered[name] = seen
        if name == "bids":
            assert sum(r.wins for r in report.campaigns.values()) > 0
    assert offered["bids"] == offered["never"]


def test_the_demo_plot_states_the_currency_its_spend_is_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    campaigns = load_campaigns(demo_campaigns_path())
    stack = _Stack(campaigns)
    days = {c.id: CampaignDay(budget=c.daily_budget, spend=c.daily_budget // 2, curve=[(0.5, c.daily_budget // 2)])
            for c in campaigns}
    run = DemoRun(DayReport(days, 100, 100, 0, 0.0), stack.bus, stack.engine, campaigns)
    figures = saved_figures(monkeypatch)
    path = plot_day(run, [{"campaign": c.id, "roi": 1.0} for c in campaigns], tmp_path / "demo.png")
    assert path.is_file() and len(figures) == 1
    spend_axes = figures[0].axes[: len(campaigns)]
    for ax, camp in zip(spend_axes, campaigns, strict=True):
        assert ax.get_ylabel() == "cumulative spend (USD)" and ax.get_title().endswith(f"{camp.daily_budget / 1e6:.2f} USD")
        assert ax.get_xlabel() == "hour of day (UTC)"


def test_the_baselines_start_from_the_market_prices_the_paced_day_starts_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paced day shades its first first-price bid with what yesterday's notices taught it; a baseline that had
    forgotten them would overpay its first-price auctions until it had seen enough prices of its own."""
    seen: dict[str, float] = {}  # strategy -> market prices its engine knew at its first bid of today
    bid = _Stack.bid

    def noting(self: _Stack, body: bytes, now: float) -> tuple[int, bytes]:
        name = "paced" if type(self.bus.pacer) is not FlatPacer else "fixed" if not self.engine.cfg.explore_below else "asap"
        if now >= today:
            seen.setdefault(name, sum(m.observations for m in self.engine.landscapes.values()))
        return bid(self, body, now)

    today = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time(), dt.UTC).timestamp()
    monkeypatch.setattr(_Stack, "bid", noting)
    monkeypatch.setattr(demo, "_pool", demo._InlineExecutor)  # the baselines play here, where the bids are noted
    run_demo(requests=1500, seed=3, progress=False)
    assert set(seen) == {"paced", "asap", "fixed"}
    assert seen["paced"] >= 200  # enough to shade by
    # all of them but the few prices of yesterday's last minute that the paced engine had yet to fold in
    assert min(seen["asap"], seen["fixed"]) >= 0.99 * seen["paced"]
