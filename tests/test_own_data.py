"""Your own data (issue 18): folder and VisA layouts, custom MVTec-layout classes, native resolution, data check,
saved maps scored through the runner, and --data typos. Every layout is written as real files in tmp."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from dataset_layouts import background, defect_pair, make_mvtec_category, save

from anombench.api import Resources, Scores, collate
from anombench.cli import main
from anombench.errors import UserError
from anombench_plugins.folder import Folder
from anombench_plugins.metrics import PRO, ImageAUROC, PixelAUROC
from anombench_plugins.mvtec import MVTecAD
from anombench_plugins.visa import VisA

# ---- folder ----------------------------------------------------------------------------------------------------


def make_folder(root: Path, n_normal: int = 10, flat_masks: bool = False, mask_suffix: str = "_mask") -> Path:
    for i in range(n_normal):
        save(root / "good" / f"{i:03d}.png", background(48, 48, seed=i))
    for defect in ("crack", "scratch"):
        for i in range(2):
            image, mask = defect_pair(48, 48, seed=50 + i)
            save(root / defect / f"{defect}{i}.png", image)
            mask_folder = root / "mask" if flat_masks else root / "mask" / defect
            save(mask_folder / f"{defect}{i}{mask_suffix}.PNG", mask)
    return root


@pytest.mark.parametrize("flat_masks, suffix", [(False, "_mask"), (True, ""), (True, "_mask")])
def test_folder_layout_masks_flat_or_per_defect_with_or_without_suffix(tmp_path, flat_masks, suffix):
    root = make_folder(tmp_path / "mypart", flat_masks=flat_masks, mask_suffix=suffix)
    data = Folder(root=str(root), abnormal_dirs=["crack", "scratch"], mask_dir="mask", image_size=32, crop_size=None)
    assert data.categories() == ["mypart"] and data.family("mypart") == "other"
    train, test = data.train("mypart", seed=0), data.test("mypart", seed=0)
    assert len(train) == 8 and len(test) == 2 + 4  # 20 % of the normal images held out
    ids = [r.id for r in test.records]
    assert "crack/crack0" in ids and sum(i.startswith("good/") for i in ids) == 2
    assert not {r.id for r in train.records} & set(ids)
    anomalous = [test[i] for i in range(len(test)) if test[i].label == 1]
    assert all(s.mask.sum() > 0 for s in anomalous) and anomalous[0].image.shape == (3, 32, 32)


def test_folder_split_is_seeded(tmp_path):
    root = make_folder(tmp_path / "part")
    data = Folder(root=str(root), abnormal_dirs="crack", mask_dir="mask")
    held = lambda seed: {r.id for r in data.test("part", seed).records if r.label == 0}  # noqa: E731
    assert held(0) == held(0) and held(0) != held(3)


def test_folder_normal_test_dir_several_categories_and_families(tmp_path):
    for name in ("a", "b"):
        make_folder(tmp_path / name)
        shutil.copytree(tmp_path / name / "good", tmp_path / name / "good_test")
    data = Folder(root=str(tmp_path), abnormal_dirs=["crack"], mask_dir="mask", normal_test_dir="good_test",
                  families={"b": "texture"})
    assert data.categories() == ["a", "b"] and data.family("a") == "other" and data.family("b") == "texture"
    assert len(data.train("a", 0)) == 10 and len(data.test("b", 0)) == 10 + 2


def test_folder_missing_mask_names_the_near_miss(tmp_path):
    root = make_folder(tmp_path / "p")
    (root / "mask/crack/crack0_mask.PNG").rename(root / "mask/crack/crack0_mask.png.bak")
    with pytest.raises(UserError, match=r"1 anomalous image\(s\) .*crack0.png .*found crack0_mask.png.bak"):
        Folder(root=str(root), abnormal_dirs=["crack"], mask_dir="mask").test("p", 0)


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_folder_split_ratio_out_of_range_is_a_one_line_error(tmp_path, ratio):
    root = make_folder(tmp_path / "p")
    with pytest.raises(UserError, match=rf"^folder parameter normal_split_ratio: must be in \[0, 1\), got {ratio}$"):
        Folder(root=str(root), abnormal_dirs=["crack"], mask_dir="mask", normal_split_ratio=ratio)
    Folder(root=str(root), abnormal_dirs=["crack"], mask_dir="mask", normal_split_ratio=0)  # 0: the bound is in


# ---- mvtec: own classes, native resolution --------------------------------------------------------------------


def test_mvtec_accepts_any_category_folder_with_family_other_or_set(tmp_path):
    make_mvtec_category(tmp_path, "mypart")
    make_mvtec_category(tmp_path, "bottle")
    assert MVTecAD(root=str(tmp_path)).categories() == ["bottle", "mypart"]
    assert MVTecAD(root=str(tmp_path)).family("mypart") == "other"
    data = MVTecAD(root=str(tmp_path), families={"mypart": "texture"})
    assert data.family("mypart") == "texture" and len(data.test("mypart", 0)) == 4


def test_mvtec_native_resolution_and_one_size_per_category(tmp_path):
    make_mvtec_category(tmp_path, "mypart", size=(70, 50))
    data = MVTecAD(root=str(tmp_path), image_size=None, crop_size=None)
    assert data.test("mypart", 0)[0].image.shape == (3, 50, 70)
    save(tmp_path / "mypart/train/good/009.png", background(60, 50, seed=9))
    with pytest.raises(UserError, match=r"images differ in size .*70x50.*60x50.*set image_size"):
        data.train("mypart", 0)


def test_mvtec_mask_with_upper_case_extension(tmp_path):
    folder = make_mvtec_category(tmp_path)
    (folder / "ground_truth/crack/000_mask.png").rename(folder / "ground_truth/crack/000_mask.PNG")
    assert len(MVTecAD(root=str(tmp_path)).test("bottle", 0)) == 4


# ---- VisA ------------------------------------------------------------------------------------------------------


def make_visa(root: Path, category: str = "candle") -> Path:
    rows = []
    for i in range(4):
        path = f"{category}/Data/Images/Normal/{i:04d}.JPG"
        save(root / path, background(40, 30, seed=i))
        rows.append([category, "train" if i < 3 else "test", "normal", path, ""])
    image, mask = defect_pair(40, 30, seed=7)
    save(root / f"{category}/Data/Images/Anomaly/000.JPG", image)
    save(root / f"{category}/Data/Masks/Anomaly/000.png", (mask > 0).astype(np.uint8))  # label value 1
    rows.append([category, "test", "anomaly", f"{category}/Data/Images/Anomaly/000.JPG",
                 f"{category}/Data/Masks/Anomaly/000.png"])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv/1cls.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"], *rows])
    return root


def test_visa_layout_split_and_masks(tmp_path):
    data = VisA(root=str(make_visa(tmp_path)), image_size=32, crop_size=None)
    assert data.categories() == ["candle"] and data.family("candle") == "object"
    assert len(data.train("candle", 0)) == 3
    test = data.test("candle", 0)
    by_id = {test[i].id: test[i] for i in range(len(test))}
    assert set(by_id) == {"Normal/0003", "Anomaly/000"} and by_id["Anomaly/000"].mask.sum() > 0


def test_visa_missing_split_file_and_category_folder_hint(tmp_path):
    make_visa(tmp_path)
    with pytest.raises(UserError, match=r"looks like a category folder: pass its parent"):
        VisA(root=str(tmp_path / "candle"))


# ---- data check ------------------------------------------------------------------------------------------------


def test_data_check_names_missing_extra_and_broken_files_and_exits_non_zero(tmp_path, capsys):
    folder = make_mvtec_category(tmp_path, defects={"crack": 25})
    assert main(["data", "check", "mvtec", "--root", str(tmp_path), "--categories", "bottle"]) == 0
    for i in range(22):
        (folder / f"ground_truth/crack/{i:03d}_mask.png").unlink()
    save(folder / "ground_truth/crack/099_mask.png", np.zeros((64, 64), np.uint8))
    good = folder / "train/good/001.png"
    good.write_bytes(good.read_bytes()[:200])
    capsys.readouterr()
    assert main(["data", "check", "mvtec", "--root", str(tmp_path), "--categories", "bottle", "--verify"]) == 1
    out = capsys.readouterr().out
    assert "missing mask: " in out and "000.png" in out and "... and 4 more problem(s)" in out
    # 22 missing + 1 extra + 1 broken = 24 problems: the first 20 shown, the rest counted
    assert main(["data", "check", "mvtec", "--root", str(folder), "--categories", "bottle"]) == 2
    assert "looks like a category folder: pass its parent" in capsys.readouterr().err


def test_data_check_of_an_incomplete_copy_exits_non_zero(tmp_path, capsys):
    """Without --categories the whole dataset is checked: the 14 MVTec AD classes a copy lacks are problems."""
    make_mvtec_category(tmp_path, defects={"crack": 1})
    assert main(["data", "check", "mvtec", "--root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "missing category folder: carpet" in out and "missing category folder: bottle" not in out
    assert "only bottle present: check just those with --categories bottle" in err


def test_data_check_reads_the_root_from_the_environment_and_names_what_is_missing(tmp_path, capsys, monkeypatch):
    """``data check mvtec`` without --root uses ANOMBENCH_DATA_MVTEC, as a run does; a dataset with no default
    folder (folder) and a download without --root are one-line errors."""
    make_mvtec_category(tmp_path, defects={"crack": 1})
    monkeypatch.setenv("ANOMBENCH_DATA_MVTEC", str(tmp_path))
    assert main(["data", "check", "mvtec", "--categories", "bottle"]) == 0
    out = capsys.readouterr().out
    assert f"MVTec AD at {tmp_path}" in out and "no problems in mvtec's root (from its environment variable)" in out
    rows = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert rows == ["bottle", "total"], "--categories bottle: the count table has that class's row only"
    assert main(["data", "check", "folder"]) == 2
    assert capsys.readouterr().err.strip() == "anombench: error: data check folder needs --root DIR (it has no " \
                                              "default folder)"
    assert main(["data", "download", "mvtec"]) == 2
    assert "data download mvtec needs --root DIR" in capsys.readouterr().err


def test_data_check_verify_finds_a_truncated_image(tmp_path, capsys):
    folder = make_mvtec_category(tmp_path)
    path = folder / "test/crack/001.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header still reads
    assert main(["data", "check", "mvtec", "--root", str(tmp_path), "--categories", "bottle"]) == 0
    assert main(["data", "check", "mvtec", "--root", str(tmp_path), "--categories", "bottle", "--verify"]) == 1
    assert "broken image: cannot read image " in capsys.readouterr().out


def test_data_check_of_a_folder_dataset_with_params_and_the_runner_preflight(tmp_path, capsys):
    root = make_folder(tmp_path / "p")
    args = ["data", "check", "folder", "--root", str(root), "--param", "abnormal_dirs=[crack, scratch]",
            "--param", "mask_dir=mask"]
    assert main(args + ["--verify"]) == 0
    assert "p: 8 train, 6 test images\nno problems in" in capsys.readouterr().out  # 2 of 10 normal held out
    (root / "mask/scratch/scratch1_mask.PNG").unlink()
    (root / "mask/crack/crack7_mask.png").write_bytes((root / "mask/crack/crack0_mask.PNG").read_bytes())
    assert main(args) == 1 and "missing mask: " in capsys.readouterr().out
    data = Folder(root=str(root), abnormal_dirs=["crack", "scratch"], mask_dir="mask")
    assert [p.split(" (")[0] for p in data.check_files("p", verify=False)] == [
        f"missing mask: {root / 'scratch/scratch1.png'}",
        f"extra mask: {root / 'mask/crack/crack7_mask.png'} has no image in abnormal_dirs"]


# ---- --data typo -----------------------------------------------------------------------------------------------


def test_data_name_not_in_the_suite_is_a_one_line_error(tmp_path, capsys):
    suite = Path(__file__).resolve().parents[1] / "suites/quickstart.yaml"
    assert main(["run", str(suite), "--data", f"mvtech={tmp_path}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'mvtech' is not a dataset of" in err and "its datasets: synthetic" in err


# ---- saved maps ------------------------------------------------------------------------------------------------


def write_maps(data_root: Path, maps_root: Path) -> dict[str, np.ndarray]:
    """One map per test image: the image's brightness plus noise (so the scores are informative, not perfect)."""
    test = MVTecAD(root=str(data_root), image_size=None, crop_size=None).test("bottle", 0)
    rng = np.random.default_rng(0)
    maps = {}
    for i in range(len(test)):
        sample = test[i]
        maps[sample.id] = sample.image.mean(0).numpy() + rng.normal(0, 0.2, sample.image.shape[1:]).astype(np.float32)
        path = maps_root / "bottle" / f"{sample.id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, maps[sample.id])
    return maps


