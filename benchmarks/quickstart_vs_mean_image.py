"""PaDiM-Lite0 (both quickstart variants) beside the README's mean-image example plugin, on the quickstart's data.

Why: the quickstart is what CI gates on, so its data must separate a real method from a trivial one (issue 16.3):
PaDiM-Lite0's PRO should sit in 85-97 and the mean-image plugin at least 5 points below it in PRO and pixel
AUROC on the all-classes mean. The mean-image plugin is executed from the README's own code block, so this
measures exactly what a reader copies.

    python benchmarks/quickstart_vs_mean_image.py [--threads 1] [--set datasets.synthetic.params.n_train=100 ...]

Prints the table (percent), the all-classes means and the CPU seconds the run took (parent + workers).
"""

from __future__ import annotations

import argparse
import re
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from anombench.plugins import Registered, registry
from anombench.results import load_cells
from anombench.runner import RunOptions, run_suite
from anombench.suite import apply_overrides, build_suite, load_yaml, parse_override

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "suites" / "quickstart.yaml"
FIGURES = ["pixel_auroc", "pro", "image_auroc"]


def readme_mean_image() -> type:
    """The ``MeanImage`` class of the README's "Write a plugin" section, executed from the README itself."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# mypkg/plugin.py\n.*?)```", text, re.S)
    if block is None:
        raise SystemExit("README.md: no '# mypkg/plugin.py' code block (the mean-image example)")
    namespace: dict = {}
    exec(compile(block.group(1), "README.md (mypkg/plugin.py)", "exec"), namespace)
    return namespace["MeanImage"]


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def table(run_dir: Path) -> pd.DataFrame:
    """Rows: categories, then 'all' (the all-classes mean); one column per method with
    'pixel AUROC / PRO / image AUROC' in percent."""
    cells = load_cells(run_dir)
    frame = cells.pivot_table(index="category", columns="method", values=FIGURES) * 100
    frame.loc["all"] = frame.mean()
    return pd.DataFrame({method: [" / ".join(f"{frame.loc[row, (f, method)]:.1f}" for f in FIGURES)
                                  for row in frame.index]
                         for method in frame.columns.get_level_values("method").unique()}, index=frame.index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="a suite override, as `anombench run --set`")
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    args = parser.parse_args()
    reg = registry()
    reg.add(Registered("method", "mean_image", readme_mean_image(), "readme-example", "README.md", "0"))
    doc = apply_overrides(load_yaml(QUICKSTART), [parse_override(o) for o in args.set], {})
    doc["methods"]["mean-image"] = {"plugin": "mean_image"}
    suite = build_suite(doc, str(QUICKSTART), reg)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "run"
    wall, cpu = time.perf_counter(), cpu_seconds()
    run_suite(suite, out, RunOptions(threads=args.threads, show_progress=False), registry=reg)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    print(f"quickstart data: {doc['datasets']['synthetic']['params']}")
    print("pixel AUROC / PRO / image AUROC (%)")
    print(table(out).to_markdown())
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (estimate on 2 idle cores: {cpu / 2:.0f} s); run: {out}")


if __name__ == "__main__":
    main()
