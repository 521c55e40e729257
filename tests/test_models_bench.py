"""The CTR benchmark's metrics and command, on small generated data (never the shared data)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from bidder.cli import main
from models.bench_ctr import auc, log_loss, read_ipinyou
from models.synthetic import SyntheticStream


def brute_force_auc(preds: list[float], labels: list[int]) -> float:
    pos = [p for p, y in zip(preds, labels, strict=True) if y]
    neg = [p for p, y in zip(preds, labels, strict=True) if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_counting_with_ties() -> None:
    rng = random.Random(1)
    preds = [rng.choice((0.1, 0.2, 0.3, 0.4)) + rng.random() * (i % 3 == 0) for i in range(300)]
    labels = [int(rng.random() < 0.2 + p / 3) for p in preds]
    assert auc(preds, labels) == pytest.approx(brute_force_auc(preds, labels))
    assert auc([0.1, 0.9], [0, 1]) == 1.0
    assert auc([0.5, 0.5], [0, 1]) == 0.5


def test_log_loss() -> None:
    assert log_loss([0.5, 0.5], [0, 1]) == pytest.approx(math.log(2))
    assert log_loss([0.9], [1]) == pytest.approx(-math.log(0.9))


def test_synthetic_stream_is_reproducible_and_drifts() -> None:
    a = [(e.fields, e.creative, e.label) for e in SyntheticStream(500, seed=3)]
    b = [(e.fields, e.creative, e.label) for e in SyntheticStream(500, seed=3)]
    assert a == b
    s = SyntheticStream(10, seed=3)
    ev = next(iter(s))
    before = s.true_logit(ev.fields, ev.campaign, ev.creative, drifted=False)
    after = s.true_logit(ev.fields, ev.campaign, ev.creative, drifted=True)
    assert before != after


def write_fm_sample(d, rng: random.Random) -> None:
    """A tiny data set in the iPinYou one-hot format: featindex plus train/test lines."""
    names = [f"domain:d{i}" for i in range(5)] + [f"hour:{h}" for h in range(3)] + ["creative:7", "creative:8", "advertiser:1"]
    (d / "featindex.fm.txt").write_text("".join(f"{n}\t{i}\n" for i, n in enumerate(names)))
    for name, n in (("train.fm.txt", 300), ("test.fm.txt", 200)):
        lines = []
        for _ in range(n):
            dom, hour, cre = rng.randrange(5), 5 + rng.randrange(3), 8 + rng.randrange(2)
            label = int(rng.random() < (0.3 if dom == 0 else 0.05))
            lines.append(f"{label} {dom}:1 {hour}:1 {cre}:1 10:1\n")
        (d / name).write_text("".join(lines))


def test_reads_the_one_hot_format(tmp_path) -> None:
    write_fm_sample(tmp_path, random.Random(2))
    examples = read_ipinyou(tmp_path)
    assert len(examples) == 500
    ex = examples[0]
    assert ex.campaign == "1" and ex.creative in ("7", "8") and ex.domain.startswith("d")
    assert {f for f, _ in ex.request} == {"domain", "hour"}


def test_bench_command_prints_one_json_document(tmp_path, capsys) -> None:
    write_fm_sample(tmp_path, random.Random(4))
    out = tmp_path / "out"
    code = main(["bench", "ctr", "--data", str(tmp_path), "--synthetic", "3000", "--json", "--quiet", "--out", str(out)])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    learners = [r["learner"] for r in doc["ipinyou"]["rows"]]
    assert learners[0] == "constant" and learners[-1] == "streambid"
    assert doc["ipinyou"]["snapshot"]["max_abs_diff_vs_learner"] < 1e-9
    assert {r["learner"] for r in doc["synthetic"]["rows"]} >= {"constant", "streambid", "true p"}
    assert (out / "ctr-reliability.png").stat().st_size > 1000


def test_bench_without_vw_says_how_to_install_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "vowpalwabbit", None)  # import now raises ImportError
    write_fm_sample(tmp_path, random.Random(5))
    code = main(["bench", "ctr", "--data", str(tmp_path), "--synthetic", "0", "--json", "--quiet", "--out", str(tmp_path / "o")])
    assert code == 0
    captured = capsys.readouterr()
    assert "pip install -e '.[bench]'" in captured.err
    assert "vowpalwabbit" not in [r["learner"] for r in json.loads(captured.out)["ipinyou"]["rows"]]
