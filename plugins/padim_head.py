"""PaDiM's head: everything after the backbone for one set of layers (embedding, channel reduction, Gaussians,
distances), and ``PadimMethod``, the skeleton PaDiM and its layer ensemble share: one pretrained extraction
feeding heads, map = sum of the heads' maps, bicubic upsampling + Gaussian filter, image score = max.

A head's shape is known from configuration alone (``head_dims``: channel counts come from the backbone table), so
``preflight`` checks ``n_features`` against the layers' channels without building anything; the heads themselves,
and their seeded Rd draw, are made in ``fit_begin``. Each parameter's own range (``eps`` > 0, ``n_features`` >= 1)
is a marker in the methods' signatures, checked first by ``anombench.params.check_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import psutil
import torch

from anombench.api import Batch, NotFitted, Scores
from anombench.errors import UserError
from anombench.params import check_config
from anombench_plugins.backbones import FeatureMaps, LayerSpec
from anombench_plugins.components import (
    PretrainedExtraction,
    PretrainedFeatures,
    anomaly_maps,
    max_scores,
    return_freed_memory,
)
from anombench_plugins.modelfile import build_from_config, config_of, read_model_file, write_model_file
from anombench_plugins.padim_stats import (
    EmbeddingStore,
    LowerRowBlocks,
    MergedMoments,
    Moments,
    PatchGaussian,
    StreamingMoments,
    principal_axes,
)

Reduction = Literal["random", "pca", "none"]
PAPER_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}  # Rd-100 and Rd-550; other backbones keep all
MEMORY_FRACTION = 0.8  # of the available RAM the fit statistics may take
# float64 statistics up to this size are streamed from the first image (R18-Rd100: 0.15 GB, Lite0-all176:
# 0.44 GB); bigger ones (R18-all448: 2.6 GB, WR50-Rd550: 3.99 GB) start as the float32 embeddings, merged into
# float32 statistics (MergedMoments, half the size) when they outgrow them
STREAMING_STATISTICS_BYTES = 1e9
STORE_CHUNK = 8  # images per embedding kept by the embedding store


# ---------------------------------------------------------------------------------------------- embedding


def position_major_embedding(maps: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate (B, c, h, w) maps on the grid of the largest one as a contiguous (H*W, B, C) tensor.

    Coarser maps are upsampled by nearest neighbour (F.interpolate's rule: source index floor(i * h / H)), which
    for the integer strides of a CNN is the reference ``embedding_concat``. Each map is written once, straight
    into the layout where every position is one dense matrix for the batched products.
    """
    h_out, w_out = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    batch, dim = maps[0].shape[0], sum(m.shape[1] for m in maps)
    out = maps[0].new_empty(h_out, w_out, batch, dim)
    offset = 0
    for m in maps:
        _, c, h, w = m.shape
        source = m.permute(2, 3, 0, 1)  # (h, w, B, c), a view
        target = out[..., offset:offset + c]
        if h_out % h == 0 and w_out % w == 0:  # repeat by broadcasting: one pass
            target.view(h, h_out // h, w, w_out // w, batch, c).copy_(source[:, None, :, None])
        else:
            rows = torch.arange(h_out, device=m.device) * h // h_out
            cols = torch.arange(w_out, device=m.device) * w // w_out
            target.copy_(source[rows[:, None], cols[None, :]])
        offset += c
    return out.view(h_out * w_out, batch, dim)


class PadimHead:
    """Everything PaDiM does after the backbone, for one set of layers: embedding, reduction, Gaussians, distances.

    ``total`` is the channel count of ``layers`` and ``n_features`` the checked dimension (``head_dims``). The
    random channel subset is drawn at construction (the method builds its heads in ``fit_begin``) from the head's
    own generator seeded with ``seed`` (never the global RNG; its state is saved with the model), sorted so it can
    be gathered layer by layer before the upsampling.
    """

    def __init__(self, layers: list[str], total: int, reduction: Reduction, n_features: int, eps: float,
                 seed: int) -> None:
        self.layers, self.reduction, self.n_features, self.eps = layers, reduction, n_features, eps
        self.generator = torch.Generator().manual_seed(seed)
        self.index: torch.Tensor | None = None
        if reduction == "random" and n_features < total:
            self.index = torch.randperm(total, generator=self.generator)[:n_features].sort().values
        self.projection: torch.Tensor | None = None
        self.moments: Moments | None = None
        self.gaussian: PatchGaussian | None = None

    def embedding(self, features: FeatureMaps) -> torch.Tensor:
        """Position-major embedding (H*W, B, D) before PCA: selected channels of each layer, concatenated."""
        maps = [features[name] for name in self.layers]
        if self.index is not None:
            index = self.index.to(maps[0].device)
            offsets = np.cumsum([0] + [m.shape[1] for m in maps])
            maps = [m.index_select(1, index[(index >= lo) & (index < hi)] - lo)
                    for m, lo, hi in zip(maps, offsets[:-1], offsets[1:])]
        return position_major_embedding(maps)

    def fit_step(self, features: FeatureMaps) -> None:
        """Streaming statistics take the batch's embedding at once (as they always have: same sums, same bits);
        the embedding store, and the merged statistics it folds into, take it STORE_CHUNK images at a time, so the
        batch's float32 embedding (WR50-Rd550, batch 32: 0.22 GB) is never whole in memory next to them. Those
        two hand the freed memory back first (the backbone's activations, which glibc keeps: WR50, batch 32:
        0.2 GB) and last (their own temporaries), so that neither comes on top of the other."""
        if self.moments is None:
            self.moments = self._new_moments(*self._embedding_shape(features), features[self.layers[0]].device)
        if isinstance(self.moments, StreamingMoments):
            self.moments.update(self.embedding(features))
            return
        return_freed_memory()
        for start in range(0, features[self.layers[0]].shape[0], STORE_CHUNK):
            part = {name: features[name][start:start + STORE_CHUNK] for name in self.layers}
            self.moments.update(self.embedding(part))
            if isinstance(self.moments, EmbeddingStore) and self.moments.full():
                self.moments = self.moments.folded(features[self.layers[0]].device)
        return_freed_memory()

    def _embedding_shape(self, features: FeatureMaps) -> tuple[int, int]:
        """(positions, dim) of the embedding, from the maps' shapes alone."""
        positions = max(features[name].shape[-2] * features[name].shape[-1] for name in self.layers)
        dim = self.index.numel() if self.index is not None else sum(features[name].shape[1] for name in self.layers)
        return positions, dim

    @staticmethod
    def _new_moments(positions: int, dim: int, device: torch.device) -> Moments:
        """Streaming float64 statistics when they are small (fixed memory whatever the number of images), else
        the float32 embeddings until they would outweigh float32 merged statistics (see ``padim_stats``)."""
        streaming = StreamingMoments.nbytes_for(positions, dim) <= STREAMING_STATISTICS_BYTES
        needed = StreamingMoments.nbytes_for(positions, dim) if streaming else MergedMoments.nbytes_for(positions, dim)
        available = psutil.virtual_memory().available
        if needed > MEMORY_FRACTION * available:
            raise UserError(f"PaDiM fit statistics for {dim} dims x {positions} positions need {needed / 1e9:.1f} GB, "
                            f"more than {MEMORY_FRACTION:.0%} of the {available / 1e9:.1f} GB available; "
                            "use reduction 'random' with a smaller n_features")
        return StreamingMoments(positions, dim, device) if streaming else EmbeddingStore(positions, dim)

    def fit_end(self) -> None:
        if self.moments is None or self.moments.count < 2:
            raise UserError("PaDiM needs at least 2 training images")
        if self.reduction == "pca" and self.n_features < self.moments.dim:
            self.projection = principal_axes(self.moments.pooled_covariance(), self.n_features).to(torch.float32)
        self.gaussian = PatchGaussian.from_moments(self.moments, self.eps, self.projection)
        self.moments = None

    def distances(self, features: FeatureMaps) -> torch.Tensor:
        """Mahalanobis distance maps (B, h, w) on the embedding grid."""
        if self.gaussian is None:
            raise NotFitted("PaDiM: call fit before scoring")
        x = self.embedding(features)
        if self.projection is not None:
            x = x @ self.projection.to(x.device)
        h, w = max((tuple(features[n].shape[-2:]) for n in self.layers), key=lambda s: s[0] * s[1])
        return self.gaussian.mahalanobis(x).T.reshape(-1, h, w)

    @property
    def nbytes(self) -> int:
        extra = [t for t in (self.index, self.projection) if t is not None]
        return (self.gaussian.nbytes if self.gaussian else 0) + sum(t.numel() * t.element_size() for t in extra)

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The fitted tensors under ``prefix``, for a safetensors file."""
        if self.gaussian is None:
            raise NotFitted("PaDiM: call fit before saving")
        state = {f"{prefix}mean": self.gaussian.mean, f"{prefix}generator_state": self.generator.get_state()}
        state |= {f"{prefix}whitener.{g}.{k}": b for g, w in enumerate(self.gaussian.whiteners)
                  for k, b in enumerate(w.blocks)}
        if self.index is not None:
            state[f"{prefix}index"] = self.index
        if self.projection is not None:
            state[f"{prefix}projection"] = self.projection
        return {k: v.contiguous().cpu() for k, v in state.items()}

    def load_state(self, state: dict[str, torch.Tensor], prefix: str, device: torch.device) -> None:
        mean = state[f"{prefix}mean"].to(device)
        whiteners = []
        for g in range(len({key.split(".")[-2] for key in state if key.startswith(f"{prefix}whitener.")})):
            count = sum(1 for key in state if key.startswith(f"{prefix}whitener.{g}."))
            whiteners.append(LowerRowBlocks([state[f"{prefix}whitener.{g}.{k}"].to(device) for k in range(count)]))
        self.gaussian = PatchGaussian(mean, whiteners)
        self.generator.set_state(state[f"{prefix}generator_state"])
        self.index = state.get(f"{prefix}index", self.index)
        self.projection = state[f"{prefix}projection"].to(device) if f"{prefix}projection" in state else None


def paper_n_features(backbone: str, reduction: Reduction, n_features: int | None, total: int) -> int | None:
    """``n_features`` None means the paper's Rd size for the backbone (100 for resnet18, 550 for wide_resnet50_2)
    capped at the embedding's channels, and all channels for the other backbones."""
    if n_features is not None or reduction == "none":
        return n_features
    return min(PAPER_N_FEATURES.get(backbone, total), total)


def head_dims(method: str, backbone: str, layers: list[str], channels: dict[str, int], reduction: Reduction,
              n_features: int | None) -> tuple[int, int]:
    """(channels of ``layers``, the head's dimension after reduction), or a one-line UserError naming ``method``'s
    parameter: the rules that tie ``n_features`` to ``reduction`` and to the layers' channels (the signature's
    markers hold each parameter's own range). Pure arithmetic on the backbone table: nothing is built."""
    total = sum(channels[name] for name in layers)
    if reduction == "none" and n_features not in (None, total):
        raise UserError(f"{method} parameter n_features={n_features} needs reduction 'random' or 'pca'")
    k = paper_n_features(backbone, reduction, n_features, total)
    k = total if k is None else k
    if k > total:
        raise UserError(f"{method} parameter n_features={n_features} must be at most {total} (the channels of "
                        f"{backbone} {', '.join(layers)})")
    return total, k


def heads_state(heads: list[PadimHead]) -> dict[str, torch.Tensor]:
    """The heads' tensors under head<i>. prefixes, for one model file."""
    state: dict[str, torch.Tensor] = {}
    for i, head in enumerate(heads):
        state |= head.state(f"head{i}.")
    return state


class PadimMethod(PretrainedExtraction):
    """What PaDiM and its layer ensemble share: one pretrained extraction feeding heads; the map is the sum of the
    heads' maps. Subclasses store their parameters (``backbone``, ``layers``, ``weights``, ``reduction``,
    ``n_features``, ``eps``, ``device``, ``seed``) and choose the heads' layers (``head_layers``).

    ``fit`` and ``score_maps`` (from the mixin) are the SharesFeatures steps composed, so a lone method and a shared
    group give identical numbers. Nothing is built before ``fit_begin`` (heads, Rd draw) and the first ``extract``
    (backbone): a method fed by another member's extraction never loads a backbone.
    """

    KIND: ClassVar[str] = "anombench.padim"
    NAME: ClassVar[str] = "PaDiM"  # in error messages
    backbone: str
    layers: list[LayerSpec] | None
    weights: str
    reduction: Reduction
    n_features: int | None
    eps: float
    device: str
    seed: int
    heads: list[PadimHead] | None = None  # made by fit_begin or load

    def feature_source(self) -> PretrainedFeatures:
        return PretrainedFeatures(self.backbone, self.layers, self.weights, self.device, self.seed)

    def head_layers(self) -> list[list[str]]:
        """The unit names each head reads, e.g. [["layer1", "layer2", "layer3"]] for the joint model."""
        raise NotImplementedError

    def head_shapes(self) -> list[tuple[list[str], int, int]]:
        """(layers, channels, dimension) of each head, from configuration alone, after checking it (the signature's
        markers, then ``head_dims``): one-line UserErrors, in ``preflight`` and again when the fit begins."""
        check_config(self, self.NAME)
        channels = self.features.channels
        return [(layers, *head_dims(self.NAME, self.backbone, layers, channels, self.reduction, self.n_features))
                for layers in self.head_layers()]

    def preflight(self) -> None:
        """Unknown backbone or layer, missing weights file, out-of-range ``n_features``/``eps``/``reduction``: one
        line each, before any cell, without reading weights or building the model. The values come first: a bad
        ``eps`` is named even where the weights are missing too."""
        check_config(self, self.NAME)
        self.features.preflight()
        self.head_shapes()

    def new_heads(self) -> list[PadimHead]:
        """Untrained heads, with their seeded channel draws (the same draw every time for the same seed)."""
        return [PadimHead(layers, total, self.reduction, k, self.eps, self.seed)
                for layers, total, k in self.head_shapes()]

    def fitted_heads(self) -> list[PadimHead]:
        if self.heads is None or any(head.gaussian is None for head in self.heads):
            raise NotFitted(f"{self.NAME}: call fit (or fit_begin/fit_step/fit_end) before scoring or saving")
        return self.heads

    def fit_begin(self) -> None:
        self.heads = self.new_heads()

    def fit_step(self, features: FeatureMaps) -> None:
        if self.heads is None:
            raise RuntimeError(f"{self.NAME}: fit_step before fit_begin")
        for head in self.heads:
            head.fit_step(features)

    def fit_end(self) -> None:
        if self.heads is None:
            raise RuntimeError(f"{self.NAME}: fit_end before fit_begin")
        for head in self.heads:
            head.fit_end()

    def score_features(self, features: FeatureMaps, batch: Batch) -> Scores:
        size = tuple(batch.images.shape[-2:])
        return max_scores(sum(anomaly_maps(head.distances(features), size) for head in self.fitted_heads()))

    # ModelSize
    def model_bytes(self) -> int:
        return sum(head.nbytes for head in self.fitted_heads())

    # persistence: fit once, score many times; the configuration saved is the constructor's (config_of)
    def save(self, path: str | Path) -> None:
        write_model_file(path, self.KIND, config_of(self), heads_state(self.fitted_heads()))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> PadimMethod:
        config, state = read_model_file(path, cls.KIND)
        model = build_from_config(path, cls, config, device=device)
        model.heads = model.new_heads()
        for i, head in enumerate(model.heads):
            head.load_state(state, f"head{i}.", torch.device(device))
        return model
