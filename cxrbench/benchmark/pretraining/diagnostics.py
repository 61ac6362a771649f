"""Collapse diagnostics of an encoder: is its representation spread out, or collapsed?

Computed on the pooled 512-d features of a fixed set of validation images, for every
pretrained encoder (and, for comparison, for a randomly initialised one):

* ``feature_std``: mean over dimensions of the per-dimension standard deviation of the
  L2-normalised features. A fully collapsed encoder gives 0; features spread uniformly on
  the sphere give about 1/sqrt(512) = 0.044.
* ``effective_rank``: exp of the entropy of the normalised singular values of the centred
  feature matrix (Roy & Vetterli 2007): how many directions the features really use
  (between 1 and min(N, 512));
* ``relative_weight_change`` (pretrained only): how far the weights moved from the
  initialisation. Features are compared in eval mode, so BatchNorm running statistics
  (default at initialisation, learned after pretraining) affect both numbers too.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrbench.datasets.prepared import PreparedDataset


def feature_diagnostics(features: np.ndarray) -> dict[str, float]:
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    normalised = torch.nn.functional.normalize(x, dim=1)
    std = normalised.std(dim=0).mean().item()
    centred = x - x.mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    p = singular / singular.sum().clamp(min=1e-12)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum().item()
    return {"feature_std": std, "effective_rank": float(np.exp(entropy)), "num_images": int(len(x))}


def encoder_diagnostics(encoder_state: dict, dataset: PreparedDataset, device: torch.device, max_images: int = 512) -> dict:
    from cxrbench.benchmark.protocols.base import load_encoder, predict

    positions = dataset.split_positions("val")[:max_images]
    features = predict(load_encoder(encoder_state, device), dataset.images[positions], device)
    return feature_diagnostics(features)


def relative_change(before: dict, after: dict) -> float:
    """||w_after - w_before|| / ||w_before|| over the learnable tensors (running statistics excluded)."""
    keys = [key for key in before if before[key].is_floating_point() and "running_" not in key]
    difference = sum(float((after[key].float() - before[key].float()).pow(2).sum()) for key in keys)
    norm = sum(float(before[key].float().pow(2).sum()) for key in keys)
    return (difference / norm) ** 0.5 if norm > 0 else 0.0
