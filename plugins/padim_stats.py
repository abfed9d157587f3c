"""PaDiM's statistics: per-position streaming moments, the fitted Gaussians and their triangular storage.

Numerics, and why:
- Fit streams: per position a count, a float64 shift (the first batch's mean), the float64 sum of shifted
  vectors and the float64 lower triangle of their scatter matrix. Memory is fixed by positions x dim^2, never by
  the number of images, and shifting before summing keeps the one-pass formula free of cancellation.
- When those float64 statistics would be large (WR50-Rd550: 3.96 GB, twice its fitted model), the fit keeps
  the float32 embeddings instead while they are small (``EmbeddingStore``: 1.44 GB for 209 images, exact), and
  folds them, if more images come, into float32 merged statistics the size of the model (``MergedMoments``:
  Chan et al.'s pairwise update with float64 batch temporaries, 1.94 GB), so memory stops growing with N. Each
  of ``POSITION_GROUPS`` position groups is freed as soon as its factors are stored.
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
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch
from scipy.linalg.lapack import dtrtri
from threadpoolctl import threadpool_limits

from anombench.errors import UserError
from anombench_plugins.components import return_freed_memory

ROW_BLOCK = 24  # WR50-Rd550: 1.98 GB (16: 1.95 GB but ~25% slower products; 32: 2.01 GB, over the 2.0 GB budget)
INVERSE_CHECK_POSITIONS = 8
INVERSE_CHECK_TOLERANCE = 1e-4  # relative Frobenius error of W^T W against numpy's float64 inverse
POSITION_GROUPS = 32
MERGED_ROW_BLOCK = 8  # the float32 scatter of MergedMoments, WR50-Rd550: 1.94 GB (24 rows: 1.99 GB, the model's)
CHUNK_BYTES = 4e6  # one dense float64 temporary in fit_end; about ten are alive at once
MERGE_BYTES = 8e6  # the float64 deviations of one merge step of ``MergedMoments``


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
    def shapes(dim: int, rows: int = ROW_BLOCK) -> list[tuple[int, int]]:
        """(rows, columns) of each block for D = dim and blocks of ``rows`` rows."""
        ends = list(range(rows, dim, rows)) + [dim]
        return [(e - s, e) for s, e in zip([0] + ends[:-1], ends)]

    @classmethod
    def zeros(cls, positions: int, dim: int, dtype: torch.dtype, device: torch.device | str,
              rows: int = ROW_BLOCK) -> LowerRowBlocks:
        return cls([torch.zeros(positions, r, c, dtype=dtype, device=device) for r, c in cls.shapes(dim, rows)])

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

    def add_gram_rounded(self, positions: slice, x: torch.Tensor) -> None:
        """Add the lower triangle of x^T x to the matrices at ``positions``; x is (p, n, D) in a wider dtype than
        this storage's, in which each block's product and sum are taken and then rounded once. Block by block, so
        the wide temporaries are one block's, not a triangle's."""
        for k, block in enumerate(self.blocks):
            product = torch.bmm(x[:, :, self._rows(k)].transpose(1, 2), x[:, :, : self.bounds[k + 1]])
            block[positions] = product.add_(block[positions])

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


def position_chunks(positions: int, nbytes: int, budget: float = CHUNK_BYTES) -> Iterable[slice]:
    """Slices of positions whose temporaries, ``nbytes`` for each position, stay near ``budget``."""
    step = max(1, int(budget // nbytes))
    return (slice(s, min(s + step, positions)) for s in range(0, positions, step))


def triangle_size(dim: int, rows: int = ROW_BLOCK) -> int:
    """Values stored for one dim x dim lower triangle in row blocks of ``rows`` rows."""
    return sum(r * c for r, c in LowerRowBlocks.shapes(dim, rows))


def symmetric_from_lower(lower: torch.Tensor) -> torch.Tensor:
    return lower + lower.tril(-1).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- statistics


class Moments:
    """What a fitted Gaussian is made from: per-position means and covariances of the training embeddings, read
    by position group and released group by group (``PatchGaussian.from_moments``). Two storages share this
    interface: ``StreamingMoments`` (float64 sums, fixed size) and ``EmbeddingStore`` (the float32 embeddings)."""

    positions: int
    dim: int
    count: int
    groups: list[slice]

    def mean(self) -> torch.Tensor:
        """(positions, dim) float64."""
        raise NotImplementedError

    def covariance(self, group: int, positions: slice) -> torch.Tensor:
        """Unbiased covariance (p, dim, dim), float64, of ``positions`` counted within position group ``group``."""
        raise NotImplementedError

    def release(self, group: int) -> None:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        raise NotImplementedError

    def _check_count(self) -> None:
        if self.count < 2:
            raise UserError(f"PaDiM needs at least 2 training images to estimate a covariance, got {self.count}")

    def chunks(self, dim: int) -> Iterable[tuple[int, slice]]:
        """(group, positions within it) covering every position, sized for dim x dim float64 temporaries."""
        return ((i, chunk) for i, g in enumerate(self.groups)
                for chunk in position_chunks(g.stop - g.start, dim * dim * 8))

    def pooled_covariance(self) -> torch.Tensor:
        """Covariance of all training vectors of all positions together (dim, dim): the PCA target.

        Law of total covariance: (n-1) sum_p Sigma_p + n sum_p (mu_p - mu)(mu_p - mu)^T over nP - 1.
        """
        means = self.mean()
        spread = means - means.mean(0)
        within = sum(self.covariance(group, chunk).sum(0) for group, chunk in self.chunks(self.dim))
        scatter = (self.count - 1) * within + self.count * spread.T @ spread
        return scatter / (self.count * self.positions - 1)


class StreamingMoments(Moments):
    """Per-position count, mean and scatter of vectors seen batch by batch, in float64, by position group: the
    statistics of small embeddings (up to ``STREAMING_STATISTICS_BYTES`` in ``padim_head``)."""

    def __init__(self, positions: int, dim: int, device: torch.device | str) -> None:
        self.positions, self.dim, self.count, self.device = positions, dim, 0, device
        self.groups = position_groups(positions)
        self.shift = torch.zeros(positions, dim, dtype=torch.float64, device=device)
        self.total = torch.zeros_like(self.shift)
        self.scatter: list[LowerRowBlocks | None] = [None] * len(self.groups)

    @staticmethod
    def nbytes_for(positions: int, dim: int) -> int:
        return 8 * positions * (triangle_size(dim) + 2 * dim)

    @property
    def nbytes(self) -> int:
        return 16 * self.positions * self.dim + sum(s.nbytes for s in self.scatter if s is not None)

    def update(self, x: torch.Tensor) -> None:
        """Add vectors x of shape (positions, n, dim)."""
        for group in range(len(self.groups)):
            self.add_to_group(group, x[self.groups[group]])
        self.count += x.shape[1]

    def add_to_group(self, group: int, x: torch.Tensor) -> None:
        """Add vectors x (group positions, n, dim) to one group; the caller counts the images once for all groups.
        A group's first vectors set its shift (their mean), which keeps the one-pass formula free of
        cancellation."""
        rows = self.groups[group]
        if self.scatter[group] is None:
            self.shift[rows] = x.mean(1, dtype=torch.float64)
            self.scatter[group] = LowerRowBlocks.zeros(rows.stop - rows.start, self.dim, torch.float64, self.device)
        centred = x - self.shift[rows, None, :]  # promoted to float64 by the subtraction
        self.total[rows] += centred.sum(1)
        self.scatter[group].add_gram(centred)

    def mean(self) -> torch.Tensor:
        return self.shift + self.total / self.count

    def covariance(self, group: int, positions: slice) -> torch.Tensor:
        self._check_count()
        s = self.total[self.groups[group]][positions]
        scatter = symmetric_from_lower(self.scatter[group].dense(positions))
        return (scatter - s[:, :, None] * s[:, None, :] / self.count) / (self.count - 1)

    def release(self, group: int) -> None:
        self.scatter[group] = None


class MergedMoments(Moments):
    """Per-position count, float64 mean and float32 lower triangle of the scatter about that mean, by position
    group: the streaming statistics of large embeddings, a little smaller than the fitted model (WR50-Rd550:
    1.94 GB, half of ``StreamingMoments``) whatever the number of images.

    Each batch is merged by Chan et al.'s pairwise update: its mean and scatter are computed in float64 a few
    positions at a time (temporaries near MERGE_BYTES), M2 += M2_b + delta delta^T n_a n_b / n is summed in
    float64 and rounded to float32 once per batch, and the mean stays float64. A group's scatter is allocated when
    its first vectors arrive, so folding an ``EmbeddingStore`` in group by group never holds both whole."""

    def __init__(self, positions: int, dim: int, device: torch.device | str) -> None:
        self.positions, self.dim, self.count, self.device = positions, dim, 0, device
        self.groups = position_groups(positions)
        self.average = torch.zeros(positions, dim, dtype=torch.float64, device=device)
        self.scatter: list[LowerRowBlocks | None] = [None] * len(self.groups)

    @staticmethod
    def nbytes_for(positions: int, dim: int) -> int:
        return positions * (4 * triangle_size(dim, MERGED_ROW_BLOCK) + 8 * dim)

    @property
    def nbytes(self) -> int:
        return 8 * self.positions * self.dim + sum(s.nbytes for s in self.scatter if s is not None)

    def update(self, x: torch.Tensor) -> None:
        """Merge vectors x of shape (positions, n, dim)."""
        for group, rows in enumerate(self.groups):
            self.merge(group, x[rows].__getitem__, x.shape[1])
        self.count += x.shape[1]

    def merge(self, group: int, vectors: Callable[[slice], torch.Tensor], n: int) -> None:
        """Merge n new vectors into one group; ``vectors(positions)`` gives them (p, n, dim) for positions counted
        within the group. The caller counts the images once for all groups."""
        rows = self.groups[group]
        size = rows.stop - rows.start
        if self.scatter[group] is None:
            self.scatter[group] = LowerRowBlocks.zeros(size, self.dim, torch.float32, self.device, MERGED_ROW_BLOCK)
        average = self.average[rows]  # a view: updated in place
        weight = math.sqrt(self.count * n / (self.count + n))
        for chunk in position_chunks(size, 8 * (n + 1) * self.dim, MERGE_BYTES):
            # the batch's deviations from its mean, and one more row, delta sqrt(n_a n_b / n), so that their gram
            # is M2_b + delta delta^T n_a n_b / n: one float64 buffer
            deviations = torch.empty(chunk.stop - chunk.start, n + 1, self.dim, dtype=torch.float64,
                                     device=self.device)
            x = deviations[:, :n]
            x.copy_(vectors(chunk))
            batch_mean = x.mean(1)
            delta = batch_mean - average[chunk]
            x.sub_(batch_mean[:, None, :])
            deviations[:, n] = weight * delta
            self.scatter[group].add_gram_rounded(chunk, deviations)
            average[chunk] += delta * (n / (self.count + n))

    def mean(self) -> torch.Tensor:
        return self.average

    def covariance(self, group: int, positions: slice) -> torch.Tensor:
        self._check_count()
        scatter = symmetric_from_lower(self.scatter[group].dense(positions)).to(torch.float64)
        return scatter / (self.count - 1)

    def release(self, group: int) -> None:
        """Free a group's scatter and give its pages back (row blocks of 8 rows are mid-size blocks, which glibc
        keeps and the model's larger blocks cannot reuse)."""
        self.scatter[group] = None
        return_freed_memory()


