"""What every protocol shares: the result type, the encoder's loading, batched prediction,
best-on-validation selection and the supervised training loop of fine-tuning and segmentation.

Every protocol selects on the validation split and touches the test split exactly once, with
the selected model. A protocol receives an encoder state dict and a prepared dataset; it never
knows which method produced the encoder. Plugin protocols may build on these pieces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxrbench.benchmark.protocols.metrics import auroc_per_class
from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.methods.backbone import backbone_of_state, resnet_encoder, to_model_input


@dataclass
class ProtocolResult:
    metrics: dict
    headline: str  # the key of ``metrics`` that tables report (mean_auroc, dice_per_image)
    selection: dict  # what validation selected, with its score under ``val_score``
    num_train_images: int
    predictions: dict[str, np.ndarray]  # test predictions, stored with the record
    timing: dict = field(default_factory=dict)


def test_result(dataset: PreparedDataset, test: np.ndarray, test_scores: np.ndarray, selection: dict,
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


def as_input(images_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.array(images_uint8)).to(device).float().div_(255.0)
    return to_model_input(x.unsqueeze(1))


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Model outputs for uint8 images (N, H, W), in eval mode, batched."""
    was_training = model.training
    model.eval()
    outputs = [model(as_input(images[start : start + batch_size], device)).float().cpu() for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(outputs).numpy()




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



def train_with_validation(model: nn.Module, training_loss: Callable[[torch.Tensor], torch.Tensor],
                          validation_score: Callable[[], float], metric: str, train_count: int, config: dict,
                          generator: torch.Generator, description: str) -> dict:
    """The supervised loop that fine-tuning and segmentation share; returns the selection record.

    Adam with the section's ``learning_rate`` and ``weight_decay`` for ``max_steps`` steps on
    mini-batches of ``batch_size`` training positions (a new permutation whenever one runs
    out), whatever the label fraction: cells differ only in the labels they see.
    ``training_loss(positions)`` gives a batch's loss; every ``eval_every`` steps and at the
    end, ``validation_score()`` is recorded and the best model state kept; ``patience``
    evaluations without a better score stop early. The model ends in its best state.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    total_steps = int(config["max_steps"])
    best = BestOnValidation(metric, config.get("patience"))
    batches = shuffled_batches(train_count, min(config["batch_size"], train_count), generator)
    model.train()
    for step in tqdm(range(1, total_steps + 1), desc=description, unit="step", leave=False, disable=None):
        loss = training_loss(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config["eval_every"] == 0 or step == total_steps:
            if best.update(validation_score(), step, model):
                break  # early stopping: no better validation score for `patience` evaluations
    return best.restore(model, total_steps, step)
