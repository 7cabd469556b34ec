"""Finetune tab: train a LoRA on the tiny base with any registered method and reward, live.

A finetune is a job of the server (app/finetunes.py: one line, one run training at a time, each on its own
freshly loaded base so generation keeps serving); the page follows the run it shows by reading the run folder
every 2 s. This module holds the form (named presets from app/presets.py fill it; the method's knobs come from
the methods' declarations), its checks and the /finetune, /follow, /stop, /resume, /finetune_config endpoints;
the view of a run is its status line (app/run_status.py), the two-panel plot (app/curves.py: the smoothed
training reward over the held-out change from the base, app/heldout.py), the before | now strip and the metrics;
the runs list and the shown run's files are app/runs_list.py. The run folder is
``catalogue().runs_dir / <date>-<method>-<reward>``; its adapter shows up in the Generate and Compare lists as
soon as it is written (the catalogue rescans each call).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
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
from engine.align.run_folder import RunFolder
from engine.core.io import atomic_write_text
from engine.prompts import TRAIN_PROMPTS, read_prompts, validate_prompt
from engine.rewards import list_rewards, parse_ensemble, reward_span

from . import heldout, presets
from .catalogue import catalogue, zip_adapter
from .curves import live_figure, read_metrics, read_run_config
from .finetunes import FINETUNES, QUEUE, job_status, read_status
from .jobs import LIVE
from .run_status import heldout_size, status_line
from .runs_list import RunsList, delete_run, files_of, jobs_table, run_folder  # noqa: F401 (the tab's API, tests)
from .sessions import refusal, session_dir

BUILTIN = "built-in training set"
OWN = "my own list"
MAX_PROMPTS = 500
MAX_STEPS = 1000

# Studio defaults: the first preset (app/presets.py), Nabla-R2D3 on alignment, chosen by measurement (below).
# Run settings are small for a CPU (RunConfig's batch 4 x 20 sampler steps at 128 px take tens of seconds per
# step here): batch 2 and 10 sampler steps halve the rollout twice, 64 px renders quarter the reward's cost. The
# price: a noisy training curve (2 prompts a step), hence the held-out check every 5 steps: 4 prompts x 2 seeds the
# run does not train on, paired with the base (same noise), drawn with its 95% interval.
# Measured (README, Finetune tab: the table), the 2 cores shared with other jobs (load 5-9):
#   python -m engine.align --method nabla-r2d3 --reward alignment --steps 10 --out outputs/demo --prompts train_hard.txt \
#     --set lr=1e-3 batch_size=2 sampler_steps=10 render_resolution=64 sample_every=0 checkpoint_every=0 \
#           eval_every=5 eval_seeds=2 eval_prompts=held_hard.txt seed=0
#   (train_hard.txt / held_hard.txt: presets.HARD_TRAIN / presets.HARD_HELD_OUT, one per line)
# held-out alignment vs the base, delta [95% interval]: step 5 +0.0645 [-0.028, +0.157], step 10 +0.0974
# [+0.026, +0.169] (a gain; 0.537 -> 0.634), geometry -0.067; 559 s of training steps for 10 (~56 s/step here).
# seed=1: step 10 +0.0712 [-0.001, +0.144] (not a gain, by 0.001); lr=2e-3 (8 held-out prompts x 1 seed): -0.008
# [-0.081, +0.064]; nabla.beta=1e8 moved as 5e7 did (+0.0358 vs +0.0350 at step 5: AdamW normalises the scale).
# ReFL on colorfulness (the second preset): step 10 +25.4 [+4.7, +46.1] colorfulness, alignment -0.175: hacked.
# Through the API (/finetune with no settings, /follow to the end): the same rows, "+0.0974 ... [+0.026, +0.169]:
# a gain", 905 s wall at load 8-10 (680 s of training steps); on the idle machine the CLI run took 47 s wall (26 s training).
DEFAULTS = {k: v for k, v in presets.PRESETS[presets.DEMO].items() if k not in ("prompt_source", "prompts", "heldout_prompts", "nabla_beta")}
DEFAULT_PROMPT_SOURCE = presets.PRESETS[presets.DEMO]["prompt_source"]
DEFAULT_PROMPTS = presets.PRESETS[presets.DEMO]["prompts"]
DEFAULT_HELDOUT = presets.PRESETS[presets.DEMO]["heldout_prompts"]
SMOOTHING = 0.6  # the EMA drawn over the training reward, by default (the page has a slider)
SAMPLES_HEIGHT = 560  # px: the before | now image (about square), scaled down to fit
MAX_HELDOUT = 24  # held-out prompts (x seeds) sampled at each check: a few seconds each on a CPU


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


def readable(value) -> str:
    """A number as people write it: 5e7 (not 50000000), 2.73e5, 0.001, 1000; "" for None."""
    if value is None:
        return ""
    text = f"{float(value):.4g}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], text)


def _knob_component(knob: KnobField, reward: str):
    info = knob.meta.note or None  # the help, and when the knob acts at all (λ: only with lag)
    if knob.meta.per_reward_range is not None:  # follows the chosen reward; a text box shows 5e7, not 50000000
        return gr.Textbox(value=readable(reward_default(knob, reward)), label=knob.title, info=info, max_lines=1)
    if knob.type is bool:
        return gr.Checkbox(value=knob.default, label=knob.title, info=info)
    if knob.meta.choices:
        return gr.Dropdown(list(knob.meta.choices), value=knob.default, label=knob.title, info=info)
    if knob.type is int:
        return gr.Number(value=knob.default, precision=0, label=knob.title, info=info)
    if knob.type is float:
        return gr.Textbox(value=readable(knob.default), label=knob.title, info=info, max_lines=1)
    return gr.Textbox(value=str(knob.default), label=knob.title, info=info, max_lines=1)


# ------------------------------------------------------------------------------------ rewards, config

def reward_status() -> tuple[list[str], list[tuple[str, str]]]:
    """(rewards that can run here, [(reward, why not) for the others]); read each call (weights may appear)."""
    infos = list_rewards()
    return [i.name for i in infos if i.available], [(i.name, i.detail) for i in infos if not i.available]


def _unavailable_note() -> str:
    """The rewards that cannot run here, folded: one line, the reasons behind a details toggle."""
    _, missing = reward_status()
    if not missing:
        return ""
    reasons = "".join(f"<li><b>{n}</b>: {why}</li>" for n, why in missing)
    return (f"<details><summary>{len(missing)} more rewards need weights or packages this server lacks: "
            f"{', '.join(n for n, _ in missing)}</summary><ul>{reasons}</ul></details>")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def new_run_dir(method: str, reward: str) -> Path:
    """A readable, unique run folder under the server's runs dir (not one a queued run will take either)."""
    root = catalogue().runs_dir
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(method)}-{_slug(reward)}"
    out, n = root / base, 2
    while out.exists() or QUEUE.get(out.name) is not None:
        out, n = root / f"{base}-{n}", n + 1
    return out


