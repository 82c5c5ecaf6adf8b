"""The images of the synthetic set: one NumPy renderer per modality, drawn on coordinate grids.

The modalities differ the way real ones do, so a small CNN can learn them but
a single pixel statistic cannot:

* CT: an oval body cross-section on black air, even grey soft tissue, bright
  bone (ribs, vertebra, skull), dark lungs in the chest.
* MRI: smooth, low-noise tissue; bone is dark, fat and fluid are bright.
* Ultrasound: a fan-shaped (or rectangular) field on black, filled with speckle
  that fades with depth; cysts are black.
* Fluoroscopy: a dim, low-contrast field, often circular, crossed by a dark
  contrast-filled tube (esophagus, stomach or colon).
* X-ray: projections with bright bones; chest films with dark lungs and ribs,
  limb films with long bones.
* Angiography: dark branching vessels on a light, subtracted background.

Findings change the image too (a mass or cyst is a blob, consolidation a
patchy opacity in the named lung, stenosis a narrowed vessel or tube, ...), so
captions and images agree.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_CHUNK = 128  # images rendered at once; bounds memory at (128, S, S) float32 per temporary
_F32 = np.float32


# ---------------------------------------------------------------------------
# Drawing helpers. Images are float32 (k, S, S) stacks with values about 0..1,
# drawn on per-sample coordinates u, v (k, S, S) that run over about -1..1
# with v pointing down. Per-sample parameters have shape (k, 1, 1) so that
# they broadcast against the images.
# ---------------------------------------------------------------------------


def _param(rng: np.random.Generator, k: int, low: float, high: float) -> np.ndarray:
    """(k, 1, 1) float32 drawn uniformly from [low, high)."""
    return rng.uniform(low, high, (k, 1, 1)).astype(_F32)


def _either(rng: np.random.Generator, k: int, a: float, b: float) -> np.ndarray:
    """(k, 1, 1) float32: ``a`` or ``b`` per sample, with equal chance."""
    return np.where(rng.random((k, 1, 1)) < 0.5, a, b).astype(_F32)


def _has(rows: pd.DataFrame, finding: str) -> np.ndarray:
    """(k, 1, 1) float32: 1 for the samples with this finding."""
    return (rows["finding"].to_numpy() == finding).astype(_F32)[:, None, None]


def _coords(rng: np.random.Generator, k: int, size: int, shift=0.08, zoom=(0.9, 1.1), rotate=0.15):
    """Pixel coordinates u, v moved, scaled and rotated at random per sample, so that anatomy varies in placement."""
    t = (np.arange(size, dtype=_F32) + 0.5) * (2 / size) - 1
    x, y = t[None, None, :], t[None, :, None]
    cx, cy = _param(rng, k, -shift, shift), _param(rng, k, -shift, shift)
    scale = _param(rng, k, *zoom)
    angle = _param(rng, k, -rotate, rotate)
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = (x - cx) / scale, (y - cy) / scale
    return cos * x + sin * y, cos * y - sin * x


def _ellipse(u, v, cx, cy, a, b, edge=0.04):
    """Filled ellipse: 1 inside, 0 outside, with a ramp about ``edge`` wide at the border."""
    r2 = ((u - cx) / a) ** 2 + ((v - cy) / b) ** 2
    # Near the border 1 - r**2 is about 2 (1 - r), so this ramps over about ``edge`` without a square root.
    return np.clip((1 - r2) * (np.minimum(a, b) / (2 * edge)) + 0.5, 0, 1)


def _tube_distance(u, v, starts, ends, widths):
    """How far each pixel is from the nearest of K tubes, as (distance / tube width)**2: below 1 is inside.

    ``starts`` and ``ends`` (k, K, 2) are the end points of each tube's axis
    and ``widths`` (k, K) its half-width; the ends are rounded. A tube whose
    start equals its end is a disc, and one of width 0 is absent. One result
    serves tubes of any thickness: ``q / c**2`` is the distance to tubes ``c``
    times as wide.
    """
    starts, ends, widths = (np.asarray(a, dtype=_F32) for a in (starts, ends, widths))
    nearest = np.full(u.shape, np.inf, dtype=_F32)
    # This loop is the generator's hot spot, so it works in place in three reused buffers.
    t, ex, ey = (np.empty(u.shape, dtype=_F32) for _ in range(3))
    for j in range(widths.shape[1]):
        w = widths[:, j, None, None]
        if not w.any():
            continue
        x0, y0 = starts[:, j, 0, None, None], starts[:, j, 1, None, None]
        dx, dy = ends[:, j, 0, None, None] - x0, ends[:, j, 1, None, None] - y0
        length2 = dx * dx + dy * dy + 1e-9
        # t: position of the closest point on the axis, clip(((u - x0) dx + (v - y0) dy) / length**2, 0, 1).
        np.multiply(u, dx / length2, out=t)
        np.multiply(v, dy / length2, out=ex)
        t += ex
        t -= (x0 * dx + y0 * dy) / length2
        np.clip(t, 0, 1, out=t)
        # (ex, ey) = (u, v) - (x0, y0) - t (dx, dy): from that closest point to the pixel.
        np.multiply(t, dx, out=ex)
        np.subtract(u, ex, out=ex)
        ex -= x0
        np.multiply(t, dy, out=ey)
        np.subtract(v, ey, out=ey)
        ey -= y0
        np.square(ex, out=ex)
        np.square(ey, out=ey)
        ex += ey
        ex *= np.where(w > 0, 1 / np.maximum(w, 1e-6) ** 2, 0).astype(_F32)
        ex += np.where(w > 0, 0, np.inf).astype(_F32)  # samples without this tube
        np.minimum(nearest, ex, out=nearest)
    return nearest


def _tube(q, scale=1.0, hardness=1.0):
    """Profile 0..1 of tubes ``scale`` times as wide as those ``q`` was measured for.

    ``1 - q`` is roughly the thickness of a cylinder seen from the side;
    ``hardness`` > 1 flattens it into a solid rod with a soft edge.
    """
    return np.clip((1 - q / scale**2) * hardness, 0, 1)


def _gaussian_matrix(size: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    """(size, len(centres)) float32 Gaussian weights of each centre for each pixel, rows summing to 1."""
    w = np.exp(-0.5 * ((np.arange(size)[:, None] + 0.5 - centres[None, :]) / sigma) ** 2)
    return (w / w.sum(1, keepdims=True)).astype(_F32)


def _separable(matrix: np.ndarray, images: np.ndarray) -> np.ndarray:
    """``matrix @ image @ matrix.T`` for each image of a (k, n, n) stack -> (k, m, m).

    Done as two large matrix products over the whole stack, several times
    faster than NumPy's batched matmul over many small matrices.
    """
    k, n, _ = images.shape
    m = matrix.shape[0]
    rows = (images.reshape(k * n, n) @ matrix.T).reshape(k, n, m)
    both = rows.transpose(0, 2, 1).reshape(k * m, n) @ matrix.T
    return np.ascontiguousarray(both.reshape(k, m, m).transpose(0, 2, 1))


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in pixels."""
    size = images.shape[-1]
    return _separable(_gaussian_matrix(size, np.arange(size) + 0.5, sigma), images)


