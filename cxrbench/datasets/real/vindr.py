"""VinDr-CXR as released (Nguyen et al. 2022), Kaggle or PhysioNet.

Kaggle layout under ``--root`` (the labelled 15,000-image training set)::

    train.csv            image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
    train/<image_id>.dicom

Three radiologists read each image; one row per (reader, finding box), ``No finding`` when
a reader marked nothing. Image-level label: a class is positive when any reader marked it
(``--label-rule any``, the default) or when most of the image's readers did
(``--label-rule majority``). ``No finding`` is not a class: 14 classes remain. These images
are split 70/15/15 by image (VinDr has no patient ids), stratified and seeded.

PhysioNet layout: ``annotations/annotations_train.csv`` (the same columns as train.csv),
``annotations/image_labels_test.csv`` (one row per image, a 0/1 column per class: the
consensus of five readers), ``train/`` and ``test/``. Then the test split is the released
test set and the training images are split 85/15 into train and val.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.datasets.real.common import Catalog, PrepareError, attach_files, index_files, read_table

LABELS = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
          "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
          "Pulmonary fibrosis"]
NO_FINDING = "No finding"
# PhysioNet's annotations box 22 local labels; the 8 beyond Kaggle's 14 are not classes here:
# their rows are dropped, their images kept
OTHER_LOCAL_LABELS = ["Clavicle fracture", "Edema", "Emphysema", "Enlarged PA", "Lung cavity", "Lung cyst",
                      "Mediastinal shift", "Rib fracture"]
COLUMNS = ["image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"]


def image_labels(table: pd.DataFrame, rule: str) -> pd.DataFrame:
    """One row per image, a 0/1 column per class, from per-reader rows."""
    readers = table.groupby("image_id")["rad_id"].nunique()
    marked = table[table["class_name"] != NO_FINDING].groupby(["image_id", "class_name"])["rad_id"].nunique()
    labels = pd.DataFrame(0, index=readers.index, columns=LABELS)
    for (image_id, class_name), count in marked.items():
        if rule == "any" or count * 2 > readers[image_id]:
            labels.loc[image_id, class_name] = 1
    return labels.rename_axis("image_id").reset_index()


def catalog(root: Path, options: dict) -> Catalog:
    rule = options.get("label_rule", "any")
    physionet = (root / "annotations" / "image_labels_test.csv").is_file()
    train_csv = root / "annotations" / "annotations_train.csv" if physionet else root / "train.csv"
    if not train_csv.is_file():
        raise PrepareError(f"{root}: no {train_csv.relative_to(root)} (VinDr-CXR's label file)")
    table = read_table(train_csv, COLUMNS, dtype={"image_id": str, "rad_id": str})
    table["class_name"] = table["class_name"].str.strip()
    table = table[~table["class_name"].isin(OTHER_LOCAL_LABELS)]
    known = table["class_name"].isin(LABELS + [NO_FINDING])
    result = Catalog(name="vindr", task="multilabel", label_columns=list(LABELS), rows=pd.DataFrame(),
                     split_fractions={"train": 0.85, "val": 0.15} if physionet else {"train": 0.7, "val": 0.15, "test": 0.15},
                     split_rule=("test: PhysioNet consensus test set; train/val 85/15 of the training images, stratified"
                                 if physionet else "70/15/15 by image, stratified, seeded"),
                     source_files=[train_csv], label_rule=rule)
    for image_id, class_name in table.loc[~known, ["image_id", "class_name"]].itertuples(index=False):
        result.problem(f"{train_csv.name}:{image_id}", f"unknown class_name {class_name!r}")
    bad = set(table.loc[~known, "image_id"])
    table = table[~table["image_id"].isin(bad)]
    rows = image_labels(table, rule)
    rows.insert(1, "patient_id", "")
    rows["split"] = ""
    folders = [root / "train"]
    if physionet:
        test_csv = root / "annotations" / "image_labels_test.csv"
        test = read_table(test_csv, ["image_id"] + LABELS, dtype={"image_id": str})
        test_rows = test[["image_id"] + LABELS].copy()
        test_rows[LABELS] = (test_rows[LABELS].astype(float) > 0).astype(int)
        test_rows.insert(1, "patient_id", "")
        test_rows["split"] = "test"
        rows = pd.concat([rows, test_rows], ignore_index=True)
        folders.append(root / "test")
        result.source_files.append(test_csv)
    result.rows = rows
    attach_files(result, index_files(folders, (".dicom", ".dcm")), "train")

    boxes = table.dropna(subset=["x_min", "y_min", "x_max", "y_max"])
    boxes = boxes[boxes["class_name"] != NO_FINDING]
    result.boxes = pd.DataFrame({
        "image_id": boxes["image_id"], "finding": boxes["class_name"], "reader": boxes["rad_id"],
        "x": boxes["x_min"], "y": boxes["y_min"], "w": boxes["x_max"] - boxes["x_min"], "h": boxes["y_max"] - boxes["y_min"],
    })
    return result