def parse_prompts(text: str | None, what: str = "prompt list", most: int = MAX_PROMPTS,
                  empty: str = "or choose the built-in training set") -> list[str]:
    """The user's list: one prompt per line, blank lines and # comments skipped, each validated."""
    lines = [ln.strip() for ln in (text or "").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError(f"The {what} is empty: write one prompt per line, {empty}.")
    if len(prompts) > most:
        raise ValueError(f"The {what} has {len(prompts)} prompts; at most {most} are taken.")
    out = []
    for i, p in enumerate(prompts, 1):
        try:
            out.append(validate_prompt(p))
        except ValueError as err:
            raise ValueError(f"Prompt {i} of the {what} ({p[:40]!r}): {err}") from None
    return out


def heldout_prompts(text: str | None, training: list[str]) -> list[str]:
    """The held-out check's prompts: the user's list, none of them a training prompt (the check would then
    measure memory, not generalisation)."""
    held = parse_prompts(text, "held-out prompt list", MAX_HELDOUT, "or set the held-out check to 0 (off)")
    seen = {p.lower() for p in training}
    both = [p for p in held if p.lower() in seen]
    if both:
        raise ValueError(f"Held-out prompt {both[0]!r} is also a training prompt: held-out prompts must be ones the run "
                         "does not train on (remove it from one of the lists).")
    return held


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
                    eval_every=_number(values["eval_every"], "held-out check every", int),
                    eval_seeds=_number(values["eval_seeds"], "held-out seeds", int),
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


# ------------------------------------------------------------------------------------ the server's jobs

def server_status() -> str:
    """One line about the server's finetunes (the one training, how many wait)."""
    job, waiting = QUEUE.current(), QUEUE.waiting()
    if job is None:
        return "No finetune is running on this server." + (f" {len(waiting)} waiting." if waiting else "")
    started = time.strftime("%H:%M", time.localtime(job.started or job.submitted))
    cfg = job.info["config"]
    return (f"Training now: {title(cfg.method)} on {cfg.reward}, step {job.step}/{cfg.steps}, started {started} "
            f"(run {job.name}). " + (f"{len(waiting)} waiting (one at a time)." if waiting else ""))


# ------------------------------------------------------------------------------------ live views

def shipped_curves(reward: str) -> list[tuple[str, pd.DataFrame, bool]]:
    """The shipped runs of ``reward``, one dashed curve per method (its first seed's)."""
    out = []
    for entry in catalogue().runs():
        if entry.kind != "shipped" or entry.run.parent.name == "seeds" or read_run_config(entry.run).get("reward") != reward:
            continue
        method = read_run_config(entry.run).get("method", entry.run.name)
        out.append((f"shipped: {title(method)}", read_metrics(entry.run), True))
    return out


def run_figure(folder: Path, frame: pd.DataFrame, cfg: RunConfig, smoothing: float) -> go.Figure:
    """The live figure of a run: its training reward (raw, smoothed, the shipped runs of its reward dashed) over
    its held-out change from the base (eval.csv) with the 95% interval."""
    evals = heldout.read_eval(folder)
    if cfg.eval_every:
        note = f"{heldout_size(cfg)} every {cfg.eval_every} steps"
    else:
        note = "off for this run" if evals.empty else "at the end"
    return live_figure(frame, evals, heldout.heldout_metrics(cfg.reward, evals) or [f"reward/{cfg.reward}"],
                       label=f"this run ({title(cfg.method)})", reward=cfg.reward, batch_size=cfg.batch_size,
                       steps=cfg.steps, smoothing=smoothing, shipped=shipped_curves(cfg.reward), heldout_note=note)


def _smoothing(value) -> float:
    try:
        return min(max(float(value), 0.0), 0.99)
    except (TypeError, ValueError):
        return SMOOTHING


def before_now(run: Path, out_dir: Path) -> str | None:
    """samples/step_0000.png beside the latest strip (4 fixed prompts, seeds 0-3), as one image."""
    import imageio.v3 as iio

    strips = sorted((run / "samples").glob("step_[0-9][0-9][0-9][0-9].png"))
    if not strips or not out_dir.is_dir():  # no samples yet; or the page was closed and its session folder removed
        return None
    first, last = iio.imread(strips[0]), iio.imread(strips[-1])
    gap = np.full((first.shape[0], 8, first.shape[2]), 255, dtype=first.dtype)
    path = out_dir / f"before_now_{run.name}_{strips[-1].stem}.png"
    if not path.exists():
        iio.imwrite(path, np.concatenate([first, gap, last], axis=1))
    return str(path)


def metrics_table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame.round(5) if len(frame) else pd.DataFrame(columns=["step", "wall_seconds", "reward_mean", "loss"])


COUNTERS = ("step", "samples_seen", "skipped_updates")


def shown_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """The metrics as shown: counters as whole numbers, every other value to 4 significant digits (1.743e+09, not
    1743159614.4: Nabla-R2D3's loss is in score units)."""
    out = frame.copy()
    for col in out.columns:
        if col in COUNTERS:
            out[col] = out[col].astype(int)
        else:
            out[col] = out[col].map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
    return out


# ------------------------------------------------------------------------------------ the handlers

FIXED_PARAMS = ["method", "reward", "steps", "prompt_source", "prompts", "seed", "lr", "batch_size", "sampler_steps",
                "render_resolution", "sample_every", "eval_every", "eval_seeds", "heldout_prompts"]
FIXED_DEFAULTS = {**DEFAULTS, "prompt_source": DEFAULT_PROMPT_SOURCE, "prompts": DEFAULT_PROMPTS,
                  "heldout_prompts": DEFAULT_HELDOUT}


def _start(values: dict) -> str:
    try:
        if values["prompt_source"] == OWN:
            training = own = parse_prompts(values["prompts"])
        elif values["prompt_source"] in (BUILTIN, None):
            training = read_prompts(TRAIN_PROMPTS)
        else:
            raise ValueError(f"prompt_source = {values['prompt_source']!r}: choose {BUILTIN!r} or {OWN!r}.")
        cfg = build_config(values, None)
        held = heldout_prompts(values["heldout_prompts"], training) if cfg.eval_every else None
    except ValueError as err:
        raise refusal(str(err)) from None
    out = new_run_dir(cfg.method, cfg.reward)
    # the lists are kept beside the runs (not in the session's temp folder) so config.json still points at them on resume
    if values["prompt_source"] == OWN:
        prompts_file = out.parent / ".prompts" / f"{out.name}.txt"
        atomic_write_text(prompts_file, "\n".join(own) + "\n")
        cfg = dataclasses.replace(cfg, prompts=str(prompts_file))
    if held:
        held_file = out.parent / ".prompts" / f"{out.name}.held-out.txt"
        atomic_write_text(held_file, "\n".join(held) + "\n")
        cfg = dataclasses.replace(cfg, eval_prompts=str(held_file))
    FINETUNES.submit(cfg, out)
    return out.name


def _signature() -> inspect.Signature:
    P = inspect.Parameter
    params = [P(name, P.POSITIONAL_OR_KEYWORD, default=FIXED_DEFAULTS[name]) for name in FIXED_PARAMS]
    params += [P(param(k), P.POSITIONAL_OR_KEYWORD, default=None if k.default is None else k.default)
               for knobs in method_knobs().values() for k in knobs]
    return inspect.Signature(params)


def start_finetune(*args, **kwargs) -> str:
    """Starts a finetune, or queues it behind the one training; returns its run name (watch it with /follow, list
    it with /jobs, stop it with /stop). Parameters by name for scripts: the fixed ones, then every method's knobs
    as <group>_<knob> (e.g. nabla_beta, draft_k, ddpo_clip_range); only the chosen method's are used. A knob
    declared per unit of the reward's range (nabla_beta) left out follows the reward. Left out, the settings are
    the tab's default preset's (presets.DEMO); eval_every = 0 turns the held-out check off."""
    bound = start_finetune.__signature__.bind(*args, **kwargs)
    bound.apply_defaults()
    return _start(dict(bound.arguments))


# gradio reads the API's parameter names from this; build_tab renews it, so a method registered before the
# studio is built has its knobs in the API
start_finetune.__signature__ = _signature()


def view(name: str | None, work: Path | None, smoothing: float = SMOOTHING) -> tuple:
    """(status, figure, before|now samples, metrics table, adapter zip or None) of a run as it is now."""
    folder = run_folder(name)
    rf, status = RunFolder(folder), read_status(folder, QUEUE)
    rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in rf.metrics_rows()]
    cfg = rf.load_config()
    frame = metrics_table(rows)
    zipped = None
    if status.get("state") not in LIVE and (folder / "adapter").is_dir() and work is not None and work.is_dir():
        zipped = str(zip_adapter(catalogue().get(f"run: {name}"), work))
    samples = before_now(folder, work) if work is not None else None
    evals = heldout.read_eval(folder)
    return (status_line(name, status, rows, cfg, evals), run_figure(folder, frame, cfg, _smoothing(smoothing)), samples,
            shown_metrics(frame), zipped)


