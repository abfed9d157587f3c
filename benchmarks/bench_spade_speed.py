"""Per-image inference time of SPADE against PaDiM on the same backbone, and of SPADE's approximate indexes
with their recall against the exact search.

Why: the PaDiM paper (Table VII) says SPADE is about 7x slower than PaDiM at inference, because every test image
searches the patches of its K = 50 nearest training images while PaDiM evaluates one Gaussian per position. The
approximate indexes (IVF, HNSW) trade exactness for speed; their recall@1 (the fraction of positions whose
approximate nearest gallery patch is at the exact nearest distance) says what that costs.

Data: synthetic MVTec-like discs at the paper's 224x224 (anombench_plugins.synthetic), so it runs anywhere;
the cost of SPADE depends on K, the image size and the layers, not on what the images show.

    python benchmarks/bench_spade_speed.py                       # EfficientNet-Lite0 (real weights), 2 threads
    python benchmarks/bench_spade_speed.py --backbone wide_resnet50_2 --weights none --n-test 3   # paper backbone

Times: the median wall seconds per image (test batches of one image) and the mean CPU seconds per image of
this process; the ratios to PaDiM use the medians. Inference = backbone pass + search and scoring, images
already in memory.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader

from anombench.api import Batch, Scores, Split, collate
from anombench_plugins.padim import PaDiM
from anombench_plugins.spade import SPADE, pooled_vectors
from anombench_plugins.synthetic import SyntheticDataset


@dataclass
class Timing:
    wall_per_image: float  # median over the test images: robust to bursts of other jobs on a shared machine
    cpu_per_image: float  # mean; includes time other threads of this process spent spinning
    scores: list[Scores]


def set_threads(n: int) -> None:
    """The same thread count for torch (backbone) and faiss (search)."""
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def load_batches(split: Split, batch_size: int) -> list[Batch]:
    """The whole split decoded into memory, so that timings measure the method and not the image files."""
    return list(DataLoader(split, batch_size=batch_size, collate_fn=collate))


def fit_seconds(method: object, train: list[Batch]) -> float:
    start = time.perf_counter()
    method.fit(iter(train))
    return time.perf_counter() - start


def time_scoring(method: object, test: list[Batch]) -> Timing:
    """Score every test batch once, timed one by one, after one warm-up image (first-call allocations are not
    inference)."""
    method.score_maps(test[0].slice(0, 1))
    walls, scores = [], []
    cpu = time.process_time()
    for batch in test:
        start = time.perf_counter()
        scores.append(method.score_maps(batch))
        walls.append((time.perf_counter() - start) / len(batch))
    n = sum(len(batch) for batch in test)
    return Timing(float(np.median(walls)), (time.process_time() - cpu) / n, scores)


def recall_at_1(exact: SPADE, approx: SPADE, test: list[Batch]) -> float:
    """Fraction of feature positions (all layers, all test images) where the approximate gallery search returns
    the exact nearest distance; both models see the same galleries (the exact model's K nearest images)."""
    hits, total = 0, 0
    for batch in test:
        features = exact.extract(batch.images)
        for i in range(len(batch)):
            one = {name: f[i:i + 1] for name, f in features.items()}
            _, neighbours = exact.model.nearest_images(pooled_vectors(one[exact.pooled_tap]))
            for a, b in zip(exact.model.layer_distances(one, neighbours), approx.model.layer_distances(one, neighbours)):
                hits += int(np.isclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6).sum())
                total += a.numel()
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--indexes", default="flat,ivf,hnsw", help="SPADE index kinds, comma-separated")
    args = parser.parse_args()
    set_threads(args.threads)

    data = SyntheticDataset(categories=["disc"], image_size=args.size, n_train=args.n_train, n_test_good=args.n_test,
                            n_test_defective=0)
    train, test = load_batches(data.train("disc", 0), 8), load_batches(data.test("disc", 0), 1)
    common = dict(backbone=args.backbone, weights=args.weights, device="cpu", seed=0)
    print(f"backbone {args.backbone} ({args.weights}), {args.size}x{args.size}, {args.n_train} train / "
          f"{args.n_test} test images, K={args.k}, {args.threads} threads")

    padim = PaDiM(**common)
    padim_fit = fit_seconds(padim, train)
    base = time_scoring(padim, test)
    print(f"{'method':<14}{'fit s':>8}{'median s/img':>13}{'cpu s/img':>11}{'x PaDiM (median)':>18}{'x PaDiM (cpu)':>15}"
          f"{'model MB':>10}{'recall@1':>10}")
    print(f"{'padim':<14}{padim_fit:8.1f}{base.wall_per_image:13.3f}{base.cpu_per_image:11.3f}{1:18.1f}{1:15.1f}"
          f"{padim.model_bytes() / 1e6:10.1f}{'':>10}")

    exact: SPADE | None = None
    for kind in args.indexes.split(","):
        spade = SPADE(**common, k=args.k, index=kind)
        fit = fit_seconds(spade, train)
        timing = time_scoring(spade, test)
        exact = spade if kind == "flat" else exact
        recall = recall_at_1(exact, spade, test) if exact is not None else float("nan")
        print(f"{'spade-' + kind:<14}{fit:8.1f}{timing.wall_per_image:13.3f}{timing.cpu_per_image:11.3f}"
              f"{timing.wall_per_image / base.wall_per_image:18.1f}{timing.cpu_per_image / base.cpu_per_image:15.1f}"
              f"{spade.model_bytes() / 1e6:10.1f}{recall:10.4f}")


if __name__ == "__main__":
    main()
