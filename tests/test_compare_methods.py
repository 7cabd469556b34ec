"""The study (engine/study/, run by bench/compare_methods.py) on a tiny budget: real runs of two methods through
the engine's trainer and evaluation (a 1-layer random base, 2 steps, 3 sampler steps, 1 held-out prompt x 2
seeds), its summary, report and figures, resume, the sweep, determinism and bad arguments."""

import ast
import importlib.util
import io
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine import study

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["refl", "nabla-r2d3"]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cm = _load_script("compare_methods")
ship_runs = _load_script("ship_runs")
study_progress = _load_script("study_progress")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The script sets torch's thread count (--threads 1); give the others theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-layer random base (as tests/test_align.py) and a one-prompt held-out file."""
    from engine.models.splatter_ae import SplatterAutoencoder
    from engine.models.tiny import TinySplatModel, tiny_transformer

    root = tmp_path_factory.mktemp("cmp")
    torch.manual_seed(0)
    TinySplatModel(tiny_transformer(num_layers=1, heads=2, head_dim=8), SplatterAutoencoder(width=16)).eval().save_pretrained(root / "w")
    (root / "eval.txt").write_text("a blue car\n")
    return root


def _argv(tiny, out, *extra, methods=",".join(METHODS), seeds=2):
    return ["--reward", "colorfulness", "--methods", methods, "--seeds", str(seeds), "--steps", "2", "--threads", "1",
            "--out", str(out), *extra, "--set", f"weights={tiny / 'w'}", "sampler_steps=3", "render_resolution=24",
            "batch_size=1", "sample_every=2", "checkpoint_every=0", "eval_every=1", f"eval_prompts={tiny / 'eval.txt'}",
            "eval_seeds=2", "guidance=2.0"]


@pytest.fixture(scope="module")
def comparison(tiny):
    out = tiny / "cmp"
    cm.main(_argv(tiny, out))
    return out


def test_summary_has_one_row_per_method_with_every_column(comparison):
    table = pd.read_csv(comparison / "summary.csv")
    assert list(table.columns) == study.SUMMARY_COLUMNS
    assert list(table["method"]) == METHODS
    assert (table["n_seeds"] == 2).all() and (table["n_failed"] == 0).all() and (table["steps"] == 2).all()
    for col in ("final_reward_mean", "final_reward_std", "delta_reward_mean", "alignment_delta_mean", "category_acc_delta_mean",
                "kid_vs_base_mean", "diversity_delta_mean", "base_reward", "seconds", "reward_images"):
        assert table[col].map(math.isfinite).all(), col
    assert (table["reward_images"] > 0).all()
    # the final reward is the last eval.csv row's colourfulness, Δ is against the base row of the same file
    ev = pd.read_csv(comparison / "runs" / "refl" / "seed0" / "eval.csv")
    final, base = ev[ev.label == "run"].iloc[-1], ev[ev.label == "base"].iloc[0]
    seeds = [pd.read_csv(comparison / "runs" / "refl" / f"seed{s}" / "eval.csv").query("label == 'run'").iloc[-1] for s in (0, 1)]
    assert final["step"] == 2 and list(ev[ev.label == "run"]["step"]) == [1, 2]
    assert table.loc[0, "final_reward_mean"] == pytest.approx(sum(r["reward/colorfulness"] for r in seeds) / 2)
    assert table.loc[0, "base_reward"] == pytest.approx(base["reward/colorfulness"])
    # per asset (1 prompt x 2 seeds) beside every evaluation, averaging to its row
    assets = pd.read_csv(comparison / "runs" / "refl" / "seed0" / "eval_assets.csv")
    assert list(assets.groupby(["step", "label"]).size().items()) == [((0, "base"), 2), ((1, "run"), 2), ((2, "run"), 2)]
    assert list(assets["seed"][:2]) == [0, 1] and (assets["prompt"] == 0).all()
    last = assets[(assets.step == 2) & (assets.label == "run")]
    assert last["reward/colorfulness"].mean() == pytest.approx(final["reward/colorfulness"], rel=1e-6)


def test_run_folders_are_the_trainers(comparison):
    for method in METHODS:
        for seed in (0, 1):
            run = comparison / "runs" / method / f"seed{seed}"
            assert {"config.json", "metrics.csv", "eval.csv", "adapter", "checkpoint"} <= {p.name for p in run.iterdir()}
            config = json.loads((run / "config.json").read_text())
            assert (config["method"], config["seed"], config["steps"], config["reward"]) == (method, seed, 2, "colorfulness")
            status = json.loads((run.parent / f"seed{seed}.status.json").read_text())
            assert status["state"] == "finished" and status["stopped_by"] == "steps" and status["steps"] == 2
    assert len(list((comparison / "base_eval").glob("base-*.safetensors"))) == 1  # the base sampled once for all 4 runs


