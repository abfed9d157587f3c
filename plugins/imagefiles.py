"""Reading, resizing and cropping images for the file-based dataset plugins (MVTec AD, ShanghaiTech Campus).

A split built here is a list of small ``Record``s (paths and labels, never pixels) plus a picklable
``PairTransform``: the runner's DataLoader workers receive the split by pickling, so it must stay small, and
every worker decodes and resizes its own images, which is what makes loading parallel.

Images go through PIL because the paper's preprocessing is defined on PIL images (torchvision's ``Resize``
on a PIL image calls PIL's resize): bicubic for images, nearest for masks, so masks stay binary.
A mask is any single-channel image where non-zero means anomalous (MVTec stores 0/255, STC 0/1).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from PIL import Image

from anombench.api import Sample
from anombench.errors import UserError

log = logging.getLogger("anombench.data")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# Files that operating systems drop into folders; skipping them is not worth a warning.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


def natural_key(name: str) -> list[str | int]:
    """Sort key that orders "2.jpg" before "10.jpg" (video frames are often not zero-padded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_image_entry(entry: os.DirEntry[str]) -> bool:
    return (
        not entry.name.startswith(".")  # hidden files, including macOS "._000.png" resource forks
        and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        and entry.is_file()
    )


def _log_stray(folder: Path, names: list[str]) -> None:
    """Say which entries were skipped: quietly for OS clutter, as a warning for anything a user put there."""
    clutter = [n for n in names if n.startswith(".") or n.lower() in SYSTEM_FILES]
    others = sorted(set(names) - set(clutter), key=natural_key)
    if clutter:
        log.debug("skipped %d hidden/system entries in %s", len(clutter), folder)
    if others:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        log.warning("skipped %d non-image entries in %s: %s", len(others), folder, shown)


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` in natural order; anything else is skipped with a log line.

    A missing folder gives an empty list: callers decide whether that is an error and say so in their terms.
    """
    if not folder.is_dir():
        return []
    images: list[Path] = []
    stray: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if _is_image_entry(entry):
                images.append(Path(entry.path))
            else:
                stray.append(entry.name)
    _log_stray(folder, stray)
    return sorted(images, key=lambda p: natural_key(p.name))


def list_subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders in natural order (skips ".ipynb_checkpoints", "__MACOSX" and the like)."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))),
        key=lambda p: natural_key(p.name),
    )


def _unreadable(path: str, exc: BaseException) -> UserError:
    return UserError(f"cannot read image {path}: {exc} (re-download the dataset or remove the file)")


def open_rgb(path: str) -> Image.Image:
    """Decode an image fully as RGB (grey-scale and palette images get three equal channels).

    ``convert`` forces the whole decode, so a truncated file fails here, naming the file, and not later
    somewhere inside a model.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports broken files with all three
        raise _unreadable(path, exc) from None


def open_mask(path: str) -> Image.Image:
    """Decode a mask file as a single-channel image."""
    try:
        with Image.open(path) as img:
            return img.convert("L")
    except (OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(path, exc) from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only; cheap enough to check every test image up front."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(str(path), exc) from None


def size_text(size: tuple[int, int]) -> str:
    """(width, height) as users read it: "900x900"."""
    return f"{size[0]}x{size[1]}"


def image_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [0, 1].

    Converted in numpy: torch's multi-threaded elementwise ops on a tensor this small cost more in thread
    hand-off than in arithmetic (30x slower in the main process of a busy 2-core machine).
    """
    channels_first = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    out = np.empty(channels_first.shape, dtype=np.float32)
    np.divide(channels_first, np.float32(255.0), out=out)
    return torch.from_numpy(out)


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """Single-channel PIL mask -> uint8 (H, W) of 0/1."""
    return torch.from_numpy((np.asarray(mask) > 0).astype(np.uint8))


def resize_pair(image: Image.Image, mask: Image.Image, size: int) -> tuple[Image.Image, Image.Image]:
    """Resize to size x size: bicubic for the image, nearest for the mask (as the paper does)."""
    return image.resize((size, size), Image.Resampling.BICUBIC), mask.resize((size, size), Image.Resampling.NEAREST)


def crop_pair(
    image: Image.Image, mask: Image.Image, left: int, top: int, size: int
) -> tuple[Image.Image, Image.Image]:
    box = (left, top, left + size, top + size)
    return image.crop(box), mask.crop(box)


def center_offset(full: int, crop: int) -> int:
    """Offset of a centred crop, rounded like torchvision's CenterCrop so results match the reference code."""
    return int(round((full - crop) / 2.0))


def check_sizes(image_size: int, crop_size: int | None) -> None:
    """Reject sizes that cannot work, naming the parameters as the suite file spells them."""
    if image_size < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    if crop_size is not None and not 1 <= crop_size <= image_size:
        raise UserError(f"crop_size must be between 1 and image_size ({image_size}), got {crop_size}")


PairTransform = Callable[[Image.Image, Image.Image, str], tuple[Image.Image, Image.Image]]
"""(image, mask, sample id) -> (image, mask). The id lets randomised transforms be deterministic per image."""


@dataclass(frozen=True)
class ResizeCrop:
    """The paper's preprocessing: resize to image_size square, then centre-crop crop_size (None: no crop)."""

    image_size: int
    crop_size: int | None

    def __call__(self, image: Image.Image, mask: Image.Image, sample_id: str) -> tuple[Image.Image, Image.Image]:
        image, mask = resize_pair(image, mask, self.image_size)
        if self.crop_size is None or self.crop_size == self.image_size:
            return image, mask
        offset = center_offset(self.image_size, self.crop_size)
        return crop_pair(image, mask, offset, offset, self.crop_size)


class MaskSource(Protocol):
    """Where one sample's ground-truth mask comes from (a PNG file, one frame of a .npy stack, ...)."""

    def load(self) -> Image.Image: ...


@dataclass(frozen=True)
class MaskFile:
    path: str

    def load(self) -> Image.Image:
        return open_mask(self.path)


@dataclass(frozen=True)
class Record:
    """One sample as a split stores it: paths and labels only, so it pickles cheaply to loader workers."""

    image: str
    mask: MaskSource | None  # None: a normal image, whose mask is all zero
    label: int
    id: str


class FileSplit(torch.utils.data.Dataset):
    """A map-style split over records; each item is decoded, checked and transformed on demand."""

    def __init__(self, records: list[Record], transform: PairTransform) -> None:
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image = open_rgb(record.image)
        mask = record.mask.load() if record.mask is not None else Image.new("L", image.size, 0)
        if mask.size != image.size:
            raise UserError(
                f"the mask of {record.image} ({record.mask}) is {size_text(mask.size)} "
                f"but the image is {size_text(image.size)}"
            )
        image, mask = self.transform(image, mask, record.id)
        return Sample(image=image_tensor(image), mask=mask_tensor(mask), label=record.label, id=record.id)


def resolve_root(root: str | None, env_var: str, missing_hint: str) -> Path:
    """The dataset root from the parameter or else the environment variable; a clear error if neither exists.

    ``missing_hint`` says what to download and how; it ends the one-line error.
    """
    chosen = root if root else os.environ.get(env_var)
    if not chosen:
        raise UserError(f"no data root given and {env_var} is not set: {missing_hint.format(root='DIR')}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise UserError(f"data root {path} does not exist: {missing_hint.format(root=path)}")
    return path