def _smooth_noise(rng: np.random.Generator, k: int, size: int, cells: int) -> np.ndarray:
    """Smooth random texture (k, size, size) of about unit variance, with about ``cells`` blobs across."""
    spacing = size / cells
    g = _gaussian_matrix(size, (np.arange(cells) + 0.5) * spacing, 0.6 * spacing)
    noise = _separable(g, rng.standard_normal((k, cells, cells), dtype=_F32))
    return noise / (noise.std(axis=(1, 2), keepdims=True) + 1e-6)


def _paint(image, mask, value):
    """Cover ``image`` with ``value`` where ``mask`` is 1, blending where it is between 0 and 1."""
    return image + mask * (value - image)


def _blob(rng, rows, u, v, spread_x, spread_y, radius=(0.08, 0.16)):
    """A disc near the centre for the samples with a mass or cyst (zeros for the others), and its centre and radius."""
    k = len(rows)
    cx, cy = _param(rng, k, -spread_x, spread_x), _param(rng, k, -spread_y, spread_y)
    r = _param(rng, k, *radius)
    disc = _ellipse(u, v, cx, cy, r, r * _param(rng, k, 0.75, 1.0), edge=0.02)
    return (_has(rows, "mass") + _has(rows, "cyst")) * disc, (cx, cy, r)


