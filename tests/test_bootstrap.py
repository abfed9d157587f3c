"""Bootstrap intervals and paired comparisons (anombench.bootstrap, issue 15): binned resamples against exact ones,
the stated error bound, reproducibility, storage, paired differences and the coverage of the intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import norm

from anombench.api import Batch, Scores, UndefinedMetric
from anombench.bootstrap import (
    ARTIFACT,
    ImageSummaries,
    batch_bins,
    compare_methods,
    compare_runs,
    describe,
    drops_outside_interval,
    finest_exponent,
    grid_exponent,
    grid_keys,
    mean_and_sem,
    paired_difference,
    paired_mean_difference,
    percentile_interval,
    stratified_weights,
    within_interval,
)
from anombench.errors import UserError
from anombench.results import CellResult, RunStore
from anombench_plugins.metrics import auroc, pro_score


# --- helpers ---------------------------------------------------------------------------------------------------


def make_test_set(n_good: int, n_defective: int, size: int = 12, seed: int = 0, offset: float = 0.0):
    """Smooth random maps with blob-shaped defects scoring higher: (maps, masks, labels, image scores, ids)."""
    rng = np.random.default_rng(seed)
    n = n_good + n_defective
    field = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    masks = np.zeros((n, size, size), dtype=np.uint8)
    if n_defective:
        masks[n_good:] = field[n_good:] > np.quantile(field[n_good:], 0.85, axis=(1, 2), keepdims=True)
    maps = (rng.normal(scale=0.5, size=(n, size, size)) + 1.2 * masks + 0.5 * field + offset).astype(np.float32)
    labels = np.array([0] * n_good + [1] * n_defective)
    image_scores = maps.reshape(n, -1).max(axis=1)
    return maps, masks, labels, image_scores, [f"img{i:03d}" for i in range(n)]


def summarise(maps, masks, labels, image_scores, ids, batch_size: int = 7, order=None, **settings) -> ImageSummaries:
    summary = ImageSummaries(**settings)
    order = np.arange(len(ids)) if order is None else np.asarray(order)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        summary.update(Scores(maps[chosen], image_scores[chosen].astype(np.float32)),
                       Batch(torch.zeros(len(chosen)), torch.from_numpy(masks[chosen]),
                             torch.from_numpy(labels[chosen]), [ids[i] for i in chosen]))
    return summary


def exact_replicate(weights_row, maps, masks, labels, image_scores, max_fpr: float = 0.3) -> dict[str, float]:
    """The three metrics of one resample computed exactly, on the resampled images themselves."""
    counts = weights_row.astype(int)
    rep_maps, rep_masks = np.repeat(maps, counts, axis=0), np.repeat(masks, counts, axis=0)
    return {"pixel_auroc": auroc(rep_maps.ravel(), rep_masks.ravel()),
            "pro": pro_score(rep_maps, rep_masks, max_fpr),
            "image_auroc": auroc(np.repeat(image_scores, counts), np.repeat(labels, counts))}


# --- the binned values and their bound ---------------------------------------------------------------------------


def test_the_test_set_estimates_equal_the_exact_metrics_within_the_bound():
    data = make_test_set(10, 20)
    estimates = summarise(*data).estimates()
    exact = exact_replicate(np.ones(30), *data[:4])
    for metric, value in exact.items():
        bound = estimates.bounds[metric][0]
        assert abs(estimates.values[metric][0] - value) <= bound + 1e-12, metric
        assert bound < 2e-3  # default bins: every distinct pixel score of this small set nearly has its own bin
    assert estimates.bounds["image_auroc"][0] == 0.0  # image AUROC is exact


@pytest.mark.parametrize("fine_bits, coarse_bins", [(6, 16), (9, 64), (17, 2**13)])
def test_binned_bootstrap_equals_the_exact_bootstrap_within_its_stated_bound(fine_bits, coarse_bins):
    """Every resample against the same resample computed exactly from its pixels; then the interval endpoints.
    Coarse settings make the binning error real, so the bound is exercised, not just the exact case."""
    data = make_test_set(8, 12, seed=1)
    summary = summarise(*data, fine_bits=fine_bits, coarse_bins=coarse_bins)
    weights = summary.weights(40, seed=3)
    draws = summary.replicates(weights)
    exact = [exact_replicate(row, *data[:4]) for row in weights]
    for metric in ("pixel_auroc", "pro", "image_auroc"):
        exact_values = np.array([e[metric] for e in exact])
        error = np.abs(draws.values[metric] - exact_values)
        assert (error <= draws.bounds[metric] + 1e-12).all(), metric
        bound = draws.interval_error_bound(metric)
        for binned_end, exact_end in zip(draws.interval(metric, 0.9), percentile_interval(exact_values, 0.9)):
            assert abs(binned_end - exact_end) <= bound + 1e-12, metric
    if fine_bits == 6:
        assert draws.interval_error_bound("pixel_auroc") > 1e-4  # coarse bins: a real, non-zero error bound


def test_scores_far_from_zero_and_negative_keep_their_resolution():
    """The dyadic grid adapts to the range, not to the magnitude: maps around 1000 or below zero bin as finely."""
    for offset in (1000.0, -50.0):
        data = make_test_set(6, 9, seed=2, offset=offset)
        estimates = summarise(*data).estimates()
        exact = exact_replicate(np.ones(15), *data[:4])
        for metric in ("pixel_auroc", "pro"):
            assert abs(estimates.values[metric][0] - exact[metric]) <= estimates.bounds[metric][0] + 1e-12
            assert estimates.bounds[metric][0] < 2e-3


def test_the_grid_does_not_depend_on_the_batch_order():
    """A narrow first batch then a wide one coarsens the stored images; the result equals the other order's."""
    maps, masks, labels, image_scores, ids = make_test_set(6, 6, seed=4)
    maps[-1] *= 50.0  # one image widens the range a lot
    forward = summarise(maps, masks, labels, image_scores, ids, batch_size=3)
    backward = summarise(maps, masks, labels, image_scores, ids, batch_size=3, order=np.arange(12)[::-1])
    assert forward.exponent == backward.exponent
    position = {image_id: i for i, image_id in enumerate(backward.ids)}
    for i, image_id in enumerate(forward.ids):
        a, b = forward._images[i], backward._images[position[image_id]]
        for name in ("keys", "normals", "defects", "overlap"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_a_memory_limit_coarsens_the_grid_and_the_bound_still_holds():
    data = make_test_set(10, 14, seed=15)
    limited = summarise(*data, max_entries=600)
    assert sum(len(image.keys) for image in limited._images) <= 600 < 24 * 144
    assert limited.exponent > summarise(*data).exponent
    again = ImageSummaries.from_bytes(limited.to_bytes())
    assert again.max_entries == 600 and again.intervals(0.9, 100, 0) == limited.intervals(0.9, 100, 0)
    estimates, exact = limited.estimates(), exact_replicate(np.ones(24), *data[:4])
    for metric in ("pixel_auroc", "pro"):
        assert abs(estimates.values[metric][0] - exact[metric]) <= estimates.bounds[metric][0] + 1e-12


def test_coarsening_a_stored_image_equals_binning_it_on_the_coarser_grid():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=400).astype(np.float32)
    defect = rng.random(400) < 0.2
    sizes = rng.integers(1, 20, size=defect.sum())
    exponent = grid_exponent(float(scores.min()), float(scores.max()), 12)
    overlap = np.zeros(400)
    overlap[defect] = 1.0 / sizes
    [fine] = batch_bins(grid_keys(scores, exponent)[None], defect[None], overlap[None])
    [direct] = batch_bins(grid_keys(scores, exponent + 3)[None], defect[None], overlap[None])
    coarse = fine.coarsened(3)
    for name in ("keys", "normals", "defects"):
        np.testing.assert_array_equal(getattr(coarse, name), getattr(direct, name))
    np.testing.assert_allclose(coarse.overlap, direct.overlap, rtol=1e-12)


