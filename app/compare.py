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
import imageio.v3 as iio
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from engine.core.cameras import evaluation_views
from engine.generate import generate, model_views, visible, write_asset
from engine.models import lora
from engine.preview import view_strips
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
from .evaluations import (
    EVALUATIONS,
    describe_settings,
    read_result,
    settings,
    status_line,
)
from . import studies
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
    return legible(figures[0]), legible(figures[1])


LEGEND_ROW = 24  # px per legend row above the plot


def legible(fig: go.Figure) -> go.Figure:
    """The legend as a horizontal row above the plot (under the title), so it never covers an axis title;
    the top margin grows with the number of legend rows (about 3 names of 30 characters per row)."""
    names = [t.name for t in fig.data if t.showlegend is not False and t.name]
    rows = max(1, math.ceil(sum(min(len(n), 40) + 6 for n in names) / 110))
    # a panel title (make_subplots' annotation) sits right above the first plot: the legend goes above it
    lift = 24 if any(a.yref == "paper" and (a.y or 0) >= 0.99 for a in fig.layout.annotations) else 0
    top = 60 + LEGEND_ROW * rows + lift
    height = (fig.layout.height or 360) + LEGEND_ROW * (rows - 1) + lift
    bottom = fig.layout.margin.b if fig.layout.margin.b is not None else 40
    plot_height = max(height - top - bottom, 50)
    fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1 + lift / plot_height, "x": 0, "xanchor": "left"},
                      title={"y": 1 - 10 / height, "yanchor": "top"}, margin={"t": top}, height=height)
    return fig


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

MEASURES = {"reward/geometry": "Δ geometry", "reward/alignment": "Δ alignment reward",
            "reward/colorfulness": "Δ colorfulness", "alignment": "Δ alignment (cosine)"}
TRAINED = {"geometry": ("reward/geometry",), "alignment": ("reward/alignment", "alignment"),
           "colorfulness": ("reward/colorfulness",)}  # a reward -> the measures it trains for
Z = 1.96  # the shown interval: Δ ± 1.96·SE, about 95 % over prompts


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


def _float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def trained_measures(reward: str) -> set[str]:
    """The measures a run on ``reward`` (one reward or an ensemble) was trained for."""
    try:
        names = [n for n, _ in parse_ensemble(reward)]
    except ValueError:
        return set()
    return {m for n in names for m in TRAINED.get(n, (f"reward/{n}",))}


def _deltas(row, base=None) -> dict[str, tuple[float, float | None]]:
    """measure -> (Δ, SE) from a row with delta/ columns; else (run - base, None) from a base row."""
    out = {}
    for m in MEASURES:
        d, se = _float(row.get(f"delta/{m}")), _float(row.get(f"delta_se/{m}"))
        if d is None and base is not None and _float(row.get(m)) is not None and _float(base.get(m)) is not None:
            d, se = _float(row.get(m)) - _float(base.get(m)), None
        if d is not None:
            out[m] = (d, se)
    return out


def evaluation_of(entry: Entry) -> dict:
    """What is known of ``entry``'s held-out change from the base: {"source", "deltas", "metrics"}; the studio's
    own evaluation (Evaluate) first, else the run's eval.csv (its last run row; a file without delta columns
    gives the plain difference from its base row, without an interval)."""
    s = settings()
    found = read_result(entry, s)
    if found is not None:
        return {"source": f"Evaluate ({describe_settings(s, short=True)})", "deltas": _deltas(found["run"]), "metrics": found["run"]}
    frame = read_eval(entry.run)
    if frame.empty or "label" not in frame:
        why = "not evaluated yet"
        return {"source": why, "deltas": {}, "metrics": {}}
    runs = frame[frame["label"] == "run"].sort_values("step", kind="stable")
    bases = frame[frame["label"] == "base"]
    if runs.empty:
        return {"source": "not evaluated yet", "deltas": {}, "metrics": {}}
    row = runs.iloc[-1]
    base = bases.iloc[-1] if not bases.empty else None
    deltas = _deltas(row, base)
    where = f"eval.csv (step {int(row['step'])})"
    if deltas and all(se is None for _, se in deltas.values()):
        where += ", no interval"
    elif not deltas:
        where += ", no base row"
    return {"source": where, "deltas": deltas, "metrics": row.to_dict()}


