"""The images of the synthetic set: one NumPy renderer per modality, drawn on coordinate grids.

The modalities differ the way real ones do (CT's bright bone on black air,
MRI's dark bone and bright fluid, ultrasound's speckled fan, fluoroscopy's dim
field crossed by a dark lumen, X-ray's bright bones, angiography's dark vessels
on a light background), so a small CNN can learn them but a single pixel
statistic cannot. Every region and finding a caption names is drawn as well
(a mass or cyst is a disc, consolidation a patchy opacity in the named lung,
stenosis a narrowed vessel or lumen, ...), so captions and images agree.
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


def _pair(u, v, x, y, a, b, edge=0.04):
    """Two ellipses mirrored about the midline, centred at (-x, y) and (x, y): lungs, ventricles."""
    return np.maximum(_ellipse(u, v, -x, y, a, b, edge), _ellipse(u, v, x, y, a, b, edge))


def _tube_distance(u, v, starts, ends, widths):
    """How far each pixel is from the nearest of K tubes, as (distance / tube width)**2: below 1 is inside.

    ``starts`` and ``ends`` (k, K, 2) are the ends of each tube's axis (rounded), ``widths`` (k, K) its
    half-width; a tube of length 0 is a disc, one of width 0 is absent. ``q / c**2`` is the distance to
    tubes ``c`` times as wide.
    """
    starts, ends, widths = (np.asarray(a, dtype=_F32)[..., None, None] for a in (starts, ends, widths))
    nearest = np.full(u.shape, np.inf, dtype=_F32)
    for j in range(widths.shape[1]):
        w = widths[:, j]
        x0, y0 = starts[:, j, 0], starts[:, j, 1]
        dx, dy = ends[:, j, 0] - x0, ends[:, j, 1] - y0
        ex, ey = u - x0, v - y0
        # t: where the point of the axis closest to the pixel lies, 0 at the start and 1 at the end.
        t = np.clip((ex * dx + ey * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
        q = ((ex - t * dx) ** 2 + (ey - t * dy) ** 2) / np.maximum(w, 1e-6) ** 2
        np.minimum(nearest, q, out=nearest, where=w > 0)
    return nearest


def _fixed_tubes(u, v, segments):
    """``_tube_distance`` to the same tubes in every sample; ``segments`` (K, 5) holds (x0, y0, x1, y1, half-width)."""
    tubes = np.broadcast_to(np.asarray(segments, dtype=_F32), (len(u), len(segments), 5))
    return _tube_distance(u, v, tubes[..., 0:2], tubes[..., 2:4], tubes[..., 4])


def _tube(q, scale=1.0, hardness=1.0):
    """Profile 0..1 of tubes ``scale`` times as wide as those ``q`` was measured for: about a cylinder's
    thickness seen from the side (``1 - q``), flattened into a solid rod with a soft edge by ``hardness`` > 1."""
    return np.clip((1 - q / scale**2) * hardness, 0, 1)


def _gaussian_matrix(size: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    """(size, len(centres)) float32 Gaussian weights of each centre for each pixel, rows summing to 1."""
    w = np.exp(-0.5 * ((np.arange(size)[:, None] + 0.5 - centres[None, :]) / sigma) ** 2)
    return (w / w.sum(1, keepdims=True)).astype(_F32)


def _separable(matrix: np.ndarray, images: np.ndarray) -> np.ndarray:
    """``matrix @ image @ matrix.T`` for each image of a (k, n, n) stack -> (k, m, m), as two large matrix
    products over the whole stack: several times faster than NumPy's batched matmul over small matrices."""
    k, n, _ = images.shape
    m = matrix.shape[0]
    rows = (images.reshape(k * n, n) @ matrix.T).reshape(k, n, m)
    both = rows.transpose(0, 2, 1).reshape(k * m, n) @ matrix.T
    return np.ascontiguousarray(both.reshape(k, m, m).transpose(0, 2, 1))


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
    """Axial slice: an oval body on black air; a bright skull with dark ventricles, or soft tissue with a
    bright vertebra and dark lungs (chest) or a denser liver (abdomen); masses and cysts are discs."""
    k = len(rows)
    u, v = _coords(rng, k, size)
    texture = _smooth_noise(rng, k, size, 8)
    if region == "brain":
        a, b = _param(rng, k, 0.66, 0.74), _param(rng, k, 0.8, 0.88)
    else:
        a, b = _param(rng, k, 0.8, 0.92), _param(rng, k, 0.55, 0.7)
    body, inside = (_ellipse(u, v, 0, 0, a - d, b - d, 0.01) for d in (0.0, 0.06))
    if region == "brain":
        # A bright skull around grey brain with dark, fluid-filled ventricles.
        image = _paint(0.02 + 0.93 * body, inside, 0.42 + 0.02 * texture)
        image = _paint(image, _pair(u, v, 0.1, -0.05, 0.07, 0.2), 0.25)
    else:
        # Darker fat under the skin around soft tissue, then lungs or liver, and a vertebra at the back.
        image = _paint(0.02 + 0.3 * body, inside, 0.45 + 0.03 * texture)
        if region == "chest":
            lungs = _pair(u, v, a * 0.45, -0.05, a * 0.33, b * 0.6)
            image = _paint(image, lungs, 0.05 + 0.03 * np.clip(_smooth_noise(rng, k, size, 10), 0, None))
        else:
            image = image + 0.06 * _ellipse(u, v, -a * 0.4, -0.1, a * 0.45, b * 0.55)  # liver, on the patient's right
        image = _paint(image, _ellipse(u, v, 0, b * 0.6, 0.1, 0.09, 0.01), 0.9)
    blob, _ = _blob(rng, rows, u, v, 0.35, 0.3)
    image = _paint(image, blob * _has(rows, "mass"), _either(rng, k, 0.34, 0.6) + 0.04 * texture)
    return _paint(image, blob * _has(rows, "cyst"), 0.3)


