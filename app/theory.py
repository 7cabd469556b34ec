"""Theory tab: alignment methods on an analytic 2-D world whose optimum is known, live.

The world (engine.align.theory) is a Gaussian or a two-component mixture behind the model interface, with an
exact base denoiser; its reward acts on the sample itself. The target p* ∝ p_ref·exp(β r) is the base model's
own sample distribution p_ref reweighted by the reward, the optimum a KL-regularised aligner of strength β
should reach. Each chosen method trains its LoRA through the project's Trainer, and the tab shows, several
times a second, each method's samples (fixed noise) over the contours of p_ref and p*, and its distance to p*
(the mean's error in units of p*'s std) over the optimiser steps.

Light settings keep it live on a 2-core CPU (measured here: first picture 0.3-0.8 s after Start, 7-8
updates/s): a 40k sample base pool and 16k target samples (drawn once per world, for the contours and p*'s
moments), 1024 samples per measurement, of which 200 are drawn. The world of a (world, reward, β) is built
once per server (``scene``). An update trains the methods in turn, one step each (one method alone: several
steps), until about ``UPDATE_SECONDS`` are spent, measuring the methods it trained included. The computation
runs on one thread: these tensors are tiny, and OpenMP's worker threads only wait on each other (on a busy
2-core machine, 8-50x slower than one thread).

One figure per update (cloud panels above the distance curve): gradio's Plot redraws its plotly chart from
scratch on each new value, so one chart, no legend and a few hundred points keep the browser's share small.
Opening the tab draws the world before any training, which also loads plotly.js ahead of Start.

A method that diverges (on the linear ``direction`` reward, which has no finite maximum, every method with
nothing holding it near the base runs off) is stopped when its samples stop being finite or pass
``DIVERGED``, with the reason in the status; its curve keeps its last finite point.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from dataclasses import dataclass, field

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from engine.align.methods import METHODS
from engine.align.theory import REWARDS, WORLDS, TheoryRun, TheorySetup, World
from engine.align.theory.targets import distances

from .curves import PALETTE
from .jobs import Job, JobBoard
from .sessions import refusal

POOL = 40_000  # base samples: p_ref's contours, and the target's resampling pool (mixture, ring, corner)
TARGET_SAMPLES = 16_384  # cheap (drawn or resampled once per world), and p*'s contours need them
EVAL_SAMPLES = 1024  # samples per measurement, on the same noise every time
CLOUD_POINTS = 200  # of those, drawn per method
UPDATE_SECONDS = 0.1  # training time per update (at least one step)
MAX_STEPS = 1000
MAX_BETA = 5.0
DIVERGED = 1e6  # a sample coordinate past this: the run is stopped as diverged
GRID = 64  # cells per side of the density grid behind the contours
LEVELS = (0.3, 0.6, 0.9)  # each contour encloses this much of its distribution's mass
COLUMNS = 3  # cloud panels per row
PANEL_HEIGHT = 340  # px per row of cloud panels (420 for a single row)
CURVE_HEIGHT = 260
WORLD_TITLES = {"gaussian": "Gaussian", "mixture": "mixture (2 components)"}
REWARD_TITLES = {"direction": "direction: r = aᵀx, a = (1, 1)/√2",
                 "ring": "ring: r = −(|x| − 1.5)²",
                 "corner": "corner: r = −|x − (2, 2)|²/2"}
DEFAULTS = {"world": "gaussian", "reward": "direction", "methods": ["nabla-r2d3"], "beta": 1.0, "steps": 200}
P_STAR = ("**p\\*** ∝ p_ref · exp(β r): the base model's own samples (p_ref, grey dashed) reweighted by the reward "
          "(p\\*, black), the optimum of reward − KL(·‖p_ref)/β. Contours enclose "
          + " / ".join(f"{lv:.0%}" for lv in LEVELS) + " of each.")
BASE_LINE = {"color": "#868e96", "width": 1.2, "dash": "dash"}
TARGET_LINE = {"color": "#212529", "width": 1.6}


# ------------------------------------------------------------------------------------ the world

@dataclass
class Scene:
    """A world built once per (world, reward, β): the World, the picture's window, p_ref's and p*'s contour
    lines."""

    setup: TheorySetup
    world: World
    window: tuple[float, float, float, float]  # x0, x1, y0, y1 (a square)
    base_lines: tuple[np.ndarray, np.ndarray]  # x, y of every contour level, NaN between lines
    target_lines: tuple[np.ndarray, np.ndarray]
    seconds: float  # to build

    def inside(self, xy: np.ndarray) -> np.ndarray:
        x0, x1, y0, y1 = self.window
        return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)


def _window(*clouds: torch.Tensor) -> tuple[float, float, float, float]:
    """A square around the bulk (0.2-99.8% per axis) of the clouds, with a margin."""
    pts = torch.cat([c[:, :2].double() for c in clouds])
    lo, hi = torch.quantile(pts, 0.002, dim=0), torch.quantile(pts, 0.998, dim=0)
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2 * 1.15 + 0.25
    cx, cy = centre.tolist()
    return cx - half, cx + half, cy - half, cy + half


def _contour_lines(points: torch.Tensor, window, levels=LEVELS, grid: int = GRID, sigma: float = 1.5):
    """Contours of a sample cloud's density (a histogram smoothed by a Gaussian of ``sigma`` cells) that
    enclose ``levels`` of its mass, as one polyline: float32 (x, y) arrays with NaN between lines (numpy arrays
    keep plotly's figure building cheap and travel as binary)."""
    from skimage.measure import find_contours

    x0, x1, y0, y1 = window
    xy = points[:, :2].double().numpy()
    hist, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=grid, range=[[y0, y1], [x0, x1]])  # rows: y
    idx = np.arange(grid)
    smooth = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
    density = smooth @ hist @ smooth.T
    flat = density.ravel()
    order = np.argsort(-flat)
    mass = np.empty_like(flat)
    mass[order] = np.cumsum(flat[order]) / max(flat.sum(), 1e-300)  # mass of the cells at least this dense
    mass = mass.reshape(grid, grid)
    cx, cy = (x1 - x0) / grid, (y1 - y0) / grid
    xs, ys = [], []
    for level in levels:
        for line in find_contours(mass, level):
            xs += [x0 + (line[:, 1] + 0.5) * cx, [np.nan]]
            ys += [y0 + (line[:, 0] + 0.5) * cy, [np.nan]]
    if not xs:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)


