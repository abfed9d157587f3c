"""Decoding: every format a camera or pipeline writes reaches methods as the image means it (issue 18.4).

Each test writes a real file in tmp and compares the decoded tensor with the values the file stands for.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from dataset_layouts import background, save_png16
from PIL import Image

from anombench.errors import UserError
from anombench_plugins.imagefiles import MaskLookup, image_size, image_tensor, open_image, open_mask

RGB8 = background(24, 16, seed=3)  # (16, 24, 3) uint8
GREY8 = RGB8[..., 0].copy()


def decoded(path) -> np.ndarray:
    """(H, W, 3) float in [0, 1], as a method receives it."""
    return image_tensor(open_image(str(path))).numpy().transpose(1, 2, 0)


def expect(values: np.ndarray, full_scale: float) -> np.ndarray:
    values = values.astype(np.float64) / full_scale
    return np.repeat(values[..., None], 3, axis=2) if values.ndim == 2 else values


def test_8bit_grey_png(tmp_path):
    Image.fromarray(GREY8).save(tmp_path / "a.png")
    np.testing.assert_allclose(decoded(tmp_path / "a.png"), expect(GREY8, 255), atol=1e-6)


def test_8bit_rgb_png(tmp_path):
    Image.fromarray(RGB8).save(tmp_path / "a.png")
    np.testing.assert_allclose(decoded(tmp_path / "a.png"), expect(RGB8, 255), atol=1e-6)


def test_16bit_grey_png_equals_the_8bit_image(tmp_path):
    Image.fromarray(GREY8.astype(np.uint16) * 257).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    np.testing.assert_allclose(decoded(tmp_path / "a.png"), expect(GREY8, 255), atol=1e-6)


@pytest.mark.parametrize("channels", [3, 4, 2], ids=["rgb", "rgba", "grey_alpha"])
def test_16bit_colour_png_keeps_all_16_bits(tmp_path, channels):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(16, 24, channels), dtype=np.uint16)
    if channels in (2, 4):
        values[..., -1] = 65535  # opaque: the colour is what it says
    save_png16(tmp_path / "a.png", values)
    colour = values[..., :-1] if channels in (2, 4) else values
    np.testing.assert_allclose(decoded(tmp_path / "a.png"), expect(colour.squeeze(-1) if colour.shape[2] == 1
                                                                     else colour, 65535), atol=1e-6)


def test_12bit_data_in_16bit_png_with_sbit_is_scaled_by_12_bits(tmp_path):
    values = (GREY8.astype(np.uint16) * 16 + 7)  # 12-bit values with low bits set: unscaled
    save_png16(tmp_path / "raw12.png", values, significant_bits=12)
    np.testing.assert_allclose(decoded(tmp_path / "raw12.png"), expect(values, 4095), atol=1e-6)
    scaled = values << 4  # what the PNG standard asks for: then it is plain 16-bit
    save_png16(tmp_path / "scaled.png", scaled, significant_bits=12)
    np.testing.assert_allclose(decoded(tmp_path / "scaled.png"), expect(scaled, 65535), atol=1e-6)


def test_12bit_data_without_sbit_is_16bit_with_a_warning_for_images_only(tmp_path, caplog):
    values = GREY8.astype(np.uint16) * 16 + 7
    save_png16(tmp_path / "img/a.png", values)
    save_png16(tmp_path / "masks/m.png", (values > 1000).astype(np.uint16))
    open_mask(str(tmp_path / "masks/m.png"))
    assert not caplog.records
    np.testing.assert_allclose(decoded(tmp_path / "img/a.png"), expect(values, 65535), atol=1e-6)
    assert "values all lie below 4096" in caplog.records[0].getMessage()


def test_palette_png_without_and_with_transparency(tmp_path):
    palette_image = Image.fromarray(RGB8).quantize(colors=16)
    palette_image.save(tmp_path / "p.png")
    colours = np.asarray(palette_image.convert("RGB"))
    np.testing.assert_allclose(decoded(tmp_path / "p.png"), expect(colours, 255), atol=1e-6)
    palette_image.info["transparency"] = 0
    palette_image.save(tmp_path / "pt.png", transparency=0)
    index = np.asarray(palette_image)
    want = expect(colours, 255) * (index != 0)[..., None]  # transparent pixels composite to black
    np.testing.assert_allclose(decoded(tmp_path / "pt.png"), want, atol=1e-6)


def test_rgba_png_composites_over_black(tmp_path):
    alpha = np.full(GREY8.shape, 255, np.uint8)
    alpha[:, :8] = 0
    Image.fromarray(np.dstack([RGB8, alpha])).save(tmp_path / "a.png")
    want = expect(RGB8, 255) * (alpha[..., None] / 255)
    np.testing.assert_allclose(decoded(tmp_path / "a.png"), want, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 24), (16, 24, 3)], ids=["grey", "rgb"])
def test_16bit_tiff(tmp_path, shape):
    values = np.random.default_rng(1).integers(0, 65536, size=shape, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", values, photometric="rgb" if len(shape) == 3 else "minisblack")
    np.testing.assert_allclose(decoded(tmp_path / "a.tif"), expect(values, 65535), atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 24), (16, 24, 3)], ids=["grey", "rgb"])
def test_float_tiff_in_unit_range(tmp_path, shape):
    values = np.random.default_rng(2).random(shape, dtype=np.float32)
    tifffile.imwrite(tmp_path / "a.tif", values, photometric="rgb" if len(shape) == 3 else "minisblack")
    np.testing.assert_allclose(decoded(tmp_path / "a.tif"), expect(values, 1.0), atol=1e-6)


def test_16bit_tiff_where_zero_is_white(tmp_path):
    values = np.random.default_rng(4).integers(0, 65536, size=(16, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", values, photometric="miniswhite")
    np.testing.assert_allclose(decoded(tmp_path / "a.tif"), expect(65535 - values, 65535), atol=1e-6)


def test_float_tiff_outside_unit_range_is_a_one_line_error(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.full((8, 8), 3.5, np.float32))
    with pytest.raises(UserError, match=r"cannot read .*a.tif faithfully: .*must lie in \[0, 1\], found \[3.5, 3.5\]"):
        open_image(str(tmp_path / "a.tif"))


def test_signed_integer_tiff_is_a_one_line_error(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8, 3), np.int16), photometric="rgb")
    with pytest.raises(UserError, match=r"a.tif faithfully: .*no defined full scale"):
        open_image(str(tmp_path / "a.tif"))


def test_jpeg(tmp_path):
    Image.fromarray(RGB8).save(tmp_path / "a.jpg", quality=100, subsampling=0)
    np.testing.assert_allclose(decoded(tmp_path / "a.jpg"), expect(RGB8, 255), atol=0.05)


def test_jpeg_exif_orientation_is_honoured_for_images_and_masks(tmp_path):
    """Orientation 6: stored sideways, shown rotated 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = RGB8  # (16, 24): shown as (24, 16)
    Image.fromarray(stored).save(tmp_path / "a.jpg", quality=100, subsampling=0, exif=exif)
    mask = np.zeros(GREY8.shape, np.uint8)
    mask[0, 0] = 255  # top-left when stored -> top-right when shown
    Image.fromarray(mask).save(tmp_path / "m.png", exif=exif)
    assert image_size(tmp_path / "a.jpg") == (16, 24)
    upright = np.rot90(stored, k=-1)
    np.testing.assert_allclose(decoded(tmp_path / "a.jpg"), expect(upright, 255), atol=0.05)
    shown = np.asarray(open_mask(str(tmp_path / "m.png")))
    assert shown.shape == (24, 16) and shown[0, -1] == 255 and shown.sum() == 255


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(RGB8).convert("CMYK").save(tmp_path / "a.jpg", quality=100)
    assert Image.open(tmp_path / "a.jpg").mode == "CMYK"
    np.testing.assert_allclose(decoded(tmp_path / "a.jpg"), expect(RGB8, 255), atol=0.05)


