"""Backbones: real Lite0 ImageNet weights from the installed package, layer mapping, weight sources and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from anombench.errors import UserError
from anombench_plugins import backbones
from anombench_plugins.backbones import FeatureExtractor, backbone_spec, hub_cache_file, load_backbone


def classify(model: torch.nn.Module, image: np.ndarray, name: str) -> list[int]:
    """Top-3 ImageNet classes of an RGB uint8 image, preprocessed as the backbone was trained."""
    spec = backbone_spec(name)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model(x)[0].topk(3).indices.tolist()


class Payload:
    """An arbitrary object: loading it would need unpickling code, which weights_only=True refuses."""


@pytest.fixture
def offline_empty_caches(tmp_path, monkeypatch):
    """No hub cache, no HF cache, no network: what a fresh CI machine without the weights sees."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(backbones, "_network_reachable", lambda host, timeout=3.0: False)
    return tmp_path


def test_lite0_package_weights_classify_a_cat_and_an_espresso(offline_empty_caches):
    model = load_backbone("efficientnet_lite0", "imagenet")
    assert 281 <= classify(model, data.chelsea(), "efficientnet_lite0")[0] <= 285  # tabby, tiger cat, ... cats
    assert classify(model, data.coffee(), "efficientnet_lite0")[0] == 967  # espresso


def test_random_init_does_not_classify_and_is_seeded():
    a, b = load_backbone("efficientnet_lite0", "none", seed=1), load_backbone("efficientnet_lite0", "none", seed=1)
    c = load_backbone("efficientnet_lite0", "none", seed=2)
    assert torch.equal(a.conv_stem.weight, b.conv_stem.weight)
    assert not torch.equal(a.conv_stem.weight, c.conv_stem.weight)


def test_missing_weights_offline_raise_one_error_naming_the_file(offline_empty_caches):
    with pytest.raises(UserError) as info:
        load_backbone("resnet18", "imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert str(offline_empty_caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights: none" in message and "weights: /path/to/resnet18-f37072fd.pth" in message


def test_weights_come_from_the_torch_hub_cache_when_present(offline_empty_caches):
    saved = load_backbone("resnet18", "none", seed=5)
    target = hub_cache_file(backbone_spec("resnet18"))
    target.parent.mkdir(parents=True)
    torch.save(saved.state_dict(), target)
    loaded = load_backbone("resnet18", "imagenet")
    assert torch.equal(loaded.layer3[0].conv1.weight, saved.layer3[0].conv1.weight)


def test_an_explicit_file_wins_and_lukemelas_keys_map_by_position(tmp_path):
    package = backbones._package_file(backbone_spec("efficientnet_lite0"))
    lukemelas = torch.load(package, map_location="cpu", weights_only=True)
    assert "_conv_stem.weight" in lukemelas and "_blocks.15._project_conv.weight" in lukemelas
    model = load_backbone("efficientnet_lite0", str(package))
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, lukemelas["_blocks.15._project_conv.weight"])
    assert torch.equal(model.classifier.weight, lukemelas["_fc.weight"])

    timm_layout = tmp_path / "lite0.pth"
    torch.save(model.state_dict(), timm_layout)
    reloaded = load_backbone("efficientnet_lite0", str(timm_layout))
    assert torch.equal(reloaded.bn2.running_var, model.bn2.running_var)


def test_weight_files_that_do_not_fit_are_user_errors(tmp_path):
    wrong_shapes = tmp_path / "lite0_weights.pth"
    state = torch.load(backbones._package_file(backbone_spec("efficientnet_lite0")), weights_only=True)
    torch.save(state, wrong_shapes)
    with pytest.raises(UserError, match="do not fit"):
        load_backbone("efficientnet_b5", str(wrong_shapes))  # same layout, other architecture
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("resnet18", str(tmp_path / "nope.pth"))


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True: a file that would need arbitrary unpickling is not executed, it is an error."""
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, evil)
    with pytest.raises(UserError, match="not a loadable state dict"):
        load_backbone("resnet18", str(evil))


@pytest.mark.parametrize(
    "name,layers,expected",
    [
        ("resnet18", None, {"layer1": (64, 4), "layer2": (128, 8), "layer3": (256, 16)}),
        ("resnet18", [1, 3], {"layer1": (64, 4), "layer3": (256, 16)}),
        ("wide_resnet50_2", None, {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16)}),
        ("efficientnet_lite0", None, {"blocks.1.1": (24, 4), "blocks.2.1": (40, 8), "blocks.4.2": (112, 16)}),
        ("efficientnet_b5", None, {"blocks.1.3": (40, 4), "blocks.3.6": (128, 16), "blocks.4.5": (176, 16)}),
    ],
)
def test_layers_map_to_the_documented_blocks_channels_and_strides(name, layers, expected):
    extractor = FeatureExtractor(name, layers, weights="none")
    maps = extractor(torch.rand(2, 3, 64, 64))
    got = {tap: (int(m.shape[1]), 64 // int(m.shape[-1])) for tap, m in maps.items() if tap in extractor.layers}
    assert got == expected


def test_paper_layer_numbers_are_mbconv_blocks_counted_from_one():
    extractor = FeatureExtractor("efficientnet_b5", [7, 20, 26], weights="none")
    assert extractor.layers == ["blocks.1.3", "blocks.3.6", "blocks.4.5"]
    assert FeatureExtractor("efficientnet_b5", [1], weights="none").layers == ["blocks.0.0"]


def test_extraction_stops_at_the_deepest_tap_and_normalises_itself():
    extractor = FeatureExtractor("resnet18", weights="none")
    assert extractor.unit_names == ["stem", "layer1", "layer2", "layer3"]
    images = torch.rand(1, 3, 32, 32)
    model = load_backbone("resnet18", "none")
    normalised = (images - torch.tensor(backbones.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        backbones.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(normalised)))))
    torch.testing.assert_close(extractor(images)["layer1"], expected)


@pytest.mark.parametrize("layer", ["layer0", "layer5", "stem", 0, "blocks.1"])
def test_unknown_layers_are_user_errors(layer):
    with pytest.raises(UserError, match="has no layer"):
        FeatureExtractor("resnet18", [layer], weights="none")


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_the_table_describes_every_unit_as_a_forward_pass_sees_it(name):
    """``feature_info`` (names, channels, strides: what feature keys and preflight read without building) is the
    built model's truth: same units in the same order, each output's channels and stride at a 64x64 input."""
    spec = backbone_spec(name)
    units = backbones.backbone_units(spec, load_backbone(name, "none"))
    table = backbones.feature_info(spec)
    assert [n for n, _ in units] == [info.name for info in table]
    x = torch.zeros(1, 3, 64, 64)
    with torch.inference_mode():
        for (unit_name, unit), info in zip(units, table):
            x = unit(x)
            assert (x.shape[1], 64 // x.shape[-1]) == (info.channels, info.stride), unit_name


def test_feature_key_and_channels_need_no_model(monkeypatch):
    from anombench_plugins.components import PretrainedFeatures

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("built"))
    features = PretrainedFeatures("efficientnet_b5", [7, 20, 26], "none", "cpu", 4)
    assert features.channels == {"blocks.1.3": 40, "blocks.3.6": 128, "blocks.4.5": 176}
    assert features.key() == "efficientnet_b5|none(seed=4)|blocks.1.3,blocks.3.6,blocks.4.5|cpu"
