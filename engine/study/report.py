"""The study's report: ``report.md`` (settings, the sweep's picks, the results table, the claims' verdicts),
plotly figures (``figures/*.html``; PNG too when kaleido and a browser are there) and the samples sheet
(``samples.png``, the base's strip beside every method's last one: the reward-hacking check)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd

from ..core.io import atomic_save, atomic_write_text
from .fmt import fmt, log, num, pm, signed
from .fronts import front_figure
from .plan import Plan
from .summary import claims, regime_lines
from .sweep import LR_LADDER, MAX_EXTEND, TIE_SE, TUNE_SEEDS

DEFAULT_PROG = "python bench/compare_methods.py"  # the command the report echoes when the arguments do not say


def ci(row: dict) -> str:
    """' [low, high]' of a summary row's Δ reward interval, or nothing when its runs have no per-asset scores."""
    lo, hi = row.get("delta_reward_ci_low", float("nan")), row.get("delta_reward_ci_high", float("nan"))
    return f" [{signed(lo)}, {signed(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else ""


def tuning_section(plan: Plan, chosen: dict, sweep_rows: list[dict]) -> list[str]:
    """The sweep: how it ran, each method's axes with their picks, whether each is inside its grid, and ties."""
    a = plan.args
    lines = ["## Tuning (the same sweep for every method)", "",
             f"Each method: learning rates {{{', '.join(map(fmt, plan.sweep_lrs))}}} at its default knobs, then at the picked "
             f"learning rate the values of one knob of its own; a grid whose best sits at an end is extended (at most "
             f"{MAX_EXTEND} times; learning rates along {', '.join(map(fmt, LR_LADDER))}). {plan.sweep_steps} steps per trial, "
             f"seed {a.sweep_seed}. Each trial is scored by the paired change of the held-out reward from the base on the "
             f"held-out prompts with fresh noise (seeds {', '.join(map(str, TUNE_SEEDS))}, never the final evaluation's); "
             f"each trial's difference from the best is given ± its paired standard error over prompts, and a trial within "
             f"{TIE_SE:g} standard errors of the best is a **tie**: the pick is then not better than it at this budget.", "",
             "| method | axis | values tried | pick | inside the grid | ties with the pick |", "|---|---|---|---|---|---|"]
    for m in plan.methods:
        for ax in chosen.get(m, {}).get("axes", []):
            inside = "yes" if ax["inside_grid"] else \
                "**no: every value scored the same** (the knob did not act at this budget: not extended)" if ax.get("inert") else \
                "**no: at the edge** (the next value failed, was refused or is past the ladder)"
            lines.append(f"| {m} | {ax['knob']} | {', '.join(map(fmt, ax['values']))} | {fmt(ax['pick'])} | {inside} | "
                         f"{', '.join(map(fmt, ax['ties'])) or 'none'} |")
    lines += ["", "Trials (setting: held-out change; difference from the method's best ± SE):", ""]
    for m in plan.methods:
        rows = [t for t in sweep_rows if t["method"] == m]
        if rows:
            lines.append(f"- {m}: " + "; ".join(
                f"lr {fmt(t['lr'])}" + (f", {str(t['knob']).split('.')[-1]} {fmt(t['value'])}" if t["knob"] != "(none)" else "")
                + (f": {num(t['score'])} ({num(t['diff'], 2)} ± {num(t['diff_se'], 2)}{', tie' if t['tie'] else ''})"
                   if t["state"] == "finished" and math.isfinite(t["score"]) else f": {t['state']}")
                for t in rows))
    return lines + [""]


def fronts_section(fronts: pd.DataFrame) -> list[str]:
    """Each method's points: the reward change with its interval beside what it cost."""
    lines = ["", "## Fronts (each run's adapter at LoRA scale α; seed means)", "",
             "| method | point | Δ reward [95% interval] | KID vs base | category acc Δ | alignment Δ | ε-space KL to base |",
             "|---|---|---|---|---|---|---|"]
    if fronts.empty:
        return lines + ["| (no finished run has its front yet) | | | | | | |"]
    for r in fronts.to_dict("records"):
        lines.append(f"| {r['method']} | {r['point']} | {signed(r['reward_delta'])} [{signed(r['ci_low'])}, {signed(r['ci_high'])}] | "
                     f"{num(r['kid_vs_base'], 3)} | {signed(r['category_acc_delta'], 3)} | {signed(r['alignment_delta'], 3)} | "
                     f"{num(r['eps_kl'], 3)} |")
    return lines + ["", "Alignment Δ is blank (—) when alignment is part of the trained reward. ε-space KL: mean (ε_θ − ε_base)² "
                    "along the adapter's own samples. Machine-readable: fronts.csv."]


