"""Suites on Dask and on a process pool, run the way a user runs them: the ``anombench`` CLI as a subprocess, against
a scheduler and two worker processes started with the ``dask`` command (the workers in a directory of their own, as
on another machine), against the LocalCluster the CLI starts itself, and with ``--jobs 2``. The third-party plugins
are installed as dist-infos on PYTHONPATH, which every worker process inherits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from anombench_plugins.mvtec import MVTecAD
from dataset_layouts import make_mvtec_category
from test_cli import write_suite

from anombench.distributed import (
    Needed,
    check_plugins,
    dask_executor,
    needed_plugins,
    submit_options,
    worker_specs,
)
from anombench.errors import UserError
from anombench.planning import Job, PlannedCell, RunOptions, Settings, available_cores, instantiate_method
from anombench.plugins import Registry
from anombench.suite import Cell, DatasetSpec, MethodSpec

distributed = pytest.importorskip("distributed")

THIRDPARTY = Path(__file__).parent / "thirdparty"
QUICKSTART = Path(__file__).parents[1] / "suites" / "quickstart.yaml"
QUALITY = ("pixel_auroc", "pro", "image_auroc")
LIGHT_PLUGINS = "synthetic,metrics,mvtec,pixelstats,slowstats"  # no torchvision/timm: faster worker (re)starts


def write_dist_info(site: Path, project: str, version: str, entry: str, module: str) -> None:
    """What `pip install` leaves for a distribution that registers one anombench entry point."""
    dist = site / f"{project.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[anombench]\n{entry} = {module}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    write_dist_info(site, "anombench-pixelstats", "1.2.3", "pixelstats", "anombench_pixelstats")
    write_dist_info(site, "anombench-slowstats", "0.1.0", "slowstats", "anombench_slowstats")
    return site


def plugin_env(site: Path, plugins: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(THIRDPARTY)])}
    if plugins is not None:
        env["ANOMBENCH_PLUGINS"] = plugins
    return env


def anombench(*args: Any, env: dict[str, str], cwd: Path, **popen: Any) -> Any:
    command = [sys.executable, "-m", "anombench.cli", *map(str, args)]
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=env, **popen)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def scheduler(site, tmp_path_factory) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1`` on 127.0.0.1, as the README says to start
    them; the workers' working directory is not the client's. Yields the scheduler address."""
    base = tmp_path_factory.mktemp("cluster")
    (base / "workers").mkdir()
    address_file, log = base / "scheduler.json", (base / "cluster.log").open("w")
    dask = [sys.executable, "-m", "dask"]
    started = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(address_file)], env=plugin_env(site), stdout=log, stderr=log,
                                start_new_session=True)]
    started.append(subprocess.Popen([*dask, "worker", "--scheduler-file", str(address_file), "--nworkers", "2",
                                     "--nthreads", "1", "--no-dashboard", "--memory-limit", "0"],
                                    cwd=base / "workers", env=plugin_env(site), stdout=log, stderr=log,
                                    start_new_session=True))
    try:
        with distributed.Client(scheduler_file=str(address_file), timeout=120) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        for process in reversed(started):  # each in a session of its own: the group is it and its workers
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        log.close()


def records(run: Path) -> dict[str, dict[str, Any]]:
    lines = (run / "cells.jsonl").read_text().splitlines()
    return {record["cell"]: record for record in map(json.loads, lines)}


def quality(run: Path) -> dict[str, dict[str, float]]:
    return {cell: {m: r["metrics"][m] for m in QUALITY if m in r["metrics"]} for cell, r in records(run).items()}