def run_view(name: str, work: Path | None, smoothing: float = SMOOTHING) -> tuple:
    """view() of a run, or the line's word on one still waiting (no folder yet); ValueError for an unknown name."""
    try:
        return view(name, work, smoothing)
    except ValueError:
        job = QUEUE.get(name)
        if job is None:
            raise
        return (status_line(name, job_status(job), []), None, None, metrics_table([]), None)


def _live(name: str) -> bool:
    job = QUEUE.get(name)
    return job is not None and job.live


def follow(run: str, request: gr.Request = None):
    """Streams a run's view (status, figure, samples, metrics table, adapter zip) as it changes until it ends;
    any client may follow any run made on this server, while it waits, trains or after."""
    work, last = session_dir(request, "finetune"), None
    while True:
        live = _live(run)
        try:
            now = run_view((run or "").strip(), work)
        except ValueError as err:
            raise refusal(str(err)) from None
        if now[0] != last or not live:
            yield now
            last = now[0]
        if not live:
            return
        time.sleep(1.0)


MAX_CONFIG_BYTES = 100_000


def start_from_config(file) -> str:
    """Starts (queues) a new run with the settings of an uploaded config.json (a run's, from any server);
    returns its name. Refused with the engine's message when the file is not a config this version accepts."""
    try:
        path = Path(file if isinstance(file, (str, Path)) else getattr(file, "name", ""))
        if not path.is_file():
            raise ValueError("Choose a config.json to start from (download one from a run shown here).")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path.name} is {path.stat().st_size:,} bytes; a run's config.json is a few kB.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path.name} is not JSON ({err}).") from None
        cfg = RunConfig.from_dict(data)
        if cfg.model != "tiny" or cfg.weights or cfg.device != "cpu":
            raise ValueError(f"{path.name} trains model={cfg.model!r} (weights {cfg.weights!r}, device {cfg.device!r}); "
                             "the studio trains the embedded tiny model on its own device: use python -m engine.align.")
        if cfg.prompts:
            read_prompts(cfg.prompts)  # its prompt files must be on this server
        if cfg.eval_prompts and (cfg.eval_every or cfg.eval_at_end):
            read_prompts(cfg.eval_prompts)
        available, missing = reward_status()
        for name, _ in parse_ensemble(cfg.reward):
            if name not in available:
                raise ValueError(f"reward {name!r} cannot run here: {dict(missing).get(name, 'unknown reward')}.")
        if not 1 <= cfg.steps <= MAX_STEPS:
            raise ValueError(f"steps = {cfg.steps}: must be in [1, {MAX_STEPS}] in the studio.")
        cfg = cfg.validate()
    except (ValueError, FileNotFoundError) as err:
        raise refusal(str(err)) from None
    out = new_run_dir(cfg.method, cfg.reward)
    FINETUNES.submit(cfg, out)
    return out.name


