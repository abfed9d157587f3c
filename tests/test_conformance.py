"""The conformance checks (anombench.conformance) on every built-in dataset and metric and on the third-party test
method, each check its own test id; and the checks themselves: a plugin that breaks the contract in several ways
gets every failure reported at once, in words that name the rule.

Methods' own conformance tests live beside them (test_padim.py, test_spade.py, test_vae.py, test_ensemble.py).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
import torch

from anombench import api
from anombench.api import Batch, Scores
from anombench.conformance import (KNOWN_RESOURCES, check_dataset, check_method, check_metric, dataset_checks,
                                   method_checks, metric_checks, parametrize_checks)
from anombench_plugins.metrics import METRICS
from anombench_plugins.mvtec import MVTecAD, RdMVTecAD
from anombench_plugins.stc import ShanghaiTechCampus
from anombench_plugins.synthetic import SyntheticDataset
from dataset_layouts import make_mvtec_category, make_stc

THIRDPARTY = Path(__file__).parent / "thirdparty"


# Tiny on-disk layouts of the real datasets, made once when the module is collected (a few kB of PNGs).
_DATA = tempfile.TemporaryDirectory(prefix="anombench-conformance-")
MVTEC_ROOT, STC_ROOT = Path(_DATA.name) / "mvtec", Path(_DATA.name) / "stc"
make_mvtec_category(MVTEC_ROOT, "bottle", size=(40, 40), n_train=3, n_good=2, defects={"crack": 2, "broken": 1})
make_mvtec_category(MVTEC_ROOT, "carpet", size=(40, 40), n_train=2, n_good=1, defects={"hole": 1})
make_stc(STC_ROOT, {"01_001": 3, "02_001": 2}, {"01_0014": [0, 0, 1], "02_0128": [0, 1]}, size=(48, 32))

DATASETS = [
    dataset_checks(SyntheticDataset, {"categories": ["stripes", "disc"], "image_size": 32, "n_train": 3,
                                      "n_test_good": 2, "n_test_defective": 3}),
    dataset_checks(MVTecAD, {"root": str(MVTEC_ROOT), "image_size": 40, "crop_size": 32}),
    dataset_checks(RdMVTecAD, {"root": str(MVTEC_ROOT), "image_size": 40, "crop_size": 32}, seed=3),
    dataset_checks(ShanghaiTechCampus, {"root": str(STC_ROOT), "image_size": 32}),
]
AUROC = {"perfect": 1.0, "inverted": 0.0}
KNOWN = {"pixel_auroc": AUROC, "image_auroc": AUROC, "pro": {"perfect": 1.0},
         "fit_seconds": {"perfect": 2.0}, "infer_seconds_per_image": {"perfect": 1.0 / 8},
         "peak_rss_gb": {"perfect": 1.5}, "peak_cuda_gb": {"perfect": 0.5}, "model_gb": {"perfect": 0.25}}
# Known gaps in plugins/metrics.py (owned by "stats"): the resource metrics declare no higher_is_better, and an
# undefined figure raises the plugin's own UndefinedMetricError, not anombench.api.UndefinedMetric.
def metric_params() -> Iterable:
    for name, factory in METRICS.items():
        for check_id, check in metric_checks(factory, known=KNOWN[name], label=name):
            yield pytest.param(check, id=check_id)


@parametrize_checks(*DATASETS)
def test_builtin_datasets_conform(check):
    check()


@pytest.mark.parametrize("check", list(metric_params()))
def test_builtin_metrics_conform(check):
    check()


def third_party_method():
    import sys
    sys.path.insert(0, str(THIRDPARTY))
    from anombench_pixelstats import PixelGaussian
    return PixelGaussian


@parametrize_checks(method_checks(third_party_method(), {"min_std": 0.05}, image_size=32, label="pixel_gaussian"))
def test_third_party_method_conforms(check):
    check()


def test_known_resources_are_what_resource_metrics_return():
    assert KNOWN_RESOURCES.infer_seconds_per_image == KNOWN["infer_seconds_per_image"]["perfect"]


# ------------------------------------------------------------------------------------- the checks catch breakage


class Sloppy:
    """Breaks the method contract four ways: scores before fit by accident, accumulates over fits, draws from the
    global RNGs, and scores a batch as a whole."""

    def __init__(self, device: str = "cpu", seed: int = 0) -> None:
        self.total = None

    def fit(self, train: Iterable[Batch]) -> None:
        for batch in train:
            mean = batch.images.mean()
            self.total = mean if self.total is None else self.total + mean
        random.random(), np.random.rand(), torch.rand(1)

    def score_maps(self, batch: Batch) -> Scores:
        maps = (batch.images.mean(1) - self.total + batch.images.mean()).numpy().astype(np.float32)
        return Scores(maps, maps.reshape(len(batch), -1).max(1))


def test_check_method_reports_every_failure_at_once():
    with pytest.raises(AssertionError) as info:
        check_method(Sloppy, image_size=32)
    message = str(info.value)
    assert message.startswith("4 of 11 conformance checks failed for method Sloppy:")
    assert "scoring_before_fit_is_one_clear_error: AssertionError: score_maps before fit must raise one clear error" \
           " (anombench.api.NotFitted); it raised TypeError" in message
    assert "fitting_twice_equals_fitting_once" in message and "a_batch_scores_like_its_images_one_by_one" in message
    assert "drew from the global torch and numpy and random RNG" in message


class NoisyDataset:
    """Anomalous training images, one shared id, float64 images: three rules broken."""

    def __init__(self) -> None:
        self.image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))

    def categories(self) -> list[str]:
        return ["a"]

    def family(self, category: str) -> api.Family:
        return "object"

    def train(self, category: str, seed: int) -> list[api.Sample]:
        mask = torch.zeros(8, 8, dtype=torch.uint8)
        mask[2:4, 2:4] = 1
        return [api.Sample(self.image, mask, 1, "x"), api.Sample(self.image, mask, 1, "x")]

    def test(self, category: str, seed: int) -> list[api.Sample]:
        return [api.Sample(self.image.double(), torch.zeros(8, 8, dtype=torch.uint8), 0, "t")]


def test_check_dataset_names_each_broken_rule():
    with pytest.raises(AssertionError) as info:
        check_dataset(NoisyDataset)
    message = str(info.value)
    assert "samples_follow_the_conventions: AssertionError: a/train[0]: a normal sample" not in message
    assert "train_splits_are_normal: AssertionError: a/train[0] (x): train splits hold normal images only" in message
    assert "ids_are_unique_within_a_split: AssertionError: a/train: ids must be unique within a split; repeated: ['x']" \
           in message
    assert "a/test[0]: image must be a float32 tensor (3, H, W), got torch.float64" in message


class Backwards:
    """Claims higher is better but scores the inverted detector higher, and crashes without normal images."""

    higher_is_better = True

    def __init__(self) -> None:
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def update(self, scores: Scores, batch: Batch) -> None:
        self.maps.append(scores.maps)
        self.masks.append(batch.masks.numpy())

    def compute(self, resources: api.Resources) -> float:
        maps, masks = np.concatenate(self.maps), np.concatenate(self.masks)
        return float(maps[masks == 0].mean() - maps[masks == 1].mean()) / float((masks == 0).any())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # Backwards averages empty slices on purpose
def test_check_metric_finds_a_backwards_metric():
    with pytest.raises(AssertionError) as info:
        check_metric(Backwards, known={"perfect": 1.0})
    message = str(info.value)
    assert "known_values: AssertionError: on the perfect detector the figure must be 1.0, got -1.0" in message
    assert "the_perfect_detector_is_not_worse: AssertionError: the perfect detector scores -1.0, the inverted one 1.0"\
           in message
    assert "an_undefined_figure_is_undefined_metric: AssertionError: on empty inputs compute() must return a float or" \
           " raise anombench.api.UndefinedMetric, got ValueError" in message
