"""PaDiM (Defard et al., ICPR 2020): one Gaussian per patch position over pretrained CNN features.

The pure torch model (``LowerRowBlocks``, ``StreamingMoments``, ``PatchGaussian``, ``PadimHead`` and the map
post-processing) is separate from the plugin class ``PaDiM`` that wires it to a backbone and to anombench.

Numerics, and why:
- Fit streams: per position a count, a float64 shift (the first batch's mean), the float64 sum of shifted
  vectors and the float64 lower triangle of their scatter matrix. Memory is fixed by positions x dim^2, never by
  the number of images, and shifting before summing keeps the one-pass formula free of cancellation.
- Sigma + eps I is factored by Cholesky (numpy/LAPACK), Sigma = C C^T, and we keep W = C^-1 (lower triangular), since
  (x - mu)^T Sigma^-1 (x - mu) = ||W (x - mu)||^2. No general inverse is ever formed (this torch build's batched
  CPU ``linalg.inv`` is wrong above ~150 dims at 2 threads), and the fit compares W^T W with numpy's inverse
  on sampled positions and raises if they disagree.
- W is stored in float32 by row blocks of ``ROW_BLOCK`` rows: block k holds rows r_k..r_k+1 and only columns
  0..r_k+1, so the zero upper triangle is (almost) not stored and scoring is plain batched matmuls on those blocks
  with no unpacking. For WR50-Rd550 at 224 input this is 1.99 GB instead of 3.8 GB for dense float32 inverses,
  and half the multiply-adds of a dense quadratic form.
- PCA-k (Table II) needs no second pass: the pooled covariance of all training embeddings is the mixture of the
  per-position Gaussians, and projecting a Gaussian on the top-k eigenvectors V gives V^T mu, V^T Sigma V exactly.
- Maps: distances on the feature grid, bicubic upsampling to the input size (align_corners=False), then a
  Gaussian filter with sigma 4 equal to ``scipy.ndimage.gaussian_filter(sigma=4)``'s defaults: the kernel is
  truncated at int(4 sigma + 0.5) = 16 pixels (33 taps) and borders are extended by half-sample symmetric
  reflection (scipy's mode "reflect": d c b a | a b c d). Both steps are linear and separable, so they are
  applied as one (H, h) and one (W, w) matrix: two small matmuls per map. Image score = max of the map.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from scipy.linalg.lapack import dtrtri
from threadpoolctl import threadpool_limits

from anombench import hookimpl
from anombench.api import Batch, ComposedFromSharedSteps, Scores
from anombench.errors import UserError
from anombench_plugins.backbones import FeatureExtractor, FeatureMaps, LayerSpec
from anombench_plugins.modelfile import build_from_config, read_model_file, write_model_file

Reduction = Literal["random", "pca", "none"]
REDUCTIONS = ("random", "pca", "none")
ROW_BLOCK = 24  # WR50-Rd550: 1.98 GB (16: 1.95 GB but ~25% slower products; 32: 2.01 GB, over the 2.0 GB budget)
GAUSSIAN_SIGMA = 4.0
GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage's default: radius int(4 * sigma + 0.5)
PAPER_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}  # Rd-100 and Rd-550; other backbones keep all
INVERSE_CHECK_POSITIONS = 8
INVERSE_CHECK_TOLERANCE = 1e-4  # relative Frobenius error of W^T W against numpy's float64 inverse
POSITION_GROUPS = 8
CHUNK_BYTES = 4e6  # one dense float64 temporary in fit_end; about ten are alive at once
MEMORY_FRACTION = 0.8  # of the available RAM the float64 fit statistics may take


# ---------------------------------------------------------------------------------------------- storage


class LowerRowBlocks:
    """One lower-triangular D x D matrix per patch position, stored by row blocks.

    Block k has shape (positions, r_{k+1} - r_k, r_{k+1}): rows r_k..r_{k+1}, columns 0..r_{k+1}. Only the small
    upper part of each diagonal block is stored in excess, so storage is D^2 (1 + 1/K) / 2 for K blocks.
    """

    def __init__(self, blocks: list[torch.Tensor]) -> None:
        self.blocks = blocks
        self.bounds = [0] + [int(b.shape[2]) for b in blocks]

    @staticmethod
    def shapes(dim: int) -> list[tuple[int, int]]:
        """(rows, columns) of each block for D = dim."""
        ends = list(range(ROW_BLOCK, dim, ROW_BLOCK)) + [dim]
        return [(e - s, e) for s, e in zip([0] + ends[:-1], ends)]

    @classmethod
    def zeros(cls, positions: int, dim: int, dtype: torch.dtype, device: torch.device | str) -> LowerRowBlocks:
        return cls([torch.zeros(positions, r, c, dtype=dtype, device=device) for r, c in cls.shapes(dim)])

    @property
    def dim(self) -> int:
        return self.bounds[-1]

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.blocks)

    def _rows(self, k: int) -> slice:
        return slice(self.bounds[k], self.bounds[k + 1])

    def add_gram(self, x: torch.Tensor) -> None:
        """Add the lower triangle of x^T x per position; x is (positions, n, D)."""
        for k, block in enumerate(self.blocks):
            block.baddbmm_(x[:, :, self._rows(k)].transpose(1, 2), x[:, :, : self.bounds[k + 1]])

    def dense(self, positions: slice) -> torch.Tensor:
        """The stored matrices of ``positions`` as dense (p, D, D) lower-triangular tensors."""
        first = self.blocks[0][positions]
        out = first.new_zeros(first.shape[0], self.dim, self.dim)
        for k, block in enumerate(self.blocks):
            out[:, self._rows(k), : self.bounds[k + 1]] = block[positions]
        return out.tril()

    def set_dense(self, positions: slice, matrices: torch.Tensor) -> None:
        """Store the lower triangles of dense (p, D, D) matrices at ``positions``."""
        lower = matrices.tril()
        for k, block in enumerate(self.blocks):
            block[positions] = lower[:, self._rows(k), : self.bounds[k + 1]].to(block.dtype)

    def squared_norms(self, d: torch.Tensor) -> torch.Tensor:
        """||L d||^2 for every position and vector; d is (positions, n, D), the result (positions, n)."""
        total = d.new_zeros(d.shape[:2])
        for k, block in enumerate(self.blocks):
            y = torch.bmm(d[:, :, : self.bounds[k + 1]], block.transpose(1, 2))
            total += (y * y).sum(-1)
        return total


def position_groups(positions: int) -> list[slice]:
    """POSITION_GROUPS nearly equal slices of the positions: the unit in which statistics and factors are stored,
    so fit_end can free a group's float64 statistics as soon as its factors exist (and fit_step's float64
    temporaries are a group's, not the whole grid's)."""
    bounds = np.linspace(0, positions, min(POSITION_GROUPS, positions) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def position_chunks(positions: int, dim: int) -> Iterable[slice]:
    """Slices of positions whose dense float64 D x D temporaries stay near CHUNK_BYTES."""
    step = max(1, int(CHUNK_BYTES // (dim * dim * 8)))
    return (slice(s, min(s + step, positions)) for s in range(0, positions, step))


def symmetric_from_lower(lower: torch.Tensor) -> torch.Tensor:
    return lower + lower.tril(-1).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- statistics


class StreamingMoments:
    """Per-position count, mean and scatter of vectors seen batch by batch, in float64, by position group."""

    def __init__(self, positions: int, dim: int, device: torch.device | str) -> None:
        self.positions, self.dim, self.count = positions, dim, 0
        self.groups = position_groups(positions)
        self.shift = torch.zeros(positions, dim, dtype=torch.float64, device=device)
        self.total = torch.zeros_like(self.shift)
        self.scatter: list[LowerRowBlocks | None] = [
            LowerRowBlocks.zeros(g.stop - g.start, dim, torch.float64, device) for g in self.groups]

    @staticmethod
    def nbytes_for(positions: int, dim: int) -> int:
        stored = sum(r * c for r, c in LowerRowBlocks.shapes(dim))
        return 8 * positions * (stored + 2 * dim)

    def update(self, x: torch.Tensor) -> None:
        """Add vectors x of shape (positions, n, dim)."""
        for group, scatter in zip(self.groups, self.scatter):
            if self.count == 0:
                self.shift[group] = x[group].mean(1, dtype=torch.float64)
            centred = x[group] - self.shift[group, None, :]  # promoted to float64 by the subtraction
            self.total[group] += centred.sum(1)
            scatter.add_gram(centred)
        self.count += x.shape[1]

    def mean(self) -> torch.Tensor:
        return self.shift + self.total / self.count

    def covariance(self, group: int, positions: slice) -> torch.Tensor:
        """Unbiased covariance (p, dim, dim), float64, of ``positions`` counted within position group ``group``."""
        if self.count < 2:
            raise UserError(f"PaDiM needs at least 2 training images to estimate a covariance, got {self.count}")
        s = self.total[self.groups[group]][positions]
        scatter = symmetric_from_lower(self.scatter[group].dense(positions))
        return (scatter - s[:, :, None] * s[:, None, :] / self.count) / (self.count - 1)

    def chunks(self, dim: int) -> Iterable[tuple[int, slice]]:
        """(group, positions within it) covering every position, sized for dim x dim float64 temporaries."""
        return ((i, chunk) for i, g in enumerate(self.groups) for chunk in position_chunks(g.stop - g.start, dim))

    def release(self, group: int) -> None:
        self.scatter[group] = None

    def pooled_covariance(self) -> torch.Tensor:
        """Covariance of all training vectors of all positions together (dim, dim): the PCA target.

        Law of total covariance: (n-1) sum_p Sigma_p + n sum_p (mu_p - mu)(mu_p - mu)^T over nP - 1.
        """
        means = self.mean()
        spread = means - means.mean(0)
        within = sum(self.covariance(group, chunk).sum(0) for group, chunk in self.chunks(self.dim))
        scatter = (self.count - 1) * within + self.count * spread.T @ spread
        return scatter / (self.count * self.positions - 1)


def whitening_factor(covariance: torch.Tensor) -> torch.Tensor:
    """W = C^-1 with covariance = C C^T (Cholesky), batched, so that Sigma^-1 = W^T W.

    Done by numpy's Cholesky and LAPACK's triangular inverse (dtrtri): this torch build's batched CPU Cholesky
    runs ~100x slower at 2 threads (oneMKL threading, the same family as its wrong ``linalg.inv``).
    """
    with threadpool_limits(1, user_api="blas"):  # one small matrix at a time: threads only fight torch's pool
        try:
            factors = np.linalg.cholesky(covariance.cpu().numpy())
        except np.linalg.LinAlgError:
            raise RuntimeError("PaDiM: a covariance + eps I is not positive definite; is eps > 0?") from None
        inverses = []
        for factor in factors:
            inverse, info = dtrtri(factor, lower=1)
            if info != 0:
                raise RuntimeError(f"PaDiM: LAPACK dtrtri failed (info {info}) on a Cholesky factor")
            inverses.append(np.tril(inverse))
    return torch.from_numpy(np.stack(inverses)).to(covariance.device)


def check_inverse(covariances: np.ndarray, factors: np.ndarray, positions: list[int]) -> None:
    """Fail loudly when the stored factor does not invert the covariance (numpy float64 is the judge)."""
    for p, cov, w in zip(positions, covariances, factors):
        expected = np.linalg.inv(cov)
        error = np.linalg.norm(w.T @ w - expected) / np.linalg.norm(expected)
        if not error <= INVERSE_CHECK_TOLERANCE:
            raise RuntimeError(
                f"PaDiM: inverse covariance at position {p} is off by {error:.2e} (relative) compared with numpy; "
                "the linear-algebra backend gives wrong results, refusing to continue"
            )


class PatchGaussian:
    """The fitted model: per-position mean (P, D) and whitening factors W (lower, row blocks, one LowerRowBlocks per
    position group), all float32."""

    def __init__(self, mean: torch.Tensor, whiteners: list[LowerRowBlocks]) -> None:
        self.mean = mean
        self.whiteners = whiteners
        self.groups = position_groups(mean.shape[0])

    @classmethod
    def from_moments(cls, moments: StreamingMoments, eps: float,
                     projection: torch.Tensor | None = None) -> PatchGaussian:
        """Sigma_p + eps I (optionally projected: V^T Sigma_p V + eps I) -> factor, with the inverse self-check.

        Consumes ``moments``: each group's float64 statistics are released once its factors are stored.
        Runs with one torch thread: it is thousands of small ops, and on shared cores each multi-threaded op waits
        for a descheduled sibling thread (measured 4x slower for Lite0's 3136 x 176-dim fit at 2 threads).
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return cls._from_moments(moments, eps, projection)
        finally:
            torch.set_num_threads(threads)

    @classmethod
    def _from_moments(cls, moments: StreamingMoments, eps: float, projection: torch.Tensor | None) -> PatchGaussian:
        mean = moments.mean()
        v = projection.to(torch.float64) if projection is not None else None
        if v is not None:
            mean = mean @ v
        dim = mean.shape[1]
        whiteners: list[LowerRowBlocks] = []  # a group's factors are allocated when its statistics are about to go
        eye = torch.eye(dim, dtype=torch.float64, device=mean.device)
        checked = set(np.linspace(0, moments.positions - 1, INVERSE_CHECK_POSITIONS).round().astype(int).tolist())
        for group, chunk in moments.chunks(max(dim, moments.dim)):
            if group == len(whiteners):
                size = moments.groups[group].stop - moments.groups[group].start
                whiteners.append(LowerRowBlocks.zeros(size, dim, torch.float32, mean.device))
            cov = moments.covariance(group, chunk)
            if v is not None:
                cov = v.T @ cov @ v
            cov = cov + eps * eye
            whiteners[group].set_dense(chunk, whitening_factor(cov))
            first = moments.groups[group].start + chunk.start
            mine = [p for p in range(first, first + chunk.stop - chunk.start) if p in checked]
            if mine:
                local = [p - first for p in mine]
                stored = whiteners[group].dense(chunk)[local]
                check_inverse(cov[local].cpu().numpy(), stored.double().cpu().numpy(), mine)
            if chunk.stop == moments.groups[group].stop - moments.groups[group].start:
                moments.release(group)
        return cls(mean.to(torch.float32), whiteners)

    @property
    def nbytes(self) -> int:
        return self.mean.numel() * self.mean.element_size() + sum(w.nbytes for w in self.whiteners)

    def mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        """Distances (positions, n) of vectors x (positions, n, D), all positions at once."""
        d = x - self.mean[:, None, :]
        squared = torch.cat([w.squared_norms(d[g]) for g, w in zip(self.groups, self.whiteners)])
        return squared.clamp_min_(0).sqrt_()


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

    The random channel subset is drawn once, at construction, from the head's own generator seeded with ``seed``
    (never the global RNG; its state is saved with the model), sorted so it can be gathered layer by layer before
    the upsampling.
    """

    def __init__(self, layers: list[str], channels: dict[str, int], reduction: Reduction, n_features: int | None,
                 eps: float, seed: int) -> None:
        total = sum(channels[name] for name in layers)
        if reduction not in REDUCTIONS:
            raise UserError(f"PaDiM parameter reduction='{reduction}' is not one of {', '.join(REDUCTIONS)}")
        if reduction == "none" and n_features not in (None, total):
            raise UserError(f"PaDiM parameter n_features={n_features} needs reduction 'random' or 'pca'")
        k = total if n_features is None else n_features
        if not 1 <= k <= total:
            raise UserError(f"PaDiM parameter n_features={n_features} must be in 1..{total} (channels of {layers})")
        if eps <= 0:
            raise UserError(f"PaDiM parameter eps={eps} must be > 0 (it keeps every covariance invertible)")
        self.layers, self.channels, self.reduction, self.n_features, self.eps = layers, channels, reduction, k, eps
        self.generator = torch.Generator().manual_seed(seed)
        self.index: torch.Tensor | None = None
        if reduction == "random" and k < total:
            self.index = torch.randperm(total, generator=self.generator)[:k].sort().values
        self.projection: torch.Tensor | None = None
        self.moments: StreamingMoments | None = None
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

    def fit_begin(self) -> None:
        self.moments, self.gaussian, self.projection = None, None, None

    def fit_step(self, features: FeatureMaps) -> None:
        x = self.embedding(features)
        if self.moments is None:
            self.moments = self._new_moments(x.shape[0], x.shape[2], x.device)
        self.moments.update(x)

    @staticmethod
    def _new_moments(positions: int, dim: int, device: torch.device) -> StreamingMoments:
        needed = StreamingMoments.nbytes_for(positions, dim)
        available = psutil.virtual_memory().available
        if needed > MEMORY_FRACTION * available:
            raise UserError(f"PaDiM fit statistics for {dim} dims x {positions} positions need {needed / 1e9:.1f} GB "
                            f"of float64, more than {MEMORY_FRACTION:.0%} of the {available / 1e9:.1f} GB available; "
                            "use reduction 'random' with a smaller n_features")
        return StreamingMoments(positions, dim, device)

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
            raise RuntimeError("PaDiM: score before fit")
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
            raise RuntimeError("PaDiM: save before fit")
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
        for g in range(len(position_groups(mean.shape[0]))):
            count = sum(1 for key in state if key.startswith(f"{prefix}whitener.{g}."))
            whiteners.append(LowerRowBlocks([state[f"{prefix}whitener.{g}.{k}"].to(device) for k in range(count)]))
        self.gaussian = PatchGaussian(mean, whiteners)
        self.generator.set_state(state[f"{prefix}generator_state"])
        self.index = state.get(f"{prefix}index", self.index)
        self.projection = state[f"{prefix}projection"].to(device) if f"{prefix}projection" in state else None


def principal_axes(covariance: torch.Tensor, k: int) -> torch.Tensor:
    """The k eigenvectors of largest eigenvalue (dim, k), by numpy's symmetric eigensolver in float64."""
    values, vectors = np.linalg.eigh(covariance.cpu().numpy())
    order = np.argsort(values)[::-1][:k]
    return torch.from_numpy(np.ascontiguousarray(vectors[:, order])).to(covariance.device)


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


def gaussian_blur(maps: torch.Tensor) -> torch.Tensor:
    """Gaussian filter (sigma 4) of (B, H, W) maps, equal to scipy.ndimage.gaussian_filter(mode='reflect')."""
    h, w = maps.shape[-2:]
    return gaussian_matrix(h).to(maps) @ maps @ gaussian_matrix(w).to(maps).T


def anomaly_maps(distances: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Distance maps (B, h, w) -> bicubic upsampling to ``size`` -> Gaussian filter, sigma 4, as two matmuls."""
    h, w = distances.shape[-2:]
    rows = upsample_blur_matrix(h, size[0]).to(distances)
    cols = upsample_blur_matrix(w, size[1]).to(distances)
    return rows @ distances @ cols.T


def to_scores(maps: torch.Tensor) -> Scores:
    maps32 = maps.to(torch.float32).cpu().numpy()
    return Scores(maps=maps32, image_scores=maps32.reshape(maps32.shape[0], -1).max(1))


# ---------------------------------------------------------------------------------------------- the plugin


def paper_n_features(backbone: str, reduction: Reduction, n_features: int | None, total: int) -> int | None:
    """``n_features`` None means the paper's Rd size for the backbone (100 for resnet18, 550 for wide_resnet50_2)
    capped at the embedding's channels, and all channels for the other backbones."""
    if n_features is not None or reduction == "none":
        return n_features
    return min(PAPER_N_FEATURES.get(backbone, total), total)


def build_head(extractor: FeatureExtractor, layers: list[str], reduction: Reduction, n_features: int | None,
               eps: float, seed: int) -> PadimHead:
    channels = extractor.tap_channels
    total = sum(channels[name] for name in layers)
    return PadimHead(layers, channels, reduction, paper_n_features(extractor.spec.name, reduction, n_features, total),
                     eps, seed)


def heads_state(heads: list[PadimHead]) -> dict[str, torch.Tensor]:
    """The heads' tensors under head<i>. prefixes, for one model file."""
    state: dict[str, torch.Tensor] = {}
    for i, head in enumerate(heads):
        state |= head.state(f"head{i}.")
    return state


class PadimMethod(ComposedFromSharedSteps):
    """What PaDiM and its layer ensemble share: one extractor feeding heads; the map is the sum of the heads' maps.

    ``fit`` and ``score_maps`` (from the mixin) are the SharesFeatures steps composed, so a lone method and a shared
    group give identical numbers. Subclasses only choose the heads.
    """

    KIND = "anombench.padim"

    def __init__(self, extractor: FeatureExtractor, heads: list[PadimHead], config: dict) -> None:
        self.extractor, self.heads, self.config = extractor, heads, config

    # SharesFeatures
    def feature_key(self) -> str:
        return self.extractor.key()

    def extract(self, images: torch.Tensor) -> FeatureMaps:
        return self.extractor(images)

    def fit_begin(self) -> None:
        for head in self.heads:
            head.fit_begin()

    def fit_step(self, features: FeatureMaps) -> None:
        for head in self.heads:
            head.fit_step(features)

    def fit_end(self) -> None:
        for head in self.heads:
            head.fit_end()

    def score_features(self, features: FeatureMaps, batch: Batch) -> Scores:
        size = tuple(batch.images.shape[-2:])
        return to_scores(sum(anomaly_maps(head.distances(features), size) for head in self.heads))

    # ModelSize
    def model_bytes(self) -> int:
        return sum(head.nbytes for head in self.heads)

    # persistence: fit once, score many times
    def save(self, path: str | Path) -> None:
        write_model_file(path, self.KIND, self.config, heads_state(self.heads))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> PadimMethod:
        config, state = read_model_file(path, cls.KIND)
        model = build_from_config(path, cls, config, device=device)
        for i, head in enumerate(model.heads):
            head.load_state(state, f"head{i}.", model.extractor.device)
        return model


class PaDiM(PadimMethod):
    """PaDiM as an anombench method: one backbone pass, one head over all layers, maps at input resolution.

    ``n_features`` None: see ``paper_n_features``. ``weights``: "imagenet", "none" (random init from ``seed``) or a
    file (see ``anombench_plugins.backbones``).
    """

    KIND = "anombench.padim"

    def __init__(self, backbone: str = "resnet18", layers: list[LayerSpec] | None = None, weights: str = "imagenet",
                 reduction: Reduction = "random", n_features: int | None = None, eps: float = 0.01,
                 device: str = "cpu", seed: int = 0) -> None:
        extractor = FeatureExtractor(backbone, layers, weights, device, seed)
        head = build_head(extractor, extractor.layers, reduction, n_features, eps, seed)
        super().__init__(extractor, [head], dict(backbone=backbone, layers=layers, weights=weights,
                                                 reduction=reduction, n_features=n_features, eps=eps, seed=seed))

    @property
    def head(self) -> PadimHead:
        return self.heads[0]


@hookimpl
def anombench_register_methods(register) -> None:
    register("padim", PaDiM)