def test_grid_exponent_fits_the_range_in_the_fine_bits():
    for lo, hi in [(0.0, 1.0), (-3.5, 1e4), (1000.0, 1000.001), (5.0, 5.0), (0.0, 0.0)]:
        e = grid_exponent(lo, hi, 10)
        span = math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e))
        assert span < 2**10
        finer = e - 1  # the finest such grid, down to float32 resolution
        if finer >= finest_exponent(lo, hi):
            assert math.floor(math.ldexp(hi, -finer)) - math.floor(math.ldexp(lo, -finer)) >= 2**10


# --- intervals -----------------------------------------------------------------------------------------------------


def test_intervals_are_reproducible_by_seed_and_contain_the_estimate():
    summary = summarise(*make_test_set(10, 15, seed=6))
    first = summary.intervals(0.95, 300, seed=7)
    assert first == summary.intervals(0.95, 300, seed=7)
    assert first != summary.intervals(0.95, 300, seed=8)
    estimates = summary.estimates()
    for metric, (lo, hi) in first.items():
        assert lo <= estimates.values[metric][0] <= hi
    narrower = summary.intervals(0.5, 300, seed=7)
    assert all(first[m][0] <= narrower[m][0] <= narrower[m][1] <= first[m][1] for m in first)


def test_stratified_weights_keep_each_class_size():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1], dtype=bool)
    weights = stratified_weights(labels, 50, np.random.default_rng(0))
    assert (weights[:, ~labels].sum(axis=1) == 3).all() and (weights[:, labels].sum(axis=1) == 5).all()


