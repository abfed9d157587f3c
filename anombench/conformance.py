"""``check_method``: the conformance checks a method plugin runs against itself (like scikit-learn's
``check_estimator``). The built-in methods pass it in the test-suite; a plugin author adds one test::

    from anombench.conformance import check_method
    def test_my_method_conforms():
        check_method(MyMethod, params={"width": 8})

What it checks, each with a message that says what the contract expects:
- the factory takes the suite's params plus ``device`` and ``seed``;
- ``fit`` accepts an iterable of Batches (a one-shot iterator, as the runner gives);
- ``score_maps`` returns Scores: float32 maps at the input resolution, one finite image score per image;
- scoring is per image: a batch scores the same as its images one by one;
- the same seed gives the same scores (reproducibility);
- a method that offers the SharesFeatures hooks gives the same scores through them as through fit/score_maps;
- ``model_bytes`` (if offered) is a positive int; ``save``/``load`` (if offered) round-trip the scores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from anombench.api import Batch, Method, Scores, shares_features

def tiny_batches(n_batches: int, batch_size: int, size: int, seed: int, anomalous: bool) -> list[Batch]:
    """Smooth random images (normal) or the same with a bright square (anomalous), with exact masks."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        coarse = torch.rand(batch_size, 3, 4, 4, generator=gen)
        images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        masks = torch.zeros(batch_size, size, size, dtype=torch.uint8)
        labels = torch.zeros(batch_size, dtype=torch.int64)
        if anomalous:
            lo, hi = size // 3, size // 3 + max(4, size // 5)
            images[1::2, :, lo:hi, lo:hi] = 1.0
            masks[1::2, lo:hi, lo:hi] = 1
            labels[1::2] = 1
        ids = [f"{'test' if anomalous else 'train'}/{b}/{i}" for i in range(batch_size)]
        batches.append(Batch(images.contiguous(), masks, labels, ids))
    return batches


def _fitted(factory: Callable[..., Method], params: dict[str, Any], train: list[Batch]) -> Method:
    method = factory(**params, device="cpu", seed=0)
    method.fit(iter(train))
    return method


def _check_scores(scores: Any, batch: Batch) -> Scores:
    assert isinstance(scores, Scores), f"score_maps must return anombench.api.Scores, got {type(scores).__name__}"
    b, _, h, w = batch.images.shape
    assert scores.maps.shape == (b, h, w), f"maps must be (B, H, W) = {(b, h, w)} at input resolution, got {scores.maps.shape}"
    assert scores.maps.dtype == np.float32, f"maps must be float32, got {scores.maps.dtype}"
    assert np.isfinite(scores.maps).all(), "maps must be finite"
    assert np.isfinite(scores.image_scores).all(), "image scores must be finite"
    return scores


def _assert_close(a: Scores, b: Scores, what: str, rtol: float) -> None:
    scale = max(float(np.abs(a.maps).max()), 1e-12)
    assert np.allclose(a.maps, b.maps, rtol=rtol, atol=rtol * scale), f"{what}: maps differ"
    assert np.allclose(a.image_scores, b.image_scores, rtol=rtol, atol=rtol * scale), f"{what}: image scores differ"


def _scores_via_shared_hooks(method: Method, train: list[Batch], batch: Batch) -> Scores:
    method.fit_begin()
    for train_batch in train:
        method.fit_step(method.extract(train_batch.images))
    method.fit_end()
    return method.score_features(method.extract(batch.images), batch)


def check_method(factory: Callable[..., Method], params: dict[str, Any] | None = None, image_size: int = 64,
                 rtol: float = 1e-4) -> None:
    """Run every conformance check on ``factory`` with ``params``; raises AssertionError naming the failure."""
    params = dict(params or {})
    train = tiny_batches(2, 4, image_size, seed=1, anomalous=False)
    test = tiny_batches(1, 4, image_size, seed=2, anomalous=True)[0]
    method = _fitted(factory, params, train)
    assert hasattr(method, "score_maps"), "a method needs score_maps(batch)"
    scores = _check_scores(method.score_maps(test), test)

    singles = [_check_scores(method.score_maps(test.slice(i, i + 1)), test.slice(i, i + 1)) for i in range(len(test))]
    joined = Scores(np.concatenate([s.maps for s in singles]), np.concatenate([s.image_scores for s in singles]))
    _assert_close(scores, joined, "a batch must score like its images one by one", rtol)

    again = _fitted(factory, params, train)
    _assert_close(scores, _check_scores(again.score_maps(test), test), "the same seed must give the same scores", rtol)

    if shares_features(method):
        fresh = factory(**params, device="cpu", seed=0)
        assert isinstance(fresh.feature_key(), str), "feature_key() must return a str"
        shared = _check_scores(_scores_via_shared_hooks(fresh, train, test), test)
        _assert_close(scores, shared, "the SharesFeatures hooks must give the same scores as fit/score_maps", rtol)

    if callable(getattr(method, "model_bytes", None)):
        size = method.model_bytes()
        assert isinstance(size, int) and size > 0, f"model_bytes() must be a positive int, got {size!r}"

    if callable(getattr(method, "save", None)) and callable(getattr(type(method), "load", None)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            method.save(path)
            loaded = type(method).load(path, device="cpu")
            _assert_close(scores, _check_scores(loaded.score_maps(test), test), "save/load must keep the scores", rtol)
