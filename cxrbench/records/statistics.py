"""Uncertainty of a cell's score and paired comparisons, from the stored test predictions.

Every cell stores its test predictions, so these numbers are recomputed without retraining:

* a 95 % percentile bootstrap interval for the cell's headline score (mean AUROC over the
  defined classes for classification, mean per-image Dice for segmentation), test images
  resampled with replacement;
* a paired bootstrap test of a cell against the baseline row's cell on the same test images
  (same dataset, protocol, label fraction and seed): both scores are computed on the *same*
  resample, and the two-sided p-value is twice the smaller tail of the difference around 0.

Written here rather than with ``scipy.stats.bootstrap`` because the paired test needs both
cells scored on identical resamples and a p-value, which scipy's interval routine does not
give; AUROC itself is computed for all resamples at once by re-weighting one sorted order
(Mann-Whitney U), which is what makes a thousand resamples of a 25,000-image NIH test split
affordable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

# A statistic maps resampled test positions (R, N) to one score per resample (R,).
Statistic = Callable[[np.ndarray], np.ndarray]


def weighted_auroc(targets: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC of one class under each row of image multiplicities ``counts`` (R, N); NaN if one class.

    A bootstrap resample is the original images, each counted as often as it was drawn, so
    its AUROC (Mann-Whitney U, ties counted half, as ``roc_auc_score``) needs no re-sorting:
    the images are sorted by score once, and each resample only re-weights them through
    cumulative sums. O(R N) instead of O(R N log N).
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores, positive = scores[order], targets[order] > 0.5
    weights = counts[:, order].astype(np.float64)
    negative_cumulative = np.cumsum(weights * ~positive, axis=1)
    # tie groups: first and last position of each distinct score
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    group = np.cumsum(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]) - 1
    ends = np.r_[starts[1:], len(sorted_scores)] - 1
    before = np.where(starts[group] > 0, negative_cumulative[:, np.maximum(starts[group] - 1, 0)], 0.0)
    within = negative_cumulative[:, ends[group]] - before
    positive_weights = weights * positive
    total_positive, total_negative = positive_weights.sum(axis=1), (weights * ~positive).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (positive_weights * (before + 0.5 * within)).sum(axis=1) / (total_positive * total_negative)
    return np.where((total_positive > 0) & (total_negative > 0), auroc, np.nan)


def resample_counts(positions: np.ndarray, count: int) -> np.ndarray:
    """(R, N) resampled positions -> (R, count) multiplicities of each image."""
    counts = np.zeros((len(positions), count), dtype=np.int32)
    np.add.at(counts, (np.arange(len(positions))[:, None], positions), 1)
    return counts


def mean_auroc_statistic(targets: np.ndarray, scores: np.ndarray) -> Statistic:
    """Mean AUROC over the classes defined in each resample (the rule of ``auroc_per_class``)."""
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)

    def statistic(positions: np.ndarray) -> np.ndarray:
        counts = resample_counts(positions, len(targets))
        per_class = np.stack([weighted_auroc(targets[:, c], scores[:, c], counts) for c in range(targets.shape[1])], axis=1)
        with warnings.catch_warnings():  # a resample with no defined class gives NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(per_class, axis=1)

    return statistic


def mean_statistic(values: np.ndarray) -> Statistic:
    """Mean of a per-image value (e.g. Dice) over each resample."""
    values = np.asarray(values, dtype=np.float64)
    return lambda positions: values[positions].mean(axis=1)


def statistic_from_predictions(predictions) -> tuple[str, Statistic]:
    """(name, statistic) of a cell's headline score from its stored predictions (npz mapping)."""
    if "dice" in predictions:
        return "dice_per_image", mean_statistic(predictions["dice"])
    return "mean_auroc", mean_auroc_statistic(predictions["targets"], predictions["scores"])


def _resamples(count: int, resamples: int, seed: int, chunk: int = 100):
    """Resampled position matrices, in chunks so that memory stays bounded for large splits."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        rows = min(chunk, resamples - done)
        yield rng.integers(0, count, size=(rows, count))
        done += rows


@dataclass
class Interval:
    low: float | None
    high: float | None
    resamples: int  # resamples where the statistic was defined

    def as_dict(self, level: float) -> dict:
        return {"low": self.low, "high": self.high, "level": level, "resamples_defined": self.resamples}


def bootstrap_interval(statistic: Statistic, count: int, *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over ``count`` test images."""
    values = np.concatenate([statistic(positions) for positions in _resamples(count, resamples, seed)])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Interval(None, None, 0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high), int(len(values)))


@dataclass
class PairedTest:
    difference: float  # statistic(a) - statistic(b) on the full test split
    low: float | None
    high: float | None
    p_value: float | None
    resamples: int


