"""The Theory tab's functions without a browser: the live stream of sample clouds over p_ref / p* contours and
the distance curve (first picture within 2 s, at least 5 updates/s), several methods side by side, a diverging
method stopped with its reason, bad input, and Stop (the stream ends and every run's temporary folder goes)."""

import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

gr = pytest.importorskip("gradio")

from app import theory  # after the skip


@pytest.fixture
def recorded(monkeypatch):
    """Every TheoryRun the tab makes, to check that the stream closes them."""
    made = []

    class Recording(theory.TheoryRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(theory, "TheoryRun", Recording)
    return made


def _contours(fig) -> list:
    return [t for t in fig.data if (t.uid or "").startswith(("p_ref-", "p*-"))]


def _clouds(fig) -> list:
    return [t for t in fig.data if (t.uid or "").startswith("cloud-")]


def _curves(fig) -> list:
    return [t for t in fig.data if (t.uid or "").startswith("curve-")]


def test_first_picture_within_2_s_has_the_cloud_over_both_contours():
    theory.scene.cache_clear()  # the world's construction counts
    t0 = time.perf_counter()
    stream = theory.stream("gaussian", "direction", ["nabla-r2d3"], 1.0, 50)
    fig, status = next(stream)
    seconds = time.perf_counter() - t0
    stream.close()
    print(f"first picture {seconds:.2f} s (world built: {theory.scene('gaussian', 'direction', 1.0).seconds:.2f} s)")
    assert seconds < 2.0
    lines = {t.name: t for t in _contours(fig)}
    assert set(lines) == {"p_ref (base)", "p* (target)"}
    assert all(np.isfinite(t.x).sum() > 20 for t in lines.values())  # contour polylines, NaN between lines
    cloud, = _clouds(fig)
    assert cloud.name == "Nabla-R2D3" and 0.95 * theory.CLOUD_POINTS <= len(cloud.x) <= theory.CLOUD_POINTS
    sc = theory.scene("gaussian", "direction", 1.0)
    x0, x1, y0, y1 = sc.window
    assert (cloud.xaxis, cloud.yaxis) == ("x", "y") and all((t.xaxis, t.yaxis) == ("x", "y") for t in lines.values())
    assert list(fig.layout.xaxis.range) == [x0, x1] and list(fig.layout.yaxis.range) == [y0, y1]
    assert fig.layout.yaxis.scaleanchor == "x"  # equal axes
    assert fig.layout.annotations[0].text.startswith("Nabla-R2D3 · step 0")
    line, = _curves(fig)  # the distance curve, in its own panel below, log y
    assert (line.xaxis, line.yaxis) == ("x2", "y2") and fig.layout.yaxis2.type == "log"
    assert list(line.x) == [0] and line.y[0] > 0.3  # the base is away from p*
    assert line.mode == "markers"  # one point so far (a line from the second on)
    assert "p\\*** ∝ p_ref · exp(β r)" in status and "| Nabla-R2D3 | 0/50 |" in status


def test_at_least_5_updates_per_second_and_nabla_moves_onto_p_star():
    stream = theory.stream("gaussian", "direction", ["nabla-r2d3"], 1.0, 1000)
    next(stream)
    stamps = []
    for _ in range(21):
        fig, status = next(stream)
        fig.to_json()  # what gradio sends: part of each update's cost
        stamps.append(time.perf_counter())
    rate = 20 / (stamps[-1] - stamps[0])
    print(f"{rate:.1f} updates/s; {status.splitlines()[-1]}")
    assert rate >= 5.0
    line, = _curves(fig)
    # a measurement per update, several steps each
    assert line.mode == "lines" and list(line.x) == sorted(line.x) and line.x[-1] >= 21
    assert line.y[-1] < line.y[0]  # closer to p* than the base
    stream.close()


def test_several_methods_side_by_side_one_cloud_each(recorded):
    methods = ["nabla-r2d3", "refl", "ddpo"]
    stream = theory.stream("mixture", "ring", methods, 1.0, 100)
    for _ in range(6):
        fig, status = next(stream)
    stream.close()
    clouds = {t.name: t for t in _clouds(fig)}
    assert list(clouds) == ["Nabla-R2D3", "ReFL", "DDPO"]
    axes = [(t.xaxis, t.yaxis) for t in clouds.values()]
    assert axes == [("x", "y"), ("x2", "y2"), ("x3", "y3")]  # one panel each
    assert sorted((t.xaxis, t.name) for t in _contours(fig)) == sorted(
        (x, name) for x, _ in axes for name in ("p_ref (base)", "p* (target)"))  # both contours in every panel
    titles = [a.text.split(" · ")[0] for a in fig.layout.annotations]
    assert titles[:3] == ["Nabla-R2D3", "ReFL", "DDPO"] and titles[3].startswith("distance to p*")
    assert [(t.name, t.xaxis) for t in _curves(fig)] == [("Nabla-R2D3", "x4"), ("ReFL", "x4"), ("DDPO", "x4")]
    steps = [r.trainer.step for r in recorded]
    assert min(steps) >= 2 and max(steps) - min(steps) <= 1 + max(steps) // 2, steps  # round robin: all move
    assert all(f"| {m} |" in status for m in ("Nabla-R2D3", "ReFL", "DDPO"))


def test_a_diverging_method_is_stopped_with_its_reason_the_others_go_on(recorded):
    stream = theory.stream("gaussian", "direction", ["refl", "nabla-r2d3"], 1.0, 150)
    t0 = time.perf_counter()
    *_, (fig, status) = stream  # to the end
    print(f"refl + nabla-r2d3, 150 steps: {time.perf_counter() - t0:.1f} s")
    assert "**finished**" in status
    refl = next(row for row in status.splitlines() if row.startswith("| ReFL |"))
    assert "diverged at step" in refl and "the linear reward has no finite maximum" in refl
    assert refl.count("|") - refl.count("\\|") == 7  # six cells: the reason stays in its own
    assert "| Nabla-R2D3 | 150/150 |" in status and "| done |" in status
    curves = _curves(fig)
    assert [t.name for t in curves] == ["ReFL (diverged)", "Nabla-R2D3"]
    cross, = [t for t in fig.data if t.uid == "end-refl"]  # where it diverged, on the curve
    assert cross.marker.symbol == "x" and cross.xaxis == curves[0].xaxis
    assert (cross.x[0], cross.y[0]) == (curves[0].x[-1], curves[0].y[-1])
    assert all(np.isfinite(t.y).all() for t in curves)
    assert "diverged" in fig.layout.annotations[0].text
    assert all(not r.out.exists() for r in recorded)


class _StubRun:
    """A TheoryRun stand-in whose samples or steps go bad."""

    def __init__(self, samples=None, error=None):
        self.trainer = types.SimpleNamespace(step=7)
        self.done, self._samples, self._error = False, samples, error

    def samples(self):
        return self._samples

    def train(self, steps):
        raise self._error


def test_non_finite_samples_and_failing_steps_end_a_lane_with_the_reason():
    sc = theory.scene("gaussian", "corner", 1.0)
    bad = torch.zeros(64, 2, dtype=torch.float64)
    bad[3, 1] = float("nan")
    lane = theory.Lane("draft", _StubRun(samples=bad), "#000")
    lane.observe(sc)
    assert lane.state == "diverged" and not lane.trainable and "samples non-finite" in lane.note and not lane.steps
    from engine.align.trainer import TrainingError

    error = TrainingError("The grpo loss became nan at step 8; the last good checkpoint ... is kept.")
    lane = theory.Lane("grpo", _StubRun(error=error), "#000")
    lane.train()
    assert lane.state == "failed" and lane.note == "stopped at step 8: The grpo loss became nan at step 8"
    status = theory.status_text(sc, [lane], 10, "head")
    assert "| GRPO | 7/10 | – | – | – | stopped at step 8" in status


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": []}, "No method chosen: tick at least one method"),
    ({"methods": ["refl", "sgd"]}, "Unknown method.*'sgd'"),
    ({"world": "cube"}, "world = 'cube'"),
    ({"reward": "beauty"}, "reward = 'beauty'"),
    ({"beta": -1}, r"β = -1.0: must be in \[0, 5\]"),
    ({"steps": 0}, r"steps = 0: must be a whole number in \[1, 1000\]"),
    ({"steps": 2.5}, "steps = 2.5"),
])
def test_bad_input_gets_a_clear_error(kwargs, message):
    args = {"world": "gaussian", "reward": "direction", "methods": ["nabla-r2d3"], "beta": 1.0, "steps": 10} | kwargs
    with pytest.raises(gr.Error, match=message):
        next(theory.stream(**args))


