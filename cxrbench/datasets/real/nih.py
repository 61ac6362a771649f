"""NIH ChestX-ray14 as released (Wang et al. 2017; the 2020 re-release of its label file).

Layout under ``--root``::

    Data_Entry_2017_v2020.csv   (or the older Data_Entry_2017.csv, trailing comma and all)
    train_val_list.txt          official patient-wise split lists
    test_list.txt
    BBox_List_2017.csv          optional: ~1,000 boxes, kept for heatmap scoring
    images/*.png                either one folder ...
    images_001/images/*.png ... images_012/images/*.png   ... or the twelve archives' folders

``Finding Labels`` is ``|``-separated with ``No Finding`` alone; tokens are matched
exactly (never as substrings). The test split is ``test_list.txt``; validation is 10 % of
the ``train_val_list.txt`` patients, drawn stratified and seeded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.datasets.real.common import Catalog, PrepareError, attach_files, first_existing, index_files, read_table

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
          "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
NO_FINDING = "No Finding"
BOX_SPELLINGS = {"Infiltrate": "Infiltration"}  # BBox_List_2017.csv's spelling -> the label's


def read_labels(csv_path: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """(image_id, patient_id, one 0/1 column per label) and (image, reason) for unknown tokens."""
    # index_col=False: the 2017 file ends every row with a comma
    table = read_table(csv_path, ["Image Index", "Finding Labels", "Patient ID"], index_col=False, dtype=str)
    rows = pd.DataFrame({"image_id": table["Image Index"].str.strip(), "patient_id": table["Patient ID"].str.strip()})
    tokens = table["Finding Labels"].fillna("").str.split("|").map(lambda items: {item.strip() for item in items})
    for label in LABELS:
        rows[label] = tokens.map(lambda found, label=label: int(label in found))
    unknown = [(image_id, sorted(found - set(LABELS) - {NO_FINDING}))
               for image_id, found in zip(rows["image_id"], tokens) if found - set(LABELS) - {NO_FINDING}]
    return rows, [(image_id, f"unknown finding label(s) {names}") for image_id, names in unknown]


def catalog(root: Path, options: dict) -> Catalog:
    csv_path = first_existing(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "NIH label file")
    rows, unknown = read_labels(csv_path)
    result = Catalog(name="nih", task="multilabel", label_columns=list(LABELS), rows=rows,
                     split_fractions={"train": 0.9, "val": 0.1},
                     split_rule="test: official test_list.txt; val: 10% of the train_val_list.txt patients, stratified",
                     source_files=[csv_path])
    for image_id, reason in unknown:
        result.problem(f"{csv_path.name}:{image_id}", reason)
    bad = {image_id for image_id, _ in unknown}
    result.rows = rows[~rows["image_id"].isin(bad)].reset_index(drop=True)

    if options.get("splits") != "benchx":
        lists = {}
        for name in ("train_val_list.txt", "test_list.txt"):
            path = root / name
            if not path.is_file():
                raise PrepareError(f"{root}: no {name} (the official split lists; or use --splits benchx)")
            lists[name] = set(path.read_text().split())
            result.source_files.append(path)
        in_test = result.rows["image_id"].isin(lists["test_list.txt"])
        in_train_val = result.rows["image_id"].isin(lists["train_val_list.txt"])
        for image_id in result.rows.loc[~in_test & ~in_train_val, "image_id"]:
            result.problem(f"{csv_path.name}:{image_id}", "in neither train_val_list.txt nor test_list.txt")
        result.rows["split"] = in_test.map({True: "test", False: ""})
        result.rows = result.rows[in_test | in_train_val].reset_index(drop=True)

    folders = [root / "images"] + sorted(root.glob("images_*/images"))
    files = index_files(folders, (".png",))
    if not files:
        raise PrepareError(f"{root}: no PNG images in images/ or images_*/images/")
    # NIH image ids keep their .png; the file index is by stem
    attach_files(result, files, "images")

    box_path = root / "BBox_List_2017.csv"
    if box_path.is_file():
        boxes = read_table(box_path, ["Image Index", "Finding Label"], dtype={"Image Index": str})
        # header "Bbox [x,y,w,h]" spreads over four columns: take them by position
        coordinates = boxes.iloc[:, 2:6].apply(pd.to_numeric, errors="coerce")
        result.boxes = pd.DataFrame({
            "image_id": boxes["Image Index"].str.strip(),
            "finding": boxes["Finding Label"].str.strip().replace(BOX_SPELLINGS),
            "x": coordinates.iloc[:, 0], "y": coordinates.iloc[:, 1], "w": coordinates.iloc[:, 2], "h": coordinates.iloc[:, 3],
        }).dropna()
        result.source_files.append(box_path)
    return result
