"""The prepared-directory format every dataset is read from.

A prepared directory is what ``bench prepare`` writes for a real dataset and what the
phantom generator writes for the built-in data, so the protocols read one format only:

* ``index.csv``     one row per image, in array order: ``image_id``, ``patient_id``,
                    ``split`` (train/val/test) and one 0/1 column per label;
* ``images.npy``    uint8 array N x H x W (grayscale), read with ``mmap_mode="r"``;
* ``masks.npy``     uint8 0/1 N x H x W, for segmentation sets only;
* ``boxes.csv``     ``image_id, finding, x, y, w, h`` in pixels (optional);
* ``splits/``       ``train_{fraction}pct_seed{seed}.txt``: the image ids of a label-fraction
                    subset (optional; a subset without a file is drawn by the same rule);
* ``manifest.json`` name, task, label columns, counts, options and the cxrbench version.

The directory is built under a temporary name and renamed into place at the end, so an
interrupted build never leaves a directory that passes as complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.datasets.splits import nested_fraction_subsets

SPLITS = ("train", "val", "test")
FRACTION_LADDER = (100.0, 10.0, 1.0)  # the paper's label fractions, drawn nested in this order


class DatasetError(ValueError):
    """A prepared directory is missing, incomplete or inconsistent."""


@dataclass
class PreparedDataset:
    root: Path
    name: str
    task: str  # multilabel | binary | segmentation
    label_columns: list[str]
    index: pd.DataFrame
    images: np.ndarray
    masks: np.ndarray | None
    boxes: pd.DataFrame | None = None  # image_id, finding, x, y, w, h in pixels of ``images``
    finding_labels: dict[str, str] = field(default_factory=dict)  # a box's finding -> its label column
    subset_rule: str = "nested, by patient, stratified"
    _ladders: dict = field(default_factory=dict, repr=False)  # seed -> the 100/10/1 % subsets

    @classmethod
    def load(cls, root: str | Path) -> "PreparedDataset":
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise DatasetError(f"{root}: no manifest.json; expected a prepared dataset directory")
        manifest = json.loads(manifest_path.read_text())
        index = pd.read_csv(root / "index.csv", dtype={"image_id": str, "patient_id": str})
        images = np.load(root / "images.npy", mmap_mode="r")
        if len(index) != images.shape[0]:
            raise DatasetError(f"{root}: index.csv has {len(index)} rows but images.npy has {images.shape[0]} images")
        masks = np.load(root / "masks.npy", mmap_mode="r") if (root / "masks.npy").exists() else None
        boxes = pd.read_csv(root / "boxes.csv", dtype={"image_id": str}) if (root / "boxes.csv").exists() else None
        labels = list(manifest["label_columns"])
        return cls(
            root=root,
            name=manifest["name"],
            task=manifest["task"],
            label_columns=list(manifest["label_columns"]),
            index=index,
            images=images,
            masks=masks,
            boxes=boxes,
            finding_labels=manifest.get("finding_labels") or {label: label for label in labels},
            subset_rule=manifest.get("subset_rule", "nested, by patient, stratified"),
        )

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def split_positions(self, split: str) -> np.ndarray:
        """Array positions of one split, in array order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.index["split"].to_numpy() == split)

    def targets(self, positions: np.ndarray) -> np.ndarray:
        """Float32 label matrix (len(positions) x num_labels)."""
        return np.array(self.index.iloc[positions][self.label_columns], dtype=np.float32)  # writable copy

    def subset_file(self, label_fraction: float, seed: int) -> Path:
        return self.root / "splits" / f"train_{label_fraction:g}pct_seed{seed}.txt"

    def label_fraction_positions(self, label_fraction: float, seed: int) -> np.ndarray:
        """Training positions of a label-fraction subset (percent): whole patients, stratified, nested.

        A subset listed in ``splits/`` (written by ``bench prepare``, or published lists) is
        read from there. Otherwise it is drawn by ``nested_fraction_subsets`` along the fixed
        ladder 100 > 10 > 1 %, so 1 % is inside 10 % inside 100 % whichever fractions a run
        asks for; another fraction is drawn from the smallest ladder subset above it.
        """
        if not 0 < label_fraction <= 100:
            raise ValueError(f"label fraction {label_fraction} is outside (0, 100]")
        listed = self.subset_file(label_fraction, seed)
        if listed.is_file():
            return self._positions_of(listed.read_text().split(), listed)
        train = self.split_positions("train")
        if label_fraction == 100:
            return train
        if self.subset_rule == "benchx":
            raise DatasetError(f"{self.root}: prepared with BenchX's lists, which hold one draw of the 1% and 10% "
                               f"subsets (seed 0); no {listed.name} (run with --seeds 0 and --fractions 1,10,100)")
        ladder = self._ladder(seed)
        if label_fraction in ladder:
            return train[ladder[label_fraction]]
        parent_fraction = min(f for f in ladder if f > label_fraction)
        parent = ladder[parent_fraction]
        relative = label_fraction / parent_fraction * 100
        picked = nested_fraction_subsets(self.index["patient_id"].iloc[train[parent]], self.targets(train[parent]),
                                         [relative], seed)[relative]
        return train[parent[picked]]

    def _ladder(self, seed: int) -> dict[float, np.ndarray]:
        if seed not in self._ladders:
            train = self.split_positions("train")
            self._ladders[seed] = nested_fraction_subsets(self.index["patient_id"].iloc[train], self.targets(train),
                                                          list(FRACTION_LADDER), seed)
        return self._ladders[seed]

    def _positions_of(self, image_ids: list[str], source: Path) -> np.ndarray:
        position = pd.Series(np.arange(len(self.index)), index=self.index["image_id"])
        unknown = [image_id for image_id in image_ids if image_id not in position.index]
        if unknown:
            raise DatasetError(f"{source}: {len(unknown)} image id(s) not in index.csv, e.g. {unknown[0]!r}")
        positions = np.sort(position.loc[image_ids].to_numpy())
        not_train = self.index["split"].to_numpy()[positions] != "train"
        if not_train.any():
            raise DatasetError(f"{source}: lists image(s) outside the training split, e.g. {self.index['image_id'].iloc[positions[not_train][0]]!r}")
        return positions


def patient_disjoint_splits(patient_ids: list[str], seed: int, fractions=(0.7, 0.1, 0.2)) -> dict[str, str]:
    """Assign every patient to train/val/test; all images of a patient share a split."""
    unique = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = round(fractions[0] * len(unique))
    n_val = round(fractions[1] * len(unique))
    assignment = {}
    for rank, position in enumerate(order):
        split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        assignment[unique[position]] = split
    return assignment


def write_prepared(
    destination: Path,
    *,
    manifest: dict,
    index: pd.DataFrame,
    images: np.ndarray,
    masks: np.ndarray | None = None,
    boxes: pd.DataFrame | None = None,
) -> Path:
    """Write a prepared directory atomically: build in a sibling temp dir, then rename."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        np.save(staging / "images.npy", images)
        if masks is not None:
            np.save(staging / "masks.npy", masks)
        if boxes is not None:
            boxes.to_csv(staging / "boxes.csv", index=False)
        index.to_csv(staging / "index.csv", index=False)
        counts = {split: int((index["split"] == split).sum()) for split in SPLITS}
        manifest = {**manifest, "num_images": int(len(index)), "counts_per_split": counts}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if destination.exists():
            # Another process finished the same build first; builds are deterministic,
            # so keep theirs rather than swapping a directory someone may be reading.
            shutil.rmtree(staging)
        else:
            staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
