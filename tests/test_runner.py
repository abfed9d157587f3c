"""The runner in-process: records, measurements, failures that do not stop a suite, shared feature groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_layouts import make_mvtec_category

from anombench.api import Batch, ComposedFromSharedSteps, Scores
from anombench.errors import UserError
from anombench.plugins import Registered, Registry
from anombench.report import write_tables
from anombench.results import RunStore, load_cells, load_provenance
from anombench.rundir import exclusive_writer
from anombench.runner import RunOptions, in_process_executor, run_suite
from anombench.suite import build_suite

QUIET = RunOptions(device="cpu", threads=2, show_progress=False)


class PooledGaussian(ComposedFromSharedSteps):
    """A SharesFeatures method for tests: features = 4x4 average-pooled pixels (extract counts its calls);
    per-position diagonal Gaussian; ``min_std`` makes variants that differ only after extraction."""

    extract_calls = 0

    def __init__(self, min_std: float = 0.05, device: str = "cpu", seed: int = 0) -> None:
        self.min_std = min_std

    def feature_key(self) -> str:
        return "avgpool4"

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        PooledGaussian.extract_calls += 1
        return torch.nn.functional.avg_pool2d(images.double(), 4)

    def fit_begin(self) -> None:
        self.sums, self.squares, self.count = 0.0, 0.0, 0

    def fit_step(self, features: torch.Tensor) -> None:
        self.sums = self.sums + features.sum(0)
        self.squares = self.squares + (features ** 2).sum(0)
        self.count += features.shape[0]

    def fit_end(self) -> None:
        self.mean = self.sums / self.count
        self.std = (self.squares / self.count - self.mean ** 2).clamp_min(0).sqrt().clamp_min(self.min_std)

    def score_features(self, features: torch.Tensor, batch: Batch) -> Scores:
        distance = (((features - self.mean) / self.std) ** 2).sum(1, keepdim=True).sqrt()
        maps = torch.nn.functional.interpolate(distance, size=batch.images.shape[-2:], mode="nearest")[:, 0]
        maps = maps.float().numpy()
        return Scores(maps, maps.reshape(len(batch), -1).max(1))

    def model_bytes(self) -> int:
        return int(self.mean.numel() * 16)


class ExplodingMethod:
    """Fails in fit, as a buggy plugin would."""

    def __init__(self, device: str = "cpu", seed: int = 0) -> None:
        pass

    def fit(self, train) -> None:
        raise RuntimeError("boom in fit\nsecond line")

    def score_maps(self, batch: Batch) -> Scores:
        raise AssertionError("never reached")


@pytest.fixture(scope="module")
def test_registry(registry) -> Registry:
    extended = Registry()
    for kind, entries in registry.entries.items():
        for entry in entries.values():
            extended.add(entry)
    extended.add(Registered("method", "pooled_gaussian", PooledGaussian, "tests", "tests", ""))
    extended.add(Registered("method", "exploding", ExplodingMethod, "tests", "tests", ""))
    return extended


def suite_doc(methods: dict, categories=("disc", "stripes")) -> dict:
    return {
        "name": "runner-test",
        "datasets": {"synthetic": {"params": {"image_size": 32, "n_train": 6, "n_test_good": 3,
                                              "n_test_defective": 3}, "categories": list(categories)}},
        "methods": methods,
        "metrics": ["image_auroc", "pixel_auroc", "fit_seconds", "infer_seconds_per_image", "peak_rss_gb", "model_gb"],
        "run": {"batch_size": 4, "workers": 0},
        "table": {"cell": ["pixel_auroc", "image_auroc"], "aggregates": ["textures", "objects", "all"]},
    }


def run(doc: dict, out: Path, registry: Registry, resume: bool = False, isolated: bool = True) -> RunStore:
    """Run a suite as the CLI does (each job in a child process) or in this process (to count calls)."""
    executor = None if isolated else in_process_executor(registry)
    return run_suite(build_suite(doc, "t.yaml", registry), out, QUIET, resume=resume, registry=registry,
                     executor=executor)


def test_cells_record_metrics_and_resources(tmp_path, test_registry):
    store = run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}), tmp_path / "run", test_registry)
    cells = load_cells(tmp_path / "run")
    assert sorted(cells["cell"]) == ["pg|synthetic|disc|0", "pg|synthetic|stripes|0"]
    assert (cells["status"] == "ok").all()
    assert cells["pixel_auroc"].between(0.5, 1.0).all()
    record = store.records["pg|synthetic|disc|0"]
    assert record["resources"]["n_train"] == 6 and record["resources"]["n_test"] == 6
    assert record["metrics"]["fit_seconds"] > 0 and record["metrics"]["peak_rss_gb"] > 0.05
    assert np.isnan(record["metrics"]["model_gb"])  # pixel_gaussian does not report its size
    assert record["family"] == "object"


def test_a_failing_cell_is_recorded_and_the_suite_goes_on(tmp_path, test_registry):
    store = run(suite_doc({"bad": {"plugin": "exploding"}, "pg": {"plugin": "pixel_gaussian"}}, ["disc"]),
                tmp_path / "run", test_registry)
    bad, good = store.records["bad|synthetic|disc|0"], store.records["pg|synthetic|disc|0"]
    assert bad["status"] == "failed" and bad["error"] == "RuntimeError: boom in fit"
    assert "Traceback" in bad["traceback"]
    assert good["status"] == "ok"
    write_tables(tmp_path / "run")
    table = (tmp_path / "run" / "table.md").read_text()
    assert "FAILED cells (1): bad|synthetic|disc|0 (RuntimeError: boom in fit)" in table
    # one of the dataset's four classes ran: its means are labelled as such, not passed off as the 4-class means
    assert load_provenance(tmp_path / "run")["family_sizes"] == {"synthetic": {"texture": 2, "object": 2}}
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows == ["category", "disc", "objects (1/2)", "all (1/4)"]


def test_shared_group_extracts_once_and_equals_running_alone(tmp_path, test_registry):
    variants = {"a": {"plugin": "pooled_gaussian", "params": {"min_std": 0.01}},
                "b": {"plugin": "pooled_gaussian", "params": {"min_std": 0.2}}}
    PooledGaussian.extract_calls = 0
    shared = run(suite_doc(variants, ["disc"]), tmp_path / "shared", test_registry, isolated=False)
    batches = 2 + 2  # 6 train images and 6 test images in batches of 4
    assert PooledGaussian.extract_calls == batches
    assert shared.records["a|synthetic|disc|0"]["shared_features_with"] == ["b"]
    for name in variants:
        alone = run(suite_doc({name: variants[name]}, ["disc"]), tmp_path / f"alone-{name}", test_registry)
        cell = f"{name}|synthetic|disc|0"
        for metric in ("pixel_auroc", "image_auroc", "model_gb"):
            assert shared.records[cell]["metrics"][metric] == alone.records[cell]["metrics"][metric]
    assert shared.records["a|synthetic|disc|0"]["metrics"]["pixel_auroc"] != \
        shared.records["b|synthetic|disc|0"]["metrics"]["pixel_auroc"]


def test_resume_skips_finished_cells_and_retries_failed(tmp_path, test_registry):
    out = tmp_path / "run"
    first = run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["disc"]), out, test_registry)
    stamp = first.records["pg|synthetic|disc|0"]["finished_at"]
    with pytest.raises(UserError, match="not empty; pass --resume"):
        run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["disc"]), out, test_registry)
    resumed = run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["disc", "plate"]), out, test_registry, resume=True)
    assert resumed.records["pg|synthetic|disc|0"]["finished_at"] == stamp
    assert resumed.records["pg|synthetic|plate|0"]["status"] == "ok"


def test_resume_refuses_other_settings_for_the_same_cells(tmp_path, test_registry):
    """Resuming may add cells (categories, methods) but not change a finished cell's settings: the table would mix
    two setups under one name. The first start time is kept."""
    out = tmp_path / "run"
    run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["disc"]), out, test_registry)
    started = load_provenance(out)["started_at"]
    changed = suite_doc({"pg": {"plugin": "pixel_gaussian", "params": {"min_std": 0.2}}}, ["disc"])
    with pytest.raises(UserError, match=r"cannot --resume with other settings than the run's "
                                        r"\(methods\.pg\.params\.min_std: None -> 0\.2\)"):
        run(changed, out, test_registry, resume=True)
    run(suite_doc({"pg": {"plugin": "pixel_gaussian"}, "pg2": {"plugin": "pixel_gaussian"}}, ["disc"]), out,
        test_registry, resume=True)
    info = load_provenance(out)
    assert info["started_at"] == started and info["resumed_at"] >= started


def test_a_second_writer_of_a_run_directory_is_refused(tmp_path, test_registry):
    out = tmp_path / "run"
    out.mkdir()
    with exclusive_writer(out):  # as a live run holds it
        with pytest.raises(UserError, match="another anombench run is writing this run directory"):
            run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["disc"]), out, test_registry)
    assert not (out / "cells.jsonl").exists()


def test_unknown_category_is_one_line_before_any_work(tmp_path, test_registry):
    with pytest.raises(UserError, match=r"categories: \['bottle'\] not available; available: stripes, weave"):
        run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["bottle"]), tmp_path / "run", test_registry)


def test_unreadable_image_in_a_loader_worker_fails_the_cell_naming_the_file(tmp_path, test_registry):
    """The MVTec reader raises a one-line UserError inside a DataLoader worker; the record keeps that line."""
    root = tmp_path / "mvtec"
    make_mvtec_category(root, "bottle", size=(32, 32), n_train=3, n_good=1, defects={"crack": 1})
    broken = sorted((root / "bottle" / "train" / "good").glob("*.png"))[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    doc = suite_doc({"pg": {"plugin": "pixel_gaussian"}})
    doc["datasets"] = {"mvtec": {"params": {"root": str(root), "image_size": 32, "crop_size": 32},
                                 "categories": ["bottle"]}}
    doc["run"]["workers"] = 1
    store = run(doc, tmp_path / "run", test_registry)
    record = store.records["pg|mvtec|bottle|0"]
    assert record["status"] == "failed"
    assert str(broken) in record["error"] and "\n" not in record["error"]
