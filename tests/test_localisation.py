"""Localisation scores of heatmaps against boxes."""

import numpy as np
import pytest

from cxrbench.benchmark.protocols.localisation import _box_mask, localisation_scores


def test_pointing_game_and_mass_inside_the_box():
    box = _box_mask([(2, 2, 4, 4)], 10)  # x 2..5, y 2..5
    assert box.sum() == 16 and box[2, 2] and box[5, 5] and not box[6, 6]
    inside = np.zeros((10, 10))
    inside[3, 3], inside[8, 8] = 3.0, 1.0  # maximum in the box, a quarter of the mass outside
    outside = np.zeros((10, 10))
    outside[8, 8], outside[3, 3] = 3.0, 1.0
    empty = np.zeros((10, 10))  # its argmax (0, 0) would be a hit for a box at the corner: still a miss
    corner = _box_mask([(0, 0, 2, 2)], 10)
    scores = localisation_scores(np.stack([inside, outside, empty]), np.stack([box, box, corner]))
    assert scores["pointing_game"] == pytest.approx(1 / 3)
    assert scores["mass_inside_box"] == pytest.approx((0.75 + 0.25 + 0) / 3)
    assert scores["num_heatmaps"] == 3 and scores["empty_heatmaps"] == 1


def test_the_gradcam_target_is_the_deepest_stage_with_a_map_of_at_least_7_by_7():
    from cxrbench.benchmark.protocols.localisation import gradcam_layer_name

    # layer4 at the paper's 224 px (7 x 7); at 64 px layer4 would be 2 x 2 and layer3 4 x 4: layer2 (8 x 8)
    assert [gradcam_layer_name(size) for size in (224, 160, 112, 64, 32)] == ["layer4", "layer3", "layer3", "layer2", "layer1"]
