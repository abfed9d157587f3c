"""Conformance checks for every plugin kind, like scikit-learn's ``check_estimator``: ``check_method``,
``check_dataset`` and ``check_metric`` run every check and report every failure at once; ``method_checks``,
``dataset_checks`` and ``metric_checks`` give the same checks as (name, callable) pairs, so each can be its own
pytest test id (``parametrize_checks``, like scikit-learn's ``parametrize_with_checks``)::

    from anombench.conformance import check_method, dataset_checks, metric_checks, parametrize_checks

    def test_my_method_conforms():
        check_method(MyMethod, params={"width": 8})

    @parametrize_checks(dataset_checks(MyDataset, {"root": "tests/data"}),
                        metric_checks(MyMetric, known={"perfect": 1.0, "inverted": 0.0}))
    def test_conformance(check):
        check()

What the checks expect is what ``anombench.api`` states; each failure says which rule broke.
- method: built from params plus ``device`` and ``seed``; scoring before ``fit`` raises one clear error (preferably
  ``api.NotFitted``); ``fit`` takes a one-shot iterator; Scores are float32 maps at the input resolution with a
  finite score per image; a batch scores like its images one by one; the same seed gives the same scores; fitting
  twice (other data, then the data) equals fitting once; the global RNGs (torch, numpy, random) are untouched;
  and, where offered: the SharesFeatures hooks give the same scores, ``model_bytes`` is a positive int,
  ``save``/``load`` keep the scores, ``preflight`` passes for a valid configuration.
- dataset: a Dataset with unique str categories (all among ``known_categories`` where offered), each of a known
  family; train splits hold only normal samples with zero masks; samples have the stated dtypes, shapes and
  ranges; the same seed gives the same samples; splits pickle (loader and Dask workers receive them); ids are
  unique within a split.
- metric: built from params alone; declares ``higher_is_better``; update/compute on known inputs (a perfect and an
  inverted detector, ``metric_inputs``) give finite floats, ``known`` values where given, in the declared direction,
  the same whether the test set comes in one batch or several; a figure that does not exist (only normal images,
  no batches) is a float or ``api.UndefinedMetric``, nothing else; ``curve`` and ``error_bound`` where offered.
"""

from __future__ import annotations

import math
import pickle
import random
import tempfile
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from anombench import api
from anombench.api import Batch, Method, Resources, Scores

Check = tuple[str, Callable[[], None]]  # (test id, a callable that raises AssertionError on failure)

# What resource metrics read in the metric checks, all finite: a metric of one of these fields returns it.
KNOWN_RESOURCES = Resources(fit_seconds=2.0, infer_seconds=1.0, n_train=8, n_test=8, peak_rss_gb=1.5,
                            peak_cuda_gb=0.5, model_gb=0.25)