@functools.lru_cache(maxsize=8)
def scene(world: str, reward: str, beta: float) -> Scene:
    """The world of a setting, built once per server (about 0.1-0.7 s)."""
    t0 = time.perf_counter()
    setup = TheorySetup(world=world, dim=2, reward=reward, beta=beta, eval_samples=EVAL_SAMPLES,
                        target_samples=TARGET_SAMPLES)
    with _one_thread():
        w = World(setup, pool=POOL)
        target = w.target.samples
        window = _window(w.base_pool, target)
        base_lines = _contour_lines(w.base_pool, window)
        target_lines = _contour_lines(target, window)
    return Scene(setup, w, window, base_lines, target_lines, time.perf_counter() - t0)


@contextlib.contextmanager
def _one_thread():
    """torch on one thread for the block (per calling thread: each gradio worker keeps its own setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ one method

@dataclass
class Lane:
    """One method's run, its latest samples and its distances over the steps."""

    method: str
    run: TheoryRun
    colour: str
    steps: list[int] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # mean error in units of p*'s std
    var_ratios: list[float] = field(default_factory=list)
    reward_gaps: list[float] = field(default_factory=list)
    cloud: np.ndarray | None = None  # [CLOUD_POINTS, 2], the latest
    state: str = "training"  # training | done | diverged | failed | stopped
    note: str = ""

    @property
    def title(self) -> str:
        return METHODS[self.method].title

    @property
    def step(self) -> int:
        return self.run.trainer.step

    @property
    def trainable(self) -> bool:
        return self.state == "training" and not self.run.done

    def train(self) -> None:
        """One optimiser step; a failing step (e.g. a non-finite loss) ends the lane with the reason."""
        try:
            self.run.train(1)
        except Exception as err:  # noqa: BLE001 - shown in the status; the other methods go on
            self.state = "failed"
            self.note = f"stopped at step {self.step + 1}: {str(err).split('; ')[0]}"

    def observe(self, sc: Scene) -> None:
        """Samples on the fixed noise: the cloud, and the distances to p* (or the end of a diverged run)."""
        x = self.run.samples()
        if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > DIVERGED:
            self.state = "diverged"
            why = ("the linear reward has no finite maximum and nothing holds this method near the base"
                   if sc.setup.reward == "direction" else "its updates are unstable at this setting")
            bad = "non-finite" if not bool(torch.isfinite(x).all()) else f"beyond ±{DIVERGED:.0e}"
            self.note = f"diverged at step {self.step}: samples {bad} ({why})"
            return
        self.steps.append(self.step)
        d = distances(x, sc.world.target.samples, sc.world.reward, sliced=False)
        self.errors.append(d["mean_error_std"])
        self.var_ratios.append(d["var_ratio"])
        self.reward_gaps.append(d["reward_gap"])
        self.cloud = x[:CLOUD_POINTS, :2].float().numpy()
        if self.run.done:
            self.state = "done"

    def close(self) -> None:
        self.run.close()


