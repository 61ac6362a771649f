"""RotNet: self-supervised learning by predicting image rotations.

Faithfulness record
===================
Paper:         Gidaris, Singh, Komodakis. "Unsupervised Representation Learning by Predicting
               Image Rotations", ICLR 2018.
Official code: github.com/gidariss/FeatureLearningRotNet.

==================  ===================  ==========================
hyperparameter      official             this plugin (all profiles)
==================  ===================  ==========================
rotations           0, 90, 180, 270      0, 90, 180, 270
views per image     all four at once     all four at once
head                conv blocks (NIN)    one linear layer on pooled ResNet-18 features
optimiser           SGD, momentum 0.9,   same, nesterov
                    nesterov, wd 5e-4
learning rate       0.1                  0.1 (x batch/256 here)
==================  ===================  ==========================

Deviations: a linear head on pooled ResNet-18 features instead of the paper's NIN blocks
(the point of this package is to show the plugin interface, not to tune RotNet); no
augmentation besides rotation, as in the paper.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.methods import Method
from cxrbench.methods.backbone import to_model_input


@dataclass
class RotNetHyperparameters:
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


class RotNet(Method):
    display_name = "RotNet (plugin)"
    description = "Rotation prediction (Gidaris et al. 2018), example plugin package"
    Hyperparameters = RotNetHyperparameters

    def __init__(self, hyperparameters=None, backbone=None):
        super().__init__(hyperparameters, backbone)  # the run's trunk: ResNet-18 (512) or ResNet-50 (2048)
        self.classifier = nn.Linear(self.feature_dim, 4)

    def make_views(self, images, generator=None):
        grey = images.float().div(255.0).unsqueeze(1)
        return [torch.rot90(grey, k, dims=(2, 3)) for k in range(4)]

    def training_step(self, views):
        batch = views[0].shape[0]
        inputs = to_model_input(torch.cat(views))
        targets = torch.arange(4, device=inputs.device).repeat_interleave(batch)
        logits = self.classifier(self.encoder(inputs))
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(1) == targets).float().mean().item()
        return loss, {"loss": loss.item(), "rotation_accuracy": accuracy}

    def build_optimizer(self, batch_size):
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.base_lr * batch_size / 256, momentum=hp.momentum,
                               weight_decay=hp.weight_decay, nesterov=True)
