"""Issue 15.2 budget: 1000 stratified resamples of pixel AUROC, PRO and image AUROC on a pill-sized class (167 test
images at 224x224: 26 good, 141 defective) in at most 20 s and 1 GB extra memory on 2 cores.

    nice python benchmarks/bench_bootstrap.py [--maps MAPS.npz] [--resamples 1000]

Maps: by default realistic synthetic ones (PaDiM-like: a smooth, heavy-tailed background of Mahalanobis-like
distances around 30 with a tail past 300, blob-shaped defects of 0.3-8% of the image scoring 1.5-4x higher);
``--maps`` takes an .npz with ``maps``, ``masks``, ``labels``, ``image_scores`` (e.g. PaDiM-Lite0's bottle maps),
tiled to 167 images. Prints the time of feeding the summaries (CPU), of the bootstrap (wall and CPU), the peak
memory the bootstrap allocates (tracemalloc: numpy's buffers), the stored artifact's size, the intervals and their
binning error bounds. The bootstrap runs on one core (its BLAS products are single-threaded). No assertion on
time: the machine is shared, so compare the CPU time with the budget as well as the wall time.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch
from scipy import ndimage

from anombench.api import Batch, Scores
from anombench.bootstrap import ImageSummaries

N_GOOD, N_DEFECTIVE, SIZE, BATCH = 26, 141, 224, 32


def synthetic_maps(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = N_GOOD + N_DEFECTIVE
    texture = ndimage.gaussian_filter(rng.normal(size=(n, SIZE, SIZE)).astype(np.float32), sigma=(0, 6, 6))
    texture /= texture.std()
    maps = np.exp(np.log(30.0) + 0.45 * texture + rng.normal(0, 0.1, size=(n, 1, 1)).astype(np.float32))
    masks = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    blobs = ndimage.gaussian_filter(rng.normal(size=(N_DEFECTIVE, SIZE, SIZE)).astype(np.float32), sigma=(0, 12, 12))
    for i, blob in enumerate(blobs):
        area = rng.uniform(0.003, 0.08)
        defect = blob > np.quantile(blob, 1.0 - area)
        masks[N_GOOD + i] = defect
        strength = rng.uniform(1.5, 4.0)
        maps[N_GOOD + i] *= 1.0 + (strength - 1.0) * ndimage.gaussian_filter(defect.astype(np.float32), 4)
    maps = maps.astype(np.float32)
    return {"maps": maps, "masks": masks, "labels": np.array([0] * N_GOOD + [1] * N_DEFECTIVE),
            "image_scores": maps.reshape(n, -1).max(axis=1)}


def tiled(data: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first n images of the data repeated (real classes with fewer test images than pill)."""
    index = np.arange(n) % len(data["maps"])
    return {name: np.asarray(data[name])[index] for name in ("maps", "masks", "labels", "image_scores")}


def summarise(data: dict[str, np.ndarray]) -> ImageSummaries:
    summary = ImageSummaries()
    for start in range(0, len(data["maps"]), BATCH):
        part = slice(start, start + BATCH)
        ids = [f"image{i:04d}" for i in range(start, start + len(data["maps"][part]))]
        summary.update(Scores(data["maps"][part], data["image_scores"][part].astype(np.float32)),
                       Batch(torch.zeros(len(ids)), torch.from_numpy(data["masks"][part]),
                             torch.from_numpy(data["labels"][part]), ids))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", help=".npz with maps, masks, labels, image_scores (default: synthetic)")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    data = tiled(dict(np.load(args.maps)), N_GOOD + N_DEFECTIVE) if args.maps else synthetic_maps()
    print(f"maps: {args.maps or 'synthetic'}, {data['maps'].shape}, {int(data['labels'].sum())} defective")
    cpu = time.process_time()
    summary = summarise(data)
    print(f"feeding the summaries: {time.process_time() - cpu:.2f} s CPU")
    wall, cpu = time.perf_counter(), time.process_time()
    draws = summary.bootstrap(args.resamples, seed=0)
    print(f"bootstrap, {args.resamples} resamples, 3 metrics: {time.perf_counter() - wall:.2f} s wall, "
          f"{time.process_time() - cpu:.2f} s CPU")
    tracemalloc.start()
    summary.bootstrap(args.resamples, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"peak memory allocated by the bootstrap: {peak / 1e6:.0f} MB; "
          f"bootstrap.npz: {len(summary.to_bytes()) / 1e6:.1f} MB")
    estimates = summary.estimates()
    for metric in draws.values:
        lo, hi = draws.interval(metric, 0.95)
        print(f"{metric:<12} {estimates.values[metric][0] * 100:6.2f}  95% CI [{lo * 100:.2f}, {hi * 100:.2f}]  "
              f"binning bound: value {estimates.bounds[metric][0]:.1e}, "
              f"interval {draws.interval_error_bound(metric):.1e}")


if __name__ == "__main__":
    main()
