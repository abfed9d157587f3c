"""Pixel AUROC, PRO, image AUROC and resource metrics as metric plugins.

The figures must agree with the official MVTec AD evaluation (design.md section 1), because readers compare our
tables with papers that used it. Everything reduces to one representation: ``ScoreBins``, the test pixels grouped
by score from the highest down, with per bin the number of normal pixels, of defect pixels and the PRO overlap
weight. On the exact path a bin is one distinct score value (so ties are merged exactly as the official script
merges runs of equal scores); on the binned path a bin is a score interval. The curves (ROC, PRO) are the
cumulative sums over bins and the areas are trapezoids, so both paths share every line of the curve code.

Exact vs binned. A stream keeps the pixels themselves (float32 score, bool mask, and for PRO the size of each
defect pixel's region) while at most ``pixel_budget`` pixels have been seen, then switches once, for good, to
histograms (``ScoreHistogram``). Binning cannot move a curve point: the point at a bin boundary is a vertex of the
exact curve. What it loses is the path between two such vertices, which the exact curve walks monotonically inside
the box they span while the binned curve takes the straight diagonal. Hence the stated, data-dependent bound that
``binning_error_bound`` computes from the histograms themselves:

    |area_exact - area_binned| <= sum over bins of dx * dy / 2   (dx, dy: the bin's FPR and TPR/PRO increments)

(for PRO the bin that straddles ``max_fpr`` counts (max_fpr - x_left) * dy, and the sum is divided by
``max_fpr``). For AUROC this is half the fraction of (defect, normal) pixel pairs that share a bin, and it is at
most half the largest fraction of normal pixels in one bin, so for scores with a bounded density inside the
prefix's range it shrinks like 1/bins (about 1e-6 with the default 2**20 bins on the STC-scale benchmark). The
metrics expose it as ``error_bound`` after ``compute`` and warn when it exceeds ``BOUND_WARNING``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from scipy import ndimage

from anombench import hookimpl
from anombench.api import Batch, Resources, Scores, UndefinedMetric
from anombench.errors import UserError
from anombench.params import PositiveInt, Range, check_arguments

DEFAULT_MAX_FPR = 0.3
DEFAULT_PIXEL_BUDGET = 2**24  # 16.8 M pixels: every MVTec AD category stays exact (the largest has 10.9 M)
DEFAULT_BINS = 2**20
MaxFpr = Annotated[float, Range(0, 1, lo_open=True)]  # PRO's FPR limit: in (0, 1]
PixelBudget = Annotated[int, Range(0, None)]  # 0: always binned
TAIL_MANTISSA_BITS = 10  # out-of-range bins have a relative width of 2**-10 of their distance to the range
BOUND_WARNING = 1e-4
CURVE_POINTS = 1000

# Labels 8-connected components within each image of a (N, H, W) stack: only the middle plane connects.
_IN_PLANE_8_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8_CONNECTED[1] = True
_FLOAT32_MANTISSA_BITS = 23
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Pixels binned per step: temporaries of a few MB that the allocator reuses (on this machine a fresh 30 MB array
# costs more in page faults than the arithmetic done in it).
_CHUNK = 2**21


class UndefinedMetricError(UserError, UndefinedMetric):
    """A metric that the ground truth leaves undefined (AUROC without a single defect pixel, ...).

    Raised instead of returning NaN, which tables would silently average. As ``anombench.api.UndefinedMetric``
    the runner records the figure as undefined and keeps the cell's others; as a ``UserError`` the CLI shows it
    as one line; it is also a ``ValueError`` for code that uses the functions below as a library.
    """


# ---------------------------------------------------------------------------------------------------------------
# Score bins, curves and areas


@dataclass(frozen=True)
class ScoreBins:
    """Test pixels (or images) grouped by score, highest scores first.

    ``negatives``/``positives`` (int64) count normal/defect pixels per bin; ``overlap`` (float64, PRO only) sums
    1/|region| over the bin's defect pixels. ``binned`` says whether a bin is a score interval whose inner order
    is unknown (so curve areas carry an error bound) or a single score value (exact).
    """

    negatives: np.ndarray
    positives: np.ndarray
    overlap: np.ndarray | None
    binned: bool


def exact_bins(scores: np.ndarray, positive: np.ndarray, positive_weights: np.ndarray | None = None) -> ScoreBins:
    """One bin per distinct score value: merging runs of equal scores is how the official script handles ties.

    ``positive_weights`` (PRO only) holds the overlap increment 1/|region| of each positive, in the order of
    ``scores[positive]``. Only the positives (usually a small share) are sorted together with their weights; all
    scores are sorted alone, which numpy does several times faster than an argsort, and the positives are then
    placed among the distinct values by binary search.
    """
    scores = np.ravel(scores)
    positive = np.ravel(positive).astype(bool, copy=False)
    values, counts, _ = _runs(np.sort(scores))
    positive_scores = scores[positive]
    order = np.argsort(positive_scores)
    positive_values, positive_counts, positive_starts = _runs(positive_scores[order])
    cell_of = np.searchsorted(values, positive_values)
    positives = np.zeros(values.size, dtype=np.int64)
    positives[cell_of] = positive_counts
    overlap = None
    if positive_weights is not None:
        overlap = np.zeros(values.size, dtype=np.float64)
        if order.size:
            sorted_weights = np.asarray(positive_weights, dtype=np.float64)[order]
            overlap[cell_of] = np.add.reduceat(sorted_weights, positive_starts)
        overlap = overlap[::-1]
    return ScoreBins((counts - positives)[::-1], positives[::-1], overlap, binned=False)


def _runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of a sorted array, how many times each occurs, and where each run starts."""
    if ordered.size == 0:
        return ordered, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    is_start = np.empty(ordered.size, dtype=bool)
    is_start[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    del is_start
    counts = np.empty(starts.size, dtype=np.int64)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1])
    counts[-1] = ordered.size - starts[-1]
    return ordered[starts], counts, starts