@pytest.mark.parametrize("kind", ["png8", "png16", "palette", "float_tiff"])
def test_masks_any_non_zero_sample_is_defect(tmp_path, kind):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 3:6] = 1
    path = tmp_path / ("m.tif" if kind == "float_tiff" else "m.png")
    if kind == "png8":
        Image.fromarray(mask).save(path)
    elif kind == "png16":
        Image.fromarray(mask.astype(np.uint16) * 300).save(path)
    elif kind == "palette":
        Image.fromarray(mask * 200).convert("P").save(path)
    else:
        tifffile.imwrite(path, mask.astype(np.float32) * 0.25)
    assert np.array_equal(np.asarray(open_mask(str(path))) > 0, mask > 0)


def test_mask_lookup_matches_any_extension_case_and_names_near_misses(tmp_path):
    folder = tmp_path / "ground_truth" / "crack"
    folder.mkdir(parents=True)
    Image.fromarray(GREY8).save(folder / "000_mask.PNG")
    Image.fromarray(GREY8).save(folder / "001.png")
    (folder / "002_mask.png.bak").write_bytes(b"x")
    lookup = MaskLookup(folder, ("_mask",))
    assert lookup.find("000") == folder / "000_mask.PNG"
    assert lookup.find("001") is None and "found 001.png" in lookup.expected("001")
    assert "found 002_mask.png.bak" in lookup.expected("002")


def test_16bit_image_through_mvtec_equals_its_8bit_copy(tmp_path):
    from dataset_layouts import make_mvtec_category

    from anombench_plugins.mvtec import MVTecAD

    make_mvtec_category(tmp_path / "a", grey=True)
    deep = tmp_path / "b"
    for path in (tmp_path / "a").rglob("*.png"):
        target = deep / path.relative_to(tmp_path / "a")
        target.parent.mkdir(parents=True, exist_ok=True)
        values = np.asarray(Image.open(path))
        Image.fromarray(values.astype(np.uint16) * 257).save(target) if "ground_truth" not in str(path) \
            else Image.fromarray(values).save(target)
    def test_split(root, **sizes):
        return MVTecAD(root=str(root), **sizes).test("bottle", 0)

    for x, y in zip(test_split(tmp_path / "a", image_size=None, crop_size=None),
                    test_split(tmp_path / "b", image_size=None, crop_size=None)):
        assert x.image.shape == (3, 64, 64)  # the files' own resolution
        torch.testing.assert_close(x.image, y.image, atol=1e-6, rtol=0)
        assert torch.equal(x.mask, y.mask)
    for x, y in zip(test_split(tmp_path / "a"), test_split(tmp_path / "b")):
        # resized: bicubic in float has no 8-bit rounding or clipping between its two passes
        assert float((x.image - y.image).abs().mean()) < 2e-3 and torch.equal(x.mask, y.mask)