def direct_metrics(data_root: Path, maps: dict[str, np.ndarray]) -> dict[str, float]:
    test = MVTecAD(root=str(data_root), image_size=None, crop_size=None).test("bottle", 0)
    batch = collate([test[i] for i in range(len(test))])
    stacked = np.stack([maps[i] for i in batch.ids])
    scores = Scores(stacked, stacked.reshape(len(stacked), -1).max(1))
    figures = {}
    for name, metric in (("pixel_auroc", PixelAUROC()), ("pro", PRO()), ("image_auroc", ImageAUROC())):
        metric.update(scores, batch)
        figures[name] = metric.compute(Resources())
    return figures


def test_evaluate_saved_maps_equals_metrics_computed_directly(tmp_path, capsys):
    make_mvtec_category(tmp_path / "data", defects={"crack": 3, "cut": 2}, n_good=3)
    maps = write_maps(tmp_path / "data", tmp_path / "maps")
    code = main(["evaluate", "--maps", str(tmp_path / "maps"), "--data", f"mvtec={tmp_path / 'data'}",
                 "--out", str(tmp_path / "run"), "--quiet", "--threads", "1"])
    assert code == 0
    assert f"results: one run directory per category (saved maps name their category): {tmp_path / 'run/bottle'}" \
        in capsys.readouterr().out
    import json

    record = json.loads((tmp_path / "run/bottle/cells.jsonl").read_text().splitlines()[0])
    expected = direct_metrics(tmp_path / "data", maps)
    assert record["status"] == "ok"
    for name, value in expected.items():
        assert record["metrics"][name] == pytest.approx(value, abs=1e-9), name


