"""Build the on-disk layouts of the real datasets from synthetic images, so tests never need the real data.

Anomalous images carry a white square exactly where their mask is set, on a background darker than 160,
so a test can check that image and mask stay aligned through resizing, rotation and cropping.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DEFECT_VALUE = 255
BACKGROUND_MAX = 160


def background(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth random RGB pattern (H, W, 3) uint8 below BACKGROUND_MAX: compressible like a photo, not flat."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, BACKGROUND_MAX, size=(4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def defect_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the defect: a square a quarter of the image wide, right of centre."""
    side = max(2, min(width, height) // 4)
    left, top = width // 2, height // 3
    return left, top, left + side, top + side


def defect_pair(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An anomalous image and its 0/255 mask."""
    image = background(width, height, seed).copy()
    mask = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = defect_box(width, height)
    image[top:bottom, left:right] = DEFECT_VALUE
    mask[top:bottom, left:right] = 255
    return image, mask


def save(path: Path, array: np.ndarray, grey: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert("L") if grey else image).save(path)
    return path


def make_mvtec_category(
    root: Path,
    category: str = "bottle",
    size: tuple[int, int] = (64, 64),
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    grey: bool = False,
) -> Path:
    """One category in the official MVTec AD layout; returns its folder."""
    width, height = size
    folder = root / category
    for i in range(n_train):
        save(folder / "train" / "good" / f"{i:03d}.png", background(width, height, seed=i), grey)
    for i in range(n_good):
        save(folder / "test" / "good" / f"{i:03d}.png", background(width, height, seed=100 + i), grey)
    for d, (defect, count) in enumerate((defects if defects is not None else {"crack": 2}).items()):
        for i in range(count):
            image, mask = defect_pair(width, height, seed=200 + 10 * d + i)
            save(folder / "test" / defect / f"{i:03d}.png", image, grey)
            save(folder / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return folder


def make_stc(
    root: Path,
    train_clips: dict[str, int],
    test_clips: dict[str, list[int]],
    size: tuple[int, int] = (48, 32),
) -> Path:
    """The public STC layout with training frames extracted: ``train_clips`` maps clip -> frame count,
    ``test_clips`` maps clip -> frame labels (1 = anomalous frame, with a defect square in its pixel mask)."""
    width, height = size
    for clip, count in train_clips.items():
        for i in range(count):
            save(root / "training" / "frames" / clip / f"{i:03d}.jpg", background(width, height, seed=i))
    for clip, labels in test_clips.items():
        pixel = np.zeros((len(labels), height, width), dtype=np.uint8)
        for i, label in enumerate(labels):
            image, mask = defect_pair(width, height, seed=i) if label else (background(width, height, i), None)
            if mask is not None:
                pixel[i] = mask > 0
            save(root / "testing" / "frames" / clip / f"{i:03d}.jpg", image)
        save_npy(root / "testing" / "test_pixel_mask" / f"{clip}.npy", pixel)
        save_npy(root / "testing" / "test_frame_mask" / f"{clip}.npy", np.asarray(labels, dtype=np.int64))
    return root


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def make_tar(
    path: Path, source: Path | None = None, extra: dict[str, bytes] | None = None, mode: str = "w:gz"
) -> bytes:
    """Pack ``source``'s contents (as top-level entries, like the MVTec archive) plus ``extra`` members given as
    name -> bytes (names may be hostile, e.g. "../evil.txt"); returns the archive's bytes."""
    with tarfile.open(path, mode) as tar:
        if source is not None:
            for child in sorted(source.iterdir()):
                tar.add(child, arcname=child.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def add_symlink(path: Path, name: str, target: str, mode: str = "w:gz") -> bytes:
    """An archive whose only member is a symlink ``name`` -> ``target``; returns its bytes."""
    with tarfile.open(path, mode) as tar:
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)
    return path.read_bytes()


def save_png16(path: Path, array: np.ndarray, significant_bits: int | None = None) -> Path:
    """A 16-bit PNG of any colour type (Pillow writes only 16-bit grey): (H, W) grey, (H, W, 2) grey+alpha,
    (H, W, 3) RGB, (H, W, 4) RGBA; ``significant_bits`` adds an sBIT chunk. Unfiltered rows, zlib-compressed."""
    rows = array if array.ndim == 3 else array[..., None]
    height, width, channels = rows.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\0" + rows[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    if significant_bits is not None:
        data += chunk(b"sBIT", bytes([significant_bits] * channels))
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