class EmbeddingStore(Moments):
    """The training embeddings themselves, float32 as the backbone gave them, by position group: exact, and
    cheaper than ``MergedMoments`` while n x dim float32 values per position take fewer bytes than the float32
    triangle of a dim x dim scatter (WR50-Rd550 on 209 images: 1.44 GB instead of 1.99 GB). Means and
    covariances are computed at fit_end in float64, two-pass, one group at a time, and each group is freed once
    its factors exist. ``full`` says when folding into ``MergedMoments`` (``folded``) becomes cheaper."""

    def __init__(self, positions: int, dim: int) -> None:
        self.positions, self.dim, self.count = positions, dim, 0
        self.groups = position_groups(positions)
        self.parts: list[list[torch.Tensor] | None] = [[] for _ in self.groups]  # per group: (p, n_b, dim) each

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for parts in self.parts if parts for t in parts)

    def full(self) -> bool:
        return self.nbytes >= MergedMoments.nbytes_for(self.positions, self.dim)

    def update(self, x: torch.Tensor) -> None:
        """Keep vectors x of shape (positions, n, dim): a copy per group, so each group can be freed alone."""
        for rows, parts in zip(self.groups, self.parts):
            parts.append(x[rows].clone())
        self.count += x.shape[1]

    def mean(self) -> torch.Tensor:
        return torch.cat([sum(part.sum(1, dtype=torch.float64) for part in parts) / self.count
                          for parts in self.parts])

    def vectors(self, group: int, positions: slice) -> torch.Tensor:
        """All stored vectors (p, count, dim) of a few positions, gathered from the batches' parts: a group's parts
        are never joined into one tensor, which would hold the group twice (and glibc keeps freed mid-size
        blocks)."""
        return torch.cat([part[positions] for part in self.parts[group]], dim=1)

    def covariance(self, group: int, positions: slice) -> torch.Tensor:
        """Two-pass float64 covariance of a few positions."""
        self._check_count()
        x = self.vectors(group, positions).to(torch.float64)
        centred = x - x.mean(1, keepdim=True)
        return centred.transpose(1, 2) @ centred / (self.count - 1)

    def release(self, group: int) -> None:
        """Free a group's embeddings and give their pages back: they are many mid-size blocks, which glibc
        would otherwise keep, so the fitted factors would grow on top of them instead of in their place."""
        self.parts[group] = None
        return_freed_memory()

    def folded(self, device: torch.device | str) -> MergedMoments:
        """The same statistics as ``MergedMoments``, built group by group while the embeddings are freed: each
        group's embeddings are merged as one batch, so float32 rounds once."""
        moments = MergedMoments(self.positions, self.dim, device)
        for group in range(len(self.groups)):
            moments.merge(group, partial(self.vectors, group), self.count)
            self.release(group)
        moments.count = self.count
        return moments