def test_stop_ends_the_stream_and_closes_every_run(recorded):
    stop = threading.Event()
    stream = theory.stream("gaussian", "corner", ["nabla-r2d3", "draft"], 1.0, 1000, stop=stop)
    for _ in range(3):
        next(stream)
    folders = [Path(r.out) for r in recorded]
    assert len(folders) == 2 and all(f.is_dir() for f in folders)
    stop.set()
    rest = list(stream)
    assert len(rest) == 1  # the closing picture
    status = rest[0][1]
    assert "**stopped** at step" in status and status.count("| stopped |") == 2
    assert not any(f.exists() for f in folders) and all(r._iter is None for r in recorded)


def test_closing_the_stream_mid_run_closes_every_run(recorded):
    stream = theory.stream("mixture", "direction", ["alignprop"], 1.0, 1000)
    next(stream), next(stream)
    stream.close()  # the page went away
    assert recorded and all(not Path(r.out).exists() for r in recorded)


def test_handlers_stop_only_this_sessions_stream():
    me, other = types.SimpleNamespace(session_hash="me"), types.SimpleNamespace(session_hash="other")
    assert theory.stop_theory(me) == "No theory run of yours is running."
    mine = theory.run_theory("gaussian", "ring", ["nabla-r2d3"], 1.0, 1000, request=me)
    next(mine)
    assert theory.stop_theory(other) == "No theory run of yours is running."
    assert theory.stop_theory(me) == "Stopping…"
    *_, (_, status) = mine
    assert "**stopped** at step" in status
    assert not theory.JOBS.running("me")


