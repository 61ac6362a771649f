"""Investigation: how far apart does a method's projection head put two images before any training?

A contrastive loss learns from the gap between a view's similarity to its positive and to
other images. This script takes 64 phantom-nih training images, makes each method's two
views, and prints (at initialisation, seed 0) the mean cosine similarity of the projections of
the two views of one image (positive) and of different images (others), and of the pooled
encoder features of different images; and how often a view's nearest projection is its own
image's other view (positive retrieved; chance 1/64). Used to find why MoCo v2 did not learn under `standard`
(README, "Does any method learn?"):

    python docs/investigations/init_similarity.py --methods mocov2,simclr
"""

import argparse

import torch
import torch.nn.functional as F

from cxrbench.benchmark.profiles import load_profile, method_hyperparameters
from cxrbench.datasets import DATASETS
from cxrbench.methods import get_method
from cxrbench.methods.backbone import to_model_input


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="mocov2,simclr", help="methods with a projection (or DenseCL's global) head")
    parser.add_argument("--profile", default="standard")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    dataset = DATASETS.get(profile["pretrain"]["dataset"])().load(profile["data"])
    images = torch.from_numpy(dataset.images[dataset.split_positions("train")[:64]].copy())
    others = ~torch.eye(len(images), dtype=torch.bool)
    for name in args.methods.split(","):
        torch.manual_seed(0)
        method = get_method(name)(method_hyperparameters(profile, name)).train()
        views = method.make_views(images, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            features = [method.encoder(to_model_input(view)) for view in views[:2]]
            head = getattr(method, "projection_head", None) or method.global_head  # DenseCL's global head
            projections = [F.normalize(head(f), dim=1) for f in features]
            similarity = projections[0] @ projections[1].T
            feature_similarity = F.normalize(features[0], dim=1) @ F.normalize(features[1], dim=1).T
        # how often a view's nearest projection among the 64 is its own image's other view (chance 1/64)
        retrieved = (similarity.argmax(dim=1) == torch.arange(len(images))).float().mean()
        print(f"{name}: projections cos positive {similarity.diag().mean():.4f}, other images {similarity[others].mean():.4f}, "
              f"positive retrieved {retrieved:.3f}; pooled features cos, other images {feature_similarity[others].mean():.4f}")


if __name__ == "__main__":
    main()
