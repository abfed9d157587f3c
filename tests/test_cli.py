"""The ``anombench`` command as a user runs it: a subprocess, a real third-party plugin installed the way pip
installs one (a ``*.dist-info`` with ``entry_points.txt`` on the path), SIGKILL mid-run and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

THIRDPARTY = Path(__file__).parent / "thirdparty"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site directory holding the third-party distribution's metadata, as `pip install` would leave it."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "anombench_pixelstats-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: anombench-pixelstats\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[anombench]\npixelstats = anombench_pixelstats\n")
    slow = site / "anombench_slowstats-0.1.dist-info"
    slow.mkdir()
    (slow / "METADATA").write_text("Metadata-Version: 2.1\nName: anombench-slowstats\nVersion: 0.1\n")
    (slow / "entry_points.txt").write_text("[anombench]\nslowstats = anombench_slowstats\n")
    return site


def anombench(*args: str, site: Path, cwd: Path, check: bool = False, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(THIRDPARTY)])}
    command = [sys.executable, "-m", "anombench.cli", *args]
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=env, **popen)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def write_suite(path: Path, categories: list[str], n_train: int = 6, methods: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "cli-test",
        "datasets": {"synthetic": {"params": {"image_size": 32, "n_train": n_train, "n_test_good": 3,
                                              "n_test_defective": 3}, "categories": categories}},
        "methods": methods or {"pg": {"plugin": "pixel_gaussian"},
                               "pg-wide": {"plugin": "pixel_gaussian", "params": {"min_std": 0.2}}},
        "metrics": ["pixel_auroc", "pro", "image_auroc", "fit_seconds"],
        "run": {"batch_size": 4, "workers": 0},
        "table": {"cell": ["pixel_auroc", "pro"], "aggregates": ["textures", "objects", "all"]},
    }))
    return path


def test_list_shows_builtins_and_the_third_party_plugin_with_its_distribution(site, tmp_path):
    out = anombench("list", site=site, cwd=tmp_path, check=True).stdout
    assert "pixel_gaussian" in out and "anombench-pixelstats 1.2.3" in out and "params: min_std" in out
    assert "synthetic" in out and "anombench 0.1.0" in out
    assert "pixel_auroc" in out


def test_plugin_filter_environment_variable(site, tmp_path):
    env_run = subprocess.run([sys.executable, "-m", "anombench.cli", "list"], cwd=tmp_path, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{THIRDPARTY}",
                                             "ANOMBENCH_PLUGINS": "synthetic"})
    assert "synthetic" in env_run.stdout and "pixel_gaussian" not in env_run.stdout


def test_run_report_compare_end_to_end(site, tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", ["disc", "stripes"])
    result = anombench("run", str(suite), "--out", "run", "--quiet", "--device", "cpu", "--set", "batch_size=3",
                       site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| disc" in result.stdout and "results: run" in result.stdout
    for name in ("cells.jsonl", "run.json", "suite.yaml", "table.md", "table.csv"):
        assert (tmp_path / "run" / name).exists()
    provenance = json.loads((tmp_path / "run" / "run.json").read_text())
    assert provenance["versions"]["anombench-pixelstats"] == "1.2.3" and provenance["suite_sha256"]
    assert (provenance["executor"], provenance["jobs_at_once"], provenance["batch_size"]) == ("local", 1, 3)
    assert "batch_size" not in provenance["picked"] and "threads" in provenance["picked"]
    report = anombench("report", "run", site=site, cwd=tmp_path, check=True).stdout
    assert "## Provenance" in report and "(pixel_auroc" not in report and "pixel_auroc, pro (%)" in report
    assert "Run with overrides of the suite file" in report and "`batch_size=3`" in report
    assert (tmp_path / "run" / "report.html").exists()

    same = anombench("compare", "run", "run", site=site, cwd=tmp_path, check=True)
    assert "0 worse" in same.stdout
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    records = [json.loads(line) for line in (tmp_path / "run" / "cells.jsonl").read_text().splitlines()]
    records[0]["metrics"]["pro"] += 0.05
    (baseline / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    worse = anombench("compare", "run", str(baseline), site=site, cwd=tmp_path)
    assert worse.returncode == 1 and "| WORSE" in worse.stdout and records[0]["cell"] in worse.stdout
    timed = anombench("compare", "run", "run", "--metrics", "fit_seconds", site=site, cwd=tmp_path)
    assert timed.returncode == 2 and "only quality metrics (higher is better) can be gated" in timed.stderr


def test_inprocess_executor_stores_the_figures_of_the_isolated_one(site, tmp_path):
    """``--executor inprocess`` (for a debugger or profiler, and the baseline of benchmarks/bench_isolation.py) runs
    the same jobs without child processes: every figure equals the default executor's. Run as ``python -m
    anombench``, the form the benchmark uses."""
    suite = write_suite(tmp_path / "suite.yaml", ["disc", "stripes"])
    figures = {}
    for executor in ("local", "inprocess"):
        command = [sys.executable, "-m", "anombench", "run", str(suite), "--out", executor, "--quiet",
                   "--device", "cpu", "--executor", executor]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(THIRDPARTY)])}
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in (tmp_path / executor / "cells.jsonl").read_text().splitlines()]
        figures[executor] = {r["cell"]: {k: v for k, v in r["metrics"].items() if k != "fit_seconds"}
                             for r in records}
    assert len(figures["local"]) == 4 and figures["inprocess"] == figures["local"]


@pytest.mark.parametrize("args,message", [
    (["--threads", "-1"], "--threads must be 0 (picked from the machine) or more, got -1"),
    (["--jobs", "2", "--executor", "inprocess"], "--jobs 2 is for --executor local; inprocess runs jobs its own way"),
    (["--set", "methods.pgg.params.min_std=1"], "--set methods.pgg.params.min_std: no method 'pgg' in the suite; "
                                                 "its methods: pg, pg-wide"),
])
def test_bad_run_options_are_one_line_and_exit_2(site, tmp_path, args, message):
    suite = write_suite(tmp_path / "suite.yaml", ["disc"])
    result = anombench("run", str(suite), "--out", "run", *args, site=site, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"anombench: error: {message}"]
    assert not (tmp_path / "run").exists()


def test_bad_suite_is_one_line_and_exit_2(site, tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", ["disc"])
    result = anombench("run", str(suite), "--set", "methods.pg.params.min_sd=1", site=site, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"anombench: error: {suite} with --set methods.pg.params.min_sd=1: methods.pg.params.min_sd: unknown "
        "parameter; allowed: min_std"]


def test_help_explains_with_examples(site, tmp_path):
    text = anombench("run", "--help", site=site, cwd=tmp_path, check=True).stdout
    assert "examples:" in text and "--resume" in text and "--set" in text


def test_sigkill_mid_run_then_resume_keeps_finished_cells(site, tmp_path):
    categories = ["stripes", "weave", "disc", "plate"]
    # the slow method sleeps a second in each fit, so the kill cannot miss the middle of the run
    suite = write_suite(tmp_path / "suite.yaml", categories, methods={
        "pg": {"plugin": "pixel_gaussian"},
        "slow": {"plugin": "slow_gaussian", "params": {"marker_dir": str(tmp_path / "markers"), "seconds": 1.0}}})
    process = anombench("run", str(suite), "--out", "run", "--quiet", "--device", "cpu", site=site, cwd=tmp_path,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "run" / "cells.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (cells.exists() and cells.read_text().count("\n") >= 2):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = {json.loads(line)["cell"]: json.loads(line) for line in cells.read_text().splitlines()}
    assert 2 <= len(before) < 2 * len(categories), "the kill must land mid-run"
    resumed = anombench("run", str(suite), "--out", "run", "--resume", "--quiet", "--device", "cpu",
                        site=site, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = {json.loads(line)["cell"]: json.loads(line) for line in cells.read_text().splitlines()}
    assert len(after) == 2 * len(categories) and all(r["status"] == "ok" for r in after.values())
    for cell, record in before.items():
        assert after[cell]["finished_at"] == record["finished_at"], f"{cell} was recomputed"
    assert not list((tmp_path / "run").glob(".*.tmp")), "no temporary file may be left behind"


def test_ctrl_c_with_a_process_pool_stops_at_the_running_cells(site, tmp_path):
    """--jobs 2, eight slow cells: Ctrl-C while the first ones run must not go on to run the queued ones (whose
    results nobody would store). At most jobs + 1 cells start: the pool hands one more to its call queue."""
    markers = tmp_path / "markers"
    suite = write_suite(tmp_path / "suite.yaml", ["stripes", "weave", "disc", "plate"], methods={
        "slow": {"plugin": "slow_gaussian", "params": {"marker_dir": str(markers), "seconds": 4.0}}})
    process = anombench("run", str(suite), "--out", "run", "--quiet", "--device", "cpu", "--jobs", "2",
                        "--set", "seeds=[0, 1]", site=site, cwd=tmp_path,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (markers.exists() and any(markers.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # both workers are in their first cell
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted; finished cells are stored" in stderr
    assert 1 <= len(list(markers.iterdir())) <= 3
