"""Built-in suites run by name (anombench.catalog): the names are the files of suites/, a path that exists wins,
an unknown name is one line listing the names, `anombench run NAME` works from any directory, and a wheel ships
the suites (installed into a fresh environment, it runs them by name)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from anombench.catalog import builtin_suites, find_suite
from anombench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SUITE_FILES = sorted(p.name for p in (REPO / "suites").glob("*.yaml"))


def test_builtin_suites_are_the_yaml_files_of_the_suites_folder():
    names = builtin_suites()
    assert [f"{n}.yaml" for n in names] == SUITE_FILES
    assert {"quickstart", "table3", "table3_offline"} <= set(names)


def test_a_builtin_name_with_or_without_suffix_finds_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("table3", "table3.yaml"):
        found = find_suite(name)
        assert found.name == "table3.yaml" and found.read_bytes() == (REPO / "suites" / "table3.yaml").read_bytes()


def test_a_path_that_exists_wins_over_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("table3").write_text("name: mine\n")
    assert find_suite("table3") == Path("table3")
    assert find_suite(str(tmp_path / "table3")) == tmp_path / "table3"


@pytest.mark.parametrize("name", ["tabel3", "suites/nosuch.yaml"])
def test_an_unknown_suite_is_one_line_listing_the_builtin_names(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as error:
        find_suite(name)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{name}: ")
    assert ", ".join(builtin_suites()) in message


def run_cli(python: str, directory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMBENCH_DATA_")}
    return subprocess.run([python, "-m", "anombench.cli", *args], cwd=directory, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_table3_was_loaded(result: subprocess.CompletedProcess) -> None:
    """Table III found and validated: the run stops at the missing MVTec AD data, not at the suite."""
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "MVTec AD" in line and "anombench data download mvtec" in line


def test_cli_runs_and_lists_builtin_suites_from_another_directory(tmp_path):
    assert_table3_was_loaded(run_cli(sys.executable, tmp_path, "run", "table3", "--quiet"))
    result = run_cli(sys.executable, tmp_path, "run", "tabel3", "--quiet")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("anombench: error: tabel3: ") and "quickstart, table1" in line
    listed = run_cli(sys.executable, tmp_path, "list")
    assert f"suites (anombench run NAME): {', '.join(builtin_suites())}" in listed.stdout


@pytest.mark.slow
def test_a_wheel_ships_the_builtin_suites_and_runs_them_by_name(tmp_path):
    """pip builds the wheel as a user would (build isolation: setuptools from the package index or pip's cache);
    a fresh environment that sees only the wheel (and the system's torch & co.) runs table3 by name."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    [wheel] = wheels.glob("anombench-*.whl")
    shipped = sorted(Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("anombench_suites/"))
    assert shipped == sorted(["__init__.py", *SUITE_FILES])
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True, timeout=300)
    python = str(env / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert_table3_was_loaded(run_cli(python, elsewhere, "run", "table3", "--quiet"))
