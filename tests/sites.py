"""Installing a plugin distribution for a subprocess the way `pip install` leaves it, without pip: a site folder
holding the module and a ``*.dist-info`` whose ``entry_points.txt`` names it (put the folder on PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path


def write_dist_info(site: Path, project: str, version: str, entry: str, module: str, source: str | None = None
                    ) -> None:
    """Distribution ``project`` ``version`` registering the anombench entry point ``entry = module``; ``source``,
    when given, is written as ``module``.py (else the module must be importable from elsewhere on the path)."""
    if source is not None:
        (site / f"{module}.py").write_text(source)
    dist = site / f"{project.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[anombench]\n{entry} = {module}\n")
