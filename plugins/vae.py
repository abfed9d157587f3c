"""The VAE baseline of the PaDiM paper (design.md section 1) as a method plugin.

Model: a torchvision ResNet-18 encoder (stem + layer1..4, stride 32; random init or a weights file), a
convolutional latent (per position a Gaussian with ``latent_channels`` channels: 8x8 positions at 256x256), and a
decoder of five stride-2 transposed convolutions back to the input size, sigmoid output in [0, 1]. Fully
convolutional, so any input whose sides are multiples of 32 works and maps come out at input resolution.
Loss per image: squared reconstruction error summed over pixels and channels + ``kl_weight`` x KL(q(z|x) || N(0, I)).
The latent width and the decoder widths are ours: the paper does not give them.

Training follows the paper by default: every epoch draws ``n_augmented`` = 10,000 images from the training set
(each training image equally often, up to one), each augmented afresh: rotation uniform in +-2 degrees, resize the
shorter side to 292, random crop 282, center crop 256; 100 epochs; Adam, lr 1e-4; batch 32.
Test: the reconstruction is decoded from the posterior mean; map = per-pixel L2 norm of (image - reconstruction)
over the RGB channels; image score = the map's maximum.

Reproducibility: all randomness of training (augmentation, order, the reparameterisation noise) comes from
generators the model owns, seeded from ``seed``; the initial weights are drawn inside ``torch.random.fork_rng``
from ``seed``, so the caller's global RNG state is left as it was.

Checkpoints: with ``checkpoint_dir`` set, the full training state (weights, Adam, generators, epoch, loss history)
is written atomically after every epoch to ``vae-<fingerprint>.pt``, where the fingerprint hashes the training
images and every configuration value that changes training except ``epochs``. A later fit with the same data and
configuration resumes from it, and resuming gives exactly the run that was interrupted (one suite can fit many
categories into one directory without clobbering). A checkpoint past the requested ``epochs`` is a UserError, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Iterable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from tqdm.auto import tqdm

from anombench import hookimpl
from anombench.api import Batch, NotFitted, Scores
from anombench.errors import UserError
from anombench.params import Check, Length, PositiveFloat, PositiveInt, Range, check_config
from anombench_plugins.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_spec,
    backbone_units,
    check_weights,
    load_backbone,
)
from anombench_plugins.modelfile import build_from_config, config_of, read_model_file, write_model_file

KIND = "anombench.vae"  # the model file's metadata tag
STRIDE = 32  # ResNet-18's total downsampling: one latent position per 32x32 pixels
STRIDE_MULTIPLE = Check(lambda size: size % STRIDE == 0, f"a multiple of {STRIDE} (the encoder's stride)")
ENCODER_CHANNELS = 512


# ---------------------------------------------------------------------------------------------- the network


def resnet18_encoder(weights: str, seed: int) -> nn.Sequential:
    """ResNet-18 without its pooling and classifier, trainable: (B, 3, H, W) normalised -> (B, 512, H/32, W/32)."""
    spec = backbone_spec("resnet18")
    model = load_backbone("resnet18", weights, seed)
    return nn.Sequential(*[module for _, module in backbone_units(spec, model)]).requires_grad_(True)


def conv_decoder(latent_channels: int, widths: list[int]) -> nn.Sequential:
    """Five stride-2 transposed convolutions (x32 in all), BatchNorm + ReLU between, a 3x3 conv to RGB, sigmoid."""
    layers: list[nn.Module] = []
    channels = latent_channels
    for width in widths:
        layers += [nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.Conv2d(channels, 3, 3, padding=1), nn.Sigmoid())


class ConvVAE(nn.Module):
    """Encoder -> per-position (mu, log variance) -> sampled or mean latent -> decoder."""

    def __init__(self, latent_channels: int, decoder_channels: list[int], weights: str, seed: int) -> None:
        super().__init__()
        self.encoder = resnet18_encoder(weights, seed)
        self.posterior = nn.Conv2d(ENCODER_CHANNELS, 2 * latent_channels, 1)
        self.decoder = conv_decoder(latent_channels, decoder_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log variance) of the latent, each (B, latent_channels, H/32, W/32), for images in [0, 1]."""
        return self.posterior(self.encoder((images - self.mean) / self.std)).chunk(2, dim=1)

    def forward(self, images: torch.Tensor, noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, mu, log variance), z = mu + sigma * eps with eps drawn from ``noise``."""
        mu, logvar = self.encode(images)
        eps = torch.randn(mu.shape, generator=noise, device=mu.device, dtype=mu.dtype)
        return self.decoder(mu + torch.exp(0.5 * logvar) * eps), mu, logvar

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Test pass: decode the posterior mean."""
        return self.decoder(self.encode(images)[0])


def vae_loss(images: torch.Tensor, reconstruction: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float) -> torch.Tensor:
    """Mean over the batch of (sum of squared errors + kl_weight * KL to the standard normal)."""
    squared = (images - reconstruction).pow(2).flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    return (squared + kl_weight * kl).mean()