def run_each(suite: Path, executors: dict[str, list[str]], env: dict[str, str], cwd: Path, *more: str) -> None:
    for name, options in executors.items():
        result = anombench("run", suite, "--out", name, "--quiet", "--device", "cpu", *options, *more, env=env, cwd=cwd)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_dask_and_a_process_pool_give_the_local_numbers(site, scheduler, tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", ["disc", "stripes"])
    executors = {"local": [], "dask": ["--executor", "dask", "--scheduler", scheduler], "jobs": ["--jobs", "2"]}
    run_each(suite, executors, plugin_env(site, LIGHT_PLUGINS), tmp_path)
    local = quality(tmp_path / "local")
    assert len(local) == 4 and all(len(figures) == len(QUALITY) for figures in local.values())
    assert quality(tmp_path / "dask") == local
    assert quality(tmp_path / "jobs") == local
    assert all(r["worker"].startswith("tcp://127.0.0.1:") for r in records(tmp_path / "dask").values())


@pytest.mark.slow
@pytest.mark.skipif(not QUICKSTART.exists(), reason="suites/quickstart.yaml is not there yet")
def test_quickstart_on_dask_matches_local_and_shared_features_stay_on_one_worker(site, scheduler, tmp_path):
    """Identical to the last bit at equal torch threads: float32 convolutions sum in a thread-dependent order
    (1 vs 2 threads moved a pixel AUROC by 3e-7)."""
    small = ["--threads", "1", "--set", "categories=[disc, stripes]", "--set", "image_size=64", "--set", "workers=0",
             "--set", "datasets.synthetic.params.n_train=8", "--set", "datasets.synthetic.params.n_test_good=4",
             "--set", "datasets.synthetic.params.n_test_defective=4"]
    executors = {"local": [], "dask": ["--executor", "dask", "--scheduler", scheduler]}
    run_each(QUICKSTART, executors, plugin_env(site), tmp_path, *small)
    local = quality(tmp_path / "local")
    assert len(local) == 4 and quality(tmp_path / "dask") == local
    by_category: dict[str, list[dict[str, Any]]] = {}
    for record in records(tmp_path / "dask").values():
        by_category.setdefault(record["category"], []).append(record)
    assert {r["torch_threads"] for pairs in by_category.values() for r in pairs} == {1}
    for pair in by_category.values():
        assert len({r["worker"] for r in pair}) == 1, "cells sharing features must run on one worker"
        assert all(r["shared_features_with"] == [o["method"] for o in pair if o is not r] for r in pair)


def one_cell_job(registry: Registry, dataset: DatasetSpec, category: str, device: str = "cpu",
                 workers: int = 0) -> Job:
    """A job of one pixel_gaussian cell, as planning makes it (the method built on the client, unfitted)."""
    spec = MethodSpec("pg", "pixel_gaussian", {})
    planned = PlannedCell(Cell("pg", dataset.name, category, 0), spec, "pg", False,
                          instantiate_method(spec, 0, "cpu", registry))
    return Job(dataset=dataset, category=category, family="object", seed=0, cells=(planned,),
               metrics={"pixel_auroc": {}}, settings=Settings(batch_size=4, workers=workers, threads=0),
               options=RunOptions(device=device))


def kill_every_fit(process: subprocess.Popen, markers: Path, timeout: float = 240) -> list[int]:
    """SIGKILL each process that starts the slow fit (it leaves a ``<pid>-<time>`` file) until the run ends."""
    killed, seen, deadline = [], set(), time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        for marker in sorted(markers.glob("*")):
            if marker.name not in seen:
                seen.add(marker.name)
                os.kill(int(marker.name.split("-")[0]), signal.SIGKILL)
                killed.append(int(marker.name.split("-")[0]))
        time.sleep(0.05)
    process.wait(timeout=60)
    return killed


def test_a_killed_job_process_fails_its_cell_with_the_signal_and_resume_completes_it(site, scheduler, tmp_path):
    """The LocalCluster's workers run each job in a child process: killing it fails that cell with the signal, once
    (the worker lives on, nothing to retry). Resumed on the fixture's daemonic workers (jobs run in-process)."""
    markers = tmp_path / "markers"
    suite = write_suite(tmp_path / "suite.yaml", ["disc"])
    doc = yaml.safe_load(suite.read_text())
    doc["methods"]["slow"] = {"plugin": "slow_gaussian", "params": {"marker_dir": str(markers), "seconds": 3}}
    suite.write_text(yaml.safe_dump(doc))
    env = plugin_env(site, LIGHT_PLUGINS)
    with (tmp_path / "stderr.txt").open("w") as stderr:  # LocalCluster started by the CLI, retries=2
        process = anombench("run", suite, "--out", "run", "--quiet", "--device", "cpu", "--executor", "dask",
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
        killed = kill_every_fit(process, markers)
    assert process.returncode == 1, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert len(set(killed)) == 1, "the job's process, once"
    before = records(tmp_path / "run")
    assert {cell: r["status"] for cell, r in before.items()} == {
        "pg|synthetic|disc|0": "ok", "pg-wide|synthetic|disc|0": "ok", "slow|synthetic|disc|0": "failed"}
    assert before["slow|synthetic|disc|0"]["error"] == "killed by SIGKILL"

    resumed = anombench("run", suite, "--out", "run", "--resume", "--quiet", "--device", "cpu",
                        "--executor", "dask", "--scheduler", scheduler, env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = records(tmp_path / "run")
    assert all(r["status"] == "ok" for r in after.values()) and len(list(markers.iterdir())) == 2
    for cell in ("pg|synthetic|disc|0", "pg-wide|synthetic|disc|0"):
        assert after[cell]["finished_at"] == before[cell]["finished_at"], f"{cell} was recomputed"


def test_a_worker_that_cannot_read_the_dataset_records_its_error_naming_the_path(registry, scheduler, tmp_path):
    """The client saw the data when planning; the worker's copy is missing: the cell fails with the dataset's
    own one-line error, which names the path, and with the worker's address."""
    missing = tmp_path / "not_on_this_worker"
    job = one_cell_job(registry, DatasetSpec("mvtec", "mvtec", {"root": str(missing)}, ["bottle"]), "bottle",
                       workers=1)
    received: list[Any] = []
    dask_executor(scheduler, registry)([job], received.extend)
    record = received[0].to_record()
    with pytest.raises(UserError) as raised:
        MVTecAD(root=str(missing))
    assert record["status"] == "failed" and record["error"] == f"UserError: {raised.value}"
    assert str(missing) in record["error"] and record["worker"].startswith("tcp://")


def test_loaders_inside_dask_workers_decode_in_process(registry, scheduler, tmp_path):
    """A Dask worker is a daemonic process, which may not start DataLoader workers: the suite's ``workers: 1``
    must still run there."""
    make_mvtec_category(tmp_path / "mvtec", "bottle")
    job = one_cell_job(registry, DatasetSpec("mvtec", "mvtec", {"root": str(tmp_path / "mvtec"), "image_size": 64,
                                                                "crop_size": 64}, ["bottle"]), "bottle", workers=1)
    received: list[Any] = []
    dask_executor(scheduler, registry)([job], received.extend)
    assert received[0].status == "ok", received[0].error


def small_job(registry: Registry, device: str) -> Job:
    return one_cell_job(registry, DatasetSpec("synthetic", "synthetic", {"image_size": 32}, ["disc"]), "disc", device)


def test_a_worker_without_the_clients_plugins_refuses_and_names_the_distribution(registry):
    needed = needed_plugins(small_job(registry, "cpu"), registry)
    assert Needed("dataset", "synthetic", "anombench", "0.1.0") in needed
    assert Needed("method", "pixel_gaussian", None, None) in needed, "registered in-process: no distribution"
    check_plugins(needed, registry)
    with pytest.raises(UserError, match=r"method 'pixel_gaussian' comes from \(in-process\), the client has "
                                        r"anombench-pixelstats 1\.2\.4.*same versions"):
        check_plugins([Needed("method", "pixel_gaussian", "anombench-pixelstats", "1.2.4")], registry)
    with pytest.raises(UserError, match=r"^worker .*: method 'padim3d' is not registered \(install acme 2\.0\)"):
        check_plugins([Needed("method", "padim3d", "acme", "2.0")], registry)


def test_cuda_cells_ask_for_a_gpu_and_workers_without_one_are_refused(registry, scheduler):
    assert submit_options(small_job(registry, "cuda"))["resources"] == {"GPU": 1}
    assert submit_options(small_job(registry, "cpu"))["resources"] is None
    with pytest.raises(UserError, match="no worker of tcp://127.0.0.1:.* advertises a GPU"):
        dask_executor(scheduler, registry)([small_job(registry, "cuda")], lambda results: None)


def test_a_local_gpu_cluster_has_one_single_task_worker_per_visible_gpu_and_cpu_workers_share_the_cores(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    gpu = list(worker_specs("cuda").values())
    assert [spec["env"]["CUDA_VISIBLE_DEVICES"] for spec in gpu] == ["2", "5"]
    assert all(spec["resources"] == {"GPU": 1} and spec["nthreads"] == 1 for spec in gpu)
    cpu = list(worker_specs("cpu").values())
    assert all(spec["resources"] == {} and spec["nthreads"] == 1 for spec in cpu)
    assert sum(int(spec["env"]["OMP_NUM_THREADS"]) for spec in cpu) <= max(available_cores(), len(cpu))
