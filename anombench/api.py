"""The contracts between the host and its plugins, and the small value types they exchange.

Everything a plugin author needs to implement a method, dataset or metric is in this file.
The host never imports a plugin by name; it only talks to objects that satisfy these protocols.

Conventions (kept in one place so every plugin agrees):
- images are float32 tensors in [0, 1], shape (3, H, W) per sample, (B, 3, H, W) per batch, RGB;
  a method applies its own normalisation (e.g. ImageNet mean/std) because datasets know no backbone;
- masks are uint8 tensors of 0/1, shape (H, W), all zero for normal images;
- labels are 0 (normal) or 1 (anomalous);
- anomaly maps are float32 numpy arrays at the batch's input resolution, higher = more anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Protocol, runtime_checkable

import numpy as np
import torch

Family = Literal["texture", "object", "other"]


@dataclass(frozen=True)
class Sample:
    """One image of a split with its ground truth."""

    image: torch.Tensor
    mask: torch.Tensor
    label: int
    id: str


@dataclass(frozen=True)
class Batch:
    """A collated list of samples, as methods and metrics receive them."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int) -> "Batch":
        return Batch(self.images[start:stop], self.masks[start:stop], self.labels[start:stop], self.ids[start:stop])


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a Batch; used as the DataLoader collate_fn by the runner."""
    return Batch(
        images=torch.stack([s.image for s in samples]),
        masks=torch.stack([s.mask for s in samples]),
        labels=torch.tensor([s.label for s in samples], dtype=torch.int64),
        ids=[s.id for s in samples],
    )


@dataclass(frozen=True)
class Scores:
    """What a method returns for a batch: maps (B, H, W) and image scores (B,), float32, on the CPU."""

    maps: np.ndarray
    image_scores: np.ndarray

    def __post_init__(self) -> None:
        if self.maps.ndim != 3 or self.image_scores.shape != (self.maps.shape[0],):
            raise ValueError(
                f"Scores need maps (B, H, W) and image_scores (B,); got {self.maps.shape} and {self.image_scores.shape}"
            )


@dataclass
class Resources:
    """What the runner measured around one cell; resource metrics read from here.

    End-to-end times include data loading (decoding, resizing) because that is what a user waits for.
    """

    fit_seconds: float = float("nan")
    infer_seconds: float = float("nan")
    n_train: int = 0
    n_test: int = 0
    peak_rss_gb: float = float("nan")
    peak_cuda_gb: float = float("nan")
    model_gb: float = float("nan")
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def infer_seconds_per_image(self) -> float:
        return self.infer_seconds / self.n_test if self.n_test else float("nan")


@runtime_checkable
class Method(Protocol):
    """An anomaly detector. Constructed from configuration only (keyword arguments, which always include
    ``device`` and ``seed``); learns in ``fit``; scores in ``score_maps``.

    ``fit`` receives only normal images. ``score_maps`` must return maps at the batch's input resolution.
    """

    def fit(self, train: Iterable[Batch]) -> None: ...

    def score_maps(self, batch: Batch) -> Scores: ...


class SharesFeatures(Protocol):
    """Optional: a method whose work splits into a feature extraction that other methods can share and a
    per-method part fed with those features. The runner feeds one extraction to every method in a cell group
    with the same ``feature_key`` (Table I fits five PaDiM variants on one ResNet-18 pass).

    ``fit`` and ``score_maps`` of such a method must equal running these steps on its own features.
    """

    def feature_key(self) -> str: ...

    def extract(self, images: torch.Tensor) -> Any: ...

    def fit_begin(self) -> None: ...

    def fit_step(self, features: Any) -> None: ...

    def fit_end(self) -> None: ...

    def score_features(self, features: Any, batch: Batch) -> Scores: ...


class ComposedFromSharedSteps:
    """Mixin for a SharesFeatures method: ``fit`` and ``score_maps`` are exactly the shared steps composed, so a
    method alone and the same method in a shared group give identical numbers by construction."""

    def fit(self, train: Iterable[Batch]) -> None:
        self.fit_begin()
        for batch in train:
            self.fit_step(self.extract(batch.images))
        self.fit_end()

    def score_maps(self, batch: Batch) -> Scores:
        return self.score_features(self.extract(batch.images), batch)


SHARED_HOOKS = ("feature_key", "extract", "fit_begin", "fit_step", "fit_end", "score_features")


def shares_features(method: object) -> bool:
    """Whether a method offers every SharesFeatures hook (it then can join a shared-extraction group)."""
    return all(callable(getattr(method, hook, None)) for hook in SHARED_HOOKS)


class ModelSize(Protocol):
    """Optional: a fitted method that can say how many bytes its learned state needs (Table VIII)."""

    def model_bytes(self) -> int: ...


class KnownCategories(Protocol):
    """Optional for a dataset: every category it defines, present on disk or not (MVTec AD: all 15), so a mean over
    the few classes a run has is not shown as the paper's mean over all of them."""

    def known_categories(self) -> list[str]: ...


def known_categories(dataset: Dataset) -> list[str]:
    """The dataset's full category list: ``known_categories()`` where offered, else those present."""
    known = getattr(dataset, "known_categories", None)
    return list(known()) if callable(known) else dataset.categories()


class Split(Protocol):
    """A map-style dataset of Samples (a torch Dataset satisfies it); the runner wraps it in a DataLoader."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


@runtime_checkable
class Dataset(Protocol):
    """A collection of categories, each with a train split (normal only) and a test split.

    ``seed`` is passed so that randomised variants (Rd-MVTec AD) draw the same data for the same seed.
    """

    def categories(self) -> list[str]: ...

    def family(self, category: str) -> Family: ...

    def train(self, category: str, seed: int) -> Split: ...

    def test(self, category: str, seed: int) -> Split: ...


class UndefinedMetric(ValueError):
    """Raised by ``Metric.compute`` when the figure does not exist for this cell (image AUROC on a test set without
    normal images, PRO without defect regions); the message is the reason, in one line. The runner records the
    metric as undefined with that reason and keeps the cell's other figures: the cell still counts as finished."""


@runtime_checkable
class Preflight(Protocol):
    """Optional for a method: checks, before any cell of a run starts and without building a model or reading
    weights, that its configuration can run here (weights file present, ``n_features`` within the backbone's
    channels). Raises ``anombench.errors.UserError`` with one line naming what is wrong and how to fix it."""

    def preflight(self) -> None: ...


@runtime_checkable
class Metric(Protocol):
    """A figure computed for one cell. Fed every test batch with the method's scores, then asked once.

    Resource metrics ignore the batches and read ``resources``.
    """

    def update(self, scores: Scores, batch: Batch) -> None: ...

    def compute(self, resources: Resources) -> float: ...
