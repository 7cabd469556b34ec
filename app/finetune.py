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
import json
import math
import re
import shutil
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
from engine.generate import load_model
from engine.prompts import TRAIN_PROMPTS, read_prompts, validate_prompt
from engine.rewards import list_rewards, parse_ensemble, reward_span

from .catalogue import catalogue, zip_adapter
from .curves import read_metrics, read_run_config, reward_figure
from .finetunes import Finetunes, job_status, read_status
from .jobs import LIVE
from .sessions import refusal, session_dir

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
    """A readable, unique run folder under the server's runs dir (not one a queued run will take either)."""
    root = catalogue().runs_dir
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(method)}-{_slug(reward)}"
    out, n = root / base, 2
    while out.exists() or QUEUE.get(out.name) is not None:
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


# ------------------------------------------------------------------------------------ the server's jobs

FINETUNES = Finetunes(lambda: load_model("tiny"))  # its own fresh base per run: the shared Pool keeps serving
QUEUE = FINETUNES.queue


def server_status() -> str:
    """One line about the server's finetunes (the one training, how many wait)."""
    job, waiting = QUEUE.current(), QUEUE.waiting()
    if job is None:
        return "No finetune is running on this server." + (f" {len(waiting)} waiting." if waiting else "")
    started = time.strftime("%H:%M", time.localtime(job.started or job.submitted))
    cfg = job.info["config"]
    return (f"Training now: `{job.name}` ({title(cfg.method)} on {cfg.reward}), step {job.step}/{cfg.steps}, "
            f"started {started}. " + (f"{len(waiting)} waiting (one at a time)." if waiting else ""))


def run_folder(name: str | None) -> Path:
    """A run made on this server, by name (ValueError for anything else: shipped runs are read-only)."""
    name = (name or "").strip()
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"Run name {name!r}: give the name of a run in the Runs list, e.g. 20261207-101500-refl-geometry.")
    folder = catalogue().runs_dir / name
    if not (folder / "config.json").is_file():
        raise ValueError(f"No run named {name!r} on this server (runs made here are in {catalogue().runs_dir}).")
    return folder


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
    path = out_dir / f"before_now_{run.name}_{strips[-1].stem}.png"
    if not path.exists():
        iio.imwrite(path, np.concatenate([first, gap, last], axis=1))
    return str(path)


def _fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def metrics_table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame.round(5) if len(frame) else pd.DataFrame(columns=["step", "wall_seconds", "reward_mean", "loss"])


# ------------------------------------------------------------------------------------ the handlers

FIXED_PARAMS = ["method", "reward", "steps", "prompt_source", "prompts", "seed", "lr", "batch_size", "sampler_steps",
                "render_resolution", "sample_every"]


def _start(values: dict) -> str:
    try:
        if values["prompt_source"] == OWN:
            own = parse_prompts(values["prompts"])
        elif values["prompt_source"] not in (BUILTIN, None):
            raise ValueError(f"prompt_source = {values['prompt_source']!r}: choose {BUILTIN!r} or {OWN!r}.")
        cfg = build_config(values, None)
    except ValueError as err:
        raise refusal(str(err)) from None
    out = new_run_dir(cfg.method, cfg.reward)
    if values["prompt_source"] == OWN:
        # kept beside the runs (not in the session's temp folder) so config.json still points at it on resume
        prompts_file = out.parent / ".prompts" / f"{out.name}.txt"
        atomic_write_text(prompts_file, "\n".join(own) + "\n")
        cfg = dataclasses.replace(cfg, prompts=str(prompts_file))
    FINETUNES.submit(cfg, out)
    return out.name


def _signature() -> inspect.Signature:
    P = inspect.Parameter
    fixed = {"method": DEFAULTS["method"], "reward": DEFAULTS["reward"], "steps": DEFAULTS["steps"],
             "prompt_source": BUILTIN, "prompts": None, "seed": DEFAULTS["seed"], "lr": DEFAULTS["lr"],
             "batch_size": DEFAULTS["batch_size"], "sampler_steps": DEFAULTS["sampler_steps"],
             "render_resolution": DEFAULTS["render_resolution"], "sample_every": DEFAULTS["sample_every"]}
    params = [P(name, P.POSITIONAL_OR_KEYWORD, default=fixed[name]) for name in FIXED_PARAMS]
    params += [P(param(k), P.POSITIONAL_OR_KEYWORD, default=None if k.default is None else k.default)
               for knobs in method_knobs().values() for k in knobs]
    return inspect.Signature(params)


