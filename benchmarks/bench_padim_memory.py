"""PaDiM memory on bottle, each measure in a fresh child process:

1. fit peak RSS for N = 100 and N = 1000 synthetic 224x224 images: streaming statistics do not grow with N;
2. the fitted model's size (row-block float32 Cholesky inverse factors) for WR50-Rd550 and Lite0-all176, and the
   proof that this storage changes nothing: image and pixel AUROC on the real bottle test set against a plain
   float64 numpy reference (per-position covariance of the stored training embeddings + eps I, solved densely),
   which is what the original implementation computes with its 3.8 GB of float32 inverses.

    python benchmarks/bench_padim_memory.py [rss] [storage]
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from anombench_plugins.metrics import auroc
from anombench_plugins.padim import PaDiM, anomaly_maps

from bench_padim_common import CONFIGS, THREADS, bottle, peak_rss_gb, run_child, synthetic_batches

RSS_CONFIGS = ("R18-Rd100", "Lite0-all176")
STORAGE_CONFIGS = ("Lite0-all176", "WR50-Rd550")
EPS = 0.01


def fit_rss(name: str, n: int) -> dict:
    torch.set_num_threads(THREADS)
    model = PaDiM(**CONFIGS[name], eps=EPS, device="cpu", seed=0)
    before = peak_rss_gb()
    start = time.perf_counter()
    model.fit(synthetic_batches(n))
    return dict(config=name, n=n, before_gb=before, peak_gb=peak_rss_gb(), fit_s=time.perf_counter() - start)


def reference_distances(train: np.ndarray, test: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Mahalanobis distances (n_test, positions) in float64 numpy: cov + eps I per position, dense solve."""
    out = np.empty(test.shape[:2])  # (positions, n_test)
    for s in range(0, train.shape[0], chunk):
        x = train[s:s + chunk].astype(np.float64)  # (c, N, D)
        mean = x.mean(1, keepdims=True)
        centred = x - mean
        cov = centred.transpose(0, 2, 1) @ centred / (x.shape[1] - 1) + EPS * np.eye(x.shape[2])
        d = test[s:s + chunk].astype(np.float64) - mean  # (c, n_test, D)
        out[s:s + chunk] = np.sqrt(np.einsum("cnd,cdn->cn", d, np.linalg.solve(cov, d.transpose(0, 2, 1))))
    return out.T


def storage_check(name: str) -> dict:
    torch.set_num_threads(THREADS)
    model = PaDiM(**CONFIGS[name], eps=EPS, device="cpu", seed=0)
    train = []
    model.fit_begin()
    for batch in bottle("train"):
        features = model.extract(batch.images)
        model.fit_step(features)
        train.append(model.head.embedding(features).numpy())
    model.fit_end()
    ours, test, masks, labels = [], [], [], []
    for batch in bottle("test"):
        features = model.extract(batch.images)
        ours.append(model.score_features(features, batch))
        test.append(model.head.embedding(features).numpy())
        masks.append(batch.masks.numpy())
        labels.append(batch.labels.numpy())
    grid = features[model.head.layers[0]].shape[-2:]
    ref = reference_distances(np.concatenate(train, axis=1), np.concatenate(test, axis=1))
    ref_maps = anomaly_maps(torch.from_numpy(ref).float().reshape(-1, *grid), (224, 224)).numpy()
    our_maps = np.concatenate([s.maps for s in ours])
    masks_all, labels_all = np.concatenate(masks).ravel(), np.concatenate(labels)
    dim = model.head.n_features
    return dict(config=name, model_gb=model.model_bytes() / 1e9, dense_f32_gb=grid[0] * grid[1] * dim * dim * 4 / 1e9,
                image_ours=auroc(our_maps.reshape(len(our_maps), -1).max(1), labels_all),
                image_ref=auroc(ref_maps.reshape(len(ref_maps), -1).max(1), labels_all),
                pixel_ours=auroc(our_maps.ravel(), masks_all), pixel_ref=auroc(ref_maps.ravel(), masks_all),
                max_rel_map_diff=float(np.max(np.abs(our_maps - ref_maps) / np.abs(ref_maps))))


def main(parts: list[str]) -> None:
    if "rss" in parts:
        print("fit peak RSS, synthetic 224x224 images, batch 32, 2 threads (R18 random init, Lite0 real weights)")
        print(f"{'config':<14}{'N':>6}{'RSS before fit GB':>19}{'peak RSS GB':>13}{'fit s':>8}")
        for name in RSS_CONFIGS:
            for n in (100, 1000):
                r = run_child(__file__, "rss", name, str(n))
                print(f"{name:<14}{n:>6}{r['before_gb']:>19.2f}{r['peak_gb']:>13.2f}{r['fit_s']:>8.1f}", flush=True)
    if "storage" in parts:
        print("fitted model size and AUROC vs a float64 numpy reference, bottle (WR50 random init, Lite0 real)")
        print(f"{'config':<14}{'model GB':>9}{'dense f32 GB':>13}{'image AUROC ours/ref':>24}"
              f"{'pixel AUROC ours/ref':>26}{'max rel map diff':>18}")
        for name in STORAGE_CONFIGS:
            r = run_child(__file__, "storage", name)
            print(f"{name:<14}{r['model_gb']:>9.3f}{r['dense_f32_gb']:>13.3f}"
                  f"{r['image_ours']:>12.6f}/{r['image_ref']:.6f}{r['pixel_ours']:>14.6f}/{r['pixel_ref']:.6f}"
                  f"{r['max_rel_map_diff']:>18.2e}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        kind, name, *rest = sys.argv[2:]
        print(json.dumps(fit_rss(name, int(rest[0])) if kind == "rss" else storage_check(name)))
    else:
        main(sys.argv[1:] or ["rss", "storage"])
