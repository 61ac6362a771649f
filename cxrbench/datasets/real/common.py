"""What every released-dataset reader shares: the catalog it returns and careful file reading.

A reader turns a raw directory, in the layout the dataset was released in, into a
``Catalog``: one row per image with its id, patient, file, labels and (for SIIM) how to
build its mask, plus every problem found on the way (a listed image missing on disk, an
image on disk that no label file lists, a label it does not know, an unreadable RLE). It
reads label files only; decoding the images is ``prepare``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


class PrepareError(ValueError):
    """An expected failure of ``bench prepare`` (missing file, renamed column ...): one line."""


@dataclass
class Catalog:
    name: str
    task: str  # multilabel | binary | segmentation
    label_columns: list[str]
    # image_id, patient_id ("" where the dataset has none), path, one 0/1 column per label;
    # optionally split ("test" fixed by the release, "" to be drawn) and mask (a mask spec)
    rows: pd.DataFrame
    # how the images without a fixed split are divided, by patient: {"train": 0.7, ...}
    split_fractions: dict[str, float]
    split_rule: str  # said in the manifest
    problems: list[dict] = field(default_factory=list)  # {"file", "reason"}
    boxes: pd.DataFrame | None = None  # image_id, finding, x, y, w, h in source pixels
    source_files: list[Path] = field(default_factory=list)  # label files read, for the manifest
    label_rule: str | None = None  # how image labels were derived from readers (VinDr)
    finding_labels: dict[str, str] | None = None  # a box's finding -> its label column (default: same name)

    def problem(self, file, reason: str) -> None:
        self.problems.append({"file": str(file), "reason": reason})


def first_existing(root: Path, candidates: list[str], what: str) -> Path:
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise PrepareError(f"{root}: no {what} (expected {' or '.join(candidates)})")


def read_table(path: Path, required: list[str], **read_csv_options) -> pd.DataFrame:
    """A CSV with its column names stripped; a missing column is a one-line error naming the file."""
    try:
        table = pd.read_csv(path, **read_csv_options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PrepareError(f"{path}: not a readable CSV ({error})") from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise PrepareError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table


def index_files(directories: list[Path], suffixes: tuple[str, ...], *, recursive: bool = False) -> dict[str, Path]:
    """File name stem -> path for every file with one of ``suffixes`` in ``directories``."""
    found: dict[str, Path] = {}
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in directory.rglob("*") if recursive else directory.iterdir():
            if path.is_file() and path.suffix.lower() in suffixes:
                found[path.stem] = path
    return found


def _file_stem(image_id: str) -> str:
    """The file-name stem an image id is found under (SIIM's ids are dotted UIDs: no suffix to strip)."""
    return Path(image_id).stem if image_id.lower().endswith((".png", ".dcm", ".dicom")) else image_id


def attach_files(catalog: Catalog, files: dict[str, Path], where: str) -> None:
    """Set ``path`` from the file index; report images listed but missing, and files not listed."""
    rows = catalog.rows
    stems = rows["image_id"].map(_file_stem)
    rows["path"] = stems.map(lambda stem: str(files[stem]) if stem in files else "")
    for image_id in rows.loc[rows["path"] == "", "image_id"]:
        catalog.problem(f"{where}/{image_id}", "listed in the labels but not on disk")
    listed = set(stems)
    # images the reader dropped already (an unknown label, an unreadable RLE: "LABELS.csv:ID")
    # are in the manifest once, with that reason, not a second time as unlisted files
    dropped = {_file_stem(entry["file"].rsplit(":", 1)[-1]) for entry in catalog.problems if ":" in entry["file"]}
    for stem, path in sorted(files.items()):
        if stem not in listed and stem not in dropped:
            catalog.problem(path, "on disk but not listed in the labels (not used)")
    catalog.rows = rows[rows["path"] != ""].reset_index(drop=True)


# --- SIIM's run-length encoding

def parse_rle(text: str) -> np.ndarray | None:
    """The integers of one RLE string (None for "-1", no mask); ValueError if unreadable."""
    text = str(text).strip()
    if text in ("-1", ""):
        return None
    values = np.array([int(token) for token in text.split()], dtype=np.int64)
    if len(values) % 2 or (values < 0).any():
        raise ValueError("expected non-negative (start, length) pairs")
    return values


def decode_rle(encodings: tuple[str, ...], height: int, width: int, *, relative: bool) -> np.ndarray:
    """Union of the masks of several RLE rows, as uint8 0/1 (height, width).

    Pixels are numbered down the columns (the mask flattened column-first). In the relative
    form (the original ``train-rle.csv``) each start is an offset from the end of the
    previous run, from 0; in the standard form each start is an absolute 1-based position.
    """
    flat = np.zeros(height * width, dtype=np.uint8)
    for text in encodings:
        values = parse_rle(text)
        if values is None:
            continue
        position = 0
        for start, length in zip(values[0::2], values[1::2]):
            begin = position + start if relative else start - 1
            if begin < 0 or begin + length > flat.size:
                raise ValueError(f"run {start} {length} lies outside a {height}x{width} mask")
            flat[begin : begin + length] = 1
            position = begin + length
    return flat.reshape((height, width), order="F")
