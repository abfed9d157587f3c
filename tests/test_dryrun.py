"""``anombench run SUITE --dry-run``: the cell grid, substitutions and what is missing, and nothing run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def dry_run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMBENCH_DATA_")}
    return subprocess.run([sys.executable, "-m", "anombench.cli", "run", *args, "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quickstart_dry_run_lists_its_cells_and_writes_nothing(tmp_path):
    result = dry_run(tmp_path, "quickstart", "--set", "categories=stripes,disc")
    assert result.returncode == 0, result.stderr
    assert "cells: 4 (1 seed(s))" in result.stdout and "missing: none" in result.stdout
    assert "substitutions: none" in result.stdout
    assert not (tmp_path / "results").exists()


def test_dry_run_names_missing_data_and_a_substituted_backbone(tmp_path):
    result = dry_run(tmp_path, "table3", "--set", "categories=bottle", "--set", "backbone=efficientnet_lite0")
    assert result.returncode == 1
    assert "padim-r18-rd100 [backbone=efficientnet_lite0]" in result.stdout
    assert "data: no data root given" in result.stdout


def test_a_run_started_next_to_a_folder_named_anombench_still_imports_the_package(tmp_path):
    """The clone's parent folder holds `anombench/`: the isolated cells' fork server must not import that folder
    as the package (it runs `python -c`, whose sys.path starts with the current directory)."""
    (tmp_path / "anombench").mkdir()
    tiny = "datasets={synthetic: {params: {image_size: 32, n_train: 4, n_test_good: 2, n_test_defective: 2}}}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMBENCH_DATA_")}
    script = str(Path(sys.executable).parent / "anombench")  # the console script a user types (python -m would
    result = subprocess.run([script, "run", "quickstart", "--set", tiny, "--set",  # import the folder itself)
                             "categories=disc", "--set", "methods=padim-lite0-rd100", "--out", str(tmp_path / "run"),
                             "--quiet", "--threads", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