def stop_run(run: str) -> str:
    """Stops a run after its current step (saved, resumable) or withdraws it from the line; any page may."""
    name = (run or "").strip()
    job, what = QUEUE.stop(name)
    if what == "stopping":
        return f"Stopping run `{name}` after step {job.step + 1}; it is saved and can be resumed."
    if what == "withdrawn":
        return f"Run `{name}` was still waiting in line; it is withdrawn."
    return f"Run `{name}` has {what}." if job else f"Run `{name}` is not training or waiting on this server."


def resume_run(run: str, steps: float | None = None) -> str:
    """Queues a stopped, failed or cut-off run to continue from its last checkpoint (``steps``: a new total, to
    train a finished run longer); returns its name."""
    try:
        folder = run_folder(run)
        cfg = RunFolder(folder).load_config()
        if steps not in (None, ""):
            cfg = dataclasses.replace(cfg, steps=_number(steps, "steps", int))
            if not 1 <= cfg.steps <= MAX_STEPS:
                raise ValueError(f"steps = {cfg.steps}: must be in [1, {MAX_STEPS}] in the studio.")
        done = len(RunFolder(folder).metrics_rows())
        if done >= cfg.steps:
            raise ValueError(f"Run {folder.name} has trained {done} of {cfg.steps} steps; give more steps to train it longer.")
        FINETUNES.submit(cfg, folder, resume=True)
    except ValueError as err:
        raise refusal(str(err)) from None
    return folder.name


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
        updates.append(gr.update() if value is None else gr.update(value=readable(value)))
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