def whitening_factor(covariance: torch.Tensor) -> torch.Tensor:
    """W = C^-1 with covariance = C C^T (Cholesky), batched, so that Sigma^-1 = W^T W.

    Done by numpy's Cholesky and LAPACK's triangular inverse (dtrtri): this torch build's batched CPU Cholesky
    runs ~100x slower at 2 threads (oneMKL threading, the same family as its wrong ``linalg.inv``). Both release
    the GIL, so ``PatchGaussian`` runs this in worker threads, with BLAS at one thread (one small matrix at a
    time: more threads only fight torch's pool).
    """
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


T = TypeVar("T")


class InlineExecutor(Executor):
    """Runs each submitted call at once in the caller's thread (``concurrent.futures`` has no such executor)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the result, as a pool would
            future.set_exception(exc)
        return future


@dataclass
class FactorJob:
    """One chunk of positions whose covariances and factors a worker thread is making: stored, checked and, after
    a group's last chunk, the group's statistics released, all in chunk order in the caller's thread."""

    group: int
    chunk: slice
    result: Future[tuple[torch.Tensor, torch.Tensor]]  # (Sigma + eps I, W)

    def store(self, moments: Moments, whiteners: list[LowerRowBlocks], checked: set[int]) -> None:
        covariance, factors = self.result.result()
        whiteners[self.group].set_dense(self.chunk, factors)
        first = moments.groups[self.group].start + self.chunk.start
        mine = [p for p in range(first, first + self.chunk.stop - self.chunk.start) if p in checked]
        if mine:
            local = [p - first for p in mine]
            stored = whiteners[self.group].dense(self.chunk)[local]
            check_inverse(covariance[local].cpu().numpy(), stored.double().cpu().numpy(), mine)
        if self.chunk.stop == moments.groups[self.group].stop - moments.groups[self.group].start:
            moments.release(self.group)


