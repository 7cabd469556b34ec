"""Finetune tab: train a LoRA on the tiny base with any registered method and reward, live.

One finetune at a time per server: the event runs with ``concurrency_limit=1`` (gradio's queue shows the
people waiting their position), and the board's slot (app/jobs.py) guards the trainer itself. Each job trains its own freshly
loaded base, so generation (the catalogue's shared Pool model) stays usable meanwhile. The trainer runs in
a thread of its own and the event's generator only watches it: if the page closes mid-run the generator is
dropped, asks the trainer to stop, and the thread still ends the step, saves the run folder and frees the
lock. The run folder is ``catalogue().runs_dir / <date>-<method>-<reward>``; its adapter shows up in the
Generate and Compare lists as ``run: <name>`` as soon as it is written (the catalogue rescans each call).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.align.config import RunConfig
from engine.align.knobs import KnobField, knob_fields, scaled_default
from engine.align.methods import METHODS
from engine.align.trainer import Trainer
from engine.generate import load_model
from engine.prompts import TRAIN_PROMPTS, read_prompts, validate_prompt
from engine.rewards import list_rewards, reward_span

from .catalogue import catalogue, zip_adapter
from .curves import read_metrics, read_run_config, reward_figure
from .jobs import Job, JobBoard
from .sessions import session_dir

BUILTIN = "built-in training set"
OWN = "my own list"
MAX_PROMPTS = 500
MAX_STEPS = 1000

# Studio defaults, chosen so a CPU run shows its first curve point within ~30 s (RunConfig's defaults,
# batch 4 x 20 sampler steps at 128 px, take tens of seconds per step here): batch 2 and 10 sampler steps
# halve the rollout twice, 64 px renders quarter the reward's cost. The price: a noisier curve (2 prompts a
# step) and samples of a coarser sampler than generation's 20 steps. Samples every 5 steps cost one
# 4-prompt sampling each. Set RunConfig's values in "Run settings" for runs comparable to the shipped ones.
# Method, reward and lr: the quickest climb measured here. On base v2 with these defaults (colorfulness, seed 0,
# 10 steps), ReFL went 43 -> 110; Nabla-R2D3 with its reward-scaled beta (below) climbed as much (43 -> 111)
# but took 2.6x as long (94 s vs 36 s, cores busy): it takes its reward gradient at every trained transition.
# On geometry at lr 1e-4 no method moved visibly within 12 steps. Nabla-R2D3 is one click away in the list.
DEFAULTS = {"method": "refl", "reward": "colorfulness", "steps": 30, "seed": 0, "lr": 1e-3, "batch_size": 2,
            "sampler_steps": 10, "render_resolution": 64, "sample_every": 5}
SMOOTH = 5  # steps in the moving average drawn over the live curve (a 2-prompt batch is noisy)
SAMPLES_HEIGHT = 560  # px: the before | now image (about square), scaled down to fit


# ------------------------------------------------------------------------------------ method knobs

def title(method: str) -> str:
    cls = METHODS.get(method)
    return cls.title if cls else method


def method_knobs() -> dict[str, list[KnobField]]:
    """Method name -> its knobs, as each method declares them (read at each call: methods may be registered later)."""
    return {name: knob_fields(cls.config, cls.config_field) for name, cls in METHODS.items()}


def param(knob: KnobField) -> str:
    """The API parameter of a knob, e.g. nabla_beta."""
    return f"{knob.group}_{knob.name}"


def reward_default(knob: KnobField, reward: str) -> float | None:
    """A knob declared per unit of the reward's range (Nabla-R2D3's β) for this reward; None when unknown."""
    try:
        return scaled_default(knob, reward_span(reward))
    except (KeyError, ValueError):
        return None


def _knob_component(knob: KnobField, reward: str):
    info = knob.meta.help or None
    if knob.meta.per_reward_range is not None:  # follows the chosen reward
        return gr.Number(value=reward_default(knob, reward), label=knob.title, info=info)
    if knob.type is bool:
        return gr.Checkbox(value=knob.default, label=knob.title, info=info)
    if knob.meta.choices:
        return gr.Dropdown(list(knob.meta.choices), value=knob.default, label=knob.title, info=info)
    if knob.type is int:
        return gr.Number(value=knob.default, precision=0, label=knob.title, info=info)
    if knob.type is float:
        return gr.Number(value=knob.default, label=knob.title, info=info)
    return gr.Textbox(value=str(knob.default), label=knob.title, info=info, max_lines=1)


# ------------------------------------------------------------------------------------ rewards, config

def reward_status() -> tuple[list[str], list[tuple[str, str]]]:
    """(rewards that can run here, [(reward, why not) for the others]); read each call (weights may appear)."""
    infos = list_rewards()
    return [i.name for i in infos if i.available], [(i.name, i.detail) for i in infos if not i.available]


def _unavailable_note() -> str:
    _, missing = reward_status()
    if not missing:
        return ""
    return "Unavailable here: " + "; ".join(f"**{n}** ({why})" for n, why in missing)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def new_run_dir(method: str, reward: str) -> Path:
    """A readable, unique run folder under the server's runs dir."""
    root = catalogue().runs_dir
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(method)}-{_slug(reward)}"
    out, n = root / base, 2
    while out.exists():
        out, n = root / f"{base}-{n}", n + 1
    return out


