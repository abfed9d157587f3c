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
from typing import Any, Callable, Protocol

import numpy as np
import torch
from PIL import Image

from anombench.api import Sample
from anombench.errors import UserError
from anombench.params import check_arguments
from anombench_plugins.pixels import oriented_size, read_samples, warn_if_low_bits

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


@dataclass(frozen=True)
class FloatImage:
    """An image deeper than 8 bits (16-bit, float, or composited alpha) as PIL "F" bands in [0, 1], one per channel.

    It offers the few PIL operations the transforms use (resize, crop, rotate), band by band, so 16-bit data is
    resized in float and not narrowed to 8 bits first. 8-bit images stay ``PIL.Image`` in mode RGB and take
    exactly the path they always took, so published figures on 8-bit data do not move.
    """

    bands: tuple[Image.Image, ...]

    @classmethod
    def from_array(cls, values: np.ndarray) -> "FloatImage":
        """(H, W, C) float32 in [0, 1], C = 1 or 3."""
        return cls(tuple(Image.fromarray(np.ascontiguousarray(values[..., c])) for c in range(values.shape[2])))

    @property
    def size(self) -> tuple[int, int]:
        return self.bands[0].size

    def resize(self, size: tuple[int, int], resample: Image.Resampling) -> "FloatImage":
        return FloatImage(tuple(band.resize(size, resample) for band in self.bands))

    def crop(self, box: tuple[int, int, int, int]) -> "FloatImage":
        return FloatImage(tuple(band.crop(box) for band in self.bands))

    def rotate(self, angle: float, resample: Image.Resampling, fillcolor: object = None) -> "FloatImage":
        """Uncovered corners become 0 (black), as for 8-bit images."""
        return FloatImage(tuple(band.rotate(angle, resample=resample, fillcolor=0.0) for band in self.bands))

    def to_array(self) -> np.ndarray:
        """float32 (3, H, W) in [0, 1]: grey is repeated to three channels; bicubic overshoot is clipped, as
        PIL clips it for 8-bit images."""
        channels = np.stack([np.asarray(band, dtype=np.float32) for band in self.bands])
        if channels.shape[0] == 1:
            channels = np.repeat(channels, 3, axis=0)
        return np.clip(channels, 0.0, 1.0)


AnyImage = Image.Image | FloatImage


def open_image(path: str) -> AnyImage:
    """Decode an image fully and faithfully (see ``pixels``): 8-bit grey/colour/palette as PIL RGB, anything
    deeper or with alpha as a ``FloatImage``. A truncated or unreadable file fails here, naming the file."""
    samples = read_samples(path)
    warn_if_low_bits(path, samples)
    if samples.eight_bit and samples.values.shape[2] in (1, 3):
        return Image.fromarray(samples.values[..., 0] if samples.values.shape[2] == 1 else samples.values).convert("RGB")
    return FloatImage.from_array(samples.normalised())


def open_mask(path: str) -> Image.Image:
    """Decode a mask file as a single-channel 0/255 image: any non-zero sample (at any bit depth, in any colour
    channel, where alpha is not zero) is anomalous."""
    samples = read_samples(path)
    values = samples.values
    if values.shape[2] in (2, 4):
        colour = np.any(values[..., :-1] != 0, axis=2) & (values[..., -1] != 0)
    else:
        colour = np.any(values != 0, axis=2)
    return Image.fromarray(colour.astype(np.uint8) * np.uint8(255))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image is meant to be seen (EXIF orientation applied), from the header only;
    cheap enough to check every test image up front."""
    try:
        with Image.open(path) as img:
            return oriented_size(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(str(path), exc) from None


def size_text(size: tuple[int, int]) -> str:
    """(width, height) as users read it: "900x900"."""
    return f"{size[0]}x{size[1]}"


def image_tensor(image: AnyImage) -> torch.Tensor:
    """RGB PIL image or FloatImage -> float32 (3, H, W) in [0, 1].

    Converted in numpy: torch's multi-threaded elementwise ops on a tensor this small cost more in thread
    hand-off than in arithmetic (30x slower in the main process of a busy 2-core machine).
    """
    if isinstance(image, FloatImage):
        return torch.from_numpy(image.to_array())
    channels_first = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    out = np.empty(channels_first.shape, dtype=np.float32)
    np.divide(channels_first, np.float32(255.0), out=out)
    return torch.from_numpy(out)


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """Single-channel PIL mask -> uint8 (H, W) of 0/1."""
    return torch.from_numpy((np.asarray(mask) > 0).astype(np.uint8))


def resize_pair(image: AnyImage, mask: Image.Image, size: int) -> tuple[AnyImage, Image.Image]:
    """Resize to size x size: bicubic for the image, nearest for the mask (as the paper does)."""
    return image.resize((size, size), Image.Resampling.BICUBIC), mask.resize((size, size), Image.Resampling.NEAREST)


def crop_pair(
    image: AnyImage, mask: Image.Image, left: int, top: int, size: int
) -> tuple[AnyImage, Image.Image]:
    box = (left, top, left + size, top + size)
    return image.crop(box), mask.crop(box)


def center_offset(full: int, crop: int) -> int:
    """Offset of a centred crop, rounded like torchvision's CenterCrop so results match the reference code."""
    return int(round((full - crop) / 2.0))