def tiny_batches(n_batches: int, batch_size: int, size: int, seed: int, anomalous: bool) -> list[Batch]:
    """Smooth random images (normal) or the same with a bright square on every second one (anomalous), with exact
    masks and labels."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        coarse = torch.rand(batch_size, 3, 4, 4, generator=gen)
        images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        masks = torch.zeros(batch_size, size, size, dtype=torch.uint8)
        labels = torch.zeros(batch_size, dtype=torch.int64)
        if anomalous:
            lo, hi = size // 3, size // 3 + max(4, size // 5)
            images[1::2, :, lo:hi, lo:hi] = 1.0
            masks[1::2, lo:hi, lo:hi] = 1
            labels[1::2] = 1
        ids = [f"{'test' if anomalous else 'train'}/{b}/{i}" for i in range(batch_size)]
        batches.append(Batch(images.contiguous(), masks, labels, ids))
    return batches


def _run_all(what: str, checks: list[Check]) -> None:
    """Run every check; raise one AssertionError listing every failure (not just the first)."""
    failures = []
    for name, check in checks:
        try:
            check()
        except Exception as exc:  # a crash is as much a failure as a broken assertion
            failures.append(f"- {name}: {type(exc).__name__}: {exc}")
    if failures:
        raise AssertionError(f"{len(failures)} of {len(checks)} conformance checks failed for {what}:\n"
                             + "\n".join(failures))


def _named(label: str, case: Any, checks: Iterable[Callable[[Any], None]]) -> list[Check]:
    return [(f"{label}-{check.__name__.removeprefix('check_')}", partial(check, case)) for check in checks]


def parametrize_checks(*groups: Iterable[Check]) -> Any:
    """``@parametrize_checks(method_checks(...), dataset_checks(...))``: a pytest parametrize over every check,
    one test id each; the test receives the check as ``check`` and calls it."""
    import pytest  # only where a test-suite asks for it

    return pytest.mark.parametrize("check", [pytest.param(fn, id=name) for group in groups for name, fn in group])


def _one_line_error(call: Callable[[], Any], what: str) -> BaseException:
    """The exception ``call`` raises, which must be a deliberate one: one line, not an accident of the code."""
    try:
        call()
    except (AttributeError, TypeError, KeyError, IndexError, UnboundLocalError) as exc:
        raise AssertionError(f"{what} must raise one clear error (anombench.api.NotFitted); it raised "
                             f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:
        text = str(exc).strip()
        assert text and "\n" not in text, f"{what}: the error must be one line, got {text!r}"
        return exc
    raise AssertionError(f"{what} must raise an error (anombench.api.NotFitted); it returned")


# ------------------------------------------------------------------------------------------------------- methods


def _check_scores(scores: Any, batch: Batch) -> Scores:
    assert isinstance(scores, Scores), f"score_maps must return anombench.api.Scores, got {type(scores).__name__}"
    b, _, h, w = batch.images.shape
    assert scores.maps.shape == (b, h, w), f"maps must be (B, H, W) = {(b, h, w)} at input resolution, got {scores.maps.shape}"
    assert scores.maps.dtype == np.float32, f"maps must be float32, got {scores.maps.dtype}"
    assert np.isfinite(scores.maps).all(), "maps must be finite"
    assert np.isfinite(scores.image_scores).all(), "image scores must be finite"
    return scores


def _assert_close(a: Scores, b: Scores, what: str, rtol: float) -> None:
    scale = max(float(np.abs(a.maps).max()), 1e-12)
    assert np.allclose(a.maps, b.maps, rtol=rtol, atol=rtol * scale), f"{what}: maps differ"
    assert np.allclose(a.image_scores, b.image_scores, rtol=rtol, atol=rtol * scale), f"{what}: image scores differ"


class MethodCase:
    """One method configuration under test, with the tiny data and the fitted reference computed once."""

    def __init__(self, factory: Callable[..., Method], params: dict[str, Any], image_size: int, rtol: float) -> None:
        self.factory, self.params, self.rtol = factory, dict(params), rtol
        self.train = tiny_batches(2, 4, image_size, seed=1, anomalous=False)
        self.other_train = tiny_batches(2, 4, image_size, seed=3, anomalous=False)
        self.test = tiny_batches(1, 4, image_size, seed=2, anomalous=True)[0]

    def build(self) -> Method:
        return self.factory(**self.params, device="cpu", seed=0)

    def fit_new(self, train: list[Batch] | None = None) -> Method:
        method = self.build()
        method.fit(iter(self.train if train is None else train))  # a one-shot iterator, as the runner gives
        return method

    @cached_property
    def fitted(self) -> Method:
        return self.fit_new()

    @cached_property
    def scores(self) -> Scores:
        return _check_scores(self.fitted.score_maps(self.test), self.test)

    def close(self, other: Scores, what: str) -> None:
        _assert_close(self.scores, _check_scores(other, self.test), what, self.rtol)


def check_builds_from_configuration(case: MethodCase) -> None:
    method = case.build()
    assert isinstance(method, Method), f"{type(method).__name__} needs fit(train) and score_maps(batch)"


def check_scoring_before_fit_is_one_clear_error(case: MethodCase) -> None:
    _one_line_error(lambda: case.build().score_maps(case.test), "score_maps before fit")


def check_fit_and_score_maps(case: MethodCase) -> None:
    assert case.scores is not None


def check_a_batch_scores_like_its_images_one_by_one(case: MethodCase) -> None:
    test = case.test
    singles = [_check_scores(case.fitted.score_maps(test.slice(i, i + 1)), test.slice(i, i + 1))
               for i in range(len(test))]
    case.close(Scores(np.concatenate([s.maps for s in singles]), np.concatenate([s.image_scores for s in singles])),
               "a batch must score like its images one by one")


def check_the_same_seed_gives_the_same_scores(case: MethodCase) -> None:
    case.close(case.fit_new().score_maps(case.test), "the same seed must give the same scores")


def check_fitting_twice_equals_fitting_once(case: MethodCase) -> None:
    method = case.fit_new(case.other_train)
    method.fit(iter(case.train))
    case.close(method.score_maps(case.test), "fit must start afresh (fit on other data, then on the data, must "
                                             "equal one fit on the data)")


def _global_rng_states() -> dict[str, bytes]:
    return {"torch": torch.get_rng_state().numpy().tobytes(), "numpy": pickle.dumps(np.random.get_state()),
            "random": pickle.dumps(random.getstate())}


def check_the_global_rngs_are_untouched(case: MethodCase) -> None:
    before = _global_rng_states()
    case.fit_new().score_maps(case.test)
    changed = [name for name, state in _global_rng_states().items() if state != before[name]]
    assert not changed, (f"building, fitting or scoring drew from the global {' and '.join(changed)} RNG; draw from "
                         "a generator seeded with `seed` (torch.Generator, numpy.random.default_rng), or build torch "
                         "modules inside torch.random.fork_rng()")


def check_shared_hooks_give_the_same_scores(case: MethodCase) -> None:
    method = case.build()
    if not api.shares_features(method):
        return
    key = method.feature_key()
    assert isinstance(key, str), f"feature_key() must return a str, got {key!r}"
    assert case.build().feature_key() == key, "feature_key() must depend on configuration alone"
    method.fit_begin()
    for batch in case.train:
        method.fit_step(method.extract(batch.images))
    method.fit_end()
    case.close(method.score_features(method.extract(case.test.images), case.test),
               "the SharesFeatures hooks must give the same scores as fit/score_maps")


def check_model_bytes(case: MethodCase) -> None:
    size = api.model_bytes(case.fitted)
    assert size is None or isinstance(size, int) and size > 0, f"model_bytes() must be a positive int, got {size!r}"


def check_save_and_load_keep_the_scores(case: MethodCase) -> None:
    method = case.fitted
    if not isinstance(method, api.Persistent):
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        method.save(path)
        case.close(type(method).load(path, device="cpu").score_maps(case.test), "save/load must keep the scores")


def check_preflight_passes_a_valid_configuration(case: MethodCase) -> None:
    method = case.build()
    if isinstance(method, api.Preflight):
        method.preflight()


METHOD_CHECKS = (check_builds_from_configuration, check_scoring_before_fit_is_one_clear_error,
                 check_fit_and_score_maps, check_a_batch_scores_like_its_images_one_by_one,
                 check_the_same_seed_gives_the_same_scores, check_fitting_twice_equals_fitting_once,
                 check_the_global_rngs_are_untouched, check_shared_hooks_give_the_same_scores, check_model_bytes,
                 check_save_and_load_keep_the_scores, check_preflight_passes_a_valid_configuration)


def method_checks(factory: Callable[..., Method], params: dict[str, Any] | None = None, image_size: int = 64,
                  rtol: float = 1e-4, label: str | None = None) -> list[Check]:
    """The method checks as (test id, callable); the fitted reference is computed once and shared by them."""
    case = MethodCase(factory, params or {}, image_size, rtol)
    return _named(label or factory.__name__, case, METHOD_CHECKS)


def check_method(factory: Callable[..., Method], params: dict[str, Any] | None = None, image_size: int = 64,
                 rtol: float = 1e-4) -> None:
    """Run every method check on ``factory`` with ``params``; one AssertionError lists every failure."""
    _run_all(f"method {factory.__name__}", method_checks(factory, params, image_size, rtol))


# ------------------------------------------------------------------------------------------------------ datasets


class DatasetCase:
    """One dataset configuration under test; ``max_samples`` samples per split are inspected, evenly spaced."""

    def __init__(self, factory: Callable[..., api.Dataset], params: dict[str, Any], categories: list[str] | None,
                 seed: int, max_samples: int) -> None:
        self.factory, self.params, self.seed, self.max_samples = factory, dict(params), seed, max_samples
        self.chosen = categories

    @cached_property
    def dataset(self) -> api.Dataset:
        return self.factory(**self.params)

    @property
    def categories(self) -> list[str]:
        return list(self.chosen) if self.chosen is not None else self.dataset.categories()

    def splits(self, dataset: api.Dataset | None = None) -> list[tuple[str, api.Split]]:
        dataset = dataset or self.dataset
        return [(f"{c}/{part}", (dataset.train if part == "train" else dataset.test)(c, self.seed))
                for c in self.categories for part in ("train", "test")]

    def indices(self, split: api.Split) -> list[int]:
        n = len(split)
        return sorted({int(i) for i in np.linspace(0, n - 1, min(n, self.max_samples))}) if n else []


def _same_sample(a: api.Sample, b: api.Sample) -> bool:
    return (a.id == b.id and a.label == b.label and torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask))


def _tensor_text(value: Any) -> str:
    """'torch.float64 (3, 8, 8)' for a tensor, else the type's name: what an error shows of a wrong value."""
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _sample_problem(sample: Any) -> str | None:
    """What breaks api.py's sample conventions, or None."""
    if not isinstance(sample, api.Sample):
        return f"a split must yield anombench.api.Sample, got {type(sample).__name__}"
    image, mask = sample.image, sample.mask
    if not isinstance(image, torch.Tensor) or image.dtype != torch.float32 or image.ndim != 3 or image.shape[0] != 3:
        return f"image must be a float32 tensor (3, H, W), got {_tensor_text(image)}"
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        return f"image values must be in [0, 1], got [{float(image.min())}, {float(image.max())}]"
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.uint8 or tuple(mask.shape) != tuple(image.shape[1:]):
        return f"mask must be a uint8 tensor (H, W) = {tuple(image.shape[1:])}, got {_tensor_text(mask)}"
    if not set(torch.unique(mask).tolist()) <= {0, 1}:
        return f"mask values must be 0/1, got {sorted(torch.unique(mask).tolist())[:5]}"
    if not isinstance(sample.label, int) or isinstance(sample.label, bool) or sample.label not in (0, 1):
        return f"label must be the int 0 or 1, got {sample.label!r}"
    if sample.label == 0 and mask.any():
        return "a normal sample (label 0) must have an all-zero mask"
    if not isinstance(sample.id, str) or not sample.id:
        return f"id must be a non-empty str, got {sample.id!r}"
    return None