def compute_used(plan: Plan, table: pd.DataFrame, sweep_rows: list[dict]) -> str:
    """The study's training time in core-hours (seconds x torch threads): the final runs and the sweep's trials.
    Evaluation, fronts and samples are not timed by the runs and come on top."""
    final = float((table["seconds"].fillna(0) * table["n_seeds"]).sum())
    sweep = float(sum(r.get("seconds") or 0.0 for r in sweep_rows))
    hours = lambda s: s * plan.args.threads / 3600  # noqa: E731
    return (f"- Compute used for training: {hours(final + sweep):.2f} core-hours ({hours(final):.2f} final runs, "
            f"{hours(sweep):.2f} sweep), at {plan.args.threads} torch thread(s); evaluation comes on top.")


def write_report(plan: Plan, table: pd.DataFrame, info: dict, chosen: dict, fig_paths: list[str], png: bool,
                 sweep_rows: list[dict], sheet: Path | None = None, fronts: pd.DataFrame | None = None) -> Path:
    a = plan.args
    cfg = plan.base_configs[plan.methods[0]]
    lines = [f"# Method comparison: reward `{a.reward}`", ""]
    budget = f"{plan.steps} optimiser steps" + (f" or {num(a.minutes)} minutes of training wall time, whichever comes first"
                                                 if a.minutes else "")
    lines += [
        f"- Budget per run: {budget} (evaluation not counted); batch {cfg.batch_size} trajectories per step, "
        f"{cfg.sampler_steps} sampler steps, reward renders {cfg.render_resolution} px from {cfg.reward_views} views.",
        f"- Methods: {', '.join(plan.methods)}; seeds {', '.join(map(str, plan.seeds))}; torch threads {a.threads}.",
        f"- Base: `{cfg.model}` ({cfg.weights or 'the shipped checkpoints/tiny-base'}); training prompts: "
        f"{cfg.prompts or 'assets/prompts/train.txt'}.",
        f"- Held-out evaluation (engine.align.evaluate): {cfg.eval_prompts or 'assets/prompts/eval_held_out.txt'} × "
        f"{cfg.eval_seeds} seeds, every {cfg.eval_every} steps and at the end; the base evaluated the same way.",
        f"- Settings given to every run: {' '.join(plan.sets) or '(engine defaults)'}.",
        "- Command: `" + " ".join([getattr(a, "prog", None) or DEFAULT_PROG, *argv_echo(a)]) + "`",
        "",
    ]
    if a.sweep:
        lines += tuning_section(plan, chosen, sweep_rows)
    base = info["base"]
    lines += ["## Results (held-out prompts, mean ± std over seeds)", "",
              "| method | final reward | Δ reward vs base | steps (and seconds) to reach the best baseline's final reward | "
              "alignment Δ | category acc Δ | KID vs base | diversity Δ |",
              "|---|---|---|---|---|---|---|---|",
              f"| base | {num(base['heldout'])} | — | — | (alignment {num(base['alignment'])}) | (category acc "
              f"{num(base['category_acc'])}) | 0 | (diversity {num(base['diversity'])}) |"]
    for r in table.to_dict("records"):
        if not r["n_seeds"]:
            lines.append(f"| {r['method']} | no finished run | | | | | | |")
            continue
        reach_ = "— (no gain)" if not info["gained"] else "never" if not math.isfinite(r["steps_to_best_baseline"]) else \
            f"{num(r['steps_to_best_baseline'])} ({num(r['seconds_to_best_baseline'], 3)} s)"
        lines.append(f"| {r['method']} | {pm(r['final_reward_mean'], r['final_reward_std'])} | "
                     f"{pm(r['delta_reward_mean'], r['delta_reward_std'])}{ci(r)} | {reach_} | "
                     f"{pm(r['alignment_delta_mean'], r['alignment_delta_std'])} | "
                     f"{pm(r['category_acc_delta_mean'], r['category_acc_delta_std'])} | "
                     f"{pm(r['kid_vs_base_mean'], r['kid_vs_base_std'])} | {pm(r['diversity_delta_mean'], r['diversity_delta_std'])} |")
    bb = info["best_baseline"]
    lines += ["", "Δ reward's bracket: its 95% bootstrap interval over prompts x training seeds (per-asset scores paired "
              "with the base's: same prompts, seeds and noise)."]
    lines += ["", f"Best baseline: {bb or '—'} (final held-out reward {num(info['target'])}). \"Steps to reach\" is the first "
              f"evaluated step where the seed-mean held-out reward reaches it (seconds: training time at that step, seed mean); "
              "\"never\": not within the budget; \"— (no gain)\": no baseline ended above the base, so there is nothing to "
              "reach. Seconds are wall-clock and not reproducible; everything else is, for the "
              "same seeds and thread count."]
    lines += ["", "Steps and seconds trained, images scored by the training reward (seed means):", ""]
    for r in table.to_dict("records"):
        if r["n_seeds"]:
            lines.append(f"- {r['method']}: {num(r['steps'])} steps, {num(r['seconds'], 3)} s, "
                         f"{num(r['reward_images'], 6)} reward images" + (f"; {r['n_failed']} seed(s) failed" if r["n_failed"] else ""))
    lines.append(compute_used(plan, table, sweep_rows))
    stopped = [(m, r["seed"]) for m, (runs, _) in info["per_method"].items() for r in runs if r["status"].get("stopped_by") == "time"]
    if stopped:
        lines.append(f"- Stopped by the time budget: {', '.join(f'{m} seed {s}' for m, s in stopped)}.")
    for m, (_, failed) in info["per_method"].items():
        for seed, st in failed:
            lines.append(f"- {m} seed {seed} failed: {st.get('error') or st.get('state')}")
    if fronts is not None:
        lines += fronts_section(fronts)
    lines += ["", "## The paper's claims on this reward", ""]
    lines += [f"- {c}" for c in claims(plan, table, info)]
    regime = regime_lines(info)
    if regime:
        lines += ["", "Nabla-R2D3's regime (RMS(s_θ − κ s_ref) / RMS(g) at the terminal transition, from metrics.csv):", ""]
        lines += [f"- {line}" for line in regime]
    lines += ["", "## Figures", ""]
    for f in map(Path, fig_paths):
        rel = f.relative_to(a.out).as_posix()
        lines.append(f"- [{f.stem}]({rel}) (interactive)")
        if png:
            lines += ["", f"  ![{f.stem}]({rel[:-len('.html')]}.png)", ""]
    lines.append("" if png else "\nPNG figures were not written: plotly needs kaleido and a Chrome/Chromium for static "
                                "images; the HTML figures hold the same plots.")
    if sheet is not None:
        lines += ["", "## Samples beside the base (the reward-hacking check)", "",
                  "The same 4 held-out prompts and seeds, drawn by the base and by each method's final weights (first "
                  "seed; 4 views, rendered colours above normals). Saturated noise, flattened or hollow objects, or "
                  "every prompt turning into the same thing are a hacked reward, whatever the table says.", "",
                  f"![samples]({sheet.relative_to(a.out).as_posix()})"]
    for n in info["notes"]:
        lines.append(f"\nNote: {n}")
    path = a.out / "report.md"
    return atomic_write_text(path, "\n".join(lines).rstrip() + "\n")