def _cell(d: float, se: float | None) -> str:
    return f"{d:+.3g}" if se is None else f"{d:+.3g} ± {Z * se:.2g}"


def best_of(column: dict[str, tuple[float, float | None]]) -> tuple[str, list[str]]:
    """Who won one measure: ("best", [name]) when the top Δ's interval clears the runner-up's, ("tie", names whose
    intervals reach the top's), ("unknown", [top, runner-up]) when either has no interval, ("", []) with < 2."""
    ranked = sorted(column.items(), key=lambda kv: kv[1][0], reverse=True)
    if len(ranked) < 2:
        return "", []
    (top, (d1, se1)), (runner, (d2, se2)) = ranked[0], ranked[1]
    if se1 is None or se2 is None:
        return "unknown", [top, runner]
    low = d1 - Z * se1
    if low > d2 + Z * se2:
        return "best", [top]
    return "tie", [name for name, (d, se) in ranked if se is not None and d + Z * se >= low]


def forgetting(name: str, reward: str, deltas: dict[str, tuple[float, float | None]]) -> list[str]:
    """Warnings for measures ``name`` was not trained for and lost (forgetting): each whole interval below 0; plain
    drops without an interval in one line, as possible. Also a loss on a measure it was trained for."""
    trained, out, maybe = trained_measures(reward), [], []
    for m, (d, se) in deltas.items():
        what = MEASURES[m].removeprefix("Δ ")
        if m in trained and se is not None and d + Z * se < 0:
            out.append(f"⚠️ {name} lost {what}, which it was trained for: Δ {_cell(d, se)}.")
        if m in trained or d >= 0:
            continue
        if se is not None and d + Z * se < 0:
            out.append(f"⚠️ **Forgetting**: {name} (trained on {reward}) lost {what}: Δ {_cell(d, se)}, the whole interval below 0.")
        elif se is None:
            maybe.append(f"{what} {d:+.3g}")
    if maybe:
        out.append(f"⚠️ Possible forgetting: {name} (trained on {reward}) dropped {', '.join(maybe)} (no interval: "
                   f"press Evaluate to know).")
    return out


def eval_table(entries: list[Entry]) -> tuple[pd.DataFrame, str]:
    """The held-out change of each chosen LoRA from the base, Δ ± 1.96·SE per measure (the base row is 0 by
    definition), the best cell of each column marked ★ where its interval clears the runner-up's ("tie"
    otherwise), then prior preservation; and a verdict in words with the forgetting warnings."""
    adapters = [e for e in entries if e.adapter is not None]
    if not adapters:
        return pd.DataFrame(columns=["model"]), ""
    known = {e.label: (e, (_reward_of(e) if e.run else str(e.info.get("reward") or MISSING)), evaluation_of(e)) for e in adapters}
    columns = {m: {"base": (0.0, 0.0)} | {label: ev["deltas"][m] for label, (_, _, ev) in known.items() if m in ev["deltas"]}
               for m in MEASURES}
    verdicts, lines, warnings = {m: best_of(col) for m, col in columns.items()}, [], []
    rows = [{"model": "base", "trained on": MISSING, "evaluated": "the reference",
             **{title: _mark("0", *verdicts[m], "base") for m, title in MEASURES.items()},
             **{title: MISSING for title in EVAL_COLUMNS.values() if title != "alignment"}}]
    for label, (e, reward, ev) in known.items():
        cells = {title: _mark(_cell(*ev["deltas"][m]), *verdicts[m], label) if m in ev["deltas"] else MISSING
                 for m, title in MEASURES.items()}
        rows.append({"model": label, "trained on": reward, "evaluated": ev["source"], **cells,
                     **{title: _fmt(ev["metrics"].get(key)) for key, title in EVAL_COLUMNS.items() if key != "alignment"}})
        warnings += forgetting(label, reward, ev["deltas"])
    unknown = False
    for m, (kind, names) in verdicts.items():
        what = MEASURES[m].removeprefix("Δ ")
        if kind == "best":
            lines.append(f"★ **{what}**: {names[0]} won, its interval clear of the runner-up's.")
        elif kind == "tie":
            lines.append(f"**{what}**: a tie between {', '.join(names)} (their intervals overlap).")
        unknown |= kind == "unknown"
    if unknown:
        lines.append("Where a leader or its runner-up has no interval (an eval.csv from before the paired deltas), there "
                     "is no verdict: press *Evaluate* for one.")
    head = ("Held-out change from the base: Δ ± 1.96·SE over prompts (paired: same prompts, seeds and noise; higher is "
            "better). ★ marks a column's winner when its interval clears the runner-up's.")
    return pd.DataFrame(rows), "\n\n".join([head, *lines, *warnings])