def _render_mri(rng, rows, size, region):
    """Smooth, low-noise slice where bone is dark and fat and fluid are bright: a brain, a coronal knee or a
    sagittal lumbar spine; a mass is a grey-bright disc, a cyst a very bright one."""
    k = len(rows)
    u, v = _coords(rng, k, size)
    texture = _smooth_noise(rng, k, size, 14)
    if region == "brain":
        # Outside in: bright scalp fat, dark skull, bright fluid, folded grey brain; bright ventricles.
        a, b = _param(rng, k, 0.66, 0.74), _param(rng, k, 0.8, 0.88)
        scalp, skull, fluid, brain = (_ellipse(u, v, 0, 0, a - d, b - d, 0.01) for d in (0.0, 0.04, 0.08, 0.11))
        image = _paint(_paint(_paint(0.75 * scalp, skull, 0.05), fluid, 0.7), brain, 0.45 + 0.1 * texture)
        image = _paint(image, _pair(u, v, 0.1, -0.05, 0.06, 0.18), 0.85)
    elif region == "knee":
        # Bright fat under the skin around grey muscle; femur above tibia, each a dark cortex around
        # bright fatty marrow, and a thin bright line of joint fluid between them.
        fat, muscle = _ellipse(u, v, 0, 0, 0.7, 1.6, 0.02), _ellipse(u, v, 0, 0, 0.62, 1.6, 0.02)
        image = _paint(0.8 * fat, muscle, 0.35 + 0.05 * texture)
        q = _fixed_tubes(u, v, [(0, -0.1, 0, -1.4, 0.32), (0, 0.1, 0, 1.4, 0.29)])
        image = _paint(image, _tube(q, 1.0, 4), 0.08)
        image = _paint(image, _tube(q, 0.8, 4), 0.7 + 0.05 * texture)
        image = _paint(image, (np.abs(v) < 0.035) * (np.abs(u) < 0.25), 0.85)
    else:
        # Vertebral bodies with bright discs between them, and behind them the bright fluid of the
        # spinal canal around a darker cord.
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
    """A fan of speckled echoes on black, fading with depth, around the region's organ with its bright
    capsule; a mass is a dark or bright disc, a cyst a black one with brighter tissue behind it."""
    k = len(rows)
    u, v = _coords(rng, k, size, shift=0.03, rotate=0.03)
    # The field of view: a fan from a curved probe just above the image.
    apex = _param(rng, k, -1.05, -0.95)
    radius = np.sqrt(u**2 + (v - apex) ** 2)
    half_angle = _param(rng, k, 0.55, 0.75)
    field = np.clip((half_angle - np.abs(np.arctan2(u, v - apex))) * 30, 0, 1) * (radius > 0.15) * (radius < 1.85)
    depth = radius - 0.15
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
    speckle = np.hypot(*(_separable(g, rng.standard_normal(grain, dtype=_F32)) for _ in range(2)))
    speckle = 0.4 + 0.6 * speckle / speckle.mean(axis=(1, 2), keepdims=True)
    return field * echo * speckle * np.exp(-0.6 * depth)  # echoes fade with depth


