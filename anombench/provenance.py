"""A run's provenance (run.json): versions, commit, machine, the settings it ran with and which of them were picked
from the machine, so a figure can be traced to what produced it."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import anombench
from anombench.planning import RunOptions, Settings
from anombench.plugins import Registry
from anombench.suite import Suite

LIBRARIES = ("torch", "torchvision", "timm", "faiss-cpu", "numpy", "pandas", "scikit-learn", "pluggy")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str:
    """The commit of the anombench checkout, when it is one (an installed wheel has none)."""
    try:
        here = Path(anombench.__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def versions(registry: Registry) -> dict[str, str]:
    """Versions of the libraries that move numbers and of every distribution that registered a plugin."""
    names = list(LIBRARIES) + sorted({e.distribution for kind in registry.entries.values() for e in kind.values()})
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(suite: Suite, options: RunOptions, settings: Settings, registry: Registry) -> dict[str, Any]:
    """``threads``, ``batch_size`` and ``loader_workers`` are what each job used; ``picked`` lists those the runner
    chose from the machine rather than the suite or the command line."""
    return {
        "suite": suite.name, "suite_file": suite.path, "suite_sha256": suite.sha256(),
        "overrides": list(suite.overrides),
        "anombench_version": anombench.__version__, "git_commit": git_commit(),
        "versions": versions(registry), "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if options.device.startswith("cuda") else None,
        "device": options.device, "threads": settings.threads, "batch_size": settings.batch_size,
        "loader_workers": settings.workers,
        "picked": ["loader_workers" if key == "workers" else key for key in settings.picked],
        "cell_timeout": options.cell_timeout, "max_memory_gb": options.max_memory_gb,
        "ci": options.ci_level, "ci_resamples": options.ci_resamples if options.ci_level else None,
        "seeds": suite.seeds, "command": " ".join(sys.argv), "started_at": now(),
    }
