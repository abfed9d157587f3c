"""Side by side with anomalib 2.7's PaDiM on bottle: EfficientNet-Lite0 with the same real ImageNet weights, all
176 channels (blocks 1, 2, 4), 2 threads, the same files through the same loader (resize 256, crop 224), batch 32.
Per implementation, in a fresh child process: fit seconds, fit peak RSS, end-to-end ms per image (PNG decoding
included, in the main process), image AUROC, pixel AUROC, PRO.

anomalib is given what its own pre-processor would give it (ImageNet normalisation); its torch model is called
directly (no Lightning engine, whose overhead would only slow it down). Its fit inverts covariances with
torch.linalg.inv, which this torch build gets wrong, raises on or stalls at 2 threads above ~150 dims: anomalib's
Gaussian fit runs at 1 thread (which only favours it), and the child checks anomalib's inverses against numpy on
sampled positions and prints the worst relative error. The last lines give the ratios the issue budgets: end-to-end
throughput (training and test images per second of fit + scoring) and fit peak RSS, anombench over anomalib.

anomalib lives in its own virtual environment that sees the system packages:
    python -m venv --system-site-packages /tmp/anomalib-venv
    /tmp/anomalib-venv/bin/pip install anomalib==2.7.0
    /tmp/anomalib-venv/bin/python benchmarks/bench_padim_anomalib.py [--data MVTEC_ROOT]
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import torch

from anombench_plugins.backbones import IMAGENET_MEAN, IMAGENET_STD, load_backbone
from anombench_plugins.metrics import auroc, pro_score
from anombench_plugins.padim import PaDiM

from bench_padim_common import CONFIGS, THREADS, bottle, mvtec_root, peak_rss_gb, run_child, take_data_argument

LITE0_LAYERS = ["blocks.1", "blocks.2", "blocks.4"]


def anomalib_padim():
    """anomalib's PadimModel on tf_efficientnet_lite0 with our Lite0 weights, and a scorer for [0, 1] images."""
    warnings.filterwarnings("ignore")
    from anomalib.models.image.padim.torch_model import PadimModel

    model = PadimModel(backbone="tf_efficientnet_lite0", layers=LITE0_LAYERS, pre_trained=False, n_features=176)
    state = load_backbone("efficientnet_lite0", "imagenet").state_dict()
    missing, _ = model.feature_extractor.feature_extractor.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"anomalib's extractor did not get weights for {missing}")
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return model, lambda images: (images - mean) / std


def inverse_error(model) -> float:
    """Worst relative error of anomalib's inverse covariances against numpy on 8 sampled positions."""
    bank = model.memory_bank if isinstance(model.memory_bank, torch.Tensor) else None
    if bank is None:
        return float("nan")
    vectors = bank.flatten(2).double().numpy()  # (N, C, P)
    worst = 0.0
    for p in np.linspace(0, vectors.shape[2] - 1, 8).astype(int):
        cov = np.cov(vectors[:, :, p], rowvar=False) + 0.01 * np.eye(vectors.shape[1]) + 1e-5 * np.eye(vectors.shape[1])
        expected = np.linalg.inv(cov)
        got = model.gaussian.inv_covariance[p].double().numpy()
        worst = max(worst, float(np.linalg.norm(got - expected) / np.linalg.norm(expected)))
    return worst


