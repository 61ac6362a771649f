"""The released datasets as ``bench run`` datasets: prepared directories under the data root.

``bench prepare --dataset nih --out DATA_ROOT/nih`` writes one; ``bench run --datasets nih
--data-root DATA_ROOT`` (or ``data.root`` in a profile) reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.datasets.registry import register_dataset


class PreparedSource:
    name: str
    task: str
    description: str

    def directory(self, data_config: dict) -> Path | None:
        root = data_config.get("root")
        return Path(root) / self.name if root else None

    def unavailable_reason(self, data_config: dict) -> str | None:
        directory = self.directory(data_config)
        how = f"bench prepare --dataset {self.name} --root RAW_DIR --out DATA_ROOT/{self.name}, then --data-root DATA_ROOT"
        if directory is None:
            return f"{self.name}: no data root is configured (prepare it with `{how}`)"
        if not (directory / "manifest.json").is_file():
            return f"{self.name}: no prepared dataset at {directory} (expected {directory}/manifest.json; `{how}`)"
        size = json.loads((directory / "manifest.json").read_text()).get("options", {}).get("size")
        wanted = data_config.get("image_size")
        if size is not None and wanted is not None and int(size) != int(wanted):
            return (f"{self.name}: {directory} was prepared at {size} px but the profile trains at {wanted} px; "
                    f"prepare it again with --size {wanted}, or run with --set data.image_size={size}")
        return None

    def load(self, data_config: dict) -> PreparedDataset:
        reason = self.unavailable_reason(data_config)
        if reason:
            raise FileNotFoundError(reason)
        return PreparedDataset.load(self.directory(data_config))


for _name, _task, _description in [
    ("nih", "multilabel", "NIH ChestX-ray14, 14 labels, official patient-wise test split (prepared with bench prepare)"),
    ("vindr", "multilabel", "VinDr-CXR, 14 image-level labels from three readers (prepared with bench prepare)"),
    ("rsna", "binary", "RSNA Pneumonia, binary lung opacity (prepared with bench prepare)"),
    ("siim", "segmentation", "SIIM-ACR pneumothorax masks (prepared with bench prepare)"),
]:
    register_dataset(_name)(type(f"Prepared_{_name}", (PreparedSource,), {"task": _task, "description": _description}))
