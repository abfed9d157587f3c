"""PaDiM speed on the real bottle data at 2 CPU threads: end to end (PNG files -> maps) beside the backbone's own
forward pass measured in the same process on the same batches, plus fit seconds and fit peak RSS on the 209
training images. Every configuration runs in a fresh child process so its peak RSS is its own.

End to end is timed twice: decoding in the main process (workers 0) and in one loader process (workers 1), which
overlaps decoding with compute as the runner can. The decoding time alone is printed too, and the load average,
because the two cores are shared with other work (each figure is the best of REPEATS runs).

    python benchmarks/bench_padim_speed.py [CONFIG ...]      (default: R18-Rd100 WR50-Rd550 Lite0-all176)
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from bench_padim_common import BATCH_SIZE, CONFIGS, THREADS, bottle, peak_rss_gb, run_child
from anombench_plugins.padim import PaDiM

REPEATS = 2


def best_seconds(fn, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(name: str) -> dict:
    torch.set_num_threads(THREADS)
    model = PaDiM(**CONFIGS[name], device="cpu", seed=0)
    fit_seconds = best_seconds(lambda: model.fit(bottle("train")), repeats=1)
    fit_rss = peak_rss_gb()
    preloaded = list(bottle("test"))
    n = sum(len(b) for b in preloaded)
    ms = {
        "decode_ms": best_seconds(lambda: list(bottle("test"))),
        "forward_ms": best_seconds(lambda: [model.extract(b.images) for b in preloaded]),
        "e2e_w0_ms": best_seconds(lambda: [model.score_maps(b) for b in bottle("test")]),
        "e2e_w1_ms": best_seconds(lambda: [model.score_maps(b) for b in bottle("test", workers=1)]),
    }
    return dict(config=name, fit_s=fit_seconds, fit_peak_rss_gb=fit_rss, model_gb=model.model_bytes() / 1e9,
                load_avg=os.getloadavg()[0], **{k: 1e3 * v / n for k, v in ms.items()})


def main(names: list[str]) -> None:
    print(f"PaDiM on bottle (83 test images), {THREADS} threads, batch {BATCH_SIZE}, 224x224; R18/WR50 random init "
          "(no offline weights; same cost), Lite0 real ImageNet weights. Times in ms per image.")
    print(f"{'config':<14}{'fit s':>7}{'fit RSS GB':>11}{'decode':>8}{'forward':>9}{'e2e w0':>8}{'ratio':>7}"
          f"{'e2e w1':>8}{'ratio':>7}{'model GB':>10}{'load':>6}")
    for name in names:
        r = run_child(__file__, name)
        print(f"{r['config']:<14}{r['fit_s']:>7.1f}{r['fit_peak_rss_gb']:>11.2f}{r['decode_ms']:>8.1f}"
              f"{r['forward_ms']:>9.1f}{r['e2e_w0_ms']:>8.1f}{r['e2e_w0_ms'] / r['forward_ms']:>7.2f}"
              f"{r['e2e_w1_ms']:>8.1f}{r['e2e_w1_ms'] / r['forward_ms']:>7.2f}{r['model_gb']:>10.3f}"
              f"{r['load_avg']:>6.1f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(sys.argv[2])))
    else:
        main(sys.argv[1:] or ["R18-Rd100", "WR50-Rd550", "Lite0-all176"])
