"""Procedural chest-radiograph phantom: the suite's built-in data.

Real chest X-ray datasets cannot be downloaded on every machine, so cxrbench ships a
deterministic generator of frontal chest radiographs. It is built to make the benchmark
*meaningful*, not only runnable:

* anatomy varies from patient to patient (lung size and shape, heart, ribs, clavicles,
  spine, diaphragm domes, vessel markings) and from image to image (positioning, exposure,
  contrast, noise), so a representation has to look past anatomy to see disease;
* every patient has several images, and splits are made by patient;
* findings are local and subtle relative to that variation, with imbalanced prevalence:
  nodule, mass, effusion, cardiomegaly, consolidation, atelectasis, pneumothorax. Every
  finding has a bounding box; pneumothorax also has a pixel mask;
* four "sites" mirror the paper's tasks, three of them with a domain shift (exposure curve,
  contrast, noise texture).

Phantom numbers are NOT chest X-ray results: they only show that a method, a protocol and
the tables work end to end and can tell methods apart.

Rendering model: an attenuation map ``A`` is built in the patient's own frame on a grid
that is already warped by the per-image positioning, so every structure (and every finding
box) lands in image pixels directly. ``A`` is rendered at twice the output size and
area-averaged down, which anti-aliases the smallest findings (a nodule is a few pixels).
The film response (gamma, contrast, brightness) and the site's noise are applied last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Bumped whenever the rendering changes, so cached phantoms are regenerated.
GENERATOR_VERSION = 4

FINDINGS = (
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "effusion",
    "mass",
    "nodule",
    "pneumothorax",
)


@dataclass(frozen=True)
class Site:
    """How one phantom "hospital" acquires and labels its images."""

    name: str
    description: str
    # finding -> prevalence per image (before patient-level persistence)
    prevalence: dict[str, float]
    # label column name -> the findings that make it positive
    labels: dict[str, tuple[str, ...]]
    gamma: tuple[float, float] = (0.9, 1.1)
    contrast: tuple[float, float] = (0.85, 1.15)
    brightness: tuple[float, float] = (-0.05, 0.05)
    noise_sigma: tuple[float, float] = (0.025, 0.045)
    # Gaussian correlation length of the noise in output pixels (0 = white noise)
    noise_correlation: float = 0.0
    images_per_patient: tuple[int, int] = (2, 5)
    task: str = "multilabel"  # multilabel | binary | segmentation
    mask_finding: str | None = None


NIH_LIKE = Site(
    name="phantom-nih",
    description="NIH ChestX-ray14 stand-in: pretraining set and 7-label multi-label task",
    prevalence={
        "atelectasis": 0.11,
        "cardiomegaly": 0.06,
        "consolidation": 0.06,
        "effusion": 0.12,
        "mass": 0.06,
        "nodule": 0.08,
        "pneumothorax": 0.06,
    },
    labels={
        "Atelectasis": ("atelectasis",),
        "Cardiomegaly": ("cardiomegaly",),
        "Consolidation": ("consolidation",),
        "Effusion": ("effusion",),
        "Mass": ("mass",),
        "Nodule": ("nodule",),
        "Pneumothorax": ("pneumothorax",),
    },
)

VINDR_LIKE = Site(
    name="phantom-vindr",
    description="VinDr-CXR stand-in: other scanner (steeper film curve, fine correlated noise), 6 labels",
    prevalence={
        "atelectasis": 0.05,
        "cardiomegaly": 0.12,
        "consolidation": 0.05,
        "effusion": 0.08,
        "mass": 0.04,
        "nodule": 0.07,
        "pneumothorax": 0.03,
    },
    labels={
        "Atelectasis": ("atelectasis",),
        "Cardiomegaly": ("cardiomegaly",),
        "Consolidation": ("consolidation",),
        "Pleural effusion": ("effusion",),
        "Nodule/Mass": ("nodule", "mass"),
        "Pneumothorax": ("pneumothorax",),
    },
    gamma=(0.7, 0.85),
    contrast=(1.1, 1.35),
    brightness=(-0.1, 0.0),
    noise_sigma=(0.02, 0.035),
    noise_correlation=1.0,
    images_per_patient=(1, 2),
)

RSNA_LIKE = Site(
    name="phantom-rsna",
    description="RSNA Pneumonia stand-in: binary lung-opacity task, washed-out low-contrast films",
    prevalence={
        "atelectasis": 0.08,
        "cardiomegaly": 0.05,
        "consolidation": 0.22,
        "effusion": 0.08,
        "mass": 0.03,
        "nodule": 0.04,
        "pneumothorax": 0.02,
    },
    labels={"Pneumonia": ("consolidation",)},
    gamma=(1.15, 1.35),
    contrast=(0.7, 0.9),
    brightness=(0.03, 0.1),
    noise_sigma=(0.035, 0.055),
    noise_correlation=0.6,
    images_per_patient=(1, 1),
    task="binary",
)

SIIM_LIKE = Site(
    name="phantom-siim",
    description="SIIM-ACR stand-in: pneumothorax segmentation with pixel masks",
    prevalence={
        "atelectasis": 0.06,
        "cardiomegaly": 0.05,
        "consolidation": 0.04,
        "effusion": 0.06,
        "mass": 0.03,
        "nodule": 0.05,
        "pneumothorax": 0.28,
    },
    labels={"Pneumothorax": ("pneumothorax",)},
    gamma=(0.85, 1.0),
    contrast=(0.95, 1.2),
    noise_sigma=(0.02, 0.04),
    images_per_patient=(1, 2),
    task="segmentation",
    mask_finding="pneumothorax",
)

SITES = {site.name: site for site in (NIH_LIKE, VINDR_LIKE, RSNA_LIKE, SIIM_LIKE)}


@dataclass
class Patient:
    """Anatomy that stays the same across one patient's images (patient frame, units of width)."""

    centre_x: float
    lung_centre_y: float
    lung_offset_x: float
    lung_half_width: float
    lung_half_height: float
    lung_asymmetry: float
    heart_centre: tuple[float, float]
    heart_radii: tuple[float, float]
    dome_height: tuple[float, float]
    rib_spacing: float
    rib_phase: float
    rib_curvature: float
    clavicle_y: float
    spine_width: float
    tissue_density: float
    vessels: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    chronic: set[str] = field(default_factory=set)


