"""Copies a finished comparison (``bench/compare_methods.py --out DIR``) into the shipped runs the studio reads.

    python bench/ship_runs.py DIR                       # -> checkpoints/runs/<reward>/
    python bench/ship_runs.py DIR --name alignment+geometry --to checkpoints/runs --force

What lands in ``<to>/<name>/`` (small: LoRA adapters and CSVs; no optimiser states, no intermediate strips):

    report.md  comparison.json  sweep/{chosen.json,sweep.csv,picks.csv} (when swept)
    summary.csv        with fronts (--fronts): one row per method x front point (reward, method, point,
                       reward_delta, ci_low, ci_high, adapter: the shipped adapter folder, relative to the
                       repository, ...); the per-method table then ships as methods.csv. Without fronts:
                       the comparison's summary.csv (one row per method). fronts.csv as the study wrote it
    picks.csv          when swept: method, knob, values, pick, inside_grid, ties
    figures/*.html     the comparison's plotly figures, loading plotly.js from <to>/plotly.min.js (one copy for all)
    figures/*.png      their static images, where the comparison could write them (kaleido)
    samples.png        the comparison's reward-hacking check (the base's samples beside every method's last)
    <method>/          the run of the first finished seed: adapter/, config.json, metrics.csv, eval.csv,
                       status.json, rewards.csv, samples/ (first and last strip). The studio lists it as
                       "shipped: <name>/<method>" and draws its curves.
    <method>/seeds/seed<k>/   the other finished seeds' config.json, metrics.csv, eval.csv, status.json (and
                       with --every-adapter their adapter/: the studio lists them as "shipped: <name>/<method>/seed<k>")

The destination is built beside itself and swapped in whole, so a failed copy leaves the old one as it was.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.align import shipped  # noqa: E402
from engine.core.io import building_folder  # noqa: E402

DEFAULT_TO = ROOT / "checkpoints" / "runs"
RUN_CSVS = ("config.json", "metrics.csv", "eval.csv")
PLOTLY_JS = "plotly.min.js"


class ShipError(ValueError):
    """The comparison cannot be shipped as asked: one message, nothing written."""


def default_name(reward: str) -> str:
    """``geometry`` -> geometry; ``alignment:1,geometry:0.5`` -> alignment+geometry."""
    names = [part.split(":")[0].strip() for part in reward.split(",") if part.strip()]
    return "+".join(names)


def finished_seeds(method_dir: Path) -> list[int]:
    seeds = []
    for status_path in sorted(method_dir.glob("seed*.status.json")):
        status = json.loads(status_path.read_text())
        seed = status_path.name[len("seed"):-len(".status.json")]
        if status.get("state") == "finished" and seed.isdigit() and (method_dir / f"seed{seed}" / "adapter").is_dir():
            seeds.append(int(seed))
    return sorted(seeds)


def _copy_run(src: Path, status: Path, rewards: Path, dst: Path, *, adapter: bool, samples: bool) -> None:
    dst.mkdir(parents=True)
    for name in RUN_CSVS:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    shutil.copy2(status, dst / "status.json")
    if rewards.exists():
        shutil.copy2(rewards, dst / "rewards.csv")
    if adapter:
        shutil.copytree(src / "adapter", dst / "adapter")
    if samples:
        strips = sorted((src / "samples").glob("step_*.png"))
        if strips:
            (dst / "samples").mkdir()
            for strip in dict.fromkeys((strips[0], strips[-1])):
                shutil.copy2(strip, dst / "samples" / strip.name)


def _ship_fronts(fronts: Path, out: Path, dest: Path, runs: dict[str, list[int]]) -> None:
    """The fronts' rows with each adapter pointing at the shipped one (``<dest>/<method>/adapter``, relative to
    the repository when it lies inside it), or empty where the shipped adapter is another seed's."""
    import pandas as pd

    table = pd.read_csv(fronts)
    where = dest.resolve()
    where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where

    def shipped(row) -> str:
        seeds = runs.get(row["method"])
        return (where / row["method"] / "adapter").as_posix() if seeds and row["adapter"].endswith(f"seed{seeds[0]}/adapter") else ""

    table["adapter"] = [shipped(r) for _, r in table.iterrows()]
    table.to_csv(out, index=False)


