"""``finetune``: the encoder and a linear head trained end to end, the best validation checkpoint tested."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import nn

from cxrbench.benchmark.protocols.base import ProtocolResult, as_input, load_encoder, predict, test_result, train_with_validation
from cxrbench.benchmark.protocols.localisation import gradcam_layer_name, gradcam_on_boxes
from cxrbench.benchmark.protocols.metrics import auroc_per_class
from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import backbone_of_state, feature_dim, to_model_input


class FinetuneProtocol:
    """Encoder + linear head trained end to end.

    Adam with the profile's learning rate and weight decay and a fixed budget of
    ``max_steps`` optimiser steps, the same for every label fraction (cells then differ
    only in the labels they see; small subsets are revisited for many epochs),
    light augmentation (random resized crop, no flip: heart side is anatomy). The validation
    mean AUROC is measured every ``eval_every`` steps and the best checkpoint is kept (early
    stopping by selection); test is evaluated once, on that checkpoint.
    """

    name = "finetune"
    tasks = ("multilabel", "binary")
    description = "encoder and linear head trained end to end, best validation checkpoint"

    def prepare_shared(self, encoder_state, dataset, device):
        return None  # every cell trains its own copy of the encoder

    def run(self, encoder_state: dict, dataset: PreparedDataset, label_fraction: float, seed: int,
            config: dict, device: torch.device, shared=None) -> ProtocolResult:
        started = time.perf_counter()
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        train = dataset.label_fraction_positions(label_fraction, seed)
        val, test = dataset.split_positions("val"), dataset.split_positions("test")
        model = nn.Sequential(load_encoder(encoder_state, device), nn.Linear(feature_dim(backbone_of_state(encoder_state)), len(dataset.label_columns))).to(device)
        recipe = ViewRecipe(crop_scale=tuple(config["crop_scale"]), flip_probability=0.0, jitter_probability=0.0, blur_probability=0.0)
        train_images = torch.from_numpy(np.ascontiguousarray(dataset.images[train]))
        train_targets = torch.from_numpy(dataset.targets(train)).to(device)
        val_targets = dataset.targets(val)

        def training_loss(chunk: torch.Tensor) -> torch.Tensor:
            views = augment(train_images[chunk].to(device), recipe, dataset.image_size, generator)  # drawn on the CPU: the same views on any device
            return F.binary_cross_entropy_with_logits(model(to_model_input(views)), train_targets[chunk.to(device)])

        def validation_score() -> float:
            val_scores = predict(model, dataset.images[val], device)
            return auroc_per_class(val_targets, val_scores, dataset.label_columns)["mean_auroc"] or 0.0

        selection = train_with_validation(model, training_loss, validation_score, "mean_auroc", len(train), config, generator, "finetune")
        trained = time.perf_counter()
        test_scores = expit(predict(model, dataset.images[test], device))
        result = test_result(dataset, test, test_scores, selection, len(train), started, trained)
        gradcam = config.get("gradcam") or {}
        if (float(label_fraction) in [float(f) for f in gradcam.get("fractions", [])]
                and dataset.name in gradcam.get("datasets", [dataset.name])):
            _add_gradcam(result, model, dataset, test, device, int(gradcam.get("max_heatmaps", 64)))
        return result


def _add_gradcam(result: ProtocolResult, model: nn.Module, dataset: PreparedDataset, test: np.ndarray,
                 device: torch.device, max_heatmaps: int) -> None:
    """Figure 2: heatmaps of the selected model on the boxed test images, scored against the boxes."""
    started = time.perf_counter()
    layer_name = gradcam_layer_name(dataset.image_size)
    scores, arrays = gradcam_on_boxes(model, getattr(model[0], layer_name)[-1], dataset, test, as_input, device, max_heatmaps)
    scores["target_layer"] = layer_name
    if arrays:
        position_of = dict(zip(dataset.index["image_id"], range(len(dataset.index))))
        arrays["cam_images"] = np.stack([dataset.images[position_of[i]] for i in arrays["cam_image_ids"]])
    result.metrics["localisation"] = scores
    result.predictions.update(arrays)
    result.timing["gradcam_s"] = time.perf_counter() - started
