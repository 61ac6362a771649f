"""The four built-in phantom datasets, generated on first use into the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrbench import __version__
from cxrbench.datasets import phantom
from cxrbench.datasets.prepared import PreparedDataset, patient_disjoint_splits, write_prepared
from cxrbench.datasets.registry import register_dataset


def cache_root() -> Path:
    return Path(os.environ.get("CXRBENCH_CACHE", Path.home() / ".cache" / "cxrbench"))


class PhantomSource:
    """A phantom site rendered into a prepared directory (the same format as real data)."""

    site: phantom.Site
    name: str

    @property
    def description(self) -> str:
        return self.site.description

    @property
    def task(self) -> str:
        return self.site.task

    def unavailable_reason(self, data_config: dict) -> str | None:
        return None  # generated on first use

    def load(self, data_config: dict) -> PreparedDataset:
        size = int(data_config["image_size"])
        num_patients = int(data_config["phantom_patients"][self.name])
        seed = int(data_config.get("phantom_seed", 0))
        key = f"{self.name}-v{phantom.GENERATOR_VERSION}-{size}px-{num_patients}p-seed{seed}"
        directory = cache_root() / "phantom" / key
        if not (directory / "manifest.json").is_file():
            self._generate(directory, size, num_patients, seed)
        dataset = PreparedDataset.load(directory)
        # boxes name the phantom's findings; the labels group them
        dataset.finding_labels = {finding: label for label, findings in self.site.labels.items() for finding in findings}
        return dataset

    def _generate(self, directory: Path, size: int, num_patients: int, seed: int) -> None:
        site = self.site
        rows, boxes, images, masks = [], [], [], []
        # one line even where the bar is off (not a terminal: a log file, a SLURM job)
        tqdm.write(f"generating the {self.name} phantom ({num_patients} patients, {size} px) into {directory} (once; cached)")
        with tqdm(total=num_patients, desc=f"generating {self.name} ({size}px)", unit="patient", leave=False, disable=None) as bar:
            for patient_id, image_index, image in phantom.generate_site(site, num_patients, size, seed, bar.update):
                image_id = f"{patient_id}_{image_index:03d}"
                row = {"image_id": image_id, "patient_id": patient_id}
                for column, findings in site.labels.items():
                    row[column] = int(any(f in image.findings for f in findings))
                row["findings"] = "|".join(image.findings) or "No Finding"
                rows.append(row)
                images.append(image.pixels)
                if image.mask is not None:
                    masks.append(image.mask)
                boxes.extend({"image_id": image_id, "finding": n, "x": x, "y": y, "w": w, "h": h} for n, x, y, w, h in image.boxes)
        index = pd.DataFrame(rows)
        assignment = patient_disjoint_splits(index["patient_id"].tolist(), seed)
        index.insert(2, "split", index["patient_id"].map(assignment))
        if site.task == "segmentation":
            index["has_mask"] = [int(m.any()) for m in masks]
        manifest = {
            "name": self.name,
            "source": "cxrbench phantom",
            "task": site.task,
            "label_columns": list(site.labels),
            "generator_version": phantom.GENERATOR_VERSION,
            "options": {"image_size": size, "num_patients": num_patients, "seed": seed},
            "positives_per_label": {c: int(index[c].sum()) for c in site.labels},
            "cxrbench_version": __version__,
        }
        write_prepared(
            directory,
            manifest=manifest,
            index=index,
            images=np.stack(images),
            masks=np.stack(masks) if masks else None,
            boxes=pd.DataFrame(boxes, columns=["image_id", "finding", "x", "y", "w", "h"]),
        )


for _site in phantom.SITES.values():
    register_dataset(_site.name)(type(f"Phantom_{_site.name}", (PhantomSource,), {"site": _site}))