def ship(comparison: Path, to: Path = DEFAULT_TO, name: str | None = None, force: bool = False,
         every_adapter: bool = False) -> Path:
    """Copies ``comparison`` into ``to/name``; ``every_adapter``: the other seeds' adapters too (each run of the
    study can then be put beside the base), else only the first finished seed's."""
    record_path = comparison / "comparison.json"
    if not record_path.exists() or not (comparison / "summary.csv").exists():
        raise ShipError(f"{comparison} holds no finished comparison (comparison.json and summary.csv); "
                        "run bench/compare_methods.py to the end first.")
    record = json.loads(record_path.read_text())
    name = name or default_name(record["reward"])
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name) or name.startswith("."):
        raise ShipError(f"--name {name!r}: use letters, digits, '+', '-', '_' and '.' (it becomes a folder name).")
    dest = to / name
    if dest.exists() and not force:
        raise ShipError(f"{dest} exists; pass --force to replace it.")
    runs = {m: finished_seeds(comparison / "runs" / m) for m in record["methods"]}
    runs = {m: seeds for m, seeds in runs.items() if seeds}
    if not runs:
        raise ShipError(f"{comparison} has no finished run with an adapter; nothing to ship.")

    with building_folder(dest) as tmp:
        for item in ("report.md", "comparison.json"):
            shutil.copy2(comparison / item, tmp / item)
        if (comparison / "fronts.csv").exists():
            shutil.copy2(comparison / "summary.csv", tmp / "methods.csv")
            shutil.copy2(comparison / "fronts.csv", tmp / "fronts.csv")  # as the report names it (study-relative adapters)
            _ship_fronts(comparison / "fronts.csv", tmp / "summary.csv", dest, runs)
        else:
            shutil.copy2(comparison / "summary.csv", tmp / "summary.csv")
        for item in ("chosen.json", "sweep.csv", "picks.csv"):
            if (comparison / "sweep" / item).exists():
                (tmp / "sweep").mkdir(exist_ok=True)
                shutil.copy2(comparison / "sweep" / item, tmp / "sweep" / item)
        if (comparison / "sweep" / "picks.csv").exists():
            shutil.copy2(comparison / "sweep" / "picks.csv", tmp / "picks.csv")
        figures = comparison / "figures"
        if figures.is_dir():
            (tmp / "figures").mkdir()
            for html in sorted(figures.glob("*.html")):
                text = html.read_text(encoding="utf-8")
                (tmp / "figures" / html.name).write_text(
                    text.replace(f'src="{PLOTLY_JS}"', f'src="../../{PLOTLY_JS}"'), encoding="utf-8")
            for png in sorted(figures.glob("*.png")):
                shutil.copy2(png, tmp / "figures" / png.name)
            if (figures / PLOTLY_JS).exists() and not (to / PLOTLY_JS).exists():
                shutil.copy2(figures / PLOTLY_JS, to / PLOTLY_JS)
        for m, seeds in runs.items():
            src_dir = comparison / "runs" / m
            for k, seed in enumerate(seeds):
                dst = shipped.run_folder(tmp, m, None if k == 0 else f"seed{seed}")
                _copy_run(src_dir / f"seed{seed}", src_dir / f"seed{seed}.status.json", src_dir / f"seed{seed}.rewards.csv",
                          dst, adapter=k == 0 or every_adapter, samples=k == 0)
        if (comparison / "samples.png").exists():
            shutil.copy2(comparison / "samples.png", tmp / "samples.png")
    return dest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python bench/ship_runs.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("comparison", type=Path, help="a finished bench/compare_methods.py --out folder")
    p.add_argument("--to", type=Path, default=DEFAULT_TO, help="the shipped runs folder (default checkpoints/runs)")
    p.add_argument("--name", help="the reward's folder name (default: from the comparison's --reward)")
    p.add_argument("--force", action="store_true", help="replace an existing <to>/<name>")
    p.add_argument("--every-adapter", action="store_true",
                   help="ship every seed's adapter (<method>/seeds/seed<k>/adapter), not only the first finished seed's")
    args = p.parse_args(argv)
    try:
        dest = ship(args.comparison, args.to, args.name, args.force, args.every_adapter)
    except ShipError as err:
        p.exit(2, f"error: {err}\n")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"shipped {dest} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