def start_finetune(*args, **kwargs) -> str:
    """Starts a finetune, or queues it behind the one training; returns its run name (watch it with /follow, list
    it with /jobs, stop it with /stop). Parameters by name for scripts: the fixed ones, then every method's knobs
    as <group>_<knob> (e.g. nabla_beta, draft_k, ddpo_clip_range); only the chosen method's are used. A knob
    declared per unit of the reward's range (nabla_beta) left out follows the reward."""
    bound = start_finetune.__signature__.bind(*args, **kwargs)
    bound.apply_defaults()
    return _start(dict(bound.arguments))


# gradio reads the API's parameter names from this; build_tab renews it, so a method registered before the
# studio is built has its knobs in the API
start_finetune.__signature__ = _signature()


def _status_line(name: str, status: dict, rows: list[dict]) -> str:
    state, steps, planned = status.get("state", "unknown"), len(rows), status.get("planned_steps", "?")
    head = f"Run `{name}`: {title(status.get('method', ''))} on **{status.get('reward', '?')}**, {planned} steps."
    if state == "queued":
        return f"{head}\n\n**Waiting in line**: number {QUEUE.position(name)}. It starts when the run ahead of it ends."
    if state == "starting":
        return f"{head}\n\n**Starting**: loading the base model and drawing the 'before' samples…"
    if state in ("running", "stopping") and not rows:
        return f"{head}\n\n**Step 1 running…**" + (" (stopping after it)" if state == "stopping" else "")
    if not rows:
        return f"{head}\n\n**{state.capitalize()}**" + (f": {status['reason']}" if status.get("reason") else ".")
    last, first = rows[-1], rows[0]
    trend = (f"reward {last['reward_mean']:.4f} (step 1: {first['reward_mean']:.4f}, "
             f"{last['reward_mean'] - first['reward_mean']:+.4f}) · loss {last['loss']:.4g}")
    if state in ("running", "stopping"):
        per_step = last["wall_seconds"] / max(1, last["step"])
        left = per_step * (planned - last["step"]) if isinstance(planned, int) else 0
        return (f"{head}\n\n**Step {int(last['step'])}/{planned}** · {trend} · {per_step:.1f} s/step · about "
                f"{_fmt_seconds(left)} left" + (" · **stopping after this step**" if state == "stopping" else ""))
    how = {"finished": "Run finished", "stopped": f"Run stopped at step {steps}/{planned}",
           "killed": f"Run cut off at step {steps}/{planned} (the server stopped)",
           "failed": "Run failed"}.get(state, f"Run {state}")
    reason = f" ({status['reason']})" if status.get("reason") and state == "failed" else ""
    more = " Resume continues it from its last checkpoint." if state in ("stopped", "killed", "failed") else ""
    return (f"{head}\n\n**{how}.**{reason} {trend}. The adapter is **run: {name}** in the Generate and Compare "
            f"lists; the zip is below.{more}")


def view(name: str | None, work: Path | None) -> tuple:
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
    return _status_line(name, status, rows), live_figure(frame, cfg, shipped_curves(cfg.reward)), samples, frame, zipped


def run_view(name: str, work: Path | None) -> tuple:
    """view() of a run, or the line's word on one still waiting (no folder yet); ValueError for an unknown name."""
    try:
        return view(name, work)
    except ValueError:
        job = QUEUE.get(name)
        if job is None:
            raise
        return (_status_line(name, job_status(job), []), None, None, metrics_table([]), None)


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


