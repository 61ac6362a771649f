"""The investigation scripts whose figures the README quotes: what they claim of themselves."""

import importlib.util
from pathlib import Path

import numpy as np

from cxrbench.datasets import phantom

SCRIPTS = Path(__file__).resolve().parents[1] / "docs" / "investigations"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patients(sample, count=300):
    return [sample(np.random.default_rng(seed), phantom.NIH_LIKE) for seed in range(count)]


def rendered(site, patients_count=6):
    return [(pid, index, image.pixels.tobytes(), image.boxes)
            for pid, index, image in phantom.generate_site(site, patients_count, 64, seed=0)]


def test_wider_phantom_at_spread_1_renders_the_built_in_images(monkeypatch):
    wider = load_script("wider_phantom")
    built_in, built_in_sampler = rendered(phantom.NIH_LIKE), phantom._sample_patient
    monkeypatch.setattr(phantom, "GENERATOR_VERSION", phantom.GENERATOR_VERSION)  # restored after the test
    monkeypatch.setattr(phantom, "_sample_patient", phantom._sample_patient)
    wider.widen_phantom(1.0)
    assert str(phantom.GENERATOR_VERSION).endswith("-spread1")  # cached apart from the built-in phantom
    assert rendered(phantom.NIH_LIKE) == built_in
    assert patients(phantom._sample_patient) == patients(built_in_sampler)  # not just equal after rounding


def test_wider_phantom_multiplies_each_normal_anatomy_draw_and_keeps_the_phases():
    wider = load_script("wider_phantom")
    built_in = patients(phantom._sample_patient)
    wide = patients(wider.wider_sampler(3.0))
    # the same stream: every normal deviation from its mean is three times the built-in one
    deviation = lambda group: np.array([p.lung_centre_y - 0.46 for p in group])  # noqa: E731
    np.testing.assert_allclose(deviation(wide), 3 * deviation(built_in), rtol=1e-9)
    density = lambda group: np.array([p.tissue_density - 1.0 for p in group])  # noqa: E731
    np.testing.assert_allclose(density(wide), 3 * density(built_in), atol=1e-9)
    assert [p.rib_phase for p in wide] == [p.rib_phase for p in built_in]
