"""ShanghaiTech Campus plugin against the public layout built on disk from synthetic frames and masks."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_layouts import make_stc, save_npy

from anombench.api import Dataset
from anombench.errors import UserError
from anombench.plugins import collect, make_plugin_manager
from anombench_plugins.stc import ShanghaiTechCampus

TRAIN_CLIPS = {"01_001": 5, "01_002": 3, "02_001": 4, "13_001": 2}  # scene 13: training only, as released
TEST_CLIPS = {"01_0014": [0, 0, 1, 1], "01_0015": [0, 1, 0], "02_0128": [0, 0]}


@pytest.fixture
def stc(tmp_path: Path) -> Path:
    return make_stc(tmp_path, TRAIN_CLIPS, TEST_CLIPS, size=(48, 32))


def test_registered_through_entry_points(monkeypatch):
    monkeypatch.setenv("ANOMBENCH_PLUGINS", "stc")
    assert collect(*make_plugin_manager()).get("dataset", "stc").factory is ShanghaiTechCampus


def test_scenes_with_train_and_test_are_the_categories(stc):
    data = ShanghaiTechCampus(root=str(stc))
    assert isinstance(data, Dataset)
    assert data.categories() == ["scene01", "scene02"]
    assert data.family("scene01") == "other"
    # the paper's STC mean is over the 12 scenes the public test set covers, present here or not
    assert data.known_categories() == [f"scene{n:02d}" for n in range(1, 13)]
    assert data.family("scene12") == "other"


def test_train_streams_frames_in_order_with_stride(stc):
    data = ShanghaiTechCampus(root=str(stc))
    train = data.train("scene01", seed=0)
    expected = [f"01_001/{i:03d}" for i in range(5)] + [f"01_002/{i:03d}" for i in range(3)]
    assert [r.id for r in train.records] == expected
    sample = train[0]
    assert sample.image.shape == (3, 256, 256) and sample.image.dtype == torch.float32
    assert sample.mask.shape == (256, 256) and sample.mask.sum() == 0 and sample.label == 0
    strided = ShanghaiTechCampus(root=str(stc), frame_stride=2).train("scene01", seed=0)
    assert [r.id for r in strided.records] == ["01_001/000", "01_001/002", "01_001/004", "01_002/000", "01_002/002"]


def test_frames_sort_by_number_not_text(tmp_path):
    make_stc(tmp_path, {"01_001": 0}, {"01_0014": [0]})
    frames = tmp_path / "training" / "frames" / "01_001"
    frames.mkdir(parents=True, exist_ok=True)
    for n in (10, 2, 1):
        (frames / f"{n}.jpg").write_bytes((tmp_path / "testing/frames/01_0014/000.jpg").read_bytes())
    ids = [r.id for r in ShanghaiTechCampus(root=str(tmp_path)).train("scene01", seed=0).records]
    assert ids == ["01_001/1", "01_001/2", "01_001/10"]


def test_test_labels_from_frame_masks_and_pixel_masks_aligned(stc):
    test = ShanghaiTechCampus(root=str(stc), image_size=64).test("scene01", seed=0)
    samples = [test[i] for i in range(len(test))]
    assert [s.id for s in samples] == ["01_0014/000", "01_0014/001", "01_0014/002", "01_0014/003",
                                       "01_0015/000", "01_0015/001", "01_0015/002"]  # fmt: skip
    assert [s.label for s in samples] == [0, 0, 1, 1, 0, 1, 0]
    for s in samples:
        assert s.image.shape == (3, 64, 64) and s.mask.shape == (64, 64)
        assert bool(s.mask.any()) == bool(s.label)
        if s.label:  # the defect square is white in the frame exactly where the mask is
            white = (s.image > 0.8).all(dim=0)
            assert (white & s.mask.bool()).sum() / (white | s.mask.bool()).sum() > 0.8


def test_split_pickles_small_and_masks_are_memory_mapped(stc):
    test = ShanghaiTechCampus(root=str(stc)).test("scene01", seed=0)
    assert len(pickle.dumps(test)) < 4096
    save_npy(stc / "testing/test_pixel_mask/01_0014.npy", np.zeros((4, 32, 48), dtype=np.uint8))
    assert test[3].mask.sum() == 0  # read from disk at load time, not held in the split


def test_test_frame_stride(stc):
    test = ShanghaiTechCampus(root=str(stc), test_frame_stride=2).test("scene01", seed=0)
    assert [r.id for r in test.records] == ["01_0014/000", "01_0014/002", "01_0015/000", "01_0015/002"]


# ---- bad data ------------------------------------------------------------------------------------------------


def test_missing_root_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ANOMBENCH_DATA_STC", raising=False)
    with pytest.raises(UserError, match="svip-lab.github.io.*anombench data download stc"):
        ShanghaiTechCampus(root=str(tmp_path / "nowhere"))


def test_root_one_level_too_high_or_without_scenes(tmp_path):
    make_stc(tmp_path / "shanghaitech", TRAIN_CLIPS, TEST_CLIPS)
    with pytest.raises(UserError, match=r"no .*/testing/frames in the STC root"):
        ShanghaiTechCampus(root=str(tmp_path))
    make_stc(tmp_path / "scene13_only", {"13_001": 1}, {})
    (tmp_path / "scene13_only/testing/frames").mkdir(parents=True)
    with pytest.raises(UserError, match="no scene has both training frames and test clips"):
        ShanghaiTechCampus(root=str(tmp_path / "scene13_only"))


def test_videos_only_tells_how_to_extract_frames(tmp_path):
    make_stc(tmp_path, {}, {"01_0014": [0]})
    (tmp_path / "training" / "videos").mkdir(parents=True)
    (tmp_path / "training" / "videos" / "01_001.avi").write_bytes(b"RIFF")
    with pytest.raises(UserError, match=r"only videos: extract them once with `cd .*ffmpeg"):
        ShanghaiTechCampus(root=str(tmp_path))


def test_unknown_and_missing_scene(stc):
    data = ShanghaiTechCampus(root=str(stc))
    with pytest.raises(UserError, match="unknown STC category 'scene14'"):
        data.train("scene14", seed=0)
    with pytest.raises(UserError, match=r"'scene13' not found .*present: scene01, scene02"):
        data.test("scene13", seed=0)


@pytest.mark.parametrize("which", ["test_pixel_mask", "test_frame_mask"])
def test_missing_mask_file(stc, which):
    (stc / "testing" / which / "01_0015.npy").unlink()
    with pytest.raises(UserError, match=rf"test clip .*01_0015 has no .* .*{which}/01_0015.npy"):
        ShanghaiTechCampus(root=str(stc)).test("scene01", seed=0)


def test_frame_count_differs_from_masks(stc):
    (stc / "testing/frames/01_0014/003.jpg").unlink()
    with pytest.raises(UserError, match=r"01_0014 has 3 frames but its pixel mask has 4 and its frame mask 4"):
        ShanghaiTechCampus(root=str(stc)).test("scene01", seed=0)


def test_pixel_mask_of_another_size_is_named_when_loaded(stc):
    save_npy(stc / "testing/test_pixel_mask/02_0128.npy", np.zeros((2, 16, 16), dtype=np.uint8))
    test = ShanghaiTechCampus(root=str(stc)).test("scene02", seed=0)
    with pytest.raises(UserError, match=r"mask of .*02_0128/000.jpg .* is 16x16 but the image is 48x32"):
        test[0]


def test_unreadable_frame_and_stray_files(stc):
    clip = stc / "training/frames/02_001"
    (clip / "001.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (clip / ".DS_Store").write_bytes(b"\0")
    (clip / "Thumbs.db").write_bytes(b"\0")
    train = ShanghaiTechCampus(root=str(stc)).train("scene02", seed=0)
    assert len(train) == 4
    with pytest.raises(UserError, match=r"cannot read image .*02_001/001.jpg"):
        train[1]


def test_bad_strides(stc):
    with pytest.raises(UserError, match=r"^stc parameter frame_stride: must be >= 1, got 0$"):
        ShanghaiTechCampus(root=str(stc), frame_stride=0)
    with pytest.raises(UserError, match=r"^stc parameter test_frame_stride: must be >= 1, got -2$"):
        ShanghaiTechCampus(root=str(stc), test_frame_stride=-2)


# ---- getting the data ----------------------------------------------------------------------------------------


def test_download_prints_instructions_and_refuses(tmp_path, capsys):
    with pytest.raises(UserError, match="must be downloaded by hand"):
        ShanghaiTechCampus.download(str(tmp_path))
    printed = capsys.readouterr().out
    assert "svip-lab.github.io" in printed and "ffmpeg" in printed
    assert f"{tmp_path}/testing/test_pixel_mask/01_0014.npy" in printed
    assert f"cd {tmp_path}/training && for v in videos/*.avi" in printed


def test_check_counts_per_scene(stc):
    report = ShanghaiTechCampus.check(str(stc))
    rows = {line.split()[0]: line.split() for line in report.splitlines()[2:]}
    assert rows["scene01"] == ["scene01", "2", "8", "2", "7", "3"]
    assert rows["scene02"] == ["scene02", "1", "4", "1", "2", "0"]
    assert rows["scene13"] == ["scene13", "1", "2", "0", "0", "0"]
    assert len(rows) == 13