def check_is_a_dataset(case: DatasetCase) -> None:
    assert isinstance(case.dataset, api.Dataset), \
        f"{type(case.dataset).__name__} needs categories(), family(category), train(category, seed), test(...)"


def check_categories(case: DatasetCase) -> None:
    present = case.dataset.categories()
    assert isinstance(present, list) and present, f"categories() must be a non-empty list, got {present!r}"
    assert all(isinstance(c, str) for c in present), f"categories must be str, got {present!r}"
    assert len(set(present)) == len(present), f"categories must be unique, got {present!r}"
    known = api.known_categories(case.dataset)
    assert set(present) <= set(known), f"known_categories() must include every present one; missing {sorted(set(present) - set(known))}"


def check_families(case: DatasetCase) -> None:
    for category in api.known_categories(case.dataset):
        family = case.dataset.family(category)
        assert family in api.FAMILIES, f"family({category!r}) must be one of {api.FAMILIES}, got {family!r}"


def check_splits_are_not_empty(case: DatasetCase) -> None:
    for where, split in case.splits():
        assert len(split) > 0, f"{where}: the split is empty"


def check_samples_follow_the_conventions(case: DatasetCase) -> None:
    for where, split in case.splits():
        for i in case.indices(split):
            problem = _sample_problem(split[i])
            assert problem is None, f"{where}[{i}]: {problem}"


