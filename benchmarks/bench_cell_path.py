"""How much code one quickstart cell passes through, and how long Table I takes to plan (issue 12's figures).

    python benchmarks/bench_cell_path.py

1. Runs ``anombench run suites/quickstart.yaml --set categories=stripes --set methods=padim-lite0 --executor
   inprocess`` in this process (so the profiler sees the cell) from suite loading to table.md, and counts every
   distinct function of anombench/ and anombench_plugins/ entered (module bodies, comprehensions and lambdas left
   out), the modules they live in, and how often the first-entry order of those functions switches between the host
   (anombench/) and the plugins: a reader following the cell goes back and forth that often.
2. Plans Table I (15 MVTec AD classes x 5 ResNet-18 variants, random init) on a tiny fake MVTec AD layout made in
   tmp and prints the planning time: building the 75 cells' methods, their preflight and feature keys.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import anombench
import anombench_plugins
from anombench import cli
from anombench.planning import RunOptions, plan
from anombench.plugins import registry as load_registry
from anombench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from dataset_layouts import make_mvtec_category  # noqa: E402  (the tests' own layout builder)

MVTEC = ["carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill",
         "screw", "toothbrush", "transistor", "zipper"]
TABLE1 = ["padim-r18-layer1", "padim-r18-layer2", "padim-r18-layer3", "padim-r18-layer1+2+3", "padim-r18"]


def cell_path() -> tuple[int, int, int]:
    """(functions, modules, host<->plugin switches) of one quickstart cell, run in this process."""
    roots = (str(Path(anombench.__file__).parent), str(Path(anombench_plugins.__file__).parent))
    seen: dict[tuple[str, str], int] = {}

    def profile(frame, event, arg) -> None:
        code = frame.f_code
        if event == "call" and not code.co_name.startswith("<") and code.co_filename.startswith(roots):
            seen.setdefault((code.co_filename, code.co_name), len(seen))

    out = Path(tempfile.mkdtemp()) / "run"
    argv = ["run", str(REPO / "suites" / "quickstart.yaml"), "--set", "categories=stripes", "--set",
            "methods=padim-lite0", "--out", str(out), "--quiet", "--threads", "2", "--executor", "inprocess"]
    sys.setprofile(profile)
    try:
        cli.main(argv)
    finally:
        sys.setprofile(None)
    order = sorted(seen, key=seen.get)
    sides = [path.startswith(roots[0]) for path, _ in order]
    return len(order), len({path for path, _ in order}), sum(a != b for a, b in zip(sides, sides[1:]))


def table1_planning_seconds() -> float:
    root = Path(tempfile.mkdtemp())
    for category in MVTEC:
        make_mvtec_category(root, category, n_train=2, n_good=1, defects={"crack": 1})
    registry = load_registry()
    overrides = [f"methods.{name}.params.weights=none" for name in TABLE1]
    suite = load_suite(REPO / "suites" / "table1.yaml", registry, overrides, {"mvtec": str(root)})
    start = time.perf_counter()
    plan(suite, registry, set(), RunOptions(device="cpu", show_progress=False))
    return time.perf_counter() - start


if __name__ == "__main__":
    functions, modules, switches = cell_path()
    seconds = table1_planning_seconds()
    print(f"one quickstart cell: {functions} functions in {modules} modules, {switches} host<->plugin switches")
    print(f"Table I planning (75 cells, 15 classes x 5 variants): {seconds:.2f} s")
