"""Building blocks that several methods share, public for third-party methods too (like anomalib's components).

- ``PretrainedFeatures``: a pretrained backbone's taps as configuration (channels, strides and the feature-sharing
  key come from the backbone table, nothing is built) plus the extractor itself, built on first use;
- ``PretrainedExtraction``: a mixin that gives a method ``feature_key``/``extract`` (and ``fit``/``score_maps``
  composed from the shared steps) from its ``PretrainedFeatures``;
- map post-processing: bicubic upsampling + Gaussian filter (PaDiM), bilinear upsampling + mean + Gaussian
  filter (SPADE), and image score = max of the map.

They live with the plugins, not in the host, because they depend on the backbones (torchvision, timm) and the
host knows no method; ``anombench_plugins`` is installed with anombench, so any plugin can import them.

The Gaussian filter equals ``scipy.ndimage.gaussian_filter(sigma=4)``'s defaults: the kernel is truncated at
int(4 sigma + 0.5) = 16 pixels (33 taps) and borders are extended by half-sample symmetric reflection (scipy's mode
"reflect": d c b a | a b c d). Upsampling and filtering are linear and separable, so they are applied as one (H, h)
and one (W, w) matrix: two small matmuls per map.
"""

from __future__ import annotations

import ctypes
from functools import cached_property, lru_cache

import torch
import torch.nn.functional as F

from anombench.api import ComposedFromSharedSteps, Scores
from anombench_plugins.backbones import (
    Backbone,
    FeatureExtractor,
    FeatureInfo,
    FeatureMaps,
    LayerSpec,
    backbone_spec,
    check_weights,
    extraction_key,
    resolve_layers,
)

GAUSSIAN_SIGMA = 4.0  # the paper's filter
GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage's default: radius int(4 * sigma + 0.5)


# ---------------------------------------------------------------------------------------------- features


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc keeps freed mid-size blocks otherwise), so a
    method's peak RSS counts what it holds. A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass



class PretrainedFeatures:
    """The feature maps of a pretrained backbone's taps, as configuration first and a model only when needed.

    Everything but the forward pass is read off the backbone table: the caller's ``layers`` as unit names, the
    ``taps`` extracted (default layers + the caller's), their channels, and the feature-sharing ``key``. The
    ``FeatureExtractor`` (weights read, model built) is made on the first call or ``module`` access.
    """

    def __init__(self, backbone: str, layers: list[LayerSpec] | None, weights: str, device: str, seed: int) -> None:
        self.backbone, self.requested, self.weights, self.device, self.seed = backbone, layers, weights, device, seed
        self._module: FeatureExtractor | None = None

    @property
    def spec(self) -> Backbone:
        return backbone_spec(self.backbone)

    @cached_property
    def _resolved(self) -> tuple[list[str], list[FeatureInfo]]:
        return resolve_layers(self.spec, self.requested)

    @property
    def layers(self) -> list[str]:
        """The caller's layers as unit names (e.g. 1 -> "layer1", 20 -> "blocks.3.6")."""
        return self._resolved[0]

    @property
    def taps(self) -> list[FeatureInfo]:
        """Every map extracted, in forward order: the backbone's default layers plus the caller's."""
        return self._resolved[1]

    @property
    def channels(self) -> dict[str, int]:
        return {tap.name: tap.channels for tap in self.taps}

    def key(self) -> str:
        """Two extractions with the same key give the same maps (backbone, weights, seed of a random init, taps,
        device): the runner feeds one pass to every method of a cell that reports it."""
        return extraction_key(self.spec, self.weights, self.seed, [t.name for t in self.taps],
                              str(torch.device(self.device)))

    def preflight(self) -> None:
        """One-line UserErrors for an unknown backbone or layer and a weights file that is not there."""
        check_weights(self.spec, self.weights)
        _ = self.taps

    @property
    def module(self) -> FeatureExtractor:
        """The extractor, built (weights read) on first use."""
        if self._module is None:
            self._module = FeatureExtractor(self.backbone, self.requested, self.weights, self.device, self.seed)
            return_freed_memory()  # the units past the deepest tap (WR50's layer4: 0.17 GB) were just dropped
        return self._module

    def __call__(self, images: torch.Tensor) -> FeatureMaps:
        return self.module(images)


