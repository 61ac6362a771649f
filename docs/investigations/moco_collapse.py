"""Investigation: does MoCo v2's query branch collapse even when its keys cannot move?

The smallest loop that reproduces what `standard` pretraining showed for MoCo v2 (its loss
rising to ln(K+1), the value of a constant embedding, and a frozen probe at random-init level):
the key encoder stays at its initialisation (no momentum update, no shuffle-BN), each step takes
the next 64 phantom-nih training images, the query encoder and head take one optimiser step (by
default MoCo v2's: SGD, momentum 0.9, weight decay 1e-4; or LARS) on lightly's InfoNCE loss with a
queue of keys.
Every ``--every`` steps it prints the loss and the mean cosine similarity between the
projections of different images in the batch (1.0: every image has the same direction).

    python docs/investigations/moco_collapse.py --lr 0.075 --steps 120   # standard's lr at batch 64
    python docs/investigations/moco_collapse.py --lr 0                    # the queue filling, no learning
    python docs/investigations/moco_collapse.py --train head              # only the head moves: it collapses
    python docs/investigations/moco_collapse.py --train encoder           # only the encoder moves: it spreads
    python docs/investigations/moco_collapse.py --optimizer lars --lr 0.3 --train head   # LARS: it still collapses
    python docs/investigations/moco_collapse.py --prefill --train head    # a queue of real keys from step 0: the same
    python docs/investigations/moco_collapse.py --head-batch-norm --train head   # BatchNorm in the head: no collapse here
"""

import argparse
import dataclasses

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from cxrbench.benchmark.profiles import load_profile, method_hyperparameters
from cxrbench.datasets import DATASETS
from cxrbench.methods import get_method
from cxrbench.methods.backbone import to_model_input
from cxrbench.methods.base import split_weight_decay
from cxrbench.methods.lars import LARS


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.075, help="learning rate (standard's SGD: base_lr 0.3 x 64 / 256)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--queue", type=int, default=1024)
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--optimizer", choices=["sgd", "lars"], default="sgd",
                        help="sgd: MoCo v2's (momentum 0.9, weight decay 1e-4 on every parameter); lars: as SimCLR's "
                             "(biases and norms neither decayed nor adapted), with MoCo v2's weight decay 1e-4")
    parser.add_argument("--lars-eta", type=float, default=0.02, help="LARS trust coefficient (with --optimizer lars)")
    parser.add_argument("--prefill", action="store_true",
                        help="fill the queue with keys of real images before the first step (MoCo's own start: random vectors)")
    parser.add_argument("--head-batch-norm", action="store_true", help="BatchNorm after each layer of the head, as in MoCo v3")
    parser.add_argument("--train", choices=["all", "head", "encoder"], default="all",
                        help="which part of the query branch the optimiser moves (the other stays at its initialisation)")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    dataset = DATASETS.get("phantom-nih")().load(profile["data"])
    train = torch.from_numpy(dataset.images[dataset.split_positions("train")].copy())
    torch.manual_seed(0)
    hyperparameters = dataclasses.replace(method_hyperparameters(profile, "mocov2"), head_batch_norm=args.head_batch_norm)
    method = get_method("mocov2")(hyperparameters).train()
    frozen = {"head": method.encoder, "encoder": method.projection_head}.get(args.train)
    if frozen is not None:
        frozen.requires_grad_(False)
    criterion = NTXentLoss(temperature=hyperparameters.temperature, memory_bank_size=(args.queue, hyperparameters.projection_dim))
    generator = torch.Generator().manual_seed(0)
    if args.optimizer == "lars":
        groups = split_weight_decay(method, 1e-4)
        optimizer = LARS(groups, lr=args.lr, momentum=0.9, weight_decay=1e-4, trust_coefficient=args.lars_eta)
    else:
        optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=args.lr, momentum=0.9,
                                    weight_decay=1e-4)
    order = torch.randperm(len(train), generator=generator)
    batches = len(train) // 64
    others = ~torch.eye(64, dtype=torch.bool)
    if args.prefill:
        # the queue as the end of an epoch over the same order would leave it: the keys of the
        # epoch's last batches, oldest first; at most half an epoch, so that no query of the first
        # steps meets its own image's key among the negatives
        if args.queue % 64 or args.queue > (batches // 2) * 64:
            parser.error(f"--prefill: --queue {args.queue} must be a multiple of 64 and at most {(batches // 2) * 64} "
                         f"(half of the {batches} batches of {len(train)} training images)")
        prefill_views = torch.Generator().manual_seed(1)  # leaves the training views as they are without --prefill
        with torch.no_grad():
            for batch in range(batches - args.queue // 64, batches):
                images = train[order[batch * 64 : (batch + 1) * 64]]
                keys = method.key_projection_head(method.key_encoder(to_model_input(method.make_views(images, prefill_views)[1])))
                criterion.memory_bank(F.normalize(keys, dim=1), update=True)
    for step in range(args.steps):
        start = (step % batches) * 64
        views = method.make_views(train[order[start : start + 64]], generator=generator)
        query = method.projection_head(method.encoder(to_model_input(views[0])))
        with torch.no_grad():
            key = method.key_projection_head(method.key_encoder(to_model_input(views[1])))  # never updated here
        loss = criterion(query, key)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps - 1:
            directions = F.normalize(query.detach(), dim=1)
            print(f"step {step}: loss {loss.item():.3f}, cos between images {(directions @ directions.T)[others].mean():.3f}, "
                  f"output norm {query.detach().norm(dim=1).mean():.2f}", flush=True)


if __name__ == "__main__":
    main()