def paired_bootstrap_test(statistic_a: Statistic, statistic_b: Statistic, count: int, *, resamples: int = 1000,
                          seed: int = 0, level: float = 0.95) -> PairedTest:
    """Paired bootstrap of a - b on the same resamples; two-sided p-value for 'no difference'."""
    everything = np.arange(count)[None, :]
    observed = float(statistic_a(everything)[0] - statistic_b(everything)[0])
    differences = np.concatenate([statistic_a(p) - statistic_b(p) for p in _resamples(count, resamples, seed)])
    differences = differences[np.isfinite(differences)]
    if len(differences) == 0:
        return PairedTest(observed, None, None, None, 0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    # share of resamples on each side of zero (ties counted half), doubled for two sides;
    # +1 in numerator and denominator so that a p-value is never reported as exactly 0
    below = (differences < 0).sum() + 0.5 * (differences == 0).sum()
    above = len(differences) - below
    p_value = min(1.0, 2 * (min(below, above) + 1) / (len(differences) + 1))
    return PairedTest(observed, float(low), float(high), float(p_value), int(len(differences)))



# --- exact-resolution paired tests: DeLong for AUROC, paired t for per-image scores


def _delong_components(targets: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """One class's AUROC and DeLong's structural components (Sun & Xu 2014, midranks).

    Returns (auroc, positive positions, V10 per positive, V01 per negative): V10 of a positive
    is the share of negatives it outranks (ties half), V01 of a negative the share of positives
    that outrank it.
    """
    from scipy.stats import rankdata

    positive = targets > 0.5
    m, n = int(positive.sum()), int((~positive).sum())
    ranks_all = rankdata(scores)
    ranks_pos, ranks_neg = rankdata(scores[positive]), rankdata(scores[~positive])
    v10 = (ranks_all[positive] - ranks_pos) / n
    v01 = 1.0 - (ranks_all[~positive] - ranks_neg) / m
    return float(v10.mean()), positive, v10, v01


@dataclass
class ExactTest:
    difference: float  # statistic(a) - statistic(b)
    standard_error: float
    p_value: float
    test: str  # "delong" or "paired-t"


def delong_mean_auroc_test(targets: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> ExactTest:
    """Paired DeLong test of the difference of two models' mean AUROC over classes, same images.

    DeLong et al. (1988) give the covariance of correlated AUROCs from their structural
    components. For a mean over classes (each with its own positives and negatives) the same
    components give each image's influence on the mean difference,
        psi_i = 1/K sum_c [pos_ic (D10_ic - d_c) / m_c + neg_ic (D01_ic - d_c) / n_c],
    with D = V(a) - V(b) and d_c the class's AUROC difference; the variance is
    sum_i psi_i^2 scaled as DeLong's (m_c / (m_c - 1) per class part), which for one class is
    exactly DeLong's S10/m + S01/n. A class without positives or negatives is left out, as
    ``auroc_per_class`` does. Two-sided p-value from the normal distribution: exact resolution,
    unlike a bootstrap p-value, which cannot fall below 1 / (resamples + 1).
    """
    from scipy.stats import norm

    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    scores_a = np.asarray(scores_a, dtype=np.float64).reshape(len(scores_a), -1)
    scores_b = np.asarray(scores_b, dtype=np.float64).reshape(len(scores_b), -1)
    influence = np.zeros(len(targets))
    differences = []
    for c in range(targets.shape[1]):
        positive = targets[:, c] > 0.5
        m, n = int(positive.sum()), int((~positive).sum())
        if m < 2 or n < 2:
            continue
        auc_a, _, v10_a, v01_a = _delong_components(targets[:, c], scores_a[:, c])
        auc_b, _, v10_b, v01_b = _delong_components(targets[:, c], scores_b[:, c])
        difference = auc_a - auc_b
        differences.append(difference)
        # DeLong's unbiased sample variances: the (m - 1) and (n - 1) of S10 and S01
        influence[positive] += (v10_a - v10_b - difference) / np.sqrt(m * (m - 1))
        influence[~positive] += (v01_a - v01_b - difference) / np.sqrt(n * (n - 1))
    if not differences:
        return ExactTest(float("nan"), float("nan"), float("nan"), "delong")
    classes = len(differences)
    influence /= classes
    # per-class parts are summed image by image, so classes sharing images covary as they should
    variance = float((influence ** 2).sum())
    difference = float(np.mean(differences))
    standard_error = np.sqrt(variance)
    if standard_error == 0:
        p_value = 1.0 if difference == 0 else 0.0
    else:
        p_value = float(2 * norm.sf(abs(difference) / standard_error))
    return ExactTest(difference, float(standard_error), p_value, "delong")


def paired_t_test(values_a: np.ndarray, values_b: np.ndarray) -> ExactTest:
    """Paired t-test of the mean of a per-image score (e.g. Dice) between two models, same images."""
    from scipy.stats import ttest_rel

    values_a, values_b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    difference = float(np.mean(values_a - values_b))
    if len(values_a) < 2 or not np.isfinite(values_a - values_b).all():
        return ExactTest(difference, float("nan"), float("nan"), "paired-t")  # nothing to test: never significant
    spread = np.std(values_a - values_b, ddof=1) / np.sqrt(len(values_a))
    if not spread > 0:
        return ExactTest(difference, float(spread), 1.0 if difference == 0 else 0.0, "paired-t")
    return ExactTest(difference, float(spread), float(ttest_rel(values_a, values_b).pvalue), "paired-t")


def exact_paired_test(predictions_a, predictions_b) -> ExactTest:
    """The paired test of two cells' headline scores from their stored predictions (same images)."""
    if "dice" in predictions_a:
        return paired_t_test(predictions_a["dice"], predictions_b["dice"])
    return delong_mean_auroc_test(predictions_a["targets"], predictions_a["scores"], predictions_b["scores"])


def holm_reject(p_values: list[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down rejections, in the given order; NaN never rejected."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p == p)
    reject = [False] * len(p_values)
    count = len(order)
    for rank, (p, index) in enumerate(order):
        if p > alpha / (count - rank):
            break
        reject[index] = True
    return reject
