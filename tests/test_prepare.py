"""bench prepare on the four released layouts, built from the real label files."""

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from cxrbench.benchmark.cli import main
from cxrbench.datasets.decode import read_dicom, read_png
from cxrbench.datasets.prepare import prepare_dataset
from cxrbench.datasets.prepared import DatasetError, PreparedDataset
from cxrbench.datasets.real.common import PrepareError, decode_rle
from cxrbench.datasets.real.nih import LABELS as NIH_LABELS
from cxrbench.datasets.real.nih import read_labels
from cxrbench.datasets.real.vindr import LABELS as VINDR_LABELS
from cxrbench.datasets.real.vindr import image_labels
from cxrbench.datasets.splits import nested_fraction_subsets, patient_split

from raw_layouts import (
    FIXTURES,
    REAL_NIH_PNGS,
    REAL_SIIM_DICOM,
    generated_dicom,
    nih_tree,
    real_csv,
    real_csv_text,
    rsna_tree,
    siim_dicom_tree,
    siim_rle_rows,
    vindr_tree,
    write_png,
)

# The per-label image counts NIH published with ChestX-ray14 (and "No Finding": 60,361)
NIH_PUBLISHED_COUNTS = {"Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894, "Mass": 5782,
                        "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667, "Edema": 2303,
                        "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227}


@pytest.fixture(scope="module")
def full_nih_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("nih-csv") / "Data_Entry_2017_v2020.csv"
    path.write_text(real_csv_text("Data_Entry_2017_v2020.csv.gz"))
    return path


def test_nih_labels_over_the_full_real_csv_match_the_published_counts(full_nih_csv):
    rows, unknown = read_labels(full_nih_csv)
    assert len(rows) == 112120 and unknown == []
    assert rows[NIH_LABELS].sum().to_dict() == NIH_PUBLISHED_COUNTS
    assert int((rows[NIH_LABELS].sum(axis=1) == 0).sum()) == 60361  # No Finding, alone


def test_splits_and_subsets_over_the_full_real_nih_csv_are_patient_disjoint_and_nested(full_nih_csv):
    rows, _ = read_labels(full_nih_csv)
    labels = rows[NIH_LABELS].to_numpy()
    split = patient_split(rows["patient_id"], labels, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    by_patient = pd.DataFrame({"patient": rows["patient_id"], "split": split}).groupby("patient")["split"].nunique()
    assert (by_patient == 1).all()  # no patient in two splits
    shares = pd.Series(split).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.02) and shares["test"] == pytest.approx(0.2, abs=0.02)
    train = np.flatnonzero(split == "train")
    subsets = nested_fraction_subsets(rows["patient_id"].iloc[train], labels[train], [100, 10, 1], seed=0)
    assert set(subsets[1]) <= set(subsets[10]) <= set(subsets[100])
    train_patients = rows["patient_id"].iloc[train].to_numpy()
    for fraction in (1, 10):
        chosen = set(train_patients[subsets[fraction]])
        # whole patients: every image of a chosen patient is in the subset
        assert np.isin(train_patients, list(chosen)).sum() == len(subsets[fraction])
        assert len(chosen) == int(np.ceil(len(set(train_patients)) * fraction / 100))
        # stratified: Hernia (0.2 % of images) is present even in 1 %
        assert labels[train][subsets[fraction]][:, NIH_LABELS.index("Hernia")].sum() > 0


def test_nih_tree_prepares_with_official_lists_both_folder_layouts_boxes_and_problems(tmp_path):
    raw = tmp_path / "raw"
    rows = nih_tree(raw)
    missing = rows["Image Index"].iloc[5]
    (raw / "images_001" / "images" / missing).unlink(missing_ok=True)
    (raw / "images" / missing).unlink(missing_ok=True)
    corrupt = rows["Image Index"].iloc[6]
    for folder in ("images", "images_001/images"):
        if (raw / folder / corrupt).exists():
            (raw / folder / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_png(raw / "images" / "99999999_000.png", seed=1)  # on disk, in no label file
    out = tmp_path / "prepared" / "nih"
    manifest = prepare_dataset("nih", raw, out, size=64, workers=1, seeds=(0,))
    data = PreparedDataset.load(out)
    assert data.images.shape == (len(rows) - 2, 64, 64) and data.images.dtype == np.uint8
    reasons = {(p["file"].split("/")[-1], p["reason"].split(" (")[0]) for p in manifest["skipped"]}
    assert (missing, "listed in the labels but not on disk") in reasons
    assert any(f == corrupt and r.startswith("cannot decode image") for f, r in reasons)
    assert ("99999999_000.png", "on disk but not listed in the labels") in reasons
    # the official test list is the test split; val comes out of train_val by patient
    test_ids = set((raw / "test_list.txt").read_text().split())
    assert set(data.index.loc[data.index["split"] == "test", "image_id"]) == test_ids - {missing, corrupt}
    assert data.index.groupby("patient_id")["split"].nunique().max() == 1
    # labels as parsed from the real rows; the real PNG decoded unchanged apart from the resize
    source = rows.set_index("Image Index")
    for image_id, labels in data.index.set_index("image_id")[NIH_LABELS].iterrows():
        tokens = set(source.loc[image_id, "Finding Labels"].split("|"))
        assert {label for label in NIH_LABELS if labels[label]} == tokens - {"No Finding"}
    real = data.index.index[data.index["image_id"] == REAL_NIH_PNGS[1]][0]
    assert abs(float(data.images[real].mean()) - float(read_png(FIXTURES / REAL_NIH_PNGS[1]).mean())) < 2
    boxes = pd.read_csv(out / "boxes.csv")
    assert "Infiltrate" not in set(boxes["finding"]) and set(boxes["finding"]) <= set(NIH_LABELS)
    assert (out / "splits" / "train_1pct_seed0.txt").is_file()


def test_the_older_nih_label_file_with_trailing_commas_reads_the_same(tmp_path):
    new = real_csv("Data_Entry_2017_v2020.csv.gz", dtype=str).iloc[:200]
    old = new.rename(columns={"Patient Gender": "Patient Sex"})
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(",".join(old.columns) + ",\n" + "".join(",".join(map(str, r)) + ",\n" for r in old.itertuples(index=False)))
    (tmp_path / "v2020.csv").write_text(new.to_csv(index=False))
    old_rows, _ = read_labels(path)
    new_rows, _ = read_labels(tmp_path / "v2020.csv")
    pd.testing.assert_frame_equal(old_rows, new_rows)


def test_vindr_any_and_majority_rules_on_the_real_reader_rows(tmp_path):
    raw = tmp_path / "raw"
    rows = vindr_tree(raw)
    any_rule = image_labels(rows, "any").set_index("image_id")
    majority = image_labels(rows, "majority").set_index("image_id")
    assert (majority <= any_rule).all().all() and (majority.sum().sum() < any_rule.sum().sum())
    image_id = any_rule.index[0]
    marked = rows[(rows["image_id"] == image_id) & (rows["class_name"] != "No finding")].groupby("class_name")["rad_id"].nunique()
    readers = rows.loc[rows["image_id"] == image_id, "rad_id"].nunique()
    for class_name, count in marked.items():
        assert any_rule.loc[image_id, class_name] == 1
        assert majority.loc[image_id, class_name] == int(count * 2 > readers)
    out = tmp_path / "vindr"
    manifest = prepare_dataset("vindr", raw, out, size=32, workers=1, seeds=(0,), label_rule="majority")
    data = PreparedDataset.load(out)
    assert len(data.label_columns) == 14 and "No finding" not in data.label_columns
    assert manifest["label_rule"] == "majority" and sum(manifest["counts_per_split"].values()) == len(any_rule)


def test_rsna_several_rows_make_one_positive_image_with_all_its_boxes(tmp_path):
    raw = tmp_path / "raw"
    rows = rsna_tree(raw)
    out = tmp_path / "rsna"
    prepare_dataset("rsna", raw, out, size=32, workers=1, seeds=(0,))
    data = PreparedDataset.load(out)
    expected = rows.groupby("patientId")["Target"].max()
    assert data.label_columns == ["target"] and len(data.index) == len(expected)
    assert dict(zip(data.index["image_id"], data.index["target"])) == expected.to_dict()
    boxes = pd.read_csv(out / "boxes.csv")
    multi = rows.groupby("patientId").size().idxmax()
    assert (boxes["image_id"] == multi).sum() == (rows["patientId"] == multi).sum() > 1


def test_rle_decoding_is_column_first_and_the_two_forms_agree():
    relative = decode_rle(("1 2 3 1",), 4, 4, relative=True)
    absolute = decode_rle(("2 2 7 1",), 4, 4, relative=False)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1, 0] = expected[2, 0] = expected[2, 1] = 1  # flat positions 1, 2 and 6, down the columns
    assert (relative == expected).all() and (absolute == expected).all()
    union = decode_rle(("1 2", "5 2"), 4, 4, relative=True)
    assert union.sum() == 4  # two rows of one image merged
    with pytest.raises(ValueError, match="outside"):
        decode_rle(("15 3",), 4, 4, relative=True)


def _absolute(rle: str) -> str:
    values = [int(v) for v in rle.split()]
    position, pairs = 0, []
    for start, length in zip(values[0::2], values[1::2]):
        position += start
        pairs += [position + 1, length]
        position += length
    return " ".join(map(str, pairs))


def test_siim_dicom_layout_merges_rle_rows_and_detects_the_rle_form_from_the_header(tmp_path):
    rows = siim_rle_rows()
    siim_dicom_tree(tmp_path / "raw", rows)
    out = tmp_path / "siim"
    prepare_dataset("siim", tmp_path / "raw", out, size=1024, workers=1, seeds=(0,))
    data = PreparedDataset.load(out)
    by_id = data.index.set_index("image_id")
    multi = rows.groupby("ImageId").size().idxmax()
    position = int(np.flatnonzero(data.index["image_id"] == multi)[0])
    pixels = [decode_rle((text,), 1024, 1024, relative=True) for text in rows.loc[rows["ImageId"] == multi, "EncodedPixels"]]
    np.testing.assert_array_equal(data.masks[position], np.maximum.reduce(pixels))
    assert by_id.loc[REAL_SIIM_DICOM.removesuffix(".dcm"), "has_mask"] == 0  # the real DICOM is a negative case
    assert set(by_id["has_mask"]) == {0, 1}
    assert data.index.groupby("patient_id")["split"].nunique().max() == 1  # PatientID from the DICOM headers
    # the standard (stage 2) file: absolute 1-based starts, told apart by its header
    standard = tmp_path / "raw2"
    shutil.copytree(tmp_path / "raw", standard)
    (standard / "train-rle.csv").unlink()
    (standard / "stage_2_train.csv").write_text("ImageId,EncodedPixels\n" + "".join(
        f"{a},{_absolute(b) if b.strip() != '-1' else '-1'}\n" for a, b in zip(rows["ImageId"], rows["EncodedPixels"])))
    prepare_dataset("siim", standard, tmp_path / "siim2", size=1024, workers=1, seeds=(0,))
    np.testing.assert_array_equal(PreparedDataset.load(tmp_path / "siim2").masks, data.masks)


def test_siim_png_rerelease_layout(tmp_path):
    raw = tmp_path / "raw"
    names = [f"{i}_train_{i % 2}_.png" for i in range(12)]
    for i, name in enumerate(names):
        write_png(raw / "png_images" / name, seed=i, size=64)
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[10:20, 10 + i : 30] = 255 * (i % 2)
        (raw / "png_masks").mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(mask).save(raw / "png_masks" / name)
    pd.DataFrame({"new_filename": names[:8], "has_pneumo": [i % 2 for i in range(8)]}).to_csv(raw / "stage_1_train_images.csv", index=False)
    pd.DataFrame({"new_filename": names[8:], "has_pneumo": [i % 2 for i in range(8, 12)]}).to_csv(raw / "stage_1_test_images.csv", index=False)
    prepare_dataset("siim", raw, tmp_path / "siim", size=32, workers=1, seeds=(0,))
    data = PreparedDataset.load(tmp_path / "siim")
    assert len(data.index) == 12 and data.masks.shape == (12, 32, 32)
    assert data.index.set_index("image_id")["has_mask"].to_dict() == {name[:-4]: i % 2 for i, name in enumerate(names)}


def test_dicom_mapping_inverts_monochrome1_and_applies_the_voi_window():
    uncompressed = read_dicom(get_testdata_file("RG1_UNCR.dcm"))
    assert uncompressed.shape == (1955, 1841) and uncompressed.dtype == np.uint8
    # MONOCHROME1 stores the lungs (little attenuation) as high values: after the inversion they are
    # darker than the mediastinum, as on any displayed radiograph
    lung, mediastinum = uncompressed[900:1000, 500:600].mean(), uncompressed[900:1000, 900:1000].mean()
    assert mediastinum - lung > 40
    # the VOI window (centre 15000, width 30000) by DICOM's linear function, then the inversion
    import pydicom

    stored = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array.astype(float)
    expected = 1 - np.clip((stored - 14999.5) / 29999 + 0.5, 0, 1)
    assert np.abs(uncompressed.astype(int) - np.round(expected * 255).astype(int)).max() <= 1
    lossless = read_dicom(get_testdata_file("RG1_J2KR.dcm"))
    np.testing.assert_array_equal(lossless, uncompressed)  # JPEG 2000 lossless decodes to the same pixels
    lossy = read_dicom(get_testdata_file("RG1_J2KI.dcm"))
    assert np.abs(lossy.astype(int) - uncompressed.astype(int)).mean() < 3
    jpeg = read_dicom(FIXTURES / REAL_SIIM_DICOM)  # JPEG baseline, MONOCHROME2
    assert jpeg.shape == (1024, 1024) and 30 < jpeg.mean() < 220


def test_bad_input_is_one_line_nothing_is_left_and_strict_stops(tmp_path, capsys):
    raw = tmp_path / "raw"
    rows = nih_tree(raw, patients=4, nested=False)
    (raw / "images" / rows["Image Index"].iloc[1]).write_bytes(b"not a png")
    out = tmp_path / "prepared"
    assert main(["prepare", "--dataset", "nih", "--root", str(raw), "--out", str(out / "nih"), "--size", "64",
                 "--strict", "--workers", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bench prepare: error: ") and rows["Image Index"].iloc[1] in error and "\n" not in error
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written, no staging dir left
    # renamed column, missing root, missing split lists
    table = pd.read_csv(raw / "Data_Entry_2017_v2020.csv").rename(columns={"Finding Labels": "Findings"})
    table.to_csv(raw / "Data_Entry_2017_v2020.csv", index=False)
    for argv, expected in [
        (["--root", str(raw)], "missing column(s) ['Finding Labels']"),
        (["--root", str(tmp_path / "nowhere")], "no such directory"),
    ]:
        assert main(["prepare", "--dataset", "nih", "--out", str(out / "nih"), *argv]) == 2
        assert expected in capsys.readouterr().err
    (raw / "test_list.txt").unlink()
    table.rename(columns={"Findings": "Finding Labels"}).to_csv(raw / "Data_Entry_2017_v2020.csv", index=False)
    assert main(["prepare", "--dataset", "nih", "--root", str(raw), "--out", str(out / "nih")]) == 2
    assert "no test_list.txt" in capsys.readouterr().err


def test_unreadable_rle_is_skipped_and_listed(tmp_path):
    rows = siim_rle_rows(count=6)
    rows.loc[rows.index[-1], "EncodedPixels"] = "12 x 7"
    siim_dicom_tree(tmp_path / "raw", rows, size=64)
    manifest = prepare_dataset("siim", tmp_path / "raw", tmp_path / "siim", size=32, workers=1, seeds=(0,))
    bad = rows["ImageId"].iloc[-1]
    assert any(bad in p["file"] and "unreadable RLE" in p["reason"] for p in manifest["skipped"])
    assert sum(bad in p["file"] for p in manifest["skipped"]) == 1  # once, not again as "on disk but not listed"
    assert bad not in set(PreparedDataset.load(tmp_path / "siim").index["image_id"])


def test_benchx_lists_give_the_split_and_the_subsets(tmp_path):
    raw = tmp_path / "raw"
    rows = nih_tree(raw, patients=4, nested=False)
    ids = list(rows["Image Index"])
    lists = tmp_path / "lists"
    lists.mkdir()
    # one image in no list (dropped); BenchX's subsets are image-level and need not nest
    parts = {"train": ids[1 : len(ids) - 4], "val": ids[-4:-2], "test": ids[-2:], "train_1": ids[1:2], "train_10": ids[2:5]}
    for part, members in parts.items():
        (lists / f"NIH_Chest_Xray_{part}.txt").write_text("\n".join(members) + "\n")
    prepare_dataset("nih", raw, tmp_path / "nih", size=32, workers=1, seeds=(0,), splits="benchx", splits_dir=lists)
    data = PreparedDataset.load(tmp_path / "nih")
    for part in ("train", "val", "test"):
        assert set(data.index.loc[data.index["split"] == part, "image_id"]) == set(parts[part])
    assert list(data.index["image_id"].iloc[data.label_fraction_positions(1, 0)]) == parts["train_1"]
    assert set(data.index["image_id"].iloc[data.label_fraction_positions(10, 0)]) == set(parts["train_10"])
    assert ids[0] not in set(data.index["image_id"])
    labels = rows.set_index("Image Index")["Finding Labels"]
    for image_id, row in data.index.set_index("image_id").iterrows():  # labels still belong to their rows
        assert {label for label in NIH_LABELS if row[label]} == set(labels[image_id].split("|")) - {"No Finding"}
    # one published draw: another seed is refused rather than drawn by another rule
    with pytest.raises(DatasetError, match="seed 0"):
        data.label_fraction_positions(1, 1)
    # lists that name none of this tree's images: a one-line error, nothing written
    for part in parts:
        (lists / f"NIH_Chest_Xray_{part}.txt").write_text("00099999_000.png\n")
    with pytest.raises(PrepareError, match="no image of this nih tree is in BenchX's train, val, test"):
        prepare_dataset("nih", raw, tmp_path / "nih2", size=32, workers=1, seeds=(0,), splits="benchx", splits_dir=lists)
    assert not (tmp_path / "nih2").exists()


# SHA-256 and line count of each list as BenchX publishes it (yangzhou12/BenchX, the .txt files)
BENCHX_PUBLISHED = {
    "NIH_Chest_Xray_test.txt": ("536637d62365936ef2cbd296e2de11a968d66f973c90b65ece6b8b31936d4a1f", 22433),
    "NIH_Chest_Xray_train.txt": ("035fed235a5931554c1fccaa096c9e2bb8fc80449bfa63fbc44843014e4349a4", 78468),
    "NIH_Chest_Xray_train_1.txt": ("cc3072c2b1177fd2f8d103e402da9a159dfce0d7ccc90f881c2efa8d9d7fbf63", 785),
    "NIH_Chest_Xray_train_10.txt": ("c70afef8bab5debaf8d2cd126dc1feea23e41073d60ef39626e32daa4a0896cd", 7847),
    "NIH_Chest_Xray_val.txt": ("48fff6634cc3e4294ab836b9d84bb1b3e6d81c73a8b94f69b5208c31eaa4b14a", 11219),
    "RSNA_test.txt": ("48394d681ab052ec5ca60c773a589123eb9341a269d636f3b65a2514761d6066", 4003),
    "RSNA_train.txt": ("887236661d0044bef38133c9ba440df1bbfc9630b153420e34294f600aa4f7d8", 18678),
    "RSNA_train_1.txt": ("9cdb3fe4c97046929ab56f845ae2abdf13f18610552cbd14f17c6a2147835b9f", 186),
    "RSNA_train_10.txt": ("5e35777c613924f36bf676bd47cbb32b540ecf97a8f6fd08eb0294153aef53c8", 1867),
    "RSNA_val.txt": ("f21237e5f2546b33976381033572d6f759ee8e22bd10a782955c449275020e51", 4003),
    "SIIM_test.txt": ("cb4b5c7b6722235a45f548667f20e5608c5fc65526b3b58a2e9f28f259745854", 1372),
    "SIIM_train.txt": ("66b66b47c0ab368454aab66d34ce0aa71ec91afaa4d6e7ecfabb74858cea8356", 9303),
    "SIIM_train_1.txt": ("6c5f120e5233a70baccf740cc358bf8f8b60249ec8358c1750d87050709a07b5", 93),
    "SIIM_train_10.txt": ("65d5b8b05436fd7f5855cceb328c1bbfd0089e0e4eed5020805bf4c969be9279", 930),
    "SIIM_val.txt": ("3740ddc604f8579604d5017d05c8ff1fdb91cee522b0596a9593ee7191d90e77", 1372),
    "VinDr_CXR_test.txt": ("a9566d4f6a2d6a7cf3c65a6525889122d758e6a860076730057425696b2811c7", 3000),
    "VinDr_CXR_train.txt": ("9a38946064dd0bb645a5840545accbd169cb07b9fd6ecf190f6397b2e05856de", 12000),
    "VinDr_CXR_train_1.txt": ("b973fc4ed6018a499a82258bade3175bd81ea171174458d46859b8286aeffc7c", 120),
    "VinDr_CXR_train_10.txt": ("9d3047f40e0892c39b2fdf7fcad78e6c4d3b6be7e3ee3fe727a52a96e0711090", 1200),
    "VinDr_CXR_val.txt": ("d1b7075628d0191d56582a68838bae88d3aa8f90c4f842c9edfc34cb4358d9ce", 3000),
}


def test_shipped_benchx_lists_are_the_published_ones():
    import hashlib
    from importlib import resources

    folder = resources.files("cxrbench.datasets.benchx")
    shipped = sorted(entry.name[: -len(".gz")] for entry in folder.iterdir() if entry.name.endswith(".txt.gz"))
    assert shipped == sorted(BENCHX_PUBLISHED)
    for name, (digest, lines) in BENCHX_PUBLISHED.items():
        text = gzip.decompress(folder.joinpath(f"{name}.gz").read_bytes())
        assert (hashlib.sha256(text).hexdigest(), text.count(b"\n")) == (digest, lines), name


def test_a_smoke_run_trains_and_evaluates_on_a_prepared_dataset(tmp_path, capsys):
    raw = tmp_path / "raw"
    nih_tree(raw, patients=40, nested=True)
    root = tmp_path / "data"
    assert main(["prepare", "--dataset", "nih", "--root", str(raw), "--out", str(root / "nih"), "--size", "64", "--workers", "2"]) == 0
    out = tmp_path / "run"
    assert main(["run", "--methods", "simclr", "--protocol", "frozen,finetune", "--profile", "smoke", "--datasets", "nih",
                 "--pretrain-dataset", "nih", "--data-root", str(root), "--fractions", "10,100", "--out", str(out)]) == 0
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(records) == 4 and {r["cell"]["dataset"] for r in records} == {"nih"}
    assert all(len(r["label_columns"]) == 14 for r in records)
    assert json.loads((out / "pretrain" / "simclr__nih" / "record.json").read_text())["pretrain_dataset"] == "nih"
    # without the data root: one line saying what to run
    assert main(["run", "--methods", "sup1", "--datasets", "nih", "--profile", "smoke", "--out", str(tmp_path / "x")]) == 2
    assert "bench prepare --dataset nih" in capsys.readouterr().err


@pytest.mark.parametrize("patients", [3, 7, 40])
def test_subsets_have_exactly_the_requested_patients_even_on_tiny_sets(patients):
    rng = np.random.default_rng(patients)
    ids = pd.Series([f"p{i // 2}" for i in range(2 * patients)])
    labels = (rng.random((2 * patients, 5)) < 0.3).astype(int)
    subsets = nested_fraction_subsets(ids, labels, [100, 10, 1], seed=0)
    for fraction in (1, 10, 100):
        assert ids.iloc[subsets[fraction]].nunique() == max(1, int(np.ceil(patients * fraction / 100)))


def test_vindr_physionet_layout_uses_the_released_consensus_test_set(tmp_path):
    raw = tmp_path / "raw"
    rows = vindr_tree(raw, images=20)
    (raw / "annotations").mkdir()
    # PhysioNet boxes 8 local labels beyond Kaggle's 14: such a row is dropped, its image kept
    table = pd.read_csv(raw / "train.csv", dtype={"image_id": str})
    extra = table.iloc[:1].assign(class_name="Rib fracture", class_id=20)
    pd.concat([table, extra]).to_csv(raw / "annotations" / "annotations_train.csv", index=False)
    (raw / "train.csv").unlink()
    test_ids = [f"test{i:03d}" for i in range(6)]
    labels = pd.DataFrame({"image_id": test_ids, **{name: [int(i % 3 == k % 3) for i in range(6)] for k, name in enumerate(VINDR_LABELS)},
                           "No finding": 0})
    labels.to_csv(raw / "annotations" / "image_labels_test.csv", index=False)
    for i, image_id in enumerate(test_ids):
        generated_dicom(raw / "test" / f"{image_id}.dicom", seed=100 + i)
    manifest = prepare_dataset("vindr", raw, tmp_path / "vindr", size=32, workers=1, seeds=(0,))
    data = PreparedDataset.load(tmp_path / "vindr")
    assert set(data.index.loc[data.index["split"] == "test", "image_id"]) == set(test_ids)
    assert manifest["counts_per_split"]["train"] + manifest["counts_per_split"]["val"] == rows["image_id"].nunique()
    assert not any("Rib fracture" in p["reason"] for p in manifest["skipped"])
    first = data.index.set_index("image_id").loc["test000", VINDR_LABELS]
    assert first.tolist() == labels.set_index("image_id").loc["test000", VINDR_LABELS].tolist()


def test_a_corrupt_dicom_is_skipped_and_listed_or_stops_strict(tmp_path):
    raw = tmp_path / "raw"
    rows = rsna_tree(raw, images=8)
    broken = rows["patientId"].iloc[-1]
    path = raw / "stage_2_train_images" / f"{broken}.dcm"
    path.write_bytes(path.read_bytes()[:300])  # truncated: header without pixel data
    manifest = prepare_dataset("rsna", raw, tmp_path / "rsna", size=32, workers=1, seeds=(0,))
    assert any(p["file"].endswith(f"{broken}.dcm") and p["reason"].startswith("cannot decode DICOM") for p in manifest["skipped"])
    assert broken not in set(PreparedDataset.load(tmp_path / "rsna").index["image_id"])
    with pytest.raises(PrepareError, match=broken):
        prepare_dataset("rsna", raw, tmp_path / "strict", size=32, workers=1, seeds=(0,), strict=True)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict.*"))
