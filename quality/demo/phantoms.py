"""Procedural image phantoms and seeded degradations for the demo data.

Nothing here touches DICOM or the DB: functions take a generator and parameters, and return
float arrays in detector units (0–4095 for radiographs, Hounsfield units for CT).

Generating model (chest radiograph)
-----------------------------------
A radiograph is built as a map of attenuation line integrals :math:`A(x, y) \\ge 0` on a
normalised grid :math:`x, y \\in [0, 1]` (``x`` is the image column, the patient's left is on
the image right as in a PA view):

- soft tissue of an elliptical torso whose thickness falls off as
  :math:`\\sqrt{1 - r^2}` towards the body outline;
- two lungs, ellipses with a domed base, that remove attenuation (air);
- a mediastinum band, a heart ellipse bulging to the image right, a spine band with a
  vertebral modulation;
- posterior ribs as a periodic arch pattern :math:`\\max(0, \\cos(2\\pi y'/P))^4` with
  :math:`y' = y - a|x - x_c| - b(x - x_c)^2` inside each lung field, and two clavicles as
  Gaussian line profiles;
- an optional finding: a *nodule* (small disc with a soft edge) or an *opacity* (sum of
  two or three broad Gaussians) inside a lung.

The detector maps it to presentation values :math:`I = o + g\\,A/A_{ref}` with a small
Gaussian point-spread function and signal-dependent Gaussian noise
:math:`\\sigma = \\sigma_0 + 0.01 I`, clipped to 12 bits.

Generating model (CT slice)
---------------------------
An axial slice in Hounsfield units: air (-1000), an elliptical body (soft tissue +40 HU with a
fat ring at -100 HU), two lungs (-850 HU) whose size follows the slice position, vessels as
small bright dots, heart (+40 HU), a vertebra (cancellous +300 HU, cortical +900 HU), ribs on
the body wall and a scanner table, smoothed, with Gaussian noise of 12 HU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "MAX_12BIT",
    "ChestAnatomy",
    "Finding",
    "blank_image",
    "canister_radiograph",
    "chest_anatomy",
    "chest_radiograph",
    "ct_slice",
    "degrade",
    "finding_bbox",
    "natural_texture",
    "near_duplicate",
    "sample_finding",
]

MAX_12BIT = 4095
_A_REF = 1.25  # attenuation mapped to the top of the detector range


@dataclass(frozen=True)
class ChestAnatomy:
    """Patient- and study-specific shape parameters of the chest phantom (normalised units)."""

    body_half_width: float
    lung_width: float
    lung_height: float
    lung_center_y: float
    lung_gap: float
    heart_size: float
    rib_period: float
    rib_phase: float
    shift_x: float
    shift_y: float


@dataclass(frozen=True)
class Finding:
    """A finding placed in a lung.

    Attributes
    ----------
    kind : ``"nodule"`` or ``"opacity"``.
    blobs : tuples ``(cx, cy, radius, amplitude)`` in normalised units.
    """

    kind: str
    blobs: tuple[tuple[float, float, float, float], ...]


def chest_anatomy(rng: np.random.Generator, base: ChestAnatomy | None = None) -> ChestAnatomy:
    """Draw anatomy parameters; with ``base``, jitter a patient's anatomy for another study.

    Parameters
    ----------
    rng : random generator.
    base : the patient's anatomy; a follow-up study varies positioning and inspiration.
    """
    if base is None:
        return ChestAnatomy(
            body_half_width=float(rng.uniform(0.40, 0.47)),
            lung_width=float(rng.uniform(0.145, 0.175)),
            lung_height=float(rng.uniform(0.27, 0.32)),
            lung_center_y=float(rng.uniform(0.44, 0.48)),
            lung_gap=float(rng.uniform(0.08, 0.11)),
            heart_size=float(rng.uniform(0.10, 0.14)),
            rib_period=float(rng.uniform(0.085, 0.10)),
            rib_phase=float(rng.uniform(0.0, 1.0)),
            shift_x=float(rng.normal(0.0, 0.012)),
            shift_y=float(rng.normal(0.0, 0.012)),
        )
    return ChestAnatomy(
        body_half_width=base.body_half_width,
        lung_width=base.lung_width * float(rng.uniform(0.97, 1.03)),
        lung_height=base.lung_height * float(rng.uniform(0.94, 1.05)),
        lung_center_y=base.lung_center_y + float(rng.normal(0, 0.006)),
        lung_gap=base.lung_gap,
        heart_size=base.heart_size * float(rng.uniform(0.97, 1.04)),
        rib_period=base.rib_period,
        rib_phase=float(rng.uniform(0.0, 1.0)),
        shift_x=float(rng.normal(0.0, 0.015)),
        shift_y=float(rng.normal(0.0, 0.015)),
    )


def _lung_centers(a: ChestAnatomy) -> tuple[tuple[float, float], tuple[float, float]]:
    cx = 0.5 + a.shift_x
    off = a.lung_gap + a.lung_width
    cy = a.lung_center_y + a.shift_y
    return (cx - off, cy), (cx + off, cy)


def sample_finding(rng: np.random.Generator, anatomy: ChestAnatomy, kind: str) -> Finding:
    """Place a nodule or an opacity at a random point well inside one lung.

    Parameters
    ----------
    rng : random generator.
    anatomy : the image's anatomy (the lung ellipses).
    kind : ``"nodule"`` (disc of radius 0.014–0.028) or ``"opacity"`` (2–3 Gaussians of
        radius 0.035–0.06, lower two thirds of the lung).
    """
    centers = _lung_centers(anatomy)
    lcx, lcy = centers[int(rng.integers(0, 2))]
    # A point in the inner 60% of the lung ellipse, so the finding is inside the lung field.
    ang = rng.uniform(0, 2 * np.pi)
    rad = np.sqrt(rng.uniform(0, 1)) * 0.6
    cx = lcx + rad * np.cos(ang) * anatomy.lung_width
    cy = lcy + rad * np.sin(ang) * anatomy.lung_height
    if kind == "nodule":
        r = float(rng.uniform(0.014, 0.028))
        return Finding("nodule", ((float(cx), float(cy), r, float(rng.uniform(0.16, 0.24))),))
    cy = max(cy, lcy)  # opacities sit in the lower lung
    blobs = []
    for _ in range(int(rng.integers(2, 4))):
        blobs.append(
            (
                float(cx + rng.normal(0, 0.02)),
                float(cy + rng.normal(0, 0.02)),
                float(rng.uniform(0.035, 0.06)),
                float(rng.uniform(0.12, 0.18)),
            )
        )
    return Finding("opacity", tuple(blobs))


@functools.lru_cache(maxsize=8)
def _grid(rows: int, cols: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    return (x + 0.5) / cols, (y + 0.5) / rows


def _finding_map(finding: Finding, rows: int, cols: int) -> NDArray[np.float32]:
    x, y = _grid(rows, cols)
    out = np.zeros((rows, cols), np.float32)
    for cx, cy, r, amp in finding.blobs:
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        if finding.kind == "nodule":
            d = np.sqrt(d2) / r
            out += amp * np.clip((1.25 - d) * 2.5, 0.0, 1.0) ** 1.5
        else:
            out += amp * np.exp(-d2 / (2 * r * r))
    return out


def finding_bbox(finding: Finding, rows: int, cols: int) -> list[int]:
    """Ground-truth box ``[x0, y0, x1, y1]`` in pixels (x1, y1 exclusive) of a finding.

    The box encloses the pixels where the finding reaches 25% of its peak.
    """
    fmap = _finding_map(finding, rows, cols)
    ys, xs = np.nonzero(fmap >= 0.25 * fmap.max())
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def chest_attenuation(
    anatomy: ChestAnatomy,
    finding: Finding | None,
    rows: int,
    cols: int,
    texture: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Attenuation map ``A`` of shape ``(rows, cols)`` (see the module docstring).

    ``texture`` is white noise of shape ``(rows, cols)`` that becomes the vascular markings.
    """
    x, y = _grid(rows, cols)
    a = anatomy
    cx = 0.5 + a.shift_x
    by = 0.62 + a.shift_y
    # A super-ellipse: broad shoulders at the top, flanks that fall off towards the abdomen.
    r_body = np.abs((x - cx) / a.body_half_width) ** 3 + ((y - by) / 0.68) ** 2
    thick = np.sqrt(np.clip(1.0 - r_body, 0.0, 1.0))
    att = 0.62 * thick + 0.15 * (thick > 0) * np.clip((y - 0.7) * 2.0, 0, 1)

    lung_field = np.zeros_like(x)
    ribs = np.zeros_like(x)
    for lcx, lcy in _lung_centers(a):
        dy = y - lcy
        # Domed base: the lower half of the lung is taller than the upper half (apex).
        hy = np.where(dy > 0, np.float32(a.lung_height * 1.1), np.float32(a.lung_height * 0.95))
        r = ((x - lcx) / a.lung_width) ** 2 + (dy / hy) ** 2
        lung = np.clip((1.0 - r) / 0.12, 0.0, 1.0)
        lung_field = np.maximum(lung_field, lung)
        # Posterior ribs: arches falling laterally from the spine.
        side = np.sign(lcx - cx)
        yp = y - 0.18 * side * (x - cx) - 0.35 * (x - cx) ** 2
        rib = np.maximum(np.cos(2 * np.pi * (yp / a.rib_period + a.rib_phase)), 0.0) ** 4
        ribs += rib * np.clip((1.15 - r) / 0.2, 0.0, 1.0)
    att -= 0.42 * lung_field * np.sqrt(np.clip(thick, 0, 1))
    # Vascular markings: smooth random texture inside the lung fields.
    if texture is not None:
        vessels = ndimage.gaussian_filter(texture, 3.0 * cols / 512)
        att += 0.35 * (cols / 512) * lung_field * vessels
    att += 0.11 * ribs

    # Mediastinum, heart (bulging to the image right) and spine.
    med = np.exp(-(((x - cx) / 0.06) ** 2)) * np.clip((y - 0.12) * 6, 0, 1)
    att += 0.22 * med
    hx, hy = cx + 0.035, a.lung_center_y + a.shift_y + 0.11
    heart = ((x - hx) / (a.heart_size * 1.25)) ** 2 + ((y - hy) / a.heart_size) ** 2
    att += 0.20 * np.clip((1.0 - heart) / 0.15, 0.0, 1.0)
    spine = np.exp(-(((x - cx) / 0.028) ** 4)) * (thick > 0)
    att += spine * (0.16 + 0.05 * np.cos(2 * np.pi * y / 0.045))

    # Clavicles: Gaussian line profiles from near the midline up and out.
    for side in (-1.0, 1.0):
        x0, y0 = cx + side * 0.05, 0.17 + a.shift_y
        x1, y1 = cx + side * 0.30, 0.11 + a.shift_y
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * vx + (y - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
        d2 = (x - x0 - t * vx) ** 2 + (y - y0 - t * vy) ** 2
        att += 0.16 * np.exp(-d2 / (2 * 0.011**2))

    if finding is not None:
        att += _finding_map(finding, rows, cols) * np.clip(lung_field * 2, 0.3, 1.0)
    return np.clip(att, 0.0, None)


def chest_radiograph(
    rng: np.random.Generator,
    anatomy: ChestAnatomy,
    finding: Finding | None,
    rows: int,
    cols: int,
    *,
    gain: float = 3400.0,
    offset: float = 180.0,
    noise: float = 14.0,
    psf_px: float = 0.7,
) -> NDArray[np.float32]:
    """A chest-radiograph-like image in MONOCHROME2 presentation values (0–4095).

    Parameters
    ----------
    rng : random generator (noise).
    anatomy, finding : see :func:`chest_anatomy` and :func:`sample_finding`.
    rows, cols : image size.
    gain, offset : detector mapping :math:`I = o + g A / A_{ref}`.
    noise : :math:`\\sigma_0` of the signal-dependent noise.
    psf_px : Gaussian PSF sigma in pixels.

    Returns
    -------
    NDArray[np.float32] of shape ``(rows, cols)``, not yet rounded.
    """
    # The anatomy is smooth: draw it at half resolution above 256 pixels and upsample
    # (bilinear), which is 4x cheaper; noise and PSF are applied at full resolution.
    f = 2 if min(rows, cols) > 256 else 1
    texture = rng.standard_normal((rows // f, cols // f), dtype=np.float32)
    att = chest_attenuation(anatomy, finding, rows // f, cols // f, texture)
    if f > 1:
        att = ndimage.zoom(att, (rows / att.shape[0], cols / att.shape[1]), order=1)
    img = offset + gain * att / _A_REF
    img = ndimage.gaussian_filter(img, psf_px, mode="nearest")
    img += rng.standard_normal(img.shape, dtype=np.float32) * (noise + 0.01 * img)
    return np.clip(img, 0, MAX_12BIT)


def degrade(
    img: NDArray[np.float32], kind: str, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[NDArray[np.float32], dict[str, float]]:
    """Apply one seeded degradation to a presentation image (0–4095).

    Parameters
    ----------
    img : image of shape ``(rows, cols)``.
    kind : ``blur`` (Gaussian, sigma 4.5–6 px at 512 columns), ``noise`` (additive Gaussian,
        sigma 180–240), ``under_exposure`` (``0.12–0.18 I + 15`` with extra quantum noise),
        ``over_exposure`` (``1.9 I + 900``, saturating), ``inverted`` (``4095 - I``).
    rng : random generator.
    scale : image width / 512, to keep the blur comparable across matrix sizes.

    Returns
    -------
    The degraded image (clipped to 0–4095) and the parameters used, for the truth file.
    """
    if kind == "blur":
        sigma = float(rng.uniform(4.5, 6.0)) * max(scale, 0.6)
        return ndimage.gaussian_filter(img, sigma, mode="nearest"), {"sigma_px": round(sigma, 3)}
    if kind == "noise":
        sigma = float(rng.uniform(180, 240))
        out = img + rng.standard_normal(img.shape, dtype=np.float32) * sigma
        return np.clip(out, 0, MAX_12BIT), {"sigma": round(sigma, 3)}
    if kind == "under_exposure":
        factor = float(rng.uniform(0.12, 0.18))
        out = img * factor + 15 + rng.standard_normal(img.shape, dtype=np.float32) * 6
        return np.clip(out, 0, MAX_12BIT), {"gain": round(factor, 4), "offset": 15.0}
    if kind == "over_exposure":
        factor = float(rng.uniform(1.8, 2.0))
        out = img * factor + 900
        return np.clip(out, 0, MAX_12BIT), {"gain": round(factor, 4), "offset": 900.0}
    if kind == "inverted":
        return MAX_12BIT - img, {}
    raise ValueError(f"unknown degradation {kind!r}")


def near_duplicate(
    img: NDArray[np.float32], rng: np.random.Generator
) -> tuple[NDArray[np.float32], dict[str, float]]:
    """A slightly shifted, re-scaled and re-noised copy (a re-sent or re-processed image).

    The shift is 2–6 pixels in each axis (edge values repeated), the gain 0.97–1.03 and the
    added noise sigma 8.
    """
    dx, dy = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(2, 7, size=2))
    out = ndimage.shift(img, (dy, dx), order=0, mode="nearest")
    gain = float(rng.uniform(0.97, 1.03))
    out = out * gain + rng.standard_normal(img.shape, dtype=np.float32) * 8
    return np.clip(out, 0, MAX_12BIT), {"shift_x": dx, "shift_y": dy, "gain": round(gain, 4)}


def blank_image(
    rng: np.random.Generator, rows: int, cols: int, *, flat: bool
) -> NDArray[np.float32]:
    """A blank exposure: a constant (``flat``) or constant plus read-out noise (sigma 2)."""
    level = float(rng.uniform(60, 120))
    img = np.full((rows, cols), level, np.float32)
    if not flat:
        img += rng.standard_normal(img.shape, dtype=np.float32) * 2
    return np.clip(img, 0, MAX_12BIT)


def canister_radiograph(rng: np.random.Generator, rows: int, cols: int) -> NDArray[np.float32]:
    """A radiograph of a metal canister test object (a scanner-tuning shot, not a patient).

    A hollow cylinder (bright walls), an inner disc, four screws and a step wedge of five
    bars, in air, with detector noise.
    """
    x, y = _grid(rows, cols)
    cx = 0.5 + float(rng.normal(0, 0.02))
    half_w, top, bottom = 0.17, 0.18, 0.86
    inside = (np.abs(x - cx) < half_w) & (y > top) & (y < bottom)
    # Projected thickness of a hollow cylinder: walls seen edge-on are thick.
    u = np.clip(np.abs(x - cx) / half_w, 0, 0.999)
    wall = np.sqrt(1 - (u * 0.92) ** 2) - np.sqrt(np.clip(1 - (u / 0.92) ** 2 * 0.92**2, 0, 1))
    att = np.where(inside, 0.35 + 2.2 * np.clip(wall, 0, None), 0.0)
    att += 0.5 * (((x - cx) / 0.12) ** 2 + ((y - 0.5) / 0.05) ** 2 < 1)
    for sx, sy in ((-0.1, 0.25), (0.1, 0.25), (-0.1, 0.8), (0.1, 0.8)):
        att += 0.9 * (((x - cx - sx) ** 2 + (y - sy) ** 2) < 0.012**2)
    for k in range(5):
        band = (y > 0.06) & (y < 0.12) & (x > 0.2 + 0.12 * k) & (x < 0.3 + 0.12 * k)
        att += 0.18 * (k + 1) * band
    img = 150 + 2600 * att / 1.6
    img = ndimage.gaussian_filter(img.astype(np.float32), 0.8)
    img += rng.standard_normal(img.shape, dtype=np.float32) * (12 + 0.01 * img)
    return np.clip(img, 0, MAX_12BIT)


def natural_texture(rng: np.random.Generator, rows: int, cols: int) -> NDArray[np.float32]:
    """A photo-like 8-bit scene: sky gradient, a sun disc and 1/f ("fractal") ground texture.

    Its statistics (wide histogram, no body outline, 1/f spectrum everywhere) differ from a
    radiograph's, which is what an out-of-distribution detector should notice.
    """
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f**1.6
    tex = np.fft.irfft2(spec, s=(rows, cols)).astype(np.float32)
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-6)
    x, y = _grid(rows, cols)
    horizon = 0.45 + 0.05 * np.sin(2 * np.pi * x * 1.5 + float(rng.uniform(0, 6)))
    sky = 200 - 80 * y
    ground = 40 + 150 * tex
    img = np.where(y < horizon, sky, ground)
    sun = ((x - 0.75) ** 2 + (y - 0.18) ** 2) < 0.06**2
    img = np.where(sun, 250.0, img)
    img += rng.standard_normal(img.shape).astype(np.float32) * 3
    return np.clip(img, 0, 255).astype(np.float32)


def ct_slice(
    rng: np.random.Generator, z: float, rows: int, cols: int, *, patient_scale: float = 1.0
) -> NDArray[np.float32]:
    """An axial chest CT slice in Hounsfield units (see the module docstring).

    Parameters
    ----------
    rng : random generator (noise, vessels).
    z : slice position, 0 (lung apex) to 1 (lung base).
    rows, cols : slice size.
    patient_scale : body size factor (0.9–1.1).
    """
    x, y = _grid(rows, cols)
    s = patient_scale
    cx, cy = 0.5, 0.5
    body_r = ((x - cx) / (0.42 * s)) ** 2 + ((y - cy) / (0.30 * s)) ** 2
    hu = np.full((rows, cols), -1000.0, np.float32)
    hu = np.where(body_r < 1.0, -100.0, hu)  # subcutaneous fat
    inner_r = ((x - cx) / (0.38 * s)) ** 2 + ((y - cy) / (0.26 * s)) ** 2
    hu = np.where(inner_r < 1.0, 40.0, hu)
    lung_scale = np.sin(np.pi * np.clip(0.15 + 0.85 * z, 0, 1)) ** 0.6
    for side in (-1, 1):
        lx = cx + side * 0.17 * s
        lr = ((x - lx) / (0.14 * s * lung_scale + 1e-3)) ** 2 + (
            (y - cy + 0.01) / (0.19 * s * lung_scale + 1e-3)
        ) ** 2
        hu = np.where(lr < 1.0, -850.0, hu)
    heart_r = ((x - cx - 0.04) / (0.12 * s * z + 1e-3)) ** 2 + (
        (y - cy + 0.05) / (0.10 * s * z + 1e-3)
    ) ** 2
    hu = np.where(heart_r < 1.0, 40.0, hu)
    vert = (x - cx) ** 2 + (y - cy - 0.17 * s) ** 2
    hu = np.where(vert < (0.045 * s) ** 2, 900.0, hu)
    hu = np.where(vert < (0.037 * s) ** 2, 300.0, hu)
    for ang in np.linspace(0.35, np.pi - 0.35, 8):
        rx = cx + 0.39 * s * np.cos(ang) * np.sign(np.cos(ang) + 1e-9)
        ry = cy + 0.27 * s * np.sin(ang)
        hu = np.where((x - rx) ** 2 + (y - ry) ** 2 < (0.012 * s) ** 2, 700.0, hu)
    table = (y > cy + 0.33 * s) & (y < cy + 0.36 * s) & (np.abs(x - cx) < 0.45)
    hu = np.where(table, 150.0, hu)
    # Vessels: small soft-tissue dots inside the lungs.
    lungs = hu == -850.0
    n_ves = 40
    vy = rng.integers(0, rows, n_ves)
    vx = rng.integers(0, cols, n_ves)
    dots = np.zeros_like(hu)
    dots[vy, vx] = 1.0
    dots = ndimage.gaussian_filter(dots, 1.2) * 600
    hu = np.where(lungs, hu + dots, hu)
    hu = ndimage.gaussian_filter(hu, 0.8)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * 12
    return hu.astype(np.float32)
