"""Classification protocols: ``frozen`` (linear probe) and ``finetune`` (whole network).

Both select on the validation split and touch the test split exactly once, with the
selected model. A protocol receives an encoder state dict and a prepared dataset; it never
knows which method produced the encoder.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import nn
from tqdm.auto import tqdm

from cxrbench.benchmark.localisation import gradcam_layer_name, gradcam_on_boxes
from cxrbench.benchmark.metrics import auroc_per_class
from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import backbone_of_state, feature_dim, resnet_encoder, to_model_input


@dataclass
class ProtocolResult:
    metrics: dict
    headline: str  # the key of ``metrics`` that tables report (mean_auroc, dice_per_image)
    selection: dict  # what validation selected, with its score under ``val_score``
    num_train_images: int
    predictions: dict[str, np.ndarray]  # test predictions, stored with the record
    timing: dict = field(default_factory=dict)


def _test_result(dataset: PreparedDataset, test: np.ndarray, test_scores: np.ndarray, selection: dict,
                 num_train_images: int, started: float, trained: float) -> ProtocolResult:
    """The one evaluation on test, of the model the validation split selected."""
    test_targets = dataset.targets(test)
    return ProtocolResult(
        metrics=auroc_per_class(test_targets, test_scores, dataset.label_columns),
        headline="mean_auroc",
        selection=selection,
        num_train_images=num_train_images,
        predictions={"scores": test_scores.astype(np.float32), "targets": test_targets.astype(np.uint8),
                     "image_ids": np.array(dataset.index["image_id"].iloc[test].tolist())},
        timing={"train_s": trained - started, "test_s": time.perf_counter() - trained},
    )


def load_encoder(state_dict: dict, device: torch.device) -> nn.Module:
    """The encoder of ``state_dict``, ResNet-18 or ResNet-50 as its keys say."""
    return resnet_encoder(backbone_of_state(state_dict), state_dict).to(device)


def _as_input(images_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.array(images_uint8)).to(device).float().div_(255.0)
    return to_model_input(x.unsqueeze(1))


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Model outputs for uint8 images (N, H, W), in eval mode, batched."""
    was_training = model.training
    model.eval()
    outputs = [model(_as_input(images[start : start + batch_size], device)).float().cpu() for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(outputs).numpy()


def reestimate_batchnorm(encoder: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> None:
    """Replace the encoder's BatchNorm running statistics by their average over ``images``.

    Why every frozen probe does this: an untrained ResNet's statistics are its initial
    mean 0 / variance 1, so in eval mode it normalises nothing and the image's raw intensity
    reaches its pooled features (measured on phantom-nih at 64 px: a random ResNet-18 probes
    at 61.4 / 59.6 mean AUROC as it is, 50.4 / 50.3 with re-estimated statistics, seeds 0/1).
    A pretrained encoder's statistics come from augmented views of the pretraining set, and
    the evaluation sets are other sites. Re-estimating on the evaluation set's clean training
    images (AdaBN, Li et al. 2016) gives every row the same footing; weights are untouched.
    torch's ``update_bn`` does the cumulative average (momentum None) in train mode.
    """
    batches = (_as_input(images[start : start + batch_size], device) for start in range(0, len(images), batch_size))
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, encoder)
    encoder.eval()


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator):
    """Endless mini-batches of positions in 0..count-1: a new permutation whenever one runs out."""
    order, position = torch.randperm(count, generator=generator), 0
    while True:
        if position + batch_size > count:
            order, position = torch.randperm(count, generator=generator), 0
        yield order[position : position + batch_size]
        position += batch_size