# ---------------------------------------------------------------------------
# One renderer per modality: (rng, rows, size, region) -> float32 (k, size, size),
# where all ``rows`` share ``region``.
# ---------------------------------------------------------------------------


def _render_ct(rng, rows, size, region):
    k = len(rows)
    u, v = _coords(rng, k, size)
    texture = _smooth_noise(rng, k, size, 8)
    if region == "brain":
        a, b = _param(rng, k, 0.66, 0.74), _param(rng, k, 0.8, 0.88)
    else:
        a, b = _param(rng, k, 0.8, 0.92), _param(rng, k, 0.55, 0.7)
    body = _ellipse(u, v, 0, 0, a, b, 0.01)
    inside = _ellipse(u, v, 0, 0, a - 0.06, b - 0.06, 0.01)
    if region == "brain":
        # A bright skull around grey brain with dark, fluid-filled ventricles.
        image = _paint(0.02 + 0.93 * body, inside, 0.42 + 0.02 * texture)
        ventricles = np.maximum(_ellipse(u, v, -0.1, -0.05, 0.07, 0.2), _ellipse(u, v, 0.1, -0.05, 0.07, 0.2))
        image = _paint(image, ventricles, 0.25)
    else:
        # Darker fat under the skin around soft tissue, then organs, ribs and a vertebra at the back.
        image = _paint(0.02 + 0.3 * body, inside, 0.45 + 0.03 * texture)
        if region == "chest":
            lungs = np.maximum(
                _ellipse(u, v, -a * 0.45, -0.05, a * 0.33, b * 0.6), _ellipse(u, v, a * 0.45, -0.05, a * 0.33, b * 0.6)
            )
            image = _paint(image, lungs, 0.05 + 0.03 * np.clip(_smooth_noise(rng, k, size, 10), 0, None))
        else:
            liver = _ellipse(u, v, -a * 0.4, -0.1, a * 0.45, b * 0.55)  # on the image's left, the patient's right
            image = image + 0.06 * liver
            bowel_gas = np.clip((_smooth_noise(rng, k, size, 10) - 1.5) * 4, 0, 1) * inside * (1 - liver)
            image = _paint(image, bowel_gas, 0.05)
        angle = np.arctan2(v / b, u / a)
        rib_ring = _ellipse(u, v, 0, 0, a - 0.08, b - 0.08, 0.01) - _ellipse(u, v, 0, 0, a - 0.13, b - 0.13, 0.01)
        ribs = rib_ring * (np.cos(angle * 14 + _param(rng, k, 0, 6.3)) > 0.1)
        vertebra = _ellipse(u, v, 0, b * 0.6, 0.1, 0.09, 0.01)
        image = _paint(image, np.maximum(ribs, vertebra), 0.9)
    blob, _ = _blob(rng, rows, u, v, 0.35, 0.3)
    image = _paint(image, blob * _has(rows, "mass"), _either(rng, k, 0.34, 0.6) + 0.04 * texture)
    image = _paint(image, blob * _has(rows, "cyst"), 0.3)
    table = (np.abs(v - b - 0.12) < 0.025) * (np.abs(u) < 0.9)  # the scanner table under the patient
    return np.maximum(image, 0.35 * table)


