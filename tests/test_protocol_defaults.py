"""The paper's protocol values on the metric side, pinned through the registered metrics' *defaults* (issue 16.1):
PRO integrates up to an FPR of 0.3 and its regions are 8-connected. The method side (eps 0.01, sigma 4 with
scipy's truncation, bicubic upsampling, image score = max, seeded Rd) is pinned in tests/test_padim.py.

One hand-computed case checks both at once. Normal pixels score 0; defect pixels p1 and p2 touch only
diagonally and form one region R; a lone defect pixel B is a second region. p1 and B score 1, p2 scores 0.
At threshold 1: FPR 0, overlaps R 1/2, B 1 -> PRO a = 3/4 (4-connected regions would give {p1}, {p2}, {B} ->
2/3). At threshold 0: FPR 1, PRO 1. The curve is the straight line between, so the area up to FPR L divided by
L is (a + a + L (1 - a)) / 2: 0.7875 for L = 0.3 (0.775 for L = 0.2; 0.7167 with 4-connected regions).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anombench.api import Batch, Scores


def diagonal_case() -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((2, 6, 6), np.uint8)
    masks[0, 2, 2] = masks[0, 3, 3] = 1  # p1, p2: one 8-connected region
    masks[1, 4, 1] = 1  # B
    maps = np.zeros((2, 6, 6), np.float32)
    maps[0, 2, 2] = maps[1, 4, 1] = 1.0
    return maps, masks


def test_registered_pro_defaults_are_fpr_limit_0_3_and_8_connected_regions(registry):
    maps, masks = diagonal_case()
    pro = registry.get("metric", "pro").factory()
    pro.update(Scores(maps, maps.reshape(2, -1).max(1)),
               Batch(torch.zeros(2, 3, 6, 6), torch.from_numpy(masks), torch.tensor([1, 1]), ["a", "b"]))
    assert pro.compute(None) == pytest.approx(0.7875, abs=1e-12)


def test_pro_score_defaults_match_the_metric(registry):
    from anombench_plugins.metrics import defect_region_sizes, pro_score

    maps, masks = diagonal_case()
    assert pro_score(maps, masks) == pytest.approx(0.7875, abs=1e-12)
    sizes, n_regions = defect_region_sizes(masks)
    assert n_regions == 2 and sizes.tolist() == [2, 2, 1]
