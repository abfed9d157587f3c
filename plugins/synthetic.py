"""A synthetic, MVTec-like dataset that ships with anombench: the embedded default for the quickstart and tests.

Why it exists: CI and a fresh checkout must exercise every part of the harness on real images with exact
ground truth, without downloading anything. Every image is drawn on demand from (data_seed, category, split,
index), so the dataset is deterministic, costs no disk and pickles cheaply into DataLoader workers.

Categories follow MVTec's two families:
- textures: ``stripes`` (a wavy grating), ``weave`` (a basket weave with colour noise); normal images vary in
  phase, tint, noise;
- objects: ``disc`` (a shaded round part), ``plate`` (a rounded rectangle with holes); normal images vary in
  position, size, rotation and lighting.
Defects, each with an exact mask of the pixels it changed: ``scratch`` (a thin bright line), ``spot`` (a dark blob),
``crack`` (a jagged one-pixel hairline whose pixels may touch only at corners, so PRO must
use 8-connected regions to see one defect), ``color`` (a hue shift inside an ellipse) and, on objects, ``missing``
(a sector of the part cut away, showing background). Those five are easy: their pixels leave the range that normal
images take at that place, so a per-pixel method (distance to the mean training image) finds them as well as PaDiM.
Four more keep every pixel inside the normal range and differ only in structure, which is what separates a method
that models local appearance from a trivial one (issue 16):
- ``faint``: a scratch, spot or crack blended in at 25-50 % strength;
- ``tint``: a colour shift inside an ellipse no larger than the tint variation between normal images;
- ``patch``: an ellipse of the image replaced by the same image shifted elsewhere (cut and paste: the stripes'
  phase breaks, the disc's shading jumps, the weave's grain has seams), in the part's own colours;
- ``edge``: a small defect on a texture edge or the part's outline: on textures a small ``patch`` centred on a
  steep gradient, on objects a small chip off the rim showing background.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Callable

import numpy as np
import torch

from anombench import hookimpl
from anombench.api import Family, Sample
from anombench.errors import UserError
from anombench.params import Range, check_arguments

TEXTURES = ("stripes", "weave")
OBJECTS = ("disc", "plate")
CATEGORIES = TEXTURES + OBJECTS
DEFECTS = ("scratch", "spot", "crack", "color", "missing", "faint", "tint", "patch", "edge")
TINT_SPREAD = 0.05  # relative per-channel colour variation between normal images (standard deviation)

Canvas = np.ndarray  # (H, W, 3) float64 in [0, 1]
Mask = np.ndarray  # (H, W) bool


def _rng(*key: object) -> np.random.Generator:
    """A generator seeded from a stable hash of the key, so any image can be drawn alone and identically."""
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): (y, x), each (size, size)."""
    axis = (np.arange(size) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bilinearly; in [0, 1]."""
    coarse = torch.from_numpy(rng.random((1, 1, cells, cells)))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine[0, 0].numpy()


def _stripes(rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    y, x = _grid(size)
    angle = rng.uniform(0.6, 0.9)
    phase = rng.uniform(0, 2 * np.pi)
    wobble = 0.02 * np.sin(2 * np.pi * 3 * y + rng.uniform(0, 6.3))
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * 14 * (np.cos(angle) * x + np.sin(angle) * y + wobble) + phase)
    tint = np.array([0.55, 0.5, 0.4]) * (1 + rng.normal(0, TINT_SPREAD, 3))
    img = tint * (0.6 + 0.4 * wave[..., None])
    return img, np.ones((size, size), bool)


def _weave(rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    """A basket weave: checkerboard cells of threads running one way or the other, with a random phase, a slight
    rotation and smooth colour noise (so a cut-and-paste breaks the thread pattern, as on a real fabric)."""
    y, x = _grid(size)
    angle = rng.normal(0, 0.05)
    u = 12 * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 1)
    v = 12 * (-np.sin(angle) * x + np.cos(angle) * y) + rng.uniform(0, 1)
    along_u = (np.floor(u) + np.floor(v)) % 2 == 0
    threads = np.where(along_u, np.sin(np.pi * 3 * v) ** 2, np.sin(np.pi * 3 * u) ** 2)
    base = np.stack([_smooth_noise(rng, size, 12) for _ in range(3)], axis=-1)
    tint = np.array([0.35, 0.45, 0.6]) * (1 + rng.normal(0, TINT_SPREAD, 3))
    img = tint * (0.7 + 0.35 * threads[..., None] + 0.2 * (base - 0.5))
    return img, np.ones((size, size), bool)


def _object_background(size: int) -> Canvas:
    y, _ = _grid(size)
    return np.repeat((0.15 + 0.1 * y)[..., None], 3, axis=-1)


def _disc(rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    y, x = _grid(size)
    cy, cx = 0.5 + rng.normal(0, 0.015, 2)
    radius = rng.uniform(0.3, 0.33)
    r = np.hypot(y - cy, x - cx)
    body = r < radius
    shade = 0.55 + 0.35 * (1 - r / radius) + 0.05 * np.cos(2 * np.pi * r / 0.05)
    img = _object_background(size)
    colour = np.array([0.8, 0.7, 0.45]) * (1 + rng.normal(0, TINT_SPREAD, 3))
    img[body] = (colour * shade[..., None])[body]
    return img, body


def _plate(rng: np.random.Generator, size: int) -> tuple[Canvas, Mask]:
    y, x = _grid(size)
    theta = rng.normal(0, 0.05)
    cy, cx = 0.5 + rng.normal(0, 0.015, 2)
    u = np.cos(theta) * (x - cx) + np.sin(theta) * (y - cy)
    v = -np.sin(theta) * (x - cx) + np.cos(theta) * (y - cy)
    half_w, half_h, corner = 0.32, 0.22, 0.06
    qx, qy = np.maximum(np.abs(u) - half_w + corner, 0), np.maximum(np.abs(v) - half_h + corner, 0)
    body = (np.hypot(qx, qy) < corner) & (np.abs(u) < half_w) & (np.abs(v) < half_h)
    for hx in (-0.2, 0.2):
        body &= np.hypot(u - hx, v) > 0.06
    img = _object_background(size)
    metal = 0.6 + 0.2 * (u + 0.5) + 0.02 * rng.normal(size=u.shape)
    img[body] = (np.array([0.7, 0.72, 0.75]) * (1 + rng.normal(0, TINT_SPREAD, 3)) * metal[..., None])[body]
    return img, body


DRAW: dict[str, Callable[[np.random.Generator, int], tuple[Canvas, Mask]]] = {
    "stripes": _stripes, "weave": _weave, "disc": _disc, "plate": _plate,
}


def _point_inside(rng: np.random.Generator, region: Mask, margin: int) -> tuple[int, int]:
    """A random pixel of the region at least `margin` from the border (the part, for objects)."""
    size = region.shape[0]
    inner = np.zeros_like(region)
    inner[margin:size - margin, margin:size - margin] = region[margin:size - margin, margin:size - margin]
    ys, xs = np.nonzero(inner)
    k = rng.integers(len(ys))
    return int(ys[k]), int(xs[k])


def _polyline_mask(size: int, points: np.ndarray, width: float) -> Mask:
    """Pixels within width/2 of a polyline (points in pixel units, (n, 2) as (y, x))."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    distance = np.full((size, size), np.inf)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
        distance = np.minimum(distance, np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)))
    return distance <= width / 2


