"""Investigation: run another investigation script on a phantom whose patients differ more.

Why MoCo v2 (and BYOL, SimSiam) might not learn under `standard`: the phantom's patients
differ little (anatomy drawn with standard deviations of 1-2 % of the image width) next to
what the views' crops and intensity jitter change, so at initialisation a view's nearest
neighbour is almost never its own image's other view. This wrapper draws every patient-level
anatomy value of the phantom (`phantom._sample_patient`) with ``--spread`` times its standard
deviation (and the tissue density's range widened alike), clips the lung size to a sane range,
generates that phantom into its own cache folder (~/.cache/cxrbench-spreadK; the built-in
phantom's cache is not touched) and runs
the given script in this process:

    python docs/investigations/wider_phantom.py --spread 3 docs/investigations/init_similarity.py --methods mocov2
    python docs/investigations/wider_phantom.py --spread 3 docs/investigations/learning_curve.py \\
        --method mocov2 --profile standard

``--spread 1`` reproduces the built-in phantom exactly (same generator draws). A patch rather
than a profile option: no profile uses it, and the generator's drawing order stays as it is.
"""

import argparse
import os
import runpy
import sys
from pathlib import Path

import numpy as np


class _WiderDraws:
    """A numpy generator whose normal draws have ``spread`` times the scale asked for."""

    def __init__(self, rng: np.random.Generator, spread: float):
        self._rng, self._spread = rng, spread

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._rng.normal(loc, self._spread * scale, size)

    def uniform(self, low=0.0, high=1.0, size=None):
        # tissue density: the one uniform that is anatomy, not an angle or a phase (at spread 1 the
        # bounds are passed as they are, so that the draws equal the built-in ones to the last bit)
        if (low, high) == (0.85, 1.15) and self._spread != 1:
            centre, half = (low + high) / 2, (high - low) / 2 * self._spread
            return self._rng.uniform(centre - half, centre + half, size)
        return self._rng.uniform(low, high, size)

    def __getattr__(self, name):
        return getattr(self._rng, name)


def widen_phantom(spread: float, cache: str) -> None:
    os.environ["CXRBENCH_CACHE"] = cache  # before cxrbench reads it
    from cxrbench.datasets import phantom

    # a generator version of its own, so that no cached phantom of another spread is reused
    phantom.GENERATOR_VERSION = f"{phantom.GENERATOR_VERSION}-spread{spread:g}"
    sample_patient = phantom._sample_patient

    def wider_patient(rng, site):
        patient = sample_patient(_WiderDraws(rng, spread), site)
        patient.lung_half_width = float(np.clip(patient.lung_half_width, 0.09, 0.19))
        patient.lung_half_height = float(np.clip(patient.lung_half_height, 0.18, 0.36))
        patient.tissue_density = float(np.clip(patient.tissue_density, 0.5, 1.5))
        return patient

    phantom._sample_patient = wider_patient


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", type=float, required=True, help="factor on the patient-level anatomy's spread (1: built-in)")
    parser.add_argument("--cache", default=None, help="cache folder of the wider phantom; default: ~/.cache/cxrbench-spreadK")
    parser.add_argument("script", help="the investigation script to run")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args()
    cache = args.cache or str(Path.home() / ".cache" / f"cxrbench-spread{args.spread:g}")
    widen_phantom(args.spread, cache)
    sys.argv = [args.script, *args.arguments]
    runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
