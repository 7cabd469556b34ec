"""The Compare tab: one prompt and seed through up to 4 models (the base and any LoRAs), side by side.

Per model: the turntable (RGB | normals), the 4-view strip and every offline reward's score on the same
renders; below, the selected runs' reward curves (metrics.csv) against step and wall time, and their held-out
evaluation (eval.csv). The models share the one loaded base of ``catalogue.pool()``; only adapters switch.
"""

from __future__ import annotations

import functools
import math
import re
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from engine.core.cameras import evaluation_views
from engine.generate import generate, write_asset
from engine.prompts import prompt_notice, validate_prompt
from engine.render import render
from engine.rewards import (
    OFFLINE,
    build_reward,
    list_rewards,
    parse_ensemble,
    score_assets,
)

from .catalogue import BASE, Entry, catalogue, pool
from .curves import X_AXES, draw_curves, read_metrics, read_run_config, reward_figure
from .sessions import refusal, session_dir

MAX_MODELS = 4
SCORE_RESOLUTION = 128  # the held-out evaluation's render size (engine.align.evaluate), so scores read like eval.csv's
MISSING = "—"
EVAL_COLUMNS = {"alignment": "alignment", "category_acc": "category acc", "color_acc": "colour acc",
                "kid_vs_base": "KID vs base", "diversity": "diversity"}


# ------------------------------------------------------------------------------------------ choices

def model_choices() -> list[str]:
    return catalogue().choices()


def model_options() -> list[tuple[str, str]]:
    """The list's (shown name, label): the base, the runs made here (newest first), shipped runs, uploads."""
    return catalogue().options()


def refresh_models(current):
    """The model list read again (runs saved a moment ago appear); kept selections that still exist."""
    options = model_options()
    labels = {label for _, label in options}
    kept = [c for c in _as_list(current) if c in labels][:MAX_MODELS]
    return gr.update(choices=options, value=kept or [BASE])


def _as_list(models) -> list[str]:
    if models is None:
        return []
    if isinstance(models, str):  # a script may pass one label
        return [models]
    return [str(m) for m in models]


def describe(entry: Entry) -> str:
    """A slot's title: label, then method, reward and step from the adapter's r2d3_adapter.json."""
    if entry.adapter is None:
        return f"**{entry.label}**: the embedded tiny model, no adapter"
    info = entry.info
    parts = []
    if info.get("method"):
        parts.append(str(info["method"]))
    if info.get("reward"):
        parts.append(f"on {info['reward']}")
    if info.get("step") is not None:
        parts.append(f"step {info['step']}")
    if not parts:
        parts.append(f"rank {info.get('rank', '?')}" + ("" if info.get("base_fingerprint") else ", base unknown"))
    return f"**{entry.label}**: {' · '.join(parts)}"


# ------------------------------------------------------------------------------------------ scores

def score_rewards() -> list[str]:
    """The offline rewards that can run here (alignment needs the evaluator's weights)."""
    ok = {i.name for i in list_rewards() if i.available}
    return [n for n in OFFLINE if n in ok]


@functools.lru_cache(maxsize=8)
def _reward(name: str, device: str):
    # built once per server: the alignment reward loads the evaluator and caches prompt embeddings
    return build_reward(name).to(device).freeze()


@torch.no_grad()
def score_asset(gaussians, prompt: str, rewards: list[str]) -> dict[str, float]:
    """Each reward's mean over the held-out evaluation's 4 views (azimuth 45/135/225/315): the same cameras
    for every model, and between the 4 views the model generates, as in eval.csv."""
    device = gaussians.means.device
    cams = evaluation_views().to(device)
    out = render(gaussians, cams, SCORE_RESOLUTION)
    return {n: float(score_assets(_reward(n, str(device)), out, [prompt], cams)[0]) for n in rewards}


# ------------------------------------------------------------------------------------------ curves

def _reward_of(entry: Entry) -> str:
    return str(read_run_config(entry.run).get("reward") or entry.info.get("reward") or "?")


