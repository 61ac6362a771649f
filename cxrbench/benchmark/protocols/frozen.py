"""``frozen``: a linear probe on the encoder's pooled features, computed once per (encoder, dataset)."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.benchmark.protocols.base import ProtocolResult, as_input, load_encoder, predict, test_result
from cxrbench.benchmark.protocols.metrics import auroc_per_class
from cxrbench.datasets.prepared import PreparedDataset


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
    batches = (as_input(images[start : start + batch_size], device) for start in range(0, len(images), batch_size))
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, encoder)
    encoder.eval()




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
        return test_result(dataset, test, test_scores, best, len(train), started, trained)

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

