"""How fast MVTec-sized images load: 900x900 PNGs decoded, resized to 256 and cropped to 224, in a DataLoader.

Makes synthetic 900x900 RGB PNGs (a smooth pattern plus sensor-like noise, so they compress about as well as
the real photographs, ~1 MB each) in a temporary MVTec layout, then reads one full pass through the MVTec AD
and Rd-MVTec AD train splits with 0, 1 and 2 loader workers, as the runner does, and prints images/second.
Worker start-up is included: it is part of what a run waits for. Each figure is the best of ``--repeats``
passes, because other processes on a shared machine only ever slow a pass down. The CPU time per image
(main process and its reaped workers) is printed too: unlike images/second it hardly depends on what else
the machine is running, and 2 cores can at best load 2000 / (CPU ms per image) images per second.

    python benchmarks/bench_loading.py [--images 96] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from anombench.api import collate
from anombench_plugins.mvtec import MVTecAD, RdMVTecAD

SIDE = 900


def synthetic_photo(seed: int) -> Image.Image:
    """A 900x900 image with smooth structure and mild noise: PNG-compresses roughly like an MVTec photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)).resize((SIDE, SIDE), Image.BICUBIC)
    noise = rng.normal(0, 6, size=(SIDE, SIDE, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def make_category(root: Path, count: int) -> float:
    """Write ``count`` PNGs as bottle/train/good; returns the mean file size in MB."""
    folder = root / "bottle" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(count):
        synthetic_photo(i).save(folder / f"{i:03d}.png")
    return sum(p.stat().st_size for p in folder.iterdir()) / count / 1e6


def cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the loader's workers, once joined)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def one_pass(dataset: MVTecAD, workers: int, batch_size: int) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) of one full pass through a fresh DataLoader."""
    split = dataset.train("bottle", seed=0)
    loader = DataLoader(split, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    seen = sum(len(batch) for batch in loader)  # the exhausted iterator joins its workers
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    assert seen == len(split)
    return seen / elapsed, 1000 * cpu / seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        megabytes = make_category(root, args.images)
        print(f"{args.images} synthetic {SIDE}x{SIDE} PNGs, {megabytes:.2f} MB each; resize 256 + crop 224")
        print(f"{'dataset':<12} {'workers':>7} {'images/s':>9} {'CPU ms/image':>13}")
        for dataset in (MVTecAD(root=tmp), RdMVTecAD(root=tmp)):
            for workers in (0, 1, 2):
                rate, cpu_ms = max(one_pass(dataset, workers, args.batch_size) for _ in range(args.repeats))
                print(f"{dataset.name:<12} {workers:>7} {rate:>9.1f} {cpu_ms:>13.1f}")


if __name__ == "__main__":
    main()