def _render_mri(rng, rows, size, region):
    k = len(rows)
    u, v = _coords(rng, k, size)
    texture = _smooth_noise(rng, k, size, 14)
    if region == "brain":
        # Outside in: bright scalp fat, dark skull, bright fluid, folded grey brain; bright ventricles.
        a, b = _param(rng, k, 0.66, 0.74), _param(rng, k, 0.8, 0.88)
        scalp, skull, fluid, brain = (_ellipse(u, v, 0, 0, a - d, b - d, 0.01) for d in (0.0, 0.04, 0.08, 0.11))
        image = _paint(_paint(_paint(0.75 * scalp, skull, 0.05), fluid, 0.7), brain, 0.45 + 0.1 * texture)
        ventricles = np.maximum(_ellipse(u, v, -0.1, -0.05, 0.06, 0.18), _ellipse(u, v, 0.1, -0.05, 0.06, 0.18))
        image = _paint(image, ventricles, 0.85)
    elif region == "knee":
        # Coronal: bright fat under the skin around grey muscle; femur above tibia, each with a dark
        # cortex around bright fatty marrow, and a thin bright line of joint fluid between them.
        fat, muscle = _ellipse(u, v, 0, 0, 0.7, 1.6, 0.02), _ellipse(u, v, 0, 0, 0.62, 1.6, 0.02)
        image = _paint(0.8 * fat, muscle, 0.35 + 0.05 * texture)
        widths = rng.uniform(0.28, 0.36, (k, 1)) * np.array([[1.0, 0.9]])
        starts = np.broadcast_to(np.array([[0, -0.1], [0, 0.1]], _F32), (k, 2, 2))
        ends = np.broadcast_to(np.array([[0, -1.4], [0, 1.4]], _F32), (k, 2, 2))
        q = _tube_distance(u, v, starts, ends, widths)
        image = _paint(image, _tube(q, 1.0, 4), 0.08)
        image = _paint(image, _tube(q, 0.8, 4), 0.7 + 0.05 * texture)
        image = _paint(image, (np.abs(v) < 0.035) * (np.abs(u) < 0.25), 0.85)
    else:
        # Sagittal lumbar spine: vertebral bodies with bright discs between them, and behind them
        # the bright fluid of the spinal canal around a darker cord.
        image = 0.35 * _ellipse(u, v, 0, 0, 0.85, 1.6, 0.02) + 0.05 * texture
        level = np.mod(v * 3.0 + _param(rng, k, 0, 1), 1.0)
        column = np.abs(u) < 0.28
        image = _paint(image, column * (level < 0.78), 0.55 + 0.05 * texture)
        image = _paint(image, column * (level >= 0.82) * (np.abs(u) < 0.24), 0.8)
        image = _paint(image, np.abs(u - 0.4) < 0.08, 0.85)
        image = _paint(image, np.abs(u - 0.4) < 0.035, 0.4)
    blob, _ = _blob(rng, rows, u, v, 0.3, 0.35)
    image = _paint(image, blob * _has(rows, "mass"), 0.6 + 0.08 * texture)
    return _paint(image, blob * _has(rows, "cyst"), 0.95)


_ULTRASOUND_ORGANS = {"liver": (0.6, 0.42), "abdomen": (0.45, 0.3), "kidney": (0.42, 0.22), "neck": (0.3, 0.18)}