def test_report_has_the_table_the_claims_and_the_figures(comparison):
    report = (comparison / "report.md").read_text()
    assert ("| method | final reward | Δ reward vs base | steps (and seconds) to reach the best baseline's final reward | "
            "alignment Δ | category acc Δ | KID vs base | diversity Δ |") in report
    assert "| base |" in report
    assert "- Command: `python bench/compare_methods.py --reward 'colorfulness' --methods refl,nabla-r2d3 --seeds 2" in report
    table = pd.read_csv(comparison / "summary.csv")
    hours = (table["seconds"] * table["n_seeds"]).sum() / 3600  # 1 thread; this comparison has no sweep
    assert f"- Compute used for training: {hours:.2f} core-hours ({hours:.2f} final runs, 0.00 sweep), at 1 torch thread(s)" in report
    for method in METHODS:
        assert any(line.startswith(f"| {method} |") and " ± " in line for line in report.splitlines())
    claims = [line for line in report.splitlines() if line.startswith("- **")]
    assert [c.split(":")[0] for c in claims] == ["- **Higher reward", "- **Faster convergence", "- **Less forgetting"]
    words = (": reproduced", ": not reproduced at this budget", ": contradicted", ": not testable here")
    assert all(any(w in c for w in words) for c in claims)
    assert "holds" not in " ".join(claims) and "95% interval" in claims[0]  # per-asset scores give the gap its interval
    regime = [line for line in report.splitlines() if line.startswith("- nabla-r2d3 seed")]
    assert len(regime) == 2 and all("terminal residual ratio" in r and ("**reached**" in r or "**not reached**" in r)
                                    for r in regime)
    assert any(line.startswith("| refl |") and "] |" in line for line in report.splitlines())  # Δ with its interval
    for name in ("reward_vs_steps", "reward_vs_time", "reward_vs_alignment"):
        html = comparison / "figures" / f"{name}.html"
        assert html.stat().st_size > 1000 and "Plotly.newPlot" in html.read_text()
        assert f"figures/{name}.html" in report
    assert (comparison / "figures" / "plotly.min.js").exists()  # the figures open offline
    if importlib.util.find_spec("kaleido") is None:
        assert "PNG figures were not written" in report
    else:
        assert (comparison / "figures" / "reward_vs_steps.png").exists()
        assert "![reward_vs_steps](figures/reward_vs_steps.png)" in report


def test_samples_sheet_shows_the_base_beside_every_method(comparison):
    from PIL import Image

    assert "## Samples beside the base (the reward-hacking check)" in (comparison / "report.md").read_text()
    assert "![samples](samples.png)" in (comparison / "report.md").read_text()
    strip = Image.open(comparison / "runs" / "refl" / "seed0" / "samples" / "step_0002.png")
    sheet = Image.open(comparison / "samples.png")
    columns = 1 + len(METHODS)  # the base, then each method's last strip
    width = round(strip.width * study.SAMPLES_SCALE)
    assert sheet.size == (columns * width + (columns - 1) * 6, round(strip.height * study.SAMPLES_SCALE) + 22)


