"""SPADE (Cohen & Hoshen 2020), the PaDiM paper's k-NN baseline, on faiss.

The method, as the PaDiM paper ran it (design.md section 1):
- image level: every training image is kept as the global average pool of the backbone's last stage; a test
  image's score is the mean Euclidean distance to its K nearest training images (K = 50, clipped to N);
- pixel level: the *gallery* of a test image is every patch feature (layer1..3) of those K images; per layer and
  per position, the map is the Euclidean distance to the nearest gallery feature; the layer maps are upsampled
  (bilinear, as the SPADE reference code does) to the input size, averaged, then Gaussian-filtered (sigma 4).

SPADE keeps every training patch: its memory grows linearly with the training set (the paper's Table VIII:
1.4 GB on MVTec AD, 37 GB on STC), and ``model_bytes`` reports exactly that.

Search. All nearest-neighbour search goes through faiss. ``index="flat"`` (default) is exact: each test image
searches its own gallery (a contiguous copy of K images' patches) with ``faiss.knn``, the exact search of an
``IndexFlatL2``, on BLAS. ``"ivf"`` and ``"hnsw"`` build one approximate index per layer over *all* training patches at fit time and
restrict each search to the gallery with an ``IDSelectorBitmap``, so they answer the same question (the nearest
patch among the K images), only approximately; ``benchmarks/bench_spade_speed.py`` and the tests measure their
recall against the exact search. The image-level search (N pooled vectors, N in the hundreds) is always exact.

Every image is scored on its own (one faiss search per image and layer), so a batch scores exactly like its
images one by one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import torch

from anombench import hookimpl
from anombench.api import Batch, NotFitted, Scores
from anombench.errors import UserError
from anombench.params import PositiveFloat, PositiveInt, check_config
from anombench_plugins.backbones import FeatureMaps, LayerSpec, backbone_spec, resolve_layers
from anombench_plugins.components import PretrainedExtraction, PretrainedFeatures, bilinear_mean_map
from anombench_plugins.modelfile import build_from_config, config_of, read_model_file, write_model_file

KIND = "anombench.spade"  # the model file's metadata tag
IndexKind = Literal["flat", "ivf", "hnsw"]
POOLED_LAYER = {"resnet": "layer4", "efficientnet": "blocks.6"}  # the last stage of each family
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training vectors per IVF centroid


# ---------------------------------------------------------------------------------------------- galleries


def patch_rows(features: torch.Tensor) -> np.ndarray:
    """(B, C, h, w) feature maps -> (B*h*w, C) float32 rows, image-major, so image i owns a contiguous block."""
    b, c, h, w = features.shape
    return np.ascontiguousarray(features.permute(0, 2, 3, 1).reshape(b * h * w, c).float().cpu().numpy())


def gallery_bitmap(images: np.ndarray, per_image: int, total: int) -> np.ndarray:
    """faiss IDSelectorBitmap bits (little-endian bit order) selecting the patch rows of ``images``."""
    selected = np.zeros(total, dtype=bool)
    for i in images:
        selected[i * per_image:(i + 1) * per_image] = True
    return np.packbits(selected, bitorder="little")


class ExactGallery:
    """One layer's training patches (N*P, C); the exact nearest gallery patch by faiss's brute-force search."""

    def __init__(self, rows: np.ndarray, per_image: int) -> None:
        self.rows, self.per_image = rows, per_image

    def nearest_squared(self, images: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Squared L2 distance of each query row to its nearest patch of the training ``images``."""
        gallery = np.concatenate([self.rows[i * self.per_image:(i + 1) * self.per_image] for i in images])
        return faiss.knn(queries, gallery, 1)[0][:, 0]  # IndexFlatL2's search, without copying the gallery into one

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes)

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}rows": torch.from_numpy(self.rows), f"{prefix}per_image": torch.tensor([self.per_image])}