def _render_ultrasound(rng, rows, size, region):
    k = len(rows)
    u, v = _coords(rng, k, size, shift=0.03, rotate=0.03)
    # Field of view: a fan from a curved probe at the top (70%) or a rectangle from a linear one.
    apex = _param(rng, k, -1.05, -0.95)
    radius = np.sqrt(u**2 + (v - apex) ** 2)
    half_angle = _param(rng, k, 0.55, 0.75)
    fan = np.clip((half_angle - np.abs(np.arctan2(u, v - apex))) * 30, 0, 1) * (radius > 0.15) * (radius < 1.85)
    rectangle = (np.abs(u) < 0.75) * (v > -0.9) * (v < 0.9)
    linear = (rng.random((k, 1, 1)) < 0.3).astype(_F32)
    field = linear * rectangle + (1 - linear) * fan
    depth = linear * (v + 0.9) + (1 - linear) * (radius - 0.15)
    # Tissue: a soft echo texture, bright layers just under the probe, an organ with a bright capsule.
    echo = 0.5 + 0.1 * _smooth_noise(rng, k, size, 5) + 0.15 * np.cos(depth * 25) * (depth < 0.35)
    ox, oy = _param(rng, k, -0.2, 0.2), _param(rng, k, 0.15, 0.4)
    oa, ob = (s * _param(rng, k, 0.85, 1.15) for s in _ULTRASOUND_ORGANS[region])
    organ = _ellipse(u, v, ox, oy, oa, ob, 0.02)
    echo = echo + 0.1 * organ + 0.35 * (organ - _ellipse(u, v, ox, oy, oa - 0.03, ob - 0.03, 0.02))
    if region == "kidney":
        echo = _paint(echo, _ellipse(u, v, ox, oy, oa * 0.5, ob * 0.4), 0.85)  # bright fat of the renal sinus
    if region == "neck":
        echo = _paint(echo, _ellipse(u, v, ox + oa + 0.12, oy, 0.1, 0.1, 0.02), 0.03)  # the carotid artery
    blob, (cx, cy, r) = _blob(rng, rows, u, v, 0.25, 0.15)
    # Sound crosses fluid easily, so the tissue behind a cyst looks brighter (posterior enhancement).
    echo = echo * (1 + 0.35 * _has(rows, "cyst") * (np.abs(u - cx) < r) * (v > cy))
    echo = _paint(echo, blob * _has(rows, "mass"), _either(rng, k, 0.2, 0.8))
    echo = _paint(echo, blob * _has(rows, "cyst"), 0.02)
    # Speckle: a multiplicative, Rayleigh-distributed grain about two pixels wide.
    g = _gaussian_matrix(size, np.arange(1.0, size, 2), 1.0)
    grain = (k, g.shape[1], g.shape[1])
    speckle = np.hypot(
        _separable(g, rng.standard_normal(grain, dtype=_F32)), _separable(g, rng.standard_normal(grain, dtype=_F32))
    )
    speckle = 0.4 + 0.6 * speckle / speckle.mean(axis=(1, 2), keepdims=True)
    return field * echo * speckle * np.exp(-0.6 * depth)  # echoes fade with depth