# ------------------------------------------------------------------------------------ the figure

@dataclass
class Frame:
    """The figure's fixed part, made once per stream: its layout, and each subplot's axes."""

    layout: go.Layout
    clouds: list[dict]  # per method: {"xaxis": "x2", "yaxis": "y2"}
    curve: dict


def frame(sc: Scene, lanes: list[Lane], steps: int) -> Frame:
    """Square cloud panels (``COLUMNS`` per row, equal axes over the scene's window) above the distance curve
    (log y, the full width). One figure, so the page redraws one plot per update."""
    n = len(lanes)
    cols = min(n, COLUMNS)
    rows = math.ceil(n / cols)
    specs = [[{} if r * cols + c < n else None for c in range(cols)] for r in range(rows)]
    specs.append([{"colspan": cols}] + [None] * (cols - 1))
    cloud_px = PANEL_HEIGHT if rows > 1 else 420
    height = cloud_px * rows + CURVE_HEIGHT + 120
    titles = [*(lane.title for lane in lanes), "distance to p* (mean error in p*'s std, log scale)"]
    fig = make_subplots(rows=rows + 1, cols=cols, specs=specs, row_heights=[cloud_px] * rows + [CURVE_HEIGHT],
                        subplot_titles=titles,
                        horizontal_spacing=0.06 if cols > 1 else 0.0, vertical_spacing=70 / height)
    x0, x1, y0, y1 = sc.window
    clouds = []
    for i in range(n):
        sub = fig.get_subplot(i // cols + 1, i % cols + 1)
        xname, yname = sub.xaxis.plotly_name, sub.yaxis.plotly_name  # "xaxis2", "yaxis2"
        xref, yref = xname.replace("axis", ""), yname.replace("axis", "")
        fig.layout[xname].update(range=[x0, x1], constrain="domain", zeroline=False)
        fig.layout[yname].update(range=[y0, y1], scaleanchor=xref, scaleratio=1, constrain="domain", zeroline=False)
        clouds.append({"xaxis": xref, "yaxis": yref})
    sub = fig.get_subplot(rows + 1, 1)
    fig.layout[sub.xaxis.plotly_name].update(range=[0, steps], title="optimiser step")
    fig.layout[sub.yaxis.plotly_name].update(type="log")
    curve = {"xaxis": sub.xaxis.plotly_name.replace("axis", ""), "yaxis": sub.yaxis.plotly_name.replace("axis", "")}
    for lane, note in zip([*lanes, None], fig.layout.annotations):  # a panel's title in its method's colour
        note.font = {"size": 13, "color": lane.colour if lane else "#212529"}
    # no legend: titles and curves share the method's colour, the status names the contours' styles. Each
    # update is a full redraw in the browser (plotly.react on new data, then gradio's resize); a legend's
    # automatic margins and per-point marker styling were most of it (profiled in headless Chromium).
    fig.update_layout(height=height, margin={"l": 50, "r": 20, "t": 40, "b": 20}, template="plotly_white",
                      uirevision="theory", showlegend=False)
    return Frame(fig.layout, clouds, curve)


def figure(sc: Scene, lanes: list[Lane], fr: Frame | int) -> go.Figure:
    """Per method, a panel of its latest samples (its colour) over p_ref's (grey, dashed) and p*'s (black)
    contours, samples outside the window left out (the title says how many); below, each method's distance to
    p* over the steps, an ✕ where it diverged or failed. ``fr``: the stream's Frame, or the number of steps."""
    fr = frame(sc, lanes, fr) if isinstance(fr, int) else fr
    fig = go.Figure(layout=fr.layout)  # (the uids name the traces here; plotly's to_json drops them)
    for note, lane, axes in zip(fig.layout.annotations, lanes, fr.clouds):
        fig.add_scatter(x=sc.base_lines[0], y=sc.base_lines[1], mode="lines", line=BASE_LINE, name="p_ref (base)",
                        uid=f"p_ref-{lane.method}", hoverinfo="skip", **axes)
        fig.add_scatter(x=sc.target_lines[0], y=sc.target_lines[1], mode="lines", line=TARGET_LINE, name="p* (target)",
                        uid=f"p*-{lane.method}", hoverinfo="skip", **axes)
        title = f"{lane.title} · step {lane.steps[-1] if lane.steps else 0}"
        if lane.cloud is not None:
            inside = sc.inside(lane.cloud)
            shown = lane.cloud[inside]
            fig.add_scatter(x=shown[:, 0], y=shown[:, 1], mode="markers", name=lane.title, uid=f"cloud-{lane.method}",
                            marker={"size": 4, "color": lane.colour, "opacity": 0.6}, **axes)
            if not inside.all():
                title += f" · {1 - inside.mean():.0%} off the picture"
        if lane.state in ("diverged", "failed"):
            title += f" · {lane.state}"
        note.text = title
    for lane in lanes:
        ended = lane.state in ("diverged", "failed")
        mode = "lines" if len(lane.steps) > 1 else "markers"
        fig.add_scatter(x=np.array(lane.steps), y=np.array(lane.errors), mode=mode, uid=f"curve-{lane.method}",
                        name=lane.title + (f" ({lane.state})" if ended else ""), line={"color": lane.colour, "width": 2},
                        marker={"size": 6, "color": lane.colour}, **fr.curve)
        if ended and lane.steps:
            fig.add_scatter(x=lane.steps[-1:], y=lane.errors[-1:], mode="markers", name=f"{lane.title}: {lane.state}",
                            uid=f"end-{lane.method}", marker={"symbol": "x", "size": 12, "color": lane.colour},
                            **fr.curve)
    return fig


def preview_figure(sc: Scene) -> go.Figure:
    """The world before any training: p_ref's and p*'s contours in one square panel."""
    x0, x1, y0, y1 = sc.window
    fig = go.Figure(layout={"height": 480, "margin": {"l": 50, "r": 20, "t": 40, "b": 30}, "template": "plotly_white",
                            "showlegend": False, "uirevision": "theory",
                            "xaxis": {"range": [x0, x1], "constrain": "domain", "zeroline": False},
                            "yaxis": {"range": [y0, y1], "scaleanchor": "x", "scaleratio": 1, "constrain": "domain",
                                      "zeroline": False}})
    fig.add_scatter(x=sc.base_lines[0], y=sc.base_lines[1], mode="lines", line=BASE_LINE, name="p_ref (base)",
                    uid="p_ref")
    fig.add_scatter(x=sc.target_lines[0], y=sc.target_lines[1], mode="lines", line=TARGET_LINE, name="p* (target)",
                    uid="p*")
    fig.add_annotation(text="p_ref (grey, dashed) and p* (black): press Start", x=0.5, y=1.0, xref="paper",
                       yref="paper", yanchor="bottom", showarrow=False, font={"size": 13})
    return fig


def status_text(sc: Scene, lanes: list[Lane], steps: int, head: str, rate: str = "") -> str:
    rows = ["| method | step | distance to p* | var ratio | reward − E*[r] | state |", "|---|---|---|---|---|---|"]
    for lane in lanes:
        if lane.errors:
            numbers = f"{lane.errors[-1]:.3g} | {lane.var_ratios[-1]:.3g} | {lane.reward_gaps[-1]:+.3g}"
        else:
            numbers = "– | – | –"
        state = (lane.note or lane.state).replace("|", "\\|")  # a pipe would end the table's cell
        rows.append(f"| {lane.title} | {lane.step}/{steps} | {numbers} | {state} |")
    return "\n".join([head, "", P_STAR, "", *rows, "", rate]).rstrip()


# ------------------------------------------------------------------------------------ the stream

def check_inputs(world, reward, methods, beta, steps) -> tuple[str, str, list[str], float, int]:
    """The handler's inputs, checked (ValueError with the value, the reason and the fix)."""
    if world not in WORLDS:
        raise ValueError(f"world = {world!r}: choose one of {', '.join(WORLDS)}.")
    if reward not in REWARDS:
        raise ValueError(f"reward = {reward!r}: choose one of {', '.join(REWARDS)}.")
    methods = [methods] if isinstance(methods, str) else list(methods or [])
    if not methods:
        raise ValueError("No method chosen: tick at least one method (e.g. Nabla-R2D3).")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(map(repr, unknown))}: choose from {', '.join(METHODS)}.")
    methods = list(dict.fromkeys(methods))  # each once, in the order given
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"β = {beta!r}: not a number.") from None
    if not 0 <= beta <= MAX_BETA:
        raise ValueError(f"β = {beta}: must be in [0, {MAX_BETA:g}].")
    try:
        number = float(steps)
    except (TypeError, ValueError):
        raise ValueError(f"steps = {steps!r}: not a number.") from None
    if not number.is_integer() or not 1 <= number <= MAX_STEPS:
        raise ValueError(f"steps = {steps!r}: must be a whole number in [1, {MAX_STEPS}].")
    return world, reward, methods, round(beta, 4), int(number)