def argv_echo(a) -> list[str]:
    parts = [f"--reward '{a.reward}'", f"--methods {a.methods}", f"--seeds {a.seeds}", f"--steps {a.steps}"]
    if a.minutes:
        parts.append(f"--minutes {num(a.minutes)}")
    if a.sweep:
        parts.append(f"--sweep --sweep-steps {a.sweep_steps or max(2, a.steps // 4)} --sweep-seed {a.sweep_seed}")
        if getattr(a, "sweep_lrs", None):
            parts.append(f"--sweep-lrs {a.sweep_lrs}")
    parts.append(f"--out {a.out}")
    if a.set:
        parts.append("--set " + " ".join(a.set))
    if a.reward_weights:
        parts.append("--reward-weights " + " ".join(a.reward_weights))
    parts.append(f"--threads {a.threads}")
    return parts


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def figures(plan: Plan, info: dict, fronts: pd.DataFrame | None = None) -> tuple[list[str], bool]:
    import plotly.graph_objects as go

    folder = plan.args.out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    curves, base = info["curves"], info["base"]
    title = f"held-out reward ({plan.args.reward})"
    made = []
    for x, label, name in (("step", "optimiser step", "reward_vs_steps"), ("seconds", "training wall time (s)", "reward_vs_time")):
        fig = go.Figure()
        for i, (m, c) in enumerate(curves.items()):
            col = COLOURS[i % len(COLOURS)]
            c = c.dropna(subset=[x]).sort_values(x)
            std = c["heldout_std"].fillna(0.0)
            if (c["n"] > 1).any():
                fig.add_trace(go.Scatter(x=list(c[x]) + list(c[x])[::-1], y=list(c["heldout"] + std) + list(c["heldout"] - std)[::-1],
                                         fill="toself", fillcolor=_rgba(col, 0.18), line=dict(width=0), mode="lines", hoverinfo="skip",
                                         showlegend=False, legendgroup=m))
            fig.add_trace(go.Scatter(x=c[x], y=c["heldout"], mode="lines+markers", name=m, line=dict(color=col), legendgroup=m))
        fig.add_hline(y=base["heldout"], line_dash="dot", line_color="grey", annotation_text="base")
        fig.update_layout(title=f"{title} vs {label} (mean ± std over seeds)", xaxis_title=label, yaxis_title=title,
                          template="plotly_white")
        made.append((name, fig))
    fig = go.Figure()
    for i, (m, c) in enumerate(curves.items()):
        col = COLOURS[i % len(COLOURS)]
        c = c.sort_values("step")
        fig.add_trace(go.Scatter(x=c["alignment"], y=c["heldout"], mode="lines+markers", name=m, line=dict(color=col),
                                 text=[f"step {int(s)}" for s in c["step"]], legendgroup=m,
                                 marker=dict(size=[6] * (len(c) - 1) + [12])))
        last = c.iloc[-1]
        if last["n"] > 1:
            fig.add_trace(go.Scatter(x=[last["alignment"]], y=[last["heldout"]], mode="markers", showlegend=False, legendgroup=m,
                                     marker=dict(color=col, size=12),
                                     error_x=dict(type="data", array=[0 if math.isnan(last["alignment_std"]) else last["alignment_std"]]),
                                     error_y=dict(type="data", array=[0 if math.isnan(last["heldout_std"]) else last["heldout_std"]])))
    fig.add_trace(go.Scatter(x=[base["alignment"]], y=[base["heldout"]], mode="markers", name="base",
                             marker=dict(symbol="star", size=14, color="black")))
    fig.update_layout(title="reward vs text-object alignment<br><sup>held-out; each method from the base to its final "
                            "point, seed means</sup>", xaxis_title="alignment (evaluator cosine)", yaxis_title=title, template="plotly_white")
    made.append(("reward_vs_alignment", fig))
    if fronts is not None and not fronts.empty:
        made.append(("front", front_figure(plan, fronts, COLOURS)))
    png = importlib.util.find_spec("kaleido") is not None
    paths = []
    for name, fig in made:
        path = folder / f"{name}.html"
        fig.write_html(path, include_plotlyjs={"inline": True}.get(plan.args.plotlyjs, plan.args.plotlyjs))
        paths.append(str(path))
        if png:
            try:  # kaleido drives a Chrome/Chromium; without one the HTML figures still stand
                fig.write_image(folder / f"{name}.png")
            except Exception as e:  # noqa: BLE001 - kaleido raises several kinds for a missing browser
                log(f"PNG figures skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                png = False
    return paths, png


SAMPLES_SCALE = 0.5  # strips at half size (64 px views): one sheet for 8 models stays ~1-2 MB


def samples_sheet(plan: Plan) -> Path | None:
    """The reward-hacking check, ``DIR/samples.png``: the base's sample strip beside every method's last one
    (the first seed with strips; the trainer draws the same 4 held-out prompts and seeds for all), one
    labelled column each, rendered colours above normals. None when no run drew samples (sample_every=0)."""
    from PIL import Image, ImageDraw

    columns = []
    for m in plan.methods:
        for seed in plan.seeds:
            strips = sorted((plan.args.out / "runs" / m / f"seed{seed}" / "samples").glob("step_*.png"))
            if strips:
                if not columns:
                    columns.append(("base", strips[0]))
                columns.append((f"{m} (step {int(strips[-1].stem.split('_')[-1])})", strips[-1]))
                break
    if not columns:
        return None
    images = []
    for _, path in columns:
        im = Image.open(path).convert("RGB")
        images.append(im.resize((round(im.width * SAMPLES_SCALE), round(im.height * SAMPLES_SCALE)), Image.LANCZOS))
    width, height, band, gap = max(i.width for i in images), max(i.height for i in images), 22, 6
    sheet = Image.new("RGB", (len(images) * (width + gap) - gap, height + band), "white")
    draw = ImageDraw.Draw(sheet)
    for k, ((label, _), im) in enumerate(zip(columns, images)):
        draw.text((k * (width + gap) + 4, 5), label, fill="black")
        sheet.paste(im, (k * (width + gap), band))
    return atomic_save(plan.args.out / "samples.png", lambda tmp: sheet.save(tmp, optimize=True))