def _render_fluoroscopy(rng, rows, size, region):
    """A dim field, often circular, crossed by a dark contrast-filled lumen shaped by the organ; stenosis
    narrows one segment, a diverticulum is a pouch beside it."""
    k = len(rows)
    u, v = _coords(rng, k, size, shift=0.1, rotate=0.3)
    image = _param(rng, k, 0.5, 0.65) + 0.04 * _smooth_noise(rng, k, size, 3)
    # The lumen: a polyline whose course and calibre depend on the organ, plus a random sideways
    # sway. s runs along it from 0 to 1.
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
    circular = (rng.random((k, 1, 1)) < 0.6).astype(_F32)
    field = 1 - circular * np.clip((np.hypot(u, v) - _param(rng, k, 0.9, 1.05)) * 40, 0, 1)
    return 0.03 + image * field


def _render_chest_xray(rng, rows, u, v):
    """Frontal chest film: dark lungs crossed by ribs, a bright heart and spine; pneumonia adds a patchy opacity."""
    k, size = len(rows), u.shape[-1]
    torso = _ellipse(u, v, 0, 0.2, 0.95, 1.15, 0.05)
    image = 0.03 + 0.42 * torso
    lung_x = _param(rng, k, 0.33, 0.4)
    lung_a, lung_b = _param(rng, k, 0.25, 0.3), _param(rng, k, 0.5, 0.6)
    lungs = _pair(u, v, lung_x, -0.05, lung_a, lung_b, 0.06)
    image = _paint(image, lungs, 0.16 + 0.03 * _smooth_noise(rng, k, size, 12))
    # Posterior ribs: thin bands that curve down towards the sides.
    phase = (v + 0.35 * u**2) * _param(rng, k, 4.5, 5.5) + _param(rng, k, 0, 1)
    image = image + 0.12 * np.clip(np.cos(2 * np.pi * phase) * 3 - 1.8, 0, 1) * lungs
    heart = _ellipse(u, v, 0.15, 0.3, _param(rng, k, 0.27, 0.33), 0.26, 0.05)
    image = _paint(image, heart, 0.6)
    image = _paint(image, (np.abs(u) < 0.1) * torso, 0.62)  # spine and mediastinum
    # Pneumonia: patchy opacity in the lower lobe the caption names (the patient's right is the image's left).
    lung_centre = np.where((rows["side"].to_numpy() == "right")[:, None, None], -lung_x, lung_x)
    lower_lobe = _ellipse(u, v, lung_centre, 0.2, lung_a * 0.9, lung_b * 0.5, 0.1)
    patches = np.clip(_smooth_noise(rng, k, size, 8) + 0.4, 0, 1)
    opacity = _param(rng, k, 0.6, 0.9) * _has(rows, "consolidation") * lower_lobe * patches * lungs * (1 - heart)
    return _paint(image, opacity, 0.5)


# The bones of the limb films, as (x0, y0, x1, y1, half-width).
_LIMB_BONES = {
    "knee": ((0, -1.3, 0, -0.14, 0.2), (0, 0.08, 0, 1.3, 0.18), (0.25, 0.2, 0.27, 1.3, 0.05)),  # femur, tibia, fibula
    "hand": tuple((0.8 * x, 0.9, 1.3 * x, -0.85, 0.045) for x in (-0.36, -0.12, 0.12, 0.36)),  # four fingers
}


