"""PaDiM speed on the real bottle data at 2 CPU threads: end to end (PNG files -> maps) beside the backbone's own
forward pass measured in the same process on the same batches, plus fit seconds and fit peak RSS on the 209
training images. Every configuration runs in a fresh child process so its peak RSS is its own.

End to end is timed twice: decoding in the main process (workers 0) and in one loader process (workers 1), which
overlaps decoding with compute as the runner can. The decoding time alone is printed too, and the load average,
because the two cores are shared with other work: each figure is the best of REPEATS runs, in wall time and in
this process's CPU time (which contention disturbs much less; not shown for workers 1, whose decoding runs in
another process).

    python benchmarks/bench_padim_speed.py [CONFIG ...] [--data MVTEC_ROOT]
        (default configs: R18-Rd100 WR50-Rd550 Lite0-all176; the data root may come from ANOMBENCH_DATA_MVTEC)
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from anombench_plugins.padim import PaDiM

from bench_padim_common import (BATCH_SIZE, CONFIGS, THREADS, bottle, mvtec_root, peak_rss_gb, run_child,
                                take_data_argument)

REPEATS = 3


def best_seconds(fn, repeats: int = REPEATS) -> tuple[float, float]:
    """(wall, CPU) seconds, each the best of ``repeats``: CPU time of this process (all its threads) is far less
    disturbed than wall time when other jobs share the cores."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def consume(results) -> None:
    """Run a generator, dropping each result at once, as a pipeline does (keeping them all would time the
    allocation of ever more memory instead)."""
    for _ in results:
        pass


def measure(name: str) -> dict:
    torch.set_num_threads(THREADS)
    model = PaDiM(**CONFIGS[name], device="cpu", seed=0)
    fit_seconds = best_seconds(lambda: model.fit(bottle("train")), repeats=1)[0]
    fit_rss = peak_rss_gb()
    preloaded = list(bottle("test"))
    n = sum(len(b) for b in preloaded)
    timings = {
        "decode": best_seconds(lambda: list(bottle("test"))),
        "forward": best_seconds(lambda: consume(model.extract(b.images) for b in preloaded)),
        "e2e_w0": best_seconds(lambda: consume(model.score_maps(b) for b in bottle("test"))),
        "e2e_w1": best_seconds(lambda: consume(model.score_maps(b) for b in bottle("test", workers=1))),
    }
    per_image = {f"{k}_{kind}_ms": 1e3 * t[i] / n for k, t in timings.items() for i, kind in enumerate(("wall", "cpu"))}
    return dict(config=name, fit_s=fit_seconds, fit_peak_rss_gb=fit_rss, model_gb=model.model_bytes() / 1e9,
                load_avg=os.getloadavg()[0], **per_image)


def main(names: list[str]) -> None:
    print(f"PaDiM on bottle (83 test images), {THREADS} threads, batch {BATCH_SIZE}, 224x224; R18/WR50 random init "
          "(no offline weights; same cost), Lite0 real ImageNet weights. ms per image, wall | process CPU.")
    print(f"{'config':<14}{'fit s':>7}{'fit RSS GB':>11}{'decode':>14}{'forward':>14}{'e2e w0':>14}"
          f"{'ratio w0':>13}{'e2e w1 wall':>12}{'ratio':>6}{'model GB':>9}{'load':>6}")
    for name in names:
        r = run_child(__file__, name)
        pair = [f"{r[f'{k}_wall_ms']:>7.1f}|{r[f'{k}_cpu_ms']:<6.1f}" for k in ("decode", "forward", "e2e_w0")]
        ratio = f"{r['e2e_w0_wall_ms'] / r['forward_wall_ms']:.2f}|{r['e2e_w0_cpu_ms'] / r['forward_cpu_ms']:.2f}"
        print(f"{r['config']:<14}{r['fit_s']:>7.1f}{r['fit_peak_rss_gb']:>11.2f}{''.join(pair)}{ratio:>13}"
              f"{r['e2e_w1_wall_ms']:>12.1f}{r['e2e_w1_wall_ms'] / r['forward_wall_ms']:>6.2f}"
              f"{r['model_gb']:>9.3f}{r['load_avg']:>6.1f}", flush=True)


if __name__ == "__main__":
    argv = take_data_argument(sys.argv[1:])
    if argv[:1] == ["--child"]:
        print(json.dumps(measure(argv[1])))
    else:
        mvtec_root()  # a missing data root is one line here, not a child's traceback
        main(argv or ["R18-Rd100", "WR50-Rd550", "Lite0-all176"])