def _mark(text: str, kind: str, names: list[str], me: str) -> str:
    if me in names and kind == "best":
        return f"★ {text}"
    if me in names and kind == "tie":
        return f"{text} (tie)"
    return text


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


def evaluation_state(models) -> tuple[str, pd.DataFrame, str]:
    """Each chosen LoRA's evaluation state (in line, running, failed, done), the Δ table and its verdict."""
    entries = _entries(models)
    lines = [status_line(e) for e in entries if e.adapter is not None]
    table, verdict = eval_table(entries)
    return "\n".join(f"- {line}" for line in lines) or "Choose a LoRA to evaluate.", table, verdict


def evaluate_models(models):
    """*Evaluate*: queues the held-out evaluation of each chosen LoRA as a server job (one at a time; a LoRA whose
    stored evaluation is of its adapter as it is now is not evaluated again), then streams their state, the Δ
    table and the verdict every second until they end. Closing the page does not stop them."""
    entries = _entries(models)
    adapters = [e for e in entries if e.adapter is not None]
    if not adapters:
        raise refusal("Choose a LoRA to evaluate: the base is what every LoRA is measured against.")
    try:
        jobs = [job for e in adapters if (job := EVALUATIONS.submit(e)) is not None]
    except (OSError, ValueError) as err:
        raise refusal(f"Could not start the evaluation: {err}") from err
    while True:
        live = [j for j in jobs if j.live]
        yield evaluation_state(models)
        if not live:
            break
        time.sleep(1.0)
    for job in jobs:
        if job.state == "failed":
            gr.Warning(f"{job.info['entry'].label}: evaluation failed: {job.reason}")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")[:48] or "model"


def run_compare(prompt, seed, steps, models, frames=24, request: gr.Request = None, progress=gr.Progress()):
    """Yields the outputs after each model (slots fill in as they are done); the last yield has them all.

    Outputs, in order: 4 x (column, title, turntable mp4, 4 views as a 2 x 2 PNG), the scores table, the PLYs,
    the curves vs step, vs wall time, the evaluation table, its verdict, a summary."""
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
    evaluation, verdict = eval_table(entries)  # read now: cheap (a few small files)
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
        return [*values, table, list(plys), curves_step, curves_wall, evaluation, verdict, summary]

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
        slots[i] = (describe(entry), str(files["turntable"]), str(grid_2x2(files["views"])))
        scores.append({"model": entry.label, **{k: round(v, 4) for k, v in row.items()}, "sampling s": round(result.seconds, 2)})
        plys.append(str(ply))
        seconds.append(result.seconds)
        yield outputs(final=i == n - 1)


def grid_2x2(strip: Path) -> Path:
    """The 4-view strip (4 square views in a row) as a 2 x 2 grid beside it: twice as large in a quarter-width
    column."""
    image = iio.imread(strip)
    h = image.shape[0]
    views = [image[:, k * h:(k + 1) * h] for k in range(4)]
    out = Path(strip).with_name("grid-views.png")
    iio.imwrite(out, np.concatenate([np.concatenate(views[:2], 1), np.concatenate(views[2:], 1)], 0))
    return out


def _adapters(models) -> list[str]:
    return [label for label in _as_list(models) if label != BASE]


def scale_choices(models):
    """The α slider's adapter list follows the chosen models (the LoRAs among them)."""
    labels = _adapters(models)
    return gr.update(choices=labels, value=labels[0] if labels else None)


