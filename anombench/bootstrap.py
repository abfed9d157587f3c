"""Bootstrap confidence intervals and paired comparisons for pixel AUROC, PRO and image AUROC (issue 15).

MVTec AD test sets are small (bottle: 83 images), so a figure means little without its spread. The intervals here
are percentile bootstraps over test *images*, stratified (normal and anomalous images are resampled separately,
so every resample keeps the test set's class balance), seeded, at any level and number of resamples. Images, not
pixels, are resampled because pixels of one image are strongly correlated: a pixel bootstrap would give intervals
far too narrow.

Per-image summaries. A resample draws image i ``w_i`` times, and every pixel figure of the resampled test set is
a function of weighted sums over images of per-image histograms on shared score bins: normal-pixel counts,
defect-pixel counts and PRO's overlap weights (1/|region| per defect pixel; PRO's region count is the weighted sum
of per-image region counts, since regions never span two images). So ``ImageSummaries`` keeps those histograms
per image, and a batch of resamples is one matrix product ``weights @ histograms`` followed by cumulative sums:
no pixel is sorted again. Image AUROC is exact: a resample's value is ``w_pos @ K @ w_neg / (n_pos n_neg)`` with
``K`` the (anomalous x normal) matrix of pairwise wins (1, 1/2 for a tie, 0).

Shared bins without knowing the score range in advance. While streaming, scores are keyed on a *dyadic* grid,
``key = floor(score / 2**e)``: bins of width 2**e anchored at 0, so that the grids for e and e + 1 are nested and
coarsening is exact (``key // 2``). ``e`` is the smallest exponent (no finer than float32 resolution) for which
every score seen so far spans at most ``2**fine_bits`` keys; when a batch widens the range, ``e`` grows and the
stored keys are floor-divided, merging bins. The final grid depends only on the overall score range, not on the
batch order (unless the memory limit ``max_entries`` forces further coarsening). Each image keeps only its
occupied fine bins (PaDiM on bottle: about 7,600 of 2**17, 24 bytes each). At resampling time the fine bins are
merged into at most ``coarse_bins`` consecutive groups of about equal mass (normal-pixel + defect-pixel +
PRO-overlap fraction of the full test set), so bins are narrow where the curves move.

Error bound. Both kinds of bins are score intervals, ordered, so every curve point at a bin boundary is exact and
``anombench_plugins.metrics.binning_error_bound`` applies to each resample: |exact - binned| <= sum over bins of
dx * dy / 2 (PRO: the bin straddling ``max_fpr`` counts (max_fpr - x_left) * dy; divided by ``max_fpr``). Each
resample's bound is computed alongside its value. An interval endpoint is an order statistic (interpolated) of
the resampled values, and moving every value by at most e moves every order statistic by at most e, so the
binned interval's endpoints are within max(bound over resamples) of the exact bootstrap's (same resamples, exact
pixel metrics): ``Replicates.interval_error_bound``. PaDiM-Lite0 on bottle: 1.3e-5 (pixel AUROC), 6e-5 (PRO).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from threadpoolctl import ThreadpoolController

from anombench.api import Batch, Scores, UndefinedMetric
from anombench.errors import UserError
from anombench.results import RunStore
from anombench_plugins.metrics import DEFAULT_MAX_FPR, defect_regions, validated_pixels

METRICS = ("pixel_auroc", "pro", "image_auroc")
METRIC_NAMES = {"pixel_auroc": "pixel AUROC", "pro": "PRO", "image_auroc": "image AUROC"}
FINE_BITS = 17  # the fine grid spans at most 2**17 bins over all scores seen
COARSE_BINS = 2**13  # bins a resample is evaluated on
MAX_ENTRIES = 2**23  # stored (image, fine bin) entries before the grid coarsens: 200 MB (pill needs 1.3 M)
RESAMPLES_PER_STEP = 128  # resamples evaluated together: (128, 3 * 2**13) float64 blocks, about 25 MB each
ARTIFACT = "bootstrap.npz"  # the per-cell artifact file name
FORMAT = "anombench-bootstrap/1"
_FLOAT32_MANTISSA_BITS = 24
_FLOAT32_TINY_EXPONENT = -126


# ---------------------------------------------------------------------------------------------------------------
# The dyadic fine grid


def finest_exponent(lo: float, hi: float) -> int:
    """The exponent of a float32 ulp at the larger magnitude of ``lo``/``hi``: finer bins separate nothing more."""
    magnitude = max(abs(lo), abs(hi), math.ldexp(1.0, _FLOAT32_TINY_EXPONENT))
    return math.frexp(magnitude)[1] - _FLOAT32_MANTISSA_BITS


def grid_exponent(lo: float, hi: float, fine_bits: int, at_least: int | None = None) -> int:
    """The smallest e >= ``at_least`` (and >= float32 resolution) for which [lo, hi] spans at most 2**fine_bits
    keys floor(s / 2**e); ``lo``/``hi`` are the smallest and largest score seen."""
    exponent = finest_exponent(lo, hi)
    if hi > lo:
        exponent = max(exponent, math.ceil(math.log2(hi - lo)) - fine_bits - 1)
    if at_least is not None:
        exponent = max(exponent, at_least)
    while math.floor(math.ldexp(hi, -exponent)) - math.floor(math.ldexp(lo, -exponent)) >= 2**fine_bits:
        exponent += 1
    return exponent


def grid_keys(scores: np.ndarray, exponent: int) -> np.ndarray:
    """floor(score / 2**exponent) as int64: exact (a power-of-two scale loses nothing in float64), monotone."""
    return np.floor(np.ldexp(scores.astype(np.float64), -exponent)).astype(np.int64)


def _merge_runs(keys: np.ndarray, values: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sum ``values`` over runs of equal, sorted ``keys``."""
    if keys.size == 0:
        return keys, values
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], [np.add.reduceat(v, starts) for v in values]


