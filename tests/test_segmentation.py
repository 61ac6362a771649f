"""Segmentation transfer: the U-Net takes the exported encoder whole; metrics follow their definitions."""

import numpy as np
import pytest
import torch

from cxrbench.benchmark.protocols.metrics import segmentation_metrics
from cxrbench.benchmark.protocols.registry import PROTOCOLS
from cxrbench.benchmark.protocols.segmentation import build_unet
from cxrbench.datasets import DATASETS
from cxrbench.methods import get_method


def test_the_unet_encoder_is_exactly_the_exported_encoder():
    torch.manual_seed(0)
    state = get_method("sup1")().export_encoder()
    unet = build_unet(state)
    loaded = unet.encoder.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(loaded[key], state[key]) for key in loaded)


def test_an_encoder_with_a_missing_key_fails_loudly():
    state = get_method("sup1")().export_encoder()
    del state["layer4.1.bn2.running_var"]
    with pytest.raises(ValueError, match="layer4.1.bn2.running_var"):
        build_unet(state)


def test_dice_iou_and_hd95_follow_their_definitions():
    truth = np.zeros((3, 16, 16), dtype=bool)
    predicted = np.zeros_like(truth)
    truth[1, 2:6, 2:6] = True  # 16 px
    predicted[1, 2:6, 4:8] = True  # 16 px, 8 shared
    predicted[2, 0, 0] = True  # a false positive on an empty image
    summary, per_image = segmentation_metrics(predicted, truth)
    assert per_image["dice"].tolist() == pytest.approx([1.0, 0.5, 0.0])  # empty/empty scores 1
    assert per_image["iou"].tolist() == pytest.approx([1.0, 8 / 24, 0.0])
    assert summary["dice_per_image"] == pytest.approx(0.5)
    assert summary["dice_global"] == pytest.approx(2 * 8 / (17 + 16))
    assert summary["dice_positive_images"] == pytest.approx(0.5)
    assert summary["hd95_images"] == 1 and np.isnan(per_image["hd95"][[0, 2]]).all()
    assert summary["hd95"] == pytest.approx(2.0)  # the boxes are 2 px apart at their far edges


def test_segmentation_protocol_stores_predictions_that_reproduce_its_metrics(smoke_profile):
    siim = DATASETS.get("phantom-siim")().load(smoke_profile["data"])
    torch.manual_seed(0)
    state = get_method("sup1")().export_encoder()
    config = dict(smoke_profile["evaluation"]["segmentation"], max_steps=2, eval_every=1)
    result = PROTOCOLS["segmentation"].run(state, siim, 100, 0, config, torch.device("cpu"))
    test = siim.split_positions("test")
    assert result.headline == "dice_per_image" and result.selection["step"] in (1, 2)
    masks = np.unpackbits(result.predictions["masks_packed"], axis=1)[:, : 64 * 64].reshape(len(test), 64, 64)
    recomputed, _ = segmentation_metrics(masks.astype(bool), np.asarray(siim.masks[test], dtype=bool))
    assert recomputed["dice_per_image"] == pytest.approx(result.metrics["dice_per_image"])