def test_saved_map_at_original_size_goes_through_the_mask_transform_and_bad_size_is_named(tmp_path):
    from anombench_plugins.saved_maps import SavedMaps

    make_mvtec_category(tmp_path / "data")
    test = MVTecAD(root=str(tmp_path / "data"), image_size=32, crop_size=24).test("bottle", 0)
    batch = collate([test[i] for i in range(len(test))])
    for sample_id, mask in zip(batch.ids, batch.masks):
        original = np.zeros((64, 64), np.float32)
        if sample_id != "good/000":
            original = np.asarray(MVTecAD(root=str(tmp_path / "data"), image_size=None, crop_size=None)
                                  .test("bottle", 0)[batch.ids.index(sample_id)].mask, dtype=np.float32)
        path = tmp_path / "maps/bottle" / f"{sample_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, original)
    method = SavedMaps(root=str(tmp_path / "maps"), image_size=32, crop_size=24)
    method.fit([])
    scores = method.score_maps(batch)
    assert np.array_equal(scores.maps > 0, batch.masks.numpy() > 0)  # the same geometry as the masks
    output_only = SavedMaps(root=str(tmp_path / "maps"))
    output_only.fit([])
    with pytest.raises(UserError, match=r"saved map .*crack/000.npy is 64x64: expected 24x24 \(the dataset's "
                                        r"output\) or the image's size with image_size/crop_size set"):
        output_only.score_maps(batch)
    checked = SavedMaps(root=str(tmp_path / "maps"), image_size=32, crop_size=24, dataset="mvtec",
                        dataset_params={"root": str(tmp_path / "data"), "image_size": 32, "crop_size": 24})
    checked.fit([])
    assert np.array_equal(checked.score_maps(batch).maps, scores.maps)
    np.save(tmp_path / "maps/bottle/good/000.npy", np.zeros((48, 48), np.float32))  # neither 24x24 nor 64x64
    with pytest.raises(UserError, match=r"good/000.npy is 48x48: expected 24x24 \(the dataset's output\) or 64x64"):
        checked.score_maps(batch)
    (tmp_path / "maps/bottle/good/000.npy").unlink()
    with pytest.raises(UserError, match=r"no map .*bottle/good/000.npy \(nor .tiff, .tif, .png\)"):
        method.score_maps(batch)
