"""RSNA Pneumonia Detection Challenge as released (Shih et al. 2019), stage 2.

Layout under ``--root``::

    stage_2_train_labels.csv          patientId,x,y,width,height,Target (one row per box)
    stage_2_train_images/<patientId>.dcm

An image with several opacities has several rows: its binary ``target`` is 1 when any row
says so, and the boxes are kept. The images (one per patient) are split 70/15/15,
stratified by target and seeded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.datasets.real.common import Catalog, first_existing, attach_files, index_files, read_table


def catalog(root: Path, options: dict) -> Catalog:
    csv_path = first_existing(root, ["stage_2_train_labels.csv"], "RSNA label file")
    table = read_table(csv_path, ["patientId", "x", "y", "width", "height", "Target"], dtype={"patientId": str})
    table["patientId"] = table["patientId"].str.strip()
    target = pd.to_numeric(table["Target"], errors="coerce")
    result = Catalog(name="rsna", task="binary", label_columns=["target"], rows=pd.DataFrame(),
                     split_fractions={"train": 0.7, "val": 0.15, "test": 0.15},
                     split_rule="70/15/15 by patient, stratified by target, seeded", source_files=[csv_path],
                     finding_labels={"Lung Opacity": "target"})
    for image_id in table.loc[target.isna() | ~target.isin([0, 1]), "patientId"]:
        result.problem(f"{csv_path.name}:{image_id}", "Target is not 0 or 1")
    table = table.assign(Target=target).dropna(subset=["Target"])
    per_image = table.groupby("patientId", sort=False)["Target"].max().astype(int)
    result.rows = pd.DataFrame({"image_id": per_image.index, "patient_id": per_image.index, "target": per_image.to_numpy()})
    attach_files(result, index_files([root / "stage_2_train_images"], (".dcm",)), "stage_2_train_images")
    boxes = table[table["Target"] == 1].dropna(subset=["x", "y", "width", "height"])
    result.boxes = pd.DataFrame({"image_id": boxes["patientId"], "finding": "Lung Opacity", "x": boxes["x"], "y": boxes["y"],
                                 "w": boxes["width"], "h": boxes["height"]})
    return result