def test_the_world_is_built_once_per_setting_and_the_window_holds_base_and_target():
    a = theory.scene("mixture", "ring", 2.0)
    assert theory.scene("mixture", "ring", 2.0) is a and theory.scene("mixture", "ring", 1.0) is not a
    base, target = a.world.base_pool.numpy(), a.world.target.samples.numpy()
    assert a.inside(base).mean() > 0.99 and a.inside(target).mean() > 0.99
    x0, x1, y0, y1 = a.window
    assert x1 - x0 == pytest.approx(y1 - y0)  # square: the panels keep equal axes


def test_the_tab_shows_the_world_before_start_and_leaves_a_running_picture_alone():
    me = types.SimpleNamespace(session_hash="previewer")
    fig, status = theory.preview("mixture", "corner", 2.0, me)
    assert sorted(t.name for t in fig.data) == ["p* (target)", "p_ref (base)"] and "press Start" in status
    assert list(fig.layout.xaxis.range) == list(theory.scene("mixture", "corner", 2.0).window[:2])
    skip = theory.on_open("mixture", "corner", 2.0, {"plot": "..."}, me)  # a picture is shown: kept
    assert all(u == gr.skip() for u in skip)
    assert theory.preview("gaussian", "ring", 9, me)[1] == "β = 9.0: must be in [0, 5]."
    running = theory.run_theory("gaussian", "ring", ["nabla-r2d3"], 1.0, 1000, request=me)
    next(running)
    assert all(u == gr.skip() for u in theory.preview("mixture", "ring", 1.0, me))  # the run's picture stays
    running.close()
    assert theory.preview("mixture", "ring", 1.0, me)[0] is not None