def _base_level(frames: list[pd.DataFrame]) -> float | None:
    """The base's level for a group of runs on one reward: the first metrics row's reward_mean. Step 1's batch
    is sampled before any update, with the LoRA's B = 0, so it is the base model on the training prompts,
    views and render size, which is what the curves measure (eval.csv's base row is on held-out prompts and
    other views). Runs of one seed share it; for several, their mean."""
    firsts = [float(f["reward_mean"].iloc[0]) for f in frames if not f.empty and "reward_mean" in f]
    firsts = [v for v in firsts if math.isfinite(v)]
    return sum(firsts) / len(firsts) if firsts else None


def _empty_figure(message: str, x: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title="Reward (mean over the batch)", xaxis_title=X_AXES[x], height=260, template="plotly_white",
                      xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def curve_figures(entries: list[Entry]) -> tuple[go.Figure, go.Figure]:
    """The runs' reward curves against step and against wall time, the base's level as a dotted line.
    Runs on different rewards (different units) get one panel each."""
    groups: dict[str, list[tuple[str, pd.DataFrame, bool]]] = {}
    for e in entries:
        if e.run is not None:
            groups.setdefault(_reward_of(e), []).append((e.label, read_metrics(e.run), e.kind == "shipped"))
    figures = []
    for x in ("step", "wall_seconds"):
        if not any(not f.empty for curves in groups.values() for _, f, _ in curves):
            figures.append(_empty_figure("No reward curves: choose runs (the base and uploads have no metrics.csv), "
                                         "or wait for a run's first step.", x))
        elif len(groups) == 1:
            (reward, curves), = groups.items()
            figures.append(reward_figure(curves, x=x, base_level=_base_level([f for _, f, _ in curves]), reward=reward,
                                         title=f"Reward during training vs {X_AXES[x]}"))
        else:
            figures.append(_panels(groups, x))
    return figures[0], figures[1]


def _panels(groups: dict[str, list[tuple[str, pd.DataFrame, bool]]], x: str) -> go.Figure:
    height = 60 + 300 * len(groups)
    # the gap in px, as a fraction of the figure: room for a panel's x-axis title and the next panel's title
    fig = make_subplots(rows=len(groups), cols=1, subplot_titles=[f"reward: {r}" for r in groups],
                        vertical_spacing=110 / height)
    colour = 0  # one colour per run across panels
    for row, (reward, curves) in enumerate(groups.items(), start=1):
        colour = draw_curves(fig, curves, x=x, base_level=_base_level([f for _, f, _ in curves]), row=row, col=1,
                             colour=colour)
        fig.update_yaxes(title_text=reward, row=row, col=1)
        fig.update_xaxes(title_text=X_AXES[x], row=row, col=1)
    fig.update_layout(title=f"Reward during training vs {X_AXES[x]}", height=height, template="plotly_white",
                      margin={"l": 50, "r": 20, "t": 70, "b": 40}, legend={"orientation": "h", "y": -0.1})
    return fig


# ------------------------------------------------------------------------------------------ evaluation

def read_eval(run: Path | None) -> pd.DataFrame:
    path = Path(run) / "eval.csv" if run else None
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["step", "label"])
    return pd.read_csv(path)


