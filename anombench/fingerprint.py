"""A small fingerprint of a cell's anomaly maps, stored as ``fingerprint.json`` next to the cell's record.

Why: the figures of a cell (AUROC, PRO) are coarse summaries; many real bugs move them by less than any sane
tolerance (a missing Gaussian filter, bilinear instead of bicubic upsampling, N instead of N-1 in a covariance),
or even raise them. The maps themselves move far more than run-to-run noise under each of those bugs, so the
CI gate (``anombench compare --exact``) compares these fingerprints as well as the figures, in both directions.

Per cell, the fingerprint keeps, in test-set order:
- every image's id and image score (float64);
- per image, quantiles of its map (``QUANTILES``): the shape of the score distribution, cheap for any image size;
- for the first ``per_label`` normal and the first ``per_label`` anomalous images, the map averaged down to
  ``size`` x ``size`` (where the scores sit, not only how they are spread).
A 90-image cell takes a few kilobytes of JSON. Values are plain floats, so a reader can diff two files by eye.
"""

from __future__ import annotations

import numpy as np
import torch

from anombench.api import Batch, Scores

VERSION = 1
QUANTILES = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)
PARTS = ("image_scores", "quantiles", "maps")  # the arrays ``compare`` checks, in this order


class MapFingerprint:
    """Accumulates a cell's fingerprint while test batches stream by (see the module docstring)."""

    def __init__(self, per_label: int = 2, size: int = 8) -> None:
        self.per_label, self.size = per_label, size
        self.ids: list[str] = []
        self.image_scores: list[float] = []
        self.quantiles: list[list[float]] = []
        self.map_ids: list[str] = []
        self.maps: list[list[list[float]]] = []
        self.kept = {0: 0, 1: 0}  # low-resolution maps kept so far, by label

    def update(self, scores: Scores, batch: Batch) -> None:
        """Add one batch: scores.maps (B, H, W), scores.image_scores (B,), batch.ids and batch.labels."""
        maps = np.asarray(scores.maps, dtype=np.float64)
        self.ids.extend(batch.ids)
        self.image_scores.extend(float(s) for s in np.asarray(scores.image_scores, dtype=np.float64))
        flat = maps.reshape(len(maps), -1)
        self.quantiles.extend(np.quantile(flat, QUANTILES, axis=1).T.tolist())
        for i, label in enumerate(batch.labels.tolist()):
            label = int(bool(label))
            if self.kept[label] < self.per_label:
                self.kept[label] += 1
                self.map_ids.append(batch.ids[i])
                self.maps.append(self._low_resolution(maps[i]).tolist())

    def _low_resolution(self, score_map: np.ndarray) -> np.ndarray:
        """(H, W) -> (size, size) by area averaging (every pixel counts, so a local change shows)."""
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(score_map)[None, None], self.size)
        return pooled[0, 0].numpy()

    def to_json(self) -> dict:
        """The fingerprint as a JSON-ready dict (``version``, ``ids``, and the ``PARTS`` arrays)."""
        return {"version": VERSION, "ids": list(self.ids), "image_scores": list(self.image_scores),
                "quantile_levels": list(QUANTILES), "quantiles": list(self.quantiles),
                "map_ids": list(self.map_ids), "map_size": self.size, "maps": list(self.maps)}


def largest_relative_change(run: dict, baseline: dict) -> dict[str, float]:
    """Per part (``PARTS``), max |run - baseline| divided by the largest |baseline| value of that part.

    Dividing by the part's scale, not element-wise, keeps a map pixel near zero from reading as a huge change.
    Raises ValueError with the reason when the two fingerprints do not describe the same test images.
    """
    if run.get("version") != baseline.get("version"):
        raise ValueError(f"fingerprint version {run.get('version')} vs baseline's {baseline.get('version')}")
    for key in ("ids", "map_ids"):
        if run[key] != baseline[key]:
            raise ValueError(f"different test images ({key}: {len(run[key])} vs baseline's {len(baseline[key])}, "
                             "or other ids)")
    changes = {}
    for part in PARTS:
        ours, theirs = np.asarray(run[part], np.float64), np.asarray(baseline[part], np.float64)
        if ours.shape != theirs.shape:
            raise ValueError(f"{part}: shape {ours.shape} vs baseline's {theirs.shape}")
        scale = float(np.abs(theirs).max()) if theirs.size else 0.0
        diff = float(np.abs(ours - theirs).max()) if theirs.size else 0.0
        changes[part] = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return changes