def test_undefined_metrics_are_left_out_and_refused_when_asked_for():
    maps, masks, labels, image_scores, ids = make_test_set(5, 0)
    summary = summarise(maps, masks, labels, image_scores, ids)
    assert summary.intervals(0.95, 50, 0) == {}
    with pytest.raises(UndefinedMetric, match="needs both"):
        summary.replicates(np.ones((1, 5)), ["pro"])


def test_bad_level_and_resamples_are_one_line_errors():
    summary = summarise(*make_test_set(3, 3))
    with pytest.raises(UserError, match="level"):
        summary.intervals(95, 100, 0)
    with pytest.raises(UserError, match="resamples"):
        summary.intervals(0.95, 0, 0)


def test_bytes_round_trip_keeps_everything():
    data = make_test_set(7, 9, seed=8)
    summary = summarise(*data, max_fpr=0.2)
    again = ImageSummaries.from_bytes(summary.to_bytes())
    assert again.ids == summary.ids and again.max_fpr == 0.2
    np.testing.assert_array_equal(again.labels, data[2] != 0)
    np.testing.assert_array_equal(again.image_scores, summary.image_scores)
    assert again.intervals(0.9, 100, 3) == summary.intervals(0.9, 100, 3)
    with pytest.raises(UserError, match="cell.npz: not a bootstrap summary file"):
        ImageSummaries.from_bytes(b"garbage", "cell.npz")


def test_intervals_cover_the_true_image_auroc_at_the_nominal_rate():
    """400 simulated test sets, normal scores N(0, 1), anomalous N(1.2, 1): true AUROC = Phi(1.2 / sqrt 2).

    The 95% intervals must cover it in 95% +- 3% of the sets (the Monte Carlo standard error is 1.1%)."""
    truth = norm.cdf(1.2 / math.sqrt(2.0))
    rng = np.random.default_rng(2024)
    n_good, n_defective = 60, 90
    labels = np.array([0] * n_good + [1] * n_defective)
    covered = 0
    for trial in range(400):
        image_scores = (rng.normal(size=labels.size) + 1.2 * labels).astype(np.float32)
        summary = ImageSummaries()
        summary.update(Scores(image_scores[:, None, None].copy(), image_scores),
                       Batch(torch.zeros(labels.size), torch.zeros(labels.size, 1, 1, dtype=torch.uint8),
                             torch.from_numpy(labels), [str(i) for i in range(labels.size)]))
        lo, hi = summary.intervals(0.95, 1000, seed=trial, metrics=["image_auroc"])["image_auroc"]
        covered += lo <= truth <= hi
    assert 0.92 <= covered / 400 <= 0.98, covered / 400


