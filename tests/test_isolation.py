"""Crash-proof cells: a third-party method that crashes as native code does (SIGSEGV, ``os._exit``, a memory blow-up
under ``--max-memory-gb``, a hang under ``--cell-timeout``) fails alone, with its reason, and every other cell is
stored as if it were not there: in-process API, the CLI's local executor, ``--jobs 2`` and a Dask LocalCluster.
Afterwards no process the run started is alive (each CLI run's processes carry a marker in their environment)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import yaml
from test_cli import write_suite
from test_runner import PooledGaussian, extended, suite_doc

from anombench.plugins import Registered, Registry
from anombench.results import RunStore
from anombench.runner import RunOptions, in_process_executor, run_suite
from anombench.suite import build_suite

THIRDPARTY = Path(__file__).parent / "thirdparty"
LIGHT_PLUGINS = "synthetic,metrics,pixelstats,crashers"  # no torchvision/timm: quicker process starts
TIMEOUT, MEMORY_GB = 20, 1.5
CRASHES = {  # cell method name -> (Crasher params, the reason its record must give)
    "segv": ({"how": "segfault"}, "killed by SIGSEGV"),
    "exit3": ({"how": "exit"}, "exited with status 3"),
    "hog": ({"how": "hog", "gb": 4.0}, f"exceeded the memory limit of {MEMORY_GB:g} GB"),
    "sleepy": ({"how": "sleep"}, f"timed out after {TIMEOUT:g} s"),
}


def crashing_methods(markers: Path) -> dict[str, Any]:
    methods: dict[str, Any] = {"pg": {"plugin": "pixel_gaussian"}}
    for name, (params, _) in CRASHES.items():
        methods[name] = {"plugin": "crasher", "params": {**params, "marker_dir": str(markers)}}
    return methods


def check_crash_records(records: dict[str, dict[str, Any]], category: str) -> None:
    """The crashing cells fail with their reason, in one line; the healthy one is stored with its figures."""
    for name, (_, reason) in CRASHES.items():
        record = records[f"{name}|synthetic|{category}|0"]
        assert record["status"] == "failed" and record["error"] == reason, record["error"]
    healthy = records[f"pg|synthetic|{category}|0"]
    assert healthy["status"] == "ok" and 0.5 <= healthy["metrics"]["pixel_auroc"] <= 1.0


def gone(pids: list[int], seconds: float = 10.0) -> bool:
    """Whether every process in ``pids`` has ended (a zombie counts as ended), waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def marked_processes(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``ANOMBENCH_TEST_MARK=mark`` (a run's descendants, even orphans)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("ANOMBENCH_TEST_MARK") == mark and process.status() != "zombie":
                found.append(process)
        except psutil.Error:
            continue
    return found


class CrashingPooled(PooledGaussian):
    """A variant sharing PooledGaussian's extraction whose own fit step segfaults."""

    def fit_step(self, features: torch.Tensor) -> None:
        os.kill(os.getpid(), signal.SIGSEGV)


@pytest.fixture(scope="module")
def crash_registry(registry) -> Registry:
    sys.path.insert(0, str(THIRDPARTY))
    from anombench_crashers import Crasher

    return extended(registry, Registered("method", "crasher", Crasher, "crashers", "tests", ""),
                    Registered("method", "pooled_gaussian", PooledGaussian, "tests", "tests", ""),
                    Registered("method", "crashing_pooled", CrashingPooled, "tests", "tests", ""))


def run(doc: dict, out: Path, registry: Registry, isolated: bool = True) -> RunStore:
    options = RunOptions(device="cpu", threads=1, show_progress=False, cell_timeout=TIMEOUT, max_memory_gb=MEMORY_GB)
    return run_suite(build_suite(doc, "t.yaml", registry), out, options, registry=registry,
                     executor=None if isolated else in_process_executor(registry))


def test_each_crash_fails_its_cell_alone_and_the_others_are_stored_as_without_it(tmp_path, crash_registry):
    markers = tmp_path / "markers"
    store = run(suite_doc(crashing_methods(markers), ["disc"]), tmp_path / "run", crash_registry)
    check_crash_records(store.records, "disc")
    alone = run(suite_doc({"pg": {"plugin": "pixel_gaussian"}}, ["disc"]), tmp_path / "alone", crash_registry,
                isolated=False)
    quality = ("pixel_auroc", "image_auroc")
    healthy, reference = store.records["pg|synthetic|disc|0"], alone.records["pg|synthetic|disc|0"]
    assert {m: healthy["metrics"][m] for m in quality} == {m: reference["metrics"][m] for m in quality}
    assert gone([int(p.name) for p in markers.iterdir()]), "a crashed cell's process is still alive"


def test_a_crash_in_a_shared_job_fails_only_its_own_cell(tmp_path, crash_registry):
    """Three variants share one extraction; one segfaults in its own step. The job's process dies with all three,
    so each is run again alone: the healthy two are stored with the figures they have alone."""
    variants = {"a": {"plugin": "pooled_gaussian", "params": {"min_std": 0.01}},
                "b": {"plugin": "pooled_gaussian", "params": {"min_std": 0.2}},
                "bad": {"plugin": "crashing_pooled"}}
    store = run(suite_doc(variants, ["disc"]), tmp_path / "run", crash_registry)
    bad = store.records["bad|synthetic|disc|0"]
    assert bad["status"] == "failed"
    assert bad["error"] == "killed by SIGSEGV, also when run alone after the process it shared with a, b, bad was " \
                           "killed by SIGSEGV"
    for name in ("a", "b"):
        alone = run(suite_doc({name: variants[name]}, ["disc"]), tmp_path / f"alone-{name}", crash_registry)
        cell = f"{name}|synthetic|disc|0"
        assert store.records[cell]["status"] == "ok"
        assert store.records[cell]["metrics"]["pixel_auroc"] == alone.records[cell]["metrics"]["pixel_auroc"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The crashing plugin and the pixel-statistics plugin installed as pip leaves them (dist-info on the path)."""
    site = tmp_path_factory.mktemp("site")
    for project, entry, module in (("anombench-crashers", "crashers", "anombench_crashers"),
                                   ("anombench-pixelstats", "pixelstats", "anombench_pixelstats")):
        dist = site / f"{project.replace('-', '_')}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[anombench]\n{entry} = {module}\n")
    return site


@pytest.mark.slow
@pytest.mark.parametrize("executor", [[], ["--jobs", "2"], ["--executor", "dask"]], ids=["local", "jobs2", "dask"])
def test_the_cli_records_each_crash_and_leaves_no_process_behind(site, tmp_path, executor):
    if "dask" in executor:
        pytest.importorskip("distributed")
    markers, mark = tmp_path / "markers", uuid.uuid4().hex
    suite = write_suite(tmp_path / "suite.yaml", ["disc"], methods=crashing_methods(markers))
    doc = yaml.safe_load(suite.read_text())
    doc["run"]["workers"] = 1  # loader worker processes under each job's process: they must go too
    suite.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(THIRDPARTY)]),
           "ANOMBENCH_PLUGINS": LIGHT_PLUGINS, "ANOMBENCH_TEST_MARK": mark}
    result = subprocess.run([sys.executable, "-m", "anombench.cli", "run", str(suite), "--out", "run", "--quiet",
                             "--device", "cpu", "--threads", "1", "--cell-timeout", str(TIMEOUT),
                             "--max-memory-gb", str(MEMORY_GB), *executor],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "4 cell(s) failed" in result.stderr
    lines = (tmp_path / "run" / "cells.jsonl").read_text().splitlines()
    check_crash_records({r["cell"]: r for r in map(json.loads, lines)}, "disc")
    deadline = time.monotonic() + 15
    while marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(p.pid, p.ppid(), p.cmdline()[-1][:60]) for p in marked_processes(mark)] == [], \
        "processes of the run outlived it"


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_a_cli_killed_mid_cell_leaves_no_process_behind(site, tmp_path, how):
    """The run's own process dies (SIGKILL: no clean-up code runs) or is interrupted while a job's process and its
    loader worker run: they go too (the fork server exits with the run, its children with it)."""
    markers, mark = tmp_path / "markers", uuid.uuid4().hex
    suite = write_suite(tmp_path / "suite.yaml", ["disc"], methods={
        "sleepy": {"plugin": "crasher", "params": {"how": "sleep", "marker_dir": str(markers)}}})
    doc = yaml.safe_load(suite.read_text())
    doc["run"]["workers"] = 1
    suite.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(THIRDPARTY)]),
           "ANOMBENCH_PLUGINS": LIGHT_PLUGINS, "ANOMBENCH_TEST_MARK": mark}
    process = subprocess.Popen([sys.executable, "-m", "anombench.cli", "run", str(suite), "--out", "run", "--quiet",
                                "--device", "cpu", "--threads", "1"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (markers.exists() and any(markers.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(marked_processes(mark)) >= 4, "the run, its fork server, the job's process and its loader worker"
    process.send_signal(how)
    process.wait(timeout=120)
    deadline = time.monotonic() + 20
    while marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(p.pid, p.ppid(), p.cmdline()[-1][:60]) for p in marked_processes(mark)] == [], \
        "processes of the run outlived it"
