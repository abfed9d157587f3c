"""Keeping a few test images per cell, with their maps, for the report's overlay grid.

Why bounded: a test set can be 42,883 STC frames; the report needs a handful. While batches stream by, this keeps
small thumbnails of the images a reader most wants to see, in bounded heaps:
- best: anomalous images with the highest scores (what the method gets right),
- worst: anomalous images with the lowest scores and normal images with the highest (misses, false alarms),
- typical: a seeded reservoir sample of everything.
It also keeps every image's (id, label, score) so the report can draw the image-level ROC.
"""

from __future__ import annotations

import heapq
import io
import itertools
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from anombench.api import Batch, Scores

THUMBNAIL = 128


@dataclass(order=True)
class Example:
    priority: float
    order: int
    id: str = field(compare=False)
    label: int = field(compare=False)
    score: float = field(compare=False)
    image: np.ndarray = field(compare=False, repr=False)  # (t, t, 3) uint8
    mask: np.ndarray = field(compare=False, repr=False)  # (t, t) uint8
    map: np.ndarray = field(compare=False, repr=False)  # (t, t) float16


def _thumbnails(batch: Batch, scores: Scores, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = torch.nn.functional.interpolate(batch.images.float(), size=(size, size), mode="area")
    masks = torch.nn.functional.interpolate(batch.masks[:, None].float(), size=(size, size), mode="nearest")[:, 0]
    maps = torch.nn.functional.interpolate(torch.from_numpy(scores.maps)[:, None], size=(size, size), mode="area")[:, 0]
    return ((images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
            masks.to(torch.uint8).numpy(), maps.numpy().astype(np.float16))


class ExampleKeeper:
    """Bounded selection of test images (see the module docstring); ``to_bytes`` packs it as an npz."""

    def __init__(self, per_kind: int = 4, seed: int = 0, size: int = THUMBNAIL) -> None:
        self.per_kind, self.size = per_kind, size
        self.heaps: dict[str, list[Example]] = {"best": [], "missed": [], "false_alarm": []}
        self.typical: list[Example] = []
        self.seen = 0
        self.counter = itertools.count()
        self.random = random.Random(seed)
        self.ids: list[str] = []
        self.labels: list[int] = []
        self.scores: list[float] = []

    def _push(self, kind: str, priority: float, make: Callable[[float], Example]) -> None:
        heap = self.heaps[kind]
        if len(heap) < self.per_kind:
            heapq.heappush(heap, make(priority))
        elif priority > heap[0].priority:
            heapq.heapreplace(heap, make(priority))

    def update(self, scores: Scores, batch: Batch) -> None:
        images, masks, maps = _thumbnails(batch, scores, self.size)
        for i, (ident, label, score) in enumerate(zip(batch.ids, batch.labels.tolist(), scores.image_scores.tolist())):
            self.ids.append(ident)
            self.labels.append(int(label))
            self.scores.append(float(score))

            def make(priority: float, i: int = i, ident: str = ident, label: int = label, score: float = score) -> Example:
                return Example(priority, next(self.counter), ident, label, score, images[i], masks[i], maps[i])

            if label:
                self._push("best", score, make)
                self._push("missed", -score, make)
            else:
                self._push("false_alarm", score, make)
            self.seen += 1
            if len(self.typical) < self.per_kind:
                self.typical.append(make(0.0))
            else:
                slot = self.random.randrange(self.seen)
                if slot < self.per_kind:
                    self.typical[slot] = make(0.0)

    def selection(self) -> dict[str, list[Example]]:
        chosen = {kind: sorted(heap, reverse=True) for kind, heap in self.heaps.items()}
        chosen["typical"] = list(self.typical)
        return chosen

    def to_bytes(self) -> bytes:
        """An npz with, per kind, stacked thumbnails, masks, maps, ids, labels and scores, plus every image's
        (id, label, score)."""
        arrays: dict[str, np.ndarray] = {"all_ids": np.array(self.ids), "all_labels": np.array(self.labels, np.int8),
                                         "all_scores": np.array(self.scores, np.float64)}
        for kind, examples in self.selection().items():
            if not examples:
                continue
            arrays[f"{kind}_images"] = np.stack([e.image for e in examples])
            arrays[f"{kind}_masks"] = np.stack([e.mask for e in examples])
            arrays[f"{kind}_maps"] = np.stack([e.map for e in examples])
            arrays[f"{kind}_ids"] = np.array([e.id for e in examples])
            arrays[f"{kind}_labels"] = np.array([e.label for e in examples], np.int8)
            arrays[f"{kind}_scores"] = np.array([e.score for e in examples], np.float64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()
