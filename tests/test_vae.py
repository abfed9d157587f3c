"""The VAE baseline: the plugin contract, the augmentation recipe, checkpoint + resume that reproduces an
uninterrupted run, its own RNG, and a smoke training on synthetic data where the loss falls and defects light up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anombench.api import collate
from anombench.conformance import check_method, tiny_batches
from anombench.errors import UserError
from anombench_plugins.metrics import auroc
from anombench_plugins.modelfile import config_of
from anombench_plugins.synthetic import SyntheticDataset
from anombench_plugins.vae import VAE, Augmenter, epoch_order

# 64x64 inputs: the paper's recipe scaled down (292/282/256 -> 72/68/64), narrow decoder, a few steps
SMALL = dict(resize=72, random_crop=68, crop=64, latent_channels=8, decoder_channels=[16, 16, 16, 16, 16],
             n_augmented=8, batch_size=4, epochs=1, lr=1e-3, progress=False)


def test_vae_conforms() -> None:
    check_method(VAE, params=SMALL)


def test_a_saved_vae_keeps_its_configuration_and_training_history(tmp_path: Path) -> None:
    method = VAE(**(SMALL | {"epochs": 2}), device="cpu", seed=3)
    method.fit(iter(tiny_batches(1, 4, 64, seed=1, anomalous=False)))
    method.save(tmp_path / "vae.safetensors")
    loaded = VAE.load(tmp_path / "vae.safetensors")
    assert config_of(loaded) == config_of(method) and loaded.epochs == 2
    assert loaded.epoch == 2 and loaded.history == method.history
    batch = tiny_batches(1, 2, 64, seed=2, anomalous=True)[0]
    assert np.array_equal(loaded.score_maps(batch).maps, method.score_maps(batch).maps)


def test_vae_is_registered(registry) -> None:
    assert registry.get("method", "vae").factory is VAE


def test_paper_recipe_is_the_default() -> None:
    vae = VAE(device="cpu", seed=0)
    assert vae.model is None  # the constructor builds nothing
    assert (vae.n_augmented, vae.epochs, vae.batch_size, vae.lr) == (10_000, 100, 32, 1e-4)
    assert (vae.rotation, vae.resize, vae.random_crop, vae.crop) == (2.0, 292, 282, 256)
    vae._initialise()
    mu, _ = vae.model.encode(torch.rand(1, 3, 256, 256))
    assert mu.shape[-2:] == (8, 8)  # the paper's 8x8 convolutional latent


def test_augmenter_gives_crops_of_the_rotated_resized_image() -> None:
    """Without rotation, the output is a 256 window of the 292 resize, offset by 13 + (0..10) pixels."""
    image = torch.linspace(0, 1, 256).expand(3, 256, 256).contiguous()  # a horizontal ramp
    out = Augmenter(0.0, 292, 282, 256, torch.Generator().manual_seed(0))(image[None])
    assert out.shape == (1, 3, 256, 256)
    resized = torch.nn.functional.interpolate(image[None], size=(292, 292), mode="bilinear", antialias=True,
                                              align_corners=False)[0]
    left = int(torch.argmin((resized[0, 0] - out[0, 0, 0, 0]).abs()))
    assert 13 <= left <= 23
    assert torch.allclose(out[0], resized[:, :256, left:left + 256], atol=1e-5)  # every row of a ramp is alike


def test_epoch_order_draws_every_image_equally_often() -> None:
    order = epoch_order(5, 23, torch.Generator().manual_seed(0))
    counts = np.bincount(order.numpy(), minlength=5)
    assert len(order) == 23 and counts.min() >= 4 and counts.max() <= 5


def test_training_leaves_the_global_rng_alone() -> None:
    before = torch.random.get_rng_state()
    VAE(**SMALL, device="cpu", seed=3).fit(iter(tiny_batches(1, 4, 64, seed=1, anomalous=False)))
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.slow  # five short fits and three 130 MB checkpoints (ResNet-18 + Adam moments)
def test_resuming_a_checkpoint_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    train = tiny_batches(1, 4, 64, seed=1, anomalous=False)
    straight = VAE(**(SMALL | {"epochs": 2}), device="cpu", seed=0)
    straight.fit(iter(train))

    first = VAE(**SMALL, checkpoint_dir=str(tmp_path), device="cpu", seed=0)  # "interrupted" after epoch 1
    first.fit(iter(train))
    resumed = VAE(**(SMALL | {"epochs": 2}), checkpoint_dir=str(tmp_path), device="cpu", seed=0)
    resumed.fit(iter(train))

    assert resumed.history[0] == first.history[0] and len(resumed.history) == 2
    assert resumed.history == straight.history
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(list(tmp_path.glob("vae-*.pt"))) == 1
    with pytest.raises(UserError, match="past the requested epochs=1"):  # a shorter run must not overwrite it
        VAE(**SMALL, checkpoint_dir=str(tmp_path), device="cpu", seed=0).fit(iter(train))

    other_data = tiny_batches(1, 4, 64, seed=9, anomalous=False)  # another category: its own checkpoint
    VAE(**SMALL, checkpoint_dir=str(tmp_path), device="cpu", seed=0).fit(iter(other_data))
    assert len(list(tmp_path.glob("vae-*.pt"))) == 2


def test_inputs_must_be_multiples_of_the_stride() -> None:
    vae = VAE(**SMALL, device="cpu", seed=0)
    vae._initialise()
    with pytest.raises(UserError, match="multiple of 32"):
        vae.score_maps(tiny_batches(1, 1, 48, seed=0, anomalous=False)[0])


@pytest.mark.parametrize("params,message", [
    (dict(crop=96), "parameters need crop <= random_crop <= resize, got 96, 68, 72"),
    (dict(crop=64, random_crop=80), "parameters need crop <= random_crop <= resize, got 64, 80, 72"),
    (dict(crop=60, random_crop=60, resize=64),
     "parameter crop: must be a multiple of 32 (the encoder's stride), got 60"),
    (dict(crop=0), "parameter crop: must be >= 1, got 0"),
    (dict(decoder_channels=[8, 8]), "parameter decoder_channels: must have exactly 5 items, got 2"),
    (dict(decoder_channels=[8, 8, 0, 8, 8]), "parameter decoder_channels: item 2: must be >= 1, got 0"),
    (dict(lr=0.0), "parameter lr: must be > 0, got 0.0"),
    (dict(epochs=0), "parameter epochs: must be >= 1, got 0"),
    (dict(kl_weight=-1.0), "parameter kl_weight: must be >= 0, got -1.0"),
    (dict(rotation=-2.0), "parameter rotation: must be >= 0, got -2.0"),
])
def test_bad_parameters_are_user_errors(params: dict, message: str) -> None:
    """The signature's markers (check_config) and the crop chain hold for a VAE built in Python: in preflight and
    when the fit begins."""
    vae = VAE(**(SMALL | params), device="cpu", seed=0)  # stores, checks nothing
    with pytest.raises(UserError) as info:
        vae.preflight()
    assert str(info.value) == f"VAE {message}"
    with pytest.raises(UserError) as info:
        vae.fit(iter(tiny_batches(1, 2, 64, seed=0, anomalous=False)))
    assert str(info.value) == f"VAE {message}"


def test_preflight_names_a_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.pth' does not exist"):
        VAE(**SMALL, weights=str(tmp_path / "nope.pth"), device="cpu", seed=0).preflight()


def pixel_auroc(vae: VAE, test) -> float:
    return auroc(vae.score_maps(test).maps.ravel(), test.masks.numpy().ravel())


@pytest.mark.slow
def test_smoke_training_loss_falls_and_defects_light_up() -> None:
    """An untrained VAE already scores extreme colours high (its output is flat grey), so learning must be shown
    against it: after 16 steps on 16 synthetic discs the defect pixels stand out far better."""
    data = SyntheticDataset(categories=["disc"], image_size=64, n_train=16, n_test_good=4, n_test_defective=8,
                            defects=["scratch", "spot", "crack", "color", "missing"])  # the kinds a VAE sees in 16 steps
    train_split, test_split = data.train("disc", 0), data.test("disc", 0)
    train = [collate([train_split[i] for i in range(start, start + 8)]) for start in (0, 8)]
    test = collate([test_split[i] for i in range(len(test_split))])
    smoke = SMALL | dict(latent_channels=16, decoder_channels=[32, 32, 16, 16, 16], n_augmented=32, batch_size=8,
                         epochs=4, lr=2e-3)

    vae = VAE(**smoke, device="cpu", seed=0)
    vae._initialise()  # the untrained network fit starts from
    untrained = pixel_auroc(vae, test)
    vae.fit(iter(train))
    trained = pixel_auroc(vae, test)

    assert vae.history[-1] < 0.5 * vae.history[0]
    assert all(later < earlier for earlier, later in zip(vae.history, vae.history[1:]))
    assert trained > 0.9 and trained > untrained + 0.05, (untrained, trained)