def _render_fluoroscopy(rng, rows, size, region):
    k = len(rows)
    u, v = _coords(rng, k, size, shift=0.1, rotate=0.3)
    image = _param(rng, k, 0.5, 0.65) + 0.04 * _smooth_noise(rng, k, size, 3)
    image = image + 0.06 * (np.abs(u - _param(rng, k, -0.25, 0.25)) < 0.12)  # faint spine shadow
    # The contrast-filled lumen: a polyline whose course and calibre depend on the organ, plus a
    # random sideways sway. s runs along it from 0 to 1.
    n = 7
    s = np.linspace(0, 1, n)[None, :]
    sway = rng.uniform(0.05, 0.15, (k, 1)) * np.sin(rng.uniform(2, 5, (k, 1)) * s * np.pi + rng.uniform(0, 6.3, (k, 1)))
    if region == "esophagus":  # straight down
        x, y, calibre = rng.uniform(-0.15, 0.15, (k, 1)), -1.2 + 2.4 * s, 0.07
    elif region == "stomach":  # a J-shape
        x, y, calibre = -0.2 + 0.7 * s**2, -0.9 + 1.3 * np.sin(0.6 * np.pi * s), 0.16
    else:  # colon: an arch across the abdomen
        x, y, calibre = 0.65 * np.cos(np.pi * (1 - s)), 0.5 - 0.9 * np.sin(np.pi * (1 - s)), 0.09
    points = np.stack(np.broadcast_arrays(x + sway, y), -1)
    widths = calibre * rng.uniform(0.8, 1.2, (k, 1)) * np.ones((1, n - 1))
    # Stenosis narrows one segment; a diverticulum is a round pouch (a disc) just beside it.
    at, samples = rng.integers(1, n - 2, k), np.arange(k)
    widths[samples, at] *= np.where(rows["finding"].to_numpy() == "stenosis", 0.3, 1.0)
    direction = points[samples, at + 1] - points[samples, at]
    normal = np.stack([-direction[:, 1], direction[:, 0]], -1) / np.linalg.norm(direction, axis=1, keepdims=True)
    pouch = points[samples, at] + normal * 1.7 * widths[:, :1]
    pouch_width = 1.1 * widths[:, 0] * (rows["finding"].to_numpy() == "diverticulum")
    starts = np.concatenate([points[:, :-1], pouch[:, None]], 1)
    ends = np.concatenate([points[:, 1:], pouch[:, None]], 1)
    lumen = np.sqrt(_tube(_tube_distance(u, v, starts, ends, np.concatenate([widths, pouch_width[:, None]], 1))))
    image = image * (1 - _param(rng, k, 0.45, 0.65) * lumen)
    # Most show the round field of the image intensifier.
    t = (np.arange(size, dtype=_F32) + 0.5) * (2 / size) - 1
    radius = np.sqrt(t[None, None, :] ** 2 + t[None, :, None] ** 2)
    circular = (rng.random((k, 1, 1)) < 0.6).astype(_F32)
    field = 1 - circular * np.clip((radius - _param(rng, k, 0.9, 1.05)) * 40, 0, 1)
    return 0.03 + image * field


def _render_chest_xray(rng, rows, u, v):
    """Frontal chest film: dark lungs crossed by ribs, a bright heart and spine; pneumonia adds a patchy opacity."""
    k, size = len(rows), u.shape[-1]
    torso = _ellipse(u, v, 0, 0.2, 0.95, 1.15, 0.05)
    image = 0.03 + 0.42 * torso
    lung_x = _param(rng, k, 0.33, 0.4)
    lung_a, lung_b = _param(rng, k, 0.25, 0.3), _param(rng, k, 0.5, 0.6)
    lungs = np.maximum(
        _ellipse(u, v, -lung_x, -0.05, lung_a, lung_b, 0.06), _ellipse(u, v, lung_x, -0.05, lung_a, lung_b, 0.06)
    )
    image = _paint(image, lungs, 0.16 + 0.03 * _smooth_noise(rng, k, size, 12))
    # Posterior ribs: thin bands that curve down towards the sides.
    phase = (v + 0.35 * u**2) * _param(rng, k, 4.5, 5.5) + _param(rng, k, 0, 1)
    image = image + 0.12 * np.clip(np.cos(2 * np.pi * phase) * 3 - 1.8, 0, 1) * lungs
    heart = _ellipse(u, v, 0.15, 0.3, _param(rng, k, 0.27, 0.33), 0.26, 0.05)
    image = _paint(image, heart, 0.6)
    image = _paint(image, (np.abs(u) < 0.1) * torso, 0.62)  # spine and mediastinum
    clavicles = _tube_distance(
        u, v,
        np.broadcast_to(np.array([[-0.1, -0.62], [0.1, -0.62]], _F32), (k, 2, 2)),
        np.broadcast_to(np.array([[-0.6, -0.72], [0.6, -0.72]], _F32), (k, 2, 2)),
        np.full((k, 2), 0.035, dtype=_F32),
    )
    image = image + 0.25 * _tube(clavicles, 1.0, 3)
    # Pneumonia: patchy opacity in the lower lobe the caption names (the patient's right is the image's left).
    lung_centre = np.where((rows["side"].to_numpy() == "right")[:, None, None], -lung_x, lung_x)
    lower_lobe = _ellipse(u, v, lung_centre, 0.2, lung_a * 0.9, lung_b * 0.5, 0.1)
    patches = np.clip(_smooth_noise(rng, k, size, 8) + 0.4, 0, 1)
    opacity = _param(rng, k, 0.6, 0.9) * _has(rows, "consolidation") * lower_lobe * patches * lungs * (1 - heart)
    return _paint(image, opacity, 0.5)