def _sample_patient(rng: np.random.Generator, site: Site) -> Patient:
    centre_x = 0.5 + rng.normal(0, 0.01)
    lung_centre_y = 0.46 + rng.normal(0, 0.02)
    lung_offset_x = 0.2 + rng.normal(0, 0.012)
    heart_rx = float(np.clip(rng.normal(0.125, 0.012), 0.095, 0.15))
    patient = Patient(
        centre_x=centre_x,
        lung_centre_y=lung_centre_y,
        lung_offset_x=lung_offset_x,
        lung_half_width=0.135 + rng.normal(0, 0.01),
        lung_half_height=0.27 + rng.normal(0, 0.02),
        lung_asymmetry=rng.normal(0, 0.01),
        heart_centre=(centre_x + 0.05 + rng.normal(0, 0.01), lung_centre_y + 0.1 + rng.normal(0, 0.015)),
        heart_radii=(heart_rx, heart_rx * rng.uniform(0.8, 0.95)),
        dome_height=(0.07 + rng.normal(0, 0.012), 0.07 + rng.normal(0, 0.012)),
        rib_spacing=0.072 + rng.normal(0, 0.006),
        rib_phase=rng.uniform(0, 1),
        rib_curvature=rng.uniform(0.9, 1.6),
        clavicle_y=0.17 + rng.normal(0, 0.015),
        spine_width=0.05 + rng.normal(0, 0.004),
        tissue_density=rng.uniform(0.85, 1.15),
    )
    # Vessel markings: short segments fanning out from each hilum. They are what a
    # pneumothorax removes, so the finding is visible as an *absence* of texture.
    for side in (-1, 1):
        hilum = (centre_x + side * 0.09, lung_centre_y + 0.03)
        for _ in range(14):
            angle = rng.uniform(-0.5 * np.pi, 0.75 * np.pi)
            length = rng.uniform(0.08, 0.2)
            dx = side * abs(np.cos(angle)) * length
            dy = -np.sin(angle) * length
            patient.vessels.append((hilum[0], hilum[1], hilum[0] + dx, hilum[1] + dy, rng.uniform(0.003, 0.006)))
    # Cardiomegaly is chronic: it persists across the patient's images.
    if rng.random() < site.prevalence["cardiomegaly"] * 1.4:
        patient.chronic.add("cardiomegaly")
    return patient


def _soft_inside(distance: np.ndarray, softness: float) -> np.ndarray:
    """1 inside (distance < 0), 0 outside, with a smooth edge of width ``softness``."""
    return 1.0 / (1.0 + np.exp(np.clip(distance / softness, -50, 50)))