@dataclass
class ImageBins:
    """One test image on the fine grid: its occupied keys (ascending) and per key the normal-pixel count, the
    defect-pixel count and the sum of 1/|region| over its defect pixels (PRO's overlap weight)."""

    keys: np.ndarray
    normals: np.ndarray
    defects: np.ndarray
    overlap: np.ndarray

    def coarsened(self, shift: int) -> "ImageBins":
        """The same image on the grid 2**shift times coarser (keys floor-divided, equal keys merged)."""
        keys, (normals, defects, overlap) = _merge_runs(np.floor_divide(self.keys, 2**shift),
                                                        [self.normals, self.defects, self.overlap])
        return ImageBins(keys, normals, defects, overlap)


def batch_bins(keys: np.ndarray, defect: np.ndarray, overlap: np.ndarray) -> list[ImageBins]:
    """The fine-grid histograms of each image of a batch: ``keys`` (B, P) int64, ``defect`` (B, P) bool, ``overlap``
    (B, P) float64 (1/|region| on defect pixels, 0 elsewhere). Each image's keys are shifted into a block of its
    own, so one count (dense over the blocks, or by sorting when few pixels spread over wide spans) serves the
    batch; the result is cut back into images."""
    first = keys.min(axis=1)
    spans = keys.max(axis=1) - first + 1
    starts = np.concatenate(([0], np.cumsum(spans)[:-1]))
    flat = (keys - (first - starts)[:, None]).ravel()
    if spans.sum() <= 4 * flat.size:
        dense = np.bincount(flat, minlength=int(spans.sum()))
        occupied = np.flatnonzero(dense)
        index = (np.cumsum(dense > 0) - 1)[flat]  # each pixel's position among the occupied bins
    else:
        occupied, index = np.unique(flat, return_inverse=True)
    total = np.bincount(index, minlength=occupied.size)
    defects = np.bincount(index, weights=defect.ravel(), minlength=occupied.size).astype(np.int32)
    weights = np.bincount(index, weights=overlap.ravel(), minlength=occupied.size)
    normals = total.astype(np.int32) - defects
    cuts = np.searchsorted(occupied, np.append(starts, spans.sum()))
    return [ImageBins(occupied[a:b] + (first[i] - starts[i]), normals[a:b], defects[a:b], weights[a:b])
            for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


# ---------------------------------------------------------------------------------------------------------------
# Coarse bins and the resampled metrics


@dataclass(frozen=True)
class BinnedImages:
    """Every image's histograms on common coarse bins, highest scores first: ``histograms`` is (n_images, 3 * B),
    the blocks being normal-pixel counts, defect-pixel counts and overlap weights; ``regions`` (n_images,) counts
    each image's defect regions."""

    histograms: np.ndarray
    regions: np.ndarray

    @property
    def n_bins(self) -> int:
        return self.histograms.shape[1] // 3


def coarse_bins(images: list[ImageBins], n_regions: np.ndarray, max_bins: int) -> BinnedImages:
    """Merge the fine bins into at most ``max_bins`` consecutive groups of about equal mass (see the module
    docstring); a fine bin heavier than 1/max_bins of the mass stays a group of its own."""
    lengths = [len(image.keys) for image in images]
    keys = np.concatenate([image.keys for image in images])
    fine, fine_of = np.unique(keys, return_inverse=True)
    parts = [np.concatenate([getattr(image, name) for image in images]).astype(np.float64)
             for name in ("normals", "defects", "overlap")]
    mass = np.zeros(fine.size)
    for part in parts:
        pooled = np.bincount(fine_of, weights=part, minlength=fine.size)
        if pooled.sum() > 0:
            mass += pooled / pooled.sum()
    mass = mass[::-1]  # highest scores first
    before = np.cumsum(mass) - mass
    group = np.minimum((before * (max_bins / mass.sum())).astype(np.int64), max_bins - 1)
    _, group = np.unique(group, return_inverse=True)  # drop unused group numbers
    n_bins = int(group.max()) + 1
    coarse_of = group[::-1][fine_of]  # coarse bin of every stored (image, fine key) entry
    image_of = np.repeat(np.arange(len(images)), lengths)
    flat = image_of * n_bins + coarse_of
    histograms = np.concatenate(
        [np.bincount(flat, weights=part, minlength=len(images) * n_bins).reshape(len(images), n_bins)
         for part in parts], axis=1)
    return BinnedImages(histograms, n_regions.astype(np.float64))


@dataclass(frozen=True)
class Replicates:
    """Per metric, the value of every resample and its binning error bound ((R,) float64 each; NaN where a
    resample leaves the metric undefined)."""

    values: dict[str, np.ndarray]
    bounds: dict[str, np.ndarray]

    def interval(self, metric: str, level: float) -> tuple[float, float]:
        return percentile_interval(self.values[metric], level)

    def interval_error_bound(self, metric: str) -> float:
        """How far the interval's endpoints can lie from the exact bootstrap's on the same resamples."""
        bounds = self.bounds[metric]
        return float(np.nanmax(bounds)) if np.isfinite(bounds).any() else 0.0


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile bootstrap interval: the (1 - level)/2 and (1 + level)/2 quantiles (linear interpolation) of
    the resampled values; undefined resamples (NaN) are left out."""
    lo, hi = np.nanquantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _shifted_right(curve: np.ndarray) -> np.ndarray:
    """Each row's previous curve point, 0 before the first: the left ends of the curve's segments."""
    left = np.zeros_like(curve)
    left[:, 1:] = curve[:, :-1]
    return left


def pixel_auroc_rows(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC, bound) per row of (R, B) bin counts, highest scores first: the trapezoid under the ROC equals the
    Mann-Whitney count with ties in a bin counted one half, and the bound is sum dx * dy / 2."""
    n, p = negatives.sum(axis=1), positives.sum(axis=1)
    above = np.cumsum(positives, axis=1) - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.einsum("rb,rb->r", negatives, above + positives / 2.0) / (n * p)
        bound = np.einsum("rb,rb->r", negatives, positives) / (2.0 * n * p)
    return value, bound


def pro_rows(negatives: np.ndarray, overlap: np.ndarray, regions: np.ndarray,
             max_fpr: float) -> tuple[np.ndarray, np.ndarray]:
    """(PRO, bound) per row, as ``anombench_plugins.metrics.pro_from_bins`` computes them for one: the area under
    (FPR, min(overlap / regions, 1)) up to ``max_fpr``, the segment crossing it cut by interpolation, / max_fpr."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fpr = np.cumsum(negatives, axis=1) / negatives.sum(axis=1, keepdims=True)
        pro = np.minimum(np.cumsum(overlap, axis=1) / regions[:, None], 1.0)
    fpr_left, pro_left = _shifted_right(fpr), _shifted_right(pro)
    dx, dy = fpr - fpr_left, pro - pro_left
    inside = fpr <= max_fpr
    crossing = (fpr_left < max_fpr) & ~inside
    cut = np.where(crossing, max_fpr - fpr_left, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cut_height = pro_left + dy * np.where(crossing, cut / dx, 0.0)
    area = np.where(inside, dx * (pro_left + pro), 0.0).sum(axis=1) / 2.0
    area += (cut * (pro_left + cut_height)).sum(axis=1) / 2.0
    bound = np.where(inside, dx * dy, 0.0).sum(axis=1) / 2.0 + (cut * dy).sum(axis=1)
    undefined = ~np.isfinite(fpr[:, -1]) | ~(regions > 0)
    return np.where(undefined, np.nan, area / max_fpr), np.where(undefined, np.nan, bound / max_fpr)


def image_auroc_rows(wins: np.ndarray, positive_weights: np.ndarray, negative_weights: np.ndarray) -> np.ndarray:
    """Exact image AUROC per row: ``wins`` (n_pos, n_neg) holds 1 / 0.5 / 0 per pair; weights are (R, n_pos) and
    (R, n_neg) draw counts."""
    pairs = positive_weights.sum(axis=1) * negative_weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.einsum("rn,rn->r", positive_weights @ wins, negative_weights) / pairs


def pairwise_wins(positive_scores: np.ndarray, negative_scores: np.ndarray) -> np.ndarray:
    """(n_pos, n_neg) float64: 1 where the anomalous image scores higher, 0.5 on a tie, 0 below."""
    difference = positive_scores[:, None] - negative_scores[None, :]
    return (difference > 0) + 0.5 * (difference == 0)


def stratified_weights(labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) draw counts: the normal and the anomalous images are each drawn with replacement as many
    times as there are of them, so every resample keeps the test set's class sizes."""
    weights = np.zeros((resamples, labels.size), dtype=np.float64)
    for stratum in (False, True):
        members = np.flatnonzero(labels == stratum)
        if members.size:
            draws = rng.integers(0, members.size, size=(resamples, members.size))
            draws += np.arange(resamples)[:, None] * members.size  # row r counts into its own block
            counts = np.bincount(draws.ravel(), minlength=resamples * members.size)
            weights[:, members] = counts.reshape(resamples, members.size)
    return weights


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # inspecting the loaded libraries costs milliseconds: once per process


def single_threaded_blas() -> Any:
    """A context with BLAS on one thread. The products here are small (128 x n @ n x 3B): on a machine shared by
    many processes, BLAS threads mostly spin-wait (measured: 20x slower at load 18 on 2 cores), and the runner
    may run several cells at once anyway."""
    return _blas_controller().limit(limits=1, user_api="blas")


# ---------------------------------------------------------------------------------------------------------------
# The accumulator


class ImageSummaries:
    """Per test image: id, label, image score and its pixel histograms on the shared dyadic grid; fed batch by batch
    like a metric (``update``), then resampled (``intervals``, ``replicates``) or stored (``to_bytes``).

    ``max_fpr`` must be the PRO metric's (default 0.3). Memory: 24 bytes per occupied fine bin per image
    (PaDiM-Lite0 on bottle: 180 kB per image, 15 MB for the class). Past ``max_entries`` entries (a test set of
    thousands of images, e.g. STC) the grid coarsens one step at a time until they fit: memory stays bounded, the
    bins get wider and the computed error bound says what that costs. Only then does the grid depend on the batch
    order (it coarsens at the first batch that crosses the limit).
    """

    def __init__(self, max_fpr: float = DEFAULT_MAX_FPR, fine_bits: int = FINE_BITS,
                 coarse_bins: int = COARSE_BINS, max_entries: int = MAX_ENTRIES) -> None:
        if not 0.0 < max_fpr <= 1.0:
            raise UserError(f"bootstrap: max_fpr must be in (0, 1], got {max_fpr}")
        self.max_fpr, self.fine_bits, self.coarse_bins = float(max_fpr), int(fine_bits), int(coarse_bins)
        self.max_entries = int(max_entries)
        self._entries = 0  # stored (image, fine bin) entries, 24 bytes each
        self.ids: list[str] = []
        self._labels: list[int] = []
        self._image_scores: list[float] = []
        self._regions: list[int] = []
        self._images: list[ImageBins] = []
        self.exponent: int | None = None
        self._lo, self._hi = math.inf, -math.inf
        self._defect_pixels = self._normal_pixels = 0

    @property
    def labels(self) -> np.ndarray:
        """(n,) bool: anomalous images."""
        return np.array(self._labels, dtype=bool)

    @property
    def image_scores(self) -> np.ndarray:
        return np.array(self._image_scores, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.ids)

    def update(self, scores: Scores, batch: Batch) -> None:
        """Take one batch (the same arguments as ``Metric.update``)."""
        maps, defect = validated_pixels(scores.maps, batch.masks)
        image_scores = np.asarray(scores.image_scores, dtype=np.float64)
        if not np.isfinite(image_scores).all():
            raise UserError("image scores contain NaN or infinite values; the bootstrap needs finite scores")
        if len(maps) == 0:
            return
        self._widen(float(maps.min()), float(maps.max()))
        sizes, regions = defect_regions(defect)
        overlap = np.zeros(defect.shape)
        overlap[defect] = 1.0 / sizes
        flat = (len(maps), -1)
        self._images += batch_bins(grid_keys(maps.reshape(flat), self.exponent), defect.reshape(flat),
                                   overlap.reshape(flat))
        self._entries += sum(len(image.keys) for image in self._images[-len(maps):])
        while self._entries > self.max_entries and self._keys_spanned() > 2:  # 2 keys: nothing left to merge
            self._coarsen(self.exponent + 1)
        self._regions += regions.tolist()
        self._defect_pixels += int(sizes.size)
        self._normal_pixels += defect.size - int(sizes.size)
        self.ids += list(batch.ids)
        self._labels += [int(label != 0) for label in batch.labels.tolist()]
        self._image_scores += image_scores.tolist()

    def _widen(self, lo: float, hi: float) -> None:
        """Make the grid cover [lo, hi] too, coarsening what is stored when the exponent has to grow."""
        self._lo, self._hi = min(self._lo, lo), max(self._hi, hi)
        self._coarsen(grid_exponent(self._lo, self._hi, self.fine_bits, self.exponent))

    def _keys_spanned(self) -> int:
        return math.floor(math.ldexp(self._hi, -self.exponent)) - math.floor(math.ldexp(self._lo, -self.exponent)) + 1

    def _coarsen(self, exponent: int) -> None:
        """Move to the grid of ``exponent`` (never finer): stored images are floor-divided and merged."""
        if self.exponent is not None and exponent > self.exponent:
            self._images = [image.coarsened(exponent - self.exponent) for image in self._images]
            self._entries = sum(len(image.keys) for image in self._images)
        self.exponent = exponent

    # --- resampling ---

    def binned(self) -> BinnedImages:
        return coarse_bins(self._images, np.array(self._regions), self.coarse_bins)

    def defined(self, metrics: Iterable[str] = METRICS) -> dict[str, str]:
        """metric -> reason, for each of ``metrics`` that this test set leaves undefined."""
        labels = self.labels
        defects, normals = self._defect_pixels, self._normal_pixels
        reasons = {
            "image_auroc": None if labels.any() and (~labels).any() else "needs both normal and anomalous images",
            "pixel_auroc": None if defects and normals else "needs both normal and defect pixels",
            "pro": None if defects and normals else "needs both normal pixels and defect regions",
        }
        return {metric: reasons[metric] for metric in metrics if reasons[metric] is not None}

    def replicates(self, weights: np.ndarray, metrics: Iterable[str] = METRICS) -> Replicates:
        """Every metric of ``metrics`` on every resample: ``weights`` (R, n) holds how often each image (in this
        summary's order) is drawn; a row of ones is the test set itself. Undefined metrics raise UndefinedMetric."""
        metrics = list(metrics)
        undefined = self.defined(metrics)
        if undefined:
            metric, reason = next(iter(undefined.items()))
            raise UndefinedMetric(f"{metric}: {reason}")
        weights = np.asarray(weights, dtype=np.float64)
        values = {m: np.empty(len(weights)) for m in metrics}
        bounds = {m: np.zeros(len(weights)) for m in metrics}
        binned = self.binned() if {"pixel_auroc", "pro"} & set(metrics) else None
        labels = self.labels
        wins = pairwise_wins(self.image_scores[labels], self.image_scores[~labels])
        with single_threaded_blas():
            for start in range(0, len(weights), RESAMPLES_PER_STEP):
                rows = slice(start, start + RESAMPLES_PER_STEP)
                block = weights[rows]
                if "image_auroc" in metrics:
                    values["image_auroc"][rows] = image_auroc_rows(wins, block[:, labels], block[:, ~labels])
                if binned is not None:
                    self._pixel_rows(binned, block, rows, values, bounds)
        return Replicates(values, bounds)

    def _pixel_rows(self, binned: BinnedImages, block: np.ndarray, rows: slice, values: dict[str, np.ndarray],
                    bounds: dict[str, np.ndarray]) -> None:
        sums = block @ binned.histograms
        b = binned.n_bins
        negatives, positives, overlap = sums[:, :b], sums[:, b:2 * b], sums[:, 2 * b:]
        if "pixel_auroc" in values:
            values["pixel_auroc"][rows], bounds["pixel_auroc"][rows] = pixel_auroc_rows(negatives, positives)
        if "pro" in values:
            values["pro"][rows], bounds["pro"][rows] = pro_rows(negatives, overlap, block @ binned.regions,
                                                                self.max_fpr)

    def estimates(self, metrics: Iterable[str] = METRICS) -> Replicates:
        """The metrics of the test set itself, on the same bins (one row)."""
        return self.replicates(np.ones((1, len(self))), metrics)

    def weights(self, resamples: int, seed: int) -> np.ndarray:
        """The stratified resampling weights for ``seed`` ((resamples, n); the same for every summary of the same
        labels, which is what makes comparisons paired)."""
        if resamples < 1:
            raise UserError(f"bootstrap: resamples must be >= 1, got {resamples}")
        return stratified_weights(self.labels, int(resamples), np.random.default_rng(seed))

    def bootstrap(self, resamples: int, seed: int, metrics: Iterable[str] | None = None) -> Replicates:
        """The defined metrics of ``metrics`` (default: all three) on ``resamples`` stratified resamples."""
        metrics = list(metrics or METRICS)
        undefined = self.defined(metrics)
        return self.replicates(self.weights(resamples, seed), [m for m in metrics if m not in undefined])

    def intervals(self, level: float = 0.95, resamples: int = 1000, seed: int = 0,
                  metrics: Iterable[str] | None = None) -> dict[str, tuple[float, float]]:
        """metric -> (lo, hi): the stratified percentile bootstrap interval at ``level``, for each of ``metrics``
        (default: all three) that this test set defines. Fractions, like the metrics."""
        check_level(level)
        draws = self.bootstrap(resamples, seed, metrics)
        return {metric: draws.interval(metric, level) for metric in draws.values}

    # --- storage ---

    def to_bytes(self) -> bytes:
        """An .npz (no pickle) with ids, labels, image scores, region counts and the fine-grid histograms."""
        lengths = [len(image.keys) for image in self._images]
        arrays = {
            "format": np.array(FORMAT), "ids": np.array(self.ids, dtype=str),
            "labels": self.labels, "image_scores": self.image_scores,
            "regions": np.array(self._regions, dtype=np.int64),
            "settings": np.array([self.max_fpr, self.fine_bits, self.coarse_bins, self.max_entries], dtype=np.float64),
            "exponent": np.array(self.exponent if self.exponent is not None else 0, dtype=np.int64),
            "range": np.array([self._lo, self._hi], dtype=np.float64),
            "offsets": np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))),
        }
        for name in ("keys", "normals", "defects", "overlap"):
            parts = [getattr(image, name) for image in self._images]
            arrays[name] = np.concatenate(parts) if parts else np.zeros(0)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes, source: str = "bootstrap.npz") -> "ImageSummaries":
        """Read what ``to_bytes`` wrote; ``source`` names the file in the one-line error for anything else."""
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"{source}: not a bootstrap summary file ({exc})") from None
        if str(arrays.get("format", "")) != FORMAT:
            raise UserError(f"{source}: not a bootstrap summary file of format {FORMAT}")
        max_fpr, fine_bits, coarse, max_entries = arrays["settings"]
        summary = cls(float(max_fpr), int(fine_bits), int(coarse), int(max_entries))
        summary.ids = [str(i) for i in arrays["ids"]]
        summary._labels = arrays["labels"].astype(int).tolist()
        summary._image_scores = arrays["image_scores"].tolist()
        summary._regions = arrays["regions"].tolist()
        summary._defect_pixels, summary._normal_pixels = (int(arrays[name].sum()) for name in ("defects", "normals"))
        if summary.ids:
            summary.exponent = int(arrays["exponent"])
            summary._lo, summary._hi = (float(v) for v in arrays["range"])
        offsets = arrays["offsets"]
        summary._images = [
            ImageBins(*(arrays[name][start:stop] for name in ("keys", "normals", "defects", "overlap")))
            for start, stop in zip(offsets[:-1], offsets[1:])]
        summary._entries = int(offsets[-1])
        return summary

    @classmethod
    def load(cls, path: str | Path) -> "ImageSummaries":
        path = Path(path)
        return cls.from_bytes(path.read_bytes(), str(path))


