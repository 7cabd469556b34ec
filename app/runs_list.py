"""The Finetune tab's runs list: every run made on this server (queued, training, finished, stopped, failed,
killed) with its held-out figure, then the shipped study's runs (read-only; Compare opens and evaluates them), the
shown run's files to download, and deleting a run made here.

Runs live in ``catalogue().runs_dir``; their state comes from the finetune queue (app/finetunes.py) or, for runs
no job of this server trains, from each folder's ``status.json``.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.align.run_folder import RunFolder

from . import heldout
from .catalogue import catalogue
from .evaluations import read_result
from .finetunes import QUEUE, read_status
from .sessions import refusal

COLUMNS = ["run", "method", "reward", "steps", "planned", "state", "held-out", "started", "reason"]


def run_folder(name: str | None) -> Path:
    """A run made on this server, by name (ValueError for anything else: shipped runs are read-only)."""
    name = (name or "").strip()
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"Run name {name!r}: give the name of a run in the Runs list, e.g. 20261207-101500-refl-geometry.")
    folder = catalogue().runs_dir / name
    if not (folder / "config.json").is_file():
        raise ValueError(f"No run named {name!r} on this server (runs made here are in {catalogue().runs_dir}).")
    return folder


def jobs_table() -> pd.DataFrame:
    """Every run made on this server, newest first: name, method, reward, steps done/planned, state (with the
    position in line), its latest held-out change with the 95% interval, started, and the reason of a failure."""
    rows = []
    root = catalogue().runs_dir
    folders = sorted((p for p in root.iterdir() if (p / "config.json").is_file()), reverse=True) if root.is_dir() else []
    names = {p.name for p in folders}
    for job in QUEUE.waiting():  # queued runs have no folder yet
        if job.name not in names:
            cfg = job.info["config"]
            rows.append({"run": job.name, "method": cfg.method, "reward": cfg.reward, "steps": 0,
                         "planned": cfg.steps, "state": f"queued ({QUEUE.position(job.name)} in line)",
                         "held-out": "", "started": "", "reason": ""})
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
                     "held-out": heldout_cell(folder, status.get("reward")),
                     "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "",
                     "reason": status.get("reason", "")})
    return pd.DataFrame(rows + shipped_rows(), columns=COLUMNS)


def heldout_cell(folder: Path, reward: str | None) -> str:
    """The run's latest held-out change of its reward with the 95% interval, e.g. "+0.021 [+0.008, +0.034] gain"."""
    frame = heldout.read_eval(folder)
    metrics = heldout.heldout_metrics(reward or "", frame) if len(frame) else []
    runs = frame[frame["label"] == "run"] if metrics else frame.iloc[0:0]
    if runs.empty:
        return ""
    last = runs.iloc[-1]
    return _cell(float(last[f"delta/{metrics[0]}"]), float(last[f"delta_se/{metrics[0]}"])) + f" (step {int(last['step'])})"


def _cell(delta: float, se: float) -> str:
    low, high = heldout.interval(delta, se)
    span = f" [{low:+.3g}, {high:+.3g}]" if math.isfinite(se) else ""
    return f"{delta:+.3g}{span} {heldout.verdict(delta, se)}"


SHIPPED_STATE = "shipped (read-only: open or evaluate it in Compare)"


def shipped_rows() -> list[dict]:
    """The shipped study's runs, after this server's: their held-out change from Compare's evaluation when it has
    one (the shipped eval.csv files predate the paired intervals)."""
    rows = []
    for entry in catalogue().entries().values():
        if entry.kind != "shipped" or entry.run is None:
            continue
        cfg = RunFolder(entry.run).config_dict()
        reward = cfg.get("reward") or ""
        # no key check: a shipped adapter never changes, and hashing ~30 of them on every 10 s tick costs more
        found = read_result(entry)
        cell = ""
        if found is not None and f"delta/reward/{reward}" in found["run"]:
            cell = _cell(found["run"][f"delta/reward/{reward}"], found["run"][f"delta_se/reward/{reward}"]) + " (Compare)"
        steps = len(RunFolder(entry.run).metrics_rows())
        rows.append({"run": entry.label, "method": cfg.get("method"), "reward": reward, "steps": steps,
                     "planned": cfg.get("steps"), "state": SHIPPED_STATE, "held-out": cell, "started": "", "reason": ""})
    return rows



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


def _picked(frame: pd.DataFrame, event: gr.SelectData):
    row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    if not 0 <= row < len(frame) or frame.iloc[row]["state"] == SHIPPED_STATE:
        return gr.skip()  # a shipped run is shown in Compare, not followed here
    return str(frame.iloc[row]["run"])



class RunsList:
    """The runs list's components (made inside the current gradio block by ``build``)."""

    def __init__(self):
        with gr.Accordion("Runs on this server", open=False):
            self.table = gr.Dataframe(jobs_table(), label="Runs (yours newest first, then the shipped ones): pick one of yours to show it", interactive=False,
                                      wrap=False, max_height=300)
            self.refresh = gr.Button("Refresh the list", size="sm")
        with gr.Accordion("The run shown: its files, delete it; start from a config", open=False):
            self.files = gr.File(label="config.json, metrics.csv and eval.csv of the run shown", interactive=False,
                                 file_count="multiple")
            with gr.Row():
                self.sure = gr.Checkbox(label="delete it for good", value=False)
                self.delete = gr.Button("Delete the run shown", variant="stop", size="sm")
            self.upload = gr.File(label="A run's config.json to start a new run with its settings", file_types=[".json"])
            self.from_config = gr.Button("Start from this config")

    def wire(self, run: gr.Textbox, status: gr.Markdown, show) -> None:
        """Events: refresh (/jobs), pick a row to show it (``show``: the page's view event, a (fn, inputs, outputs)
        triple), the shown run's files, delete (/delete); the list refreshes itself every 10 s."""
        fn, inputs, outputs = show
        self.refresh.click(jobs_table, None, self.table, api_name="jobs")
        self.table.select(_picked, self.table, run, api_visibility="private").then(fn, inputs, outputs,
                                                                                 api_visibility="private")
        run.change(files_of, run, self.files, api_visibility="private", show_progress="hidden")
        self.delete.click(delete_run, [run, self.sure], status, api_name="delete").then(
            lambda: (None, False, jobs_table()), None, [run, self.sure, self.table], api_visibility="private")
        slow = gr.Timer(10)
        slow.tick(jobs_table, None, self.table, api_visibility="private", show_progress="hidden")
