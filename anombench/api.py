"""The whole contract between the host and its plugins, and the small value types they exchange.

Everything a plugin author needs to implement a method, dataset or metric is in this file: the required protocols
(``Method``, ``Dataset``, ``Metric``) and every optional capability the host uses when a plugin offers it, one
protocol and one docstring each. The host tests for a capability in one way only, ``isinstance`` on these
runtime-checkable protocols (through the small helpers below, which also give the default), never by probing
attribute names. The host never imports a plugin by name; it only talks to objects that satisfy these protocols.

Capabilities, by plugin kind:
- method: ``Method`` (required); ``Preflight`` (configuration check before any cell), ``SharesFeatures`` (one
  feature extraction fed to several methods), ``ModelSize`` (bytes of the learned state), ``Persistent``
  (``save``/``load``); raise ``NotFitted`` when asked to score before ``fit``;
- dataset: ``Dataset`` (required); ``KnownCategories``, ``Downloadable``, ``Checkable`` (``anombench data``);
- metric: ``Metric`` (required); ``Directed`` (``higher_is_better``: declare it, ``anombench compare`` gates on
  it), ``HasCurve`` (ROC/PRO plots in the report), ``ErrorBound`` (guaranteed error of an approximate figure);
  raise ``UndefinedMetric`` when a figure does not exist for a cell.
How a plugin registers: ``anombench.hookspecs`` (one hook per kind, each given a ``Register`` callback).
How to test one: ``anombench.conformance`` (``check_method``, ``check_dataset``, ``check_metric``) and
``anombench.testing`` (register a plugin object for one test).

Words: a *plugin* is an entry point of the ``anombench`` group (a module with hook implementations, shown with
its distribution by ``anombench list``); what it registers are methods, datasets and metrics, each under its
*registered name* (``padim``, ``mvtec``, ``pro``). A suite names its own entries (``padim-r18-rd100``, ``mvtec``)
and says which registered name each uses under its ``plugin:`` key.

Conventions (kept in one place so every plugin agrees):
- images are float32 tensors in [0, 1], shape (3, H, W) per sample, (B, 3, H, W) per batch, RGB;
  a method applies its own normalisation (e.g. ImageNet mean/std) because datasets know no backbone;
- masks are uint8 tensors of 0/1, shape (H, W), all zero for normal images;
- labels are 0 (normal) or 1 (anomalous);
- anomaly maps are float32 numpy arrays at the batch's input resolution, higher = more anomalous.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np
import torch

Family = Literal["texture", "object", "other"]
FAMILIES: tuple[Family, ...] = ("texture", "object", "other")
T_contra = TypeVar("T_contra", contravariant=True)


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

    def to_record(self) -> dict[str, Any]:
        """A cells.jsonl line's ``resources``: every figure, ``extra`` flattened in, and null where one was not
        measured (NaN is not strict JSON)."""
        figures = {key: value for key, value in vars(self).items() if key != "extra"} | self.extra
        return {key: None if isinstance(value, float) and not math.isfinite(value) else value
                for key, value in figures.items()}

    @classmethod
    def from_record(cls, measured: dict[str, Any]) -> "Resources":
        """Back from ``to_record``'s form (null: not measured; other keys: ``extra``)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {key: float("nan") if value is None else value for key, value in measured.items() if key in known}
        return cls(**values, extra={key: value for key, value in measured.items() if key not in known})


# ---------------------------------------------------------------------------------------------------- registration


class Register(Protocol[T_contra]):
    """The callback each registration hook receives (``anombench.hookspecs``): ``register("padim", PaDiM)``.

    ``name`` is the registered name suites use under ``plugin:``; ``factory`` (usually the class) is called with
    the suite's parameters as keyword arguments, so its signature is the suite schema (``anombench.params``).
    Registering one name twice with two different factories is a one-line error naming both plugins.
    """

    def __call__(self, name: str, factory: Callable[..., T_contra]) -> None: ...


# --------------------------------------------------------------------------------------------------------- methods


