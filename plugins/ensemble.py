"""The layer ablation of Table I as a method plugin: "Layer 1+2+3" = the sum of single-layer PaDiM maps.

Each layer gets its own PaDiM head (its own grid, its own Gaussians, no cross-layer covariance), all fed by one
backbone pass. A head is built exactly as ``PaDiM(layers=[layer], ...)`` builds its own, with the same seed, so
the ensemble's map equals the sum of the maps of those single-layer models, and its ``feature_key`` equals theirs
and the joint model's: the runner extracts Table I's five variants with one ResNet-18 pass.
"""

from __future__ import annotations

from anombench import hookimpl
from anombench_plugins.backbones import FeatureExtractor, LayerSpec
from anombench_plugins.padim import PadimMethod, Reduction, build_head


class PaDiMLayerEnsemble(PadimMethod):
    """Sum of single-layer PaDiM maps over ``layers`` (default: the backbone's three layers)."""

    KIND = "anombench.padim_layer_ensemble"

    def __init__(self, backbone: str = "resnet18", layers: list[LayerSpec] | None = None, weights: str = "imagenet",
                 reduction: Reduction = "none", n_features: int | None = None, eps: float = 0.01,
                 device: str = "cpu", seed: int = 0) -> None:
        extractor = FeatureExtractor(backbone, layers, weights, device, seed)
        heads = [build_head(extractor, [layer], reduction, n_features, eps, seed) for layer in extractor.layers]
        super().__init__(extractor, heads, dict(backbone=backbone, layers=layers, weights=weights,
                                                reduction=reduction, n_features=n_features, eps=eps, seed=seed))


@hookimpl
def anombench_register_methods(register) -> None:
    register("padim_layer_ensemble", PaDiMLayerEnsemble)
