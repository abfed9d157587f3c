"""Decoding image files into the sample values they mean, whatever bit depth, sample format or orientation.

``read_samples(path)`` returns the stored samples (H, W, C) after the file's orientation is applied, with the
value that means "full intensity" (``Samples.full_scale``): 255 for 8-bit data, 65535 for 16-bit, 4095 for
12-bit data, 1.0 for floating point. Everything else divides by that, so a 16-bit image of x * 257 and the 8-bit
image of x give the same pixels (before, Pillow's ``convert("RGB")`` clipped 16-bit grey to flat white).

What is honoured, because it changes what the pixels mean:
- bit depth: PNG 16-bit grey, grey+alpha, RGB and RGBA (Pillow alone narrows the colour ones to 8 bits: they are
  decoded here twice through Pillow's PNG decoder, high and low bytes, so no precision is lost); TIFF 8/12/16-bit
  unsigned integers (through tifffile when Pillow would narrow them) and floats (which must lie in [0, 1]);
- 12-bit data in a 16-bit PNG: a PNG may say with its ``sBIT`` chunk that only b of the 16 bits are significant.
  The PNG standard then still stores the values scaled to 16 bits, and so they are read at full scale 65535 —
  unless every value is below 2**b and some have non-zero low bits, which a scaled image never has (shifting
  or bit replication leaves the low 16-b bits zero for values below 2**b): then the file holds unscaled b-bit
  data and full scale is 2**b - 1. Without sBIT a 16-bit PNG is 16-bit full scale; an image (not a mask) that
  uses only the low 12 bits then gets a warning (once per folder, from ``warn_if_low_bits``): it looks almost black;
- palette images (with their transparency), alpha (composited over black: a transparent pixel means nothing,
  and black is what a mask reads as "normal"), CMYK JPEG/TIFF (Pillow's conversion to RGB, including Adobe's
  inverted CMYK; an embedded ICC profile is used through LittleCMS when present);
- the EXIF / TIFF orientation tag: a phone photo stored sideways with "rotate 90" is returned upright, for images
  and masks alike, so a mask drawn on the upright picture stays aligned.

What cannot be read faithfully is a one-line ``UserError`` naming the file and its format: signed or 32-bit
integer samples (no defined full scale), floats outside [0, 1] or not finite, unknown colour modes.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from anombench.errors import UserError

log = logging.getLogger("anombench.data")

ORIENTATION_TAG = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow modes whose samples are 8-bit and that numpy reads as they are (C = len(mode)).
EIGHT_BIT_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
# Modes Pillow itself converts without losing meaning; the value is the target mode.
PILLOW_CONVERSIONS = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "YCbCr": "RGB", "PA": "RGBA"}
UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_warned_low_bits: set[str] = set()


@dataclass(frozen=True)
class Samples:
    """Stored samples (H, W, C), C in {1, 2, 3, 4} (grey, grey+alpha, RGB, RGBA), and their full-scale value."""

    values: np.ndarray
    full_scale: float

    @property
    def eight_bit(self) -> bool:
        return self.values.dtype == np.uint8 and self.full_scale == 255

    def normalised(self) -> np.ndarray:
        """float32 (H, W, C') in [0, 1], alpha composited over black, C' = 1 (grey) or 3 (colour)."""
        values = self.values.astype(np.float32) / np.float32(self.full_scale)
        if values.shape[2] in (2, 4):
            values = values[..., :-1] * values[..., -1:]
        return values


def _bad(path: str, what: str) -> UserError:
    return UserError(f"cannot read {path} faithfully: {what}")


def apply_orientation(values: np.ndarray, orientation: int) -> np.ndarray:
    """Turn (H, W, ...) stored samples upright by the EXIF/TIFF orientation (1-8, as ImageOps.exif_transpose)."""
    if orientation in (5, 6, 7, 8):
        values = np.swapaxes(values, 0, 1)  # transpose; then flips give 6 (rotate cw), 8 (ccw), 7 (transverse)
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        values = values[:, ::-1]
    if orientation in (3, 4):
        values = values[::-1]
    return np.ascontiguousarray(values)


def orientation_of(image: Image.Image) -> int:
    """The EXIF orientation (1 = as stored). For a PNG only what its chunks read so far hold: Pillow's
    ``getexif`` would decode the whole image to find an eXIf chunk after the pixels, and header checks must
    stay cheap (and must not fail on a truncated file's pixel data)."""
    if image.format == "PNG":
        exif = Image.Exif()
        if raw := image.info.get("exif"):
            exif.load(raw)
        value = exif.get(ORIENTATION_TAG, 1)
    else:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is meant to be seen (orientations 5-8 swap them)."""
    width, height = image.size
    return (height, width) if orientation_of(image) in (5, 6, 7, 8) else (width, height)


@dataclass(frozen=True)
class PngHeader:
    bit_depth: int
    colour_type: int
    significant_bits: int | None  # the largest sBIT entry over the colour channels, if the file has one


def png_header(path: str) -> PngHeader | None:
    """IHDR and sBIT of a PNG (chunk headers only, up to the first IDAT); None for any other file."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        bit_depth = colour_type = 0
        significant: int | None = None
        while head := f.read(8):
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IDAT":
                break
            data = f.read(length)
            f.seek(4, io.SEEK_CUR)  # CRC
            if kind == b"IHDR":
                bit_depth, colour_type = data[8], data[9]
            elif kind == b"sBIT":
                colour_bytes = data[:-1] if colour_type in (4, 6) else data  # the last entry is alpha's
                significant = max(colour_bytes) if colour_bytes else None
        return PngHeader(bit_depth, colour_type, significant)


def _decode_raw(path: str, rawmode: str) -> np.ndarray:
    """Decode a PNG through Pillow with another unpacker (``rawmode``) than Pillow would pick."""
    with Image.open(path) as image:
        image.tile = [tile._replace(args=rawmode) for tile in image.tile]
        image.load()
        return np.asarray(image)


def _png16_colour(path: str, header: PngHeader) -> np.ndarray:
    """Full 16-bit samples of a grey+alpha, RGB or RGBA PNG, which Pillow would narrow to 8 bits.

    RGB(A): decoded twice, with big-endian unpacking (the high bytes) and little-endian (the low ones).
    Grey+alpha: its 4 bytes per pixel decode as if 8-bit RGBA (the same filter stride), giving L hi, L lo, A hi, A lo.
    """
    if header.colour_type == 4:
        raw = _decode_raw(path, "RGBA").astype(np.uint16)
        return np.stack([raw[..., 0] * 256 + raw[..., 1], raw[..., 2] * 256 + raw[..., 3]], axis=-1)
    name = "RGB" if header.colour_type == 2 else "RGBA"
    high = _decode_raw(path, f"{name};16B").astype(np.uint16)
    return high * 256 + _decode_raw(path, f"{name};16L")


def _png16_full_scale(values: np.ndarray, header: PngHeader) -> float:
    """65535, or 2**b - 1 for unscaled b-bit data under an sBIT chunk (see the module docstring)."""
    top = int(values.max()) if values.size else 0
    bits = header.significant_bits
    if bits is not None and 0 < bits < 16 and top < 2**bits and np.any(values & ((1 << (16 - bits)) - 1)):
        return float(2**bits - 1)
    return 65535.0


def warn_if_low_bits(path: str, samples: Samples) -> None:
    """Warn (once per folder) about a 16-bit image whose values all lie below 4096: probably unscaled 12-bit data
    without an sBIT chunk to say so, which at 16-bit full scale looks almost black."""
    folder = str(Path(path).parent)
    if samples.full_scale == 65535 and folder not in _warned_low_bits and 0 < int(samples.values.max()) < 4096:
        _warned_low_bits.add(folder)
        log.warning("%s is a 16-bit image whose values all lie below 4096: read as 16-bit (it will look almost "
                    "black); if it holds 12-bit data, add an sBIT chunk or scale it to 16 bits", path)


def _as_hwc(values: np.ndarray) -> np.ndarray:
    return values[..., None] if values.ndim == 2 else values


def _float_samples(path: str, values: np.ndarray, kind: str) -> Samples:
    values = values.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise _bad(path, f"{kind} has NaN or infinite samples")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise _bad(path, f"{kind} samples must lie in [0, 1], found [{low:g}, {high:g}]")
    return Samples(_as_hwc(values), 1.0)


def _to_srgb(path: str, image: Image.Image) -> Image.Image:
    """An 8-bit RGB or CMYK image in sRGB: through its embedded ICC profile when it has one (an unusable profile
    is logged and the naive conversion used)."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            log.warning("%s: its ICC profile is unusable; colours are converted without it", path)
    return image if image.mode == "RGB" else image.convert("RGB")


def _tiff_samples(path: str) -> Samples:
    """A TIFF through tifffile: unsigned integers at 2**BitsPerSample - 1, floats in [0, 1]."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        values = page.asarray()
        axes = page.axes
        kind = f"TIFF ({page.photometric.name}, {page.bitspersample}-bit {page.dtype})"
        if page.photometric.name not in ("MINISBLACK", "MINISWHITE", "RGB"):
            raise _bad(path, f"{kind}: only grey and RGB TIFFs of more than 8 bits are supported")
        inverted = page.photometric.name == "MINISWHITE"  # 0 is white: flipped below
        orientation = int(page.tags[274].value) if 274 in page.tags else 1
        bits, dtype = page.bitspersample, page.dtype
    if axes.startswith("S"):  # planar configuration: samples first
        values = np.moveaxis(values, 0, -1)
    values = apply_orientation(_as_hwc(values), orientation)
    if values.ndim != 3 or values.shape[2] > 4:
        raise _bad(path, f"{kind} with axes {axes}: expected one image plane of 1-4 samples")
    if np.issubdtype(dtype, np.floating):
        return _float_samples(path, 1.0 - values if inverted else values, kind)
    if np.issubdtype(dtype, np.unsignedinteger) and bits <= 16:
        full = 2**bits - 1
        return Samples(full - values if inverted else values, float(full))
    raise _bad(path, f"{kind}: signed or 32-bit integer samples have no defined full scale")


def _needs_tifffile(image: Image.Image) -> bool:
    """A TIFF Pillow would narrow (more than 8 bits per sample in a multi-sample image) or read without its
    photometric inversion (a "0 is white" TIFF of more than 8 bits)."""
    if image.format != "TIFF":
        return False
    tags = image.tag_v2  # type: ignore[attr-defined]
    bits = tags.get(258, (8,))
    deep = max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return deep and (image.mode not in UINT16_MODES | {"F"} or tags.get(262) == 0)


def _pillow_samples(path: str, image: Image.Image, header: PngHeader | None) -> Samples:
    mode = image.mode
    kind = f"{image.format} image in mode {mode}"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in PILLOW_CONVERSIONS:
        image = image.convert(PILLOW_CONVERSIONS[mode])
    elif mode == "CMYK" or (mode == "RGB" and image.info.get("icc_profile")):
        image = _to_srgb(path, image)
    if image.mode in EIGHT_BIT_MODES:
        return Samples(_as_hwc(np.asarray(image)), 255.0)
    if image.mode in UINT16_MODES or (image.mode == "I" and header is not None and header.bit_depth == 16):
        # older Pillow opens 16-bit grey PNGs in mode I (int32); the values are 16-bit all the same
        values = _as_hwc(np.asarray(image).astype(np.uint16))
        scale = _png16_full_scale(values, header) if header is not None else 65535.0
        return Samples(values, scale)
    if image.mode == "F":
        return _float_samples(path, np.asarray(image), kind)
    if image.mode == "I":
        raise _bad(path, f"{kind}: 32-bit integer samples have no defined full scale; save 8/16-bit or float")
    raise _bad(path, f"{kind} is not a supported colour mode")


def read_samples(path: str) -> Samples:
    """Decode ``path`` fully (a truncated file fails here, naming it) into upright stored samples."""
    try:
        header = png_header(path)
        with Image.open(path) as image:
            if _needs_tifffile(image):
                return _tiff_samples_or_error(path)
            if header is not None and header.bit_depth == 16 and header.colour_type in (2, 4, 6):
                values = _png16_colour(path, header)  # Pillow's own load would narrow them to 8 bits
                samples = Samples(values, _png16_full_scale(values, header))
            else:
                image.load()
                samples = _pillow_samples(path, image, header)
            orientation = orientation_of(image)
    except UserError:
        raise
    except Image.UnidentifiedImageError:
        if Path(path).suffix.lower() in (".tif", ".tiff"):
            return _tiff_samples_or_error(path)
        raise UserError(f"cannot read image {path}: not an image file Pillow knows") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:  # PIL reports broken files with all of these
        raise UserError(f"cannot read image {path}: {exc} (re-download the dataset or remove the file)") from None
    return Samples(apply_orientation(samples.values, orientation), samples.full_scale)


def _tiff_samples_or_error(path: str) -> Samples:
    """TIFFs Pillow cannot open at all (float RGB, say) go to tifffile; its errors become one line too."""
    try:
        return _tiff_samples(path)
    except UserError:
        raise
    except Exception as exc:  # tifffile raises its own and numpy's errors for damaged files
        raise UserError(f"cannot read TIFF {path}: {exc}") from None
