"""The CTR benchmark's fairness and its data checks, on small generated data (never the shared data)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from models.bench_ctr import Progress, VowpalWabbit, _vw_token, progressive, synthetic_examples
from models.commands import ctr_sample_problem

PARSE_DELAY_S = 0.002


def test_vw_time_per_predict_leaves_its_parsing_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """µs/predict is the model's time for every learner: streambid's hashing is prepared untimed, so VW's parsing
    (its tokenising and hashing) must be too, and the predictions stay those of parse, predict, learn in order."""
    pyvw = pytest.importorskip("vowpalwabbit.pyvw")
    examples = list(synthetic_examples(40, seed=3))
    reference = VowpalWabbit()
    expected = []
    for ex in examples:
        tokens = [_vw_token(f"{f}={v}") for f, v in [*ex.request, ("campaign", ex.campaign), ("creative", ex.creative)]]
        parsed = reference.vw.parse(f"{1 if ex.label else -1} |f " + " ".join(tokens))
        expected.append(reference.vw.predict(parsed))
        reference.vw.learn(parsed)
        reference.vw.finish_example(parsed)

    parse = pyvw.Workspace.parse

    def slow_parse(self, *args, **kwargs):
        time.sleep(PARSE_DELAY_S)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(pyvw.Workspace, "parse", slow_parse)
    run = progressive(VowpalWabbit(), examples, len(examples), "test", Progress(enabled=False))
    assert list(run.preds) == expected
    row = run.row()
    assert row["us_predict"] < PARSE_DELAY_S * 1e6 / 2
    assert row["us_learn"] < PARSE_DELAY_S * 1e6 / 2


def sample(path: Path, train: str) -> Path:
    """A tiny iPinYou CTR sample in the fm format with the given train lines."""
    path.mkdir()
    (path / "featindex.fm.txt").write_text("".join(f"hour:{h}\t{h}\n" for h in range(300)))
    (path / "train.fm.txt").write_text(train)
    (path / "test.fm.txt").write_text("0 1:1 2:1\n")
    return path


def test_sample_check_refuses_a_bare_number_among_the_features(tmp_path: Path) -> None:
    """`label price index:value ...` lines (a market price after the label) would have the price read as a feature
    index: a feature learned from the auction's outcome.  Only `index:value` tokens pass."""
    assert ctr_sample_problem(sample(tmp_path / "good", "0 3:1 4:1\n1 5:1\n")) is None
    data = sample(tmp_path / "priced", "0 3:1 4:1\n1 227 5:1\n")
    problem = ctr_sample_problem(data)
    assert problem is not None
    assert str(data / "train.fm.txt") in problem and "line 2" in problem and "index:value" in problem


def test_an_unreadable_sample_file_is_named_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample(tmp_path / "ctr", "0 3:1\n")

    def denied(path: Path, ok: object) -> int | None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("models.commands._first_bad_line", denied)
    problem = ctr_sample_problem(data)
    assert problem is not None
    assert str(data / "featindex.fm.txt") in problem and "Permission denied" in problem
    assert "make it readable" in problem
