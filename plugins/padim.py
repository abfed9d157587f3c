"""PaDiM (Defard et al., ICPR 2020): one Gaussian per patch position over pretrained CNN features.

The module is the plugin; the parts are elsewhere so each can be read alone:
- ``anombench_plugins.padim_stats``: streaming float64 moments, the per-position Gaussians (Cholesky whitening
  factors stored by row blocks) and why they are computed that way;
- ``anombench_plugins.padim_head``: embedding (nearest-upsampled concat), Rd/PCA reduction, distances, and the
  ``PadimMethod`` skeleton shared with the layer ensemble;
- ``anombench_plugins.components``: the pretrained extraction and the map post-processing (bicubic upsampling to
  the input size, Gaussian filter sigma 4 = scipy's, image score = max of the map).

The constructor stores its arguments and builds nothing: the backbone is loaded on the first ``extract`` and the
seeded Rd draw is made in ``fit_begin``; ``feature_key`` and ``preflight`` need only the configuration.
"""

from __future__ import annotations

from anombench import hookimpl
from anombench.params import PositiveFloat, PositiveInt
from anombench_plugins.backbones import LayerSpec
from anombench_plugins.padim_head import PadimHead, PadimMethod, Reduction


class PaDiM(PadimMethod):
    """PaDiM as an anombench method: one backbone pass, one head over all layers, maps at input resolution.

    ``n_features`` None: the paper's Rd size (100 for resnet18, 550 for wide_resnet50_2; all channels for other
    backbones). ``weights``: "imagenet", "none" (random init from ``seed``) or a file (see
    ``anombench_plugins.backbones``). ``eps`` is added to every covariance's diagonal (the paper's 0.01).
    """

    KIND = "anombench.padim"
    NAME = "PaDiM"

    def __init__(self, backbone: str = "resnet18", layers: list[LayerSpec] | None = None, weights: str = "imagenet",
                 reduction: Reduction = "random", n_features: PositiveInt | None = None, eps: PositiveFloat = 0.01,
                 device: str = "cpu", seed: int = 0) -> None:
        self.backbone, self.layers, self.weights = backbone, layers, weights
        self.reduction, self.n_features, self.eps = reduction, n_features, eps
        self.device, self.seed = device, seed

    def head_layers(self) -> list[list[str]]:
        return [self.features.layers]

    @property
    def head(self) -> PadimHead:
        """The one head (after ``fit_begin``)."""
        if self.heads is None:
            raise RuntimeError("PaDiM: the head is made by fit (fit_begin)")
        return self.heads[0]


@hookimpl
def anombench_register_methods(register) -> None:
    register("padim", PaDiM)