def stream(world: str = DEFAULTS["world"], reward: str = DEFAULTS["reward"], methods=("nabla-r2d3",),
           beta: float = DEFAULTS["beta"], steps: int = DEFAULTS["steps"], *, stop: threading.Event | None = None,
           budget: float = UPDATE_SECONDS):
    """Trains ``methods`` side by side on the world, yielding (figure, status markdown):
    first at step 0, then after each ``budget`` seconds of training, until every method has its ``steps``
    (or diverged), or ``stop`` is set. Bad input raises gr.Error before anything is built. The runs' temporary
    folders are removed when the stream ends, however it ends (closing the generator included)."""
    try:
        world, reward, methods, beta, steps = check_inputs(world, reward, methods, beta, steps)
    except ValueError as err:
        raise refusal(str(err)) from None  # bad input: one line, no traceback
    stop = stop or threading.Event()
    t_start = time.perf_counter()
    sc = scene(world, reward, beta)
    lanes: list[Lane] = []
    try:
        with _one_thread():
            for m in methods:
                run = TheoryRun(sc.setup, m, world=sc.world, steps=steps)
                lanes.append(Lane(m, run, PALETTE[list(METHODS).index(m) % len(PALETTE)]))
            t1 = time.perf_counter()
            for lane in lanes:
                lane.observe(sc)
            observe = (time.perf_counter() - t1) / len(lanes)  # seconds per measurement, kept up to date
        fr = frame(sc, lanes, steps)
        head = (f"**{WORLD_TITLES[world]}** world · reward **{REWARD_TITLES[reward]}** · β = {beta:g} · "
                f"{steps} steps per method")
        first = f"{head} · first picture in {time.perf_counter() - t_start:.1f} s"
        yield figure(sc, lanes, fr), status_text(sc, lanes, steps, first)
        updates, t_loop, turn = 0, time.perf_counter(), 0
        while not stop.is_set():
            todo = [lane for lane in lanes if lane.trainable]
            if not todo:
                break
            t0 = time.perf_counter()
            touched: list[Lane] = []
            with _one_thread():
                while todo and not stop.is_set():  # round robin, one step each, until the budget is spent
                    lane = todo[turn % len(todo)]
                    turn += 1
                    lane.train()
                    if lane not in touched:
                        touched.append(lane)
                    todo = [lane for lane in lanes if lane.trainable]
                    if time.perf_counter() - t0 + observe * len(touched) >= budget:
                        break
                t1 = time.perf_counter()
                for lane in touched:
                    if lane.state == "training":
                        lane.observe(sc)
                observe = 0.7 * observe + 0.3 * (time.perf_counter() - t1) / len(touched)
            updates += 1
            elapsed = time.perf_counter() - t_loop
            trained = sum(lane.step for lane in lanes)
            rate = f"{updates / elapsed:.1f} updates/s · {trained / elapsed:.0f} optimiser steps/s"
            yield figure(sc, lanes, fr), status_text(sc, lanes, steps, f"{head} · **training**", rate)
        stopped = stop.is_set() and any(lane.trainable for lane in lanes)
        for lane in lanes:
            if lane.trainable:
                lane.state = "stopped"
        end = (f"**stopped** at step {max(lane.step for lane in lanes)}" if stopped else "**finished**")
        seconds = time.perf_counter() - t_start
        yield figure(sc, lanes, fr), status_text(sc, lanes, steps, f"{head} · {end} after {seconds:.1f} s")
    finally:
        for lane in lanes:
            lane.close()