# ------------------------------------------------------------------------------------ presets

def preset_values(name: str) -> dict:
    """The form's values of a named preset (presets.PRESETS); ValueError for an unknown name."""
    if name not in presets.PRESETS:
        raise ValueError(f"Preset {name!r}: choose one of {', '.join(presets.PRESETS)}.")
    values = dict(presets.PRESETS[name])
    reward = values["reward"]
    for knob in _reward_scaled_knobs():  # a knob the preset leaves out follows its reward
        values.setdefault(param(knob), reward_default(knob, reward))
    return values


def on_preset(name: str):
    """gr.update per form field (``FORM_FIELDS``: the fixed ones, then every knob box): the preset's values; a
    field the preset does not name is left as it is."""
    values = preset_values(name)
    out = []
    for field in FORM_FIELDS:
        if field not in values:
            out.append(gr.update())
        elif field in _READABLE:
            out.append(gr.update(value=readable(values[field])))
        else:
            out.append(gr.update(value=values[field]))
    return out


FORM_FIELDS = [*FIXED_PARAMS]  # + each knob's param, filled by build_tab
_READABLE: set[str] = set()  # the fields shown as text in readable notation (float knobs)


# ------------------------------------------------------------------------------------ layout

def build_tab() -> None:
    """Creates the tab's components and events inside the current gr.Tab."""
    start_finetune.__signature__ = _signature()  # every method registered by now
    available, _ = reward_status()
    demo = preset_values(presets.DEMO)
    with gr.Row():
        with gr.Column(scale=1):
            preset = gr.Dropdown(list(presets.PRESETS), value=presets.DEMO, label="Preset",
                                 info="fills the form with settings measured here (README: Finetune tab)")
            with gr.Row():
                method = gr.Dropdown([(title(m), m) for m in METHODS], value=DEFAULTS["method"], label="Method", min_width=120)
                reward = gr.Dropdown(available, value=DEFAULTS["reward"] if DEFAULTS["reward"] in available else available[0],
                                     label="Reward", min_width=120,
                                     allow_custom_value=True)  # so a script naming another gets the reason it cannot run
            gr.HTML(_unavailable_note())
            with gr.Row():
                steps = gr.Slider(1, 200, value=DEFAULTS["steps"], step=1, label="Steps (optimiser steps)", scale=2)
                lr = gr.Number(value=DEFAULTS["lr"], label="Learning rate", min_width=100, scale=1)
            prompt_source = gr.Radio([(f"{BUILTIN} ({len(read_prompts(TRAIN_PROMPTS))} prompts)", BUILTIN), (OWN, OWN)],
                                     value=DEFAULT_PROMPT_SOURCE, label="Training prompts")
            prompts = gr.Textbox(DEFAULT_PROMPTS, label="Your prompts, one per line", lines=3, max_lines=3,
                                 visible=DEFAULT_PROMPT_SOURCE == OWN, placeholder="a red chair\na blue car with yellow wheels")
            with gr.Row():
                start = gr.Button("Start", variant="primary")
            server = gr.Markdown(server_status())
            with gr.Accordion("Held-out check (prompts the run does not train on)", open=False):
                eval_every = gr.Slider(0, 50, value=DEFAULTS["eval_every"], step=1, label="Held-out check every N steps (0 = off)",
                                       info="each check samples the prompts below x seeds with the base's noise; "
                                            "its time is not counted in the step time")
                eval_seeds = gr.Slider(1, 4, value=DEFAULTS["eval_seeds"], step=1, label="Held-out seeds per prompt")
                heldout_box = gr.Textbox(DEFAULT_HELDOUT, label="Held-out prompts, one per line", lines=4, max_lines=8,
                                         info=f"at most {MAX_HELDOUT}; none may be a training prompt")
            with gr.Accordion("Run settings (cost per step)", open=False):
                gr.Markdown("Studio defaults favour a quick first point on a CPU; RunConfig's are batch 4, "
                            "20 sampler steps, 128 px, samples every 10 steps. The engine's learning rate is 1e-4.")
                seed = gr.Number(value=DEFAULTS["seed"], precision=0, label="Seed")
                batch_size = gr.Slider(1, 16, value=DEFAULTS["batch_size"], step=1, label="Batch size (trajectories per step)")
                sampler_steps = gr.Slider(4, 50, value=DEFAULTS["sampler_steps"], step=1, label="Sampler steps")
                render_resolution = gr.Slider(32, 256, value=DEFAULTS["render_resolution"], step=32, label="Reward render resolution (px)")
                sample_every = gr.Slider(0, 50, value=DEFAULTS["sample_every"], step=1, label="Samples every N steps (0 = off)")
            knob_inputs, knob_params, groups, scaled = [], [], [], []
            for name, knobs in method_knobs().items():
                with gr.Accordion(f"{title(name)} settings", open=False, visible=(name == DEFAULTS["method"])) as box:
                    doc = (METHODS[name].config.__doc__ or "").strip()
                    if doc:
                        gr.Markdown(doc.splitlines()[0])
                    for knob in knobs:
                        component = _knob_component(knob, reward.value)
                        if param(knob) in demo and name == DEFAULTS["method"]:
                            component.value = readable(demo[param(knob)]) if isinstance(component, gr.Textbox) else demo[param(knob)]
                        knob_inputs.append(component)
                        knob_params.append(param(knob))
                        if isinstance(component, gr.Textbox) and knob.type is float:
                            _READABLE.add(param(knob))
                        if knob.meta.per_reward_range is not None:
                            scaled.append(component)
                groups.append(box)
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Textbox(label="Run shown", max_lines=1, scale=4, elem_id="finetune-run",
                                 info="the run this page follows: the one you started, the server's current one, or any "
                                      "run picked in the list below")
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=80)
                resume = gr.Button("Resume", scale=1, min_width=80)
                more = gr.Number(label="Total steps (resume)", precision=0, scale=1, min_width=120,
                                 info="empty: the run's own; more trains a finished run longer")
            status = gr.Markdown("Choose a preset (or your settings) and press Start. A run trains on the server: close or "
                                 "reload the page and it goes on; any page can follow, stop or resume it.",
                                 elem_id="finetune-status")
            plot = gr.Plot(label="Training reward and held-out change", show_label=False, elem_id="finetune-plot")
            smoothing = gr.Slider(0, 0.95, value=SMOOTHING, step=0.05, label="Smoothing of the training curve (EMA)",
                                  info="0: the points themselves; 0.9: about the last 10 steps")
            # an explicit height: gradio's <img> loads lazily and has no size of its own until it has loaded
            samples = gr.Image(label="Fixed prompts, seeds 0-3: before (left) vs now (right), RGB over normals",
                               type="filepath", height=SAMPLES_HEIGHT)
            table = gr.Dataframe(label="Metrics per step (loss: each method's own objective in its own units, e.g. "
                                       "Nabla-R2D3's is in score units, ~1e9; compare runs by their reward)",
                                 interactive=False, wrap=False, max_height=300)
            zipped = gr.File(label="Adapter (.zip): upload it elsewhere, or load with engine.models.lora", interactive=False)
            runs_list = RunsList()
            follow_api = gr.Button(visible=False)  # the /follow endpoint: streams a run's view to an API client
    FORM_FIELDS[:] = [*FIXED_PARAMS, *knob_params]
    inputs = [method, reward, steps, prompt_source, prompts, seed, lr, batch_size, sampler_steps, render_resolution,
              sample_every, eval_every, eval_seeds, heldout_box, *knob_inputs]
    views = [status, plot, samples, table, zipped]
    shown = (_show, [run, smoothing], [*views, run, server])
    preset.change(on_preset, preset, inputs, queue=False, api_visibility="private").then(
        on_method_change, [method, batch_size], [*groups, batch_size], queue=False, api_visibility="private").then(
        on_prompt_source, prompt_source, prompts, queue=False, api_visibility="private")
    method.change(on_method_change, [method, batch_size], [*groups, batch_size], queue=False, api_visibility="private")
    if scaled:
        reward.input(_on_reward_change_page, reward, scaled, queue=False, api_visibility="private")
    prompt_source.change(on_prompt_source, prompt_source, prompts, queue=False, api_visibility="private")
    start.click(start_finetune, inputs, run, api_name="finetune").then(*shown, api_visibility="private")
    stop.click(stop_run, run, status, api_name="stop")
    resume.click(resume_run, [run, more], run, api_name="resume").then(*shown, api_visibility="private")
    runs_list.wire(run, status, shown)
    follow_api.click(follow, run, views, api_name="follow")
    runs_list.from_config.click(start_from_config, runs_list.upload, run, api_name="finetune_config").then(
        *shown, api_visibility="private")
    smoothing.change(*shown, api_visibility="private", show_progress="hidden")
    # the page follows its run from the server's state: a reloaded page or another browser sees the same job
    timer = gr.Timer(2)
    timer.tick(_tick, [run, smoothing], [*views, run, server], api_visibility="private", show_progress="hidden")