def roc_curve_from(bins: ScoreBins) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every bin boundary, from (0, 0) to (1, 1), float64."""
    return (_cumulative(bins.negatives, bins.negatives.sum(), ends_at_one=False),
            _cumulative(bins.positives, bins.positives.sum(), ends_at_one=False))


def pro_curve_from(bins: ScoreBins, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) as the official script builds them: cumulative sums over bins, divided by the number of normal
    pixels and of regions, clipped to 1, with (0, 0) and (1, 1) added. float64 throughout (the official script
    keeps FPRs in float32, one of the pitfalls design.md lists)."""
    if bins.overlap is None:
        raise ValueError("PRO needs bins with overlap weights (build them with region sizes)")
    return (_cumulative(bins.negatives, bins.negatives.sum(), ends_at_one=True),
            _cumulative(bins.overlap, n_regions, ends_at_one=True))


def _cumulative(increments: np.ndarray, total: float, ends_at_one: bool) -> np.ndarray:
    """0, then the running sum of ``increments`` / ``total`` clipped to 1 (float64), then 1 if ``ends_at_one``;
    built in one array because at the exact path's scale every temporary costs."""
    curve = np.empty(increments.size + 1 + ends_at_one, dtype=np.float64)
    curve[0] = 0.0
    inner = curve[1:curve.size - ends_at_one]
    np.cumsum(increments, out=inner)
    inner /= float(total)
    np.minimum(inner, 1.0, out=inner)
    if ends_at_one:
        curve[-1] = 1.0
    return curve


def trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Area under the polyline through (x, y), x non-decreasing, from x[0] to ``x_max`` (default: the end).

    As in the official evaluation, the segment crossing ``x_max`` is cut there by linear interpolation.
    """
    if x_max is not None:
        x, y = _cut_at(x, y, x_max)
    heights = y[1:] + y[:-1]
    heights *= np.diff(x)
    return float(np.sum(heights) / 2.0)


def _cut_at(x: np.ndarray, y: np.ndarray, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """The polyline restricted to x <= x_max, ending with the interpolated point at x_max when it falls inside a
    segment."""
    kept = int(np.searchsorted(x, x_max, side="right"))
    if kept == len(x) or x[kept - 1] == x_max:
        return x[:kept], y[:kept]
    x0, x1, y0, y1 = x[kept - 1], x[kept], y[kept - 1], y[kept]
    y_cut = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    return np.append(x[:kept], x_max), np.append(y[:kept], y_cut)


def binning_error_bound(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """The largest |exact area - binned area| possible when (x, y) are the curve's points at bin boundaries.

    Between two consecutive points the exact curve is monotone inside their box, so its area there lies between
    the box's lower and upper rectangles; the binned trapezoid is their mean, hence at most dx * dy / 2 away. The
    segment crossing ``x_max`` ends at an interpolated height, anywhere in the box: (x_max - x_left) * dy.
    """
    dx, dy, left, right = np.diff(x), np.diff(y), x[:-1], x[1:]
    if x_max is None:
        return float(np.sum(dx * dy) / 2.0)
    below = right <= x_max
    crossing = (left < x_max) & (right > x_max)
    return float(np.sum(dx[below] * dy[below]) / 2.0 + np.sum((x_max - left[crossing]) * dy[crossing]))


def thin_polyline(x: np.ndarray, y: np.ndarray, max_points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a polyline, evenly spaced along its length (|dx| + |dy|), both ends kept:
    enough to draw it, small enough to store with every cell (an exact curve has a point per distinct score)."""
    if len(x) <= max_points:
        return x, y
    travelled = np.concatenate(([0.0], np.cumsum(np.abs(np.diff(x)) + np.abs(np.diff(y)))))
    marks = np.searchsorted(travelled, np.linspace(0.0, travelled[-1], max_points - 1))
    kept = np.unique(np.append(np.minimum(marks, len(x) - 1), len(x) - 1))
    return x[kept], y[kept]


def _require_both_classes(negatives: int, positives: int, metric: str, normal: str, anomalous: str) -> None:
    for count, kind in ((positives, anomalous), (negatives, normal)):
        if count == 0:
            raise UndefinedMetricError(
                f"{metric} is undefined: the test set has no {kind}; it needs both {normal} and {anomalous}"
            )


def auroc_from_bins(bins: ScoreBins, metric: str = "AUROC", normal: str = "normal samples",
                     anomalous: str = "anomalous samples") -> tuple[float, float]:
    """(AUROC, error bound): the trapezoid under the ROC, which gives tied pairs one half as scikit-learn does."""
    _require_both_classes(int(bins.negatives.sum()), int(bins.positives.sum()), metric, normal, anomalous)
    fpr, tpr = roc_curve_from(bins)
    bound = binning_error_bound(fpr, tpr) if bins.binned else 0.0
    return trapezoid(fpr, tpr), bound


def pro_from_bins(bins: ScoreBins, n_regions: int, max_fpr: float = DEFAULT_MAX_FPR,
                   metric: str = "PRO") -> tuple[float, float]:
    """(PRO, error bound): the area under the PRO curve up to ``max_fpr``, divided by ``max_fpr`` (not by the last
    FPR reached, a pitfall of older libraries)."""
    _require_both_classes(int(bins.negatives.sum()), n_regions, metric, "normal pixels", "defect pixels")
    fpr, pro = pro_curve_from(bins, n_regions)
    bound = binning_error_bound(fpr, pro, max_fpr) / max_fpr if bins.binned else 0.0
    return trapezoid(fpr, pro, max_fpr) / max_fpr, bound