def jobs_table() -> pd.DataFrame:
    """Every run made on this server, newest first: name, method, reward, steps done/planned, state (with the
    position in line), started, and the reason of a failure."""
    rows = []
    root = catalogue().runs_dir
    folders = sorted((p for p in root.iterdir() if (p / "config.json").is_file()), reverse=True) if root.is_dir() else []
    names = {p.name for p in folders}
    for job in QUEUE.waiting():  # queued runs have no folder yet
        if job.name not in names:
            cfg = job.info["config"]
            rows.append({"run": job.name, "method": cfg.method, "reward": cfg.reward, "steps": 0,
                         "planned": cfg.steps, "state": f"queued ({QUEUE.position(job.name)} in line)",
                         "started": "", "reason": ""})
    for folder in folders:
        status = read_status(folder, QUEUE)
        if not status:
            cfg = RunFolder(folder).config_dict()
            status = {"state": "unknown", "method": cfg.get("method"), "reward": cfg.get("reward"),
                      "planned_steps": cfg.get("steps"), "steps": len(RunFolder(folder).metrics_rows())}
        state = status.get("state", "unknown")
        if state == "queued":
            state = f"queued ({QUEUE.position(folder.name)} in line)"
        started = status.get("started") or status.get("submitted")
        rows.append({"run": folder.name, "method": status.get("method"), "reward": status.get("reward"),
                     "steps": status.get("steps", 0), "planned": status.get("planned_steps"), "state": state,
                     "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "",
                     "reason": status.get("reason", "")})
    return pd.DataFrame(rows, columns=["run", "method", "reward", "steps", "planned", "state", "started", "reason"])


MAX_CONFIG_BYTES = 100_000


def files_of(run: str | None) -> list[str] | None:
    """The shown run's config.json, metrics.csv and eval.csv (those it has), for download."""
    try:
        folder = run_folder(run)
    except ValueError:
        return None
    return [str(folder / n) for n in ("config.json", "metrics.csv", "eval.csv") if (folder / n).is_file()]


def delete_run(run: str, sure: bool) -> str:
    """Deletes a run made on this server (not while it trains or waits), after the user confirmed."""
    try:
        folder = run_folder(run)
        job = QUEUE.get(folder.name)
        if job is not None and job.live:
            raise ValueError(f"Run {folder.name} is {job.state}: stop it first.")
        if not sure:
            raise ValueError(f"Tick \"delete it for good\" to delete run {folder.name} (adapter, curve, samples).")
    except ValueError as err:
        raise refusal(str(err)) from None
    trash = folder.parent / f".{folder.name}.deleted"
    folder.rename(trash)  # gone from every list at once; the files go after
    shutil.rmtree(trash, ignore_errors=True)
    QUEUE.forget(folder.name)
    return f"Run `{folder.name}` is deleted."


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
            read_prompts(cfg.prompts)  # its prompt file must be on this server
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
    start_finetune.__signature__ = _signature()  # every method registered by now
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
            server = gr.Markdown(server_status())
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Textbox(label="Run shown", max_lines=1, scale=4, elem_id="finetune-run",
                                 info="the run this page follows: the one you started, the server's current one, or any "
                                      "run picked in the list below")
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=80)
                resume = gr.Button("Resume", scale=1, min_width=80)
                more = gr.Number(label="Total steps (resume)", precision=0, scale=1, min_width=120,
                                 info="empty: the run's own; more trains a finished run longer")
            status = gr.Markdown("Choose the settings and press Start. A run trains on the server: close or reload "
                                 "the page and it goes on; any page can follow, stop or resume it.")
            plot = gr.Plot(label="Reward per step")
            # an explicit height: gradio's <img> loads lazily and has no size of its own until it has loaded, so
            # while it was out of view (Start sits far below it when a method has many knobs) its frame was 0 px
            samples = gr.Image(label="Fixed prompts, seeds 0-3: before (left) vs now (right), RGB over normals",
                               type="filepath", height=SAMPLES_HEIGHT)
            table = gr.Dataframe(label="Metrics per step", interactive=False, wrap=False, max_height=300)
            zipped = gr.File(label="Adapter (.zip): upload it elsewhere, or load with engine.models.lora", interactive=False)
            with gr.Accordion("Runs on this server", open=False):
                runs = gr.Dataframe(jobs_table(), label="Runs (newest first): pick one to show it", interactive=False,
                                    wrap=False, max_height=300)
                refresh = gr.Button("Refresh the list", size="sm")
            with gr.Accordion("The run shown: its files, delete it; start from a config", open=False):
                config_file = gr.File(label="config.json, metrics.csv and eval.csv of the run shown", interactive=False,
                                      file_count="multiple")
                with gr.Row():
                    sure = gr.Checkbox(label="delete it for good", value=False)
                    delete = gr.Button("Delete the run shown", variant="stop", size="sm")
                upload = gr.File(label="A run's config.json to start a new run with its settings", file_types=[".json"])
                from_config = gr.Button("Start from this config")
            follow_api = gr.Button(visible=False)  # the /follow endpoint: streams a run's view to an API client
    inputs = [method, reward, steps, prompt_source, prompts, seed, lr, batch_size, sampler_steps, render_resolution,
              sample_every, *knob_inputs]
    views = [status, plot, samples, table, zipped]
    method.change(on_method_change, [method, batch_size], [*groups, batch_size], queue=False, api_visibility="private")
    if scaled:
        reward.change(_on_reward_change_page, reward, scaled, queue=False, api_visibility="private")
    prompt_source.change(on_prompt_source, prompt_source, prompts, queue=False, api_visibility="private")
    start.click(start_finetune, inputs, run, api_name="finetune").then(
        _show, [run], [*views, run, server], api_visibility="private")
    stop.click(stop_run, run, status, api_name="stop")
    resume.click(resume_run, [run, more], run, api_name="resume").then(
        _show, [run], [*views, run, server], api_visibility="private")
    refresh.click(jobs_table, None, runs, api_name="jobs")
    runs.select(_picked, runs, run, api_visibility="private").then(_show, [run], [*views, run, server],
                                                                  api_visibility="private")
    follow_api.click(follow, run, views, api_name="follow")
    run.change(files_of, run, config_file, api_visibility="private", show_progress="hidden")
    delete.click(delete_run, [run, sure], status, api_name="delete").then(
        lambda: (None, False, jobs_table()), None, [run, sure, runs], api_visibility="private")
    from_config.click(start_from_config, upload, run, api_name="finetune_config").then(
        _show, [run], [*views, run, server], api_visibility="private")
    # the page follows its run from the server's state: a reloaded page or another browser sees the same job
    timer = gr.Timer(2)
    timer.tick(_tick, [run], [*views, run, server], api_visibility="private", show_progress="hidden")
    slow = gr.Timer(10)
    slow.tick(jobs_table, None, runs, api_visibility="private", show_progress="hidden")


