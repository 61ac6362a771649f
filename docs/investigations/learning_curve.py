"""Investigation: does a method learn under given settings? Frozen AUROC along one pretraining.

Pretrains one method on phantom-nih under a profile (with ``--set`` overrides, as `bench run`
takes them), exports the encoder at the fractions of the schedule asked for, and probes each
snapshot (and a random initialisation, step 0) with the profile's frozen protocol on
phantom-nih at the label fractions asked for. One JSON line per snapshot on stdout: the
learning curve of that run, its loss per epoch and the relative weight change.

    python docs/investigations/learning_curve.py --method simclr --profile standard \\
        --at 0.25,0.5,1 --fractions 100,10

This is how the `standard` profile's settings were chosen (see the README's "Profiles").
"""

import argparse
import json
import time

import torch

from cxrbench.benchmark.pretraining.diagnostics import relative_change
from cxrbench.benchmark.pretraining.loop import TrainingOptions, pretrain
from cxrbench.benchmark.profiles import apply_overrides, load_profile, method_hyperparameters
from cxrbench.benchmark.protocols.registry import PROTOCOLS
from cxrbench.datasets import DATASETS
from cxrbench.methods import get_method


def probe(state, dataset, fractions, config, device, seed):
    frozen = PROTOCOLS["frozen"]
    shared = frozen.prepare_shared(state, dataset, device)
    scores = {}
    for fraction in fractions:
        result = frozen.run(state, dataset, fraction, seed, config, device, shared)
        scores[f"{fraction:g}%"] = round(100 * result.metrics["mean_auroc"], 2)
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override, as in bench run")
    parser.add_argument("--at", default="0.25,0.5,1", help="fractions of the schedule at which to probe")
    parser.add_argument("--fractions", default="100,10", help="label fractions of the probe, percent")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cpu")
    profile = apply_overrides(load_profile(args.profile), args.set)
    dataset = DATASETS.get(profile["pretrain"]["dataset"])().load(profile["data"])
    config = profile["evaluation"]["frozen"]
    fractions = [float(f) for f in args.fractions.split(",")]
    torch.manual_seed(args.seed)
    method = get_method(args.method)(method_hyperparameters(profile, args.method))
    initial = method.export_encoder()
    settings = profile["pretrain"]
    steps_per_epoch = len(dataset.split_positions("train")) // settings["batch_size"]
    total = int(round(settings["epochs"] * steps_per_epoch))
    if settings.get("max_steps"):
        total = min(total, int(settings["max_steps"]))
    at = sorted({max(1, int(round(float(f) * total))) for f in args.at.split(",")})
    print(json.dumps({"method": args.method, "settings": args.set, "steps": total, "step": 0,
                      "frozen": probe(initial, dataset, fractions, config, device, args.seed)}), flush=True)
    started = time.perf_counter()
    result = pretrain(method, dataset, batch_size=settings["batch_size"], epochs=settings["epochs"],
                      max_steps=settings.get("max_steps"), seed=args.seed, device=device,
                      options=TrainingOptions.from_settings(settings), snapshot_steps=tuple(at))
    seconds = time.perf_counter() - started
    losses = [round(entry.get("loss", float("nan")), 3) for entry in result.history]
    for step in at:
        state = result.snapshots[step]
        print(json.dumps({"method": args.method, "step": step, "pretrain_s": round(seconds, 1),
                          "weight_change": round(relative_change(initial, state), 3),
                          "frozen": probe(state, dataset, fractions, config, device, args.seed),
                          "loss_per_epoch": losses if step == at[-1] else None}), flush=True)


if __name__ == "__main__":
    main()
