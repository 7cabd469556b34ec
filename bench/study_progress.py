"""Where a running study stands: every finished sweep trial's paired held-out change (from its ``tune.csv``), every
final run's state, the training core-hours spent and the final runs' steps still to train, for each study folder under
OUT. Reads files only; safe while the study runs.

    python bench/study_progress.py                         # outputs/second-edition/*
    python bench/study_progress.py outputs/cmp/geometry    # one study folder

Each trial's change is the mean over the held-out prompts of (adapter − base) on the same prompts, seeds and noise
(the tuning evaluation's fresh seeds), ± its standard error over prompts; a reward the trial was not trained on is
a forgetting measure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.align.evaluate import paired_change  # noqa: E402
SHOWN = ("reward/geometry", "reward/alignment", "reward/colorfulness")


def trial_rows(study: Path) -> list[str]:
    rows = []
    for tune in sorted(study.glob("sweep/*/*/tune.csv")):
        t = pd.read_csv(tune)
        cells = []
        for m in SHOWN:
            if f"{m}_base" not in t:
                cells.append("—")
                continue
            now, base = (torch.tensor(t.pivot(index="prompt", columns="seed", values=c).to_numpy()) for c in (m, f"{m}_base"))
            mean, se = paired_change(now, base)
            cells.append(f"{mean:+.4f} ± {se:.4f}")
        rows.append(f"| {tune.parent.parent.name} | {tune.parent.name} | {len(t)} | " + " | ".join(cells) + " |")
    return rows


def run_rows(study: Path) -> list[str]:
    rows = []
    for status in sorted(study.glob("runs/*/seed*.status.json")):
        s = json.loads(status.read_text())
        rows.append(f"| {status.parent.name} | {status.name.split('.')[0]} | {s.get('state')} | {s.get('steps')} |")
    return rows


def _trained(folder: Path, status: Path) -> tuple[int, float]:
    """(steps, training seconds) of one run: from its status, else from its last checkpoint."""
    if status.exists():
        s = json.loads(status.read_text())
        return int(s.get("steps") or 0), float(s.get("train_seconds") or 0)
    marker = folder / "checkpoint" / "trainer.json"
    if marker.exists():
        t = json.loads(marker.read_text())
        return int(t.get("step", 0)), float(t.get("wall_seconds", 0))
    return 0, 0.0


def compute_lines(study: Path) -> list[str]:
    """Training core-hours so far (sweep trials, final runs), each method's seconds per step, and the final runs' steps
    still to train with what they cost at those rates (evaluations and sweep trials still to come are not counted)."""
    record = json.loads((study / "comparison.json").read_text())
    spent, rate = {"sweep": 0.0, "runs": 0.0}, {}
    done = {}
    for kind in spent:
        for folder in sorted(p for p in study.glob(f"{kind}/*/*") if p.is_dir()):
            steps, seconds = _trained(folder, folder.parent / f"{folder.name}.status.json")
            spent[kind] += seconds
            s, n = rate.get(folder.parent.name, (0.0, 0))
            rate[folder.parent.name] = (s + seconds, n + steps)
            if kind == "runs":
                done[folder.parent.name] = done.get(folder.parent.name, 0) + steps
    per_step = {m: s / n for m, (s, n) in rate.items() if n}
    lines = [f"Training so far: {spent['sweep'] / 3600:.2f} core-h in sweep trials, {spent['runs'] / 3600:.2f} in final runs"
             + ("; seconds per step: " + ", ".join(f"{m} {v:.1f}" for m, v in per_step.items()) if per_step else "") + "."]
    left, hours = [], 0.0
    for m in record["methods"]:
        steps = record["seeds"] * record["steps"] - done.get(m, 0)
        if steps > 0:
            cost = f"~{steps * per_step[m] / 3600:.1f} h" if m in per_step else "rate not measured yet"
            hours += steps * per_step.get(m, 0) / 3600
            left.append(f"{m} {steps} steps ({cost})")
    if left:
        lines.append("Final runs still to train: " + ", ".join(left) + f"; {hours:.1f} core-h at the measured rates, before "
                     "evaluations, fronts and the sweep trials still to come.")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="*", type=Path, help="study folders (default: outputs/second-edition/*)")
    args = p.parse_args()
    studies = args.studies or sorted(d for d in (ROOT / "outputs" / "second-edition").glob("*") if d.is_dir())
    if not studies:
        p.exit(1, "No study folder found (run bench/second_edition.sh, or give a folder).\n")
    for study in studies:
        record = study / "comparison.json"
        reward = json.loads(record.read_text())["reward"] if record.exists() else "?"
        print(f"\n## {study.name} (reward {reward})\n")
        trials = trial_rows(study)
        header = " | ".join(f"{m.split('/')[1]} Δ ± SE" for m in SHOWN)
        print(f"| method | sweep trial | paired samples | {header} |\n|---|---|---|---|---|---|" if trials else "No sweep trial finished.")
        print("\n".join(trials))
        runs = run_rows(study)
        if runs:
            print("\n| method | seed | state | steps |\n|---|---|---|---|\n" + "\n".join(runs))
        if record.exists():
            print("\n" + "\n".join(compute_lines(study)))


if __name__ == "__main__":
    main()
