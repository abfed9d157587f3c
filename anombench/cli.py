"""The ``anombench`` command: run | report | compare | list | data.

Every user error (a bad suite key, a missing dataset, a missing weight file) ends as one line on stderr and exit
code 2; a run in which some cells failed finishes the others and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from anombench import __version__
from anombench.errors import UserError

EPILOG_RUN = """examples:
  anombench run suites/quickstart.yaml
  anombench run suites/table3.yaml --data mvtec=/data/mvtec_ad --set categories=[bottle]
  bash benchmarks/table3_bottle.sh     # table3 on one class with EfficientNet-Lite0 in place of the ResNets (offline)
  anombench run suites/table1.yaml --out results/runs/t1 --resume      # continue a killed run
shorthands for --set: categories, image_size, backbone, batch_size, workers, seeds,
datasets=[ALIAS, ...] and methods=[NAME, ...] (keep only those of the suite);
any other key as a dotted path: --set methods.padim-r18.params.n_features=50"""


def _parse_data_roots(items: list[str]) -> dict[str, str]:
    roots = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--data {item!r}: expected NAME=PATH, e.g. --data mvtec=/data/mvtec_ad")
        name, path = item.split("=", 1)
        roots[name.strip()] = str(Path(path).expanduser().resolve())  # workers elsewhere need no cwd of ours
    return roots


def cmd_run(args: argparse.Namespace) -> int:
    from anombench.plugins import registry
    from anombench.report import write_tables
    from anombench.results import RunStore, load_provenance
    from anombench.runner import RunOptions, default_run_dir, resolve_device, run_suite
    from anombench.suite import load_suite

    if args.threads < 0:
        raise UserError(f"--threads must be 0 (torch's choice) or more, got {args.threads}")
    reg = registry()
    suite = load_suite(args.suite, reg, args.set, _parse_data_roots(args.data))
    if args.resume and not args.out:
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    out = Path(args.out) if args.out else default_run_dir(suite)
    # On Dask the GPUs are the workers', not the client's: only a local run needs CUDA here.
    device = args.device if args.executor == "dask" and args.device.startswith("cuda") else resolve_device(args.device)
    options = RunOptions(device=device, threads=args.threads, show_progress=not args.quiet)
    executor = None
    if args.executor == "dask":
        from anombench.distributed import dask_executor
        executor = dask_executor(args.scheduler, reg)
    elif args.jobs > 1:
        from anombench.distributed import process_pool_executor
        executor = process_pool_executor(args.jobs)

    def refresh(store: RunStore) -> None:
        write_tables(store.directory)

    store = run_suite(suite, out, options, resume=args.resume, registry=reg, executor=executor, on_change=refresh)
    write_tables(out)
    print((out / "table.md").read_text())
    print(f"results: {out}")
    grid = set(load_provenance(out).get("grid") or [])  # a narrowed resume leaves other cells out of its verdict
    failed = [r for r in store.records.values() if r["status"] != "ok" and r["cell"] in grid]
    if failed:
        print(f"{len(failed)} cell(s) failed; see {out / 'cells.jsonl'} (rerun with --resume to retry them)",
              file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from anombench.html_report import render_html
    from anombench.report import report_markdown
    from anombench.results import latest_run, write_atomic

    run_dir = Path(args.run) if args.run else latest_run("results/runs")
    if not (run_dir / "suite.yaml").exists():
        raise UserError(f"{run_dir}: not a run directory (no suite.yaml)")
    target = Path(args.output) if args.output else run_dir
    markdown = report_markdown(run_dir)
    write_atomic(target / "report.md", markdown)
    write_atomic(target / "report.html", render_html(run_dir))
    print(markdown)
    print(f"wrote {target / 'report.md'} and {target / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from anombench.compare import EXACT_RTOL, compare_runs, parse_tolerance
    from anombench.plugins import registry

    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    if args.exact and args.tol is not None:
        raise UserError("--exact compares at the measured noise level (relative --rtol); --tol is for drops only")
    rtol = EXACT_RTOL if args.rtol is None else args.rtol
    tolerance = rtol if args.exact else parse_tolerance(args.tol or "0.005")
    result = compare_runs(args.run, args.baseline, tolerance, registry(), metrics, exact=args.exact)
    print(result.to_text())
    if result.failures:
        print(result.advice(), file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from anombench.params import RUNNER_SUPPLIED, allowed_parameters
    from anombench.plugins import KINDS, registry

    reg = registry()
    for kind in KINDS:
        print(f"{kind}s:")
        for name in reg.names(kind):
            entry = reg.get(kind, name)
            params = ", ".join(allowed_parameters(entry.factory, RUNNER_SUPPLIED))
            print(f"  {name:<24} {entry.distribution} {entry.version}  (plugin '{entry.plugin}')"
                  + (f"  params: {params}" if params else ""))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from anombench.plugins import registry

    factory = registry().get("dataset", args.dataset).factory
    action = getattr(factory, args.action, None)
    if not callable(action):
        raise UserError(f"dataset '{args.dataset}' offers no '{args.action}'")
    if args.action == "download":
        options = {k: v for k, v in (("url", args.url), ("sha256", args.sha256)) if v}
        action(args.root, **options)
    else:
        print(action(args.root))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anombench",
        description="Benchmark visual anomaly detection methods the way the PaDiM paper did, one suite per table.",
        epilog="start with: anombench run suites/quickstart.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"anombench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite and write its results and table", epilog=EPILOG_RUN,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run every cell (method x dataset x category x seed) of a suite; each finished "
                                     "cell is stored at once, so a killed run loses nothing (continue with --resume).")
    run.add_argument("suite", help="suite YAML file, e.g. suites/quickstart.yaml")
    run.add_argument("--out", help="run directory (default results/runs/<suite>/<UTC timestamp>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished cells")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite value (YAML syntax), repeatable")
    run.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                     help="root folder of a dataset plugin, e.g. mvtec=/data/mvtec_ad (repeatable)")
    run.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu, cuda or cuda:N")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--executor", choices=["local", "dask"], default="local", help="where cells run")
    run.add_argument("--jobs", type=int, default=1, help="local executor: parallel worker processes")
    run.add_argument("--scheduler", help="dask executor: scheduler address tcp://HOST:PORT (default: a LocalCluster)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=cmd_run)

    report = sub.add_parser("report", help="render a run's tables and provenance",
                            description="Render a run (default: the latest under results/runs) as markdown (printed "
                                        "and written to report.md) and as one self-contained report.html with the "
                                        "tables, ROC/PRO curves per class, anomaly-map overlays and provenance.",
                            epilog="example: anombench report results/runs/quickstart/20261122T101500Z")
    report.add_argument("run", nargs="?", help="run directory")
    report.add_argument("-o", "--output", help="folder for report.md and report.html (default: the run directory)")
    report.set_defaults(handler=cmd_report)

    compare = sub.add_parser("compare", help="fail if a run falls below (or, with --exact, differs from) a baseline",
                             description="Compare a run's quality figures with a baseline run's, cell by cell.",
                             epilog="examples: anombench compare RUN results/baselines/quickstart --tol 0.5pt; "
                                    "anombench compare RUN results/baselines/quickstart --exact (the CI gate)")
    compare.add_argument("run")
    compare.add_argument("baseline")
    compare.add_argument("--tol", help="allowed drop: a fraction (0.005, the default) or the tables' points (0.5pt); "
                                       "at most 0.1 (10pt); a drop equal to it passes")
    compare.add_argument("--exact", action="store_true",
                         help="the stored-baseline gate: figures and map fingerprints must match within --rtol, "
                              "a change up or down fails")
    compare.add_argument("--rtol", type=float,
                         help="relative tolerance of --exact (default 1e-5, from the measured run-to-run noise)")
    compare.add_argument("--metrics", help="comma-separated metrics to compare (default: all quality metrics)")
    compare.set_defaults(handler=cmd_compare)

    listing = sub.add_parser("list", help="list registered methods, datasets and metrics",
                             description="List every registered plugin thing with the distribution that provides it. "
                                         "ANOMBENCH_PLUGINS=a,b limits which entry points load.")
    listing.set_defaults(handler=cmd_list)

    data = sub.add_parser("data", help="download or check a dataset",
                          description="Download a dataset's official archive (checksum-verified, resumable) or report "
                                      "what is under a root folder.",
                          epilog="examples:\n  anombench data download mvtec --root /data/mvtec_ad\n"
                                 "  anombench data check mvtec --root /data/mvtec_ad",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_argument("action", choices=["download", "check"])
    data.add_argument("dataset", help="dataset plugin name, e.g. mvtec")
    data.add_argument("--root", required=True, help="dataset root folder")
    data.add_argument("--url", help="download: archive URL (default: the dataset's official one)")
    data.add_argument("--sha256", help="download: expected archive checksum (default: the official one)")
    data.set_defaults(handler=cmd_data)
    return parser


def _show_our_logs() -> None:
    """INFO lines of anombench and its plugins (extracting..., skipped...) reach stderr; other libraries' INFO
    chatter (faiss announcing its CPU features) does not."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("anombench", "anombench_plugins"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_our_logs()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"anombench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anombench: interrupted; finished cells are stored (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