def test_intervals_cover_the_expected_pixel_auroc_of_clustered_pixels():
    """Pixels of one image share a random image effect u ~ N(0, 1) (pixel noise N(0, 1), defect pixels +1.5), the
    correlation that makes a pixel bootstrap far too narrow. A pair of pixels from two images is ordered with
    probability Phi(1.5 / 2), from one image Phi(1.5 / sqrt 2); the expected pixel AUROC mixes them by their share
    of the pairs. Resampling images must cover it in 95% +- 3% of 400 simulated test sets."""
    n_good, n_defective = 40, 60
    masks = np.zeros((n_good + n_defective, 4, 4), dtype=np.uint8)
    masks[n_good:, :2, :2] = 1
    labels = np.array([0] * n_good + [1] * n_defective)
    same_image = n_defective * 4 * 12 / (masks.sum() * (masks.size - masks.sum()))
    truth = (1 - same_image) * norm.cdf(1.5 / 2.0) + same_image * norm.cdf(1.5 / math.sqrt(2.0))
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(400):
        maps = (rng.normal(size=(labels.size, 1, 1)) + rng.normal(size=masks.shape) + 1.5 * masks).astype(np.float32)
        summary = ImageSummaries(coarse_bins=256)
        ids = [str(i) for i in range(labels.size)]
        summary.update(Scores(maps, maps.max(axis=(1, 2))),
                       Batch(torch.zeros(labels.size), torch.from_numpy(masks), torch.from_numpy(labels), ids))
        lo, hi = summary.intervals(0.95, 500, seed=trial, metrics=["pixel_auroc"])["pixel_auroc"]
        covered += lo <= truth <= hi
    assert 0.92 <= covered / 400 <= 0.98, covered / 400


# --- paired comparisons --------------------------------------------------------------------------------------------


def test_a_method_against_itself_differs_by_exactly_zero_even_reloaded_and_reordered():
    data = make_test_set(8, 10, seed=9)
    summary = summarise(*data)
    shuffled = summarise(*data, order=np.random.default_rng(0).permutation(18))
    reloaded = ImageSummaries.from_bytes(shuffled.to_bytes())
    for metric in ("pixel_auroc", "pro", "image_auroc"):
        assert paired_difference(summary, summary, metric, 0.95, 200, 1) == (0.0, 0.0, 0.0)
        assert paired_difference(summary, reloaded, metric, 0.95, 200, 1) == (0.0, 0.0, 0.0)


def test_paired_difference_is_the_difference_of_the_estimates_with_a_tighter_interval_than_unpaired():
    maps, masks, labels, image_scores, ids = make_test_set(10, 20, seed=10)
    better = summarise(maps + 0.3 * masks, masks, labels, image_scores + 0.2 * labels, ids)
    worse = summarise(maps, masks, labels, image_scores, ids)
    diff, lo, hi = paired_difference(better, worse, "pro", 0.95, 300, 0)
    expected = better.estimates(["pro"]).values["pro"][0] - worse.estimates(["pro"]).values["pro"][0]
    assert diff == pytest.approx(expected, abs=1e-12)
    assert 0 < lo <= diff <= hi
    unpaired = (better.bootstrap(300, 0, ["pro"]).values["pro"] - worse.bootstrap(300, 1, ["pro"]).values["pro"])
    unpaired_lo, unpaired_hi = percentile_interval(unpaired, 0.95)
    assert hi - lo < unpaired_hi - unpaired_lo  # the shared images' variation cancels in the pairs


def test_mean_over_classes_resamples_each_class():
    first, second = make_test_set(6, 8, seed=11), make_test_set(7, 9, seed=12)
    pairs = [(summarise(*d), summarise(d[0] * 0.9, *d[1:])) for d in (first, second)]
    diff, lo, hi = paired_mean_difference(pairs, "pixel_auroc", 0.9, 200, 5)
    singles = [paired_difference(a, b, "pixel_auroc", 0.9, 200, 5)[0] for a, b in pairs]
    assert diff == pytest.approx(np.mean(singles), abs=1e-12)
    assert lo <= diff <= hi
    assert paired_mean_difference(pairs[:1], "pixel_auroc", 0.9, 200, 5) == \
        paired_difference(*pairs[0], "pixel_auroc", 0.9, 200, 5)