def reconstruction_error(images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-pixel L2 norm of the RGB error: (B, 3, H, W) -> (B, H, W)."""
    return (images - reconstruction).pow(2).sum(1).sqrt()


# ---------------------------------------------------------------------------------------------- the data


class Augmenter:
    """The paper's augmentation: rotation in +-``rotation`` degrees, resize (shorter side) to ``resize``, random
    crop ``random_crop``, center crop ``crop``; every random draw from ``generator``."""

    def __init__(self, rotation: float, resize: int, random_crop: int, crop: int, generator: torch.Generator) -> None:
        self.rotation, self.resize, self.random_crop, self.crop = rotation, resize, random_crop, crop
        self.generator = generator

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def _offset(self, span: int) -> int:
        return int(torch.randint(span + 1, (), generator=self.generator))

    def one(self, image: torch.Tensor) -> torch.Tensor:
        rotated = TF.rotate(image, self._uniform(-self.rotation, self.rotation), TF.InterpolationMode.BILINEAR)
        resized = TF.resize(rotated, [self.resize], TF.InterpolationMode.BILINEAR, antialias=True)
        top, left = self._offset(resized.shape[-2] - self.random_crop), self._offset(resized.shape[-1] - self.random_crop)
        cropped = TF.crop(resized, top, left, self.random_crop, self.random_crop)
        return TF.center_crop(cropped, [self.crop, self.crop])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.one(image) for image in images]).clamp_(0, 1)


def epoch_order(n_images: int, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    """``n_samples`` training indices in random order, each image drawn equally often (up to one)."""
    repeats = math.ceil(n_samples / n_images)
    return torch.randperm(n_images * repeats, generator=generator)[:n_samples] % n_images


def fingerprint(config: dict[str, Any], images: torch.Tensor) -> str:
    """A short hash of the training images and the configuration: the name of this training run's checkpoint."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_crop_chain(crop: int, random_crop: int, resize: int) -> None:
    """The rule that ties the three augmentation sizes: each crop is taken from the image before it."""
    if not crop <= random_crop <= resize:
        raise UserError(f"VAE parameters need crop <= random_crop <= resize, got {crop}, {random_crop}, {resize}")


# ---------------------------------------------------------------------------------------------- the plugin


class VAE:
    """The paper's VAE baseline (see the module docstring). Every number of the training recipe is a parameter;
    ``checkpoint_dir`` None disables checkpoints; ``progress`` shows a tqdm bar with the running loss.

    The constructor stores its arguments only; the network (initial weights drawn from ``seed``, or read from
    ``weights``) is built when ``fit`` starts."""

    model: ConvVAE | None = None  # built by fit (or load)

    def __init__(self, weights: str = "none", latent_channels: PositiveInt = 64,
                 # five widths: five x2 upsamplings undo the encoder's stride 32
                 decoder_channels: Annotated[tuple[PositiveInt, ...], Length(5, 5)] = (256, 128, 64, 32, 16),
                 n_augmented: PositiveInt = 10_000, epochs: PositiveInt = 100, batch_size: PositiveInt = 32,
                 lr: PositiveFloat = 1e-4, kl_weight: Annotated[float, Range(0, None)] = 1.0,
                 rotation: Annotated[float, Range(0, None)] = 2.0, resize: PositiveInt = 292,
                 random_crop: PositiveInt = 282, crop: Annotated[PositiveInt, STRIDE_MULTIPLE] = 256,
                 checkpoint_dir: str | None = None, progress: bool = True,
                 device: str = "cpu", seed: int = 0) -> None:
        self.weights, self.latent_channels, self.decoder_channels = weights, latent_channels, decoder_channels
        self.n_augmented, self.epochs, self.batch_size, self.lr = n_augmented, epochs, batch_size, lr
        self.kl_weight, self.rotation, self.resize, self.random_crop, self.crop = (kl_weight, rotation, resize,
                                                                                    random_crop, crop)
        self.checkpoint_dir, self.progress, self.device, self.seed = checkpoint_dir, progress, device, seed

    def training_config(self) -> dict[str, Any]:
        """Everything that changes training except ``epochs``: the checkpoint's fingerprint hashes this."""
        return dict(weights=self.weights, latent_channels=self.latent_channels,
                    decoder_channels=list(self.decoder_channels), n_augmented=self.n_augmented,
                    batch_size=self.batch_size, lr=self.lr, kl_weight=self.kl_weight, rotation=self.rotation,
                    resize=self.resize, random_crop=self.random_crop, crop=self.crop,
                    device=str(torch.device(self.device)), seed=self.seed)

    def check_configuration(self) -> None:
        """The configuration against the signature's markers, then the rule that ties the crop sizes together."""
        check_config(self)
        check_crop_chain(self.crop, self.random_crop, self.resize)

    def preflight(self) -> None:
        """A bad configuration or a missing encoder weights file: one line each, nothing built."""
        self.check_configuration()
        check_weights(backbone_spec("resnet18"), self.weights)

    def _initialise(self, weights: str | None = None) -> None:
        """The untrained state for ``seed``: weights, Adam, generators, empty history (``fit`` always starts here).
        ``weights`` overrides the encoder's initial weights (``load`` replaces them all, so it reads none)."""
        self.check_configuration()
        device = torch.device(self.device)
        self.generator = torch.Generator().manual_seed(self.seed)  # augmentation and order
        self.noise = torch.Generator(device=device).manual_seed(self.seed)  # reparameterisation noise
        with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator is touched, then restored
            torch.random.default_generator.manual_seed(self.seed)
            self.model = ConvVAE(self.latent_channels, list(self.decoder_channels), weights or self.weights,
                                 self.seed).to(device)
        # fused: one kernel for all parameters instead of a Python loop over them (several times faster on CPU)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, fused=True)
        self.augment = Augmenter(self.rotation, self.resize, self.random_crop, self.crop, self.generator)
        self.history: list[float] = []  # mean training loss per epoch
        self.epoch = 0

    def fitted(self) -> ConvVAE:
        if self.model is None:
            raise NotFitted("VAE: call fit before scoring or saving")
        return self.model

    # training
    def fit(self, train: Iterable[Batch]) -> None:
        images = torch.cat([batch.images.detach().to("cpu", torch.float32) for batch in train])
        if len(images) == 0:
            raise UserError("VAE needs at least 1 training image")
        self._initialise()
        checkpoint = self._checkpoint_path(images)
        if checkpoint is not None and checkpoint.is_file():
            self._resume(checkpoint)
        steps = math.ceil(self.n_augmented / self.batch_size)
        with tqdm(total=self.epochs * steps, initial=self.epoch * steps, desc="vae", unit="step",
                  disable=not self.progress, leave=False) as bar:
            while self.epoch < self.epochs:
                self.history.append(self._train_epoch(images, bar))
                self.epoch += 1
                if checkpoint is not None:
                    self._save(checkpoint)
        self.model.eval()

    def _train_epoch(self, images: torch.Tensor, bar: tqdm) -> float:
        """One pass over ``n_augmented`` fresh augmentations; returns the mean loss per image."""
        self.model.train()
        order = epoch_order(len(images), self.n_augmented, self.generator)
        total = 0.0
        for indices in order.split(self.batch_size):
            batch = self.augment(images[indices].to(self.device))
            loss = vae_loss(batch, *self.model(batch, self.noise), kl_weight=self.kl_weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(indices)
            bar.update(1)
            bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss.item():.4g}")
        return total / len(order)

    # checkpoints
    def _checkpoint_path(self, images: torch.Tensor) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        directory = Path(self.checkpoint_dir).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"vae-{fingerprint(self.training_config(), images)}.pt"

    def _save(self, path: Path) -> None:
        """Write the whole training state to a temporary file, then rename it over ``path`` (atomic)."""
        state = dict(epoch=self.epoch, history=self.history, model=self.model.state_dict(),
                     optimizer=self.optimizer.state_dict(), generator=self.generator.get_state(),
                     noise=self.noise.get_state())
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, path)

    def _resume(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise UserError(f"VAE checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}); delete it to "
                            "train from scratch") from exc
        if state["epoch"] > self.epochs:
            raise UserError(f"VAE checkpoint '{path}' is at epoch {state['epoch']}, past the requested epochs="
                            f"{self.epochs}; training again would overwrite it: use another checkpoint_dir or delete it")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.noise.set_state(state["noise"].cpu())
        self.epoch, self.history = int(state["epoch"]), list(state["history"])

    # scoring
    @torch.no_grad()
    def score_maps(self, batch: Batch) -> Scores:
        h, w = batch.images.shape[-2:]
        if h % STRIDE or w % STRIDE:
            raise UserError(f"VAE: image size {h}x{w} is not a multiple of {STRIDE} (the encoder's stride); "
                            "resize or crop the dataset to e.g. 256 or 224")
        model = self.fitted().eval()
        images = batch.images.to(self.device, torch.float32)
        maps = reconstruction_error(images, model.reconstruct(images)).cpu().numpy().astype(np.float32)
        return Scores(maps=maps, image_scores=maps.reshape(len(maps), -1).max(1))

    # ModelSize
    def model_bytes(self) -> int:
        tensors = [*self.fitted().parameters(), *self.fitted().buffers()]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    # persistence: the trained network and its configuration (training checkpoints are the separate ``checkpoint_dir``)
    def save(self, path: str | Path) -> None:
        config = config_of(self) | {"trained_epochs": self.epoch, "history": self.history}
        write_model_file(path, KIND, config, self.fitted().state_dict())

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> VAE:
        config, state = read_model_file(path, KIND)
        trained_epochs, history = config.pop("trained_epochs", 0), config.pop("history", [])
        method = build_from_config(path, cls, config | {"progress": False}, device=device)
        # every weight comes from the file: the encoder's initial weights (maybe an offline-missing file) are not read
        method._initialise(weights="none")
        method.fitted().load_state_dict(state)
        method.fitted().eval()
        method.epoch, method.history = trained_epochs, history
        return method


@hookimpl
def anombench_register_methods(register) -> None:
    register("vae", VAE)
