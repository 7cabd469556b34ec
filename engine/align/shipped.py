"""Where a shipped study keeps each run: ``bench/ship_runs.py`` writes this layout, the studio's catalogue and its
Compare tab read it.

    <study>/<method>/                  the method's first finished seed: adapter/, config.json, metrics.csv, ...
    <study>/<method>/seeds/seed<k>/    every other finished seed (with adapter/ when shipped with every adapter)
"""

from __future__ import annotations

from pathlib import Path


def run_folder(study: str | Path, method: str, seed: str | None = None) -> Path:
    """The folder of a method's run: its first seed (``seed`` None) or another one (``seed`` ``"seed<k>"``)."""
    return Path(study) / method / "seeds" / seed if seed else Path(study) / method


def other_seeds(method_folder: str | Path) -> list[Path]:
    """A method's other seeds' folders that hold an adapter, in seed order."""
    found = [p.parent for p in Path(method_folder).glob("seeds/seed*/adapter") if p.parent.name[4:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[4:]))
