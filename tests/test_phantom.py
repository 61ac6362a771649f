import numpy as np
import pytest

from cxrbench.datasets import DATASETS, PreparedDataset
from cxrbench.datasets import phantom


def _first_images(site, count, size=64, seed=0):
    out = []
    for item in phantom.generate_site(site, 30, size, seed):
        out.append(item)
        if len(out) == count:
            break
    return out


def test_generation_is_deterministic_per_seed():
    first = _first_images(phantom.NIH_LIKE, 6)
    again = _first_images(phantom.NIH_LIKE, 6)
    other = _first_images(phantom.NIH_LIKE, 6, seed=1)
    for (pid_a, _, a), (pid_b, _, b) in zip(first, again):
        assert pid_a == pid_b
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert a.boxes == b.boxes
    assert any(not np.array_equal(a.pixels, c.pixels) for (_, _, a), (_, _, c) in zip(first, other))


def test_images_of_one_patient_differ_in_positioning_and_exposure():
    images = [im for pid, _, im in _first_images(phantom.NIH_LIKE, 12) if pid == "P00000"]
    assert len(images) >= 2
    difference = np.abs(images[0].pixels.astype(int) - images[1].pixels.astype(int)).mean()
    assert difference > 3  # grey levels: a visibly different acquisition, not a copy


def test_every_finding_has_a_box_inside_the_image():
    rng = np.random.default_rng(0)
    site = phantom.NIH_LIKE
    patient = phantom._sample_patient(rng, site)
    image = phantom.render_image(rng, patient, site, list(phantom.FINDINGS), 64)
    assert sorted(name for name, *_ in image.boxes) == sorted(phantom.FINDINGS)
    for name, x, y, w, h in image.boxes:
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 64 and y + h <= 64, name


def test_nodule_is_small_and_local():
    rng = np.random.default_rng(3)
    site = phantom.NIH_LIKE
    patient = phantom._sample_patient(rng, site)
    state = rng.bit_generator.state
    with_nodule = phantom.render_image(rng, patient, site, ["nodule"], 64)
    rng.bit_generator.state = state
    (_, x, y, w, h), = with_nodule.boxes
    assert w * h <= 0.01 * 64 * 64  # at most 1% of the image


def test_pneumothorax_mask_lies_in_its_box():
    rng = np.random.default_rng(5)
    site = phantom.SIIM_LIKE
    patient = phantom._sample_patient(rng, site)
    image = phantom.render_image(rng, patient, site, ["pneumothorax"], 64)
    (_, x, y, w, h), = image.boxes
    assert image.mask is not None and image.mask.sum() > 0
    rows, cols = np.nonzero(image.mask)
    assert rows.min() >= y and rows.max() < y + h and cols.min() >= x and cols.max() < x + w


def test_prepared_phantom_has_patient_disjoint_splits_and_imbalanced_labels(smoke_nih):
    index = smoke_nih.index
    per_patient = index.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    assert set(index["split"]) == {"train", "val", "test"}
    assert index.groupby("patient_id").size().max() >= 2
    prevalence = index[smoke_nih.label_columns].mean()
    assert (prevalence < 0.35).all() and (prevalence > 0).any()


@pytest.mark.parametrize("name", ["phantom-vindr", "phantom-rsna", "phantom-siim"])
def test_other_sites_load_with_their_tasks(name, smoke_profile):
    dataset = DATASETS.get(name)().load(smoke_profile["data"])
    assert dataset.images.dtype == np.uint8 and dataset.images.shape[1:] == (64, 64)
    if dataset.task == "segmentation":
        assert dataset.masks is not None and dataset.masks.shape == dataset.images.shape
    if dataset.task == "binary":
        assert dataset.label_columns == ["Pneumonia"]


def test_sites_differ_in_acquisition(smoke_profile):
    nih = DATASETS.get("phantom-nih")().load(smoke_profile["data"])
    rsna = DATASETS.get("phantom-rsna")().load(smoke_profile["data"])
    # RSNA-like films are washed out: lower contrast than the NIH-like ones
    assert np.asarray(rsna.images, dtype=float).std(axis=(1, 2)).mean() < np.asarray(nih.images, dtype=float).std(axis=(1, 2)).mean()


def test_label_fractions_are_nested_and_from_train(smoke_nih):
    train = set(smoke_nih.split_positions("train"))
    one = set(smoke_nih.label_fraction_positions(1, seed=0))
    ten = set(smoke_nih.label_fraction_positions(10, seed=0))
    full = set(smoke_nih.label_fraction_positions(100, seed=0))
    assert one <= ten <= full == train
    assert len(one) >= 1
    assert set(smoke_nih.label_fraction_positions(10, seed=1)) != ten


def test_interrupted_prepare_leaves_no_directory(tmp_path, monkeypatch):
    from cxrbench.datasets import prepared

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    index = __import__("pandas").DataFrame({"image_id": ["a"], "patient_id": ["p"], "split": ["train"]})
    monkeypatch.setattr(prepared.pd.DataFrame, "to_csv", fail)
    with pytest.raises(RuntimeError):
        prepared.write_prepared(tmp_path / "ds", manifest={"name": "x", "task": "binary", "label_columns": []},
                                index=index, images=np.zeros((1, 4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(prepared.DatasetError):
        PreparedDataset.load(tmp_path / "ds")
