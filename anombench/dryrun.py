"""``anombench run SUITE --dry-run``: what a run would do and what it lacks, without running anything.

Why: a paper table is hours of compute; a missing weights file, a misplaced dataset or a substituted backbone
should be seen before, in one screen, not one cell at a time.
"""

from __future__ import annotations

from collections import Counter

import yaml

from anombench.api import ChecksFiles, Preflight
from anombench.errors import UserError
from anombench.planning import RunOptions, available_cores, instantiate_method, label_of, open_datasets, \
    pick_settings, substitutions
from anombench.plugins import Registry
from anombench.suite import Suite, expand

SHOWN = ("datasets", "methods", "metrics", "seeds", "run", "table")  # the resolved suite, less its long texts


def _problems(suite: Suite, registry: Registry, options: RunOptions) -> tuple[list[str], dict[str, list[str]]]:
    """(what is missing: data, weights, bad configuration; the categories each dataset would run)."""
    missing: list[str] = []
    try:
        datasets, categories_of = open_datasets(suite, registry)
    except UserError as exc:
        return [f"data: {exc}"], {}
    for name, dataset in datasets.items():
        if isinstance(dataset, ChecksFiles):
            missing += [f"data {name}: {line}" for category in categories_of[name]
                        for line in dataset.check_files(category, verify=False)]
    for spec in suite.methods:
        try:
            method = instantiate_method(spec, suite.seeds[0], options.device, registry)
            if isinstance(method, Preflight):
                method.preflight()
        except UserError as exc:
            missing.append(f"methods.{spec.name}: {exc}")
    return missing, categories_of


def dry_run(suite: Suite, registry: Registry, options: RunOptions) -> tuple[str, bool]:
    """The report and whether the run could start (nothing missing)."""
    source = {key: suite.source[key] for key in SHOWN if key in suite.source}
    lines = [f"suite {suite.name} ({suite.path})", yaml.safe_dump(source, sort_keys=False).rstrip()]
    if suite.overrides:
        lines.append("overrides: " + ", ".join(suite.overrides))
    missing, categories_of = _problems(suite, registry, options)
    if categories_of:
        cells = expand(suite, categories_of)
        counts = Counter((cell.method, cell.dataset) for cell in cells)
        lines.append(f"cells: {len(cells)} ({len(suite.seeds)} seed(s))")
        lines += [f"  {method:<28} {dataset:<12} {count}" for (method, dataset), count in counts.items()]
        settings = pick_settings(suite, options, available_cores())
        lines.append(f"settings: batch {settings.batch_size}, loader workers {settings.workers}, "
                     f"threads {settings.threads} (picked from this machine: {', '.join(settings.picked) or 'none'})")
    changed = substitutions(suite)
    lines.append("substitutions: " + ("; ".join(label_of(name, diff) for name, diff in changed.items()) or "none"))
    lines.append("missing: " + ("none" if not missing else f"{len(missing)}"))
    lines += [f"  {problem}" for problem in missing]
    return "\n".join(lines), not missing
