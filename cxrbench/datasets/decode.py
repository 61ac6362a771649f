"""Decoding released images (PNG, DICOM) into square uint8 greyscale arrays.

One mapping for every dataset, so that a pixel value means the same thing everywhere:

PNG    forced to one grey channel (some NIH PNGs are RGB/RGBA); 16-bit PNGs are scaled by
       their bit depth, not clipped.
DICOM  pydicom, with the pylibjpeg plugins for JPEG baseline/lossless, JPEG 2000 and RLE:
       stored values -> modality LUT (rescale slope/intercept) -> to [0, 1] by the VOI:
       a VOI LUT (pydicom) divided by its output maximum, else the first window
       centre/width by the DICOM linear window function (PS3.3 C.11.2.1.2.1), else the
       image's own min..max -> inverted for MONOCHROME1 (high values dark) -> uint8.
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
    try:
        return _dicom_to_uint8(path)
    except ImageError:
        raise
    except Exception as error:  # pydicom raises many types for truncated, odd or unsupported files
        raise ImageError(f"cannot decode DICOM: {type(error).__name__}: {error}") from None


def window_to_unit(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window function, to [0, 1] instead of the output bit range."""
    if width < 1:
        raise ImageError(f"window width {width} < 1")
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value) -> float:
    return float(value[0]) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else float(value)


def _dicom_to_uint8(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array
    if pixels.ndim != 2:
        raise ImageError(f"expected one greyscale frame, found pixel data of shape {pixels.shape}")
    values = apply_modality_lut(pixels, dataset)
    if "VOILUTSequence" in dataset:
        lut_bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        scaled = apply_voi_lut(values, dataset, index=0).astype(np.float64) / (2**lut_bits - 1)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        scaled = window_to_unit(values.astype(np.float64), _first(dataset.WindowCenter), _first(dataset.WindowWidth))
    else:
        values = values.astype(np.float64)
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