def parse_prompts(text: str | None) -> list[str]:
    """The user's list: one prompt per line, blank lines and # comments skipped, each validated."""
    lines = [ln.strip() for ln in (text or "").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError("The prompt list is empty: write one prompt per line, or choose the built-in training set.")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"The prompt list has {len(prompts)} prompts; at most {MAX_PROMPTS} are taken.")
    out = []
    for i, p in enumerate(prompts, 1):
        try:
            out.append(validate_prompt(p))
        except ValueError as err:
            raise ValueError(f"Prompt {i} ({p[:40]!r}): {err}") from None
    return out


def _number(value, label: str, kind=float):
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{label} is empty: enter a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} = {value!r}: not a number.") from None
    if kind is int:
        if not number.is_integer():
            raise ValueError(f"{label} = {value!r}: must be a whole number.")
        return int(number)
    return number


def build_config(values: dict, prompts_file: Path | None) -> RunConfig:
    """The handler's inputs -> a validated RunConfig (ValueError with value, reason and fix)."""
    method = values["method"]
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: unknown method; choose one of {', '.join(METHODS)}.")
    reward = values["reward"]
    available, missing = reward_status()
    if reward not in available:
        why = dict(missing).get(reward)
        raise ValueError(f"reward = {reward!r}: " + (f"cannot run here: {why}." if why else
                                                    f"unknown reward; choose one of {', '.join(available)}."))
    steps = _number(values["steps"], "steps", int)
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps = {steps}: must be in [1, {MAX_STEPS}] in the studio; longer runs: python -m engine.align.")
    cfg = RunConfig(method=method, reward=reward, steps=steps, seed=_number(values["seed"], "seed", int),
                    lr=_number(values["lr"], "learning rate"), batch_size=_number(values["batch_size"], "batch_size", int),
                    sampler_steps=_number(values["sampler_steps"], "sampler_steps", int),
                    render_resolution=_number(values["render_resolution"], "render_resolution", int),
                    sample_every=_number(values["sample_every"], "sample_every", int),
                    prompts=str(prompts_file) if prompts_file else None, model="tiny")
    # the chosen method's knobs only (the others keep their defaults, as config.json records them)
    overrides = []
    for knob in method_knobs()[method]:
        value = values.get(param(knob), knob.default)
        if value is None or (isinstance(value, str) and not value.strip()):
            if knob.meta.per_reward_range is not None:
                continue  # not given: RunConfig.validate() sets it from the reward's range
            raise ValueError(f"{knob.dotted} is empty; its default is {knob.default!r}.")
        if knob.type is bool:
            value = bool(value)
        elif knob.type in (int, float):
            value = _number(value, knob.dotted, knob.type)
        overrides.append(f"{knob.dotted}={value}")
    try:
        cfg = cfg.apply_overrides(overrides)
    except ValueError as err:
        raise ValueError(str(err).replace("--set ", "")) from None
    return cfg.validate()


# ------------------------------------------------------------------------------------ the running job

