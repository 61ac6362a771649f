"""Decoding released images (PNG, DICOM) into square uint8 greyscale arrays.

One mapping for every dataset, so that a pixel value means the same thing everywhere:

PNG    forced to one grey channel (some NIH PNGs are RGB/RGBA); 16-bit PNGs are scaled by
       their bit depth, not clipped.
DICOM  pydicom, with the pylibjpeg plugins for JPEG baseline/lossless, JPEG 2000 and RLE:
       stored values -> modality LUT (rescale slope/intercept) -> VOI LUT, or the first
       window centre/width when there is no LUT -> linear map of the resulting range to
       [0, 1] (with no VOI at all: the image's own min..max) -> inverted for MONOCHROME1
       (where high values are dark) -> uint8.
Resize square (no padding, the aspect ratio is not kept: chest films are close to square
and every benchmark we compare with does the same) with an antialiasing filter for images
and nearest-neighbour for masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


class ImageError(ValueError):
    """An image that cannot be decoded; the message says why."""


def read_png(path: Path) -> np.ndarray:
    """A PNG (or any PIL-readable file) as a 2-D uint8 grey image."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                depth = 65535.0 if array.max() > 255 else 255.0
                return np.clip(array / depth * 255 + 0.5, 0, 255).astype(np.uint8)
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:  # PIL's ways of saying "not an image"
        raise ImageError(f"cannot decode image: {error}") from None


def read_dicom(path: Path) -> np.ndarray:
    """A DICOM image as a 2-D uint8 grey image, by the mapping in the module docstring."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for truncated or unsupported files
        raise ImageError(f"cannot decode DICOM: {type(error).__name__}: {error}") from None
    if pixels.ndim != 2:
        raise ImageError(f"expected one greyscale frame, found pixel data of shape {pixels.shape}")
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
        values = apply_voi_lut(values, dataset, index=0).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if dataset.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    path = Path(path)
    return read_dicom(path) if path.suffix.lower() in (".dcm", ".dicom") else read_png(path)


def resize_square(image: np.ndarray, size: int, *, mask: bool = False) -> np.ndarray:
    """Resize a 2-D uint8 array to size x size (antialiased; nearest for 0/1 masks)."""
    if image.shape == (size, size):
        return image
    resample = Image.Resampling.NEAREST if mask else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(image).resize((size, size), resample=resample), dtype=np.uint8)