class PretrainedExtraction(ComposedFromSharedSteps):
    """Mixin for a method fed by a pretrained backbone: ``feature_key`` and ``extract`` from the
    ``PretrainedFeatures`` that ``feature_source()`` makes out of the method's configuration (made once, on first
    use, so the constructor stores parameters only). ``fit``/``score_maps`` are the shared steps composed."""

    _features: PretrainedFeatures | None = None  # a class default: __init__ sets parameters only

    def feature_source(self) -> PretrainedFeatures:
        raise NotImplementedError

    @property
    def features(self) -> PretrainedFeatures:
        if self._features is None:
            self._features = self.feature_source()
        return self._features

    @property
    def extractor(self) -> FeatureExtractor:
        """The built extractor (weights are read on first access)."""
        return self.features.module

    def feature_key(self) -> str:
        return self.features.key()

    def extract(self, images: torch.Tensor) -> FeatureMaps:
        return self.features(images)


# ---------------------------------------------------------------------------------------------- maps


def gaussian_kernel(sigma: float = GAUSSIAN_SIGMA, truncate: float = GAUSSIAN_TRUNCATE) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def reflect_indices(n: int, radius: int) -> torch.Tensor:
    """Indices padding a length-n axis by ``radius`` with half-sample symmetric reflection (any radius vs n)."""
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


@lru_cache(maxsize=32)
def gaussian_matrix(n: int, sigma: float = GAUSSIAN_SIGMA, truncate: float = GAUSSIAN_TRUNCATE) -> torch.Tensor:
    """The 1-D Gaussian filter of a length-n axis, reflection included, as an (n, n) float64 matrix.

    Filtering is linear, so a map is filtered by two small matmuls, far faster on CPU than a 33-tap convolution.
    """
    kernel = gaussian_kernel(sigma, truncate)
    radius = (kernel.numel() - 1) // 2
    source = reflect_indices(n, radius).unfold(0, kernel.numel(), 1)  # (n, taps): input index of each tap
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.scatter_add_(1, source, kernel.expand(n, -1).contiguous())
    return matrix


@lru_cache(maxsize=32)
def upsample_blur_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64: torch's bicubic upsampling (align_corners=False), read off a one-hot basis so it is
    exactly ``F.interpolate``, followed by the Gaussian filter."""
    basis = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
    bicubic = F.interpolate(basis, size=(n_out, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T
    return gaussian_matrix(n_out) @ bicubic


def gaussian_blur(maps: torch.Tensor, sigma: float = GAUSSIAN_SIGMA) -> torch.Tensor:
    """Gaussian filter of (B, H, W) or (H, W) maps, equal to scipy.ndimage.gaussian_filter(sigma, mode='reflect')."""
    h, w = maps.shape[-2:]
    return gaussian_matrix(h, sigma).to(maps) @ maps @ gaussian_matrix(w, sigma).to(maps).T


def anomaly_maps(distances: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PaDiM's maps: distance maps (B, h, w) -> bicubic upsampling to ``size`` -> Gaussian filter, sigma 4, as
    two matmuls."""
    h, w = distances.shape[-2:]
    rows = upsample_blur_matrix(h, size[0]).to(distances)
    cols = upsample_blur_matrix(w, size[1]).to(distances)
    return rows @ distances @ cols.T


def bilinear_mean_map(layer_maps: list[torch.Tensor], size: tuple[int, int], sigma: float) -> torch.Tensor:
    """SPADE's map of one image: layer maps (h_l, w_l) -> each upsampled (bilinear, as the SPADE reference code)
    to ``size`` -> averaged -> Gaussian filter -> (H, W)."""
    up = [F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0] for m in layer_maps]
    return gaussian_blur(torch.stack(up).mean(0), sigma)


def max_scores(maps: torch.Tensor) -> Scores:
    """Scores of (B, H, W) maps: float32 maps on the CPU, image score = the map's maximum."""
    maps32 = maps.to(torch.float32).cpu().numpy()
    return Scores(maps=maps32, image_scores=maps32.reshape(maps32.shape[0], -1).max(1))
