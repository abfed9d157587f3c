"""Pixel AUROC and PRO at the scale of the STC test set: 42,883 frames of 256x256 = 2.8e9 pixels.

Synthetic scores and masks are generated batch by batch and streamed through the real metric plugins, as the
runner would; the script prints wall time, throughput and the peak RSS of the process (which must stay under
4 GB: a naive sort of 2.8e9 scores needs tens of GB). Masks: one frame in three holds one or two rectangular
defects; scores: N(0, 1) on normal pixels and N(2, 1) on defect pixels, so the expected values are known in
closed form (pixel AUROC = Phi(sqrt 2), PRO from the two normal tails) and printed beside the measured ones.

    python benchmarks/bench_metrics_scale.py               # the full 2.8e9 pixels (several minutes)
    python benchmarks/bench_metrics_scale.py --frames 2000 # a quick run
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from scipy import integrate
from scipy.stats import norm

from anombench.api import Batch, Resources, Scores
from anombench_plugins.metrics import DEFAULT_BINS, DEFAULT_MAX_FPR, DEFAULT_PIXEL_BUDGET, PRO, PixelAUROC

STC_TEST_FRAMES = 42_883
SIDE = 256
DEFECT_SHIFT = 2.0
GB = 1e9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=STC_TEST_FRAMES, help="test frames of 256x256 to stream")
    parser.add_argument("--batch", type=int, default=64, help="frames per batch")
    parser.add_argument("--pixel-budget", type=int, default=DEFAULT_PIXEL_BUDGET, help="exact-path pixel budget")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="inner histogram bins of the binned path")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def rectangles(rng: np.random.Generator, n: int, present: np.ndarray) -> np.ndarray:
    """(n, SIDE, SIDE) bool: one random axis-aligned rectangle on the frames where ``present``."""
    top, left = rng.integers(0, SIDE - 8, size=(2, n))
    height, width = rng.integers(4, 64, size=(2, n))
    axis = np.arange(SIDE)
    rows = (axis >= top[:, None]) & (axis < (top + height)[:, None])
    cols = (axis >= left[:, None]) & (axis < (left + width)[:, None])
    return rows[:, :, None] & cols[:, None, :] & present[:, None, None]


def synthetic_batch(rng: np.random.Generator, n: int) -> tuple[Scores, Batch]:
    """One batch as the runner hands it to metrics: float32 maps, uint8 torch masks, int64 torch labels."""
    anomalous = rng.random(n) < 1 / 3
    masks = rectangles(rng, n, anomalous) | rectangles(rng, n, anomalous & (rng.random(n) < 0.5))
    maps = rng.standard_normal((n, SIDE, SIDE), dtype=np.float32)
    maps[masks] += np.float32(DEFECT_SHIFT)
    labels = torch.from_numpy(masks.any(axis=(1, 2)).astype(np.int64))
    batch = Batch(images=torch.empty(n, 3, 0, 0), masks=torch.from_numpy(masks.view(np.uint8)), labels=labels,
                  ids=[""] * n)
    return Scores(maps, maps.max(axis=(1, 2))), batch


def expected_pixel_auroc() -> float:
    """P(N(shift, 1) > N(0, 1)) = Phi(shift / sqrt 2)."""
    return float(norm.cdf(DEFECT_SHIFT / np.sqrt(2.0)))


def expected_pro(max_fpr: float) -> float:
    """Every region's expected overlap at the threshold of FPR x is the defect tail P(N(shift, 1) > t(x)), with
    t(x) the normal tail's inverse; integrate it up to max_fpr and normalise."""
    def overlap(x: float) -> float:
        return norm.sf(norm.isf(x) - DEFECT_SHIFT)
    return integrate.quad(overlap, 0.0, max_fpr, limit=200)[0] / max_fpr


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # ru_maxrss is in KiB on Linux


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    metrics = {"pixel_auroc": PixelAUROC(pixel_budget=args.pixel_budget, bins=args.bins),
               "pro": PRO(pixel_budget=args.pixel_budget, bins=args.bins)}
    update_seconds = dict.fromkeys(metrics, 0.0)
    generate_seconds, pixels, started = 0.0, 0, time.perf_counter()
    for first in range(0, args.frames, args.batch):
        tick = time.perf_counter()
        scores, batch = synthetic_batch(rng, min(args.batch, args.frames - first))
        generate_seconds += time.perf_counter() - tick
        for name, metric in metrics.items():
            tick = time.perf_counter()
            metric.update(scores, batch)
            update_seconds[name] += time.perf_counter() - tick
        pixels += scores.maps.size
    expected = {"pixel_auroc": expected_pixel_auroc(), "pro": expected_pro(DEFAULT_MAX_FPR)}
    print(f"streamed {args.frames} frames of {SIDE}x{SIDE} = {pixels:.4g} pixels in batches of {args.batch} "
          f"(pixel budget {args.pixel_budget:.3g}, {args.bins} bins)")
    for name, metric in metrics.items():
        tick = time.perf_counter()
        value = metric.compute(Resources())
        compute_seconds = time.perf_counter() - tick
        path = "binned" if metric._stream.histogram is not None else "exact"
        print(f"{name:12s} {value:.6f} (expected {expected[name]:.6f}, error bound {metric.error_bound:.2g}, {path}) "
              f"update {update_seconds[name]:.1f} s = {1e9 * update_seconds[name] / pixels:.1f} ns/pixel, "
              f"compute {compute_seconds:.2f} s")
    print(f"data generation {generate_seconds:.1f} s; total wall time {time.perf_counter() - started:.1f} s; "
          f"peak RSS {peak_rss_gb():.2f} GB (1e9 bytes)")


if __name__ == "__main__":
    main()
