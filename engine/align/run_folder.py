"""The layout of a finetuning run folder, owned in one place.

    config.json      the RunConfig (engine.align.config)
    metrics.csv      one row per optimiser step (the trainer appends)
    eval.csv         held-out evaluations: step, label ("base" / "run"), then the metrics
    eval_assets.csv  the same evaluations per asset: step, label, prompt (index), seed, then the scores
    adapter/         the current adapter, peft format (engine.models.lora.save_adapter)
    samples/         step_NNNN.png strips
    checkpoint/      adapter, optimiser, method state and counters (written by the trainer), swapped in whole:
                     built as checkpoint-new/, the previous one kept as checkpoint-old/ until the new is in place
    status.json      state, reason and steps, written by whoever runs the trainer (the studio's finetune jobs,
                     the study)

The CSV files are plain ``csv`` with a header; their rows are appended and truncated back to a step on resume.
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from typing import Iterator

from ..core.io import atomic_save, building_folder
from .config import RunConfig

RUN_FILES = ("config.json", "metrics.csv", "eval.csv", "eval_assets.csv", "adapter", "samples", "checkpoint", "checkpoint-old", "status.json")
CHECKPOINT_MARKER = "trainer.json"  # the file a complete checkpoint folder holds


class RunFolder:
    """One run folder: its paths, config, metrics and evaluation rows, and checkpoint swap."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- paths --------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.csv"

    @property
    def eval_assets_file(self) -> Path:
        return self.path / "eval_assets.csv"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def checkpoint_old(self) -> Path:
        return self.path / "checkpoint-old"

    @property
    def checkpoint_new(self) -> Path:
        return self.path / "checkpoint-new"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    def sample_file(self, step: int) -> Path:
        return self.samples / f"step_{step:04d}.png"

    def holds_run(self) -> bool:
        """Whether a run was started here (it has a config.json)."""
        return self.config_file.exists()

    def foreign_files(self) -> list[str]:
        """Names in the folder that are not a run's (an empty list when it does not exist)."""
        return sorted(p.name for p in self.path.iterdir() if p.name not in RUN_FILES) if self.path.exists() else []

    # -- config -------------------------------------------------------------------------------------
    def load_config(self) -> RunConfig:
        return RunConfig.load(self.config_file)

    def save_config(self, config: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        config.save(self.config_file)

    def config_dict(self) -> dict:
        """config.json as plain JSON (no validation: any version's); OSError / ValueError when unreadable."""
        return json.loads(self.config_file.read_text())

    # -- metrics and evaluation rows -----------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        append_csv(self.metrics_file, row)

    def append_eval(self, step: int, label: str, metrics: dict, assets: list[dict] | None = None) -> None:
        """One evaluation: its metrics into eval.csv and, given, its per-asset scores into eval_assets.csv."""
        if assets:
            append_csv(self.eval_assets_file, *({"step": step, "label": label, **a} for a in assets))
        append_csv(self.eval_file, {"step": step, "label": label, **metrics})

    def eval_asset_rows(self) -> list[dict]:
        return read_csv(self.eval_assets_file)

    def metrics_rows(self) -> list[dict]:
        """metrics.csv's rows as strings, as csv reads them ([] when there is none)."""
        return read_csv(self.metrics_file)

    def eval_rows(self) -> list[dict]:
        return read_csv(self.eval_file)

    def truncate(self, step: int) -> None:
        """Drops the metrics and evaluation rows after ``step`` (they will be written again on resume)."""
        truncate_csv(self.metrics_file, step)
        truncate_csv(self.eval_file, step)
        truncate_csv(self.eval_assets_file, step)

    def clear_rows(self) -> None:
        """Removes metrics.csv, eval.csv and eval_assets.csv (a run starting again from step 0)."""
        for path in (self.metrics_file, self.eval_file, self.eval_assets_file):
            path.unlink(missing_ok=True)

    # -- checkpoint ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing_checkpoint(self) -> Iterator[Path]:
        """``with run.writing_checkpoint() as folder:`` fill ``folder`` (it must hold ``trainer.json``); on
        success it becomes checkpoint/, the previous one kept as checkpoint-old/ until then."""
        with building_folder(self.checkpoint, tmp=self.checkpoint_new, old=self.checkpoint_old) as folder:
            yield folder

    def checkpoint_to_load(self) -> Path | None:
        """checkpoint/, else checkpoint-old/ (a crash between the swap's renames), whichever is complete; or None."""
        return next((f for f in (self.checkpoint, self.checkpoint_old) if (f / CHECKPOINT_MARKER).exists()), None)


# -- CSV files --------------------------------------------------------------------------------------------
def append_csv(path: Path, *rows: dict) -> None:
    """Appends ``rows``; a new file gets the first row's keys as its header. Rows with columns the header lacks (a
    run resumed by a newer version) rewrite the file with the wider header, atomically; missing ones stay empty."""
    header = _header(path)
    new = list(dict.fromkeys(k for row in rows for k in row if header is None or k not in header))
    if header is not None and new:
        write_csv(path, [*read_csv(path), *rows], header + new)
        return
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header or new)
        if header is None:
            writer.writeheader()
        writer.writerows(rows)


def _header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open(newline="") as f:
        return next(csv.reader(f), None)


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def truncate_csv(path: Path, step: int) -> None:
    """Keeps the rows whose ``step`` is at most ``step`` (rewritten atomically, only when some go)."""
    rows = read_csv(path)
    keep = [r for r in rows if int(float(r["step"])) <= step]
    if len(keep) < len(rows):
        write_csv(path, keep, list(rows[0]))


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Writes ``rows`` to ``path`` atomically (a temporary file, then a rename); the header is ``fieldnames``
    (default: the first row's keys; an empty file when there are neither)."""
    fieldnames = fieldnames or (list(rows[0]) if rows else None)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            if fieldnames:
                writer = csv.DictWriter(f, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

    atomic_save(path, write)