def check_train_splits_are_normal(case: DatasetCase) -> None:
    for where, split in case.splits():
        if where.endswith("/train"):
            for i in case.indices(split):
                sample = split[i]
                assert sample.label == 0 and not sample.mask.any(), \
                    f"{where}[{i}] ({sample.id}): train splits hold normal images only, with all-zero masks"


def check_the_same_seed_gives_the_same_samples(case: DatasetCase) -> None:
    again = case.factory(**case.params)
    for (where, split), (_, other) in zip(case.splits(), case.splits(again)):
        assert len(split) == len(other), f"{where}: the same seed gave {len(split)} and {len(other)} samples"
        for i in case.indices(split):
            assert _same_sample(split[i], other[i]), f"{where}[{i}]: the same seed gave another sample"


def check_splits_pickle(case: DatasetCase) -> None:
    for where, split in case.splits():
        try:
            copy = pickle.loads(pickle.dumps(split))
        except Exception as exc:
            raise AssertionError(f"{where}: the split must pickle (loader and Dask workers receive it): "
                                 f"{type(exc).__name__}: {exc}") from None
        if len(split):
            assert _same_sample(split[0], copy[0]), f"{where}: the unpickled split gives another first sample"


def check_ids_are_unique_within_a_split(case: DatasetCase) -> None:
    for where, split in case.splits():
        ids = [split[i].id for i in range(len(split))]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        assert not duplicates, f"{where}: ids must be unique within a split; repeated: {duplicates[:5]}"