class IndexedGallery:
    """One layer's training patches held in an approximate faiss index (IVF-Flat or HNSW-Flat) over all of them;
    each search is restricted to the gallery's rows by a bitmap selector."""

    def __init__(self, index: faiss.Index, per_image: int, params: dict[str, int]) -> None:
        self.index, self.per_image, self.params = index, per_image, params

    def nearest_squared(self, images: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Approximate squared distances. A query whose probed lists (IVF) or visited nodes (HNSW) hold no gallery
        patch gets no answer from faiss (label -1): an anomalous patch far from the gallery, typically. Those
        queries are searched again exhaustively (every list; ef_search = all vectors) instead of scoring inf."""
        bitmap = gallery_bitmap(images, self.per_image, self.index.ntotal)
        selector = faiss.IDSelectorBitmap(self.index.ntotal, faiss.swig_ptr(bitmap))
        squared, labels = self.index.search(queries, 1, params=self._search_params(selector, exhaustive=False))
        missing = labels[:, 0] < 0
        if missing.any():
            params = self._search_params(selector, exhaustive=True)
            squared[missing] = self.index.search(np.ascontiguousarray(queries[missing]), 1, params=params)[0]
        return squared[:, 0]

    def _search_params(self, selector: faiss.IDSelector, exhaustive: bool) -> faiss.SearchParameters:
        if isinstance(self.index, faiss.IndexHNSW):
            ef = self.index.ntotal if exhaustive else self.params["ef_search"]
            return faiss.SearchParametersHNSW(efSearch=ef, sel=selector)
        nprobe = self.index.nlist if exhaustive else self.params["nprobe"]
        return faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)

    @property
    def nbytes(self) -> int:
        """Vectors, ids and structure as faiss holds them (IVF: lists + centroids; HNSW: vectors + links)."""
        n, d = self.index.ntotal, self.index.d
        if isinstance(self.index, faiss.IndexHNSW):
            hnsw = self.index.hnsw
            return 4 * n * d + 4 * hnsw.neighbors.size() + 4 * hnsw.levels.size() + 8 * hnsw.offsets.size()
        return (4 * d + 8) * n + 4 * d * self.index.nlist

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The faiss index as its own serialisation (bytes), so a loaded index is the very same structure."""
        return {f"{prefix}faiss": torch.from_numpy(faiss.serialize_index(self.index)),
                f"{prefix}per_image": torch.tensor([self.per_image])}


Gallery = ExactGallery | IndexedGallery


def gallery_from_state(state: dict[str, torch.Tensor], prefix: str, params: dict[str, int | None]) -> Gallery:
    """The gallery a ``state(prefix)`` call saved; ``params`` are the search parameters of the loading model."""
    per_image = int(state[f"{prefix}per_image"][0])
    if f"{prefix}rows" in state:
        return ExactGallery(state[f"{prefix}rows"].numpy(), per_image)
    index = faiss.deserialize_index(state[f"{prefix}faiss"].numpy())
    return IndexedGallery(index, per_image, {"ef_search": params["ef_search"], "nprobe": params["nprobe"]})


def ivf_lists(n_vectors: int, nlist: int | None) -> int:
    """The IVF list count: the user's, else faiss's rule of thumb 4 sqrt(n), kept >= 39 training vectors per list."""
    wanted = nlist if nlist is not None else int(4 * math.sqrt(n_vectors))
    return max(1, min(wanted, n_vectors // MIN_POINTS_PER_LIST))


def build_gallery(rows: np.ndarray, per_image: int, kind: IndexKind, params: dict[str, int | None],
                  seed: int) -> Gallery:
    """The gallery structure of one layer for the chosen index kind (rows are handed over, not copied)."""
    if kind == "flat":
        return ExactGallery(rows, per_image)
    dim = rows.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["hnsw_m"])
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, ivf_lists(len(rows), params["nlist"]))
        index.cp.seed = seed
        index.train(rows)
    index.add(rows)
    return IndexedGallery(index, per_image, {"ef_search": params["ef_search"], "nprobe": params["nprobe"]})


# ---------------------------------------------------------------------------------------------- the fitted model


class FeatureBank:
    """Training features as they stream in: per layer the patch rows, and the pooled vector of each image."""

    def __init__(self, layers: list[str], pooled_layer: str) -> None:
        self.layers, self.pooled_layer = layers, pooled_layer
        self.rows: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        self.pooled: list[np.ndarray] = []
        self.grid: dict[str, tuple[int, int]] = {}

    def add(self, features: FeatureMaps) -> None:
        for name in self.layers:
            grid = tuple(features[name].shape[-2:])
            if self.grid.setdefault(name, grid) != grid:
                raise UserError(f"SPADE: training images must share one size; layer {name} gave {grid} after "
                                f"{self.grid[name]}")
            self.rows[name].append(patch_rows(features[name]))
        self.pooled.append(pooled_vectors(features[self.pooled_layer]))

    @property
    def n_images(self) -> int:
        return sum(len(p) for p in self.pooled)


def concatenate_releasing(pieces: list[np.ndarray]) -> np.ndarray:
    """np.concatenate of row blocks that empties ``pieces`` as it copies them, so the peak is the result plus one
    block instead of twice the layer (WR50 layer1 on 209 bottle images: 0.67 GB once, not twice)."""
    out = np.empty((sum(len(p) for p in pieces), *pieces[0].shape[1:]), dtype=pieces[0].dtype)
    start = 0
    while pieces:
        piece = pieces.pop(0)
        out[start:start + len(piece)] = piece
        start += len(piece)
    return out


def pooled_vectors(features: torch.Tensor) -> np.ndarray:
    """Global average pool (B, C, h, w) -> (B, C) float32: the image-level descriptor."""
    return np.ascontiguousarray(features.float().mean(dim=(2, 3)).cpu().numpy())


class SpadeModel:
    """The fitted state: an exact index on pooled vectors and one gallery per layer; scoring one image at a time."""

    def __init__(self, layers: list[str], pooled: np.ndarray, galleries: dict[str, Gallery], k: int) -> None:
        self.layers, self.galleries = layers, galleries
        self.images = faiss.IndexFlatL2(pooled.shape[1])
        self.images.add(pooled)
        self.k = min(k, len(pooled))

    @classmethod
    def from_bank(cls, bank: FeatureBank, k: int, kind: IndexKind, params: dict[str, int | None],
                  seed: int) -> SpadeModel:
        galleries: dict[str, Gallery] = {}
        for name in bank.layers:
            rows = concatenate_releasing(bank.rows[name])
            galleries[name] = build_gallery(rows, int(np.prod(bank.grid[name])), kind, params, seed)
        return cls(bank.layers, np.concatenate(bank.pooled), galleries, k)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], layers: list[str], k: int,
                   params: dict[str, int | None]) -> SpadeModel:
        galleries = {name: gallery_from_state(state, f"gallery.{name}.", params) for name in layers}
        return cls(layers, state["pooled"].numpy(), galleries, k)

    def state(self) -> dict[str, torch.Tensor]:
        state = {"pooled": torch.from_numpy(self.images.reconstruct_n(0, self.images.ntotal))}
        for name, gallery in self.galleries.items():
            state |= gallery.state(f"gallery.{name}.")
        return state

    def nearest_images(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Euclidean distances, indices) of the K nearest training images of one pooled vector (1, C)."""
        squared, indices = self.images.search(pooled, self.k)
        return np.sqrt(np.maximum(squared[0], 0.0)), indices[0]

    def layer_distances(self, features: FeatureMaps, neighbours: np.ndarray) -> list[torch.Tensor]:
        """Per layer, the (h, w) map of Euclidean distances to the nearest patch of the ``neighbours``' gallery,
        for one image (features with batch size 1)."""
        maps = []
        for name in self.layers:
            h, w = features[name].shape[-2:]
            squared = self.galleries[name].nearest_squared(neighbours, patch_rows(features[name]))
            maps.append(torch.from_numpy(np.sqrt(np.maximum(squared, 0.0))).reshape(h, w))
        return maps

    @property
    def nbytes(self) -> int:
        pooled = self.images.ntotal * self.images.d * 4
        return int(pooled + sum(g.nbytes for g in self.galleries.values()))


# ---------------------------------------------------------------------------------------------- the plugin


class SPADE(PretrainedExtraction):
    """SPADE as an anombench method (see the module docstring).

    ``layers``: the patch layers (None = the backbone's defaults, layer1..3 for ResNets); ``pooled_layer``: the
    stage whose global average pool drives the image k-NN (None = the last stage: layer4, or blocks.6 for
    EfficientNets). ``index``: "flat" (exact), "ivf" (``nlist`` lists, None = 4 sqrt(n); ``nprobe`` probed) or
    "hnsw" (``hnsw_m`` links, ``ef_construction``, ``ef_search``). faiss runs on the CPU; ``device`` places the
    backbone. The constructor stores its arguments only: the backbone is built on the first ``extract``.
    """

    bank: FeatureBank | None = None  # training features while fitting
    model: SpadeModel | None = None  # the fitted state

    def __init__(self, backbone: str = "wide_resnet50_2", layers: list[LayerSpec] | None = None,
                 pooled_layer: LayerSpec | None = None, weights: str = "imagenet", k: PositiveInt = 50,
                 sigma: PositiveFloat = 4.0, index: IndexKind = "flat", nlist: PositiveInt | None = None,
                 nprobe: PositiveInt = 8, hnsw_m: PositiveInt = 32, ef_construction: PositiveInt = 40,
                 ef_search: PositiveInt = 128, device: str = "cpu", seed: int = 0) -> None:
        self.backbone, self.layers, self.pooled_layer, self.weights = backbone, layers, pooled_layer, weights
        self.k, self.sigma, self.index, self.nlist, self.nprobe = k, sigma, index, nlist, nprobe
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.device, self.seed = device, seed

    def feature_source(self) -> PretrainedFeatures:
        return PretrainedFeatures(self.backbone, [*self._patch_layers(), self._pooled_layer()], self.weights,
                                  self.device, self.seed)

    def _patch_layers(self) -> list[LayerSpec]:
        return list(self.layers) if self.layers else list(backbone_spec(self.backbone).default_layers)

    def _pooled_layer(self) -> LayerSpec:
        if self.pooled_layer is not None:
            return self.pooled_layer
        return POOLED_LAYER[backbone_spec(self.backbone).family]

    @property
    def patch_taps(self) -> list[str]:
        """The patch layers as unit names, from the backbone table."""
        return resolve_layers(backbone_spec(self.backbone), self._patch_layers())[0]

    @property
    def pooled_tap(self) -> str:
        """The pooled layer as a unit name, from the backbone table."""
        return resolve_layers(backbone_spec(self.backbone), [self._pooled_layer()])[0][0]

    @property
    def index_params(self) -> dict[str, int | None]:
        return dict(nlist=self.nlist, nprobe=self.nprobe, hnsw_m=self.hnsw_m, ef_construction=self.ef_construction,
                    ef_search=self.ef_search)

    def preflight(self) -> None:
        """Bad values (the signature's markers), unknown backbone or layer, missing weights file: one line each,
        nothing built."""
        check_config(self)
        self.features.preflight()

    # SharesFeatures (fit and score_maps are these steps composed, by the mixin)
    def fit_begin(self) -> None:
        check_config(self)
        self.bank, self.model = FeatureBank(self.patch_taps, self.pooled_tap), None

    def fit_step(self, features: FeatureMaps) -> None:
        if self.bank is None:
            raise RuntimeError("SPADE: fit_step before fit_begin")
        self.bank.add(features)

    def fit_end(self) -> None:
        if self.bank is None or self.bank.n_images == 0:
            raise UserError("SPADE needs at least 1 training image")
        self.model = SpadeModel.from_bank(self.bank, self.k, self.index, self.index_params, self.seed)
        self.bank = None

    def fitted(self) -> SpadeModel:
        if self.model is None:
            raise NotFitted("SPADE: call fit (or fit_begin/fit_step/fit_end) before scoring or saving")
        return self.model

    def score_features(self, features: FeatureMaps, batch: Batch) -> Scores:
        model = self.fitted()
        size = tuple(batch.images.shape[-2:])
        maps, image_scores = [], []
        for i in range(len(batch)):
            one = {name: features[name][i:i + 1] for name in (*self.patch_taps, self.pooled_tap)}
            distances, neighbours = model.nearest_images(pooled_vectors(one[self.pooled_tap]))
            image_scores.append(distances.mean())
            maps.append(bilinear_mean_map(model.layer_distances(one, neighbours), size, self.sigma))
        return Scores(maps=torch.stack(maps).to(torch.float32).numpy(),
                      image_scores=np.asarray(image_scores, dtype=np.float32))

    # ModelSize: every training patch is kept, so this grows linearly with the training set.
    def model_bytes(self) -> int:
        return self.fitted().nbytes

    # persistence: fit once, score many times. The faiss indexes travel as faiss's own serialisation.
    def save(self, path: str | Path) -> None:
        write_model_file(path, KIND, config_of(self), self.fitted().state())

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> SPADE:
        config, state = read_model_file(path, KIND)
        method = build_from_config(path, cls, config, device=device)
        method.model = SpadeModel.from_state(state, method.patch_taps, method.k, method.index_params)
        return method


@hookimpl
def anombench_register_methods(register) -> None:
    register("spade", SPADE)