def run_scale(prompt, seed, steps, model, alpha, request: gr.Request = None, progress=gr.Progress()):
    """``model``'s adapter at scale α (0: the base, 1: the adapter as trained) on the prompt and seed: its 4 views
    (2 x 2) and every offline reward on the evaluation views. The shared base's adapter is set back to 1 after."""
    try:
        prompt = validate_prompt(prompt)
    except ValueError as err:
        raise refusal(str(err)) from err
    if not model:
        raise refusal("Choose a LoRA for the scale slider (pick one among the models to compare).")
    if isinstance(model, (list, tuple)):
        model = model[0] if model else None
    try:
        entry = catalogue().get(str(model))
    except ValueError as err:
        raise refusal(str(err)) from err
    if entry.adapter is None:
        raise refusal("The base has no LoRA to scale; choose a LoRA.")
    try:
        seed, steps, alpha = int(seed), int(steps), float(alpha)
    except (TypeError, ValueError) as err:
        raise refusal(f"Seed, steps and α must be numbers ({err}).") from err
    if seed < 0 or not 1 <= steps <= 200 or not 0.0 <= alpha <= 1.0:
        raise refusal(f"seed {seed}, steps {steps}, α {alpha:g}: need seed >= 0, 1 <= steps <= 200, 0 <= α <= 1.")
    progress(0, desc=f"{entry.label} at α = {alpha:g}")
    try:
        with pool().using(entry) as model_:
            name = lora.active_adapter(model_)
            lora.set_adapter_scale(model_, name, alpha)
            try:
                result = generate(model_, [prompt], [seed], steps=steps,
                                  callback=lambda k, n: progress(0.8 * k / n, desc=f"α = {alpha:g}: denoising step {k}/{n}"))
            finally:
                lora.set_adapter_scale(model_, name, 1.0)
    except (FileNotFoundError, ValueError) as err:
        raise gr.Error(f"{entry.label} could not be loaded: {err}") from err
    g = result.gaussians[0:1]
    out = session_dir(request, "compare") / f"scale-{_slug(entry.label)}-{alpha:.2f}"
    out.mkdir(parents=True, exist_ok=True)
    progress(0.85, desc="rendering the views")
    with torch.no_grad():
        rgb, _ = view_strips(render(visible(g), model_views(), 256))
    iio.imwrite(out / "views.png", rgb)
    row = score_asset(g, prompt, score_rewards())
    scores = ", ".join(f"{k} {v:.4g}" for k, v in row.items())
    info = (f"**{entry.label}** at **α = {alpha:g}** (0 = the base, 1 = the adapter as trained) on *{prompt}*, seed {seed}, "
            f"{steps} steps: {scores}.")
    return str(grid_2x2(out / "views.png")), info


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