def fit_gaussian(model) -> float:
    """anomalib's Gaussian fit, timed, at 1 torch thread: this torch build's batched CPU ``torch.linalg.inv`` at 2
    threads above ~150 dims is wrong, raises (oneMKL SLASWP) or, on 3136 x 176 x 176, ran over 15 minutes without
    finishing. At 1 thread it is right (``inverse_error`` checks it), and one thread only favours anomalib here."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        model.gaussian.fit(model.memory_bank)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(THREADS)


def run_anomalib() -> dict:
    model, normalise = anomalib_padim()
    start = time.perf_counter()
    model.train()
    for batch in bottle("train"):
        model(normalise(batch.images))
    model.memory_bank = torch.vstack(model.memory_bank)
    features_s = time.perf_counter() - start
    fit_s = features_s + fit_gaussian(model)
    fit_rss = peak_rss_gb()
    error = inverse_error(model)
    model.memory_bank = []
    model.eval()

    def score(batch):
        out = model(normalise(batch.images))
        return out.anomaly_map[:, 0].numpy(), out.pred_score.reshape(-1).numpy()

    return dict(fit_s=fit_s, fit_rss=fit_rss, inverse_error=error, **evaluate(score))


def run_ours() -> dict:
    model = PaDiM(**CONFIGS["Lite0-all176"], device="cpu", seed=0)
    start = time.perf_counter()
    model.fit(bottle("train"))
    fit_s, fit_rss = time.perf_counter() - start, peak_rss_gb()

    def score(batch):
        scores = model.score_maps(batch)
        return scores.maps, scores.image_scores

    return dict(fit_s=fit_s, fit_rss=fit_rss, inverse_error=float("nan"), **evaluate(score))


def evaluate(score) -> dict:
    """Time scoring end to end from the files, then the metrics on what it produced."""
    maps, image_scores, masks, labels = [], [], [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in bottle("test"):
            m, s = score(batch)
            maps.append(m)
            image_scores.append(s)
            masks.append(batch.masks.numpy())
            labels.append(batch.labels.numpy())
    seconds = time.perf_counter() - start
    maps_all, masks_all = np.concatenate(maps), np.concatenate(masks)
    return dict(e2e_ms=1e3 * seconds / len(maps_all), n_train=len(bottle("train").dataset), n_test=len(maps_all),
                image_auroc=auroc(np.concatenate(image_scores), np.concatenate(labels)),
                pixel_auroc=auroc(maps_all.ravel(), masks_all.ravel()), pro=pro_score(maps_all, masks_all))


def throughput(r: dict) -> float:
    """Images per second end to end: the training images through fit plus the test images through scoring."""
    n_train, n_test = r["n_train"], r["n_test"]
    return (n_train + n_test) / (r["fit_s"] + r["e2e_ms"] * n_test / 1e3)


def main() -> None:
    print(f"PaDiM, EfficientNet-Lite0 (real weights), 176 channels, bottle, {THREADS} threads, batch 32")
    print(f"{'implementation':<16}{'fit s':>7}{'fit RSS GB':>11}{'e2e ms/img':>11}{'img/s':>7}{'image AUROC':>12}"
          f"{'pixel AUROC':>12}{'PRO':>8}{'inv err':>10}")
    rows = {}
    for name in ("ours", "anomalib"):
        r = rows[name] = run_child(__file__, name)
        print(f"{name:<16}{r['fit_s']:>7.1f}{r['fit_rss']:>11.2f}{r['e2e_ms']:>11.1f}{throughput(r):>7.1f}"
              f"{r['image_auroc']:>12.4f}{r['pixel_auroc']:>12.4f}{r['pro']:>8.4f}{r['inverse_error']:>10.1e}",
              flush=True)
    ours, theirs = rows["ours"], rows["anomalib"]
    print(f"throughput, anombench / anomalib: {throughput(ours) / throughput(theirs):.2f}x (budget >= 5); scoring "
          f"alone {theirs['e2e_ms'] / ours['e2e_ms']:.2f}x; fit alone {theirs['fit_s'] / ours['fit_s']:.2f}x")
    print(f"fit peak RSS, anombench / anomalib: {ours['fit_rss'] / theirs['fit_rss']:.2f} (budget <= 0.5)")
    print("accuracy, |anombench - anomalib|: " + ", ".join(
        f"{key} {abs(ours[key] - theirs[key]):.1e}" for key in ("image_auroc", "pixel_auroc", "pro")))


if __name__ == "__main__":
    argv = take_data_argument(sys.argv[1:])
    if argv[:1] == ["--child"]:
        torch.set_num_threads(THREADS)
        print(json.dumps(run_anomalib() if argv[1] == "anomalib" else run_ours()))
    else:
        mvtec_root()  # a missing data root is one line here, not a child's traceback
        main()
