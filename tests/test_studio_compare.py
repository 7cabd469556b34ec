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
    with pytest.MonkeyPatch.context() as mp, _serve() as client:
        from app import evaluations

        # the studio's held-out settings, made small: 3 prompts x 1 seed, 2 steps
        mp.setattr(evaluations, "PROMPTS", ["a blue car", "a green tree", "a red chair"])
        mp.setattr(evaluations, "STEPS", 2)
        yield types.SimpleNamespace(client=client, root=root)
    catalogue.set_runs_dir(root / "unused")


def _compare(client, models, seed=0):
    out = client.predict(PROMPT, seed, STEPS, models, FRAMES, api_name="/compare")
    slots = [tuple(out[i:i + 3]) for i in range(0, 12, 3)]  # (title, video, views); the columns are not API values
    scores, plys, by_step, by_wall, evaluation, _verdict, info = out[12:]
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
        assert iio.imread(views).shape[1] == iio.imread(views).shape[0]  # 4 square views, 2 x 2
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

    # evaluation: the colour run's change from its eval.csv (its last run row, with delta columns); the geo run has none
    ev = _table(evaluation)
    assert [r["model"] for r in ev] == ["base", "run: colour", "run: geo"]
    colour = ev[1]
    assert colour["evaluated"] == "eval.csv (step 2)" and "±" in colour["Δ colorfulness"]
    assert colour["trained on"] == "colorfulness" and colour["category acc"] != "—"
    assert float(colour["KID vs base"]) == pytest.approx(0, abs=0.05)
    geo = ev[2]
    assert geo["evaluated"] == "not evaluated yet" and geo["Δ geometry"] == "—"

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



def test_evaluate_fills_the_deltas_and_a_second_click_reads_the_cache(studio):
    from app.evaluations import EVALUATIONS, RESULT_FILE, evaluations_dir

    t0 = time.perf_counter()
    status, table, verdict = studio.client.predict(["base", "run: geo"], api_name="/evaluate")
    seconds = time.perf_counter() - t0
    print(f"evaluate run: geo (3 prompts x 1 seed, 2 steps, base included): {seconds:.1f} s")
    assert "run: geo: evaluated" in status, status
    geo = next(r for r in _table(table) if r["model"] == "run: geo")
    assert geo["evaluated"] == "Evaluate (3 prompts × 1 seed, 2 steps)"
    for title in ("Δ geometry", "Δ alignment reward", "Δ colorfulness", "Δ alignment (cosine)"):
        assert "±" in geo[title], (title, geo[title])
    assert "Held-out change from the base" in verdict and "geometry" in verdict
    stored = json.loads((studio.root / "runs" / "geo" / RESULT_FILE).read_text())
    assert {"delta/reward/geometry", "delta_se/reward/geometry"} <= set(stored["run"]) and stored["settings"]["steps"] == 2
    assert list((evaluations_dir() / "base").glob("base-*.safetensors"))  # the base's scores, cached for the next run

    sampled, mtime = EVALUATIONS.sampled, (studio.root / "runs" / "geo" / RESULT_FILE).stat().st_mtime_ns
    again = studio.client.predict(["run: geo"], api_name="/evaluate")
    assert EVALUATIONS.sampled == sampled and (studio.root / "runs" / "geo" / RESULT_FILE).stat().st_mtime_ns == mtime
    assert _table(again[1])[1]["Δ geometry"] == geo["Δ geometry"]
    # the Compare table reads the stored evaluation too
    evaluation = _compare(studio.client, ["run: geo"])[5]
    assert _table(evaluation)[1]["Δ geometry"] == geo["Δ geometry"]