# ------------------------------------------------------------------------------------ the handlers

JOBS = JobBoard("theory")  # several at once (each on one thread); one session's Stop ends its own


def run_theory(world, reward, methods, beta, steps, request: gr.Request = None):
    """Streams (figure, status) of the chosen methods on the world; Stop ends it."""
    with JOBS.track(Job("theory", getattr(request, "session_hash", None))) as job:
        yield from stream(world, reward, methods, beta, steps, stop=job.stop_flag)


def stop_theory(request: gr.Request = None) -> str:
    """Ends this session's theory runs after their current update."""
    mine = JOBS.stop(getattr(request, "session_hash", None))
    return "Stopping…" if mine else "No theory run of yours is running."


def _running(request) -> bool:
    return bool(JOBS.running(getattr(request, "session_hash", None)))


def preview(world, reward, beta, request: gr.Request = None):
    """(figure, status) of the chosen world before training; left as they are while this session trains."""
    if _running(request):
        return gr.skip(), gr.skip()
    try:
        world, reward, _, beta, _ = check_inputs(world, reward, [DEFAULTS["methods"][0]], beta, 1)
    except ValueError as err:
        return gr.skip(), str(err)
    sc = scene(world, reward, beta)
    head = f"**{WORLD_TITLES[world]}** world · reward **{REWARD_TITLES[reward]}** · β = {beta:g}"
    return preview_figure(sc), f"{head}\n\n{P_STAR}\n\nChoose the methods and press Start."


