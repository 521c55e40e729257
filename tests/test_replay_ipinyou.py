"""`streambid replay ipinyou` on a small log generated here (never the shared data)."""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction
from pathlib import Path

import orjson
import pytest

from bidder.cli import main
from loadtest.replay_ipinyou import (
    FEN_CPM,
    EpisodeResult,
    Luck,
    TrainingStats,
    episodes,
    load,
    paced_setup,
    parse_log,
    plot,
    run_feedback,
    run_hindsight,
    run_linear,
    run_predictive,
    run_replay,
    training_bid,
)
from loadtest.replay_ipinyou_tuning import Market, synthetic_episode
from loadtest.replay_ipinyou_tuning import main as tuning_main
from tests.helpers import saved_figures


def draw(rng: random.Random, price_scale: float) -> tuple[int, int, float]:
    pctr = min(0.002 * math.exp(rng.gauss(0.0, 0.7)), 0.5)
    price = min(300, max(1, int(price_scale * 40 * math.exp(rng.gauss(0.0, 0.6)))))
    return int(rng.random() < pctr), price, pctr


def make_data(path: Path, episodes_n: int = 8, size: int = 300, seed: int = 3) -> Path:
    """Training stats from one market; a test log whose prices run 1.4x higher in odd episodes (non-stationary)."""
    rng = random.Random(seed)
    train = [draw(rng, 1.0) for _ in range(20_000)]
    counts = [0] * 301
    for _, p, _ in train:
        counts[p] += 1
    info = {"imp_train": len(train), "clk_train": sum(c for c, _, _ in train), "cost_train": sum(p for _, p, _ in train),
            "price_counter_train": counts}
    path.mkdir(parents=True, exist_ok=True)
    (path / "info.json").write_text(json.dumps(info))
    lines = []
    for e in range(episodes_n):
        for _ in range(size):
            c, p, q = draw(rng, 1.4 if e % 2 else 1.0)
            lines.append(f"{c} {p} {q!r}")
    (path / "test.theta.txt").write_text("\n".join(lines) + "\n")
    return path


def test_win_rule_ties_win_and_budget_caps_the_bid() -> None:
    # (click, price micros, pctr); linear bid = base * pctr / avg_ctr
    ep = [(0, 100 * FEN_CPM, 0.01), (1, 50 * FEN_CPM, 0.01), (0, 60 * FEN_CPM, 0.02)]
    r = run_linear(ep, budget=1_000, base_bid=50 * FEN_CPM, avg_ctr=0.01)  # budget: 1000 micros = 100 fen CPM
    # bid 50 loses at 100; bid 50 ties 50 and wins (cost 500 micros); bid 100 but only 500 micros left: 50 < 60, loses
    assert (r.impressions, r.clicks, r.spend) == (1, 1, 500)


def test_hindsight_buys_best_ratio_first_and_skips_what_does_not_fit() -> None:
    ep = [(0, 100 * FEN_CPM, 0.010), (1, 10 * FEN_CPM, 0.004), (0, 30 * FEN_CPM, 0.009), (1, 0, 0.001)]
    r = run_hindsight(ep, budget=1_200)  # ratios: free, 4e-4, 3e-4, 1e-4 per fen; costs 0, 100, 300, 1000 micros
    assert (r.impressions, r.clicks, r.spend) == (3, 2, 400)


