"""The runner in-process: records, measurements, failures that do not stop a suite, shared feature groups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dataset_layouts import make_mvtec_category

from anombench.api import Batch, ComposedFromSharedSteps, Scores, UndefinedMetric
from anombench.errors import UserError
from anombench.plugins import Registered, Registry
from anombench.report import write_tables
from anombench.results import RunStore, load_cells, load_provenance
from anombench.rundir import exclusive_writer
from anombench.runner import RunOptions, in_process_executor, plan, run_suite
from anombench.suite import build_suite, load_suite

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


def extended(registry: Registry, *more: Registered) -> Registry:
    """A copy of ``registry`` with ``more`` entries registered in-process."""
    copy = Registry()
    for entries in registry.entries.values():
        for entry in entries.values():
            copy.add(entry)
    for entry in more:
        copy.add(entry)
    return copy


@pytest.fixture(scope="module")
def test_registry(registry) -> Registry:
    return extended(registry, Registered("method", "pooled_gaussian", PooledGaussian, "tests", "tests", ""),
                    Registered("method", "exploding", ExplodingMethod, "tests", "tests", ""))


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
    assert record["metrics"]["model_gb"] is None  # pixel_gaussian does not report its size: undefined, and why
    assert "model size" in record["undefined"]["model_gb"]
    assert record["resources"]["peak_cuda_gb"] is None  # not measured: null, not NaN
    strict = json.loads((tmp_path / "run" / "cells.jsonl").read_text().splitlines()[0],
                        parse_constant=lambda name: pytest.fail(f"cells.jsonl holds {name}: not strict JSON"))
    assert strict["cell"] in store.records
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
    paper_layout = table.split("### Measurements")[0]
    rows = [line.split("|")[1].strip() for line in paper_layout.splitlines() if line.startswith("| ")]
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
    with pytest.raises(UserError, match=r"cannot --resume with another configuration than the run's "
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
    with pytest.raises(UserError, match=r"categories: bottle not available; available: stripes, weave"):
        run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["bottle"]), tmp_path / "run", test_registry)


def test_an_unreadable_image_is_named_before_any_cell_runs(tmp_path, test_registry):
    """The data preflight decodes every file of the run's categories first: a truncated image is one line naming
    it, before any fitting, and no cell is stored."""
    root = tmp_path / "mvtec"
    make_mvtec_category(root, "bottle", size=(32, 32), n_train=3, n_good=1, defects={"crack": 1})
    broken = sorted((root / "bottle" / "train" / "good").glob("*.png"))[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    doc = suite_doc({"pg": {"plugin": "pixel_gaussian"}})
    doc["datasets"] = {"mvtec": {"params": {"root": str(root), "image_size": 32, "crop_size": 32},
                                 "categories": ["bottle"]}}
    with pytest.raises(UserError) as raised:
        run(doc, tmp_path / "run", test_registry)
    assert str(broken) in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "run" / "cells.jsonl").exists()


class Counting(PooledGaussian):
    """A third-party method that counts how often the host builds it (constructors store configuration only)."""

    built = 0

    def __init__(self, backbone: str = "pool", min_std: float = 0.05, device: str = "cpu", seed: int = 0) -> None:
        Counting.built += 1
        super().__init__(min_std=min_std, device=device, seed=seed)
        self.backbone = backbone


class NoNormalImages:
    """A metric that does not exist for these cells, as image AUROC on a test set without normal images."""

    higher_is_better = True

    def update(self, scores: Scores, batch: Batch) -> None:
        pass

    def compute(self, resources) -> float:
        raise UndefinedMetric("the test set has no normal image\n(second line)")


class BrokenTable:
    """An observer failing like the table writer did on two datasets of one class."""

    def cells_finished(self, store: RunStore) -> None:
        raise ValueError("cannot reindex on an axis with duplicate labels")


@pytest.fixture(scope="module")
def more_registry(test_registry) -> Registry:
    return extended(test_registry, Registered("method", "counting", Counting, "tests", "tests", ""),
                    Registered("metric", "no_normal_images", NoNormalImages, "tests", "tests", ""))


def test_the_host_builds_each_method_once_per_cell(tmp_path, more_registry):
    Counting.built = 0
    variants = {"a": {"plugin": "counting"}, "b": {"plugin": "counting", "params": {"min_std": 0.2}}}
    store = run(suite_doc(variants, ["disc", "stripes"]), tmp_path / "run", more_registry)
    assert all(r["status"] == "ok" for r in store.records.values()) and len(store.records) == 4
    assert Counting.built == 4
    assert store.records["a|synthetic|disc|0"]["shared_features_with"] == ["b"]


def test_an_undefined_metric_is_recorded_with_its_reason_and_a_failing_observer_stops_nothing(tmp_path, more_registry,
                                                                                             caplog):
    doc = suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["disc", "stripes"])
    doc["metrics"] = ["pixel_auroc", "no_normal_images"]
    doc["table"]["cell"] = ["pixel_auroc"]
    store = run_suite(build_suite(doc, "t.yaml", more_registry), tmp_path / "run", QUIET, registry=more_registry,
                      observers=[BrokenTable()])
    assert len(store.records) == 2
    for record in store.records.values():
        assert record["status"] == "ok" and 0.5 <= record["metrics"]["pixel_auroc"] <= 1.0
        assert record["metrics"]["no_normal_images"] is None
        assert record["undefined"] == {"no_normal_images": "the test set has no normal image (second line)"}
    warnings = [r.getMessage() for r in caplog.records if "BrokenTable" in r.getMessage()]
    assert len(warnings) == 2 and "\n" not in warnings[0]
    assert "ValueError: cannot reindex on an axis with duplicate labels" in warnings[0]


def test_result_files_get_the_users_permissions(tmp_path, test_registry):
    previous = os.umask(0o022)
    try:
        run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["disc"]), tmp_path / "run", test_registry)
    finally:
        os.umask(previous)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"]
    assert {p.name for p in written} >= {"cells.jsonl", "run.json", "suite.yaml", "examples.npz", "curves.json"}
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}


def test_a_variant_substituted_by_an_override_is_labelled_so(tmp_path, more_registry):
    path = tmp_path / "suite.yaml"
    doc = suite_doc({"a": {"plugin": "counting", "params": {"backbone": "pool"}},
                     "pg": {"plugin": "pixel_gaussian"}}, ["disc"])
    path.write_text(yaml.safe_dump(doc))
    suite = load_suite(path, more_registry, ["backbone=pool8"])
    cells = {c.spec.name: c for job in plan(suite, more_registry, set(), QUIET).jobs for c in job.cells}
    assert (cells["a"].label, cells["a"].substituted) == ("a [backbone=pool8]", True)
    assert (cells["pg"].label, cells["pg"].substituted) == ("pg", False)
    same = load_suite(path, more_registry, ["backbone=pool"])
    assert [c.label for job in plan(same, more_registry, set(), QUIET).jobs for c in job.cells] == ["a", "pg"]