def _attach(run: str | None) -> str | None:
    """The run a page shows: its own choice, else the run training now, else the first in line."""
    if run:
        return run
    job = QUEUE.current() or next(iter(QUEUE.waiting()), None)
    return job.name if job else None


def _show(run: str | None, smoothing: float = SMOOTHING, request: gr.Request = None):
    """The page's views of its run, now (or of the server's current run when the page has none)."""
    name = _attach((run or "").strip())
    if not name:
        return (*[gr.skip()] * 5, gr.skip(), server_status())
    try:
        views = run_view(name, session_dir(request, "finetune"), smoothing)
    except ValueError as err:
        views = (str(err), gr.skip(), gr.skip(), gr.skip(), gr.skip())
    return (*views, name, server_status())


_LAST: dict[tuple, tuple] = {}  # (session, run) -> what the page was last sent (a tick that changes nothing sends nothing)


def _tick(run: str | None, smoothing: float = SMOOTHING, request: gr.Request = None):
    name = _attach((run or "").strip())
    if not name:
        return (*[gr.skip()] * 6, server_status())
    key = (getattr(request, "session_hash", None), name)
    rf = RunFolder(catalogue().runs_dir / name)
    job = QUEUE.get(name)
    stamp = (job.state if job else None, job.step if job else None,
             *(f.stat().st_mtime if f.exists() else None for f in (rf.metrics_file, rf.eval_file)),
             len(list(rf.samples.glob("*.png"))) if rf.samples.is_dir() else 0, smoothing)
    if _LAST.get(key) == stamp and run:
        return (*[gr.skip()] * 6, server_status())
    _LAST[key] = stamp
    return _show(name, smoothing, request)