def test_hindsight_bounds_any_policy_on_expected_clicks(tmp_path: Path) -> None:
    """Greedy by pCTR/price is within one item of the fractional optimum, which no policy beats."""
    stats, log = load(make_data(tmp_path))
    budget = stats.budget_fen(Fraction(1, 8), 300) * 10
    setup = paced_setup(stats, budget // 10, {300})
    for ep in episodes(log, 300):
        best = run_hindsight(ep, budget).pctr_sum + max(a[2] for a in ep)
        assert run_predictive(ep, budget, setup).pctr_sum <= best
        assert run_feedback(ep, budget, setup).pctr_sum <= best
        assert run_linear(ep, budget, training_bid(stats.landscape(), budget, 300), stats.avg_ctr).pctr_sum <= best


@pytest.mark.parametrize("c0", [Fraction(1, 16), Fraction(1, 4)])
def test_pacer_spends_the_budget_where_the_fixed_linear_bid_cannot(tmp_path: Path, c0: Fraction) -> None:
    stats, log = load(make_data(tmp_path))
    report, _ = run_replay(stats, log, [c0], 300, traced=0)
    s = report["results"][0]["strategies"]
    for name in ("predictive", "feedback", "linear", "hindsight"):
        assert s[name]["overspent_episodes"] == 0
        assert s[name]["spend"] <= s[name]["budget"]
    for name in ("predictive", "feedback"):
        assert s[name]["budget_used"] >= 0.95
        assert s[name]["pctr_vs_hindsight"] >= 0.9
        assert s[name]["pctr_sum"] > s["linear"]["pctr_sum"]


@pytest.mark.parametrize("runner", [run_predictive, run_feedback])
def test_paced_episode_never_bids_past_the_budget_left(runner) -> None:
    rng = random.Random(5)
    ep = [(0, 1 * FEN_CPM, 0.05) for _ in range(200)] + [draw(rng, 1.0) for _ in range(200)]  # cheap, valuable first
    stats = TrainingStats(10_000, 20, 400_000, tuple([0] * 30 + [100] * 20 + [0] * 251))
    budget = 5_000
    r = runner(ep, budget, paced_setup(stats, budget // 10, {len(ep)}), trace=True)
    assert r.spend <= budget
    assert all(spent <= budget for _, spent, _ in r.curve)
    assert isinstance(r, EpisodeResult) and len(r.curve) == len(ep)


@pytest.mark.parametrize("runner", [run_predictive, run_feedback])
def test_pacers_never_learn_from_the_price_of_an_auction_they_lost(runner, tmp_path: Path) -> None:
    """Second price reveals nothing about a lost auction's price: raising those prices changes nothing."""
    stats, log = load(make_data(tmp_path))
    ep = episodes(log, 300)[1]
    budget = stats.budget_fen(Fraction(1, 8), 300) * 10
    setup = paced_setup(stats, budget // 10, {300})
    first = runner(ep, budget, setup, trace=True)
    spent = [0] + [s for _, s, _ in first.curve]
    lost = [i for i, a in enumerate(ep) if a[1] > 0 and spent[i + 1] == spent[i]]
    assert 0 < len(lost) < len(ep)
    dearer = [(c, 2 * p, q) if i in set(lost) else (c, p, q) for i, (c, p, q) in enumerate(ep)]
    again = runner(dearer, budget, setup, trace=True)
    assert again.curve == first.curve
    assert (again.clicks, again.impressions, again.spend) == (first.clicks, first.impressions, first.spend)


def test_parse_log_converts_fen_to_micros() -> None:
    assert parse_log(["1 70 0.0021\n", "\n", "0 6 0.003"]) == [(1, 70 * FEN_CPM, 0.0021), (0, 6 * FEN_CPM, 0.003)]


def test_command_prints_one_json_document_and_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data", episodes_n=4, size=200)
    out = tmp_path / "out"
    code = main(["replay", "ipinyou", "--data", str(data), "--c0", "1/8", "--episode", "200", "--json", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    doc = orjson.loads(captured.out)
    assert doc["episodes"] == 4
    assert [r["c0"] for r in doc["results"]] == ["1/8"]
    assert set(doc["results"][0]["strategies"]) == {"predictive", "feedback", "linear", "hindsight"}
    assert Path(doc["plot"]).is_file() and Path(doc["plot"]).parent == out
    assert "episode" in captured.err  # progress goes to stderr


def test_command_table_and_bad_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data", episodes_n=2, size=100)
    assert main(["replay", "ipinyou", "--data", str(data), "--c0", "1/32", "--episode", "100", "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "hindsight" in text and "clicks>=78" in text
    assert main(["replay", "ipinyou", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_luck_counts_only_impressions_one_strategy_bought() -> None:
    ep = [(1, 10 * FEN_CPM, 0.5), (0, 10 * FEN_CPM, 0.2), (1, 10 * FEN_CPM, 0.1), (0, 10 * FEN_CPM, 0.4)]
    ours, theirs = EpisodeResult(), EpisodeResult()
    for i in (0, 1):
        ours.win(ep[i], i)
    for i in (0, 2, 3):
        theirs.win(ep[i], i)
    luck = Luck(ctr_scale=0.5)
    luck.add(ep, ours, theirs)
    # only theirs: 2 (p 0.05, click) and 3 (p 0.2); only ours: 1 (p 0.1)
    assert luck.expected_gap == pytest.approx(0.05 + 0.2 - 0.1)
    assert luck.variance == pytest.approx(0.05 * 0.95 + 0.2 * 0.8 + 0.1 * 0.9)
    assert luck.realised_gap == 1
    assert (luck.only_ours, luck.only_theirs) == (1, 2)


def test_tuning_markets_come_from_training_stats_alone(tmp_path: Path) -> None:
    counts = [0] * 301
    counts[30], counts[50] = 300, 100
    (tmp_path / "info.json").write_text(json.dumps({"imp_train": 400, "clk_train": 2, "cost_train": 14_000,
                                                    "price_counter_train": counts}))
    stats, log = load(tmp_path, with_log=False)  # there is no test log here, and none is read
    assert log == []
    rng = random.Random(1)
    ep = synthetic_episode(stats, Market(sigma=0.8, corr=0.0, drift=0.0), 4_000, rng)
    prices = [p // FEN_CPM for _, p, _ in ep]
    assert set(prices) == {30, 50}
    assert prices.count(30) / len(prices) == pytest.approx(0.75, abs=0.03)
    assert sum(q for _, _, q in ep) / len(ep) == pytest.approx(stats.avg_ctr, rel=0.1)
    hot = [(q, p) for _, p, q in synthetic_episode(stats, Market(sigma=0.8, corr=0.9, drift=0.0), 4_000, rng)]
    dear = [q for q, p in hot if p == 50 * FEN_CPM]
    cheap = [q for q, p in hot if p == 30 * FEN_CPM]
    assert sum(dear) / len(dear) > 1.5 * sum(cheap) / len(cheap)  # correlated: dearer slots carry higher pCTR


@pytest.mark.parametrize("runner", [run_predictive, run_feedback])
def test_value_per_click_never_caps_bids_before_the_budget_does(runner) -> None:
    """Only low-pCTR auctions on offer, dear for their pCTR: clicks-under-budget still buys them with all the budget."""
    stats = TrainingStats(10_000, 50, 400_000, tuple([0] * 30 + [100] * 20 + [0] * 251))
    ep = [(0, 50 * FEN_CPM, stats.avg_ctr / 10) for _ in range(400)]
    budget = 100 * 50 * 10  # micros: 100 of the 400 auctions at 50 fen CPM
    r = runner(ep, budget, paced_setup(stats, budget // 10, {len(ep)}))
    assert r.spend <= budget
    assert r.spend >= 0.95 * budget


def test_a_share_of_no_hindsight_clicks_is_met_not_missed(tmp_path: Path) -> None:
    """Where hindsight's purchases drew no click, no clicks is 100% of them: the share target is met, shown as '-'."""
    stats, log = load(make_data(tmp_path))
    unclicked = [(0, p, q) for _, p, q in log]
    report, _ = run_replay(stats, unclicked, [Fraction(1, 32)], 300, traced=0)
    result = report["results"][0]
    assert result["strategies"]["hindsight"]["clicks"] == 0
    assert result["strategies"]["predictive"]["clicks_vs_hindsight"] is None
    assert result["targets"]["clicks_vs_hindsight>=0.97"] is True
    assert result["targets"]["clicks>=78"] is False


def test_the_plot_of_a_single_c0_keeps_its_whole_title(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = saved_figures(monkeypatch)
    traced = EpisodeResult(budget=100, curve=[(t + 1, t, 1.0) for t in range(100)])
    plot({"1/32": {0: traced}}, 100, tmp_path)
    fig = figures[0]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    title = next(t for t in fig.texts if "Predictive pacer" in t.get_text())
    box = title.get_window_extent(canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width


@pytest.mark.parametrize(("args", "says"), [(["--episodes", "0"], "--episodes"), (["--episode", "-5"], "--episode"),
                                            (["--data", "MISSING"], "cannot read the training statistics")])
def test_tuning_refuses_bad_arguments_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                              says: str) -> None:
    data = make_data(tmp_path / "data", episodes_n=1, size=10)
    argv = ["--data", str(data), *[str(tmp_path / "missing") if a == "MISSING" else a for a in args]]
    with pytest.raises(SystemExit) as stop:
        tuning_main(argv)
    assert stop.value.code == 2 and says in capsys.readouterr().err
