"""Raw dataset trees in the exact released layouts, built from slices of the real label files.

The label files are the real ones shipped in torchxrayvision's wheel (read as files, the
package is never imported); images are the real radiographs in tests/fixtures/real and
pydicom-data's chest CR where the test needs them, generated greyscale images elsewhere.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"  # in the repository: see its README
REAL_NIH_PNGS = ["00000001_000.png", "00027426_000.png"]
REAL_SIIM_DICOM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def txv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")  # finds the package without importing it
    return Path(spec.submodule_search_locations[0]) / "data"


def real_csv(name: str, **options) -> pd.DataFrame:
    path = txv_data() / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            return pd.read_csv(archive.open(archive.namelist()[0]), **options)
    return pd.read_csv(path, **options)


def real_csv_text(name: str) -> str:
    return gzip.decompress((txv_data() / name).read_bytes()).decode()


def write_png(path: Path, seed: int, size: int = 96, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "L":
        image = image.convert(mode)
    image.save(path)


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", patient_id: str = "", window=None) -> None:
    """A minimal uncompressed DICOM (16-bit unsigned) with the given pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientID = patient_id
    dataset.Modality = "CR"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)


def generated_dicom(path: Path, seed: int, size: int = 64, **options) -> None:
    write_dicom(path, np.random.default_rng(seed).integers(0, 4096, size=(size, size)), **options)


# --- NIH ChestX-ray14

def nih_tree(root: Path, *, patients: int = 12, nested: bool = True) -> pd.DataFrame:
    """Real rows of Data_Entry_2017_v2020.csv for the first patients (with both real PNGs)."""
    table = real_csv("Data_Entry_2017_v2020.csv.gz", dtype=str)
    chosen = list(table["Patient ID"].drop_duplicates().iloc[:patients])
    real_patient = table.loc[table["Image Index"] == REAL_NIH_PNGS[1], "Patient ID"].iloc[0]
    rows = table[table["Patient ID"].isin(chosen + [real_patient])].reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    rows.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    for i, image_id in enumerate(rows["Image Index"]):
        folder = root / ("images_001/images" if nested and i % 2 else "images")
        if image_id in REAL_NIH_PNGS:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(FIXTURES / image_id, folder / image_id)
        else:
            write_png(folder / image_id, seed=i, mode="RGBA" if i == 3 else "L")  # some released PNGs are RGBA
    # official-style lists: whole patients, every third patient in the test list
    patients_in = sorted(rows["Patient ID"].unique(), key=int)
    test_patients = set(patients_in[::3])
    in_test = rows["Patient ID"].isin(test_patients)
    (root / "test_list.txt").write_text("\n".join(rows.loc[in_test, "Image Index"]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(rows.loc[~in_test, "Image Index"]) + "\n")
    boxes = real_csv("BBox_List_2017.csv.gz")
    boxes[boxes["Image Index"].isin(rows["Image Index"])].to_csv(root / "BBox_List_2017.csv", index=False)
    return rows


# --- VinDr-CXR

def vindr_tree(root: Path, *, images: int = 30) -> pd.DataFrame:
    table = real_csv("vinbigdata-train.csv.gz", dtype={"image_id": str})
    # the images with the most findings first, so that the slice holds positives
    busy = table.groupby("image_id")["class_id"].nunique().sort_values(ascending=False).index[:images]
    rows = table[table["image_id"].isin(busy)].reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    rows.to_csv(root / "train.csv", index=False)
    for i, image_id in enumerate(busy):
        generated_dicom(root / "train" / f"{image_id}.dicom", seed=i, photometric="MONOCHROME1" if i % 2 else "MONOCHROME2")
    return rows


# --- RSNA Pneumonia

def rsna_tree(root: Path, *, images: int = 40) -> pd.DataFrame:
    table = real_csv("kaggle_stage_2_train_labels.csv.zip", dtype={"patientId": str})
    counts = table.groupby("patientId").size()
    multi = list(counts[counts > 1].index[:5])  # images with several boxes (several rows)
    others = [p for p in table["patientId"].drop_duplicates() if p not in multi][: images - len(multi)]
    rows = table[table["patientId"].isin(multi + others)].reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    rows.to_csv(root / "stage_2_train_labels.csv", index=False)
    for i, patient in enumerate(rows["patientId"].drop_duplicates()):
        generated_dicom(root / "stage_2_train_images" / f"{patient}.dcm", seed=i)
    return rows


# --- SIIM-ACR

def siim_rle_rows(count: int = 24) -> pd.DataFrame:
    """Real rows of train-rle.csv: some images with several RLE rows, some empty (-1)."""
    table = real_csv("siim-pneumothorax-train-rle.csv.gz", dtype=str, skipinitialspace=True)
    table.columns = [c.strip() for c in table.columns]
    counts = table.groupby("ImageId").size()
    multi = list(counts[counts > 1].index[:4])
    empty = list(table.loc[table["EncodedPixels"].str.strip() == "-1", "ImageId"].iloc[: count // 2])
    single = [i for i in counts[counts == 1].index if i not in empty][: count - len(multi) - len(empty)]
    chosen = multi + empty + single
    if REAL_SIIM_DICOM.removesuffix(".dcm") not in chosen:
        chosen.append(REAL_SIIM_DICOM.removesuffix(".dcm"))
    return table[table["ImageId"].isin(chosen)].reset_index(drop=True)


def siim_dicom_tree(root: Path, rows: pd.DataFrame, *, size: int = 1024) -> None:
    """dicom-images-train/<study>/<series>/<ImageId>.dcm with the real RLE rows (relative form)."""
    root.mkdir(parents=True, exist_ok=True)
    text = "ImageId, EncodedPixels\n" + "".join(f"{a}, {b}\n" for a, b in zip(rows["ImageId"], rows["EncodedPixels"]))
    (root / "train-rle.csv").write_text(text)
    for i, image_id in enumerate(rows["ImageId"].drop_duplicates()):
        folder = root / "dicom-images-train" / f"study{i}" / f"series{i}"
        folder.mkdir(parents=True, exist_ok=True)
        if image_id + ".dcm" == REAL_SIIM_DICOM:
            shutil.copy(FIXTURES / REAL_SIIM_DICOM, folder / REAL_SIIM_DICOM)
        else:
            generated_dicom(folder / f"{image_id}.dcm", seed=i, size=size, patient_id=f"patient-{i // 2}")


def to_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
