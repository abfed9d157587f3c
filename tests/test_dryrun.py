"""``anombench run SUITE --dry-run``: the cell grid, substitutions and what is missing, and nothing run."""

from __future__ import annotations

import os
import subprocess
import sys


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