def _ellipse_distance(x, y, cx, cy, rx, ry):
    return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0


def _segment_distance(x, y, x0, y0, x1, y1):
    vx, vy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * vx + (y - y0) * vy) / (vx * vx + vy * vy + 1e-12), 0.0, 1.0)
    return np.hypot(x - (x0 + t * vx), y - (y0 + t * vy))


def _smooth_noise(rng: np.random.Generator, shape, correlation_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise, optionally smoothed to a correlation length (FFT filter)."""
    noise = rng.standard_normal(shape)
    if correlation_px <= 0:
        return noise
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    transfer = np.exp(-2 * (np.pi * correlation_px) ** 2 * (fx**2 + fy**2))
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * transfer))
    return smooth / (smooth.std() + 1e-8)


class _Renderer:
    """Renders one image of one patient; kept as a class so the warped grid is computed once."""

    def __init__(self, rng: np.random.Generator, patient: Patient, size: int):
        self.rng = rng
        self.patient = patient
        self.size = size
        render = 2 * size
        # Per-image positioning: shift, scale and a small rotation of the patient frame.
        shift = rng.normal(0, 0.02, size=2)
        scale = 1.0 + rng.normal(0, 0.035)
        angle = np.deg2rad(rng.normal(0, 2.5))
        u = (np.arange(render) + 0.5) / render - 0.5
        gy, gx = np.meshgrid(u, u, indexing="ij")
        cos, sin = np.cos(angle), np.sin(angle)
        self.x = (cos * gx - sin * gy) / scale + 0.5 + shift[0]
        self.y = (sin * gx + cos * gy) / scale + 0.5 + shift[1]
        self.pixel = 1.0 / render / scale  # one render pixel in patient units

    def lung_masks(self) -> list[np.ndarray]:
        """Soft masks of the two lung fields, cut below by the diaphragm domes."""
        p, x, y = self.patient, self.x, self.y
        masks = []
        for index, side in enumerate((-1, 1)):
            cx = p.centre_x + side * p.lung_offset_x
            rx = p.lung_half_width * (1 + side * p.lung_asymmetry)
            ellipse = _ellipse_distance(x, y, cx, p.lung_centre_y, rx, p.lung_half_height)
            # the dome: the lung ends where the diaphragm rises, highest at mid-lung
            base = p.lung_centre_y + p.lung_half_height * 0.85
            dome = base - p.dome_height[index] * np.clip(1 - ((x - cx) / (1.3 * rx)) ** 2, 0, 1)
            below = (y - dome) / 0.01
            lung = _soft_inside(ellipse, 0.04) * _soft_inside(below, 1.0)
            masks.append(lung)
        return masks

    def anatomy(self, lungs: list[np.ndarray], heart_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Attenuation of the normal chest and the vessel-marking layer (returned separately)."""
        p, x, y = self.patient, self.x, self.y
        thorax = _soft_inside(_ellipse_distance(x, y, p.centre_x, 0.55, 0.42, 0.52), 0.03)
        attenuation = 0.15 + 0.45 * p.tissue_density * thorax
        lung_field = np.clip(lungs[0] + lungs[1], 0, 1)
        attenuation -= 0.32 * lung_field
        # ribs: curved bands, posterior ribs drop laterally
        for side in (-1, 1):
            lateral = np.clip(side * (x - p.centre_x), 0, None)
            for k in range(-1, 10):
                rib_y = 0.16 + (k + p.rib_phase) * p.rib_spacing + p.rib_curvature * lateral**2
                band = _soft_inside(np.abs(y - rib_y) - 0.011, 0.004)
                attenuation += 0.1 * band * thorax * (side * (x - p.centre_x) > 0.02)
        # clavicles
        for side in (-1, 1):
            d = _segment_distance(x, y, p.centre_x + side * 0.03, p.clavicle_y, p.centre_x + side * 0.3, p.clavicle_y - 0.05)
            attenuation += 0.18 * _soft_inside(d - 0.012, 0.004)
        # spine with vertebral texture
        spine = _soft_inside(np.abs(x - p.centre_x) - p.spine_width / 2, 0.006)
        vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * y / 0.06)
        attenuation += spine * (0.18 + 0.05 * vertebrae)
        # heart overlaps the lungs and the spine
        hx, hy = p.heart_centre
        rx, ry = p.heart_radii
        heart = _soft_inside(_ellipse_distance(x, y, hx, hy, rx * heart_scale, ry * heart_scale), 0.03)
        attenuation += 0.2 * heart
        # diaphragm / abdomen below the domes
        below_domes = _soft_inside((p.lung_centre_y + p.lung_half_height * 0.7 - y) / 0.02, 1.0)
        attenuation += 0.1 * thorax * below_domes * (1 - lung_field)
        vessels = np.zeros_like(x)
        for x0, y0, x1, y1, width in p.vessels:
            vessels = np.maximum(vessels, _soft_inside(_segment_distance(x, y, x0, y0, x1, y1) - width, 0.002))
        vessel_layer = 0.09 * vessels * lung_field
        return attenuation, vessel_layer

    def _point_in_lung(self, lungs: list[np.ndarray], side: int, y_range=(0.2, 0.85)) -> tuple[float, float]:
        """A random point well inside one lung (patient frame)."""
        p = self.patient
        sign = (-1, 1)[side]
        cx = p.centre_x + sign * p.lung_offset_x
        for _ in range(50):
            ux = self.rng.uniform(-0.65, 0.65)
            uy = self.rng.uniform(*y_range)
            px = cx + ux * p.lung_half_width
            py = p.lung_centre_y - p.lung_half_height + 2 * uy * p.lung_half_height * 0.85
            if _ellipse_distance(px, py, cx, p.lung_centre_y, p.lung_half_width, p.lung_half_height) < -0.25:
                return px, py
        return cx, p.lung_centre_y

    def finding(self, name: str, lungs: list[np.ndarray], heart_scale: float):
        """Attenuation change of one finding, and its support (where it visibly is)."""
        rng, p, x, y = self.rng, self.patient, self.x, self.y
        side = int(rng.integers(0, 2))
        lung = lungs[side]
        if name == "nodule":
            cx, cy = self._point_in_lung(lungs, side)
            radius = rng.uniform(0.014, 0.024)
            blob = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2)))
            return 0.16 * blob * (lung > 0.3), blob > 0.3
        if name == "mass":
            cx, cy = self._point_in_lung(lungs, side)
            radius = rng.uniform(0.03, 0.05)
            angle = np.arctan2(y - cy, x - cx)
            lobes = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6.3))
            d = np.hypot(x - cx, y - cy) / (radius * lobes) - 1
            mass = _soft_inside(d, 0.12)
            return 0.17 * mass * (lung > 0.2), mass > 0.5
        if name == "consolidation":
            cx, cy = self._point_in_lung(lungs, side, (0.3, 0.9))
            radius = rng.uniform(0.05, 0.08)
            region = _soft_inside(_ellipse_distance(x, y, cx, cy, radius, radius * rng.uniform(0.7, 1.3)), 0.25)
            patches = _smooth_noise(rng, x.shape, correlation_px=0.012 / self.pixel)
            texture = np.clip(0.6 + 0.5 * patches, 0, 1)
            change = 0.22 * region * texture * lung
            return change, change > 0.04
        if name == "effusion":
            sign = (-1, 1)[side]
            cx = p.centre_x + sign * p.lung_offset_x
            level = p.lung_centre_y + p.lung_half_height * rng.uniform(0.45, 0.65)
            # meniscus: fluid climbs the lateral chest wall
            meniscus = level - 0.08 * np.clip(sign * (x - cx) / p.lung_half_width, 0, None) ** 2
            fluid = _soft_inside((meniscus - y) / 0.015, 1.0) * lung
            return 0.2 * fluid, fluid > 0.3
        if name == "atelectasis":
            cx, cy = self._point_in_lung(lungs, side, (0.55, 0.9))
            length = rng.uniform(0.05, 0.09)
            tilt = rng.uniform(-0.35, 0.35)
            x0, y0 = cx - length * np.cos(tilt), cy - length * np.sin(tilt)
            x1, y1 = cx + length * np.cos(tilt), cy + length * np.sin(tilt)
            plate = _soft_inside(_segment_distance(x, y, x0, y0, x1, y1) - rng.uniform(0.008, 0.013), 0.003)
            return 0.18 * plate * (lung > 0.3), plate > 0.3
        if name == "pneumothorax":
            # Air between lung and chest wall at the apex/lateral edge: no vessel markings,
            # slightly darker, bounded by a thin bright visceral pleural line.
            sign = (-1, 1)[side]
            cx = p.centre_x + sign * p.lung_offset_x
            depth = rng.uniform(0.25, 0.45)
            collapsed = _ellipse_distance(
                x, y, cx - sign * depth * 0.25 * p.lung_half_width,
                p.lung_centre_y + depth * 0.2 * p.lung_half_height,
                p.lung_half_width * (1 - depth * 0.6), p.lung_half_height * (1 - depth * 0.35),
            )
            gap = (lung > 0.5) & (collapsed > 0)
            pleural_line = _soft_inside(np.abs(collapsed) - 0.02, 0.01) * (lung > 0.5)
            change = -0.08 * gap + 0.1 * pleural_line
            return change, gap
        if name == "cardiomegaly":
            # handled through heart_scale in anatomy(); its support is the enlarged heart
            hx, hy = p.heart_centre
            rx, ry = p.heart_radii
            heart = _ellipse_distance(x, y, hx, hy, rx * heart_scale, ry * heart_scale) < 0
            return np.zeros_like(x), heart
        raise ValueError(f"unknown phantom finding {name!r}")

    def downsample(self, image: np.ndarray) -> np.ndarray:
        """Area-average the 2x render to the output size (anti-aliasing)."""
        return image.reshape(self.size, 2, self.size, 2).mean(axis=(1, 3))


