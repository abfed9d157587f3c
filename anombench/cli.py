"""The ``anombench`` command: run | report | compare | list | data.

Every user error (a bad suite key, a missing dataset, a missing weight file) ends as one line on stderr and exit
code 2; a run in which some cells failed finishes the others and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from anombench import __version__
from anombench.errors import UserError

if TYPE_CHECKING:
    from anombench.suite import Suite

EPILOG_RUN = """examples:
  anombench run quickstart                  # a built-in suite by name, or a suite file
  anombench run table3 --data mvtec=/data/mvtec_ad --set categories=bottle
  anombench run table3_offline --data mvtec=/data/mvtec_ad --set categories=bottle   # EfficientNet-Lite0, offline
  anombench run table1 --out results/runs/t1 --resume      # continue a killed run
shorthands for --set: categories=bottle,cable, image_size, backbone, batch_size, workers, threads, seeds=0,1,
cell_timeout, max_memory_gb, ci, ci_resamples, datasets=A,B and methods=A,B (keep only those of the suite);
any other key as a dotted path: --set methods.padim-r18.params.n_features=50"""


SHOWN_PROBLEMS = 20  # data check: problems listed before "... and N more"


def _pairs(items: list[str], flag: str, example: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` arguments of a repeatable flag, split at the first "="."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise UserError(f"{flag} {item!r}: expected {example}")
        name, value = item.split("=", 1)
        pairs.append((name.strip(), value))
    return pairs


def _parse_data_roots(items: list[str]) -> dict[str, str]:
    pairs = _pairs(items, "--data", "NAME=PATH, e.g. --data mvtec=/data/mvtec_ad")
    return {name: str(Path(path).expanduser().resolve()) for name, path in pairs}  # workers need no cwd of ours


def _check_data_names(roots: dict[str, str], suite: "Suite") -> None:
    """``--data NAME=PATH`` must name a dataset of the suite (alias or plugin): a typo is not silently dropped."""
    known = {spec.name for spec in suite.datasets} | {spec.plugin for spec in suite.datasets}
    unknown = [name for name in roots if name not in known]
    if unknown:
        listed = ", ".join(spec.name for spec in suite.datasets)
        raise UserError(f"--data {unknown[0]}=...: '{unknown[0]}' is not a dataset of {suite.path}; its datasets: {listed}")


def _limit(flag: float | None, suite_value: float | None, name: str) -> float | None:
    """A limit from the command line, else from the suite's ``run:`` block; positive when given."""
    value = flag if flag is not None else suite_value
    if value is not None and value <= 0:
        raise UserError(f"--{name} must be positive, got {value:g}")
    return value


def _ci_level(level: float | None) -> float | None:
    """A confidence level in (0, 1): 0.95, not 95 (the tables' percent)."""
    if level is not None and not 0 < level < 1:
        raise UserError(f"--ci must be a confidence level between 0 and 1 (e.g. 0.95), got {level:g}")
    return level


def cmd_run(args: argparse.Namespace) -> int:
    if args.executor == "local" and not args.dry_run:
        from anombench.forkserver import warm_up

        warm_up()  # the server's imports run beside this process's own, not after them
    from anombench.catalog import find_suite
    from anombench.plugins import registry
    from anombench.report import TableWriter
    from anombench.results import load_provenance
    from anombench.rundir import default_run_dir
    from anombench.runner import RunOptions, run_suite
    from anombench.planning import resolve_device
    from anombench.suite import load_suite

    if args.threads < 0:
        raise UserError(f"--threads must be 0 (picked from the machine) or more, got {args.threads}")
    if args.jobs != 1 and args.executor != "local":
        raise UserError(f"--jobs {args.jobs} is for --executor local; {args.executor} runs jobs its own way")
    reg = registry()
    roots = _parse_data_roots(args.data)
    suite = load_suite(find_suite(args.suite), reg, args.set, roots)
    _check_data_names(roots, suite)
    if args.dry_run:
        from anombench.dryrun import dry_run

        text, ready = dry_run(suite, reg, RunOptions(device=resolve_device(args.device), threads=args.threads))
        print(text)
        return 0 if ready else 1
    if args.resume and not args.out:
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    out = Path(args.out) if args.out else default_run_dir(suite)
    # On Dask the GPUs are the workers', not the client's: only a local run needs CUDA here.
    device = args.device if args.executor == "dask" and args.device.startswith("cuda") else resolve_device(args.device)
    options = RunOptions(device=device, threads=args.threads, show_progress=not args.quiet,
                         cell_timeout=_limit(args.cell_timeout, suite.run.cell_timeout, "cell-timeout"),
                         max_memory_gb=_limit(args.max_memory_gb, suite.run.max_memory_gb, "max-memory-gb"),
                         ci_level=_ci_level(args.ci if args.ci is not None else suite.run.ci),
                         ci_resamples=args.ci_resamples if args.ci_resamples is not None else suite.run.ci_resamples)
    if args.executor == "dask":
        from anombench.distributed import dask_executor
        executor = dask_executor(args.scheduler, reg)
    elif args.executor == "inprocess":
        from anombench.runner import in_process_executor
        executor = in_process_executor(reg)
    else:
        from anombench.isolation import isolated_executor
        executor = isolated_executor(reg, args.jobs)
    store = run_suite(suite, out, options, resume=args.resume, registry=reg, executor=executor,
                      observers=[TableWriter()], jobs_at_once=args.jobs if args.executor == "local" else 1)
    TableWriter().cells_finished(store)
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
    _print_uncertainty(args)
    if result.failures:
        print(result.advice(), file=sys.stderr)
        return 1
    return 0


