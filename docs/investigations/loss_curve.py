"""Investigation: a method's pretraining loss at every step of a profile's schedule.

The pretraining record keeps one mean per epoch (two points on the quick profile); this runs
the same ``pretrain`` with the profile's settings and writes every step's loss, so that two
checkouts can be compared step by step (run it with each on ``PYTHONPATH``):

    python docs/investigations/loss_curve.py --method simclr --profile quick --out simclr.json

Used for the faithfulness pass's loss-scale changes (SimCLR x2, BYOL's official 2 - 2 cos form).
"""

import argparse
import json

import torch

from cxrbench.benchmark.pretraining.loop import pretrain
from cxrbench.benchmark.profiles import load_profile, method_hyperparameters
from cxrbench.datasets import DATASETS
from cxrbench.methods import get_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", required=True, help="JSON file: the loss of every step and the per-epoch history")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    settings = profile["pretrain"]
    dataset = DATASETS.get(settings["dataset"])().load(profile["data"])
    method = get_method(args.method)(method_hyperparameters(profile, args.method))
    losses = []
    step = method.training_step

    def logged(views):  # the loss of each step, as the runner's StepRunner computes it
        loss, logs = step(views)
        losses.append(float(loss.item()))
        return loss, logs

    method.training_step = logged
    torch.manual_seed(0)
    result = pretrain(method, dataset, batch_size=int(settings["batch_size"]), epochs=float(settings["epochs"]),
                      max_steps=settings.get("max_steps"), seed=0, device=torch.device("cpu"))
    with open(args.out, "w") as file:
        json.dump({"method": args.method, "profile": args.profile, "losses": losses, "history": result.history}, file)
    print(args.method, " ".join(f"{loss:.4f}" for loss in losses))


if __name__ == "__main__":
    main()