def summaries_for(metrics: Mapping[str, Mapping[str, Any] | None]) -> ImageSummaries:
    """A fresh accumulator for a cell whose suite computes ``metrics`` (name -> parameters): PRO's ``max_fpr``
    comes from the suite, so the intervals are those of the figure in the table."""
    pro = metrics.get("pro") or {}
    return ImageSummaries(max_fpr=float(pro.get("max_fpr", DEFAULT_MAX_FPR)))


def cell_intervals(summaries: ImageSummaries, computed: Iterable[str], level: float, resamples: int,
                   seed: int) -> dict[str, list[float]]:
    """A cell record's ``intervals``: {metric: [lo, hi]} for each of the three bootstrap metrics among
    ``computed`` (the cell's defined metrics); seeded by the cell's seed, so a rerun gives the same intervals."""
    wanted = [metric for metric in METRICS if metric in set(computed)]
    if not wanted:
        return {}
    return {metric: [lo, hi] for metric, (lo, hi) in summaries.intervals(level, resamples, seed, wanted).items()}


def check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise UserError(f"confidence level must be in (0, 1), e.g. 0.95; got {level}")


# ---------------------------------------------------------------------------------------------------------------
# Paired comparisons


def aligned_order(a: ImageSummaries, b: ImageSummaries) -> np.ndarray:
    """For each image of ``a`` (in a's order), its index in ``b``; a one-line UserError unless both hold the same
    test images with the same labels (a paired comparison is only meaningful on the same images)."""
    position = {image_id: index for index, image_id in enumerate(b.ids)}
    missing = [image_id for image_id in a.ids if image_id not in position]
    if missing or len(a.ids) != len(b.ids):
        extra = len(b.ids) - (len(a.ids) - len(missing))
        raise UserError(f"paired comparison needs the same test images: {len(missing)} images only in the first, "
                        f"{extra} only in the second (e.g. {(missing or ['-'])[0]!r})")
    order = np.array([position[image_id] for image_id in a.ids], dtype=np.int64)
    if not np.array_equal(a.labels, b.labels[order]):
        raise UserError("paired comparison needs the same test images: the same ids carry different labels")
    return order


