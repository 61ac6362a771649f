"""SIIM-ACR Pneumothorax Segmentation as released (2019), DICOM + RLE or the PNG re-release.

DICOM layout under ``--root``::

    train-rle.csv           header "ImageId, EncodedPixels": relative RLE (stage 1)
      or stage_2_train.csv  header "ImageId,EncodedPixels":  standard RLE (stage 2)
    dicom-images-train/<study>/<series>/<ImageId>.dcm   (the tree is walked; dicom-images-test/
                                                         too, whose images stage_2_train.csv labels)

``-1`` means an empty mask; an image with several pneumothoraces has several rows, whose
masks are merged (union). RLE runs count pixels down the columns of the 1024 x 1024 mask.
The two RLE forms are told apart by the file's header line, as released: the stage-1 file
writes a space after the comma and encodes each start relative to the end of the previous
run; the stage-2 file has no space and encodes absolute 1-based starts. The patient is the
DICOM's PatientID.

PNG re-release layout::

    png_images/<new_filename>   png_masks/<new_filename>   (mask 0/255)
    stage_1_train_images.csv  stage_1_test_images.csv     (column new_filename)

Both CSVs' images are pooled. Either way the images are split 70/15/15 by patient,
stratified by ``has_mask``, seeded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.datasets.real.common import Catalog, PrepareError, attach_files, index_files, parse_rle, read_table

RELATIVE_HEADER = "ImageId, EncodedPixels"
STANDARD_HEADER = "ImageId,EncodedPixels"


def rle_form(path: Path) -> bool:
    """True for the relative form, from the header line; an unknown header is an error."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = handle.readline().strip()
    if header == RELATIVE_HEADER:
        return True
    if header == STANDARD_HEADER:
        return False
    raise PrepareError(f"{path}: header {header!r} is neither {RELATIVE_HEADER!r} (relative RLE) nor {STANDARD_HEADER!r} (standard RLE)")


def _dicom_catalog(root: Path, result: Catalog) -> None:
    import pydicom

    rle_path = next((root / name for name in ("train-rle.csv", "stage_2_train.csv") if (root / name).is_file()), None)
    if rle_path is None:
        raise PrepareError(f"{root}: no train-rle.csv or stage_2_train.csv, and no png_images/ (SIIM-ACR's layouts)")
    relative = rle_form(rle_path)
    table = read_table(rle_path, ["ImageId", "EncodedPixels"], dtype=str, skipinitialspace=True)
    table["ImageId"] = table["ImageId"].str.strip()
    table["EncodedPixels"] = table["EncodedPixels"].fillna("").str.strip()
    unreadable = set()
    for image_id, text in table.itertuples(index=False):
        try:
            parse_rle(text)
        except ValueError as error:
            result.problem(f"{rle_path.name}:{image_id}", f"unreadable RLE ({error})")
            unreadable.add(image_id)
    table = table[~table["ImageId"].isin(unreadable)]
    grouped = table.groupby("ImageId", sort=False)["EncodedPixels"].agg(tuple)
    result.rows = pd.DataFrame({"image_id": grouped.index, "patient_id": "",
                                "has_mask": [int(any(text not in ("-1", "") for text in rles)) for rles in grouped],
                                "mask": [("rle", rles, relative) for rles in grouped]})
    result.source_files.append(rle_path)
    # the stage-2 label file also covers the stage-1 test images, released in dicom-images-test/
    folders = [root / "dicom-images-train", root / "dicom-images-test"]
    attach_files(result, index_files(folders, (".dcm",), recursive=True), "dicom-images-train")
    patients = []
    for path in result.rows["path"]:
        try:
            patients.append(str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", "")))
        except Exception:  # unreadable header: decoding will report the file; no patient id meanwhile
            patients.append("")
    result.rows["patient_id"] = patients
    result.split_rule += f"; {rle_path.name}: {'relative' if relative else 'standard'} RLE (from its header)"


def _png_catalog(root: Path, result: Catalog) -> None:
    frames = []
    for name in ("stage_1_train_images.csv", "stage_1_test_images.csv"):
        path = root / name
        if path.is_file():
            frames.append(read_table(path, ["new_filename"], dtype={"new_filename": str}))
            result.source_files.append(path)
    if not frames:
        raise PrepareError(f"{root}: png_images/ without stage_1_train_images.csv or stage_1_test_images.csv")
    table = pd.concat(frames, ignore_index=True)
    names = table["new_filename"].str.strip()
    masks = index_files([root / "png_masks"], (".png",))
    result.rows = pd.DataFrame({"image_id": names.map(lambda name: Path(name).stem), "patient_id": ""})
    result.rows["mask"] = [("png", str(masks[stem])) if stem in masks else None for stem in result.rows["image_id"]]
    for image_id in result.rows.loc[result.rows["mask"].isna(), "image_id"]:
        result.problem(f"png_masks/{image_id}.png", "image listed but its mask is not on disk")
    result.rows = result.rows[result.rows["mask"].notna()].reset_index(drop=True)
    result.rows["has_mask"] = 0  # set from the decoded mask
    attach_files(result, index_files([root / "png_images"], (".png",)), "png_images")


def catalog(root: Path, options: dict) -> Catalog:
    result = Catalog(name="siim", task="segmentation", label_columns=["has_mask"], rows=pd.DataFrame(),
                     split_fractions={"train": 0.7, "val": 0.15, "test": 0.15},
                     split_rule="70/15/15 by patient, stratified by has_mask, seeded")
    (_png_catalog if (root / "png_images").is_dir() else _dicom_catalog)(root, result)
    return result
