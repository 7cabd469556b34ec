"""The Compare tab through gradio_client against a served studio: real tiny runs made by the Trainer (one
with eval.csv, one without, on two rewards), a LoRA saved after the server started, and each bad input."""

import json
import time
import types

import pytest
import torch

pytest.importorskip("gradio")

PROMPT = "a red chair"
STEPS, FRAMES = 4, 6


def _train(out, reward: str, eval_prompts, *, evaluate: bool):
    """A real 2-step run (the smallest the Trainer makes): config.json, metrics.csv, adapter/, and if asked
    eval.csv (eval_every=2: the base row at step 0 and the run's at step 2)."""
    from engine.align.config import RunConfig
    from engine.align.trainer import Trainer

    config = RunConfig(reward=reward, steps=2, batch_size=1, sampler_steps=4, render_resolution=32, sample_every=0,
                       checkpoint_every=0, eval_every=2 if evaluate else 0, eval_prompts=str(eval_prompts), eval_seeds=2)
    Trainer(config, out).train(progress=False)
    return out


def _random_adapter(folder):
    """A LoRA with visible random weights (so its asset differs from the base's)."""
    from engine.generate import load_model
    from engine.models import lora

    torch.manual_seed(1)
    model = load_model("tiny")
    lora.add_lora(model, rank=4)
    with torch.no_grad():
        for p in lora.lora_parameters(model):
            p.add_(torch.randn_like(p) * 0.05)
    return lora.save_adapter(model, folder, meta={"method": "refl", "reward": "colorfulness", "step": 7})


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from app import catalogue
    from tests.test_app import _serve

    root = tmp_path_factory.mktemp("compare")
    prompts = root / "eval_prompts.txt"
    prompts.write_text("a blue car\na green tree\n")
    t0 = time.perf_counter()
    _train(root / "runs" / "colour", "colorfulness", prompts, evaluate=True)
    _train(root / "runs" / "geo", "geometry", prompts, evaluate=False)
    print(f"\n2 tiny runs made in {time.perf_counter() - t0:.1f} s")
    catalogue.set_runs_dir(root / "runs")
    with _serve() as client:
        yield types.SimpleNamespace(client=client, root=root)
    catalogue.set_runs_dir(root / "unused")


def _compare(client, models, seed=0):
    out = client.predict(PROMPT, seed, STEPS, models, FRAMES, api_name="/compare")
    slots = [tuple(out[i:i + 3]) for i in range(0, 12, 3)]  # (title, video, views); the columns are not API values
    scores, plys, by_step, by_wall, evaluation, info = out[12:]
    return slots, scores, plys, by_step, by_wall, evaluation, info


def _table(value) -> list[dict]:
    return [dict(zip(value["headers"], row)) for row in value["data"]]


def _figure(value) -> dict:
    return json.loads(value["plot"])


def test_compare_base_and_runs_side_by_side(studio):
    import imageio.v3 as iio

    from app.catalogue import pool
    from engine.models import lora

    models = ["base", "run: colour", "run: geo"]
    t0 = time.perf_counter()
    slots, scores, plys, by_step, by_wall, evaluation, info = _compare(studio.client, models)
    print(f"compare of 3 models ({STEPS} steps, {FRAMES} frames): {time.perf_counter() - t0:.1f} s")
    titles = [s[0] for s in slots]
    assert "**base**" in titles[0] and "**run: colour**" in titles[1] and "nabla-r2d3" in titles[1] and "colorfulness" in titles[1]
    assert "step 2" in titles[2] and "geometry" in titles[2]
    assert slots[3] == (None, None, None)  # the unused slot is empty (and hidden)
    for _, video, views in slots[:3]:
        assert iio.imread(video).shape[0] == FRAMES
        assert iio.imread(views).shape[1] == 4 * iio.imread(views).shape[0]  # 4 square views in a row
    assert [p.rsplit("/", 1)[-1] for p in plys] == ["1-base.ply", "2-run-colour.ply", "3-run-geo.ply"]

    rows = _table(scores)
    assert [r["model"] for r in rows] == models
    for r in rows:
        assert {"geometry", "alignment", "colorfulness"} <= set(r) and all(isinstance(r[k], float) for k in ("geometry", "colorfulness"))
    assert "one loaded base" in info and "seed 0" in info

    # curves: the two runs are on different rewards, so one panel each, each with the base's level
    for fig, axis in ((_figure(by_step), "step"), (_figure(by_wall), "wall")):
        names = [t["name"] for t in fig["data"]]
        assert names == ["run: colour", "run: geo"]
        assert all(len(t["x"]) == 2 for t in fig["data"])
        assert len([s for s in fig["layout"]["shapes"] if s["line"]["dash"] == "dot"]) == 2
        assert axis in fig["layout"]["xaxis"]["title"]["text"]
    from app.curves import read_metrics

    first = read_metrics(studio.root / "runs" / "geo")["reward_mean"].iloc[0]
    assert any(abs(s["y0"] - first) < 1e-9 for s in _figure(by_step)["layout"]["shapes"])

    # evaluation: the colour run's base row and its step-2 row; the geo run has none
    ev = _table(evaluation)
    colour = [r for r in ev if r["model"] == "run: colour"]
    assert [r["row"] for r in colour] == ["base", "step 2"]
    assert all(r["held-out reward"] != "—" and r["category acc"] != "—" for r in colour)
    assert float(colour[0]["KID vs base"]) == pytest.approx(0, abs=0.05)
    (geo,) = [r for r in ev if r["model"] == "run: geo"]
    assert geo["row"] == "no eval.csv yet" and geo["held-out reward"] == "—"

    # one base model in the pool; the runs' adapters were loaded into it, and none is left active
    model = pool().model
    assert len(lora.adapter_names(model)) >= 2 and lora.active_adapter(model) is None
    studio.base_scores = rows[0]