def on_open(world, reward, beta, shown, request: gr.Request = None):
    """Opening the tab shows the world (and loads the page's plotting library) unless a picture is there."""
    return (gr.skip(), gr.skip()) if shown is not None else preview(world, reward, beta, request)


def build_tab() -> None:
    """Creates the tab's components and events inside the current gr.Tab."""
    gr.Markdown("Alignment methods on a world whose answer is known: a 2-D Gaussian or mixture with an exact base "
                "denoiser and a reward on the sample itself. The target p* ∝ p_ref·exp(β r) is the base model's own "
                "sample distribution reweighted by the reward. Each method trains its LoRA through the Finetune tab's "
                "trainer; watch its samples move onto p* (or past it) and its distance to p* fall (or climb).")
    with gr.Row():
        with gr.Column(scale=1):
            world = gr.Radio([(WORLD_TITLES[w], w) for w in WORLDS], value=DEFAULTS["world"], label="World")
            reward = gr.Radio([(REWARD_TITLES[r], r) for r in REWARDS], value=DEFAULTS["reward"], label="Reward")
            methods = gr.CheckboxGroup([(cls.title, m) for m, cls in METHODS.items()], value=DEFAULTS["methods"],
                                       label="Methods (side by side)",
                                       info="on the linear direction reward, methods with nothing holding them near "
                                            "the base run off")
            beta = gr.Slider(0, 3, value=DEFAULTS["beta"], step=0.1, label="Strength β",
                             info="p* ∝ p_ref·exp(β r), and Nabla-R2D3's β; the others keep the engine's defaults")
            steps = gr.Slider(10, MAX_STEPS, value=DEFAULTS["steps"], step=10, label="Optimiser steps per method")
            with gr.Row():
                start = gr.Button("Start", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            stop_info = gr.Markdown()
        with gr.Column(scale=3):
            status = gr.Markdown("Choose the settings and press Start.", elem_id="theory-status")
            plot = gr.Plot(label="Samples (fixed noise) over p_ref and p*; distance to p* per optimiser step",
                           elem_id="theory-plot")
    # the world's picture before Start: on the tab's first opening and when a setting of it changes (this also
    # loads plotly.js, the first picture's main cost in a browser, ~2 s in headless Chromium here)
    tab = gr.context.Context.block  # the enclosing gr.Tab (ui.py opens it)
    if isinstance(tab, gr.Tab):
        tab.select(on_open, [world, reward, beta, plot], [plot, status], queue=False, api_visibility="private")
    for change in (world.change, reward.change, beta.release):
        change(preview, [world, reward, beta], [plot, status], queue=False, api_visibility="private")
    start.click(lambda: "", None, stop_info, queue=False, api_visibility="private")  # the last Stop's note
    start.click(run_theory, [world, reward, methods, beta, steps], [plot, status], api_name="theory",
                concurrency_limit=2, concurrency_id="theory", show_progress="hidden")
    stop.click(stop_theory, None, stop_info, queue=False, api_name="stop_theory")
