"""``bench prepare``: a released dataset -> a prepared directory (see ``prepared.py``).

Order of work: read the label files into a catalog (reporting every problem), decode every
image once (in parallel processes) into a uint8 memory-mapped array, skip the images that
fail, draw the patient-disjoint splits and the nested label-fraction subsets on what
remains, write ``index.csv``, ``boxes.csv``, ``splits/`` and ``manifest.json``. All of it
happens in a temporary sibling directory renamed into place at the very end, so an
interrupted or failed prepare never leaves a directory that passes as complete.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrbench.datasets.decode import ImageError, read_image, resize_square
from cxrbench.datasets.prepared import FRACTION_LADDER
from cxrbench.datasets.real import nih, rsna, siim, vindr
from cxrbench.datasets.real.common import Catalog, PrepareError, decode_rle
from cxrbench.datasets.splits import nested_fraction_subsets, patient_split

READERS = {"nih": nih.catalog, "vindr": vindr.catalog, "rsna": rsna.catalog, "siim": siim.catalog}
BENCHX_PREFIX = {"nih": "NIH_Chest_Xray", "vindr": "VinDr_CXR", "rsna": "RSNA", "siim": "SIIM"}
BENCHX_LAYOUT = {"nih": "Image Index file names", "vindr": "PhysioNet image ids (its test list is the PhysioNet test set)",
                 "rsna": "patientIds", "siim": "the PNG re-release's file names (png_images/)"}


def _decode(job: tuple) -> tuple:
    """Worker: (position, path, mask spec, size) -> (position, image, mask, original shape, error)."""
    position, path, mask_spec, size = job
    try:
        image = read_image(Path(path))
        mask = None
        if mask_spec is not None:
            kind = mask_spec[0]
            if kind == "rle":
                try:
                    mask = decode_rle(mask_spec[1], *image.shape, relative=mask_spec[2])
                except ValueError as error:
                    raise ImageError(f"unreadable RLE for this image ({error})") from None
            else:
                mask = (read_image(Path(mask_spec[1])) > 127).astype(np.uint8)
                if mask.shape != image.shape:
                    raise ImageError(f"mask {mask_spec[1]} is {mask.shape}, the image {image.shape}")
            mask = resize_square(mask, size, mask=True)
        return position, resize_square(image, size), mask, image.shape, None
    except ImageError as error:
        return position, None, None, None, str(error)
    except Exception as error:  # an odd file must be skipped and listed, never end the whole prepare
        return position, None, None, None, f"cannot read: {type(error).__name__}: {error}"


def _benchx_lists(name: str, directory: Path | None) -> dict[str, set[str]]:
    """BenchX's split and subset lists for a dataset: {"train", "val", "test", "train_1", "train_10"}."""
    lists = {}
    for part in ("train", "val", "test", "train_1", "train_10"):
        file_name = f"{BENCHX_PREFIX[name]}_{part}.txt"
        if directory is not None:
            path = Path(directory) / file_name
            if not path.is_file():
                raise PrepareError(f"--splits-dir {directory}: no {file_name}")
            text = path.read_text()
        else:
            text = gzip.decompress(resources.files("cxrbench.datasets.benchx").joinpath(file_name + ".gz").read_bytes()).decode()
        lists[part] = {Path(line).stem if line.endswith((".png", ".dcm", ".dicom")) else line for line in text.split()}
    return lists


def _stem(image_id: str) -> str:
    return Path(image_id).stem if image_id.lower().endswith((".png", ".dcm", ".dicom")) else image_id


