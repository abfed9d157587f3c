"""SPADE on the real MVTec AD "bottle" class with the backbone that has real weights offline (EfficientNet-Lite0),
beside PaDiM on the same backbone: pixel AUROC, PRO (official algorithm, FPR <= 0.3), image AUROC, fit time,
inference time per image (median wall and mean CPU) and model size.

Protocol as the paper's (design.md section 1): resize 256 (identity for this copy), center crop 224, masks
resized with nearest and cropped alike; train on the 209 good images, test on all 83.

    python benchmarks/spade_bottle.py --root /path/to/mvtec             # SPADE (exact) and PaDiM, Lite0, 2 threads
    python benchmarks/spade_bottle.py --spade-indexes flat,hnsw         # also SPADE on HNSW
    python benchmarks/spade_bottle.py --root /path/to/mvtec --category cable

``--root`` (the MVTec AD folder holding the category) defaults to ``ANOMBENCH_DATA_MVTEC``.

The paper's figures (WR50, its Table III/V): SPADE bottle pixel AUROC 98.4, PRO 95.5; our backbone differs, so
compare the two methods with each other here, not with the paper.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from anombench.api import Batch
from anombench_plugins.metrics import auroc, pro_score
from anombench_plugins.mvtec import MVTecAD
from anombench_plugins.padim import PaDiM
from anombench_plugins.spade import SPADE
from bench_spade_speed import fit_seconds, load_batches, set_threads, time_scoring


def quality(timing_scores: list, test: list[Batch]) -> tuple[float, float, float]:
    """(pixel AUROC, PRO, image AUROC) of a method's scores on the test batches, as fractions."""
    maps = np.concatenate([s.maps for s in timing_scores])
    image_scores = np.concatenate([s.image_scores for s in timing_scores])
    masks = np.concatenate([b.masks.numpy() for b in test])
    labels = np.concatenate([b.labels.numpy() for b in test])
    return auroc(maps.ravel(), masks.ravel()), pro_score(maps, masks), auroc(image_scores, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.environ.get("ANOMBENCH_DATA_MVTEC"),
                        help="MVTec AD root (default: $ANOMBENCH_DATA_MVTEC)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spade-indexes", default="flat")
    args = parser.parse_args()
    if not args.root:
        parser.error("no MVTec AD data: pass --root /path/to/mvtec_ad or set ANOMBENCH_DATA_MVTEC")
    set_threads(args.threads)

    data = MVTecAD(root=args.root, image_size=256, crop_size=224)
    train = load_batches(data.train(args.category, 0), 16)
    test = load_batches(data.test(args.category, 0), 1)
    n_test = sum(len(b) for b in test)
    print(f"{args.category}: {sum(len(b) for b in train)} train / {n_test} test images, 224x224, backbone "
          f"{args.backbone} ({args.weights}), {args.threads} threads")
    common = dict(backbone=args.backbone, weights=args.weights, device="cpu", seed=0)
    methods = {"padim": PaDiM(**common)}
    methods |= {f"spade-{kind}": SPADE(**common, index=kind) for kind in args.spade_indexes.split(",")}

    print(f"{'method':<12}{'pixel AUROC':>12}{'PRO':>8}{'image AUROC':>12}{'fit s':>8}{'median s/img':>13}"
          f"{'cpu s/img':>10}{'x PaDiM':>9}{'model MB':>10}")
    base = None
    for name, method in methods.items():
        fit = fit_seconds(method, train)
        timing = time_scoring(method, test)
        base = base or timing
        pixel, pro, image = quality(timing.scores, test)
        print(f"{name:<12}{100 * pixel:12.1f}{100 * pro:8.1f}{100 * image:12.1f}{fit:8.1f}"
              f"{timing.wall_per_image:13.3f}{timing.cpu_per_image:10.3f}"
              f"{timing.wall_per_image / base.wall_per_image:9.1f}{method.model_bytes() / 1e6:10.1f}", flush=True)


if __name__ == "__main__":
    main()