def check_sizes(dataset: Callable[..., Any], where: str, image_size: int | None, crop_size: int | None) -> None:
    """Reject sizes that cannot work, naming the parameters as the suite file spells them: each against the
    ``dataset`` class's signature markers (a positive number of pixels), then the rule that ties them.

    ``image_size: null`` keeps each image's own resolution (the official MVTec AD evaluation's); a crop then
    needs a resize to crop from, so ``crop_size`` must be null too.
    """
    given = {"image_size": image_size} | ({"crop_size": crop_size} if crop_size is not None else {})
    check_arguments(dataset, given, where)
    if image_size is None:
        if crop_size is not None:
            raise UserError(f"crop_size {crop_size} needs an image_size to crop from; set both, or both to null "
                            "(native resolution)")
        return
    if crop_size is not None and not crop_size <= image_size:
        raise UserError(f"crop_size must be between 1 and image_size ({image_size}), got {crop_size}")


def check_one_size(paths: list[Path], where: str) -> None:
    """At native resolution every image of a category must have one size: the runner stacks a batch into one
    tensor, and a method fitted at one size cannot score another. The error names one image of each size."""
    first: dict[tuple[int, int], Path] = {}
    for path in paths:
        first.setdefault(image_size(path), path)
        if len(first) > 1:
            (a, pa), (b, pb) = list(first.items())[:2]
            raise UserError(
                f"{where}: images differ in size ({pa} is {size_text(a)}, {pb} is {size_text(b)}); "
                "native resolution (image_size: null) needs one size per category: set image_size"
            )


PairTransform = Callable[[AnyImage, Image.Image, str], tuple[AnyImage, Image.Image]]
"""(image, mask, sample id) -> (image, mask). The id lets randomised transforms be deterministic per image."""


@dataclass(frozen=True)
class ResizeCrop:
    """The paper's preprocessing: resize to image_size square, then centre-crop crop_size (None: no crop);
    image_size None: the image's own resolution, untouched."""

    image_size: int | None
    crop_size: int | None

    def __call__(self, image: AnyImage, mask: Image.Image, sample_id: str) -> tuple[AnyImage, Image.Image]:
        if self.image_size is None:
            return image, mask
        image, mask = resize_pair(image, mask, self.image_size)
        if self.crop_size is None or self.crop_size == self.image_size:
            return image, mask
        offset = center_offset(self.image_size, self.crop_size)
        return crop_pair(image, mask, offset, offset, self.crop_size)


class MaskLookup:
    """The mask files of one folder, found by image stem whatever the case of name or extension, so any file
    the image listing accepts is accepted as a mask too ("000_mask.PNG" for "000.png")."""

    def __init__(self, folder: Path, suffixes: tuple[str, ...] = ("_mask", "")) -> None:
        self.folder = folder
        self.suffixes = suffixes
        self.by_stem = {p.stem.lower(): p for p in list_images(folder)}

    def find(self, stem: str) -> Path | None:
        """The mask of the image named ``stem``: ``<stem><suffix>.<any image extension>`` for each suffix."""
        for suffix in self.suffixes:
            if (found := self.by_stem.get(f"{stem}{suffix}".lower())) is not None:
                return found
        return None

    def near_misses(self, stem: str) -> list[str]:
        """Files in the folder whose names start with the stem but are not a mask we accept (wrong extension,
        a typo in the suffix): named in the error so the user sees why."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.name.lower().startswith(stem.lower()))

    def extra(self, image_stems: set[str], where: str) -> list[str]:
        """One line per mask here that no image of ``image_stems`` (lower case) claims: a renamed or deleted image."""
        claimed = {f"{stem}{suffix}".lower() for stem in image_stems for suffix in self.suffixes}
        return [f"extra mask: {path} has no image in {where}" for key, path in self.by_stem.items() if key not in claimed]

    def expected(self, stem: str) -> str:
        found = ", ".join(self.near_misses(stem)[:3])
        return f"{self.folder / (stem + self.suffixes[0])}.png" + (f"; found {found}" if found else "")


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
        image = open_image(record.image)
        mask = record.mask.load() if record.mask is not None else Image.new("L", image.size, 0)
        if mask.size != image.size:
            raise UserError(
                f"the mask of {record.image} ({record.mask}) is {size_text(mask.size)} "
                f"but the image is {size_text(image.size)}"
            )
        image, mask = self.transform(image, mask, record.id)
        return Sample(image=image_tensor(image), mask=mask_tensor(mask), label=record.label, id=record.id)


def looks_like_category_folder(root: Path) -> str | None:
    """"pass its parent" when ``root`` itself holds a category's folders (train/ and test/, or Data/ for VisA):
    the commonest wrong --root."""
    if (root / "train").is_dir() or (root / "test").is_dir() or (root / "Data" / "Images").is_dir():
        return f"{root} looks like a category folder: pass its parent ({root.parent})"
    return None


def mask_size_mismatches(records: list[Record]) -> list[str]:
    """Every defect image needs a mask of its own size: found now, from file headers, not mid-evaluation."""
    problems = []
    for record in records:
        if isinstance(record.mask, MaskFile):
            try:
                image_wh, mask_wh = image_size(Path(record.image)), image_size(Path(record.mask.path))
            except UserError as exc:  # an unreadable header: reported as the broken file it is
                problems.append(f"broken file: {exc}")
                continue
            if image_wh != mask_wh:
                problems.append(f"mask {record.mask.path} is {size_text(mask_wh)} but its image {record.image} "
                                f"is {size_text(image_wh)}")
    return problems


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