# The shown turntables (same frames and rate) restarted from frame 0 together once every one can play, so the
# models turn side by side in step; gives up after 20 s.
TURN_TOGETHER = """async () => {
  for (let i = 0; i < 100; i++) {
    const vs = [...document.querySelectorAll('.compare-turntable video')].filter(v => v.offsetParent !== null);
    if (vs.length > 1 && vs.every(v => v.readyState >= 3)) {
      vs.forEach(v => { v.pause(); v.currentTime = 0; });
      await Promise.all(vs.map(v => v.play().catch(() => null)));
      return;
    }
    await new Promise(r => setTimeout(r, 200));
  }
}"""

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
                video = gr.Video(label="Turntable: RGB | normals", autoplay=True, loop=True, elem_classes="compare-turntable")
                views = gr.Image(label="4 views (2 x 2)", type="filepath")
            slot_outputs += [column, title, video, views]
    scores = gr.Dataframe(label="Offline rewards on the same renders (rows: models)", interactive=False)
    plys = gr.File(label="Splats (PLY)", file_count="multiple", interactive=False)  # downloads only
    with gr.Row():
        curves_step = gr.Plot(label="Reward vs step", show_label=False)  # the figure's title says it (a label covers it)
        curves_wall = gr.Plot(label="Reward vs wall time", show_label=False)
    evaluation = gr.Dataframe(label="Held-out change from the base: Δ ± 1.96·SE over prompts (★ a column's clear winner)",
                              interactive=False, wrap=True, elem_id="compare-evaluation",
                              column_widths=["15%", "9%", "12%", *["9%"] * 4, *["6.5%"] * 4])
    verdict = gr.Markdown(elem_id="compare-verdict")
    with gr.Row():
        evaluate = gr.Button("Evaluate the chosen LoRAs (held-out)", scale=0, min_width=260, elem_id="compare-evaluate")
        eval_status = gr.Markdown(elem_id="compare-eval-status")
    gr.Markdown("*Evaluate* runs the held-out evaluation of each chosen LoRA as a server job (one at a time, after "
                f"any finetune): {describe_settings(settings())}, paired with the base's samples. The result is "
                "kept beside the run; an unchanged adapter is not evaluated again.")
    with gr.Accordion("LoRA scale: one adapter from the base (α = 0) to as trained (α = 1)", open=True):
        with gr.Row():
            with gr.Column(scale=1):
                scale_model = gr.Dropdown([], label="LoRA to scale", info="one of the chosen models",
                                          allow_custom_value=True, elem_id="compare-scale-model")
                alpha = gr.Slider(0, 1, value=1, step=0.05, label="LoRA scale α", elem_id="compare-alpha")
                scale_run = gr.Button("Render at α")
            with gr.Column(scale=2):
                scale_views = gr.Image(label="4 views at α", type="filepath", height=360, elem_id="compare-scale-views")
                scale_info = gr.Markdown(elem_id="compare-scale-info")

    with gr.Accordion("Shipped studies: held-out gain against forgetting", open=False):
        names = studies.study_names()
        with gr.Row():
            study = gr.Dropdown(names, value=names[0] if names else None, label="Study", elem_id="compare-study",
                                info="checkpoints/runs/: each reward's comparison of the methods")
            axis = gr.Dropdown([(title, col) for col, title in studies.AXES.items()], value="kid_vs_base",
                               label="Forgetting measure (x axis)")
        front = gr.Plot(show_label=False, elem_id="compare-front")
        study_info = gr.Markdown()
        study_table = gr.Dataframe(interactive=False, label="The study's rows (fronts: one per method and LoRA scale α)")
        with gr.Row():
            study_method = gr.Dropdown([], label="Run", allow_custom_value=True,
                                       info="a method (its first seed), or method/seed<k> where every seed's adapter ships")
            put = gr.Button("Put its run beside the base", scale=0, min_width=220)

    triggers = [refresh.click, models.focus] + ([tab.select] if isinstance(tab, gr.Tab) else [])
    for trigger in triggers:
        trigger(refresh_models, models, models, queue=False, api_visibility="private")
    models.change(scale_choices, models, scale_model, queue=False, api_visibility="private")
    study_outputs = [front, study_table, study_info, study_method]
    for trigger in (study.change, axis.change) + ((tab.select,) if isinstance(tab, gr.Tab) else ()):
        trigger(studies.view, [study, axis], study_outputs, queue=False, api_visibility="private")
    put.click(studies.beside_base, [study, study_method], models, queue=False, api_name="study_beside_base")
    outputs = [*slot_outputs, scores, plys, curves_step, curves_wall, evaluation, verdict, info]
    job = run.click(run_compare, [prompt, seed, steps, models, frames], outputs, api_name="compare", concurrency_limit=1)
    job.then(None, js=TURN_TOGETHER)  # in the browser only: the turntables restart together once all are loaded
    stop.click(None, cancels=[job])
    evaluate.click(evaluate_models, models, [eval_status, evaluation, verdict], api_name="evaluate", concurrency_limit=None)
    scale_inputs = [prompt, seed, steps, scale_model, alpha]
    # one line for both (a release while a render runs waits, and only the last one waiting runs)
    scale_run.click(run_scale, scale_inputs, [scale_views, scale_info], api_name="lora_scale", concurrency_limit=1,
                    concurrency_id="compare-lora-scale")
    alpha.release(run_scale, scale_inputs, [scale_views, scale_info], api_visibility="private", concurrency_limit=1,
                  concurrency_id="compare-lora-scale", trigger_mode="always_last")
