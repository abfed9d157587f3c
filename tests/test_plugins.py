"""Plugin loading: a third-party plugin that fails to import, has a misspelt hook, raises while registering or
registers nothing is reported once in one line and skipped; everything that does not need it still works, in a
real `anombench` subprocess with the broken distributions installed as dist-infos (what `pip install` leaves).
Plus the plugin selection variables and the in-process test helper (anombench.testing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anombench import hookimpl
from anombench.errors import UserError
from anombench.plugins import registry
from anombench.testing import registered
from sites import write_dist_info

THIRDPARTY = Path(__file__).parent / "thirdparty"
LIGHT = "synthetic,metrics"  # built-ins without torchvision/timm: quicker subprocesses

BROKEN = {  # distribution -> (entry point, module source)
    "anombench-cv3": ("cv3", "import cv3_is_not_installed\n"),
    "anombench-typo": ("typo", "from anombench import hookimpl\n\n@hookimpl\n"
                               "def anombench_register_method(register):\n    register('typo', object)\n"),
    "anombench-raises": ("raises", "from anombench import hookimpl\n\n@hookimpl\n"
                                   "def anombench_register_methods(register):\n"
                                   "    register('half', object)\n    raise RuntimeError('no licence key found')\n"),
    "anombench-empty": ("empty", "'''A plugin that forgot its hooks.'''\n"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    for dist, (entry, source) in BROKEN.items():
        write_dist_info(site, dist, "0.3", entry, f"anombench_{entry}", source)
    write_dist_info(site, "anombench-pixelstats", "0.3", "pixelstats", "anombench_pixelstats")  # a healthy one
    return site


def anombench(*args: str, site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(THIRDPARTY)]), **env}
    for variable in ("ANOMBENCH_PLUGINS", "ANOMBENCH_DISABLE_PLUGINS"):
        if variable not in env:
            environment.pop(variable, None)
    return subprocess.run([sys.executable, "-m", "anombench.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def lines_about(stderr: str, plugin: str) -> list[str]:
    return [line for line in stderr.splitlines() if f"plugin '{plugin}'" in line]


def test_broken_plugins_are_reported_once_and_skipped(site, tmp_path):
    result = anombench("list", site=site, cwd=tmp_path, ANOMBENCH_PLUGINS=f"{LIGHT},cv3,typo,raises,empty,pixelstats")
    assert result.returncode == 0, result.stderr
    (cv3,) = lines_about(result.stderr, "cv3")
    assert cv3 == ("anombench: warning: plugin 'cv3' (anombench_cv3, from anombench-cv3 0.3) failed to load and is "
                   "skipped: ModuleNotFoundError: No module named 'cv3_is_not_installed'; to skip it quietly set "
                   "ANOMBENCH_DISABLE_PLUGINS=cv3")
    (typo,) = lines_about(result.stderr, "typo")
    assert "unknown hook 'anombench_register_method' (misspelt?); the hooks are: anombench_register_methods, " \
           "anombench_register_datasets, anombench_register_metrics" in typo
    (raises,) = lines_about(result.stderr, "raises")
    assert "its hook anombench_register_methods raised RuntimeError: no licence key found" in raises
    (empty,) = lines_about(result.stderr, "empty")
    assert empty.startswith("anombench: warning: plugin 'empty' (anombench_empty, from anombench-empty 0.3) "
                            "registered nothing")
    out = result.stdout
    assert "pixel_gaussian" in out and "synthetic" in out and "pixel_auroc" in out
    assert "half" not in out.split("broken plugins")[0]  # a plugin whose hook raised keeps none of its registrations
    broken = out.split("broken plugins (skipped):\n")[1].splitlines()
    assert sorted(line.split()[0] for line in broken) == ["cv3", "raises", "typo"]
    assert any("cv3" in line and "anombench-cv3 0.3  (anombench_cv3)  ModuleNotFoundError" in line for line in broken)


def write_suite(path: Path, method_plugin: str) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "plugins-test",
        "datasets": {"synthetic": {"params": {"image_size": 32, "n_train": 4, "n_test_good": 2,
                                              "n_test_defective": 2}, "categories": ["disc"]}},
        "methods": {"m": {"plugin": method_plugin}},
        "metrics": ["pixel_auroc"],
        "run": {"batch_size": 4, "workers": 0},
        "table": {"cell": ["pixel_auroc"]},
    }))
    return path


def test_a_run_that_does_not_need_the_broken_plugin_works(site, tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", "pixel_gaussian")
    result = anombench("run", str(suite), "--out", "run", "--quiet", "--device", "cpu", site=site, cwd=tmp_path,
                       ANOMBENCH_PLUGINS=f"{LIGHT},cv3,pixelstats")
    assert result.returncode == 0, result.stderr
    assert len(lines_about(result.stderr, "cv3")) == 1 and (tmp_path / "run" / "table.md").exists()


def test_a_suite_that_needs_it_says_which_plugin_failed(site, tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", "typo")
    result = anombench("run", str(suite), "--quiet", site=site, cwd=tmp_path, ANOMBENCH_PLUGINS=f"{LIGHT},typo")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"anombench: error: {suite}: methods.m.plugin: unknown method 'typo'; registered methods:")
    assert "plugin 'typo' (anombench-typo) failed to load: unknown hook 'anombench_register_method'" in error


def test_disable_skips_a_plugin_quietly_and_plugins_keeps_the_builtins(site, tmp_path):
    result = anombench("list", site=site, cwd=tmp_path, ANOMBENCH_PLUGINS="pixelstats,cv3",
                       ANOMBENCH_DISABLE_PLUGINS="cv3,padim,spade,vae,ensemble")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "pixel_gaussian" in result.stdout and "mvtec" in result.stdout and "pixel_auroc" in result.stdout
    assert "broken plugins" not in result.stdout and "padim" not in result.stdout


def test_names_matching_no_plugin_are_warned_about(site, tmp_path):
    result = anombench("list", site=site, cwd=tmp_path, ANOMBENCH_PLUGINS=f"{LIGHT},pixelstatz")
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "pixelstatz" in line]
    assert warning.startswith("anombench: warning: ANOMBENCH_PLUGINS names 'pixelstatz', which matches no installed "
                              "plugin; installed: cv3, empty, ensemble,")


# ------------------------------------------------------------------------------------------------ in-process


class Typo:
    @hookimpl
    def anombench_register_dataset(self, register):
        register("nothing", object)


class Counting:
    @hookimpl
    def anombench_register_metrics(self, register):
        register("count", Counting)


def test_registered_adds_a_plugin_for_the_block_only():
    assert "count" not in registry().names("metric")
    with registered(Counting()) as reg:
        assert reg.get("metric", "count").factory is Counting
        assert reg.get("metric", "count").distribution == "(in-process)" and reg is registry()
    assert "count" not in registry().names("metric")


def test_a_test_plugin_with_a_misspelt_hook_fails_the_test_in_one_line():
    with pytest.raises(UserError, match=r"^plugin 'Typo': unknown hook 'anombench_register_dataset' \(misspelt\?\); "
                                        r"the hooks are: anombench_register_methods, "):
        with registered(Typo()):
            pass
    assert "Typo" not in str(registry().entries)


def test_register_plugin_fixture(register_plugin):
    assert register_plugin(Counting(), name="counting").get("metric", "count").plugin == "counting"


def test_the_fixture_took_it_away():
    assert "count" not in registry().names("metric")
