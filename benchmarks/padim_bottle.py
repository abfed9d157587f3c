"""Real-data check: PaDiM with EfficientNet-Lite0 (real ImageNet weights) on MVTec AD bottle.

Prints image AUROC, pixel AUROC and PRO (official MVTec algorithm, from plugins/metrics.py) for all 176 channels
and for Rd-100, beside anomalib 2.7's figures for the same data and backbone and the paper's for ResNets.

    python benchmarks/padim_bottle.py [CONFIG ...] [--data MVTEC_ROOT]      (default: Lite0-all176 Lite0-Rd100)
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from anombench_plugins.metrics import auroc, pro_score
from anombench_plugins.padim import PaDiM

from bench_padim_common import CONFIGS, THREADS, bottle, take_data_argument

REFERENCES = [
    ("anomalib 2.7 PaDiM, tf_efficientnet_lite0, 176 ch, bilinear", 1.000, 0.982, 0.924),
    ("paper PaDiM-R18-Rd100 (Table III; no image AUROC per class)", None, 0.981, 0.939),
    ("paper PaDiM-WR50-Rd550 (Table III)", None, 0.983, 0.948),
]


def evaluate(model: PaDiM) -> tuple[float, float, float]:
    maps, masks, labels, image_scores = [], [], [], []
    for batch in bottle("test"):
        scores = model.score_maps(batch)
        maps.append(scores.maps)
        image_scores.append(scores.image_scores)
        masks.append(batch.masks.numpy())
        labels.append(batch.labels.numpy())
    maps_all, masks_all = np.concatenate(maps), np.concatenate(masks)
    return (auroc(np.concatenate(image_scores), np.concatenate(labels)),
            auroc(maps_all.ravel(), masks_all.ravel()), pro_score(maps_all, masks_all))


def main(names: list[str]) -> None:
    torch.set_num_threads(THREADS)
    print(f"{'model':<62}{'image AUROC':>12}{'pixel AUROC':>12}{'PRO':>8}")
    for name in names:
        start = time.perf_counter()
        model = PaDiM(**CONFIGS[name], device="cpu", seed=0)
        model.fit(bottle("train"))
        image, pixel, pro = evaluate(model)
        label = f"ours {name} ({time.perf_counter() - start:.0f} s fit+test)"
        print(f"{label:<62}{image:>12.4f}{pixel:>12.4f}{pro:>8.4f}", flush=True)
    for label, image, pixel, pro in REFERENCES:
        image_text = "-" if image is None else f"{image:.3f}"
        print(f"{label:<62}{image_text:>12}{pixel:>12.3f}{pro:>8.3f}")


if __name__ == "__main__":
    main(take_data_argument(sys.argv[1:]) or ["Lite0-all176", "Lite0-Rd100"])