class BestOnValidation:
    """The model state with the best validation score so far, and early stopping by patience.

    ``update`` returns True when ``patience`` evaluations in a row brought no better score
    (patience None or 0: never). ``restore`` loads the best state and returns the selection
    record (score, metric, step, steps run).
    """

    def __init__(self, metric: str, patience: int | None):
        self.metric, self.patience = metric, patience
        self.score, self.step, self.state, self.since_best = -1.0, None, None, 0
        self.curve: list[list[float]] = []  # [step, validation score] of every evaluation

    def update(self, score: float, step: int, model: nn.Module) -> bool:
        self.curve.append([step, float(score)])
        if score > self.score:
            self.score, self.step, self.since_best = score, step, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.since_best += 1
        return bool(self.patience) and self.since_best >= self.patience

    def restore(self, model: nn.Module, total_steps: int, steps_run: int) -> dict:
        model.load_state_dict(self.state)
        return {"val_score": self.score, "val_metric": self.metric, "step": self.step,
                "total_steps": total_steps, "steps_run": steps_run, "curve": self.curve}


def frozen_evaluation_epochs(epochs: int) -> set[int]:
    """The epochs after which the linear probe is scored on validation: 20 evenly spaced, and the last."""
    every = max(1, epochs // 20)
    return {epoch for epoch in range(1, epochs + 1) if epoch % every == 0} | {epochs}


class FrozenProtocol:
    """Linear probe on frozen features.

    Features are computed once per (encoder, dataset) by the caller's cache and standardised
    with the training-subset statistics (an affine map, so still a linear probe; it only
    conditions the optimisation). A logistic-regression layer is trained with Adam for each
    learning rate of the profile's grid; the (learning rate, epoch) with the best validation
    mean AUROC is selected and evaluated once on test.
    """

    name = "frozen"
    tasks = ("multilabel", "binary")
    description = "linear classifier on a frozen encoder (features cached per encoder)"

    def run(self, encoder_state: dict, dataset: PreparedDataset, label_fraction: float, seed: int,
            config: dict, device: torch.device, shared: dict[str, np.ndarray]) -> ProtocolResult:
        started = time.perf_counter()
        train = dataset.label_fraction_positions(label_fraction, seed)
        val, test = dataset.split_positions("val"), dataset.split_positions("test")
        x_all = torch.from_numpy(shared["features"])
        mean = x_all[train].mean(0, keepdim=True)
        std = x_all[train].std(0, keepdim=True).nan_to_num(0.0) if len(train) > 1 else torch.zeros_like(mean)
        # a feature constant on the labelled subset (a ReLU channel silent on 13 images) is
        # left unscaled: dividing by its ~0 std would blow up its value on val and test
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        x = (x_all - mean) / std
        x_train, x_val, x_test = x[train], x[val], x[test]  # gathered once, not per mini-batch
        y_train = torch.from_numpy(dataset.targets(train))
        y_val = dataset.targets(val)
        best = {"val_score": -1.0}
        curves: dict[str, list[list[float]]] = {}  # learning rate -> [epoch, validation score]
        for learning_rate in config["learning_rates"]:
            layer, best = _probe_one_rate(learning_rate, x_train, y_train, x_val, y_val, dataset.label_columns, seed, config,
                                          curves, best)
        trained = time.perf_counter()
        layer.load_state_dict(best.pop("state"))
        best["curves"] = curves
        with torch.no_grad():
            test_scores = torch.sigmoid(layer(x_test)).numpy()
        return _test_result(dataset, test, test_scores, best, len(train), started, trained)

    # the features depend on this protocol's definition, not only on the encoder: a stored
    # feature file of another version is never reused (runner: shared file names carry it)
    shared_version = "bn-train"

    def prepare_shared(self, encoder_state: dict, dataset: PreparedDataset, device: torch.device) -> dict:
        """Pooled encoder features of every image, computed once per (encoder, dataset).

        The BatchNorm statistics are first re-estimated on the dataset's training images
        (labels unused), for every encoder alike; see ``reestimate_batchnorm``.
        """
        encoder = load_encoder(encoder_state, device)
        reestimate_batchnorm(encoder, dataset.images[dataset.split_positions("train")], device)
        return {"features": predict(encoder, dataset.images, device)}


def _probe_one_rate(learning_rate: float, x_train, y_train, x_val, y_val, label_columns, seed: int, config: dict,
                    curves: dict, best: dict) -> tuple[nn.Linear, dict]:
    """Train the linear probe at one learning rate; its validation curve goes into ``curves``, and
    ``best`` (over every rate so far) is returned updated with the best (rate, epoch) and its weights."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(x_train.shape[1], len(label_columns))
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=learning_rate, weight_decay=config["weight_decay"])
    evaluated = frozen_evaluation_epochs(config["epochs"])
    for epoch in range(1, config["epochs"] + 1):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(x_train), config["batch_size"]):
            chunk = order[start : start + config["batch_size"]]
            loss = F.binary_cross_entropy_with_logits(layer(x_train[chunk]), y_train[chunk])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch not in evaluated:
            continue
        with torch.no_grad():
            val_scores = layer(x_val).numpy()
        score = auroc_per_class(y_val, val_scores, label_columns)["mean_auroc"] or 0.0
        curves.setdefault(f"{learning_rate:g}", []).append([epoch, float(score)])
        if score > best["val_score"]:
            best = {"val_score": score, "val_metric": "mean_auroc", "learning_rate": learning_rate, "epoch": epoch,
                    "state": copy.deepcopy(layer.state_dict())}
    return layer, best


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
        optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
        batch_size = min(config["batch_size"], len(train))
        total_steps = int(config["max_steps"])
        recipe = ViewRecipe(crop_scale=tuple(config["crop_scale"]), flip_probability=0.0, jitter_probability=0.0, blur_probability=0.0)
        train_images = torch.from_numpy(np.ascontiguousarray(dataset.images[train]))
        train_targets = torch.from_numpy(dataset.targets(train)).to(device)
        val_targets = dataset.targets(val)
        size = dataset.image_size
        best = BestOnValidation("mean_auroc", config.get("patience"))
        batches = shuffled_batches(len(train), batch_size, generator)
        model.train()
        for step in tqdm(range(1, total_steps + 1), desc="finetune", unit="step", leave=False, disable=None):
            chunk = next(batches)
            views = augment(train_images[chunk].to(device), recipe, size, generator)  # drawn on the CPU: the same views on any device
            loss = F.binary_cross_entropy_with_logits(model(to_model_input(views)), train_targets[chunk.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % config["eval_every"] == 0 or step == total_steps:
                val_scores = predict(model, dataset.images[val], device)
                if best.update(auroc_per_class(val_targets, val_scores, dataset.label_columns)["mean_auroc"] or 0.0, step, model):
                    break  # early stopping: no better validation score for `patience` evaluations
        trained = time.perf_counter()
        selection = best.restore(model, total_steps, step)
        test_scores = expit(predict(model, dataset.images[test], device))
        result = _test_result(dataset, test, test_scores, selection, len(train), started, trained)
        gradcam = config.get("gradcam") or {}
        if (float(label_fraction) in [float(f) for f in gradcam.get("fractions", [])]
                and dataset.name in gradcam.get("datasets", [dataset.name])):
            # Figure 2: heatmaps of the selected model on the boxed test images, scored against the boxes
            cam_started = time.perf_counter()
            layer_name = gradcam_layer_name(dataset.image_size)
            scores, arrays = gradcam_on_boxes(model, getattr(model[0], layer_name)[-1], dataset, test, _as_input, device,
                                              int(gradcam.get("max_heatmaps", 64)))
            scores["target_layer"] = layer_name
            if arrays:
                position_of = dict(zip(dataset.index["image_id"], range(len(dataset.index))))
                arrays["cam_images"] = np.stack([dataset.images[position_of[i]] for i in arrays["cam_image_ids"]])
            result.metrics["localisation"] = scores
            result.predictions.update(arrays)
            result.timing["gradcam_s"] = time.perf_counter() - cam_started
        return result