@runtime_checkable
class Method(Protocol):
    """An anomaly detector. Constructed from configuration only (keyword arguments, which always include
    ``device`` and ``seed``): the constructor stores its arguments under their own names and builds nothing
    (no weights read, no random draw); it learns in ``fit`` and scores in ``score_maps``.

    ``fit`` receives only normal images, as a one-shot iterable of Batches; fitting again starts afresh (two fits
    equal one). ``score_maps`` must return maps at the batch's input resolution and score each image on its own
    (a batch scores like its images one by one); before ``fit`` it raises ``NotFitted``. Random draws come from
    ``seed`` (a ``torch.Generator``/``numpy.random.Generator`` of the method's own), never the global RNGs.
    """

    def fit(self, train: Iterable[Batch]) -> None: ...

    def score_maps(self, batch: Batch) -> Scores: ...


class NotFitted(RuntimeError):
    """Raised by a method asked to score (or save, or size) before ``fit``; the message names the method."""


@runtime_checkable
class Preflight(Protocol):
    """Optional for a method: checks, before any cell of a run starts and without building a model or reading
    weights, that its configuration can run here (weights file present, ``n_features`` within the backbone's
    channels, constraints that tie two parameters together). Raises ``anombench.errors.UserError`` with one line
    naming what is wrong and how to fix it. The host calls it once per method variant."""

    def preflight(self) -> None: ...


@runtime_checkable
class SharesFeatures(Protocol):
    """Optional for a method: its work splits into a feature extraction that other methods can share and a
    per-method part fed with those features. The runner feeds one extraction to every method of a cell's shared
    group with the same ``feature_key`` (Table I fits five PaDiM variants on one ResNet-18 pass).

    ``feature_key`` is computed from configuration alone (no weights, no forward pass): two methods with equal keys
    must give equal ``extract`` outputs. ``fit`` and ``score_maps`` of such a method must equal running these
    steps on its own features (``ComposedFromSharedSteps`` gives that by construction).
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


def shares_features(method: object) -> bool:
    """Whether a method offers the SharesFeatures hooks (it then can join a shared-extraction group)."""
    return isinstance(method, SharesFeatures)


@runtime_checkable
class ModelSize(Protocol):
    """Optional for a method: a fitted method says how many bytes its learned state needs (Table VIII's model
    memory; the runner stores it as ``model_gb``)."""

    def model_bytes(self) -> int: ...


def model_bytes(method: object) -> int | None:
    """The fitted method's ``model_bytes()``, or None when it does not offer ``ModelSize``."""
    return method.model_bytes() if isinstance(method, ModelSize) else None


@runtime_checkable
class Persistent(Protocol):
    """Optional for a method: a fitted method writes itself to one file and a classmethod reads it back, scoring
    exactly as before (``anombench.params.config_of`` gives the configuration to store with the state)."""

    def save(self, path: str | Path) -> None: ...

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Any: ...


# -------------------------------------------------------------------------------------------------------- datasets


class Split(Protocol):
    """A map-style dataset of Samples (a torch Dataset satisfies it); the runner wraps it in a DataLoader, so it
    must pickle (loader worker processes, Dask workers receive it)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


@runtime_checkable
class Dataset(Protocol):
    """A collection of categories, each with a train split (normal images only, all-zero masks) and a test split.

    Samples follow this module's conventions; ids are unique within a split. ``seed`` is passed so that
    randomised variants (Rd-MVTec AD) draw the same data for the same seed, and only then differ.
    """

    def categories(self) -> list[str]: ...

    def family(self, category: str) -> Family: ...

    def train(self, category: str, seed: int) -> Split: ...

    def test(self, category: str, seed: int) -> Split: ...


@runtime_checkable
class KnownCategories(Protocol):
    """Optional for a dataset: every category it defines, present on disk or not (MVTec AD: all 15), so a mean over
    the few classes a run has is not shown as the paper's mean over all of them."""

    def known_categories(self) -> list[str]: ...


def known_categories(dataset: Dataset) -> list[str]:
    """The dataset's full category list: ``known_categories()`` where offered, else those present."""
    return list(dataset.known_categories()) if isinstance(dataset, KnownCategories) else dataset.categories()