JOBS = JobBoard("finetune", one_at_a_time=True)  # a job's info: trainer, out, steps, step, reward


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def _train(job: Job) -> None:
    """The training thread: every step into the job's events (run() saves checkpoint + adapter on the way out)."""
    for metrics in job.info["trainer"].run():
        job.info.update(step=metrics["step"], reward=metrics["reward_mean"])
        job.put("step", metrics)


def note_waiting(request: gr.Request = None):
    """Runs (unqueued) beside each Start click, so Stop can also withdraw a job still in the line."""
    JOBS.note_waiting(_session(request))


def stop_finetune(request: gr.Request = None) -> str:
    """Ends this session's finetune after its current step (the run folder is saved and resumable)."""
    mine, withdrew = JOBS.stop(_session(request))
    if mine:
        job = mine[0]
        return f"Stopping after step {job.info['step'] + 1}/{job.info['steps']}; the run is being saved to `{job.info['out']}`."
    if withdrew:
        return "Your finetune was still waiting in line; it is withdrawn."
    return "No finetune of yours is running." + (" (Another session's is: only it can stop it.)" if JOBS.current() else "")


def server_status() -> str:
    """One line about the server's finetune, for the people waiting."""
    job = JOBS.current()
    if job is None:
        return "No finetune is running on this server."
    cfg = job.info["trainer"].config
    return (f"A finetune is running on this server: {title(cfg.method)} on {cfg.reward}, "
            f"step {job.info['step']}/{job.info['steps']}, started {time.strftime('%H:%M', time.localtime(job.started))}. "
            "Others wait in line (one at a time).")


# ------------------------------------------------------------------------------------ live views

def shipped_curves(reward: str) -> list[tuple[str, pd.DataFrame, bool]]:
    """The shipped runs of ``reward``, one dashed curve per method."""
    out = []
    for entry in catalogue().runs():
        if entry.kind != "shipped" or read_run_config(entry.run).get("reward") != reward:
            continue
        method = read_run_config(entry.run).get("method", entry.run.name)
        out.append((f"shipped: {title(method)}", read_metrics(entry.run), True))
    return out


def live_figure(frame: pd.DataFrame, cfg: RunConfig, shipped: list) -> go.Figure:
    """This run's curve (solid, with a moving average) beside the shipped runs of its reward (dashed) and the
    base level: the reward of step 1, whose rollout the base made (the adapter starts as a no-op)."""
    base = float(frame["reward_mean"].iloc[0]) if len(frame) else None
    label = f"this run ({title(cfg.method)})"
    fig = reward_figure([(label, frame, False), *shipped], base_level=base, reward=cfg.reward,
                        title=f"Reward ({cfg.reward}, mean over the batch of {cfg.batch_size})")
    if len(frame) >= 3:
        trend = frame["reward_mean"].rolling(SMOOTH, min_periods=1).mean()
        fig.add_trace(go.Scatter(x=frame["step"], y=trend, name=f"this run, mean of {SMOOTH} steps", mode="lines",
                                 line={"color": "#212529", "width": 1.5}))
    fig.update_xaxes(range=[0, max(cfg.steps, int(frame["step"].max()) if len(frame) else 0) + 0.5])
    return fig


def before_now(run: Path, out_dir: Path) -> str | None:
    """samples/step_0000.png beside the latest strip (4 fixed prompts, seeds 0-3), as one image."""
    import imageio.v3 as iio

    strips = sorted((run / "samples").glob("step_[0-9][0-9][0-9][0-9].png"))
    if not strips or not out_dir.is_dir():  # no samples yet; or the page was closed and its session folder removed
        return None
    first, last = iio.imread(strips[0]), iio.imread(strips[-1])
    gap = np.full((first.shape[0], 8, first.shape[2]), 255, dtype=first.dtype)
    path = out_dir / f"before_now_{strips[-1].stem}.png"
    if not path.exists():
        iio.imwrite(path, np.concatenate([first, gap, last], axis=1))
    return str(path)


def _fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def metrics_table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame.round(5) if len(frame) else pd.DataFrame(columns=["step", "wall_seconds", "reward_mean", "loss"])


# ------------------------------------------------------------------------------------ the handler