def prepare_dataset(name: str, root: Path, out: Path, *, size: int = 256, strict: bool = False, seed: int = 0,
                    seeds: tuple[int, ...] = (0, 1, 2), fractions: tuple[float, ...] = (1.0, 10.0),
                    splits: str = "default", splits_dir: Path | None = None, label_rule: str = "any",
                    workers: int | None = None) -> dict:
    """Prepare one dataset; returns the manifest. Raises PrepareError for expected failures."""
    if name not in READERS:
        raise PrepareError(f"--dataset {name!r}: expected one of {sorted(READERS)}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise PrepareError(f"--root {root}: no such directory")
    if out.exists():
        raise PrepareError(f"--out {out}: already exists; remove it or choose another directory")
    options = {"size": size, "strict": strict, "seed": seed, "seeds": list(seeds), "fractions": list(fractions),
               "splits": splits, "label_rule": label_rule}
    catalog = READERS[name](root, options)
    if strict and catalog.problems:
        first = catalog.problems[0]
        raise PrepareError(f"{first['file']}: {first['reason']} ({len(catalog.problems)} problem(s); --strict stops at any)")
    if catalog.rows.empty:
        raise PrepareError(f"{root}: no usable image ({len(catalog.problems)} problem(s), e.g. {catalog.problems[:1]})")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _build(catalog, root, staging, options, splits_dir, workers)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _build(catalog: Catalog, root: Path, staging: Path, options: dict, splits_dir, workers) -> dict:
    size, strict = options["size"], options["strict"]
    rows = catalog.rows.reset_index(drop=True)
    segmentation = catalog.task == "segmentation"
    count = len(rows)
    images = np.lib.format.open_memmap(staging / "images.full.npy", mode="w+", dtype=np.uint8, shape=(count, size, size))
    masks = np.lib.format.open_memmap(staging / "masks.full.npy", mode="w+", dtype=np.uint8, shape=(count, size, size)) if segmentation else None
    shapes = np.zeros((count, 2), dtype=np.int64)
    ok = np.zeros(count, dtype=bool)
    mask_specs = rows["mask"] if "mask" in rows else [None] * count
    jobs = [(i, path, spec, size) for i, (path, spec) in enumerate(zip(rows["path"], mask_specs))]
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    results = executor.map(_decode, jobs, chunksize=16) if executor else map(_decode, jobs)
    try:
        for position, image, mask, shape, error in tqdm(results, total=count, desc=f"prepare {catalog.name}", unit="image", disable=None):
            if error is not None:
                catalog.problem(rows["path"][position], error)
                if strict:
                    raise PrepareError(f"{rows['path'][position]}: {error} (--strict stops at any problem)")
                continue
            images[position], shapes[position], ok[position] = image, shape, True
            if segmentation:
                masks[position] = mask
    finally:
        if executor:
            executor.shutdown(cancel_futures=True)
    kept = np.flatnonzero(ok)
    _compact(staging / "images.full.npy", staging / "images.npy", images, kept)
    if segmentation:
        rows["has_mask"] = masks.reshape(count, -1).max(axis=1).astype(int)  # from the mask itself
        _compact(staging / "masks.full.npy", staging / "masks.npy", masks, kept)
    del images, masks
    rows = rows.iloc[kept].reset_index(drop=True)
    rows["original_height"], rows["original_width"] = shapes[kept, 0], shapes[kept, 1]

    # splits: published lists, or the release's fixed test split plus a seeded patient split
    labels = rows[catalog.label_columns].to_numpy()
    subset_files: dict[str, list[str]] = {}
    if options["splits"] == "benchx":
        lists = _benchx_lists(catalog.name, splits_dir)
        stems = rows["image_id"].map(_stem)
        split = np.full(len(rows), "", dtype=object)
        for part in ("train", "val", "test"):
            split[stems.isin(lists[part]).to_numpy()] = part
        for image_id in rows.loc[split == "", "image_id"]:
            catalog.problem(image_id, "not in the BenchX split lists (not used)")
        empty = [part for part in ("train", "val", "test") if not (split == part).any()]
        if empty:
            raise PrepareError(f"--splits benchx: no image of this {catalog.name} tree is in BenchX's {', '.join(empty)} "
                               f"list(s); BenchX names {BENCHX_LAYOUT[catalog.name]}")
        keep = split != ""
        _drop_rows(staging, keep, segmentation)
        rows, split = rows[keep].reset_index(drop=True), split[keep]
        labels = rows[catalog.label_columns].to_numpy()  # rows were dropped: labels follow them
        stems = rows["image_id"].map(_stem)
        for fraction in (1, 10):
            subset_files[f"train_{fraction}pct_seed0.txt"] = rows.loc[stems.isin(lists[f"train_{fraction}"]) & (split == "train"), "image_id"].tolist()
        split_rule = ("BenchX published lists: train/val/test and one draw of the 1%/10% subsets (seed 0 only; "
                      "image-level, and BenchX's 1% list is not inside its 10% list)")
    else:
        split = rows["split"].to_numpy(dtype=object).copy() if "split" in rows else np.full(len(rows), "", dtype=object)
        free = split == ""
        split[free] = patient_split(rows.loc[free, "patient_id"], labels[free], catalog.split_fractions, options["seed"])
        split_rule = catalog.split_rule
    rows["split"] = split
    train = np.flatnonzero(split == "train")
    # BenchX publishes one draw: its subsets are not mixed with draws of another rule
    for subset_seed in options["seeds"] if options["splits"] != "benchx" else []:
        wanted = sorted(set(FRACTION_LADDER) | {float(f) for f in options["fractions"]}, reverse=True)
        subsets = nested_fraction_subsets(rows["patient_id"].iloc[train], labels[train], wanted, subset_seed)
        for fraction in options["fractions"]:
            name = f"train_{float(fraction):g}pct_seed{subset_seed}.txt"
            subset_files.setdefault(name, rows["image_id"].iloc[train[subsets[float(fraction)]]].tolist())

    (staging / "splits").mkdir()
    for name, image_ids in subset_files.items():
        (staging / "splits" / name).write_text("\n".join(image_ids) + "\n")
    columns = ["image_id", "patient_id", "split", *catalog.label_columns, "original_height", "original_width"]
    index = rows[columns].assign(source_file=rows["path"].map(lambda p: os.path.relpath(p, root)))
    index.to_csv(staging / "index.csv", index=False)
    if catalog.boxes is not None:
        boxes = catalog.boxes.merge(rows[["image_id", "original_height", "original_width"]], on="image_id")
        scale_x, scale_y = size / boxes.pop("original_width"), size / boxes.pop("original_height")
        boxes["x"], boxes["w"] = boxes["x"] * scale_x, boxes["w"] * scale_x
        boxes["y"], boxes["h"] = boxes["y"] * scale_y, boxes["h"] * scale_y
        boxes.to_csv(staging / "boxes.csv", index=False)

    from cxrbench import __version__

    manifest = {
        "name": catalog.name,
        "task": catalog.task,
        "label_columns": catalog.label_columns,
        "num_images": int(len(rows)),
        "counts_per_split": {part: int((split == part).sum()) for part in ("train", "val", "test")},
        "positives_per_split": {part: {column: int(rows.loc[split == part, column].sum()) for column in catalog.label_columns}
                                for part in ("train", "val", "test")},
        "split_rule": split_rule,
        "finding_labels": catalog.finding_labels or {label: label for label in catalog.label_columns},
        "subset_rule": "benchx" if options["splits"] == "benchx" else "nested, by patient, stratified",
        "label_rule": catalog.label_rule,
        "subset_files": sorted(subset_files),
        "source_root": str(root.resolve()),
        "source_files": [{"path": os.path.relpath(path, root), "bytes": Path(path).stat().st_size} for path in catalog.source_files],
        "skipped": catalog.problems,
        "options": options,
        "image_mapping": "see cxrbench.datasets.decode: modality LUT -> VOI LUT/window -> [0,1] -> MONOCHROME1 inverted -> uint8; square resize",
        "cxrbench_version": __version__,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def _compact(full_path: Path, final_path: Path, array: np.memmap, kept: np.ndarray, chunk: int = 1024) -> None:
    """Copy the decoded rows into a final array of exactly their number, then drop the full one."""
    if len(kept) == len(array):  # nothing skipped: no copy, no doubled disk use
        array.flush()
        os.replace(full_path, final_path)
        return
    final = np.lib.format.open_memmap(final_path, mode="w+", dtype=np.uint8, shape=(len(kept),) + array.shape[1:])
    for start in range(0, len(kept), chunk):
        final[start : start + chunk] = array[kept[start : start + chunk]]
    final.flush()
    del final
    full_path.unlink()


def _drop_rows(staging: Path, keep: np.ndarray, segmentation: bool) -> None:
    if keep.all():
        return
    for name in ("images", "masks") if segmentation else ("images",):
        array = np.load(staging / f"{name}.npy", mmap_mode="r")
        os.replace(staging / f"{name}.npy", staging / f"{name}.full.npy")
        _compact(staging / f"{name}.full.npy", staging / f"{name}.npy", array, np.flatnonzero(keep))