def test_ship_copies_what_the_studio_reads_and_nothing_heavy(comparison, tmp_path):
    from app.catalogue import Catalogue

    to = tmp_path / "runs"
    dest = ship_runs.ship(comparison, to)
    assert dest == to / "colorfulness"
    for method in METHODS:
        run = dest / method
        assert {"adapter", "config.json", "metrics.csv", "eval.csv", "status.json", "rewards.csv", "samples"} <= {
            p.name for p in run.iterdir()}
        assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000.png", "step_0002.png"]
        assert json.loads((run / "config.json").read_text())["seed"] == 0
        other = run / "seeds" / "seed1"
        assert json.loads((other / "config.json").read_text())["seed"] == 1 and (other / "metrics.csv").exists()
        assert not (other / "adapter").exists()
    assert not [p for p in dest.rglob("*") if p.name in ("checkpoint", "optimizer.pt") or p.name.startswith(".")]
    assert {"report.md", "summary.csv", "comparison.json", "samples.png", "figures"} <= {p.name for p in dest.iterdir()}
    for html in (dest / "figures").glob("*.html"):
        assert 'src="../../plotly.min.js"' in html.read_text()
    assert (to / "plotly.min.js").exists()  # one copy, shared by every reward's figures
    assert sorted(p.name for p in (dest / "figures").glob("*.png")) == sorted(
        p.name for p in (comparison / "figures").glob("*.png"))  # static images travel where kaleido made them
    labels = Catalogue(tmp_path / "studio-runs", shipped_dir=to).choices(("shipped",))
    assert labels == [f"shipped: colorfulness/{m}" for m in sorted(METHODS)]

    with pytest.raises(ship_runs.ShipError, match="exists; pass --force"):
        ship_runs.ship(comparison, to)
    (dest / "marker").write_text("old")
    assert ship_runs.ship(comparison, to, force=True) == dest and not (dest / "marker").exists()
    with pytest.raises(ship_runs.ShipError, match="becomes a folder name"):
        ship_runs.ship(comparison, to, name="../x")
    with pytest.raises(ship_runs.ShipError, match="no finished comparison"):
        ship_runs.ship(tmp_path, to)
    assert ship_runs.default_name("alignment:1,geometry:0.5") == "alignment+geometry"


def test_resume_skips_finished_runs_and_a_second_start_is_refused(comparison, tiny, capsys):
    files = [comparison / "runs" / m / f"seed{s}" / n for m in METHODS for s in (0, 1) for n in ("metrics.csv", "eval.csv")]
    before = [(f.stat().st_mtime_ns, f.read_bytes()) for f in files]
    summary = (comparison / "summary.csv").read_text()
    capsys.readouterr()
    cm.main(_argv(tiny, comparison, "--resume"))
    err = capsys.readouterr().err
    assert err.count("skipped") == 4 and "step 1/2" not in err
    assert [(f.stat().st_mtime_ns, f.read_bytes()) for f in files] == before
    strip = lambda text: pd.read_csv(io.StringIO(text)).drop(columns=["seconds", "seconds_to_best_baseline"])  # noqa: E731
    pd.testing.assert_frame_equal(strip((comparison / "summary.csv").read_text()), strip(summary))
    # a run whose status was lost (cut after its last checkpoint) resumes there: no step is trained again
    (comparison / "runs" / "refl" / "seed1.status.json").unlink()
    cm.main(_argv(tiny, comparison, "--resume"))
    err = capsys.readouterr().err
    assert "[refl seed1] resumed at step 2" in err and err.count("skipped") == 3 and "step 1/2" not in err
    assert [f.read_bytes() for f in files] == [b for _, b in before]
    assert json.loads((comparison / "runs" / "refl" / "seed1.status.json").read_text())["reward_images"] > 0
    with pytest.raises(SystemExit) as exit_:
        cm.main(_argv(tiny, comparison))
    assert exit_.value.code == 2 and "pass --resume" in capsys.readouterr().err


def test_report_only_rewrites_the_report_from_the_finished_runs(comparison, tiny, capsys, tmp_path):
    runs = sorted((comparison / "runs").rglob("*.csv"))
    before = [f.read_bytes() for f in runs]
    summary = pd.read_csv(comparison / "summary.csv")
    (comparison / "report.md").unlink()
    (comparison / "samples.png").unlink()
    capsys.readouterr()
    cm.main(_argv(tiny, comparison, "--report-only"))
    err = capsys.readouterr().err
    assert "step 1/2" not in err and "skipped" not in err  # nothing trained, no run even looked at for resuming
    assert [f.read_bytes() for f in runs] == before
    assert (comparison / "report.md").exists() and (comparison / "samples.png").exists()
    pd.testing.assert_frame_equal(pd.read_csv(comparison / "summary.csv"), summary)
    with pytest.raises(SystemExit) as exit_:
        cm.main(_argv(tiny, tmp_path / "empty", "--report-only"))
    assert exit_.value.code == 2 and "holds no comparison" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_forgetting_leaves_out_what_the_reward_trains():
    """Trained on alignment, a smaller alignment gain is the reward gap again, not better retention."""
    from types import SimpleNamespace

    row = {"n_seeds": 2, "final_reward_mean": 0.66, "final_reward_std": 0.003, "delta_reward_mean": 0.008,
           "steps_to_best_baseline": float("nan"), "seconds_to_best_baseline": float("nan"), "steps": 20, "seconds": 200.0,
           "alignment_delta_mean": 0.008, "category_acc_delta_mean": 0.0, "kid_vs_base_mean": -5e-5, "diversity_delta_mean": 0.0}
    table = pd.DataFrame([{**row, "method": "nabla-r2d3"},
                          {**row, "method": "alignprop", "final_reward_mean": 0.676, "alignment_delta_mean": 0.023}])
    info = {"best_baseline": "alignprop", "target": 0.676, "gained": True, "base": {"heldout": 0.652}}
    plan = SimpleNamespace(methods=["nabla-r2d3", "alignprop"], higher_is_better=True, eval_every=10, reward_terms={"geometry"})
    assert "alignment Δ +0.008 vs +0.023 (worse; no interval)" in study.claims(plan, table, info)[2]
    plan.reward_terms = {"alignment", "geometry"}
    forgetting = study.claims(plan, table, info)[2]
    assert forgetting.startswith("**Less forgetting: not reproduced at this budget** (nabla-r2d3 vs alignprop;")
    assert "no interval" in forgetting and "evaluate them again for a verdict" in forgetting
    assert "alignment Δ +" not in forgetting and "Alignment Δ is left out" in forgetting