def test_evaluate_refuses_the_base_alone_and_reports_a_failure(studio, tmp_path):
    import shutil

    with pytest.raises(Exception, match="Choose a LoRA to evaluate"):
        studio.client.predict(["base"], api_name="/evaluate")
    # a run whose adapter is for another base: the job fails with the reason, in words, without server paths
    bad = studio.root / "runs" / "alien"
    shutil.copytree(studio.root / "runs" / "geo", bad)
    info = json.loads((bad / "adapter" / "r2d3_adapter.json").read_text())
    (bad / "adapter" / "r2d3_adapter.json").write_text(json.dumps({**info, "base_fingerprint": "0" * 16}))
    (bad / "compare_eval.json").unlink(missing_ok=True)
    status, *_ = studio.client.predict(["run: alien"], api_name="/evaluate")
    assert "run: alien: evaluation failed:" in status and "fingerprint" in status
    assert str(studio.root) not in status


def test_lora_scale_walks_from_the_base_to_the_adapter(studio):
    """α = 0 draws the base's asset, α = 1 the adapter's (the same scores as Compare's rows), between differs."""
    import imageio.v3 as iio

    if not (studio.root / "runs" / "late").exists():
        _random_adapter(studio.root / "runs" / "late" / "adapter")
    rows = {r["model"]: r for r in _table(_compare(studio.client, ["base", "run: late"])[1])}

    def at(alpha):
        views, info = studio.client.predict(PROMPT, 0, STEPS, "run: late", alpha, api_name="/lora_scale")
        assert iio.imread(views).shape[0] == iio.imread(views).shape[1] and f"α = {alpha:g}" in info
        return {k: float(v) for k, v in (part.split(" ") for part in info.rsplit(": ", 1)[1].rstrip(".").split(", "))}

    zero, one, half = at(0.0), at(1.0), at(0.5)
    for k in ("geometry", "colorfulness"):
        assert zero[k] == pytest.approx(rows["base"][k], rel=1e-3, abs=1e-3)  # the info shows 4 digits
        assert one[k] == pytest.approx(rows["run: late"][k], rel=1e-3, abs=1e-3)
    assert any(abs(half[k] - zero[k]) > 1e-4 and abs(half[k] - one[k]) > 1e-4 for k in ("geometry", "colorfulness"))
    from app.catalogue import catalogue, pool
    from engine.models import lora

    with pool().using(catalogue().get("run: late")) as model:  # the shared base's adapter is back at scale 1
        assert lora.adapter_scale(model, lora.active_adapter(model)) == 1.0
    with pytest.raises(Exception, match="greater than maximum value 1|0 <= α <= 1"):
        studio.client.predict(PROMPT, 0, STEPS, "run: late", 1.5, api_name="/lora_scale")
    with pytest.raises(Exception, match="no LoRA to scale"):
        studio.client.predict(PROMPT, 0, STEPS, "base", 0.5, api_name="/lora_scale")


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
    assert eval_table([Entry("base", "base")])[0].empty


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


def _run_folder(folder, reward, rows):
    """A run folder with a config.json and an eval.csv of ``rows`` (dicts)."""
    import pandas as pd

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"reward": reward}))
    pd.DataFrame(rows).to_csv(folder / "eval.csv", index=False)
    return folder


def _delta_row(step, **deltas):
    """An eval.csv run row: measure=(delta, se) for reward/geometry, reward/alignment, ..."""
    row = {"step": step, "label": "run", "category_acc": 1.0}
    for m, (d, se) in deltas.items():
        row[f"delta/{m.replace('__', '/')}"], row[f"delta_se/{m.replace('__', '/')}"] = d, se
    return row


