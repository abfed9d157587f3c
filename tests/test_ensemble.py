"""Table I's layer ensemble: the sum of single-layer PaDiM maps, from one shared extraction."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from anombench.conformance import check_method
from anombench.errors import UserError
from anombench.plugins import registry
from anombench_plugins.ensemble import PaDiMLayerEnsemble
from anombench_plugins.padim import PaDiM

from test_padim import make_batch, random_images

TRAIN = [random_images(5, 32, 32), random_images(4, 32, 32, seed=2)]


def fitted(model):
    model.fit([make_batch(images) for images in TRAIN])
    return model


@pytest.mark.parametrize("reduction,n_features", [("random", 30)])  # Rd: each layer draws as its lone model
def test_ensemble_map_is_the_sum_of_single_layer_padim_maps(reduction, n_features):
    ensemble = fitted(PaDiMLayerEnsemble(weights="none", reduction=reduction, n_features=n_features, seed=1))
    singles = [fitted(PaDiM(layers=[layer], weights="none", reduction=reduction, n_features=n_features, seed=1))
               for layer in ("layer1", "layer2", "layer3")]
    batch = make_batch(random_images(3, 32, 32, seed=7))
    expected = sum(single.score_maps(batch).maps for single in singles)
    got = ensemble.score_maps(batch)
    np.testing.assert_allclose(got.maps, expected, rtol=1e-5)
    np.testing.assert_allclose(got.image_scores, got.maps.reshape(3, -1).max(1))
    assert ensemble.model_bytes() == sum(single.model_bytes() for single in singles)


def test_table1_variants_share_one_feature_key():
    keys = {PaDiMLayerEnsemble(weights="none").feature_key(), PaDiM(weights="none").feature_key()}
    keys |= {PaDiM(layers=[layer], weights="none", reduction="none").feature_key() for layer in (1, 2, 3)}
    assert len(keys) == 1


def test_one_extraction_feeds_every_head(tmp_path):
    ensemble = PaDiMLayerEnsemble(weights="none", seed=2)
    calls = []
    ensemble.extractor.register_forward_hook(lambda module, args, out: calls.append(1))
    fitted(ensemble)
    assert len(calls) == len(TRAIN) and len(ensemble.heads) == 3

    path = tmp_path / "ensemble.safetensors"
    ensemble.save(path)
    loaded = PaDiMLayerEnsemble.load(path)
    batch = make_batch(random_images(2, 32, 32, seed=3))
    np.testing.assert_array_equal(loaded.score_maps(batch).maps, ensemble.score_maps(batch).maps)


def test_registered_with_an_annotated_signature():
    assert registry().get("method", "padim_layer_ensemble").factory is PaDiMLayerEnsemble
    for parameter in inspect.signature(PaDiMLayerEnsemble).parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty and parameter.default is not inspect.Parameter.empty


def test_ensemble_passes_the_method_conformance_checks():
    check_method(PaDiMLayerEnsemble, params={"weights": "none", "reduction": "random", "n_features": 10})


@pytest.mark.parametrize("kwargs,message", [
    ({"eps": 0.0}, "eps: must be > 0, got 0.0"),
    ({"n_features": 0}, "n_features: must be >= 1, got 0"),
    ({"reduction": "random", "n_features": 100}, "n_features=100 must be at most 64 (the channels of resnet18 layer1)"),
])
def test_bad_parameters_name_the_ensemble_in_preflight_and_fit(kwargs, message):
    """The ensemble's heads are checked one layer at a time: n_features beyond a single layer's channels fails."""
    ensemble = PaDiMLayerEnsemble(weights="none", **kwargs)
    for step in (ensemble.preflight, ensemble.fit_begin):
        with pytest.raises(UserError) as info:
            step()
        assert str(info.value) == f"padim_layer_ensemble parameter {message}"