def _picked(frame: pd.DataFrame, event: gr.SelectData):
    row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    return str(frame.iloc[row]["run"]) if 0 <= row < len(frame) else gr.skip()


def _attach(run: str | None) -> str | None:
    """The run a page shows: its own choice, else the run training now, else the first in line."""
    if run:
        return run
    job = QUEUE.current() or next(iter(QUEUE.waiting()), None)
    return job.name if job else None


def _show(run: str | None, request: gr.Request = None):
    """The page's views of its run, now (or of the server's current run when the page has none)."""
    name = _attach((run or "").strip())
    if not name:
        return (*[gr.skip()] * 5, gr.skip(), server_status())
    try:
        views = run_view(name, session_dir(request, "finetune"))
    except ValueError as err:
        views = (str(err), gr.skip(), gr.skip(), gr.skip(), gr.skip())
    return (*views, name, server_status())


_LAST: dict[tuple, tuple] = {}  # (session, run) -> what the page was last sent (a tick that changes nothing sends nothing)


def _tick(run: str | None, request: gr.Request = None):
    name = _attach((run or "").strip())
    if not name:
        return (*[gr.skip()] * 6, server_status())
    key = (getattr(request, "session_hash", None), name)
    rf = RunFolder(catalogue().runs_dir / name)
    job = QUEUE.get(name)
    stamp = (job.state if job else None, job.step if job else None,
             rf.metrics_file.stat().st_mtime if rf.metrics_file.exists() else None,
             len(list(rf.samples.glob("*.png"))) if rf.samples.is_dir() else 0)
    if _LAST.get(key) == stamp and run:
        return (*[gr.skip()] * 6, server_status())
    _LAST[key] = stamp
    return _show(name, request)
