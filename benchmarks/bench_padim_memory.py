"""PaDiM memory, each measure in a fresh child process (run it under ``nice``: it measures memory, not time):

1. ``rss``: fit peak RSS for N = 100 and N = 1000 synthetic 224x224 images and their ratio, for R18-Rd100 and
   Lite0-all176 (float64 streaming statistics) and WR50-Rd550 (float32 embeddings, folded into float32 merged
   statistics at 289 images): memory does not grow with N;
2. ``storage``: the fitted model's size (row-block float32 Cholesky inverse factors) for WR50-Rd550 and
   Lite0-all176, and the proof that this storage changes nothing: image and pixel AUROC on the real bottle test
   set against a plain float64 numpy reference (per-position covariance of the stored training embeddings +
   eps I, solved densely), which is what the original implementation computes with its 3.8 GB of float32 inverses;
3. ``wr50``: WR50-Rd550 (random init) fit peak RSS on the 209 bottle training images at 224 with three fit
   storages: float64 streaming statistics (the fit before the memory-lean storage: ``STREAMING_STATISTICS_BYTES``
   raised), float32 merged statistics from the first images (the storage of large N, forced) and the default
   (float32 embeddings, group by group); the test maps and AUROCs of the last two against the first;
4. ``large``: the same comparison at N = 1000 real images (bottle's training images rotated and flipped), where
   the default fit folds its embeddings into float32 merged statistics: the accuracy of large fits;
5. ``stc``: the STC-size model, WR50-Rd550 at 256x256 (64x64 = 4096 positions), fit on N = 300 and N = 1000
   synthetic images and scored: peak RSS.

    python benchmarks/bench_padim_memory.py [rss] [storage] [wr50] [large] [stc] [--data MVTEC_ROOT]

``storage``, ``wr50`` and ``large`` read bottle from ``--data`` or ``ANOMBENCH_DATA_MVTEC``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import anombench_plugins.padim_head as padim_head
from anombench_plugins.components import anomaly_maps
from anombench_plugins.metrics import auroc
from anombench_plugins.padim import PaDiM
from anombench_plugins.padim_stats import EmbeddingStore

from bench_padim_common import (CONFIGS, THREADS, augmented_bottle, bottle, mvtec_root, peak_rss_gb, run_child,
                                synthetic_batches, take_data_argument)

RSS_CONFIGS = ("R18-Rd100", "Lite0-all176", "WR50-Rd550")
STORAGE_CONFIGS = ("Lite0-all176", "WR50-Rd550")
STC_SIZES = (300, 1000)
LARGE_N = 1000
PARTS = ("rss", "storage", "wr50", "large", "stc")
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


def wr50_fit(storage: str, n: int, out: str) -> dict:
    """WR50-Rd550 fit on bottle (n = 0: its 209 training images; else n rotated and flipped ones) with the given
    fit storage ("streaming" = float64 statistics from the first image, as before; "merged" = float32 merged
    statistics from the first STORE_CHUNK images on; "default" = what PaDiM picks): fit peak RSS and seconds, then
    the test maps saved to ``out`` for comparison."""
    torch.set_num_threads(THREADS)
    if storage == "streaming":
        padim_head.STREAMING_STATISTICS_BYTES = float("inf")
    if storage == "merged":
        EmbeddingStore.full = lambda self: True
    model = PaDiM(**CONFIGS["WR50-Rd550"], device="cpu", seed=0)
    before = peak_rss_gb()
    start = time.perf_counter()
    model.fit(augmented_bottle(n) if n else bottle("train"))
    fit_s, fit_peak = time.perf_counter() - start, peak_rss_gb()
    scores = [(model.score_maps(batch), batch) for batch in bottle("test")]
    maps = np.concatenate([s.maps for s, _ in scores])
    masks = np.concatenate([b.masks.numpy() for _, b in scores])
    labels = np.concatenate([b.labels.numpy() for _, b in scores])
    np.savez(out, maps=maps, masks=masks, labels=labels)
    return dict(storage=storage, before_gb=before, fit_peak_gb=fit_peak, peak_gb=peak_rss_gb(), fit_s=fit_s)


def stc_size(n: int) -> dict:
    """WR50-Rd550 at 256x256 (4096 positions): fit on n synthetic images, score 16, peak RSS."""
    torch.set_num_threads(THREADS)
    model = PaDiM(**CONFIGS["WR50-Rd550"], device="cpu", seed=0)
    model.fit(synthetic_batches(n, size=256))
    fit_peak = peak_rss_gb()
    for batch in synthetic_batches(16, size=256):
        model.score_maps(batch)
    return dict(n=n, fit_peak_gb=fit_peak, peak_gb=peak_rss_gb(), model_gb=model.model_bytes() / 1e9)


def compare_wr50(n: int, storages: tuple[str, ...]) -> None:
    """Fit WR50-Rd550 on n bottle images (0: the 209 training images) with each storage, in its own child, and
    compare each fit's test maps and AUROCs with the first's (float64 streaming statistics)."""
    mvtec_root()  # a missing data root is one line here, not a child's traceback
    images = f"{n} rotated and flipped" if n else "209"
    print(f"WR50-Rd550 (random init) on bottle, {images} train / 83 test images at 224, batch 32, 2 threads")
    print(f"{'fit storage':<12}{'RSS before fit GB':>19}{'fit peak RSS GB':>17}{'peak RSS GB':>13}{'fit s':>8}"
          f"{'max rel map diff':>18}{'image AUROC':>13}{'pixel AUROC':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for storage in storages:
            out = str(Path(tmp) / f"{storage}.npz")
            r = run_child(__file__, "wr50", storage, str(n), out)
            maps = np.load(out)
            reference = maps if reference is None else reference
            rel = np.max(np.abs(maps["maps"] - reference["maps"]) / np.maximum(np.abs(reference["maps"]), 1e-12))
            image = auroc(maps["maps"].reshape(len(maps["maps"]), -1).max(1), maps["labels"])
            pixel = auroc(maps["maps"].ravel(), maps["masks"].ravel())
            print(f"{storage:<12}{r['before_gb']:>19.2f}{r['fit_peak_gb']:>17.2f}{r['peak_gb']:>13.2f}"
                  f"{r['fit_s']:>8.1f}{rel:>18.2e}{image:>13.8f}{pixel:>13.8f}", flush=True)


def compare_rss() -> None:
    print("fit peak RSS, synthetic 224x224 images, batch 32, 2 threads (R18 and WR50 random init, Lite0 real)")
    print(f"{'config':<14}{'N':>6}{'RSS before fit GB':>19}{'peak RSS GB':>13}{'fit s':>8}{'peak / N=100':>14}")
    for name in RSS_CONFIGS:
        first = None
        for n in (100, 1000):
            r = run_child(__file__, "rss", name, str(n))
            first = first or r["peak_gb"]
            print(f"{name:<14}{n:>6}{r['before_gb']:>19.2f}{r['peak_gb']:>13.2f}{r['fit_s']:>8.1f}"
                  f"{r['peak_gb'] / first:>14.3f}", flush=True)


def main(parts: list[str]) -> None:
    if "rss" in parts:
        compare_rss()
    if "storage" in parts:
        print("fitted model size and AUROC vs a float64 numpy reference, bottle (WR50 random init, Lite0 real)")
        print(f"{'config':<14}{'model GB':>9}{'dense f32 GB':>13}{'image AUROC ours/ref':>24}"
              f"{'pixel AUROC ours/ref':>26}{'max rel map diff':>18}")
        for name in STORAGE_CONFIGS:
            r = run_child(__file__, "storage", name)
            print(f"{name:<14}{r['model_gb']:>9.3f}{r['dense_f32_gb']:>13.3f}"
                  f"{r['image_ours']:>12.6f}/{r['image_ref']:.6f}{r['pixel_ours']:>14.6f}/{r['pixel_ref']:.6f}"
                  f"{r['max_rel_map_diff']:>18.2e}", flush=True)
    if "wr50" in parts:
        compare_wr50(0, ("streaming", "merged", "default"))
    if "large" in parts:
        compare_wr50(LARGE_N, ("streaming", "default"))
    if "stc" in parts:
        print("STC size, WR50-Rd550 at 256x256 (4096 positions), synthetic train images + 16 scored")
        print(f"{'N':>6}{'fit peak RSS GB':>17}{'peak RSS GB':>13}{'model GB':>10}")
        for n in STC_SIZES:
            r = run_child(__file__, "stc", str(n))
            print(f"{n:>6}{r['fit_peak_gb']:>17.2f}{r['peak_gb']:>13.2f}{r['model_gb']:>10.2f}", flush=True)


def child(kind: str, *args: str) -> dict:
    if kind == "rss":
        return fit_rss(args[0], int(args[1]))
    if kind == "storage":
        return storage_check(args[0])
    if kind == "wr50":
        return wr50_fit(args[0], int(args[1]), args[2])
    return stc_size(int(args[0]))


if __name__ == "__main__":
    argv = take_data_argument(sys.argv[1:])
    if argv[:1] == ["--child"]:
        print(json.dumps(child(*argv[1:])))
    else:
        main([a for a in argv if a in PARTS] or list(PARTS))