def test_same_seed_gives_the_same_numbers(comparison, tiny):
    """A second comparison with one of the runs reproduces it exactly (same thread count)."""
    out = tiny / "again"
    cm.main(_argv(tiny, out, methods="refl", seeds=1))
    timing = ["seconds_per_asset"]
    a, b = (pd.read_csv(d / "runs" / "refl" / "seed0" / "eval.csv").drop(columns=timing) for d in (comparison, out))
    pd.testing.assert_frame_equal(a, b)
    cols = ["step", "reward_mean", "loss", "grad_norm"]
    a, b = (pd.read_csv(d / "runs" / "refl" / "seed0" / "metrics.csv")[cols] for d in (comparison, out))
    pd.testing.assert_frame_equal(a, b)


def test_sweep_tunes_each_method_the_same_way_and_says_what_it_picked(tiny):
    out = tiny / "sweep"
    cm.main(_argv(tiny, out, "--sweep", "--sweep-steps", "2", "--minutes", "10", methods="refl", seeds=1))
    trials = pd.read_csv(out / "sweep" / "sweep.csv")
    assert list(trials["lr"][:3]) == list(study.SWEEP_LRS) and (trials["state"] == "finished").all()
    assert set(trials["knob"]) == {"refl.first_fraction"} and trials["score"].map(math.isfinite).all()
    assert {"diff", "diff_se", "tie"} <= set(trials.columns)
    for run in trials["run"]:  # each trial scored on the held-out prompts with fresh noise, per asset
        tune = pd.read_csv(out / "sweep" / "refl" / run / "tune.csv")
        assert list(tune["seed"]) == [1000, 1001] and "reward/colorfulness_base" in tune
    picks = pd.read_csv(out / "sweep" / "picks.csv")
    assert list(picks.columns) == ["method", "knob", "values", "pick", "inside_grid", "ties", "inert"]
    assert list(picks["knob"]) == ["lr", "refl.first_fraction"]
    chosen = json.loads((out / "sweep" / "chosen.json").read_text())["refl"]
    lr_axis = chosen["axes"][0]
    assert lr_axis["pick"] == chosen["lr"] and set(study.SWEEP_LRS) <= set(lr_axis["values"])
    if not lr_axis["inside_grid"]:  # an edge pick means the grid extended as far as it may
        assert len(lr_axis["values"]) == 3 + study.sweep.MAX_EXTEND or chosen["lr"] in (1e-5, 1e-2)
    # at 3 sampler steps every first_fraction trains the same transitions: the axis is inert and not extended
    knob_axis = chosen["axes"][1]
    assert knob_axis["inert"] and len(knob_axis["values"]) == 3 and list(picks["inert"]) == [False, True]
    best = trials.loc[trials["score"].idxmax()]
    assert trials[trials["run"] == best["run"]]["diff"].iloc[0] == 0
    config = json.loads((out / "runs" / "refl" / "seed0" / "config.json").read_text())
    assert config["lr"] == chosen["lr"] and config["refl"]["first_fraction"] == chosen["value"]
    assert config["seed"] == 0 and json.loads((out / "sweep" / "refl" / trials["run"][0] / "config.json").read_text())["seed"] == 1000
    report = (out / "report.md").read_text()
    assert "## Tuning" in report and "| refl | lr | " in report and "| refl | refl.first_fraction |" in report
    assert "**no: every value scored the same** (the knob did not act at this budget: not extended)" in report
    assert "Not tested: nabla-r2d3 is not in this comparison" in report
    assert len(pd.read_csv(out / "summary.csv")) == 1
    progress = study_progress.trial_rows(out)  # bench/study_progress.py: each finished trial's paired change
    assert len(progress) == len(trials) and all(r.startswith("| refl | lr") and " ± " in r for r in progress)
    spent = study_progress.compute_lines(out)  # every run finished: nothing left to train
    assert len(spent) == 1 and spent[0].startswith("Training so far: ") and "seconds per step: refl " in spent[0]
    dest = ship_runs.ship(out, tiny / "shipped", name="sweep")
    pd.testing.assert_frame_equal(pd.read_csv(dest / "picks.csv"), picks)
    assert (dest / "sweep" / "picks.csv").exists() and len(pd.read_csv(dest / "summary.csv")) == 1  # no fronts: per method