def test_a_lora_saved_after_start_appears_and_differs_from_the_base(studio):
    from app import compare

    assert "run: late" not in compare.model_choices()
    _random_adapter(studio.root / "runs" / "late" / "adapter")
    update = compare.refresh_models(["base", "run: gone"])
    assert "run: late" in [label for _, label in update["choices"]] and update["value"] == ["base"]
    shown = dict((label, name) for name, label in update["choices"])
    assert shown["run: late"].startswith("Yours · ReFL") and list(shown)[:2] == ["base", "run: late"]  # yours first

    slots, scores, plys, by_step, *_ = _compare(studio.client, ["run: late", "base", "base"])
    rows = _table(scores)
    assert [r["model"] for r in rows] == ["run: late", "base"]  # a repeated model is drawn once
    assert "refl" in slots[0][0] and slots[2] == (None, None, None)
    base = next(r for r in rows if r["model"] == "base")
    late = next(r for r in rows if r["model"] == "run: late")
    # same prompt, seed and steps: the base is drawn again exactly (no adapter left switched on) ...
    if hasattr(studio, "base_scores"):
        for k in ("geometry", "alignment", "colorfulness"):
            assert base[k] == pytest.approx(studio.base_scores[k], abs=1e-4)
    # ... and the adapter changes the asset
    assert any(abs(late[k] - base[k]) > 1e-3 for k in ("geometry", "alignment", "colorfulness"))
    # the late adapter has no metrics.csv: its run shows no curve
    assert all(t["name"] != "run: late" for t in _figure(by_step)["data"])


@pytest.mark.parametrize("prompt, models, match", [
    ("  ", ["base"], "prompt is empty"),
    (PROMPT, [], "at least one model"),
    (PROMPT, ["base", "run: colour", "run: geo", "run: x", "run: y"], "at most 4"),
    (PROMPT, ["base", "run: nope"], "No model or LoRA named 'run: nope'"),
])
def test_bad_inputs_get_clear_messages(studio, prompt, models, match):
    with pytest.raises(Exception, match=match):
        studio.client.predict(prompt, 0, STEPS, models, FRAMES, api_name="/compare")


def test_curves_and_eval_table_without_runs():
    from app.catalogue import Entry
    from app.compare import curve_figures, eval_table

    by_step, by_wall = curve_figures([Entry("base", "base")])
    assert not by_step.data and "No reward curves" in by_step.layout.annotations[0].text
    assert eval_table([Entry("base", "base")]).empty


def test_reward_panels_draw_each_reward_as_the_single_figure_does():
    import pandas as pd

    from app.compare import _panels
    from app.curves import reward_figure

    a = pd.DataFrame({"step": [1, 2, 3], "wall_seconds": [1.0, 2.0, 3.5], "reward_mean": [0.1, 0.3, 0.2]})
    b = pd.DataFrame({"step": [1, 2], "wall_seconds": [2.0, 4.0], "reward_mean": [5.0, 6.0]})
    empty = pd.DataFrame(columns=["step", "wall_seconds", "reward_mean"])
    groups = {"geometry": [("a", a, False), ("none yet", empty, True)], "colorfulness": [("b", b, True)]}
    panels, single = _panels(groups, "wall_seconds"), reward_figure([*groups["geometry"], *groups["colorfulness"]], x="wall_seconds")

    def traces(fig):
        return [(t.name, t.line.color, t.line.dash, t.line.width, t.mode, tuple(t.x), tuple(t.y)) for t in fig.data]

    assert traces(panels) == traces(single)  # same runs, styles and colours (one per run, across panels)
    assert [t.yaxis for t in panels.data] == ["y", "y2"]
    assert [s.y0 for s in panels.layout.shapes] == [0.1, 5.0]  # each panel's base level: its runs' first step


def test_eval_table_reads_the_last_step_and_marks_what_is_missing(tmp_path):
    from app.catalogue import Entry
    from app.compare import eval_table

    (tmp_path / "config.json").write_text(json.dumps({"reward": "alignment:1,geometry:0.5"}))
    (tmp_path / "eval.csv").write_text("step,label,reward/alignment,reward/geometry,alignment,category_acc,color_acc,kid_vs_base,diversity\n"
                                       "3,run,0.5,0.25,0.5,1.0,0.5,0.01,\n1,run,0.1,0.2,0.1,0.0,0.0,0.02,0.3\n")
    rows = eval_table([Entry("run: x", "run", tmp_path / "adapter", tmp_path), Entry("upload: u", "upload", tmp_path / "u")]).to_dict("records")
    assert [r["row"] for r in rows] == ["base", "step 3", "no run folder"]
    assert rows[0]["held-out reward"] == "—" and rows[0]["alignment"] == "—"  # eval_at_end alone writes no base row
    assert rows[1]["held-out reward"] == "alignment 0.5, geometry 0.25" and rows[1]["diversity"] == "—"
    assert rows[1]["category acc"] == "1" and rows[2]["KID vs base"] == "—"