# ---------------------------------------------------------------------------------------------------------------
# Plain functions on whole arrays


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact area under the ROC curve of ``scores`` for binary ``labels`` (non-zero = anomalous); equals
    sklearn.metrics.roc_auc_score, ties included."""
    scores = _finite(np.asarray(scores), "scores")
    return auroc_from_bins(exact_bins(scores, np.asarray(labels) != 0))[0]


def defect_region_sizes(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """For a (N, H, W) stack of ground-truth masks: the size of the region of every defect pixel (in the order of
    ``masks[masks]``) and the number of regions. Regions are 8-connected components of each image separately."""
    sizes, regions_per_image = defect_regions(masks)
    return sizes, int(regions_per_image.sum())


def defect_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``defect_region_sizes`` with the number of regions of each image ((N,) int64) instead of their total; the
    bootstrap resamples images, so it needs each image's share of PRO's region count."""
    defect = np.asarray(masks) != 0
    pixels = int(np.prod(defect.shape[1:]))
    with_defects = defect.reshape(len(defect), pixels).any(axis=1)  # good images have no region: skip labelling
    labels, _ = ndimage.label(defect[with_defects], structure=_IN_PLANE_8_CONNECTED)
    region_of_pixel = labels[defect[with_defects]]
    # ndimage numbers components in scan order and none spans two images: each image's labels are the next block.
    last_label = np.maximum.accumulate(labels.reshape(len(labels), pixels).max(axis=1, initial=0))
    regions_per_image = np.zeros(len(defect), dtype=np.int64)
    regions_per_image[with_defects] = np.diff(last_label, prepend=0)
    return np.bincount(region_of_pixel)[region_of_pixel], regions_per_image


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official per-region-overlap curve (FPR, PRO) of anomaly ``maps`` against ground-truth ``masks``, both
    (N, H, W); good images (empty masks) count as normal pixels."""
    bins, n_regions = _pro_bins(*validated_pixels(maps, masks))
    _require_both_classes(int(bins.negatives.sum()), n_regions, "PRO", "normal pixels", "defect pixels")
    return pro_curve_from(bins, n_regions)


def pro_score(maps: np.ndarray, masks: np.ndarray, max_fpr: MaxFpr = DEFAULT_MAX_FPR) -> float:
    """The official PRO: area under ``pro_curve`` up to ``max_fpr``, divided by ``max_fpr``; a fraction."""
    check_arguments(pro_score, {"max_fpr": max_fpr})
    bins, n_regions = _pro_bins(*validated_pixels(maps, masks))
    return pro_from_bins(bins, n_regions, max_fpr)[0]


def _pro_bins(maps: np.ndarray, defect: np.ndarray) -> tuple[ScoreBins, int]:
    sizes, n_regions = defect_region_sizes(defect)
    return exact_bins(maps, defect, 1.0 / sizes), n_regions


def validated_pixels(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, H, W) float32 maps and bool defect masks, from numpy arrays or torch tensors."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    maps, masks = np.asarray(maps, dtype=np.float32), np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"anomaly maps and masks must both be (N, H, W) and alike; got {maps.shape} and {masks.shape}")
    return _finite(maps, "anomaly maps"), masks != 0


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise UserError(f"{what} contain NaN or infinite values; metrics need finite scores")
    return values


# ---------------------------------------------------------------------------------------------------------------
# Streaming


class ScoreHistogram:
    """Per score bin: pixel count, defect-pixel count and (optionally) PRO overlap weight, accumulated in int64 /
    float64 over a stream of any length in fixed memory (24 bytes per bin).

    Bins: ``inner_bins`` equal-width bins over [lo, hi] (the range of the exact prefix seen before the switch) and,
    below lo and above hi, bins keyed by the distance d to the range: d rounded to float32 with its mantissa cut to
    ``tail_bits`` bits, i.e. widths of 2**-tail_bits of d. Every finite score has a bin, so a later score outside
    the prefix's range needs no rebinning and costs only resolution proportional to how far out it lies. Only one
    property matters for the error bound, and both mappings have it: the bin index never decreases as the score
    grows, so every bin is an interval of scores and the bins are ordered.
    """

    def __init__(self, lo: float, hi: float, inner_bins: int, with_overlap: bool,
                 tail_bits: int = TAIL_MANTISSA_BITS) -> None:
        if not 0 <= tail_bits <= 16:
            raise ValueError(f"tail_bits must be in [0, 16] (2**(9 + tail_bits) tail bins), got {tail_bits}")
        self.lo, self.hi, self.inner_bins, self.tail_bits = float(lo), float(hi), int(inner_bins), int(tail_bits)
        self._tail_bins = 1 << (8 + self.tail_bits)  # every float32 exponent times every kept mantissa
        # Clamped so that the float32 scale is finite: 0 * inf would be NaN for a score equal to lo.
        self._scale = min(self.inner_bins / (self.hi - self.lo), _FLOAT32_MAX) if self.hi > self.lo else 0.0
        n_bins = 2 * self._tail_bins + self.inner_bins
        self._pixels = np.zeros(n_bins, dtype=np.int64)
        self._defects = np.zeros(n_bins, dtype=np.int64)
        self._overlap = np.zeros(n_bins, dtype=np.float64) if with_overlap else None

    def index(self, scores: np.ndarray) -> np.ndarray:
        """Bin of each float32 score (int64), non-decreasing in the score.

        The arithmetic is float32: IEEE rounding is monotone, so every step keeps the order, which is all the
        error bound needs (rounding only moves the bin edges a little); float64 would double the memory traffic.
        """
        # A difference beyond float32's range is +inf: the end bin, still ordered. inf * 0 (a zero-width range)
        # only happens to out-of-range scores, whose inner index _index overwrites.
        with np.errstate(over="ignore", invalid="ignore"):
            return self._index(np.asarray(scores, dtype=np.float32))

    def _index(self, s: np.ndarray) -> np.ndarray:
        lo, hi = np.float32(self.lo), np.float32(self.hi)
        position = s - lo
        position *= np.float32(self._scale)
        np.maximum(position, 0, out=position)
        np.minimum(position, self.inner_bins - 1, out=position)
        index = position.astype(np.int64)
        index += self._tail_bins
        below, above = s < lo, s > hi
        if below.any():
            index[below] = self._tail_bins - 1 - self._tail_index(lo - s[below])
        if above.any():
            index[above] = self._tail_bins + self.inner_bins + self._tail_index(s[above] - hi)
        return index

    def _tail_index(self, distance: np.ndarray) -> np.ndarray:
        """Monotone key of a positive float32 distance: its bit pattern (ordered like the value for positive
        floats) without the low mantissa bits."""
        return (distance.view(np.uint32) >> (_FLOAT32_MANTISSA_BITS - self.tail_bits)).astype(np.int64)

    def add(self, scores: np.ndarray, defect: np.ndarray, overlap: np.ndarray | None) -> None:
        """Count flat ``scores`` with their bool ``defect`` flags; ``overlap`` holds the weights of the defect pixels
        (in the order of ``scores[defect]``) when the histogram tracks PRO."""
        overlap_start = 0
        for start in range(0, scores.size, _CHUNK):
            index = self.index(scores[start:start + _CHUNK])
            first = int(index.min())
            index -= first  # count over the span of bins in use, not all of them
            _add_counts(self._pixels, first, index)
            defect_index = index[defect[start:start + _CHUNK]]
            _add_counts(self._defects, first, defect_index)
            if self._overlap is not None:
                weights = overlap[overlap_start:overlap_start + defect_index.size]
                _add_counts(self._overlap, first, defect_index, weights)
                overlap_start += defect_index.size

    def score_bins(self) -> ScoreBins:
        """The non-empty bins, highest scores first."""
        kept = np.flatnonzero(self._pixels)[::-1]
        defects = self._defects[kept]
        overlap = None if self._overlap is None else self._overlap[kept]
        return ScoreBins(self._pixels[kept] - defects, defects, overlap, binned=True)


def _add_counts(total: np.ndarray, first: int, index: np.ndarray, weights: np.ndarray | None = None) -> None:
    """total[first + i] += number (or weight sum) of occurrences of i in ``index``."""
    counts = np.bincount(index, weights=weights)
    total[first:first + counts.size] += counts


class PixelStream:
    """Accumulates (maps, masks) batches into ``ScoreBins`` for pixel AUROC and, with ``regions``, PRO.

    Exact while at most ``pixel_budget`` pixels have been seen: it keeps float32 scores, bool masks and, for PRO,
    the region size of each defect pixel (its overlap increment depends on nothing else), about 5 bytes a pixel;
    ``score_bins()`` then sorts them, about 50 bytes a pixel at its peak. Past the budget it switches for good to a
    ``ScoreHistogram`` of ``bins`` inner bins spanning the exact prefix's score range plus 2**(9 + tail_bits) tail
    bins, 24 bytes each (40 MB with the defaults), and memory stops growing. Regions never span two images, so
    region sizes are known batch by batch and the per-region overlap histograms of PRO collapse into one histogram
    weighted by 1/|region|.
    """

    def __init__(self, *, regions: bool, pixel_budget: int = DEFAULT_PIXEL_BUDGET, bins: int = DEFAULT_BINS) -> None:
        self.regions, self.pixel_budget, self.bins = regions, int(pixel_budget), int(bins)
        self.n_regions = 0
        self._scores: list[np.ndarray] = []
        self._defects: list[np.ndarray] = []
        self._region_sizes: list[np.ndarray] = []
        self._stored = 0
        self.histogram: ScoreHistogram | None = None

    def add(self, maps: Any, masks: Any) -> None:
        """Take one batch: maps (B, H, W) float32, masks (B, H, W) of 0/1 (numpy or torch)."""
        maps, defect = validated_pixels(maps, masks)
        sizes = np.zeros(0, dtype=np.int64)
        if self.regions:
            sizes, n_regions = defect_region_sizes(defect)
            self.n_regions += n_regions
        scores, defect = maps.ravel(), defect.ravel()
        if self.histogram is not None:
            self.histogram.add(scores, defect, self._weights(sizes))
            return
        self._scores.append(scores.copy())  # the method may reuse its map buffer for the next batch
        self._defects.append(defect)
        self._region_sizes.append(sizes.astype(np.int32))
        self._stored += scores.size
        if self._stored > self.pixel_budget:
            self._switch_to_histogram()

    def _weights(self, region_sizes: np.ndarray) -> np.ndarray | None:
        return 1.0 / region_sizes if self.regions else None

    def _prefix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored pixels as flat scores, defect flags and defect-pixel region sizes."""
        if not self._scores:
            return np.zeros(0, np.float32), np.zeros(0, bool), np.zeros(0, np.int32)
        return np.concatenate(self._scores), np.concatenate(self._defects), np.concatenate(self._region_sizes)

    def _switch_to_histogram(self) -> None:
        """Bin the exact prefix batch by batch (no copy of it all), the inner range being the prefix's score
        range."""
        lo, hi = min(s.min() for s in self._scores), max(s.max() for s in self._scores)
        self.histogram = ScoreHistogram(lo, hi, self.bins, with_overlap=self.regions)
        for scores, defect, sizes in zip(self._scores, self._defects, self._region_sizes):
            self.histogram.add(scores, defect, self._weights(sizes))
        self._scores, self._defects, self._region_sizes = [], [], []

    def score_bins(self) -> ScoreBins:
        """Everything seen so far, one bin per distinct score (under the budget) or the histogram's bins."""
        if self.histogram is not None:
            return self.histogram.score_bins()
        scores, defect, sizes = self._prefix()
        return exact_bins(scores, defect, self._weights(sizes))


