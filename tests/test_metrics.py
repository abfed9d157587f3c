"""Metrics: known answers, agreement with scikit-learn and with an independent re-implementation of the official
MVTec AD PRO, and the binned path staying within its stated error bound."""

from __future__ import annotations

import inspect
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, target
from hypothesis import strategies as st
from skimage.measure import label as skimage_label
from sklearn.metrics import roc_auc_score

from anombench.api import Batch, Resources, Scores, UndefinedMetric
from anombench.errors import UserError
from anombench.params import validate
from anombench.plugins import collect, make_plugin_manager
from anombench_plugins.metrics import (
    PRO,
    ImageAUROC,
    PixelAUROC,
    ScoreHistogram,
    UndefinedMetricError,
    auroc,
    defect_region_sizes,
    defect_regions,
    pro_curve,
    pro_score,
    trapezoid,
)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NO_BUDGET = 10**12  # a pixel budget no test reaches: the exact path


# --- helpers ---------------------------------------------------------------------------------------------------


def batch_of(maps: np.ndarray, masks: np.ndarray, image_scores: np.ndarray | None = None,
             labels: np.ndarray | None = None) -> tuple[Scores, Batch]:
    """What the runner hands a metric for one batch: float32 maps, uint8 torch masks, int64 torch labels."""
    masks = np.asarray(masks, dtype=np.uint8)
    if image_scores is None:
        image_scores = maps.reshape(len(maps), -1).max(axis=1)
    if labels is None:
        labels = masks.reshape(len(masks), -1).any(axis=1)
    batch = Batch(images=torch.zeros(len(maps), 3, 1, 1), masks=torch.from_numpy(masks),
                  labels=torch.as_tensor(np.asarray(labels), dtype=torch.int64), ids=[str(i) for i in range(len(maps))])
    return Scores(np.asarray(maps, dtype=np.float32), np.asarray(image_scores, dtype=np.float32)), batch


def streamed(metric, maps: np.ndarray, masks: np.ndarray, batch_size: int = 1, **batch_kwargs) -> float:
    """Feed the images to ``metric`` in batches, then compute it."""
    for start in range(0, len(maps), batch_size):
        part = slice(start, start + batch_size)
        metric.update(*batch_of(maps[part], masks[part], **{k: v[part] for k, v in batch_kwargs.items()}))
    return metric.compute(Resources())


def reference_pro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """The official steps written from their definition, independently of the plugin: for every distinct score t
    (highest first), FPR(t) = share of OK pixels scoring >= t and PRO(t) = mean over 8-connected regions (skimage)
    of the share of the region scoring >= t; clip to 1; add (0, 0) and (1, 1); trapezoid up to max_fpr with
    linear interpolation there; divide by max_fpr."""
    flat_scores = maps.astype(np.float64).ravel()
    region_of = np.concatenate([skimage_label(m, connectivity=2, background=0).ravel() for m in masks])
    offsets = np.repeat(np.arange(len(masks)) * (maps[0].size + 1), maps[0].size)
    region_of = np.where(region_of > 0, region_of + offsets, 0)
    regions = [region_of == r for r in np.unique(region_of[region_of > 0])]
    ok = region_of == 0
    thresholds = np.unique(flat_scores)[::-1]
    above = flat_scores[None, :] >= thresholds[:, None]
    fprs = [0.0] + list(np.minimum(above[:, ok].sum(axis=1) / ok.sum(), 1.0)) + [1.0]
    shares = np.stack([above[:, r].sum(axis=1) / r.sum() for r in regions], axis=1)
    pros = [0.0] + list(np.minimum(shares.mean(axis=1), 1.0)) + [1.0]
    area = 0.0
    for x0, x1, y0, y1 in zip(fprs, fprs[1:], pros, pros[1:]):
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < max_fpr:
            y_cut = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_cut) / 2
    return area / max_fpr