@runtime_checkable
class Downloadable(Protocol):
    """Optional for a dataset class: ``download(root, **options)`` as a static method fetches the official data into
    ``root`` (checksum-verified); ``anombench data download NAME --root DIR [--url U --sha256 H]`` calls it."""

    @staticmethod
    def download(root: str, **options: Any) -> None: ...


@runtime_checkable
class Checkable(Protocol):
    """Optional for a dataset class: ``check(root, categories)`` as a static method says in words what is under
    ``root`` for those categories (None: all the dataset defines): categories found, incomplete ones.
    ``anombench data check NAME --root DIR [--categories A,B]`` prints it."""

    @staticmethod
    def check(root: str, categories: Sequence[str] | None = None) -> str: ...


@runtime_checkable
class ChecksFiles(Protocol):
    """Optional for a file-based dataset: every missing, extra or broken file of one category, one line each
    (decoding every image and mask when ``verify``, in parallel processes, with a progress bar when ``progress``).
    The runner calls it for the run's categories before any cell, so a truncated image is named before an hour of
    fitting; ``anombench data check`` prints it. An empty list means the category is sound."""

    def check_files(self, category: str, verify: bool = True, progress: bool = False) -> list[str]: ...


DATA_ACTIONS: dict[str, type] = {"download": Downloadable, "check": Checkable}


def data_action(factory: object, action: str) -> Callable[..., Any] | None:
    """The dataset class's ``download`` or ``check`` (``anombench data``), or None when it does not offer it."""
    capability = DATA_ACTIONS[action]
    if not isinstance(factory, capability):
        return None
    return factory.download if capability is Downloadable else factory.check


# --------------------------------------------------------------------------------------------------------- metrics


@runtime_checkable
class Metric(Protocol):
    """A figure computed for one cell. A fresh accumulator per cell (constructed with the suite's parameters only),
    fed every test batch with the method's scores, then asked once.

    ``compute`` returns a float; when the figure does not exist for this cell it raises ``UndefinedMetric``.
    Resource metrics ignore the batches and read ``resources``. Declare ``higher_is_better`` (``Directed``).
    """

    def update(self, scores: Scores, batch: Batch) -> None: ...

    def compute(self, resources: Resources) -> float: ...


class UndefinedMetric(ValueError):
    """Raised by ``Metric.compute`` when the figure does not exist for this cell (image AUROC on a test set without
    normal images, PRO without defect regions); the message is the reason, in one line. The runner records the
    metric as undefined with that reason and keeps the cell's other figures: the cell still counts as finished."""


@runtime_checkable
class Directed(Protocol):
    """A metric's direction, as a class attribute: ``higher_is_better = True`` for a quality figure (AUROC, PRO),
    False for a cost (seconds, GB). ``anombench compare`` gates a run against a baseline on quality figures only;
    the conformance check wants every metric to declare it."""

    higher_is_better: bool


def higher_is_better(metric: object) -> bool:
    """The metric's (or metric class's) declared direction; False when it declares none (not gated)."""
    return bool(metric.higher_is_better) if isinstance(metric, Directed) else False


@runtime_checkable
class HasCurve(Protocol):
    """Optional for a metric: after ``compute``, the curve behind the figure as two 1-D arrays (x, y) of equal
    length (ROC: FPR, TPR; PRO: FPR, PRO), thinned to a few hundred points; the report plots it."""

    def curve(self) -> tuple[np.ndarray, np.ndarray]: ...


def curve(metric: object) -> tuple[np.ndarray, np.ndarray] | None:
    """The computed metric's curve, or None when it offers none."""
    return metric.curve() if isinstance(metric, HasCurve) else None


@runtime_checkable
class ErrorBound(Protocol):
    """Optional for a metric whose figure is approximate (binned pixel AUROC and PRO on big test sets): after
    ``compute``, ``error_bound`` is the guaranteed maximum absolute error of the figure (0.0 when exact). The
    runner stores non-zero bounds as the record's ``metric_error_bounds``."""

    error_bound: float


def error_bound(metric: object) -> float:
    """The computed metric's guaranteed maximum error: its ``error_bound``, 0.0 when it declares none (exact)."""
    return float(metric.error_bound) if isinstance(metric, ErrorBound) else 0.0