DATASET_CHECKS = (check_is_a_dataset, check_categories, check_families, check_splits_are_not_empty,
                  check_samples_follow_the_conventions, check_train_splits_are_normal,
                  check_the_same_seed_gives_the_same_samples, check_splits_pickle, check_ids_are_unique_within_a_split)


def dataset_checks(factory: Callable[..., api.Dataset], params: dict[str, Any] | None = None,
                   categories: list[str] | None = None, seed: int = 0, max_samples: int = 16,
                   label: str | None = None) -> list[Check]:
    """The dataset checks as (test id, callable), on ``categories`` (default: every present one)."""
    case = DatasetCase(factory, params or {}, categories, seed, max_samples)
    return _named(label or factory.__name__, case, DATASET_CHECKS)


def check_dataset(factory: Callable[..., api.Dataset], params: dict[str, Any] | None = None,
                  categories: list[str] | None = None, seed: int = 0, max_samples: int = 16) -> None:
    """Run every dataset check; one AssertionError lists every failure."""
    _run_all(f"dataset {factory.__name__}", dataset_checks(factory, params, categories, seed, max_samples))


# ------------------------------------------------------------------------------------------------------- metrics


def metric_inputs(size: int = 32) -> dict[str, list[tuple[Scores, Batch]]]:
    """Known inputs: a test set of 8 images (4 anomalous, with square defects) scored by a perfect detector (maps =
    masks, image scores = labels) and by an inverted one; a set of normal images only; and no batches at all."""
    batches = tiny_batches(2, 4, size, seed=5, anomalous=True)
    normal = tiny_batches(1, 4, size, seed=6, anomalous=False)

    def scored(batch: Batch, inverted: bool) -> tuple[Scores, Batch]:
        maps, labels = batch.masks.numpy().astype(np.float32), batch.labels.numpy().astype(np.float32)
        if inverted:
            maps, labels = 1 - maps, 1 - labels
        return Scores(maps, labels), batch

    return {"perfect": [scored(b, False) for b in batches], "inverted": [scored(b, True) for b in batches],
            "normal_only": [scored(b, False) for b in normal], "empty": []}


def _joined(pairs: list[tuple[Scores, Batch]]) -> list[tuple[Scores, Batch]]:
    """The same test set in one batch."""
    scores = Scores(np.concatenate([s.maps for s, _ in pairs]), np.concatenate([s.image_scores for s, _ in pairs]))
    batch = Batch(torch.cat([b.images for _, b in pairs]), torch.cat([b.masks for _, b in pairs]),
                  torch.cat([b.labels for _, b in pairs]), [i for _, b in pairs for i in b.ids])
    return [(scores, batch)]


class MetricCase:
    """One metric configuration under test, with the known inputs."""

    def __init__(self, factory: Callable[..., api.Metric], params: dict[str, Any], known: dict[str, float]) -> None:
        self.factory, self.params, self.known = factory, dict(params), dict(known)
        self.inputs = metric_inputs()

    def computed(self, pairs: list[tuple[Scores, Batch]]) -> tuple[api.Metric, float]:
        metric = self.factory(**self.params)
        for scores, batch in pairs:
            metric.update(scores, batch)
        return metric, metric.compute(KNOWN_RESOURCES)

    def value(self, case: str) -> float:
        value = self.computed(self.inputs[case])[1]
        assert isinstance(value, (float, np.floating)) and math.isfinite(value), \
            f"compute() on the {case} detector must return a finite float, got {value!r}"
        return float(value)


