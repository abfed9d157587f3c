"""The layer ablation of Table I as a method plugin: "Layer 1+2+3" = the sum of single-layer PaDiM maps.

Each layer gets its own PaDiM head (its own grid, its own Gaussians, no cross-layer covariance), all fed by one
backbone pass. A head is built exactly as ``PaDiM(layers=[layer], ...)`` builds its own, with the same seed, so
the ensemble's map equals the sum of the maps of those single-layer models, and its ``feature_key`` equals theirs
and the joint model's: the runner extracts Table I's five variants with one ResNet-18 pass.
"""

from __future__ import annotations

from anombench import hookimpl
from anombench.params import PositiveFloat, PositiveInt
from anombench_plugins.backbones import LayerSpec
from anombench_plugins.padim_head import PadimMethod, Reduction


class PaDiMLayerEnsemble(PadimMethod):
    """Sum of single-layer PaDiM maps over ``layers`` (default: the backbone's three layers). Like PaDiM, the
    constructor stores its arguments only."""

    KIND = "anombench.padim_layer_ensemble"
    NAME = "padim_layer_ensemble"

    def __init__(self, backbone: str = "resnet18", layers: list[LayerSpec] | None = None, weights: str = "imagenet",
                 reduction: Reduction = "none", n_features: PositiveInt | None = None, eps: PositiveFloat = 0.01,
                 device: str = "cpu", seed: int = 0) -> None:
        self.backbone, self.layers, self.weights = backbone, layers, weights
        self.reduction, self.n_features, self.eps = reduction, n_features, eps
        self.device, self.seed = device, seed

    def head_layers(self) -> list[list[str]]:
        return [[layer] for layer in self.features.layers]


@hookimpl
def anombench_register_methods(register) -> None:
    register("padim_layer_ensemble", PaDiMLayerEnsemble)
