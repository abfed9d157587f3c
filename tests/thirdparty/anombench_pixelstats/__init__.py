"""A third-party method plugin, laid out as an outside author would ship it (tests/test_cli.py installs it).

PixelGaussian: a per-pixel Gaussian over raw colours, fitted by streaming sums; the anomaly map is the
per-pixel Mahalanobis distance with a diagonal covariance. Crude, but real, fast and deterministic.
"""

from __future__ import annotations

from typing import Annotated, Iterable

import numpy as np
import torch

from anombench import hookimpl
from anombench.api import Batch, NotFitted, Scores
from anombench.params import Range


class PixelGaussian:
    def __init__(self, min_std: Annotated[float, Range(0, None, lo_open=True)] = 0.02, device: str = "cpu",
                 seed: int = 0) -> None:
        self.min_std = min_std
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def fit(self, train: Iterable[Batch]) -> None:
        total, total_sq, count = 0.0, 0.0, 0
        for batch in train:
            images = batch.images.double()
            total = total + images.sum(0)
            total_sq = total_sq + (images ** 2).sum(0)
            count += len(batch)
        self.mean = total / count
        self.std = (total_sq / count - self.mean ** 2).clamp_min(0).sqrt().clamp_min(self.min_std)

    def score_maps(self, batch: Batch) -> Scores:
        if self.mean is None:
            raise NotFitted("PixelGaussian: score_maps before fit")
        z = ((batch.images.double() - self.mean) / self.std) ** 2
        maps = z.sum(1).sqrt().float().numpy()
        return Scores(maps=maps, image_scores=maps.reshape(len(batch), -1).max(1).astype(np.float32))


@hookimpl
def anombench_register_methods(register) -> None:
    register("pixel_gaussian", PixelGaussian)