FIXED_PARAMS = ["method", "reward", "steps", "prompt_source", "prompts", "seed", "lr", "batch_size", "sampler_steps",
                "render_resolution", "sample_every"]


def _finetune(values: dict, request: gr.Request | None, progress):
    session = _session(request)
    if not JOBS.take_turn(session):
        yield "Withdrawn before it started (Stop).", gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    work = session_dir(request, "finetune")
    try:
        prompts_file = None
        if values["prompt_source"] == OWN:
            own = parse_prompts(values["prompts"])
        elif values["prompt_source"] not in (BUILTIN, None):
            raise ValueError(f"prompt_source = {values['prompt_source']!r}: choose {BUILTIN!r} or {OWN!r}.")
        cfg = build_config(values, None)
    except ValueError as err:
        raise gr.Error(str(err)) from err

    # the previous job's thread may still be saving after its page closed: wait for it, not fail
    while not JOBS.wait_for_slot(timeout=1.0):
        yield "Waiting for the previous finetune to save its run folder…", gr.skip(), gr.skip(), gr.skip(), gr.skip()
    started = False
    try:
        out = new_run_dir(cfg.method, cfg.reward)
        if values["prompt_source"] == OWN:
            # kept beside the runs (not in the session's temp folder) so config.json still points at it on --resume
            prompts_file = out.parent / ".prompts" / f"{out.name}.txt"
            prompts_file.parent.mkdir(parents=True, exist_ok=True)
            prompts_file.write_text("\n".join(own) + "\n", encoding="utf-8")
            cfg = dataclasses.replace(cfg, prompts=str(prompts_file))
        progress(0, desc="Loading the base model")
        try:
            # its own fresh base: the shared Pool model keeps serving generation meanwhile
            trainer = Trainer(cfg, out, model=load_model("tiny"))
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from err
        job = Job(out.name, session, on_stop=trainer.request_stop,
                  info={"trainer": trainer, "out": out, "steps": cfg.steps, "step": 0, "reward": None})
        JOBS.start(job, _train)
        started = True  # from here the job's thread holds the slot
    finally:
        if not started:
            JOBS.release_slot()

    rows: list[dict] = []
    shipped = shipped_curves(cfg.reward)
    table = metrics_table(rows)
    head = f"Run `{out.name}`: {title(cfg.method)} on **{cfg.reward}**, {cfg.steps} steps."
    first = "Drawing the 'before' samples of 4 fixed prompts, then step 1…" if cfg.sample_every else "Step 1 running…"
    progress((0, cfg.steps), desc=first, unit="steps")
    yield f"{head}\n\n{first}", live_figure(metrics_table(rows), cfg, shipped), None, table, None
    finished = False
    try:
        for kind, item in job.follow():
            if kind == "error":
                raise gr.Error(f"The run stopped: {item}. What was saved is in {out}.")
            if kind == "done":
                finished = True
                break
            rows.append(item)
            i, n = int(item["step"]), cfg.steps
            per_step = item["wall_seconds"] / i
            left = per_step * (n - i)
            frame = metrics_table(rows)
            base = rows[0]["reward_mean"]
            progress((i, n), desc=f"Step {i}/{n}, about {_fmt_seconds(left)} left", unit="steps")
            status = (f"{head}\n\n**Step {i}/{n}** · reward {item['reward_mean']:.4f} (step 1: {base:.4f}, "
                      f"{item['reward_mean'] - base:+.4f}) · loss {item['loss']:.4g} · {per_step:.1f} s/step · "
                      f"about {_fmt_seconds(left)} left")
            yield status, live_figure(frame, cfg, shipped), before_now(out, work), frame, gr.skip()
    finally:
        if not finished and job.thread.is_alive():
            job.request_stop()  # the page went away: end after this step, the thread saves the run
    job.thread.join()
    entry = catalogue().get(f"run: {out.name}")
    zipped = str(zip_adapter(entry, work))
    done = trainer.step
    how = "finished" if done >= cfg.steps else f"stopped at step {done}/{cfg.steps}"
    frame = metrics_table(rows)
    trend = ""
    if len(rows) > 1:
        trend = f" Reward {rows[0]['reward_mean']:.4f} at step 1 → {rows[-1]['reward_mean']:.4f} at step {done}."
    status = (f"{head}\n\n**Run {how}.**{trend} Saved to `{out}` (config.json, metrics.csv, adapter/, samples/, "
              f"checkpoint/). The adapter is **{entry.label}** in the Generate and Compare lists; the zip is below. "
              + (f"Continue it: `python -m engine.align --config {out}/config.json --out {out} --resume`."
                 if done < cfg.steps else ""))
    progress(None)
    yield status, live_figure(frame, cfg, shipped), before_now(out, work), frame, zipped


