"""The report's example keeper: bounded memory, and it keeps the images the report promises."""

from __future__ import annotations

import io

import numpy as np
import torch

from anombench.api import Batch, Scores
from anombench.examples import ExampleKeeper


def batch_of(scores: list[float], labels: list[int], start: int, size: int = 16) -> tuple[Scores, Batch]:
    n = len(scores)
    images = torch.rand(n, 3, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    maps = np.stack([np.full((size, size), s, np.float32) for s in scores])
    batch = Batch(images, masks, torch.tensor(labels), [f"img{start + i}" for i in range(n)])
    return Scores(maps, np.array(scores, np.float32)), batch


def test_keeps_highest_anomalies_lowest_anomalies_and_highest_normals_within_bounds():
    rng = np.random.default_rng(0)
    keeper = ExampleKeeper(per_kind=3, size=8)
    all_scores, all_labels = rng.random(200), (np.arange(200) % 2)
    for start in range(0, 200, 16):
        scores, batch = batch_of(list(all_scores[start:start + 16]), list(all_labels[start:start + 16]), start)
        keeper.update(scores, batch)
    chosen = keeper.selection()
    anomalous, normal = all_scores[all_labels == 1], all_scores[all_labels == 0]
    assert [e.score for e in chosen["best"]] == sorted(np.sort(anomalous)[-3:].astype(np.float32).tolist(), reverse=True)
    assert sorted(e.score for e in chosen["missed"]) == np.sort(anomalous)[:3].astype(np.float32).tolist()
    assert sorted(e.score for e in chosen["false_alarm"]) == np.sort(normal)[-3:].astype(np.float32).tolist()
    assert all(len(v) == 3 for v in chosen.values())
    packed = np.load(io.BytesIO(keeper.to_bytes()))
    assert packed["best_images"].shape == (3, 8, 8, 3) and packed["best_images"].dtype == np.uint8
    assert len(packed["all_scores"]) == 200
    np.testing.assert_allclose(packed["best_maps"][:, 0, 0], packed["best_scores"], rtol=1e-3)