# ---------------------------------------------------------------------------------------------------------------
# Metric plugins


def _warn_if_loose(metric: str, bound: float) -> None:
    if bound > BOUND_WARNING:
        warnings.warn(f"{metric}: the binned value is only guaranteed to within {bound:.2g} (> {BOUND_WARNING}); "
                      "raise the metric's bins or pixel_budget", stacklevel=3)


class _PixelMetric:
    """What pixel AUROC and PRO share: a ``PixelStream`` fed with every batch and, once computed, the binning
    error bound and a drawable curve."""

    higher_is_better = True  # a quality figure: `anombench compare` gates on it

    def __init__(self, metric: str, regions: bool, pixel_budget: int, bins: int) -> None:
        check_arguments(type(self), {"pixel_budget": pixel_budget, "bins": bins}, metric)  # the metric's signature
        self._stream = PixelStream(regions=regions, pixel_budget=pixel_budget, bins=bins)
        self.error_bound = 0.0
        self._curve: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, scores: Scores, batch: Batch) -> None:
        self._stream.add(scores.maps, batch.masks)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The curve behind the last ``compute``, thinned to at most ``CURVE_POINTS`` points, for the report."""
        if self._curve is None:
            raise RuntimeError("curve() is available after compute()")
        return self._curve


class PixelAUROC(_PixelMetric):
    """Pixel-level AUROC over every test pixel, defect pixels positive; a fraction in [0, 1].

    Equals sklearn.metrics.roc_auc_score on all pixels (ties count one half) while the test set fits in
    ``pixel_budget`` pixels; beyond it the value comes from ``bins``-bin histograms and ``error_bound`` (set by
    ``compute``) is the guaranteed maximum |error| (see the module docstring). ``curve()`` gives (FPR, TPR).
    """

    def __init__(self, pixel_budget: PixelBudget = DEFAULT_PIXEL_BUDGET, bins: PositiveInt = DEFAULT_BINS) -> None:
        super().__init__("pixel_auroc", regions=False, pixel_budget=pixel_budget, bins=bins)

    def compute(self, resources: Resources) -> float:
        bins = self._stream.score_bins()
        value, self.error_bound = auroc_from_bins(bins, "pixel_auroc", "normal pixels", "defect pixels")
        self._curve = thin_polyline(*roc_curve_from(bins))
        _warn_if_loose("pixel_auroc", self.error_bound)
        return value


class PRO(_PixelMetric):
    """Per-region overlap integrated up to ``max_fpr`` and divided by it, as the official MVTec AD evaluation; a
    fraction in [0, 1]. Regions are the 8-connected components of each ground-truth mask; good images add normal
    pixels. Exact under ``pixel_budget`` pixels, binned beyond with ``error_bound`` as for ``PixelAUROC``.
    ``curve()`` gives (FPR, PRO) up to ``max_fpr``.
    """

    def __init__(self, max_fpr: MaxFpr = DEFAULT_MAX_FPR, pixel_budget: PixelBudget = DEFAULT_PIXEL_BUDGET,
                 bins: PositiveInt = DEFAULT_BINS) -> None:
        check_arguments(PRO, {"max_fpr": max_fpr}, "pro")
        super().__init__("pro", regions=True, pixel_budget=pixel_budget, bins=bins)
        self.max_fpr = float(max_fpr)

    def compute(self, resources: Resources) -> float:
        bins = self._stream.score_bins()
        value, self.error_bound = pro_from_bins(bins, self._stream.n_regions, self.max_fpr, "pro")
        self._curve = thin_polyline(*_cut_at(*pro_curve_from(bins, self._stream.n_regions), self.max_fpr))
        _warn_if_loose("pro", self.error_bound)
        return value


class ImageAUROC:
    """Image-level AUROC of the method's own image scores (PaDiM's: the maximum of the map) against the image
    labels; a fraction in [0, 1], exact (equals sklearn.metrics.roc_auc_score)."""

    higher_is_better = True

    def __init__(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, scores: Scores, batch: Batch) -> None:
        self._scores.append(_finite(np.array(scores.image_scores, copy=True), "image scores"))
        self._labels.append(batch.labels.detach().cpu().numpy() != 0)

    def compute(self, resources: Resources) -> float:
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, bool)
        return auroc_from_bins(exact_bins(scores, labels), "image_auroc", "normal images", "anomalous images")[0]


class ResourceMetric:
    """A figure the runner measured around the cell (``anombench.api.Resources``); the batches are ignored.

    NaN means the runner did not measure it (e.g. no CUDA peak on a CPU run): tables show it as not applicable.
    """

    field: ClassVar[str]
    higher_is_better: ClassVar[bool] = False  # a cost: reported, never gated as a quality figure

    def __init__(self) -> None:
        """No parameters; declared so that suite validation rejects any (object's own takes ``**kwargs``)."""

    def update(self, scores: Scores, batch: Batch) -> None:
        """Nothing to accumulate: the runner measures resources around the whole cell."""

    #: why the figure does not exist when the runner could not measure it (the resource is NaN)
    unmeasured = "not measured for this cell"

    def compute(self, resources: Resources) -> float:
        value = float(getattr(resources, self.field))
        if math.isnan(value):
            raise UndefinedMetric(self.unmeasured)
        return value


class FitSeconds(ResourceMetric):
    """Wall time of ``fit`` in seconds, data loading included (end to end, what a user waits for)."""

    field = "fit_seconds"


class InferSecondsPerImage(ResourceMetric):
    """Inference wall time per test image in seconds, data loading included (total test time / test images)."""

    field = "infer_seconds_per_image"


class PeakRssGB(ResourceMetric):
    """Peak memory of the cell in GB (1e9 bytes): the process's resident memory plus what its DataLoader workers
    hold on their own (their USS: a forked worker shares the parent's pages), sampled while the cell runs."""

    field = "peak_rss_gb"


class PeakCudaGB(ResourceMetric):
    """Peak CUDA memory allocated during the cell, in GB (1e9 bytes); undefined when the cell did not use CUDA."""

    field = "peak_cuda_gb"
    unmeasured = "the cell did not run on CUDA"


class ModelGB(ResourceMetric):
    """Size of the fitted model's learned state, in GB (1e9 bytes) (Table VIII); undefined when the method does
    not report it (``api.ModelSize``)."""

    field = "model_gb"
    unmeasured = "the method does not report its model size (no model_bytes())"


METRICS: dict[str, type] = {
    "pixel_auroc": PixelAUROC,
    "pro": PRO,
    "image_auroc": ImageAUROC,
    "fit_seconds": FitSeconds,
    "infer_seconds_per_image": InferSecondsPerImage,
    "peak_rss_gb": PeakRssGB,
    "peak_cuda_gb": PeakCudaGB,
    "model_gb": ModelGB,
}


@hookimpl
def anombench_register_metrics(register: Any) -> None:
    for name, factory in METRICS.items():
        register(name, factory)