def _limb_bones(region: str) -> np.ndarray:
    """(K, 5) bone segments (x0, y0, x1, y1, half-width) of a knee or hand film."""
    if region == "knee":  # femur above the joint, tibia and the thin fibula below it
        return np.array([(0, -1.3, 0, -0.14, 0.2), (0, 0.08, 0, 1.3, 0.18), (0.25, 0.2, 0.27, 1.3, 0.05)])
    bones = []  # hand: four fingers, each a metacarpal and three phalanges with joint spaces between
    for x in (-0.36, -0.12, 0.12, 0.36):
        joints = [(x * 0.8, 0.9), (x, 0.2), (x * 1.15, -0.25), (x * 1.25, -0.6), (x * 1.3, -0.85)]
        bones += [(x0, y0 - 0.04, x1, y1 + 0.04, 0.045) for (x0, y0), (x1, y1) in zip(joints[:-1], joints[1:])]
    return np.array(bones)


def _render_limb_xray(rng, rows, u, v, region):
    """Knee or hand film: soft tissue around bright bones with a darker marrow canal; a fracture is a dark line."""
    k = len(rows)
    bones = _limb_bones(region).astype(_F32)
    bones = np.broadcast_to(bones, (k, *bones.shape))
    starts, ends, widths = bones[..., 0:2], bones[..., 2:4], bones[..., 4]
    q = _tube_distance(u, v, starts, ends, widths)
    bone = _tube(q, 1.0, 3)
    image = 0.04 + 0.3 * _tube(q, 2.3 if region == "knee" else 2.2, 4) + 0.45 * bone - 0.12 * _tube(q, 0.5, 2)
    # Fracture: a thin dark line across the middle of the femur or tibia, or of a metacarpal.
    pick = rng.integers(0, 2, k) if region == "knee" else 4 * rng.integers(0, 4, k)
    samples = np.arange(k)
    centre = (starts[samples, pick] + ends[samples, pick]) / 2
    angle = rng.uniform(-0.6, 0.6, k)
    half_length = (0.6 * widths[samples, pick] + 0.05)[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    line = _tube_distance(
        u, v, (centre - half_length)[:, None], (centre + half_length)[:, None],
        0.02 * (rows["finding"].to_numpy() == "fracture")[:, None],
    )
    return image - 0.4 * _tube(line, 1.0, 2) * bone


def _render_xray(rng, rows, size, region):
    u, v = _coords(rng, len(rows), size)
    if region == "chest":
        return _render_chest_xray(rng, rows, u, v)
    return _render_limb_xray(rng, rows, u, v, region)


# Where the main vessel enters and the direction it heads in (radians; -pi/2 points up).
_ANGIOGRAPHY_ENTRY = {
    "brain": ((0.0, 1.1), -np.pi / 2),
    "kidney": ((-1.1, 0.1), 0.0),
    "heart": ((-0.8, -1.1), np.pi / 3),
    "leg": ((0.0, -1.1), np.pi / 2),
}


def _render_angiography(rng, rows, size, region):
    k = len(rows)
    u, v = _coords(rng, k, size, shift=0.05, rotate=0.4)
    image = _param(rng, k, 0.72, 0.88) + 0.03 * _smooth_noise(rng, k, size, 3)
    finding = rows["finding"].to_numpy()

    def direction(angle):  # (k,) angles -> (k, 2) unit vectors
        return np.stack([np.cos(angle), np.sin(angle)], -1)

    # The trunk enters at the region's edge (shifted sideways at random) and is three collinear
    # segments, so that a stenosis can narrow the middle one.
    entry, heading = _ANGIOGRAPHY_ENTRY[region]
    start = np.array(entry) + rng.uniform(-0.3, 0.3, (k, 1)) * direction(np.full(k, heading + np.pi / 2))
    angle = heading + rng.uniform(-0.3, 0.3, k)
    length, width = rng.uniform(0.7, 0.9, k), rng.uniform(0.05, 0.07, k)
    step = direction(angle) * length[:, None]
    trunk = [start + f * step for f in (0.0, 0.4, 0.65, 1.0)]
    tubes = [  # (start, end, half-width), each (k, 2), (k, 2), (k,)
        (trunk[0], trunk[1], width),
        (trunk[1], trunk[2], np.where(finding == "stenosis", 0.3, 1.0) * width),
        (trunk[2], trunk[3], width),
        (trunk[0] - step, trunk[0], np.full(k, 0.012)),  # the catheter, coming in from outside the image
    ]
    # A binary tree of branches, three generations deep, grown from the end of the trunk.
    tips = [(trunk[3], angle, length, width)]
    for _ in range(3):
        grown = []
        for tip, tip_angle, tip_length, tip_width in tips:
            for sign in (-1, 1):
                branch_angle = tip_angle + sign * rng.uniform(0.35, 0.8, k)
                branch_length = tip_length * rng.uniform(0.55, 0.8, k)
                branch_width = tip_width * 0.7 * (rng.random(k) < 0.9)  # prune some branches and their children
                end = tip + direction(branch_angle) * branch_length[:, None]
                tubes.append((tip, end, branch_width))
                grown.append((end, branch_angle, branch_length, branch_width))
        tips = grown
    # An aneurysm: a round sac (a disc) where the trunk divides.
    sac = trunk[3] + rng.uniform(-1, 1, (k, 2)) * width[:, None]
    tubes.append((sac, sac, np.where(finding == "aneurysm", 2.5, 0.0) * width))
    starts, ends, widths = (np.stack(x, 1) for x in zip(*tubes))
    vessels = np.sqrt(_tube(_tube_distance(u, v, starts, ends, widths)))
    return image * (1 - 0.8 * vessels)


_RENDERERS = {
    "ct": _render_ct,
    "mri": _render_mri,
    "ultrasound": _render_ultrasound,
    "fluoroscopy": _render_fluoroscopy,
    "xray": _render_xray,
    "angiography": _render_angiography,
}
# Per modality: (sensor noise standard deviation, blur sigma in pixels at 128 px).
_FINISH = {
    "ct": (0.03, 0.5),
    "mri": (0.015, 1.2),
    "ultrasound": (0.01, 0.0),
    "fluoroscopy": (0.035, 0.8),
    "xray": (0.02, 0.8),
    "angiography": (0.03, 0.6),
}


def _finish(rng: np.random.Generator, image: np.ndarray, modality: str) -> np.ndarray:
    """Blur, random contrast, sensor noise; float (k, S, S) -> uint8 (k, S, S)."""
    k, size = len(image), image.shape[-1]
    noise, blur = _FINISH[modality]
    if blur:
        image = _blur(image, blur * size / 128)
    image = image * _param(rng, k, 0.85, 1.15) + _param(rng, k, -0.05, 0.05)
    image = image + noise * _param(rng, k, 0.5, 1.5) * rng.standard_normal(image.shape, dtype=_F32)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def render(rng: np.random.Generator, frame: pd.DataFrame, size: int) -> np.ndarray:
    """uint8 images (N, size, size, 3) for the rows of ``frame``, drawn a (modality, region) group at a time."""
    images = np.empty((len(frame), size, size, 3), dtype=np.uint8)
    groups = frame.groupby(["modality", "region"]).indices
    for (modality, region), index in sorted(groups.items()):
        for start in range(0, len(index), _CHUNK):
            chunk = index[start : start + _CHUNK]
            image = _RENDERERS[modality](rng, frame.iloc[chunk], size, region)
            images[chunk] = _finish(rng, image.astype(_F32), modality)[..., None]  # grey into R, G and B
    return images

