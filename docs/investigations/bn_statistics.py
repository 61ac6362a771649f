"""Investigation: how much of a frozen linear probe's AUROC comes from BatchNorm running statistics?

A randomly initialised ResNet-18 in eval mode has BatchNorm statistics mean 0 / variance 1, so
raw image intensity passes through to its features; a pretrained encoder carries statistics
estimated on augmented views. This script probes each encoder twice on phantom-nih under the
profile's frozen protocol: as it is, and after re-estimating the BatchNorm statistics on the
clean training images (cumulative average, weights untouched).

    python docs/investigations/bn_statistics.py --results results/quick --methods vicreg,simclr,... --random-seeds 0,1
"""

import argparse

import torch

from cxrbench.benchmark.profiles import load_profile
from cxrbench.benchmark.protocols.registry import PROTOCOLS
from cxrbench.benchmark.protocols.base import as_input, load_encoder
from cxrbench.datasets import DATASETS
from cxrbench.methods import get_method
from cxrbench.methods.backbone import encoder_state_dict


def reestimate_batchnorm(state, dataset, device):
    encoder = load_encoder(state, device)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over all batches
    encoder.train()
    train = dataset.split_positions("train")
    with torch.no_grad():
        for start in range(0, len(train), 256):
            encoder(as_input(dataset.images[train[start:start + 256]], device))
    return encoder_state_dict(encoder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a bench run --out directory with pretrained encoders")
    parser.add_argument("--methods", default="", help="comma-separated pretrained methods")
    parser.add_argument("--random-seeds", default="0", help="seeds of random (Sup.1) encoders to probe too")
    parser.add_argument("--profile", default="quick")
    args = parser.parse_args()
    device = torch.device("cpu")
    profile = load_profile(args.profile)
    dataset = DATASETS.get("phantom-nih")().load(profile["data"])
    frozen, config = PROTOCOLS["frozen"], profile["evaluation"]["frozen"]
    encoders = {}
    for seed in [int(s) for s in args.random_seeds.split(",") if s]:
        torch.manual_seed(seed)
        encoders[f"sup1 (seed {seed})"] = get_method("sup1")().export_encoder()
    for method in [m for m in args.methods.split(",") if m]:
        path = f"{args.results}/pretrain/{method}__phantom-nih/encoder.pth"
        encoders[method] = torch.load(path, map_location="cpu", weights_only=True)
    for name, state in encoders.items():
        scores = {}
        for label, candidate in (("as is", state), ("BN re-estimated", reestimate_batchnorm(state, dataset, device))):
            shared = frozen.prepare_shared(candidate, dataset, device)
            result = frozen.run(candidate, dataset, 100, 0, config, device, shared)
            scores[label] = round(result.metrics["mean_auroc"], 4)
        print(name, scores, flush=True)


if __name__ == "__main__":
    main()
