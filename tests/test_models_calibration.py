"""Calibration: measuring it and correcting it online."""

from __future__ import annotations

import math
import random

from models.calibration import (
    PlattCalibrator,
    downsample_correction,
    expected_calibration_error,
    logit,
    reliability_bins,
    sigmoid,
)


def miscalibrated_stream(n: int, seed: int) -> list[tuple[float, bool]]:
    """(score logit, label): the scores are overconfident (x2) and biased (+1) versions of the truth."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        z = rng.gauss(-4.0, 1.0)
        out.append((2.0 * z + 1.0 + 4.0, rng.random() < sigmoid(z)))
    return out


def test_ece_falls_after_online_correction() -> None:
    cal = PlattCalibrator()
    for s, y in miscalibrated_stream(60_000, seed=1):
        cal.learn(s, y)
    assert cal.active
    held_out = miscalibrated_stream(30_000, seed=2)
    labels = [y for _, y in held_out]
    raw = [sigmoid(s) for s, _ in held_out]
    corrected = [cal.apply(s) for s, _ in held_out]
    ece_raw = expected_calibration_error(raw, labels)
    ece_cal = expected_calibration_error(corrected, labels)
    assert ece_cal < ece_raw / 3
    assert abs(cal.a - 0.5) < 0.1  # the true correction is a = 0.5, b = -2.5
    assert abs(cal.b + 2.5) < 0.5


def test_calibrated_scores_are_left_alone() -> None:
    rng = random.Random(3)
    cal = PlattCalibrator()
    for _ in range(30_000):
        z = rng.gauss(-4.0, 1.0)
        cal.learn(z, rng.random() < sigmoid(z))
    assert not cal.active
    assert cal.apply(-3.0) == sigmoid(-3.0)


def test_reliability_bins_are_equal_count_and_ordered() -> None:
    preds = [i / 1000 for i in range(1000)]
    labels = [i % 10 == 0 for i in range(1000)]
    bins = reliability_bins(preds, labels, bins=10)
    assert [b.count for b in bins] == [100] * 10
    assert all(a.mean_predicted < b.mean_predicted for a, b in zip(bins, bins[1:], strict=False))
    assert math.isclose(sum(b.observed_rate * b.count for b in bins), 100)


def test_ece_is_zero_for_matching_rates_and_positive_otherwise() -> None:
    labels = [i < 10 for i in range(100)]
    assert expected_calibration_error([0.1] * 100, labels, bins=1) < 1e-12
    assert math.isclose(expected_calibration_error([0.3] * 100, labels, bins=1), 0.2)


def test_downsample_correction_undoes_sampling() -> None:
    # true p = 1%; keeping 10% of negatives makes the odds 10x: p' = 0.01 / (0.01 + 0.099)
    p_sampled = 0.01 / (0.01 + 0.99 * 0.1)
    assert math.isclose(downsample_correction(p_sampled, 0.1), 0.01)
    assert math.isclose(sigmoid(logit(p_sampled) + math.log(0.1)), 0.01)