def test_fronts_give_each_run_points_along_its_lora_scale_with_forgetting(tiny):
    out = tiny / "fronts"
    cm.main(_argv(tiny, out, "--fronts", methods="refl", seeds=2))
    fronts = pd.read_csv(out / "fronts.csv")
    assert list(fronts.columns[:7]) == ["reward", "method", "point", "alpha", "reward_delta", "ci_low", "ci_high"]
    assert list(fronts["alpha"]) == [0.25, 0.5, 0.75, 1.0] and (fronts["n_seeds"] == 2).all()
    assert (fronts["ci_low"] <= fronts["reward_delta"]).all() and (fronts["reward_delta"] <= fronts["ci_high"]).all()
    assert (fronts["eps_kl"] > 0).all() and fronts["eps_kl"].is_monotonic_increasing  # further along α, further from the base
    assert fronts["adapter"][0] == "runs/refl/seed0/adapter" and (out / fronts["adapter"][0]).exists()
    # α = 1 is the adapter as trained: its change is the run's own final held-out change (same prompts, seeds, noise)
    final = [pd.read_csv(out / "runs" / "refl" / f"seed{s}" / "eval.csv").query("label == 'run'").iloc[-1] for s in (0, 1)]
    base = pd.read_csv(out / "runs" / "refl" / "seed0" / "eval.csv").query("label == 'base'").iloc[0]
    own = sum(f["reward/colorfulness"] for f in final) / 2 - base["reward/colorfulness"]
    assert fronts["reward_delta"].iloc[-1] == pytest.approx(own, rel=1e-4, abs=1e-4)
    report = (out / "report.md").read_text()
    assert "## Fronts" in report and "| refl | α=0.25 |" in report and (out / "figures" / "front.html").exists()
    before = (out / "runs" / "refl" / "seed0" / "front.csv").stat().st_mtime_ns
    cm.main(_argv(tiny, out, "--fronts", "--resume", methods="refl", seeds=2))  # kept: not evaluated again
    assert (out / "runs" / "refl" / "seed0" / "front.csv").stat().st_mtime_ns == before
    # shipped: summary.csv is the fronts (one row per method x point) with the shipped adapter's folder
    dest = ship_runs.ship(out, tiny / "shipped", name="fronts", every_adapter=True)
    shipped = pd.read_csv(dest / "summary.csv")
    assert {"reward", "method", "point", "reward_delta", "ci_low", "ci_high", "adapter"} <= set(shipped.columns)
    assert len(shipped) == 4 and set(shipped["adapter"]) == {str(dest / "refl" / "adapter")}
    assert (dest / "refl" / "adapter").is_dir() and len(pd.read_csv(dest / "methods.csv")) == 1
    # the Compare tab draws it: one line through the four points, each with its interval
    from app import studies

    figure, table, info, methods = studies.view("fronts", "eps_kl", root=tiny / "shipped")
    (line,) = figure.data
    assert list(line.text) == ["α=0.25", "α=0.5", "α=0.75", "α=1"] and list(line.x) == list(shipped["eps_kl"])
    assert list(line.error_y.array) == pytest.approx(list(shipped["ci_high"] - shipped["reward_delta"]))
    assert len(table) == 4 and methods["choices"] == ["refl", "refl/seed1"] and "**fronts** (1 methods" in info
    assert studies.beside_base("fronts", "refl/seed1", root=tiny / "shipped") == ["base", "shipped: fronts/refl/seed1"]
    # every seed's run is a model of its own in the studio's lists, with its curves
    from app.catalogue import Catalogue, display_name

    seed1 = Catalogue(tiny / "studio-runs", shipped_dir=tiny / "shipped").get("shipped: fronts/refl/seed1")
    assert seed1.adapter == dest / "refl" / "seeds" / "seed1" / "adapter" and (seed1.run / "metrics.csv").exists()
    assert display_name(seed1) == "Shipped · ReFL on colorfulness, seed 1"