def _render_xray(rng, rows, size, region):
    """A chest film (``_render_chest_xray``), or a knee or hand film: soft tissue around bright long bones,
    a fracture a dark line across one."""
    k = len(rows)
    u, v = _coords(rng, k, size)
    if region == "chest":
        return _render_chest_xray(rng, rows, u, v)
    bones = np.array(_LIMB_BONES[region], dtype=_F32)
    q = _fixed_tubes(u, v, bones)
    bone = _tube(q, 1.0, 3)
    image = 0.04 + 0.3 * _tube(q, 2.3, 4) + 0.45 * bone
    # Fracture: a thin dark line, tilted at random, across the middle of the femur or tibia, or of a finger.
    broken = bones[rng.integers(0, 2 if region == "knee" else len(bones), k)]
    centre = (broken[:, 0:2] + broken[:, 2:4]) / 2
    angle = rng.uniform(-0.6, 0.6, k)
    half_length = (0.6 * broken[:, 4] + 0.05)[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    width = 0.02 * (rows["finding"].to_numpy() == "fracture")[:, None]
    line = _tube_distance(u, v, (centre - half_length)[:, None], (centre + half_length)[:, None], width)
    return image - 0.4 * _tube(line, 1.0, 2) * bone


# Where the main vessel enters and the direction it heads in (radians; -pi/2 points up).
_ANGIOGRAPHY_ENTRY = {
    "brain": ((0.0, 1.1), -np.pi / 2), "kidney": ((-1.1, 0.1), 0.0),
    "heart": ((-0.8, -1.1), np.pi / 3), "leg": ((0.0, -1.1), np.pi / 2),
}


def _render_angiography(rng, rows, size, region):
    """Subtracted angiogram: on a light background, a catheter leads into a dark vessel that enters from the
    region's edge and forks in two; stenosis narrows the vessel, an aneurysm is a round sac at the fork."""
    k = len(rows)
    u, v = _coords(rng, k, size, shift=0.05, rotate=0.4)
    image = _param(rng, k, 0.72, 0.88) + 0.03 * _smooth_noise(rng, k, size, 3)
    finding = rows["finding"].to_numpy()

    def direction(angle):  # (k,) angles -> (k, 2) unit vectors
        return np.stack([np.cos(angle), np.sin(angle)], -1)

    # The trunk enters at the region's edge (shifted sideways at random) and is three collinear
    # segments, so that a stenosis can narrow the middle one.
    edge, heading = _ANGIOGRAPHY_ENTRY[region]
    entry = np.array(edge) + rng.uniform(-0.3, 0.3, (k, 1)) * direction(np.full(k, heading + np.pi / 2))
    angle = heading + rng.uniform(-0.3, 0.3, k)
    length, width = rng.uniform(0.7, 0.9, (k, 1)), rng.uniform(0.05, 0.07, k)
    step = direction(angle) * length
    start, middle_start, middle_end, fork = (entry + f * step for f in (0.0, 0.4, 0.65, 1.0))
    sac = fork + rng.uniform(-1, 1, (k, 2)) * width[:, None]
    tubes = [  # (start, end, half-width), each (k, 2), (k, 2), (k,)
        (start - step, start, np.full(k, 0.012)),  # the catheter, coming in from outside the image
        (start, middle_start, width),
        (middle_start, middle_end, np.where(finding == "stenosis", 0.3, 1.0) * width),
        (middle_end, fork, width),
        (sac, sac, np.where(finding == "aneurysm", 2.5, 0.0) * width),
    ]
    for sign in (-1, 1):  # two branches, thinner and shorter than the trunk
        end = fork + direction(angle + sign * rng.uniform(0.35, 0.8, k)) * length * rng.uniform(0.55, 0.8, (k, 1))
        tubes.append((fork, end, 0.7 * width))
    starts, ends, widths = (np.stack(x, 1) for x in zip(*tubes))
    vessels = np.sqrt(_tube(_tube_distance(u, v, starts, ends, widths)))
    return image * (1 - 0.8 * vessels)


# Per modality: (renderer, sensor noise standard deviation, blur sigma in pixels at 128 px).
_MODALITIES = {
    "ct": (_render_ct, 0.03, 0.5),
    "mri": (_render_mri, 0.015, 1.2),
    "ultrasound": (_render_ultrasound, 0.01, 0.0),
    "fluoroscopy": (_render_fluoroscopy, 0.035, 0.8),
    "xray": (_render_xray, 0.02, 0.8),
    "angiography": (_render_angiography, 0.03, 0.6),
}


def _finish(rng: np.random.Generator, image: np.ndarray, noise: float, blur: float) -> np.ndarray:
    """Blur, random contrast, sensor noise; float (k, S, S) -> uint8 (k, S, S)."""
    k, size = len(image), image.shape[-1]
    if blur:  # Gaussian; sigma grows with the image, so every size is blurred alike
        image = _separable(_gaussian_matrix(size, np.arange(size) + 0.5, blur * size / 128), image)
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
            draw, noise, blur = _MODALITIES[modality]
            image = draw(rng, frame.iloc[chunk], size, region)
            images[chunk] = _finish(rng, image.astype(_F32), noise, blur)[..., None]  # grey into R, G and B
    return images

