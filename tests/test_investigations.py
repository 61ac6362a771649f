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


def patients(draws, count=300):
    return [phantom._sample_patient(draws(np.random.default_rng(seed)), phantom.NIH_LIKE) for seed in range(count)]


def test_wider_phantom_at_spread_1_draws_the_built_in_patients():
    wider = load_script("wider_phantom")
    built_in = patients(lambda rng: rng)
    same = patients(lambda rng: wider._WiderDraws(rng, 1.0))
    assert built_in == same


def test_wider_phantom_multiplies_the_anatomy_spread_and_keeps_the_rest():
    wider = load_script("wider_phantom")
    built_in = patients(lambda rng: rng)
    wide = patients(lambda rng: wider._WiderDraws(rng, 3.0))
    spread = lambda group, field: np.std([getattr(p, field) for p in group])  # noqa: E731
    assert 2.7 < spread(wide, "lung_centre_y") / spread(built_in, "lung_centre_y") < 3.3
    assert 2.5 < spread(wide, "tissue_density") / spread(built_in, "tissue_density") < 3.5
    # angles and phases are not anatomy spread: drawn as before, from the same stream
    assert [p.rib_phase for p in wide] == [p.rib_phase for p in built_in]