def test_a_study_cut_mid_run_resumes_from_its_carried_copy(tiny, monkeypatch, capsys):
    """bash bench/second_edition.sh --pack, then a fresh machine: the carried copy (a few files) unpacks into a new
    study folder and the cut run resumes from its checkpoint to the numbers of an uncut study."""
    from engine.study import carry, runs

    def argv(out):
        return [*_argv(tiny, out, "--steps", "3", "--sweep", "--sweep-steps", "2", "--resume", methods="refl", seeds=1),
                "checkpoint_every=2", "eval_every=0"]

    cm.main(argv(tiny / "uncut"))

    cut, log = tiny / "cut", runs.log

    def kill_after_step_2(message):
        log(message)
        if message.startswith("[refl seed0] step 2/3"):
            raise KeyboardInterrupt  # a machine going away: the checkpoint of step 2 is on disk, no status

    monkeypatch.setattr(runs, "log", kill_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        cm.main(argv(cut))
    monkeypatch.setattr(runs, "log", log)
    assert not (cut / "runs" / "refl" / "seed0.status.json").exists()
    # and cut between a checkpoint swap's renames: only checkpoint-old/ is complete (the trainer resumes from it)
    (cut / "runs" / "refl" / "seed0" / "checkpoint").rename(cut / "runs" / "refl" / "seed0" / "checkpoint-old")

    n, size = carry.pack(cut, tiny / "carried")
    carried = {str(p.relative_to(tiny / "carried")) for p in (tiny / "carried").rglob("*") if p.is_file()}
    assert n == len(carried) and size > 0
    assert any(p.startswith("runs/refl/seed0/checkpoint-old/") for p in carried)  # unfinished: resumes from it
    trials = [p.split("/")[2] for p in carried if p.startswith("sweep/refl/") and p.endswith("/tune.csv")]
    assert trials and not any(f"/{t}/adapter/" in p or f"/{t}/checkpoint/" in p for t in trials for p in carried)
    assert carry.unpack(tiny / "carried", cut) == 0  # a study under way here is newer: left alone

    shutil.rmtree(cut)  # the next session's machine: nothing but the committed carried copy
    assert carry.unpack(tiny / "carried", cut) == n
    capsys.readouterr()
    cm.main(argv(cut))
    err = capsys.readouterr().err
    assert "[refl seed0] resumed at step 2" in err and "step 1/2" not in err  # no sweep trial trained again
    for name in ("metrics.csv", "eval.csv"):  # timings aside, the numbers of the uncut study
        a, b = (pd.read_csv(d / "runs" / "refl" / "seed0" / name) for d in (tiny / "uncut", cut))
        drop = [c for c in a.columns if "seconds" in c]
        pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop))
    assert json.loads((cut / "runs" / "refl" / "seed0.status.json").read_text())["steps"] == 3
    # once finished, its checkpoint stays behind too
    carry.pack(cut, tiny / "carried")
    assert not any("checkpoint" in str(p) for p in (tiny / "carried").rglob("*"))
    assert (tiny / "carried" / "runs" / "refl" / "seed0" / "adapter").is_dir()


def test_the_sweep_can_start_from_a_learning_rate_grid_of_its_own():
    args = ["--reward", "geometry", "--methods", "refl", "--out", "unused", "--sweep"]
    plan = study.Plan(study.parser().parse_args([*args, "--sweep-lrs", "3e-4, 3e-5,1e-4"]))
    assert plan.sweep_lrs == (3e-5, 1e-4, 3e-4) and plan.record()["sweep_lrs"] == [3e-5, 1e-4, 3e-4]
    assert study.Plan(study.parser().parse_args(args)).sweep_lrs == study.SWEEP_LRS


def test_draft_1_is_a_named_baseline_beside_draft_k():
    plan = study.Plan(study.parser().parse_args(["--reward", "geometry", "--methods", "all", "--out", "unused",
                                                 "--set", "draft.k=2"]))
    assert plan.methods[-1] == "draft-1" and "draft" in plan.methods
    cfg = plan.config("draft-1", 0)
    assert cfg.method == "draft" and cfg.draft.k == 1  # pinned, whatever --set says
    assert plan.config("draft", 0).draft.k == 2
    assert plan.knob_fields("draft-1") == () and plan.knob_fields("draft") == ("draft.k",)  # its sweep: lr only