def test_best_cell_tie_and_forgetting(tmp_path):
    from app.catalogue import Entry
    from app.compare import best_of, eval_table

    # best: the top interval clears the runner-up's; tie: they overlap; unknown: an interval is missing
    assert best_of({"base": (0.0, 0.0), "a": (0.10, 0.01), "b": (0.02, 0.01)}) == ("best", ["a"])
    assert best_of({"base": (0.0, 0.0), "a": (0.03, 0.01), "b": (0.02, 0.01)}) == ("tie", ["a", "b"])  # base's 0 lies below a's interval
    assert best_of({"base": (0.0, 0.0), "a": (0.03, None)}) == ("unknown", ["a", "base"])
    assert best_of({"base": (0.0, 0.0)}) == ("", [])

    # a Nabla run on alignment that gained alignment but lost geometry, and a geometry run that won geometry
    nabla = _run_folder(tmp_path / "nabla", "alignment", [_delta_row(
        20, reward__alignment=(0.005, 0.001), alignment=(0.004, 0.001), reward__geometry=(-0.12, 0.02))])
    geo = _run_folder(tmp_path / "geo", "geometry", [_delta_row(
        20, reward__alignment=(0.004, 0.002), alignment=(-0.001, 0.002), reward__geometry=(0.05, 0.01))])
    old = _run_folder(tmp_path / "old", "colorfulness", [  # an eval.csv from before the delta columns
        {"step": 0, "label": "base", "reward/geometry": 0.5, "reward/colorfulness": 50.0},
        {"step": 9, "label": "run", "reward/geometry": 0.4, "reward/colorfulness": 60.0}])
    entries = [Entry("base", "base")] + [Entry(f"run: {f.name}", "run", f / "adapter", f) for f in (nabla, geo, old)]
    table, verdict = eval_table(entries)
    rows = {r["model"]: r for r in table.to_dict("records")}
    assert list(rows) == ["base", "run: nabla", "run: geo", "run: old"]
    assert rows["run: geo"]["Δ geometry"] == "★ +0.05 ± 0.02"  # clear of the base's 0 and of the others
    assert rows["run: nabla"]["Δ geometry"] == "-0.12 ± 0.039"
    assert rows["run: nabla"]["Δ alignment reward"].endswith("(tie)") and rows["run: geo"]["Δ alignment reward"].endswith("(tie)")
    assert rows["run: old"]["Δ colorfulness"] == "+10" and rows["run: old"]["evaluated"] == "eval.csv (step 9), no interval"
    assert rows["base"]["Δ geometry"] == "0" and rows["run: old"]["Δ alignment (cosine)"] == "—"
    assert "★ **geometry**: run: geo won" in verdict and "**alignment reward**: a tie between run: nabla, run: geo (their" in verdict
    assert "**Forgetting**: run: nabla (trained on alignment) lost geometry: Δ -0.12 ± 0.039" in verdict
    assert "Possible forgetting: run: old (trained on colorfulness) dropped geometry -0.1 (no interval" in verdict
    assert "run: geo (trained on geometry) lost" not in verdict  # geo's alignment interval reaches above 0
    assert eval_table([Entry("base", "base")])[0].empty
    from app.compare import forgetting

    assert forgetting("g", "geometry", {"reward/geometry": (-0.07, 0.02)}) == [
        "⚠️ g lost geometry, which it was trained for: Δ -0.07 ± 0.039."]
    assert forgetting("g", "geometry", {"reward/alignment": (-0.01, 0.01)}) == []  # the interval reaches 0


def test_an_evaluation_waits_for_a_finetune_and_can_be_withdrawn(tmp_path, monkeypatch):
    """One job on the CPU at a time: an evaluation waits while a finetune trains or waits (saying so), and a stop
    then ends it before anything is loaded."""
    from app import catalogue
    from app.catalogue import Entry
    from app.evaluations import Evaluations, result_path

    monkeypatch.setattr(catalogue, "_catalogue", catalogue.Catalogue(tmp_path / "runs"))
    adapter = tmp_path / "uploads" / "u"
    adapter.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_bytes(b"{}")
    loads = []
    evals = Evaluations(make_model=lambda: loads.append(1), busy=lambda: "refl-colorfulness-1")
    job = evals.submit(Entry("upload: u", "upload", adapter))
    assert evals.submit(Entry("upload: u", "upload", adapter)) is job  # a second click follows the same job
    for _ in range(100):
        if "waiting for the finetune refl-colorfulness-1" in job.info["phase"]:
            break
        time.sleep(0.05)
    assert job.info["phase"] == "waiting for the finetune refl-colorfulness-1 to end"
    evals.queue.stop(job.name)
    assert evals.queue.wait_idle(10) and job.state == "stopped" and not loads
    assert result_path(Entry("upload: u", "upload", adapter)) == tmp_path / "evaluations" / "upload-u" / "compare_eval.json"
