"""Investigation: run another investigation script on a phantom whose patients differ more.

Why MoCo v2 (and BYOL, SimSiam) might not learn under `standard`: the phantom's patients
differ little (anatomy drawn with standard deviations of 1-2 % of the image width) next to
what the views' crops and intensity jitter change, so at initialisation a view's nearest
neighbour is almost never its own image's other view. This wrapper draws the phantom's
patients (`phantom._sample_patient`) with ``--spread`` times the standard deviation of every
normal draw (the geometry of lungs, heart position, diaphragm, clavicle, ribs' spacing) and
``--spread`` times the tissue density's range; the lungs' size is clipped to a sane range, the
heart's width keeps the generator's own clip (so it widens less), and uniform draws of angles,
phases, rib curvature and heart aspect stay as they are. The phantom gets a generator version
of its own (``4-spread3``), so it is cached beside the built-in one and never mistaken for it.
Then the given script runs in this process:

    python docs/investigations/wider_phantom.py --spread 3 docs/investigations/init_similarity.py --methods mocov2
    python docs/investigations/wider_phantom.py --spread 3 docs/investigations/learning_curve.py \\
        --method mocov2 --profile standard

``--spread 1`` reproduces the built-in phantom exactly (the same draws; tests/test_investigations.py).
A patch rather than a profile option: no profile uses it, and the generator stays as it is.
"""

import argparse
import runpy
import sys

import numpy as np

from cxrbench.datasets import phantom


class _WiderDraws:
    """A numpy generator whose normal draws have ``spread`` times the scale asked for."""

    def __init__(self, rng: np.random.Generator, spread: float):
        self._rng, self._spread = rng, spread

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._rng.normal(loc, self._spread * scale, size)

    def __getattr__(self, name):
        return getattr(self._rng, name)


def wider_sampler(spread: float, sample_patient=phantom._sample_patient):
    """``phantom._sample_patient`` with ``spread`` times the patient-to-patient anatomy spread."""

    def sample(rng, site):
        patient = sample_patient(_WiderDraws(rng, spread), site)
        if spread != 1:  # at spread 1 the patient is the built-in one to the last bit
            # tissue density: the generator's uniform 0.85-1.15, widened about its centre (the
            # same draw: uniform draws of angles and phases are left alone)
            patient.tissue_density = 1.0 + spread * (patient.tissue_density - 1.0)
            patient.lung_half_width = float(np.clip(patient.lung_half_width, 0.09, 0.19))
            patient.lung_half_height = float(np.clip(patient.lung_half_height, 0.18, 0.36))
        return patient

    return sample


def widen_phantom(spread: float) -> None:
    """Patch the generator for this process: wider patients, under a version of their own."""
    phantom.GENERATOR_VERSION = f"{phantom.GENERATOR_VERSION}-spread{spread:g}"
    phantom._sample_patient = wider_sampler(spread, phantom._sample_patient)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", type=float, required=True, help="factor on the patient-level anatomy's spread (1: built-in)")
    parser.add_argument("script", help="the investigation script to run")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args()
    widen_phantom(args.spread)
    sys.argv = [args.script, *args.arguments]
    runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