def test_tuning_compares_trials_pairwise_and_extends_grids():
    """A trial within 2 paired standard errors of the best is a tie; grids continue by the ladder or their ratio."""
    rng = np.random.default_rng(0)
    hard = rng.normal(0, 1, (24, 2))  # prompt x seed difficulty shared by every trial (same noise): pairing cancels it
    deltas = {"a": hard + 0.10, "b": hard + 0.10 + rng.normal(0, 0.02, (24, 2)), "c": hard - 0.2}
    best, rows = study.compare_trials(deltas, higher=True)
    assert best in ("a", "b") and rows[best]["diff"] == 0 and not rows[best]["tie"]
    other = "b" if best == "a" else "a"
    assert rows[other]["tie"] and not rows["c"]["tie"] and rows["c"]["diff"] < -0.25
    assert study.compare_trials({"a": deltas["a"], "c": deltas["c"]}, higher=False)[0] == "c"
    from engine.study.sweep import LR_LADDER, beyond

    assert beyond([3e-4, 1e-3, 3e-3], True, LR_LADDER) == 1e-4 and beyond([1e-3, 3e-3, 1e-2], False, LR_LADDER) is None
    assert beyond([3e6, 3e7, 3e8], False) == 3e9 and beyond([0.5, 0.75, 0.9], True) == pytest.approx(0.333)
    assert beyond([1, 2, 3], False) == 4.5 and beyond([-1, 0, 1], True) == -2


@pytest.mark.parametrize("reward, span", [("colorfulness", 110.0), ("geometry", 1.0), ("alignment:1,geometry:0.5", 1.5)])
def test_nabla_beta_is_per_unit_of_the_rewards_range(tmp_path, reward, span):
    """beta scales the raw reward gradient: colorfulness (0-110) must not get geometry's (0-1) beta. The study sets
    no beta of its own: RunConfig fills 3e7 per unit of the reward's range, and the sweep is nabla.py's grid."""
    from engine.align.config import RunConfig
    from engine.align.knobs import sweep_knob
    from engine.align.methods.nabla import BETA_PER_RANGE, NablaConfig

    plan = study.Plan(study.parser().parse_args(["--reward", reward, "--methods", "nabla-r2d3,refl", "--out", str(tmp_path)]))
    assert plan.reward_span == pytest.approx(span)
    declared = sweep_knob(NablaConfig, "nabla").meta.sweep
    assert plan.knob_values("nabla-r2d3") == tuple(float(f"{v / span:.3g}") for v in declared)
    beta = plan.base_configs["nabla-r2d3"].nabla.beta
    assert beta == float(f"{BETA_PER_RANGE / span:.3g}") == RunConfig(reward=reward).validate().nabla.beta
    assert beta in plan.knob_values("nabla-r2d3")  # the default is one of the sweep's values
    if reward == "colorfulness":
        assert beta == 2.73e5
    assert plan.knob_values("refl") == (0.5, 0.75, 0.9)  # scale-free knobs stay as declared
    given = study.Plan(study.parser().parse_args(["--reward", reward, "--methods", "nabla-r2d3", "--out", str(tmp_path),
                                                  "--set", "nabla.beta=5"]))
    assert given.base_configs["nabla-r2d3"].nabla.beta == 5.0  # the user's value wins


def test_each_method_is_swept_over_the_knob_it_declares():
    assert study.sweep_plan("refl", "geometry") == (("refl.first_fraction",), (0.5, 0.75, 0.9))
    # PPO's clip never binds with one update per sampled batch: DDPO and GRPO tune the learning rate only
    assert study.sweep_plan("grpo", "colorfulness") == study.sweep_plan("ddpo", "geometry") == ((), ())
    assert study.sweep_plan("nabla-r2d3", "geometry") == (("nabla.beta",), (3e6, 3e7, 3e8))
    assert study.sweep_plan("nabla-r2d3", "colorfulness") == (("nabla.beta",), (2.73e4, 2.73e5, 2.73e6))