def _print_uncertainty(args: argparse.Namespace) -> None:
    """``--ci``: drops outside the baseline's intervals; ``--paired``: each shared cell's paired bootstrap of the
    difference (runs made with ``anombench run --ci``, which keep bootstrap.npz per cell)."""
    from anombench import bootstrap

    if args.ci:
        drops = bootstrap.drops_outside_interval(args.run, args.baseline)
        print(f"outside the baseline's interval: {len(drops) or 'none'}")
        print("\n".join(f"  {line}" for line in drops))
    if args.paired:
        results = bootstrap.compare_runs(args.run, args.baseline, args.level, args.resamples)
        if not results:
            print("paired: no cell has bootstrap.npz in both runs (make both with anombench run --ci 0.95)")
        print("\n".join(result.text() for result in results))


def cmd_list(args: argparse.Namespace) -> int:
    from anombench.catalog import builtin_suites
    from anombench.params import RUNNER_SUPPLIED, allowed_parameters
    from anombench.plugins import KINDS, registry

    reg = registry()
    for kind in KINDS:
        print(f"{kind}s:")
        for name in reg.names(kind):
            entry = reg.get(kind, name)
            params = ", ".join(allowed_parameters(entry.factory, RUNNER_SUPPLIED))
            print(f"  {name:<24} {entry.distribution} {entry.version}  (entry point '{entry.plugin}')"
                  + (f"  params: {params}" if params else ""))
    print(f"suites (anombench run NAME): {', '.join(builtin_suites())}")
    if reg.broken:
        print("broken plugins (skipped):")
        for plugin in reg.broken:
            print(f"  {plugin.plugin:<24} {plugin.distribution} {plugin.version}  ({plugin.target})  {plugin.error}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from anombench.plugins import registry

    factory = registry().get("dataset", args.dataset).factory
    if args.action == "check":
        return _data_check(args, factory)
    from anombench.api import data_action

    download = data_action(factory, "download")
    if download is None:
        raise UserError(f"dataset '{args.dataset}' offers no 'download'")
    if not args.root:
        raise UserError(f"data download {args.dataset} needs --root DIR, the folder to put it in")
    options = {k: v for k, v in (("url", args.url), ("sha256", args.sha256)) if v}
    download(args.root, **options)
    return 0


def _dataset_params(items: list[str]) -> dict[str, object]:
    """``--param KEY=VALUE`` (YAML values, as in a suite's params) for the dataset that ``data check`` opens."""
    import yaml

    pairs = _pairs(items, "--param", "KEY=VALUE, e.g. --param abnormal_dirs=[crack,scratch]")
    return {key: yaml.safe_load(value) for key, value in pairs}


def _data_check(args: argparse.Namespace, factory: Callable[..., object]) -> int:
    """The dataset's own count table (if it has one), then every missing, extra or broken file (the first
    ``SHOWN_PROBLEMS``, then a count) through the dataset's ``check_files``; exit 1 if there is any."""
    import inspect

    from anombench.api import ChecksFiles, data_action, known_categories
    from anombench.params import signature_parameters, validate

    root = signature_parameters(factory).get("root")
    if not args.root and root is not None and root.default is inspect.Parameter.empty:
        raise UserError(f"data check {args.dataset} needs --root DIR (it has no default folder)")
    params = {"root": args.root} if args.root else {}  # no --root: the dataset's environment variable
    params |= _dataset_params(args.param)
    validate(f"data check {args.dataset}", factory, params, noun="--param")
    dataset = factory(**params)  # a wrong root fails here, with a hint
    where = args.root or f"{args.dataset}'s root (from its environment variable)"
    if not isinstance(dataset, ChecksFiles):
        raise UserError(f"dataset '{args.dataset}' offers no file check (anombench.api.ChecksFiles)")
    chosen = [c.strip() for c in args.categories.split(",")] if args.categories else None
    table = data_action(factory, "check")
    if table is not None:
        print(table(args.root, chosen))  # root None: the same environment variable as the dataset
    if chosen:
        categories, problems = chosen, []
    else:  # the whole dataset: a class it defines but the copy lacks makes the copy incomplete
        categories = dataset.categories()
        problems = [f"missing category folder: {category}" for category in known_categories(dataset)
                    if category not in categories]
    problems += [line for category in categories
                 for line in dataset.check_files(category, verify=args.verify, progress=True)]
    if problems:
        more = len(problems) - SHOWN_PROBLEMS
        print("\n".join(problems[:SHOWN_PROBLEMS] + ([f"... and {more} more problem(s)"] if more > 0 else [])))
        print(f"{len(problems)} problem(s) in {where}", file=sys.stderr)
        if not chosen and any(p.startswith("missing category folder") for p in problems) and categories:
            print(f"only {', '.join(categories)} present: check just those with --categories "
                  f"{','.join(categories)}", file=sys.stderr)
        return 1
    if table is None:  # no count table of its own: the images each split holds
        print("\n".join(f"{category}: {len(dataset.train(category, 0))} train, {len(dataset.test(category, 0))} test "
                        "images" for category in categories))
    print(f"no problems in {where}" + ("" if args.verify else " (add --verify to decode every file)"))
    return 0


def evaluate_suite_doc(maps: str, dataset: str, root: str, category: str, image_size: int | None,
                       crop_size: int | None) -> dict[str, object]:
    """The in-memory suite ``anombench evaluate`` runs: saved maps of one category scored by the usual metrics.
    One category per suite because the saved_maps method is told its category by a parameter."""
    sizes = {"image_size": image_size, "crop_size": crop_size}
    data = {"root": root, **sizes}
    return {
        "name": "evaluate",
        "datasets": {dataset: {"plugin": dataset, "params": data, "categories": [category]}},
        "methods": {"saved_maps": {"plugin": "saved_maps", "params": {"root": maps, "category": category, **sizes,
                                                                      "dataset": dataset, "dataset_params": data}}},
        "metrics": ["pixel_auroc", "pro", "image_auroc"],
        "seeds": [0],
        "run": {"batch_size": 8, "workers": 0},
        "table": {"title": f"Saved maps {maps}", "rows": "category", "columns": "method",
                  "cell": ["pixel_auroc", "pro", "image_auroc"]},
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    from anombench.plugins import registry
    from anombench.report import write_tables
    from anombench.runner import RunOptions, run_suite
    from anombench.suite import build_suite

    reg = registry()
    roots = _parse_data_roots([args.data])
    (dataset, root), = roots.items()
    maps = str(Path(args.maps).expanduser().resolve())
    if not Path(maps).is_dir():
        raise UserError(f"--maps {args.maps}: no such folder")
    categories = ([c.strip() for c in args.categories.split(",")] if args.categories
                  else [p.name for p in sorted(Path(maps).iterdir()) if p.is_dir() and not p.name.startswith(".")])
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else Path("results/runs/evaluate") / Path(maps).name / stamp
    failed = 0
    for category in categories:
        doc = evaluate_suite_doc(maps, dataset, root, category, args.image_size, args.crop_size)
        suite = build_suite(doc, f"evaluate --maps {args.maps}", reg)
        store = run_suite(suite, out / category, RunOptions(device="cpu", threads=args.threads,
                                                            show_progress=not args.quiet), registry=reg)
        write_tables(out / category)
        print((out / category / "table.md").read_text())
        failed += sum(r["status"] != "ok" for r in store.records.values())
    runs = ", ".join(str(out / category) for category in categories)
    print(f"results: one run directory per category (saved maps name their category): {runs}")
    if failed:
        print(f"{failed} cell(s) failed; see cells.jsonl under {out}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anombench",
        description="Benchmark visual anomaly detection methods the way the PaDiM paper did, one suite per table.",
        epilog="start with: anombench run quickstart",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"anombench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite and write its results and table", epilog=EPILOG_RUN,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run every cell (method x dataset x category x seed) of a suite; each finished "
                                     "cell is stored at once, so a killed run loses nothing (continue with --resume).")
    run.add_argument("suite", help="suite YAML file or built-in suite name, e.g. quickstart, table3")
    run.add_argument("--out", help="run directory (default results/runs/<suite>/<UTC timestamp>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished cells")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite value (YAML syntax), repeatable")
    run.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                     help="root folder of a dataset plugin, e.g. mvtec=/data/mvtec_ad (repeatable)")
    run.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu, cuda or cuda:N")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: picked from the machine)")
    run.add_argument("--executor", choices=["local", "dask", "inprocess"], default="local",
                     help="where cells run: local (the default: each job in a child process of its own, so a crash "
                          "ends only its cells), dask, or inprocess (no isolation: a crash ends the run; for a "
                          "debugger or profiler)")
    run.add_argument("--jobs", type=int, default=1, help="local executor: parallel worker processes")
    run.add_argument("--scheduler", help="dask executor: scheduler address tcp://HOST:PORT (default: a LocalCluster)")
    run.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                     help="stop a cell (or cells sharing an extraction) running longer; recorded as failed")
    run.add_argument("--max-memory-gb", type=float, metavar="GB",
                     help="stop a cell whose processes' peak RSS exceeds GB; recorded as failed")
    run.add_argument("--ci", type=float, metavar="LEVEL",
                     help="bootstrap confidence intervals over test images at LEVEL, e.g. 0.95 (default: off)")
    run.add_argument("--ci-resamples", type=int, metavar="N", help="bootstrap resamples (default 1000)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved suite, its cells, substitutions and what is missing; run nothing")
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
    compare.add_argument("--ci", action="store_true",
                         help="also list figures below the baseline's bootstrap interval (baseline run with --ci)")
    compare.add_argument("--paired", action="store_true",
                         help="paired bootstrap of RUN - BASELINE per class and for the means (both run with --ci)")
    compare.add_argument("--level", type=float, default=0.95, help="--paired: confidence level (default 0.95)")
    compare.add_argument("--resamples", type=int, default=1000, help="--paired: resamples (default 1000)")
    compare.set_defaults(handler=cmd_compare)

    listing = sub.add_parser("list", help="list registered methods, datasets and metrics",
                             description="List every registered method, dataset and metric with the plugin and "
                                         "distribution that provide it, and the plugins skipped as broken. "
                                         "ANOMBENCH_PLUGINS=a,b picks the third-party plugins to load (built-ins "
                                         "stay unless named); ANOMBENCH_DISABLE_PLUGINS=a,b skips plugins.")
    listing.set_defaults(handler=cmd_list)

    evaluate = sub.add_parser(
        "evaluate", help="score anomaly maps saved by another tool with anombench's metrics",
        description="Score one saved map per test image, <MAPS>/<category>/<sample id>.npy|tiff|png (MVTec AD: "
                    "bottle/crack/000.npy), against a dataset's masks; image scores from "
                    "<MAPS>/<category>/image_scores.csv (id, score) or the map's maximum.",
        epilog="example: anombench evaluate --maps /tmp/mymaps --data mvtec=/data/mvtec_ad --categories bottle",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--maps", required=True, help="folder of saved maps, one sub-folder per category")
    evaluate.add_argument("--data", required=True, metavar="DATASET=PATH", help="the dataset the maps belong to")
    evaluate.add_argument("--categories", help="comma-separated categories (default: the maps folder's sub-folders)")
    evaluate.add_argument("--image-size", type=int, default=None,
                          help="the dataset's resize (default: none, the images' own resolution, as the official "
                               "MVTec AD evaluation); maps at the original resolution go through the same transform")
    evaluate.add_argument("--crop-size", type=int, default=None, help="the dataset's centre crop (default: none)")
    evaluate.add_argument("--out", help="run directory (default results/runs/evaluate/<maps folder name>/<UTC time>)")
    evaluate.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=cmd_evaluate)

    data = sub.add_parser("data", help="download or check a dataset",
                          description="Download a dataset's official archive (checksum-verified, resumable) or report "
                                      "what is under a root folder.",
                          epilog="examples:\n  anombench data download mvtec --root /data/mvtec_ad\n"
                                 "  anombench data check mvtec --root /data/mvtec_ad --verify\n"
                                 "  anombench data check folder --root /data/mypart --param abnormal_dirs=[crack] "
                                 "--param mask_dir=mask",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_argument("action", choices=["download", "check"])
    data.add_argument("dataset", help="dataset plugin name, e.g. mvtec")
    data.add_argument("--root", help="dataset root folder (required by download; check defaults to the dataset's "
                                     "environment variable, e.g. ANOMBENCH_DATA_MVTEC)")
    data.add_argument("--url", help="download: archive URL (default: the dataset's official one)")
    data.add_argument("--sha256", help="download: expected archive checksum (default: the official one)")
    data.add_argument("--verify", action="store_true", help="check: decode every image and mask (parallel)")
    data.add_argument("--categories", help="check: comma-separated categories (default: all present)")
    data.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="check: a dataset parameter as in a suite, e.g. mask_dir=mask (repeatable)")
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
    except BrokenPipeError:  # output piped into `head` or a pager that quit: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0


if __name__ == "__main__":
    sys.exit(main())