def class_draws(a: ImageSummaries, b: ImageSummaries, metrics: Sequence[str], resamples: int,
                rng: np.random.Generator) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """For one class: per metric defined on both sides, a - b on the test set and on ``resamples`` stratified
    resamples ((R,) array), both sides resampled with the same weights (that is what makes it paired)."""
    order = aligned_order(a, b)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    weights = stratified_weights(a.labels, resamples, rng)  # drawn even when no metric is defined: same sequence
    with_test_set = np.vstack([np.ones((1, len(a))), weights])  # row 0: the test set itself
    wanted = [metric for metric in metrics if not (a.defined([metric]) or b.defined([metric]))]
    first, second = a.replicates(with_test_set, wanted), b.replicates(with_test_set[:, inverse], wanted)
    differences = {m: float(first.values[m][0] - second.values[m][0]) for m in wanted}
    return differences, {m: first.values[m][1:] - second.values[m][1:] for m in wanted}


def paired_difference(a: ImageSummaries, b: ImageSummaries, metric: str, level: float = 0.95,
                      resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(a - b, lo, hi) for ``metric`` on the same test images: the difference on the test set and its paired
    percentile bootstrap interval (fractions). A summary compared with itself gives exactly (0, 0, 0)."""
    return paired_mean_difference([(a, b)], metric, level, resamples, seed)


def paired_mean_difference(pairs: Sequence[tuple[ImageSummaries, ImageSummaries]], metric: str,
                           level: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean over classes of a - b, lo, hi): ``pairs`` holds one (a, b) per class; every resample resamples each
    class's images (the classes draw in turn from one generator seeded with ``seed``) and averages the per-class
    differences, so the interval is that of the mean difference. UndefinedMetric if a class lacks the metric."""
    check_level(level)
    if metric not in METRICS:
        raise UserError(f"paired comparison: unknown metric {metric!r}; one of {', '.join(METRICS)}")
    if not pairs:
        raise UserError("paired comparison: nothing to compare (no class with bootstrap summaries on both sides)")
    rng = np.random.default_rng(seed)
    differences, draws = [], []
    for a, b in pairs:
        for side in (a, b):
            if side.defined([metric]):
                raise UndefinedMetric(f"{metric}: {side.defined([metric])[metric]}")
        difference, draw = class_draws(a, b, [metric], resamples, rng)
        differences.append(difference[metric])
        draws.append(draw[metric])
    return (float(np.mean(differences)), *percentile_interval(np.mean(draws, axis=0), level))


def describe(a: str, b: str, metric: str, difference: float, lo: float, hi: float, level: float) -> str:
    """One sentence, in percentage points: "padim beats spade on PRO by 1.8 points, 95% CI [0.9, 2.6]"; when the
    interval contains 0: "padim and spade do not differ significantly on PRO: +0.3 points, 95% CI [-0.2, 0.8]"."""
    name, percent = METRIC_NAMES.get(metric, metric), f"{level * 100:g}%"
    if lo <= 0.0 <= hi:
        return (f"{a} and {b} do not differ significantly on {name}: {difference * 100:+.1f} points, "
                f"{percent} CI [{lo * 100:.1f}, {hi * 100:.1f}]")
    if difference < 0:
        a, b, difference, lo, hi = b, a, -difference, -hi, -lo
    return f"{a} beats {b} on {name} by {difference * 100:.1f} points, {percent} CI [{lo * 100:.1f}, {hi * 100:.1f}]"


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of ``a`` against ``b`` (method labels or run names) on one class or on the mean over
    ``classes``; ``difference``, ``lo`` and ``hi`` are fractions (a - b)."""

    a: str
    b: str
    metric: str
    dataset: str
    scope: str  # a category, or "mean"
    seed: int
    classes: tuple[str, ...]
    difference: float
    lo: float
    hi: float
    level: float

    @property
    def significant(self) -> bool:
        return not self.lo <= 0.0 <= self.hi

    def text(self) -> str:
        where = self.scope if self.scope != "mean" else f"mean over {len(self.classes)} classes"
        return f"{self.dataset}/{where} (seed {self.seed}): " + describe(
            self.a, self.b, self.metric, self.difference, self.lo, self.hi, self.level)


def within_interval(value: float, interval: Sequence[float] | None) -> bool:
    """Whether ``value`` lies in the closed interval [lo, hi] (e.g. a record's ``intervals[metric]``, or the
    paper's figure against our interval); False when there is no interval."""
    if interval is None:
        return False
    lo, hi = interval
    return lo <= value <= hi


def drops_outside_interval(run_dir: str | Path, baseline_dir: str | Path) -> list[str]:
    """One line per figure of ``run_dir`` below the interval its baseline cell recorded (``--ci`` runs): a drop the
    baseline's own uncertainty does not explain. Figures inside or above the interval are not listed."""
    run, baseline = RunStore(run_dir).records, RunStore(baseline_dir).records
    lines = []
    for cell, base in baseline.items():
        ours = (run.get(cell) or {}).get("metrics") or {}
        for metric, interval in (base.get("intervals") or {}).items():
            value = ours.get(metric)
            if value is not None and value < interval[0]:
                lines.append(f"{cell} {metric}: {value:.4f} is below the baseline's interval "
                             f"[{interval[0]:.4f}, {interval[1]:.4f}]")
    return lines


def stored_summaries(run_dir: str | Path) -> dict[str, tuple[dict[str, Any], Path]]:
    """cell id -> (record, path of its ``bootstrap.npz``) for every finished cell of a run made with ``--ci``. Paths,
    not summaries: a whole run's summaries can take gigabytes, so comparisons load one class at a time."""
    store = RunStore(run_dir)
    found = {}
    for cell, record in store.records.items():
        path = store.artifact_dir(cell) / ARTIFACT
        if record.get("status") == "ok" and path.exists():
            found[cell] = (record, path)
    return found


@dataclass(frozen=True)
class ClassPair:
    """One class of a comparison: where the two sides' summaries are stored."""

    dataset: str
    category: str
    seed: int
    a: Path
    b: Path


def compare_classes(pairs: list[ClassPair], a: str, b: str, metrics: Iterable[str], level: float, resamples: int,
                    seed: int) -> list[PairedResult]:
    """Per (dataset, seed): a result per class and metric, then per metric one for the mean over the classes that
    define it (each resample averages the classes' resampled differences). One class in memory at a time."""
    check_level(level)
    results = []
    for dataset, cell_seed in dict.fromkeys((pair.dataset, pair.seed) for pair in pairs):
        rng = np.random.default_rng(seed)
        per_metric: dict[str, list[tuple[str, float, np.ndarray]]] = {metric: [] for metric in metrics}
        for pair in pairs:
            if (pair.dataset, pair.seed) != (dataset, cell_seed):
                continue
            differences, draws = class_draws(ImageSummaries.load(pair.a), ImageSummaries.load(pair.b),
                                             list(per_metric), resamples, rng)
            for metric, difference in differences.items():
                per_metric[metric].append((pair.category, difference, draws[metric]))
                results.append(PairedResult(a, b, metric, dataset, pair.category, cell_seed, (pair.category,),
                                            difference, *percentile_interval(draws[metric], level), level))
        for metric, entries in per_metric.items():
            if len(entries) > 1:
                mean_draws = np.mean([draw for _, _, draw in entries], axis=0)
                results.append(PairedResult(a, b, metric, dataset, "mean", cell_seed,
                                            tuple(category for category, _, _ in entries),
                                            float(np.mean([difference for _, difference, _ in entries])),
                                            *percentile_interval(mean_draws, level), level))
    return results


def compare_runs(run_a: str | Path, run_b: str | Path, level: float = 0.95, resamples: int = 1000, seed: int = 0,
                 metrics: Iterable[str] = METRICS) -> list[PairedResult]:
    """Paired comparisons of every cell present, with ``bootstrap.npz``, in both runs (same method, dataset,
    category and seed): per class, and for the mean over classes per (method, dataset, seed). The sides are named
    RUN:METHOD after the run directories."""
    first, second = stored_summaries(run_a), stored_summaries(run_b)
    shared = [cell for cell in first if cell in second]
    if not shared:
        raise UserError(f"{run_b}: no cell with {ARTIFACT} in common with {run_a}; run both with --ci")
    results = []
    for method in dict.fromkeys(first[cell][0]["method"] for cell in shared):
        pairs = [ClassPair(record["dataset"], record["category"], record["seed"], path, second[cell][1])
                 for cell in shared for record, path in [first[cell]] if record["method"] == method]
        a, b = (f"{Path(run).name}:{method}" for run in (run_a, run_b))
        results += compare_classes(pairs, a, b, list(metrics), level, resamples, seed)
    return results


def compare_methods(run_dir: str | Path, method_a: str, method_b: str, level: float = 0.95, resamples: int = 1000,
                    seed: int = 0, metrics: Iterable[str] = METRICS) -> list[PairedResult]:
    """Paired comparisons of two method variants of one run on every (dataset, category, seed) both have with
    ``bootstrap.npz``: per class and for the mean over classes."""
    by_method: dict[str, dict[tuple[str, str, int], Path]] = {method_a: {}, method_b: {}}
    for record, path in stored_summaries(run_dir).values():
        if record["method"] in by_method:
            by_method[record["method"]][(record["dataset"], record["category"], record["seed"])] = path
    common = [key for key in by_method[method_a] if key in by_method[method_b]]
    if not common:
        raise UserError(f"{run_dir}: no class with {ARTIFACT} for both {method_a!r} and {method_b!r}; "
                        "run with --ci and check the method names")
    pairs = [ClassPair(*key, by_method[method_a][key], by_method[method_b][key]) for key in common]
    return compare_classes(pairs, method_a, method_b, list(metrics), level, resamples, seed)


# ---------------------------------------------------------------------------------------------------------------
# Seeds


def mean_and_sem(values: Iterable[float | None]) -> tuple[float, float]:
    """(mean, standard error of the mean = sample std (ddof 1) / sqrt(n)) over seeds. None and NaN entries
    (failed or undefined seeds) are left out; the SEM is NaN with fewer than two values, the mean with none."""
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    sem = float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else math.nan
    return float(finite.mean()), sem