class PatchGaussian:
    """The fitted model: per-position mean (P, D) and whitening factors W (lower, row blocks, one LowerRowBlocks per
    position group), all float32."""

    def __init__(self, mean: torch.Tensor, whiteners: list[LowerRowBlocks]) -> None:
        self.mean = mean
        self.whiteners = whiteners
        ends = np.cumsum([w.blocks[0].shape[0] for w in whiteners]).tolist()
        self.groups = [slice(a, b) for a, b in zip([0] + ends[:-1], ends)]  # as stored: a file keeps its grouping

    @classmethod
    def from_moments(cls, moments: Moments, eps: float,
                     projection: torch.Tensor | None = None) -> PatchGaussian:
        """Sigma_p + eps I (optionally projected: V^T Sigma_p V + eps I) -> factor, with the inverse self-check.

        Consumes ``moments``: each group's float64 statistics are released once its factors are stored.
        Torch runs with one thread: it is thousands of small ops, and on shared cores each multi-threaded op waits
        for a descheduled sibling thread (measured 4x slower for Lite0's 3136 x 176-dim fit at 2 threads). The
        cores are used instead by worker threads, one per torch thread, each making one chunk's covariances and
        factors (numpy and LAPACK release the GIL), while this thread stores them in order (Lite0-all176 on bottle,
        2 threads: 1.45x faster, 4.1 -> 2.8 s and 5.1 -> 3.5 s in two runs). Only for streamed (small)
        statistics: worker threads allocate from malloc arenas of their own, which raised WR50-Rd550's fit peak
        from 2.99 to 3.08 GB, so large statistics, where memory is the budget, are factored in this thread.
        """
        threads = torch.get_num_threads()
        workers = threads if isinstance(moments, StreamingMoments) else 1
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1, user_api="blas"), \
                    (ThreadPoolExecutor(workers) if workers > 1 else InlineExecutor()) as pool:
                return cls._from_moments(moments, eps, projection, pool, workers)
        finally:
            torch.set_num_threads(threads)

    @classmethod
    def _from_moments(cls, moments: Moments, eps: float, projection: torch.Tensor | None,
                      pool: Executor, workers: int) -> PatchGaussian:
        mean = moments.mean()
        v = projection.to(torch.float64) if projection is not None else None
        if v is not None:
            mean = mean @ v
        dim = mean.shape[1]
        whiteners: list[LowerRowBlocks] = []  # a group's factors are allocated when its statistics are about to go
        eye = torch.eye(dim, dtype=torch.float64, device=mean.device)

        def factor(group: int, chunk: slice) -> tuple[torch.Tensor, torch.Tensor]:
            """(Sigma + eps I, its W) for a chunk's positions; reads the statistics only, so runs in any thread."""
            cov = moments.covariance(group, chunk)
            if v is not None:
                cov = v.T @ cov @ v
            cov = cov + eps * eye
            return cov, whitening_factor(cov)

        checked = set(np.linspace(0, moments.positions - 1, INVERSE_CHECK_POSITIONS).round().astype(int).tolist())
        pending: deque[FactorJob] = deque()  # chunks in flight, oldest first
        ahead = workers if workers > 1 else 0  # chunks left in flight: one queued per worker; inline: none

        def store_until(left: int) -> None:
            """Store the oldest chunks, in order, until ``left`` are in flight."""
            while len(pending) > left:
                pending.popleft().store(moments, whiteners, checked)

        for group, chunk in moments.chunks(max(dim, moments.dim)):
            if group == len(whiteners):
                store_until(0)  # the groups before are released first: this one's factors take their place
                size = moments.groups[group].stop - moments.groups[group].start
                whiteners.append(LowerRowBlocks.zeros(size, dim, torch.float32, mean.device))
            pending.append(FactorJob(group, chunk, pool.submit(factor, group, chunk)))
            store_until(ahead)
        store_until(0)
        return cls(mean.to(torch.float32), whiteners)

    @property
    def nbytes(self) -> int:
        return self.mean.numel() * self.mean.element_size() + sum(w.nbytes for w in self.whiteners)

    def mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        """Distances (positions, n) of vectors x (positions, n, D), all positions at once."""
        d = x - self.mean[:, None, :]
        squared = torch.cat([w.squared_norms(d[g]) for g, w in zip(self.groups, self.whiteners)])
        return squared.clamp_min_(0).sqrt_()


def principal_axes(covariance: torch.Tensor, k: int) -> torch.Tensor:
    """The k eigenvectors of largest eigenvalue (dim, k), by numpy's symmetric eigensolver in float64."""
    values, vectors = np.linalg.eigh(covariance.cpu().numpy())
    order = np.argsort(values)[::-1][:k]
    return torch.from_numpy(np.ascontiguousarray(vectors[:, order])).to(covariance.device)


