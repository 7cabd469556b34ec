"""A study folder carried from one working session to the next in a few MB, so a study longer than a session
runs in chained chunks even where the disk does not persist (the carried copy is committed; the next session
unpacks it and resumes).

What travels is what resuming needs and what the report, fronts and shipping read: every CSV and JSON (configs,
metrics, evaluations, statuses, reward counts, sweep scores), the base's cached held-out scores, final runs'
adapters and sample strips, and the checkpoint of every run that is not finished (it resumes from there, at most
``checkpoint_every`` steps back). What stays behind can be made again or is never read again: finished runs'
checkpoints, the previous checkpoint a swap keeps (unless the swap was cut before the new one was complete), a
scored sweep trial's adapter and samples (its ``tune.csv`` holds its score), an unfinished run's adapter (its
checkpoint holds it), figures and reports.

    python -m engine.study.carry pack outputs/second-edition/geometry checkpoints/study-progress/second-edition/geometry
    python -m engine.study.carry unpack checkpoints/study-progress/second-edition/geometry outputs/second-edition/geometry
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..align.run_folder import CHECKPOINT_MARKER
from ..core.io import building_folder

LEFT_BEHIND = {"checkpoint-new", "figures"}
LEFT_BEHIND_FILES = {"report.md", "samples.png", "plotly.min.js"}


def _status(run: Path) -> dict | None:
    path = run.parent / f"{run.name}.status.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _finished(run: Path) -> bool:
    """Finished by its steps, or failed: its checkpoint is never resumed from again (a run stopped by a time budget
    keeps it, as a larger budget resumes it)."""
    status = _status(run)
    return bool(status) and (status.get("state") == "failed" or status.get("stopped_by") == "steps")


def _left_behind(path: Path) -> bool:
    if path.name in LEFT_BEHIND or (path.is_file() and path.name in LEFT_BEHIND_FILES):
        return True
    if not path.is_dir() or not (path.parent / "config.json").exists():
        return False
    run = path.parent  # path is a folder inside a run folder
    scored_trial = (run / "tune.csv").exists()  # a sweep trial's score is kept in it
    if path.name == "checkpoint":
        return _finished(run)
    if path.name == "checkpoint-old":  # travels only where a swap was cut before checkpoint/ was complete
        return _finished(run) or (run / "checkpoint" / CHECKPOINT_MARKER).exists()
    if path.name == "adapter":  # an unfinished run's is in its checkpoint
        return scored_trial or not _finished(run)
    if path.name == "samples":
        return scored_trial
    return False


def carried_files(study: str | Path) -> list[Path]:
    """The files of ``study`` that travel, relative to it, sorted."""
    root = Path(study)
    keep = []

    def walk(folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or _left_behind(path):
                continue
            if path.is_dir():
                walk(path)
            elif path.is_file():
                keep.append(path.relative_to(root))

    walk(root)
    return keep


def pack(study: str | Path, dest: str | Path) -> tuple[int, int]:
    """Replaces ``dest`` with the carried files of ``study`` (built beside it, swapped in whole); returns (files,
    bytes). A checkpoint travels only when complete (its marker file is there)."""
    study, dest = Path(study), Path(dest)
    if not study.is_dir():
        raise FileNotFoundError(f"{study}: no study folder to pack")
    files = carried_files(study)
    incomplete = {f.parent for f in files if f.parent.name in ("checkpoint", "checkpoint-old")} - \
        {f.parent for f in files if f.name == CHECKPOINT_MARKER}
    files = [f for f in files if f.parent not in incomplete]
    total = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with building_folder(dest) as tmp:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(study / rel, tmp / rel)
            total += (study / rel).stat().st_size
    return len(files), total


def unpack(carried: str | Path, study: str | Path) -> int:
    """Copies a carried study into ``study`` where that folder does not exist yet (a study already under way here is
    newer than the carried copy: it is left alone and 0 returned); returns the files copied."""
    carried, study = Path(carried), Path(study)
    if not carried.is_dir():
        raise FileNotFoundError(f"{carried}: no carried study")
    if study.exists() and any(study.iterdir()):
        return 0
    study.parent.mkdir(parents=True, exist_ok=True)
    with building_folder(study) as tmp:
        shutil.copytree(carried, tmp, dirs_exist_ok=True)
    return sum(1 for p in study.rglob("*") if p.is_file())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m engine.study.carry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="copy what resuming needs from a study folder into DEST (replacing it)")
    a.add_argument("study", type=Path)
    a.add_argument("dest", type=Path)
    b = sub.add_parser("unpack", help="copy a carried study into STUDY unless a study is already under way there")
    b.add_argument("carried", type=Path)
    b.add_argument("study", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "pack":
            n, size = pack(args.study, args.dest)
            print(f"packed {n} files, {size / 2**20:.1f} MB: {args.study} -> {args.dest}")
        else:
            n = unpack(args.carried, args.study)
            print(f"unpacked {n} files: {args.carried} -> {args.study}" if n else
                  f"{args.study} already holds a study: left as it is")
    except FileNotFoundError as err:
        p.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