@dataclass
class PhantomImage:
    pixels: np.ndarray  # uint8 (size, size)
    findings: list[str]
    boxes: list[tuple[str, int, int, int, int]]  # finding, x, y, w, h in output pixels
    mask: np.ndarray | None  # uint8 0/1 (size, size), pneumothorax support


def render_image(rng: np.random.Generator, patient: Patient, site: Site, findings: list[str], size: int) -> PhantomImage:
    renderer = _Renderer(rng, patient, size)
    lungs = renderer.lung_masks()
    heart_scale = float(rng.uniform(1.3, 1.45)) if "cardiomegaly" in findings else 1.0
    attenuation, vessel_layer = renderer.anatomy(lungs, heart_scale)
    supports = {}
    for name in findings:
        change, support = renderer.finding(name, lungs, heart_scale)
        if name == "pneumothorax":
            vessel_layer = vessel_layer * (~support)
        attenuation = attenuation + change
        supports[name] = support
    attenuation = attenuation + vessel_layer
    image = renderer.downsample(attenuation)
    # film response of this site and exposure of this image
    gamma = rng.uniform(*site.gamma)
    contrast = rng.uniform(*site.contrast)
    brightness = rng.uniform(*site.brightness)
    image = np.clip((image - 0.35) * contrast + 0.45 + brightness, 0, 1) ** gamma
    # smooth exposure gradient across the film (heel effect / positioning)
    u = (np.arange(size) + 0.5) / size - 0.5
    gy, gx = np.meshgrid(u, u, indexing="ij")
    image = image + rng.normal(0, 0.04) * gx + rng.normal(0, 0.04) * gy
    sigma = rng.uniform(*site.noise_sigma)
    image = image + sigma * _smooth_noise(rng, image.shape, site.noise_correlation)
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)

    boxes = []
    mask = None
    for name, support in supports.items():
        small = renderer.downsample(support.astype(np.float32)) >= 0.5
        if not small.any():
            small = renderer.downsample(support.astype(np.float32)) > 0
        if not small.any():
            continue
        rows, cols = np.nonzero(small)
        boxes.append((name, int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)))
        if name == site.mask_finding:
            mask = small.astype(np.uint8)
    if site.mask_finding is not None and mask is None:
        mask = np.zeros((size, size), dtype=np.uint8)
    return PhantomImage(pixels=pixels, findings=findings, boxes=boxes, mask=mask)


def sample_findings(rng: np.random.Generator, patient: Patient, site: Site) -> list[str]:
    findings = []
    for name in FINDINGS:
        if name == "cardiomegaly":
            if name in patient.chronic:
                findings.append(name)
            continue
        if rng.random() < site.prevalence[name]:
            findings.append(name)
    return findings


def generate_site(site: Site, num_patients: int, size: int, seed: int, progress=None):
    """Yield (patient_id, image_index, PhantomImage) for a whole site, deterministically.

    Each patient draws from its own child generator, so patient k looks the same
    whatever ``num_patients`` is.
    """
    root = np.random.SeedSequence([seed, sum(map(ord, site.name))])
    for patient_index, child in enumerate(root.spawn(num_patients)):
        rng = np.random.default_rng(child)
        patient = _sample_patient(rng, site)
        count = int(rng.integers(site.images_per_patient[0], site.images_per_patient[1] + 1))
        for image_index in range(count):
            findings = sample_findings(rng, patient, site)
            yield f"P{patient_index:05d}", image_index, render_image(rng, patient, site, findings, size)
        if progress is not None:
            progress(1)