def test_a_newly_registered_method_joins_the_study_with_its_own_sweep(tmp_path):
    from engine.align.knobs import knob
    from engine.align.methods import METHODS, register, unregister
    from engine.align.methods.refl import ReFL

    @dataclass
    class ToyConfig:
        gain: float = knob(1.0, "a toy knob", low=0, sweep=(0.5, 1.0, 2.0))
        plain: int = knob(3, "not swept")

    class Toy(ReFL):
        name, title, config_field, config, summary = "toy-study", "Toy", "toystudy", ToyConfig, "ReFL under another name"

    register(Toy)
    try:
        assert study.sweep_plan("toy-study", "colorfulness") == (("toystudy.gain",), (0.5, 1.0, 2.0))
        plan = study.Plan(study.parser().parse_args(["--reward", "colorfulness", "--methods", "all", "--sweep", "--out",
                                                     str(tmp_path)]))
        assert plan.methods == [*METHODS, "draft-1"] and plan.methods[-2] == "toy-study"  # named variants come last
        assert plan.knob_fields("toy-study") == ("toystudy.gain",) and plan.knob_values("toy-study") == (0.5, 1.0, 2.0)
        assert plan.base_configs["toy-study"].toystudy.gain == 1.0
    finally:
        unregister("toy-study")


def test_the_study_runs_as_a_module_and_bench_is_a_thin_command_line():
    done = subprocess.run([sys.executable, "-m", "engine.study", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m engine.study") and "--report-only" in done.stdout
    assert len((ROOT / "bench" / "compare_methods.py").read_text().splitlines()) <= 150
    assert "usage: python bench/compare_methods.py" in cm.parser().format_help()


def test_nothing_in_bench_imports_tests():
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "tests" or n.startswith("tests.")], path.name


@pytest.mark.parametrize("extra, message", [
    (["--methods", "refl,nope"], "unknown method 'nope'"),
    (["--seeds", "0"], "--seeds 0: must be >= 1"),
    (["--steps", "0"], "--steps 0: must be >= 1"),
    (["--minutes", "-1"], "--minutes -1.0: must be > 0"),
    (["--reward", "nope"], "Unknown reward 'nope'"),
    (["--set", "seed=3"], "seed is set by the script's own --seeds"),
    (["--set", "nabla.beta=-1"], "nabla.beta = -1.0: must be >= 0"),
    (["--sweep", "--set", "lr=1e-3"], "--sweep tunes lr"),
    (["--sweep", "--sweep-lrs", "1e-4"], "give at least two values of the ladder"),
    (["--sweep", "--sweep-lrs", "1e-4,2e-4"], "(0.0002 is not on it)"),
    (["--sweep", "--sweep-lrs", "1e-4,fast"], "give numbers separated by commas"),
])
def test_bad_arguments_give_one_clear_message_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        cm.main(["--reward", "colorfulness", "--methods", "refl,nabla-r2d3", "--out", str(out), *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists()


def test_convergence_is_not_timed_against_the_base():
    """Step 0 is the base: it reaches no target by training, and with no baseline above the base there is no gain
    to race to (every shipped geometry run ended below the base; the report said 'step 0' before)."""
    from types import SimpleNamespace

    curve = pd.DataFrame({"step": [0, 10, 20], "heldout": [0.53, 0.45, 0.44], "seconds": [0.0, 100.0, 200.0]})
    assert all(math.isnan(v) for v in study.reach(curve, 0.50, higher=True))  # only the base (step 0) is above 0.50
    assert study.reach(curve, 0.45, higher=True) == (10.0, 100.0)
    row = {"n_seeds": 2, "final_reward_mean": 0.45, "final_reward_std": 0.01, "delta_reward_mean": -0.08,
           "steps_to_best_baseline": float("nan"), "seconds_to_best_baseline": float("nan"), "steps": 20, "seconds": 200.0,
           "alignment_delta_mean": -0.03, "category_acc_delta_mean": -0.2, "kid_vs_base_mean": 2e-5, "diversity_delta_mean": 0.0}
    table = pd.DataFrame([{**row, "method": "nabla-r2d3"}, {**row, "method": "grpo", "final_reward_mean": 0.52}])
    plan = SimpleNamespace(methods=["nabla-r2d3", "grpo"], higher_is_better=True, eval_every=10, reward_terms={"geometry"})
    info = {"best_baseline": "grpo", "target": 0.52, "gained": False, "base": {"heldout": 0.53}}
    faster = study.claims(plan, table, info)[1]
    assert faster.startswith("**Faster convergence: not testable here.**") and "no baseline gain to race to" in faster
    table.loc[0, "delta_reward_mean"] = 0.02  # nabla-r2d3 above the base while no baseline is
    assert study.claims(plan, table, info)[1].startswith("**Faster convergence: not testable here.**")  # no interval
    table["delta_reward_ci_low"], table["delta_reward_ci_high"] = [0.01, -0.1], [0.03, -0.05]
    assert study.claims(plan, table, info)[1].startswith("**Faster convergence: reproduced.**")
