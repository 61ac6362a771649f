"""Bootstrap intervals and paired tests against their definitions."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrbench.records.statistics import (
    bootstrap_interval,
    mean_auroc_statistic,
    mean_statistic,
    paired_bootstrap_test,
    resample_counts,
    weighted_auroc,
)


def test_resampled_auroc_equals_sklearn_on_the_resampled_images_with_ties():
    rng = np.random.default_rng(0)
    targets = (rng.random(40) < 0.3).astype(float)
    scores = np.round(rng.random(40), 1)  # many ties
    positions = rng.integers(0, 40, size=(6, 40))
    values = weighted_auroc(targets, scores, resample_counts(positions, 40))
    for row, drawn in enumerate(positions):
        assert values[row] == pytest.approx(roc_auc_score(targets[drawn], scores[drawn]))
    only_negatives = np.flatnonzero(targets == 0)[None, :3].repeat(2, axis=0)
    assert np.isnan(weighted_auroc(targets, scores, resample_counts(only_negatives, 40))).all()


def test_mean_auroc_statistic_on_all_images_is_the_mean_over_defined_classes():
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2], [0.1, 0.5]])
    value = mean_auroc_statistic(targets, scores)(np.arange(4)[None, :])
    assert value[0] == pytest.approx(1.0)  # class 1 has no positive: left out of the mean


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    values = np.random.default_rng(1).normal(0.5, 0.1, size=400)
    interval = bootstrap_interval(mean_statistic(values), len(values), resamples=2000, seed=0)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert interval.low < values.mean() < interval.high
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.1)


def test_paired_test_separates_a_real_difference_from_none():
    rng = np.random.default_rng(2)
    targets = (rng.random((300, 1)) < 0.4).astype(float)
    good = targets + rng.normal(0, 0.5, size=targets.shape)
    noise = rng.normal(0, 0.5, size=targets.shape)
    better = paired_bootstrap_test(mean_auroc_statistic(targets, good), mean_auroc_statistic(targets, noise), 300, resamples=500)
    assert better.difference > 0.2 and better.p_value < 0.01 and better.low > 0
    same = paired_bootstrap_test(mean_auroc_statistic(targets, good), mean_auroc_statistic(targets, good), 300, resamples=500)
    assert same.difference == 0 and same.p_value == 1.0