def _scratch(rng, img, region):
    size = img.shape[0]
    y0, x0 = _point_inside(rng, region, size // 5)
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.3) * size
    end = (y0 + length * np.sin(angle), x0 + length * np.cos(angle))
    mask = _polyline_mask(size, np.array([(y0, x0), end]), max(1.5, size / 90)) & region
    img[mask] = 0.95
    return mask


def _ellipse(rng: np.random.Generator, region: Mask, margin: int, radii: tuple[float, float],
             min_radius: float) -> Mask:
    """A random axis-aligned ellipse inside the region; radii as fractions of the image size."""
    size = region.shape[0]
    y0, x0 = _point_inside(rng, region, margin)
    yy, xx = np.mgrid[0:size, 0:size]
    ry, rx = np.maximum(rng.uniform(*radii, 2) * size, min_radius)
    return (((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2 <= 1) & region


def _spot(rng, img, region):
    mask = _ellipse(rng, region, img.shape[0] // 6, (0.02, 0.05), 1.5)
    img[mask] *= 0.3
    return mask


def _crack(rng, img, region):
    size = img.shape[0]
    start = np.array(_point_inside(rng, region, size // 5), dtype=np.float64)
    heading = rng.uniform(0, 2 * np.pi)
    points = [start]
    for _ in range(8):
        heading += rng.normal(0, 0.6)
        points.append(points[-1] + size * 0.03 * np.array([np.sin(heading), np.cos(heading)]))
    mask = _polyline_mask(size, np.array(points), 1.0) & region  # a hairline: its pixels may touch only at corners
    img[mask] = 0.05
    return mask


def _color(rng, img, region):
    mask = _ellipse(rng, region, img.shape[0] // 5, (0.05, 0.09), 2.0)
    img[mask] = img[mask][:, [2, 0, 1]] * np.array([0.6, 1.3, 0.6])
    return mask


def _missing(rng, img, region):
    size = img.shape[0]
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[0:size, 0:size]
    start = rng.uniform(0, 2 * np.pi)
    angle = np.mod(np.arctan2(yy - cy, xx - cx) - start, 2 * np.pi)
    radius = np.hypot(yy - cy, xx - cx)
    outer = np.quantile(radius[region], 0.5)
    mask = (angle < rng.uniform(0.35, 0.6)) & (radius > outer) & region
    img[mask] = _object_background(size)[mask]
    return mask


def _faint(rng, img, region):
    """A scratch, spot or crack blended in at partial strength: darker or brighter, but not beyond normal."""
    clean = img.copy()
    mask = (_scratch, _spot, _crack)[rng.integers(3)](rng, img, region)
    alpha = rng.uniform(0.25, 0.5)
    img[mask] = (1 - alpha) * clean[mask] + alpha * img[mask]
    return mask


def _tint(rng, img, region):
    """Scale the colour inside an ellipse by 1 + d, |d_c| in 1.5-2.5 TINT_SPREAD: a colour other images have."""
    mask = _ellipse(rng, region, img.shape[0] // 5, (0.06, 0.1), 2.0)
    shift = rng.uniform(1.5, 2.5, 3) * TINT_SPREAD * rng.choice([-1.0, 1.0], 3)
    img[mask] = img[mask] * (1 + shift)
    return mask


def _transplant(rng: np.random.Generator, img: Canvas, mask: Mask, source: Mask) -> Mask:
    """Replace the masked pixels by those at a random offset, all of which must lie in ``source`` (the part, for
    objects: a paste in its own colours); the offset is 1.1-2.5 times the mask's extent in a random direction, so
    source and target do not overlap. Returns the mask, or an empty one when no offset fits (the caller redraws)."""
    size = img.shape[0]
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    for _ in range(50):
        angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(1.1, 2.5) * extent
        dy, dx = int(round(distance * np.sin(angle))), int(round(distance * np.cos(angle)))
        sy, sx = ys + dy, xs + dx
        if sy.min() >= 0 and sx.min() >= 0 and sy.max() < size and sx.max() < size and source[sy, sx].all():
            img[ys, xs] = img[sy, sx]
            return mask
    return np.zeros_like(mask)


def _patch(rng, img, region):
    for _ in range(20):  # a wide ellipse on a narrow part may find no source: try another ellipse
        mask = _transplant(rng, img, _ellipse(rng, region, img.shape[0] // 5, (0.05, 0.08), 2.0), region)
        if mask.any():
            return mask
    return mask


def _steep_point(rng: np.random.Generator, img: Canvas, region: Mask, margin: int) -> tuple[int, int]:
    """A random pixel among the 10 % with the steepest brightness gradient inside the region: a texture edge,
    or an object's outline."""
    gy, gx = np.gradient(img.mean(-1))
    steep = np.hypot(gy, gx)
    size = img.shape[0]
    inner = np.zeros_like(region)
    inner[margin:size - margin, margin:size - margin] = True
    candidates = inner & (steep >= np.quantile(steep[inner], 0.9))
    ys, xs = np.nonzero(candidates)
    k = rng.integers(len(ys))
    return int(ys[k]), int(xs[k])


def _edge(rng, img, region):
    """A small defect on a steep edge: a small cut-and-paste on textures, a chip off the rim on objects."""
    size = img.shape[0]
    y0, x0 = _steep_point(rng, img, region, size // 6)
    yy, xx = np.mgrid[0:size, 0:size]
    ry, rx = np.maximum(rng.uniform(0.025, 0.04, 2) * size, 1.5)
    disc = ((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2 <= 1
    if region.all():
        return _transplant(rng, img, disc, region)
    mask = disc & region
    img[mask] = _object_background(size)[mask]
    return mask


APPLY_DEFECT = {"scratch": _scratch, "spot": _spot, "crack": _crack, "color": _color, "missing": _missing,
                "faint": _faint, "tint": _tint, "patch": _patch, "edge": _edge}


def defects_for(category: str) -> tuple[str, ...]:
    """Defect types that make sense for a category: a texture cannot lose a part."""
    return DEFECTS if category in OBJECTS else tuple(d for d in DEFECTS if d != "missing")


def _visible_defect(rng: np.random.Generator, img: Canvas, region: Mask, defect: str) -> tuple[Canvas, Mask]:
    """Apply a defect, redrawing it until it covers enough pixels to be a defect a person would mark
    (a crack that wanders off the part after three pixels would make a meaningless ground truth)."""
    min_pixels = max(4, img.shape[0] ** 2 // 2500)
    for _ in range(50):
        candidate = img.copy()
        mask = APPLY_DEFECT[defect](rng, candidate, region)
        if mask.sum() >= min_pixels:
            return candidate, mask
    raise RuntimeError(f"synthetic: could not place a visible '{defect}' defect at this image size")


def render(data_seed: int, category: str, split: str, index: int, defect: str | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image (H, W, 3) float32 in [0, 1] and its mask (H, W) uint8 of 0/1."""
    rng = _rng(data_seed, category, split, index, defect)
    img, region = DRAW[category](rng, size)
    mask = np.zeros((size, size), bool)
    if defect is not None:
        img, mask = _visible_defect(rng, img, region, defect)
    img = img + rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1).astype(np.float32), mask.astype(np.uint8)


@dataclass(frozen=True)
class SyntheticSplit:
    """A split whose items are (defect or None, index); images are rendered in __getitem__."""

    data_seed: int
    category: str
    split: str
    items: tuple[tuple[str | None, int], ...]
    size: int

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        defect, number = self.items[index]
        img, mask = render(self.data_seed, self.category, self.split, number, defect, self.size)
        return Sample(
            image=torch.from_numpy(img).permute(2, 0, 1).contiguous(),
            mask=torch.from_numpy(mask),
            label=int(defect is not None),
            id=f"{defect or 'good'}/{number:03d}",
        )


class SyntheticDataset:
    """Synthetic MVTec-like categories with exact masks (see the module docstring).

    n_defective test images are spread round-robin over the category's defect types: all of them, or those of
    ``defects`` (e.g. only the five easy kinds, for a smoke test of a method that cannot model structure).
    """

    def __init__(self, categories: list[str] | None = None, image_size: Annotated[int, Range(32, None)] = 224,
                 n_train: int = 40, n_test_good: int = 10, n_test_defective: int = 20, data_seed: int = 0,
                 defects: list[str] | None = None) -> None:
        chosen = list(CATEGORIES) if categories is None else list(categories)
        unknown = [c for c in chosen if c not in CATEGORIES]
        if unknown:
            raise UserError(f"synthetic: unknown categories {unknown}; available: {', '.join(CATEGORIES)}")
        unknown_defects = sorted(set(defects or []) - set(DEFECTS))
        if unknown_defects or defects == []:
            raise UserError(f"synthetic: unknown defects {unknown_defects or '[]'}; available: {', '.join(DEFECTS)}")
        check_arguments(SyntheticDataset, {"image_size": image_size}, "synthetic")
        self._categories = chosen
        self.defects = tuple(defects or DEFECTS)
        self.image_size, self.data_seed = image_size, data_seed
        self.n_train, self.n_test_good, self.n_test_defective = n_train, n_test_good, n_test_defective

    def categories(self) -> list[str]:
        return list(self._categories)

    def family(self, category: str) -> Family:
        return "texture" if category in TEXTURES else "object"

    def train(self, category: str, seed: int) -> SyntheticSplit:
        return SyntheticSplit(self.data_seed, category, "train", tuple((None, i) for i in range(self.n_train)),
                              self.image_size)

    def test(self, category: str, seed: int) -> SyntheticSplit:
        kinds = tuple(d for d in defects_for(category) if d in self.defects)
        if not kinds:
            raise UserError(f"synthetic: none of the defects {list(self.defects)} applies to '{category}'")
        items = [(None, i) for i in range(self.n_test_good)]
        items += [(kinds[i % len(kinds)], i) for i in range(self.n_test_defective)]
        return SyntheticSplit(self.data_seed, category, "test", tuple(items), self.image_size)


@hookimpl
def anombench_register_datasets(register) -> None:
    register("synthetic", SyntheticDataset)
