"""Where a running study stands: every finished sweep trial's paired held-out change (from its ``tune.csv``) and
every final run's state, for each study folder under OUT. Reads files only; safe while the study runs.

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


if __name__ == "__main__":
    main()