def test_paired_comparison_of_different_test_images_is_a_one_line_error():
    data = make_test_set(4, 4)
    a = summarise(*data)
    b = summarise(*data[:4], [f"other{i}" for i in range(8)])
    with pytest.raises(UserError, match="same test images: 8 images only in the first") as caught:
        paired_difference(a, b, "pro")
    assert "\n" not in str(caught.value)


def test_describe_names_the_winner_in_points():
    assert describe("padim", "spade", "pro", 0.018, 0.009, 0.026, 0.95) == \
        "padim beats spade on PRO by 1.8 points, 95% CI [0.9, 2.6]"
    assert describe("padim", "spade", "pro", -0.018, -0.026, -0.009, 0.95) == \
        "spade beats padim on PRO by 1.8 points, 95% CI [0.9, 2.6]"
    assert describe("a", "b", "pixel_auroc", 0.003, -0.002, 0.008, 0.9) == \
        "a and b do not differ significantly on pixel AUROC: +0.3 points, 90% CI [-0.2, 0.8]"


def test_within_interval_and_mean_and_sem():
    assert within_interval(0.5, [0.4, 0.6]) and not within_interval(0.7, (0.4, 0.6))
    assert not within_interval(0.5, None)
    mean, sem = mean_and_sem([0.9, 0.92, None, float("nan"), 0.94])
    assert mean == pytest.approx(0.92) and sem == pytest.approx(0.02 / math.sqrt(3))
    assert math.isnan(mean_and_sem([0.9])[1]) and math.isnan(mean_and_sem([])[0])


def _store_run(directory, cells: dict[str, tuple[str, str, ImageSummaries]]) -> None:
    store = RunStore(directory)
    for cell, (method, category, summary) in cells.items():
        store.add(CellResult(cell=cell, method=method, plugin=method, params={}, label=method, substituted=False,
                             dataset="toy", category=category, family="object", seed=0,
                             artifacts={ARTIFACT: summary.to_bytes()}))


def test_compare_runs_and_methods_read_the_stored_summaries(tmp_path):
    first, second = make_test_set(5, 7, seed=13), make_test_set(5, 7, seed=14)
    cells = {}
    for category, data in (("alpha", first), ("beta", second)):
        cells[f"good|toy|{category}|0"] = ("good", category, summarise(data[0] + data[1], *data[1:]))
        cells[f"plain|toy|{category}|0"] = ("plain", category, summarise(*data))
    _store_run(tmp_path / "run", cells)
    same = compare_runs(tmp_path / "run", tmp_path / "run", 0.95, 100, 0, metrics=["pro"])
    assert {(r.a.split(":")[1], r.scope) for r in same} == {(m, s) for m in ("good", "plain")
                                                            for s in ("alpha", "beta", "mean")}
    assert all((r.difference, r.lo, r.hi) == (0.0, 0.0, 0.0) for r in same)
    methods = compare_methods(tmp_path / "run", "good", "plain", 0.95, 100, 0)
    mean_pro = next(r for r in methods if r.metric == "pro" and r.scope == "mean")
    assert mean_pro.classes == ("alpha", "beta") and mean_pro.significant and mean_pro.difference > 0
    assert mean_pro.text().startswith("toy/mean over 2 classes (seed 0): good beats plain on PRO by ")
    json.dumps([r.__dict__ for r in methods])  # plain values, ready for a report
    with pytest.raises(UserError, match="no class with bootstrap.npz for both"):
        compare_methods(tmp_path / "run", "good", "missing")


