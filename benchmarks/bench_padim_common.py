"""Helpers shared by the PaDiM benchmarks: the real bottle data through the project's own loader, the model
configurations the issue names, and peak-RSS measurement in a fresh child process.

The MVTec AD root (a folder holding ``bottle/`` in the MVTec AD layout) comes from ``--data ROOT`` on a
benchmark's command line or the ``ANOMBENCH_DATA_MVTEC`` environment variable; a benchmark that needs it and has
neither stops with one line saying so. ``--data`` is passed on to child processes through that variable."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from anombench.api import Batch, collate
from anombench_plugins.mvtec import MVTecAD

DATA_ENV = "ANOMBENCH_DATA_MVTEC"
THREADS = 2
BATCH_SIZE = 32

# name -> PaDiM parameters. No pretrained ResNet weights exist offline: those two use a random init, which costs
# exactly the same time and memory; EfficientNet-Lite0 uses the real ImageNet weights of the installed package.
CONFIGS: dict[str, dict] = {
    "R18-Rd100": dict(backbone="resnet18", weights="none", reduction="random", n_features=100),
    "WR50-Rd550": dict(backbone="wide_resnet50_2", weights="none", reduction="random", n_features=550),
    "Lite0-all176": dict(backbone="efficientnet_lite0", weights="imagenet", reduction="none"),
    "Lite0-Rd100": dict(backbone="efficientnet_lite0", weights="imagenet", reduction="random", n_features=100),
}


def take_data_argument(argv: list[str]) -> list[str]:
    """``argv`` without ``--data ROOT`` (or ``--data=ROOT``); ROOT goes to ``ANOMBENCH_DATA_MVTEC`` so that
    ``mvtec_root`` and child processes see it."""
    rest, args = [], iter(argv)
    for arg in args:
        if arg == "--data":
            os.environ[DATA_ENV] = next(args, "")
        elif arg.startswith("--data="):
            os.environ[DATA_ENV] = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest


def mvtec_root() -> Path:
    """The MVTec AD root from ``--data`` / ``ANOMBENCH_DATA_MVTEC``, or exit with one line."""
    root = os.environ.get(DATA_ENV, "")
    if not root:
        raise SystemExit(f"no MVTec AD data: pass --data /path/to/mvtec_ad (the folder holding bottle/) or set "
                         f"{DATA_ENV}")
    if not (Path(root).expanduser() / "bottle").is_dir():
        raise SystemExit(f"{root}: no bottle/ folder there (--data / {DATA_ENV} must name the MVTec AD root)")
    return Path(root).expanduser()


def bottle(split: str, batch_size: int = BATCH_SIZE, workers: int = 0) -> DataLoader:
    """Bottle images decoded from the PNG files on every iteration by the project's MVTec AD loader (resize 256,
    an identity here, then centre crop 224); ``workers`` > 0 decodes in loader processes, overlapping compute."""
    dataset = MVTecAD(root=str(mvtec_root()))
    data = dataset.train("bottle", 0) if split == "train" else dataset.test("bottle", 0)
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


def normal_batch(images: torch.Tensor, first: int) -> Batch:
    """A batch of normal images (zero masks and labels) with ids counted from ``first``."""
    count, size = images.shape[0], images.shape[-2:]
    return Batch(images=images, masks=torch.zeros(count, *size, dtype=torch.uint8),
                 labels=torch.zeros(count, dtype=torch.int64), ids=[str(first + i) for i in range(count)])


def synthetic_batches(n: int, batch_size: int = BATCH_SIZE, size: int = 224) -> Iterator[Batch]:
    """n random 224x224 images, made batch by batch so that the data itself takes no memory."""
    g = torch.Generator().manual_seed(0)
    for start in range(0, n, batch_size):
        yield normal_batch(torch.rand(min(batch_size, n - start), 3, size, size, generator=g), start)


def augmented_bottle(n: int, batch_size: int = BATCH_SIZE) -> Iterator[Batch]:
    """n real training images: bottle's 209 under the 8 rotations and flips of the square (all images under the
    first, then the next), for statistics of real features from more images than the category has."""
    images = torch.cat([batch.images for batch in bottle("train")])

    def variant(i: int) -> torch.Tensor:
        image, turn = images[i % len(images)], i // len(images)
        return torch.rot90(image.flip(-1) if turn >= 4 else image, turn % 4, dims=(-2, -1))

    for start in range(0, n, batch_size):
        yield normal_batch(torch.stack([variant(i) for i in range(start, min(start + batch_size, n))]), start)


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_child(script: str, *args: str) -> dict:
    """Run ``python script --child args...`` in a fresh process and return the JSON it prints last."""
    out = subprocess.run([sys.executable, script, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