def check_builds_from_parameters(case: MetricCase) -> None:
    metric = case.factory(**case.params)
    assert isinstance(metric, api.Metric), f"{type(metric).__name__} needs update(scores, batch), compute(resources)"


def check_declares_higher_is_better(case: MetricCase) -> None:
    assert isinstance(case.factory, api.Directed) or isinstance(case.factory(**case.params), api.Directed), \
        "declare higher_is_better = True (a quality figure) or False (a cost) as a class attribute"
    metric = case.factory(**case.params)
    assert isinstance(metric.higher_is_better, bool), f"higher_is_better must be a bool, got {metric.higher_is_better!r}"


def check_computes_finite_floats_on_known_inputs(case: MetricCase) -> None:
    case.value("perfect"), case.value("inverted")


def check_known_values(case: MetricCase) -> None:
    for name, expected in case.known.items():
        value = case.value(name)
        assert math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9), \
            f"on the {name} detector the figure must be {expected}, got {value}"


def check_the_perfect_detector_is_not_worse(case: MetricCase) -> None:
    perfect, inverted = case.value("perfect"), case.value("inverted")
    better = perfect >= inverted if api.higher_is_better(case.factory) else perfect <= inverted
    assert better, (f"the perfect detector scores {perfect}, the inverted one {inverted}: against the declared "
                    f"higher_is_better={api.higher_is_better(case.factory)}")


def check_batching_does_not_change_the_figure(case: MetricCase) -> None:
    split, whole = case.value("perfect"), float(case.computed(_joined(case.inputs["perfect"]))[1])
    assert math.isclose(split, whole, rel_tol=1e-9, abs_tol=1e-12), \
        f"the same test set gave {split} in batches and {whole} in one batch"


def check_an_undefined_figure_is_undefined_metric(case: MetricCase) -> None:
    for name in ("normal_only", "empty"):
        try:
            value = case.computed(case.inputs[name])[1]
        except api.UndefinedMetric:
            continue
        except Exception as exc:
            raise AssertionError(f"on {name.replace('_', ' ')} inputs compute() must return a float or raise "
                                 f"anombench.api.UndefinedMetric, got {type(exc).__name__}: {exc}") from None
        assert isinstance(value, (float, np.floating)), f"compute() on {name} inputs returned {value!r}"


def check_curve(case: MetricCase) -> None:
    metric, _ = case.computed(case.inputs["perfect"])
    drawn = api.curve(metric)
    if drawn is None:
        return
    x, y = (np.asarray(a) for a in drawn)
    assert x.ndim == y.ndim == 1 and len(x) == len(y) > 1, f"curve() must give two 1-D arrays of one length, got {x.shape}, {y.shape}"
    assert np.isfinite(x).all() and np.isfinite(y).all(), "curve() must be finite"


def check_error_bound(case: MetricCase) -> None:
    metric, _ = case.computed(case.inputs["perfect"])
    bound = api.error_bound(metric)
    assert math.isfinite(bound) and bound >= 0, f"error_bound must be a finite float >= 0, got {bound!r}"


METRIC_CHECKS = (check_builds_from_parameters, check_declares_higher_is_better,
                 check_computes_finite_floats_on_known_inputs, check_known_values,
                 check_the_perfect_detector_is_not_worse, check_batching_does_not_change_the_figure,
                 check_an_undefined_figure_is_undefined_metric, check_curve, check_error_bound)


def metric_checks(factory: Callable[..., api.Metric], params: dict[str, Any] | None = None,
                  known: dict[str, float] | None = None, label: str | None = None) -> list[Check]:
    """The metric checks as (test id, callable). ``known``: expected figures on ``metric_inputs`` cases, e.g.
    ``{"perfect": 1.0, "inverted": 0.0}`` for an AUROC; resource metrics read ``KNOWN_RESOURCES``."""
    case = MetricCase(factory, params or {}, known or {})
    return _named(label or factory.__name__, case, METRIC_CHECKS)


def check_metric(factory: Callable[..., api.Metric], params: dict[str, Any] | None = None,
                 known: dict[str, float] | None = None) -> None:
    """Run every metric check; one AssertionError lists every failure."""
    _run_all(f"metric {factory.__name__}", metric_checks(factory, params, known))