@st.composite
def maps_and_masks(draw, max_images: int = 3, max_side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Small test sets with fragmented masks (diagonal contacts included), good images, and either heavily tied
    or continuous float32 scores; always at least one defect and one normal pixel."""
    n, h, w = draw(st.integers(1, max_images)), draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    masks = draw(hnp.arrays(np.uint8, (n, h, w), elements=st.integers(0, 1)))
    good = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    masks[np.array(good)] = 0
    assume(masks.any() and not masks.all())
    elements = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]) if draw(st.booleans()) else st.floats(-1e3, 1e3, width=32)
    maps = draw(hnp.arrays(np.float32, (n, h, w), elements=elements))
    return maps, masks


def one_row(scores: list[float], mask: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([[scores]], dtype=np.float32), np.array([[mask]], dtype=np.uint8)


# --- known answers ---------------------------------------------------------------------------------------------

MASKS = np.zeros((3, 6, 6), dtype=np.uint8)
MASKS[0, 1:3, 1:4] = 1
MASKS[1, 4:6, 0:2] = 1
MASKS[1, 0, 5] = 1  # a one-pixel region; image 2 stays good
PERFECT = MASKS.astype(np.float32) + 0.25 * np.arange(MASKS.size, dtype=np.float32).reshape(MASKS.shape) / MASKS.size


@pytest.mark.parametrize(("sign", "expected"), [(1.0, 1.0), (-1.0, 0.0)], ids=["perfect", "inverted"])
def test_perfect_and_inverted_maps(sign, expected):
    maps = sign * PERFECT
    image_scores = sign * PERFECT.reshape(len(PERFECT), -1).max(axis=1)
    assert pro_score(maps, MASKS) == pytest.approx(expected, abs=1e-12)
    assert auroc(maps, MASKS) == pytest.approx(expected, abs=1e-12)
    assert streamed(PRO(), maps, MASKS) == pytest.approx(expected, abs=1e-12)
    assert streamed(PixelAUROC(), maps, MASKS) == pytest.approx(expected, abs=1e-12)
    assert streamed(ImageAUROC(), maps, MASKS, image_scores=image_scores) == pytest.approx(expected, abs=1e-12)


def test_constant_map_is_a_coin_toss():
    constant = np.full(MASKS.shape, 7.0, dtype=np.float32)
    assert streamed(PixelAUROC(), constant, MASKS) == 0.5
    assert streamed(ImageAUROC(), constant, MASKS) == 0.5
    # One tie run: the PRO curve is the diagonal, whose mean height up to max_fpr is max_fpr / 2.
    assert pro_score(constant, MASKS) == pytest.approx(0.15, abs=1e-12)


def test_pro_of_two_regions_of_different_sizes_by_hand():
    # Region A = 1 pixel scored 0.9; region B = 3 pixels scored 0.8, 0.5, 0.1; 10 OK pixels: 0.7, 0.6, 0.4, 0 x 7.
    maps, masks = one_row([0.9, 0.7, 0.8, 0.5, 0.1, 0.6, 0.4] + [0.0] * 7, [1, 0, 1, 1, 1] + [0] * 9)
    # Curve: (0, 1/2) (0, 2/3) (.1, 2/3) (.2, 2/3) (.2, 5/6) (.3, 5/6) (.3, 1) ... -> area .1 * (2/3 + 2/3 + 5/6).
    assert pro_score(maps, masks) == pytest.approx((13 / 60) / 0.3, abs=1e-12)
    # Cut inside the last segment: .1 * 2/3 + .1 * 2/3 + .05 * 5/6 = 7/40, over 0.25.
    assert pro_score(maps, masks, max_fpr=0.25) == pytest.approx(0.7, abs=1e-12)
    assert streamed(PRO(max_fpr=0.25), maps, masks) == pytest.approx(0.7, abs=1e-12)


def test_regions_are_8_connected_per_image():
    masks = np.zeros((1, 3, 5), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = 1  # diagonal contact: one region of 2 pixels (two with 4-connectivity)
    masks[0, 0, 4] = 1
    sizes, n_regions = defect_region_sizes(masks)
    assert n_regions == 2 and sizes.tolist() == [2, 1, 2]  # row-major order: (0, 0), (0, 4), (1, 1)
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 0, 4] = 1.0
    # Curve (0, 0) (0, 1/2) (1, 1): height at 0.3 is 0.65, area 0.3 * (0.5 + 0.65) / 2. 4-connectivity gives 1/3.
    assert pro_score(maps, masks) == pytest.approx(0.575, abs=1e-12)
    # The same blob split across two images is two regions.
    assert defect_region_sizes(np.ones((2, 2, 2), dtype=np.uint8))[1] == 2


def test_regions_are_counted_per_image_for_the_bootstrap():
    masks = np.zeros((4, 3, 5), dtype=np.uint8)
    masks[1, 0, 0] = masks[1, 2, 4] = 1  # two regions
    masks[3] = 1  # one region; images 0 and 2 are good
    sizes, per_image = defect_regions(masks)
    assert per_image.tolist() == [0, 2, 0, 1]
    assert sizes.tolist() == [1, 1] + [15] * 15
    assert defect_regions(np.zeros((0, 3, 5), dtype=np.uint8))[1].tolist() == []


def test_ties_are_merged_like_the_official_script():
    # AUROC: pairs (2,1)=1, (2,0)=1, (1,1)=1/2, (1,0)=1.
    assert auroc(np.array([2.0, 1.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == 0.875
    # PRO: a defect pixel ties with an OK pixel at 0.5; the run enters at once: (0, .5) -> (.5, 1), height .8 at .3.
    # Either order inside the run would give 1.0 or 0.5 instead.
    maps, masks = one_row([1.0, 0.5, 0.5, 0.0], [1, 1, 0, 0])
    assert pro_score(maps, masks) == pytest.approx(0.3 * (0.5 + 0.8) / 2 / 0.3, abs=1e-12)
    fpr, pro = pro_curve(maps, masks)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0] and pro.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_trapezoid_cuts_at_x_max_by_interpolation():
    x, y = np.array([0.0, 0.2, 0.6, 1.0]), np.array([0.0, 0.4, 0.8, 1.0])
    assert trapezoid(x, y) == pytest.approx(0.04 + 0.24 + 0.36)
    assert trapezoid(x, y, 0.4) == pytest.approx(0.04 + 0.2 * (0.4 + 0.6) / 2)
    assert trapezoid(x, y, 0.2) == pytest.approx(0.04)


# --- undefined and invalid input -------------------------------------------------------------------------------

GOOD_ONLY = np.zeros((2, 4, 4), dtype=np.uint8)
SCORES = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)


@pytest.mark.parametrize("factory", [PixelAUROC, PRO, ImageAUROC])
def test_no_defects_is_a_clear_error_not_nan(factory):
    with pytest.raises(UndefinedMetricError, match="no defect pixels|no anomalous images"):
        streamed(factory(), SCORES, GOOD_ONLY)
    with pytest.raises(UndefinedMetricError, match="undefined"):
        factory().compute(Resources())  # nothing streamed at all


@pytest.mark.parametrize("factory", [PixelAUROC, PRO, ImageAUROC])
def test_no_normal_pixels_is_a_clear_error(factory):
    with pytest.raises(UndefinedMetricError, match="no normal"):
        streamed(factory(), SCORES, np.ones_like(GOOD_ONLY))


def test_undefined_is_both_a_user_error_and_a_value_error():
    with pytest.raises(UserError):
        pro_score(SCORES, GOOD_ONLY)
    with pytest.raises(ValueError):
        auroc(np.array([0.1, 0.2]), np.array([0, 0]))


def test_non_finite_scores_and_mismatched_shapes_are_rejected():
    masks = GOOD_ONLY.copy()
    masks[0, 0, 0] = 1
    with pytest.raises(UserError, match="NaN"):
        PRO().update(*batch_of(np.where(masks == 1, np.nan, SCORES).astype(np.float32), masks))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pro_score(SCORES, masks[:, :3])


@pytest.mark.parametrize(("factory", "params", "message"), [
    (PRO, {"max_fpr": 0.0}, r"pro parameter max_fpr: must be in \(0, 1\], got 0.0"),
    (PRO, {"max_fpr": 1.5}, r"pro parameter max_fpr: must be in \(0, 1\], got 1.5"),
    (PRO, {"bins": 0}, r"pro parameter bins: must be >= 1, got 0"),
    (PixelAUROC, {"pixel_budget": -1}, r"pixel_auroc parameter pixel_budget: must be >= 0, got -1"),
    (PixelAUROC, {"bins": 0}, r"pixel_auroc parameter bins: must be >= 1, got 0"),
    (pro_score, {"maps": SCORES, "masks": GOOD_ONLY, "max_fpr": 0}, r"pro_score parameter max_fpr: must be in "),
])
def test_bad_parameters_name_themselves(factory, params, message):
    with pytest.raises(UserError, match=f"^{message}"):
        factory(**params)


def test_the_exact_path_keeps_its_own_copy_of_the_maps():
    """A method may refill one output buffer for every batch."""
    maps, masks = MASKS + np.float32(0.5) * np.sin(np.arange(MASKS.size, dtype=np.float32)).reshape(MASKS.shape), MASKS
    expected = streamed(PRO(), maps, masks)
    metric, buffer = PRO(), np.empty_like(maps[:1])
    for i in range(len(maps)):
        buffer[:] = maps[i:i + 1]
        metric.update(*batch_of(buffer, masks[i:i + 1]))
    assert metric.compute(Resources()) == expected


# --- agreement with scikit-learn -------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=st.data(), n=st.integers(2, 300), tied=st.booleans())
def test_auroc_equals_sklearn(data, n, tied):
    elements = st.integers(0, 3).map(float) if tied else st.floats(-1e6, 1e6, width=32)
    scores = data.draw(hnp.arrays(np.float32, n, elements=elements))
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 1)))
    assume(0 < labels.sum() < n)
    assert abs(auroc(scores, labels) - roc_auc_score(labels, scores)) <= 1e-9


@PROPERTY_SETTINGS
@given(maps_and_masks(max_images=4), st.integers(1, 3))
def test_streamed_pixel_and_image_auroc_equal_sklearn(sample, batch_size):
    maps, masks = sample
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert abs(streamed(PixelAUROC(), maps, masks, batch_size) - expected) <= 1e-9
    image_scores = maps.reshape(len(maps), -1).mean(axis=1)  # not the max: the metric must read the method's score
    labels = np.arange(len(maps)) % 2
    assume(0 < labels.sum() < len(labels))
    got = streamed(ImageAUROC(), maps, masks, batch_size, image_scores=image_scores, labels=labels)
    assert abs(got - roc_auc_score(labels, image_scores)) <= 1e-9


# --- PRO against the independent reference ---------------------------------------------------------------------


@settings(PROPERTY_SETTINGS, max_examples=400)
@given(maps_and_masks(max_side=12), st.one_of(st.just(0.3), st.floats(0.01, 1.0)), st.integers(1, 3))
def test_pro_equals_the_reference(sample, max_fpr, batch_size):
    maps, masks = sample
    expected = reference_pro(maps, masks, max_fpr)
    difference = max(abs(pro_score(maps, masks, max_fpr) - expected),
                     abs(streamed(PRO(max_fpr=max_fpr), maps, masks, batch_size) - expected))
    target(difference, label="|PRO - reference|")
    assert difference <= 1e-12


# --- the binned path -------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(maps_and_masks(max_images=4), st.integers(1, 64), st.integers(0, 200),
       st.lists(st.tuples(st.sampled_from([1e-3, 1.0, 50.0]), st.floats(-1e4, 1e4, width=32)), min_size=4,
                max_size=4))
def test_binned_path_stays_within_its_bound(sample, bins, pixel_budget, affine):
    """Few bins, a switch after 0..200 pixels, and later images rescaled and shifted far outside the prefix's
    range (out-of-range tails): the binned values stay within the bound they report."""
    maps, masks = sample
    maps = np.stack([m * scale + shift for m, (scale, shift) in zip(maps, affine)]).astype(np.float32)
    for factory in (PixelAUROC, PRO):
        exact = streamed(factory(pixel_budget=NO_BUDGET), maps, masks)
        binned_metric = factory(pixel_budget=pixel_budget, bins=bins)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few bins give loose bounds on purpose; the warning is tested below
            binned = streamed(binned_metric, maps, masks)
        assert abs(binned - exact) <= binned_metric.error_bound + 1e-12


def continuous_test_set(seed: int, n_images: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian scores, higher inside rectangular defects, on half of the images; later images drift upwards so
    that they leave the range of the first ones."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, 32, 32), dtype=np.uint8)
    for i in range(0, n_images, 2):
        top, left = rng.integers(0, 24, size=2)
        masks[i, top:top + rng.integers(2, 8), left:left + rng.integers(2, 8)] = 1
    drift = np.linspace(0.0, 3.0, n_images, dtype=np.float32)[:, None, None]
    maps = rng.standard_normal(masks.shape).astype(np.float32) + 1.5 * masks + drift
    return maps, masks


@pytest.mark.parametrize("factory", [PixelAUROC, PRO])
def test_enough_bins_make_the_binned_value_tight(factory):
    maps, masks = continuous_test_set(seed=1)
    exact = streamed(factory(pixel_budget=NO_BUDGET), maps, masks, batch_size=4)
    binned_metric = factory(pixel_budget=4 * 32 * 32, bins=2**16)  # switch after the first batch
    binned = streamed(binned_metric, maps, masks, batch_size=4)
    assert binned_metric._stream.histogram is not None
    assert abs(binned - exact) <= binned_metric.error_bound < 1e-4


def test_binning_is_exact_when_every_bin_holds_one_score():
    """Integer scores, as many inner bins as integers in the prefix's range, later integers beyond it: no bin
    mixes two scores, so binning must not change the value (only the bound is unaware of it)."""
    rng = np.random.default_rng(2)
    masks = (rng.random((6, 10, 10)) < 0.2).astype(np.uint8)
    maps = (rng.integers(0, 10, masks.shape) + 3 * masks + 20 * (np.arange(6) >= 3)[:, None, None]).astype(np.float32)
    for factory in (PixelAUROC, PRO):
        exact = streamed(factory(pixel_budget=NO_BUDGET), maps, masks, batch_size=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            binned = streamed(factory(pixel_budget=0, bins=13), maps, masks, batch_size=3)
        assert binned == pytest.approx(exact, abs=1e-12)


def test_a_loose_bound_is_announced():
    maps, masks = continuous_test_set(seed=3, n_images=4)
    with pytest.warns(UserWarning, match="guaranteed to within"):
        streamed(PRO(pixel_budget=0, bins=2), maps, masks)


FINITE_FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(FINITE_FLOAT32, min_size=1, max_size=200), st.lists(FINITE_FLOAT32, min_size=2, max_size=2),
       st.integers(1, 1000), st.integers(0, 10))
def test_histogram_bins_are_ordered_intervals_over_all_floats(scores, range_ends, inner_bins, tail_bits):
    """Any finite float32, however far outside [lo, hi] (themselves anywhere, even equal), lands in a bin, and the
    bin never decreases as the score grows: the property the error bound rests on."""
    lo, hi = sorted(range_ends)
    histogram = ScoreHistogram(lo, hi, inner_bins, with_overlap=False, tail_bits=tail_bits)
    index = histogram.index(np.sort(np.array(scores, dtype=np.float32)))
    assert np.all(np.diff(index) >= 0)
    assert index.min() >= 0 and index.max() < 2 * (1 << (8 + tail_bits)) + inner_bins


def test_histogram_gives_distinct_inner_scores_distinct_bins_when_bins_are_fine_enough():
    histogram = ScoreHistogram(0.0, 1.0, 1000, with_overlap=False)
    index = histogram.index(np.linspace(0.0, 1.0, 1000, endpoint=False, dtype=np.float32) + 5e-4)
    assert len(np.unique(index)) == 1000


def test_curves_for_the_report_are_bounded_and_drawn_faithfully():
    maps, masks = continuous_test_set(seed=4, n_images=8)  # 8192 distinct scores: an 8193-point exact curve
    roc = PixelAUROC()
    with pytest.raises(RuntimeError, match="after compute"):
        roc.curve()
    value = streamed(roc, maps, masks)
    fpr, tpr = roc.curve()
    assert len(fpr) <= 1000 and (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert trapezoid(fpr, tpr) == pytest.approx(value, abs=2e-3)
    pro = PRO(max_fpr=0.2)
    value = streamed(pro, maps, masks)
    fpr, overlap = pro.curve()
    assert len(fpr) <= 1000 and fpr[-1] == pytest.approx(0.2)
    assert trapezoid(fpr, overlap) / 0.2 == pytest.approx(value, abs=2e-3)


# --- plugin registration and resources -------------------------------------------------------------------------

NAMES = ["pixel_auroc", "pro", "image_auroc", "fit_seconds", "infer_seconds_per_image", "peak_rss_gb",
         "peak_cuda_gb", "model_gb"]


@pytest.fixture
def registered(monkeypatch):
    """The metrics as the host loads them: through the package's entry point, alone."""
    monkeypatch.setenv("ANOMBENCH_PLUGINS", "metrics")
    return collect(*make_plugin_manager()).entries["metric"]


def test_every_metric_is_registered_through_its_entry_point(registered):
    assert sorted(registered) == sorted(NAMES)
    assert {entry.plugin for entry in registered.values()} == {"metrics"}


def test_factories_build_with_no_parameters_and_annotate_the_rest(registered):
    for entry in registered.values():
        assert hasattr(entry.factory(), "update")
        for parameter in inspect.signature(entry.factory).parameters.values():
            assert parameter.annotation is not inspect.Parameter.empty, (entry.name, parameter.name)
            assert parameter.default is not inspect.Parameter.empty, (entry.name, parameter.name)
    assert inspect.signature(PRO).parameters["max_fpr"].default == 0.3


def test_suite_validation_rejects_unknown_parameters_of_every_metric(registered):
    for name, entry in registered.items():
        with pytest.raises(UserError, match="unknown parameter"):
            validate(f"suites/x.yaml: metrics.{name}", entry.factory, {"max_fpr_typo": 0.3})
    validate("suites/x.yaml: metrics.pro", registered["pro"].factory, {"max_fpr": 0.2, "bins": 4096})


def test_resource_metrics_read_what_the_runner_measured(registered):
    resources = Resources(fit_seconds=12.5, infer_seconds=3.0, n_test=6, peak_rss_gb=1.75, model_gb=0.25)
    metric = registered["infer_seconds_per_image"].factory()
    metric.update(*batch_of(SCORES, GOOD_ONLY))  # batches are ignored
    assert metric.compute(resources) == 0.5
    expected = {"fit_seconds": 12.5, "peak_rss_gb": 1.75, "model_gb": 0.25}
    assert {name: registered[name].factory().compute(resources) for name in expected} == expected
    with pytest.raises(UndefinedMetric, match="did not run on CUDA"):  # not measured: no CUDA here
        registered["peak_cuda_gb"].factory().compute(resources)