def _fmt(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return MISSING
    return MISSING if math.isnan(value) else f"{value:.4g}"


def _held_out(row: pd.Series, reward: str) -> str:
    """The run's own reward on the held-out prompts; an ensemble shows each of its terms."""
    try:
        names = [n for n, _ in parse_ensemble(reward)]
    except ValueError:
        return MISSING
    values = {n: _fmt(row.get(f"reward/{n}")) for n in names}
    if len(names) == 1:
        return values[names[0]]
    return MISSING if all(v == MISSING for v in values.values()) else ", ".join(f"{n} {v}" for n, v in values.items())


def eval_table(entries: list[Entry]) -> pd.DataFrame:
    """Per adapter: its run's eval.csv base row and last run row; "—" where there is none (a run without
    evaluation, a run still going, an upload without a run folder)."""
    rows = []
    for e in entries:
        if e.adapter is None:
            continue  # the base's numbers are each run's base row (same prompts and seeds as the run's)
        reward = _reward_of(e) if e.run else str(e.info.get("reward") or MISSING)
        frame = read_eval(e.run)
        if frame.empty or "label" not in frame:
            why = "no run folder" if e.run is None else "no eval.csv yet"
            rows.append({"model": e.label, "row": why, "reward": reward, "held-out reward": MISSING,
                         **{title: MISSING for title in EVAL_COLUMNS.values()}})
            continue
        # the trainer writes the base row only with eval_every (at step 0), the run rows every eval_every / at the end
        for label in ("base", "run"):
            found = frame[frame["label"] == label].sort_values("step", kind="stable")
            row = found.iloc[-1] if not found.empty else pd.Series(dtype=object)
            name = "base" if label == "base" else (f"step {int(row['step'])}" if not found.empty else "last step")
            rows.append({"model": e.label, "row": name, "reward": reward, "held-out reward": _held_out(row, reward),
                         **{title: _fmt(row.get(key)) for key, title in EVAL_COLUMNS.items()}})
    columns = ["model", "row", "reward", "held-out reward", *EVAL_COLUMNS.values()]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------ the handler

def _entries(models) -> list[Entry]:
    labels = list(dict.fromkeys(_as_list(models)))  # the same model twice would draw the same asset twice
    if not labels:
        raise refusal("Choose at least one model to compare (e.g. base).")
    if len(labels) > MAX_MODELS:
        raise refusal(f"{len(labels)} models chosen; compare at most {MAX_MODELS} at a time.")
    try:
        return [catalogue().get(label) for label in labels]
    except ValueError as err:
        raise refusal(str(err)) from err


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")[:48] or "model"


def run_compare(prompt, seed, steps, models, frames=24, request: gr.Request = None, progress=gr.Progress()):
    """Yields the outputs after each model (slots fill in as they are done); the last yield has them all.

    Outputs, in order: 4 x (column, title, turntable mp4, 4-view PNG), the scores table, the PLYs, the
    curves vs step, vs wall time, the evaluation table, a summary."""
    try:
        prompt = validate_prompt(prompt)
    except ValueError as err:
        raise refusal(str(err)) from err
    entries = _entries(models)
    try:
        seed, steps, frames = int(seed), int(steps), int(frames)
    except (TypeError, ValueError) as err:
        raise refusal(f"Seed, steps and frames must be whole numbers ({err}).") from err
    if seed < 0 or not 1 <= steps <= 200 or not 2 <= frames <= 240:
        raise refusal(f"seed {seed}, steps {steps}, frames {frames}: need seed >= 0, 1 <= steps <= 200, 2 <= frames <= 240.")
    rewards = score_rewards()
    out_dir = session_dir(request, "compare")
    curves_step, curves_wall = curve_figures(entries)
    evaluation = eval_table(entries)  # read now: the files only grow, and both are cheap
    slots: list[tuple[str, str, str] | None] = [None] * MAX_MODELS
    scores, plys, seconds, guidance = [], [], [], None
    t0 = time.perf_counter()
    n = len(entries)

    def outputs(final: bool):
        values = []
        for slot in slots:
            shown = slot is not None or (not final and len(values) // 4 < n)  # chosen slots show while they fill in
            title, video, views = slot or (None, None, None)
            values += [gr.update(visible=shown), title, video, views]
        table = pd.DataFrame(scores, columns=["model", *rewards, "sampling s"])
        summary = _summary(prompt, seed, steps, guidance, entries[:len(scores)], seconds, rewards, time.perf_counter() - t0, final)
        return [*values, table, list(plys), curves_step, curves_wall, evaluation, summary]

    for i, entry in enumerate(entries):
        def on_step(k, total, i=i, entry=entry):
            progress((i + 0.6 * k / total) / n, desc=f"{entry.label}: denoising step {k}/{total}")

        progress(i / n, desc=f"{entry.label}: loading" if entry.adapter else f"{entry.label}: sampling")
        try:
            with pool().using(entry) as model:  # the shared base, this entry's adapter switched in (holds the lock)
                result = generate(model, [prompt], [seed], steps=steps, callback=on_step)
                guidance = model.guidance_default
        except (FileNotFoundError, ValueError) as err:
            raise gr.Error(f"{entry.label} could not be loaded: {err}") from err
        g = result.gaussians[0:1]

        def on_frame(done, total, i=i, entry=entry):
            progress((i + 0.6 + 0.3 * done / total) / n, desc=f"{entry.label}: turntable frame {done}/{total}")

        # rendering and files outside the lock: another request can sample meanwhile
        files = write_asset(g, out_dir / f"{i + 1}-{_slug(entry.label)}", frames=frames, progress=on_frame)
        progress((i + 0.9) / n, desc=f"{entry.label}: scoring")
        row = score_asset(g, prompt, rewards)
        ply = files["ply"].rename(out_dir / f"{i + 1}-{_slug(entry.label)}.ply")
        slots[i] = (describe(entry), str(files["turntable"]), str(files["views"]))
        scores.append({"model": entry.label, **{k: round(v, 4) for k, v in row.items()}, "sampling s": round(result.seconds, 2)})
        plys.append(str(ply))
        seconds.append(result.seconds)
        yield outputs(final=i == n - 1)


def _summary(prompt, seed, steps, guidance, done, seconds, rewards, total, final) -> str:
    head = f"**{prompt}** (seed {seed}, {steps} steps, guidance {guidance:g})" if guidance else f"**{prompt}**"
    status = (f"{len(done)} model(s) in {total:.1f} s from one loaded base, adapters switched" if final
              else f"{len(done)} model(s) done ({total:.1f} s)…")
    text = (f"{head}: {status}. Scores: each reward's mean over 4 views (azimuth 45/135/225/315, elevation 15, "
            f"{SCORE_RESOLUTION} px), the same for every model; higher is better for all of them.")
    missing = [n for n in OFFLINE if n not in rewards]
    if missing:
        text += f" Not scored (cannot run here): {', '.join(missing)}."
    if note := prompt_notice(prompt):
        text += f"\n\n⚠️ {note}"
    return text


# ------------------------------------------------------------------------------------------ layout

def build_tab() -> None:
    """Creates the tab's components and events inside the current gr.Tab."""
    tab = gr.context.Context.block  # the enclosing gr.Tab (ui.py opens it): its select refreshes the model list
    gr.Markdown("One prompt and seed through up to 4 models (the base and any LoRAs, switched on one loaded base): "
                "their turntables and 4-view strips side by side, each offline reward scored on the same views, and "
                "below, the chosen runs' reward curves and held-out evaluation.")
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", placeholder="a red chair", max_lines=2)
            with gr.Row():
                models = gr.Dropdown(model_options(), value=[BASE], multiselect=True, max_choices=MAX_MODELS, scale=4,
                                     label=f"Models (up to {MAX_MODELS})", allow_custom_value=True,
                                     info="base; yours (runs made here, Finetune tab), newest first; shipped runs; uploads")
                # allow_custom_value: runs appear while the page is open; the handler checks each name
                refresh = gr.Button("↻", scale=0, min_width=40)
        with gr.Column(scale=1):
            seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
            steps = gr.Slider(4, 50, value=20, step=1, label="Denoising steps")
            frames = gr.Slider(6, 96, value=24, step=6, label="Turntable frames")
            with gr.Row():
                run = gr.Button("Compare", variant="primary")
                stop = gr.Button("Stop", variant="stop")
    info = gr.Markdown()
    slot_outputs = []
    with gr.Row(equal_height=False):
        for i in range(MAX_MODELS):
            with gr.Column(visible=i == 0, min_width=200) as column:
                title = gr.Markdown()
                video = gr.Video(label="Turntable: RGB | normals", autoplay=True, loop=True)
                views = gr.Image(label="4 views", type="filepath")
            slot_outputs += [column, title, video, views]
    scores = gr.Dataframe(label="Offline rewards on the same renders (rows: models)", interactive=False)
    plys = gr.File(label="Splats (PLY)", file_count="multiple", interactive=False)  # downloads only
    with gr.Row():
        curves_step = gr.Plot(label="Reward vs step")
        curves_wall = gr.Plot(label="Reward vs wall time")
    evaluation = gr.Dataframe(label="Held-out evaluation (eval.csv: the base row and the last step)", interactive=False)

    triggers = [refresh.click, models.focus] + ([tab.select] if isinstance(tab, gr.Tab) else [])
    for trigger in triggers:
        trigger(refresh_models, models, models, queue=False, api_visibility="private")
    outputs = [*slot_outputs, scores, plys, curves_step, curves_wall, evaluation, info]
    job = run.click(run_compare, [prompt, seed, steps, models, frames], outputs, api_name="compare", concurrency_limit=1)
    stop.click(None, cancels=[job])