def _signature() -> inspect.Signature:
    P = inspect.Parameter
    fixed = {"method": DEFAULTS["method"], "reward": DEFAULTS["reward"], "steps": DEFAULTS["steps"],
             "prompt_source": BUILTIN, "prompts": None, "seed": DEFAULTS["seed"], "lr": DEFAULTS["lr"],
             "batch_size": DEFAULTS["batch_size"], "sampler_steps": DEFAULTS["sampler_steps"],
             "render_resolution": DEFAULTS["render_resolution"], "sample_every": DEFAULTS["sample_every"]}
    params = [P(name, P.POSITIONAL_OR_KEYWORD, default=fixed[name]) for name in FIXED_PARAMS]
    params += [P(param(k), P.POSITIONAL_OR_KEYWORD, default=None if k.default is None else k.default)
               for knobs in method_knobs().values() for k in knobs]
    params += [P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
               P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
    return inspect.Signature(params)


def run_finetune(*args, **kwargs):
    """Streams the run: (status, reward figure, before|now samples, per-step metrics table, adapter zip).
    Parameters by name for scripts: the fixed ones, then every method's knobs as <group>_<knob> (e.g.
    nabla_beta, draft_k, ddpo_clip_range); only the chosen method's are used. A knob declared per unit of the
    reward's range (nabla_beta) left out follows the reward."""
    bound = run_finetune.__signature__.bind(*args, **kwargs)
    bound.apply_defaults()
    values = dict(bound.arguments)
    request, progress = values.pop("request"), values.pop("progress")
    yield from _finetune(values, request, progress)


# gradio reads the parameter names (the API's) and the special ones (request, progress) from these; build_tab
# renews the signature, so a method registered before the studio is built has its knobs in the API
run_finetune.__signature__ = _signature()
run_finetune.__annotations__ = {"request": gr.Request}


def on_method_change(method: str, batch_size):
    """Shows the chosen method's knobs only; group methods need batch_size a multiple of their group."""
    group = getattr(METHODS[method].config(), "group_size", 1) if method in METHODS else 1
    size = int(batch_size or 1)
    fixed = size if size % group == 0 else group * max(1, math.ceil(size / group))
    return [gr.update(visible=(m == method)) for m in METHODS] + [gr.update(value=fixed)]


def on_reward_change(reward: str):
    """Knobs declared per unit of the reward's range follow the reward (a reward that cannot run keeps the value)."""
    updates = []
    for knob in _reward_scaled_knobs():
        value = reward_default(knob, reward)
        updates.append(gr.update() if value is None else gr.update(value=value))
    return updates


def _on_reward_change_page(reward: str):
    """on_reward_change for the page: gradio takes a single output's return value as that output's value, so
    one update goes alone and several as a list."""
    updates = on_reward_change(reward)
    return updates[0] if len(updates) == 1 else updates


def _reward_scaled_knobs() -> list[KnobField]:
    return [k for knobs in method_knobs().values() for k in knobs if k.meta.per_reward_range is not None]


def on_prompt_source(source: str):
    return gr.update(visible=source == OWN)


# ------------------------------------------------------------------------------------ layout

def build_tab() -> None:
    """Creates the tab's components and events inside the current gr.Tab."""
    run_finetune.__signature__ = _signature()  # every method registered by now
    available, _ = reward_status()
    with gr.Row():
        with gr.Column(scale=1):
            method = gr.Dropdown([(title(m), m) for m in METHODS], value=DEFAULTS["method"], label="Method")
            reward = gr.Dropdown(available, value=DEFAULTS["reward"] if DEFAULTS["reward"] in available else available[0],
                                 label="Reward", info="rewards that can run on this server",
                                 allow_custom_value=True)  # so a script naming another gets the reason it cannot run
            gr.Markdown(_unavailable_note())
            steps = gr.Slider(1, 200, value=DEFAULTS["steps"], step=1, label="Steps (optimiser steps)")
            prompt_source = gr.Radio([BUILTIN, OWN], value=BUILTIN, label="Training prompts",
                                     info=f"built-in: {len(read_prompts(TRAIN_PROMPTS))} prompts of the tiny model's world")
            prompts = gr.Textbox("", label="Your prompts, one per line", lines=5, visible=False,
                                 placeholder="a red chair\na blue car with yellow wheels")
            with gr.Row():
                seed = gr.Number(value=DEFAULTS["seed"], precision=0, label="Seed")
                lr = gr.Number(value=DEFAULTS["lr"], label="Learning rate", info="1e-3 for this quick demo; the engine's default is 1e-4")
            with gr.Accordion("Run settings (cost per step)", open=False):
                gr.Markdown("Studio defaults favour a quick first point on a CPU; RunConfig's are batch 4, "
                            "20 sampler steps, 128 px, samples every 10 steps.")
                batch_size = gr.Slider(1, 16, value=DEFAULTS["batch_size"], step=1, label="Batch size (trajectories per step)")
                sampler_steps = gr.Slider(4, 50, value=DEFAULTS["sampler_steps"], step=1, label="Sampler steps")
                render_resolution = gr.Slider(32, 256, value=DEFAULTS["render_resolution"], step=32, label="Reward render resolution (px)")
                sample_every = gr.Slider(0, 50, value=DEFAULTS["sample_every"], step=1, label="Samples every N steps (0 = off)")
            knob_inputs, groups, scaled = [], [], []
            for name, knobs in method_knobs().items():
                with gr.Accordion(f"{title(name)} settings", open=True, visible=(name == DEFAULTS["method"])) as box:
                    doc = (METHODS[name].config.__doc__ or "").strip()
                    if doc:
                        gr.Markdown(doc.splitlines()[0])
                    for knob in knobs:
                        knob_inputs.append(_knob_component(knob, reward.value))
                        if knob.meta.per_reward_range is not None:
                            scaled.append(knob_inputs[-1])
                groups.append(box)
            with gr.Row():
                start = gr.Button("Start", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            stop_info = gr.Markdown()
            server = gr.Markdown(server_status())
        with gr.Column(scale=2):
            status = gr.Markdown("Choose the settings and press Start.")
            plot = gr.Plot(label="Reward per step")
            # an explicit height: gradio's <img> loads lazily and has no size of its own until it has loaded, so
            # while it was out of view (Start sits far below it when a method has many knobs) its frame was 0 px
            samples = gr.Image(label="Fixed prompts, seeds 0-3: before (left) vs now (right), RGB over normals",
                               type="filepath", height=SAMPLES_HEIGHT)
            table = gr.Dataframe(label="Metrics per step", interactive=False, wrap=False, max_height=300)
            zipped = gr.File(label="Adapter (.zip): upload it elsewhere, or load with engine.models.lora")
    inputs = [method, reward, steps, prompt_source, prompts, seed, lr, batch_size, sampler_steps, render_resolution,
              sample_every, *knob_inputs]
    method.change(on_method_change, [method, batch_size], [*groups, batch_size], queue=False, api_visibility="private")
    if scaled:
        reward.change(_on_reward_change_page, reward, scaled, queue=False, api_visibility="private")
    prompt_source.change(on_prompt_source, prompt_source, prompts, queue=False, api_visibility="private")
    start.click(note_waiting, None, None, queue=False, api_visibility="private")
    start.click(run_finetune, inputs, [status, plot, samples, table, zipped], api_name="finetune",
                concurrency_limit=1, concurrency_id="finetune")
    stop.click(stop_finetune, None, stop_info, queue=False, api_name="stop_finetune")
    # the people in line see who is training and how far it is
    timer = gr.Timer(5)
    timer.tick(server_status, None, server, queue=False, api_visibility="private")
