"""Patient-disjoint splits and nested label-fraction subsets, seeded and stratified.

Both work on patients, not images: a patient's images always share a split and a subset
(where a dataset has no patient ids, every image is its own patient). Stratification is
iterative multi-label stratification (Sechidis et al. 2011, as implemented by the
``iterative-stratification`` package) over the patient's label vector (a label is
positive for a patient when any of their images has it), so that a 1 % subset of NIH still
holds the rare classes in proportion where it can.

Subsets are nested: the largest fraction is drawn from the training split, each smaller one
from the subset before it, so 1 % of the labels is inside 10 %, which is inside 100 %.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit


def _patients(patient_ids: pd.Series, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique patients, their any-image label matrix, image -> patient position)."""
    ids = patient_ids.fillna("").astype(str).to_numpy()
    ids = np.where(ids == "", np.array([f"__image{i}" for i in range(len(ids))]), ids)
    unique, inverse = np.unique(ids, return_inverse=True)
    patient_labels = np.zeros((len(unique), labels.shape[1]), dtype=np.int64)
    np.maximum.at(patient_labels, inverse, labels.astype(np.int64))
    return unique, patient_labels, inverse


def _stratified_pick(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Positions of ``count`` rows of ``labels`` drawn by iterative stratification."""
    total = len(labels)
    if count >= total:
        return np.arange(total)
    if count <= 0:
        return np.array([], dtype=np.int64)
    if labels.shape[1] == 0 or labels.sum() == 0:
        return np.sort(np.random.default_rng(seed).permutation(total)[:count])
    if labels.shape[1] == 1:  # binary: stratify positives and negatives (the splitter wants >= 2 columns)
        labels = np.hstack([labels, 1 - labels])
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, train_size=count, test_size=total - count, random_state=seed)
    picked, _ = next(splitter.split(np.zeros((total, 1)), labels))
    if len(picked) != count:
        # on a handful of rows the iterative algorithm can miss the requested size (it even
        # returns nothing for 1 of 3): top up or trim at random to exactly ``count``
        rng = np.random.default_rng(seed)
        rest = rng.permutation(np.setdiff1d(np.arange(total), picked))
        picked = np.concatenate([picked, rest[: count - len(picked)]]) if len(picked) < count else rng.permutation(picked)[:count]
    return np.sort(picked)


def patient_split(patient_ids: pd.Series, labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Split name per image (train/val/test as given in ``fractions``), patient-disjoint, stratified."""
    unique, patient_labels, inverse = _patients(patient_ids, labels)
    remaining = np.arange(len(unique))
    assignment = np.empty(len(unique), dtype=object)
    names = list(fractions)
    left = 1.0
    for offset, name in enumerate(names[:-1]):
        share = fractions[name] / left
        count = int(round(share * len(remaining)))
        picked = remaining[_stratified_pick(patient_labels[remaining], count, seed + offset)]
        assignment[picked] = name
        remaining = np.setdiff1d(remaining, picked)
        left -= fractions[name]
    assignment[remaining] = names[-1]
    return assignment[inverse]


def nested_fraction_subsets(patient_ids: pd.Series, labels: np.ndarray, fractions: list[float], seed: int) -> dict[float, np.ndarray]:
    """Row positions (into the given training rows) of each label fraction (percent), nested.

    A fraction's subset holds ceil(fraction % of the training *patients*) patients, at
    least one, and all of their images.
    """
    unique, patient_labels, inverse = _patients(patient_ids, labels)
    subsets: dict[float, np.ndarray] = {}
    current = np.arange(len(unique))  # patient positions of the subset drawn last
    for step, fraction in enumerate(sorted(set(float(f) for f in fractions), reverse=True)):
        if not 0 < fraction <= 100:
            raise ValueError(f"label fraction {fraction:g} is outside (0, 100]")
        count = max(1, math.ceil(len(unique) * fraction / 100))
        picked = current[_stratified_pick(patient_labels[current], count, seed * 1000 + step)]
        subsets[fraction] = np.flatnonzero(np.isin(inverse, picked))
        current = picked
    return subsets