def test_a_run_with_ci_stores_intervals_and_the_summaries_comparisons_read(tmp_path, registry):
    """End to end through the runner (RunOptions.ci_level / ci_resamples, the record's ``intervals``,
    ``artifacts/<cell>/bootstrap.npz``), on the synthetic dataset with the third-party test method."""
    from anombench.runner import RunOptions, run_suite
    from anombench.suite import build_suite

    doc = {
        "name": "ci-test",
        "datasets": {"synthetic": {"params": {"image_size": 32, "n_train": 6, "n_test_good": 4,
                                              "n_test_defective": 4}, "categories": ["disc", "stripes"]}},
        "methods": {"tight": {"plugin": "pixel_gaussian", "params": {"min_std": 0.02}},
                    "loose": {"plugin": "pixel_gaussian", "params": {"min_std": 0.5}}},
        "metrics": ["pixel_auroc", "pro", "image_auroc", "fit_seconds"],
        "run": {"batch_size": 3, "workers": 0},
        "table": {"cell": ["pixel_auroc", "pro"]},
    }
    options = RunOptions(show_progress=False, ci_level=0.9, ci_resamples=200)
    store = run_suite(build_suite(doc, "t.yaml", registry), tmp_path / "run", options, registry=registry)
    record = store.records["tight|synthetic|disc|0"]
    assert set(record["intervals"]) == {"pixel_auroc", "pro", "image_auroc"}
    assert all(0.0 <= lo <= hi <= 1.0 for lo, hi in record["intervals"].values())
    summary = ImageSummaries.load(store.artifact_dir(record["cell"]) / ARTIFACT)
    assert len(summary) == 8 and summary.labels.sum() == 4
    estimates = summary.estimates()
    for metric in ("pixel_auroc", "pro", "image_auroc"):  # the stored summary reproduces the recorded figures
        assert abs(estimates.values[metric][0] - record["metrics"][metric]) <= estimates.bounds[metric][0] + 1e-12
    results = compare_methods(tmp_path / "run", "tight", "loose", 0.9, 200, 0)
    assert {(r.metric, r.scope) for r in results} == {(m, s) for m in ("pixel_auroc", "pro", "image_auroc")
                                                      for s in ("disc", "stripes", "mean")}
    from anombench.report import report_markdown

    paired = report_markdown(tmp_path / "run").split("## Paired comparisons")[1].split("## Provenance")[0]
    assert paired.count("- synthetic/mean over 2 classes (seed 0): ") == 3  # one line per metric


def test_compare_cli_reports_paired_differences_and_drops_outside_the_baselines_interval(tmp_path, registry,
                                                                                          capsys):
    """``anombench compare RUN BASELINE --ci --paired`` on a --ci run against itself: every paired difference is 0
    and no figure lies below its own interval; a baseline whose interval sits above a figure lists that figure."""
    from anombench.cli import main
    from anombench.runner import RunOptions, run_suite
    from anombench.suite import build_suite

    doc = {"name": "ci-cli", "datasets": {"synthetic": {"params": {"image_size": 32, "n_train": 6, "n_test_good": 4,
                                                                   "n_test_defective": 4}, "categories": ["disc"]}},
           "methods": {"tight": {"plugin": "pixel_gaussian", "params": {"min_std": 0.02}}},
           "metrics": ["pixel_auroc", "pro", "image_auroc"], "run": {"batch_size": 4, "workers": 0},
           "table": {"cell": ["pixel_auroc", "pro"]}}
    options = RunOptions(show_progress=False, ci_level=0.9, ci_resamples=100)
    run_suite(build_suite(doc, "t.yaml", registry), tmp_path / "run", options, registry=registry)
    run = str(tmp_path / "run")
    assert main(["compare", run, run, "--ci", "--paired", "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "outside the baseline's interval: none" in out
    assert out.count("do not differ significantly") == 3  # pixel AUROC, PRO and image AUROC of the one class
    cells = (tmp_path / "run" / "cells.jsonl").read_text().splitlines()
    raised = [json.loads(line) for line in cells]
    for record in raised:
        record["intervals"]["pro"] = [record["metrics"]["pro"] + 0.01, 1.0]
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    (baseline / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raised))
    assert drops_outside_interval(run, baseline) == [
        f"tight|synthetic|disc|0 pro: {raised[0]['metrics']['pro']:.4f} is below the baseline's interval "
        f"[{raised[0]['metrics']['pro'] + 0.01:.4f}, 1.0000]"]
