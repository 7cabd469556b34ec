"""The Finetune tab through gradio_client against a served studio: a run is a server job (started with
/finetune, followed with /follow from any client, listed by /jobs, stopped with /stop, continued with /resume);
a 2-step run saves a loadable adapter (listed for Generate at once); runs queue one at a time; bad inputs."""

import inspect
import json
import re
import time
import types
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("gradio")

# tiny runs: each step is a few seconds on a CPU (no held-out check unless a test asks for one)
TINY = dict(reward="geometry", batch_size=1, sampler_steps=4, render_resolution=32, eval_every=0)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from app import catalogue
    from tests.test_app import _serve

    root = tmp_path_factory.mktemp("finetune")
    catalogue.set_runs_dir(root / "runs")
    with _serve() as client:
        yield types.SimpleNamespace(client=client, runs=root / "runs")
    catalogue.set_runs_dir(root / "unused")


def _rows(table) -> list[dict]:
    return [dict(zip(table["headers"], row)) for row in table["data"]]


def _jobs(client) -> dict[str, dict]:
    return {r["run"]: r for r in _rows(client.predict(api_name="/jobs"))}


def _wait(client, name, predicate, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = _jobs(client).get(name)
        if row is not None and predicate(row):
            return row
        time.sleep(0.5)
    pytest.fail(f"{name}: condition not met within {timeout} s; last {_jobs(client).get(name)}")


def test_two_step_finetune_runs_on_the_server_and_saves_a_loadable_adapter(studio):
    from app import finetune, generate
    from app.catalogue import catalogue
    from engine.generate import load_model
    from engine.models import lora

    t0 = time.perf_counter()
    name = studio.client.predict(method="nabla-r2d3", steps=2, sample_every=1, nabla_beta=1000, api_name="/finetune", **TINY)
    follow = studio.client.submit(name, api_name="/follow")  # any client may follow any run
    updates = list(follow)  # every streamed update, the final one last
    status, figure, samples, table, zipped = follow.result()
    seconds = time.perf_counter() - t0
    assert len(updates) >= 2
    rows = _rows(table)
    assert [r["step"] for r in rows] == [1, 2] and all("reward_mean" in r and "loss" in r for r in rows)
    assert "Run finished" in status and "The adapter is in the Generate and Compare lists as **Yours · Nabla-R2D3 on geometry, step 2" in status

    run = studio.runs / name
    assert json.loads((run / "config.json").read_text())["nabla"]["beta"] == 1000  # the knob reached the config
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert _jobs(studio.client)[name]["state"] == "finished" and _jobs(studio.client)[name]["steps"] == 2
    shipped = {k: v for k, v in _jobs(studio.client).items() if k.startswith("shipped: ")}  # after the server's own
    assert "shipped: geometry/nabla-r2d3" in shipped and all(v["state"].startswith("shipped (read-only") for v in shipped.values())
    assert (run / "checkpoint" / "trainer.json").is_file() and len((run / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_0000.png", "step_0001.png", "step_0002.png"]
    # listed for Generate (and Compare) at once, and loadable into a fresh base
    assert f"run: {name}" in catalogue().entries() and f"run: {name}" in generate.lora_choices("tiny")
    assert lora.read_adapter_info(run / "adapter")["step"] == 2
    lora.load_adapter(load_model("tiny"), run / "adapter", "x")
    with zipfile.ZipFile(zipped) as z:
        assert {"adapter_config.json", "adapter_model.safetensors", "r2d3_adapter.json"} <= set(z.namelist())
    # the before | now strip: two sample strips side by side
    import imageio.v3 as iio

    before = iio.imread(run / "samples" / "step_0000.png")
    assert iio.imread(samples).shape[1] == 2 * before.shape[1] + 8
    assert figure is not None
    assert finetune.QUEUE.current() is None
    print(f"2-step finetune through the API: {seconds:.1f} s")


def test_stop_from_another_client_then_resume_continues_the_curve(studio):
    """The run goes on without the client that started it; a second client stops it; /resume continues it
    from its checkpoint, and a finished run trains longer with a new total: rows 1..N once each."""
    from gradio_client import Client

    name = studio.client.predict(method="refl", steps=50, sample_every=0, api_name="/finetune", **TINY)
    other = Client(studio.client.src, verbose=False)
    _wait(other, name, lambda r: r["state"] == "running" and r["steps"] >= 1)
    assert "Stopping run" in other.predict(name, api_name="/stop")
    row = _wait(other, name, lambda r: r["state"] == "stopped")
    done = row["steps"]
    run = studio.runs / name
    assert json.loads((run / "checkpoint" / "trainer.json").read_text())["step"] == done < 50
    assert len((run / "metrics.csv").read_text().splitlines()) == done + 1
    assert "has stopped" in other.predict(name, api_name="/stop")  # nothing left to stop

    assert studio.client.predict(name, done + 1, api_name="/resume") == name  # one more step, then finished
    _wait(studio.client, name, lambda r: r["state"] == "finished")
    steps = [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, done + 2))  # no duplicates, no gaps
    with pytest.raises(Exception, match="give more steps to train it longer"):
        studio.client.predict(name, None, api_name="/resume")


def test_runs_queue_one_at_a_time_and_a_waiting_one_can_be_withdrawn(studio):
    from app import finetune

    first = studio.client.predict(method="refl", steps=3, sample_every=0, api_name="/finetune", **TINY)
    second = studio.client.predict(method="refl", steps=2, sample_every=0, seed=1, api_name="/finetune", **TINY)
    third = studio.client.predict(method="refl", steps=2, sample_every=0, seed=2, api_name="/finetune", **TINY)
    jobs = _jobs(studio.client)
    assert jobs[third]["state"].startswith("queued (")  # behind the others
    assert "withdrawn" in studio.client.predict(third, api_name="/stop")
    assert third not in _jobs(studio.client) and not (studio.runs / third).exists()
    assert finetune.QUEUE.wait_idle(timeout=300)
    jobs = _jobs(studio.client)
    assert jobs[first]["state"] == jobs[second]["state"] == "finished"
    first_ended = json.loads((studio.runs / first / "status.json").read_text())["ended"]
    assert first_ended <= json.loads((studio.runs / second / "status.json").read_text())["started"]  # one at a time


def test_a_run_cut_off_by_a_dead_server_reads_killed_and_resumes(studio):
    from app import finetune

    name = studio.client.predict(method="refl", steps=50, sample_every=0, api_name="/finetune", **TINY)
    _wait(studio.client, name, lambda r: r["state"] == "running" and r["steps"] >= 1)
    studio.client.predict(name, api_name="/stop")
    done = _wait(studio.client, name, lambda r: r["state"] == "stopped")["steps"]
    status_file = studio.runs / name / "status.json"
    # what a server killed mid-step leaves: a "running" status and no job that trains it
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "state": "running", "pid": 999999}))
    finetune.QUEUE.forget(name)  # as after a restart: this server never trained it
    assert _jobs(studio.client)[name]["state"] == "killed"
    studio.client.predict(name, done + 1, api_name="/resume")
    assert _wait(studio.client, name, lambda r: r["state"] == "finished")["steps"] == done + 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(reward="hpsv2"), "cannot run here"),
    (dict(method="nabla-r2d3", nabla_beta=-1), r"nabla.beta = -1.0: must be >= 0"),
    (dict(method="grpo", batch_size=2), "multiple of grpo's group_size 4"),
    (dict(method="draft", draft_k=9), r"draft.k = 9: must be in \[1, 4\]"),
    (dict(prompt_source="my own list", prompts="\n# nothing\n"), "prompt list is empty"),
    (dict(prompt_source="my own list", prompts="a red chair\n" + "x" * 400), "Prompt 2"),
    (dict(lr=0), "lr = 0.0: must be > 0"),
])
def test_bad_inputs_get_clear_messages(studio, kwargs, message, capfd):
    args = {**TINY, "steps": 2, **kwargs}
    capfd.readouterr()
    with pytest.raises(Exception, match=message):
        studio.client.predict(api_name="/finetune", **args)
    assert "Traceback" not in capfd.readouterr().err  # a refused input is not a fault: no traceback in the log
    assert not list(studio.runs.glob("*-grpo-*")) and not list(studio.runs.glob("*-draft-*"))  # nothing was made


def test_method_knobs_come_from_the_methods_declarations():
    from app import finetune
    from engine.align.config import RunConfig
    from engine.align.methods import METHODS

    assert list(finetune.method_knobs()) == list(METHODS)
    knobs = {finetune.param(k): k for ks in finetune.method_knobs().values() for k in ks}
    assert knobs["nabla_reg"].default == RunConfig().nabla.reg and knobs["draft_k"].default == 1
    assert knobs["ddpo_clip_range"].default == RunConfig().ddpo.clip_range
    assert "reward temperature" in knobs["nabla_beta"].meta.help and knobs["nabla_beta"].title == "β (beta)"
    assert knobs["grpo_std"].meta.choices == ("global", "group")  # a dropdown, from the declaration
    assert set(inspect.signature(finetune.start_finetune).parameters) >= set(knobs)  # every knob is an API parameter
    updates = finetune.on_method_change("grpo", 2)
    assert [u["visible"] for u in updates[:-1]] == [m == "grpo" for m in METHODS] and updates[-1]["value"] == 4


def test_nabla_beta_follows_the_reward_scale():
    """β is declared per unit of the reward's usual range (3e7, engine/align/methods/nabla.py): the tab shows the
    chosen reward's value, and an API call that leaves it out gets the same from RunConfig.validate()."""
    from app import finetune

    beta = {finetune.param(k): k for ks in finetune.method_knobs().values() for k in ks}["nabla_beta"]
    assert finetune.reward_default(beta, "colorfulness") == 2.73e5 and finetune.reward_default(beta, "geometry") == 3e7
    assert finetune.reward_default(beta, "alignment") == 5e7 and finetune.reward_default(beta, "no-such") is None
    assert finetune.on_reward_change("colorfulness")[0]["value"] == "2.73e5"  # readable notation, not 273000
    assert "value" not in finetune.on_reward_change("no-such")[0]  # a reward typed in: the value is kept
    bound = inspect.signature(finetune.start_finetune).bind(method="nabla-r2d3", reward="colorfulness")
    bound.apply_defaults()
    values = dict(bound.arguments)
    assert finetune.build_config(values, None).nabla.beta == 2.73e5  # an API call without nabla_beta
    assert finetune.build_config({**values, "nabla_beta": 10.0}, None).nabla.beta == 10.0
    assert finetune.build_config({**values, "nabla_beta": "5e7"}, None).nabla.beta == 5e7  # the page's text box


def test_the_users_own_prompt_list_is_kept_beside_the_runs_for_resume(studio):
    name = studio.client.predict(method="refl", steps=1, sample_every=0, prompt_source="my own list",
                                 prompts="a red chair\n\n# a comment\na blue car", api_name="/finetune", **TINY)
    _wait(studio.client, name, lambda r: r["state"] == "finished")
    config = json.loads((studio.runs / name / "config.json").read_text())
    assert Path(config["prompts"]).read_text().split("\n")[:2] == ["a red chair", "a blue car"]


def test_a_run_starts_from_an_uploaded_config_and_a_bad_one_is_refused_with_the_engines_message(studio, tmp_path):
    from gradio_client import handle_file

    from app import finetune
    from engine.align.config import RunConfig

    cfg = RunConfig(method="refl", reward="geometry", steps=1, batch_size=1, sampler_steps=4, render_resolution=32,
                    sample_every=0, seed=3)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    name = studio.client.predict(handle_file(str(tmp_path / "config.json")), api_name="/finetune_config")
    _wait(studio.client, name, lambda r: r["state"] == "finished")
    saved = json.loads((studio.runs / name / "config.json").read_text())
    assert saved["seed"] == 3 and saved["steps"] == 1 and saved["method"] == "refl"
    assert finetune.files_of(name)[:2] == [str(studio.runs / name / n) for n in ("config.json", "metrics.csv")]  # downloads
    with pytest.raises(Exception, match="Tick"):
        studio.client.predict(name, False, api_name="/delete")  # not without the confirmation
    assert "is deleted" in studio.client.predict(name, True, api_name="/delete")
    assert not (studio.runs / name).exists() and name not in _jobs(studio.client)
    for data, message in (({**cfg.to_dict(), "lr": 0}, r"lr = 0(\.0)?: must be > 0"),
                          ({**cfg.to_dict(), "metod": "x"}, "Unknown config key"),
                          ({**cfg.to_dict(), "model": "diffsplat-pas"}, "the studio trains the embedded tiny model")):
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(Exception, match=message):
            studio.client.predict(handle_file(str(tmp_path / "bad.json")), api_name="/finetune_config")


def test_held_out_checks_are_written_during_a_studio_finetune_and_not_counted_as_step_time(studio, monkeypatch):
    """eval_every through the API: eval.csv gets the base's row (step 0) and one per check, with the paired change
    and its standard error; the status states the change with its 95% interval; a check's time is not step time."""
    from engine.align.evaluate import RunEvaluator

    slow, pause = RunEvaluator.evaluate, 1.5

    def evaluate(self):  # each check takes 1.5 s longer: the step times must not grow by it
        time.sleep(pause)
        return slow(self)

    monkeypatch.setattr(RunEvaluator, "evaluate", evaluate)
    t0 = time.perf_counter()
    name = studio.client.predict(method="refl", steps=2, sample_every=0, **{**TINY, "eval_every": 1}, eval_seeds=1,
                                 prompt_source="my own list", prompts="a red chair\na green dumbbell",
                                 heldout_prompts="a black chair\na purple dumbbell", api_name="/finetune")
    status = studio.client.predict(name, api_name="/follow")[0]  # the last update: the run has ended
    seconds = time.perf_counter() - t0
    import csv

    rows = list(csv.DictReader((studio.runs / name / "eval.csv").open()))
    assert [(r["step"], r["label"]) for r in rows] == [("0", "base"), ("1", "run"), ("2", "run")]
    assert float(rows[0]["delta/reward/geometry"]) == 0 and all(r["delta_se/reward/geometry"] for r in rows)
    assert float(rows[0]["assets"]) == 2  # 2 held-out prompts x 1 seed
    config = json.loads((studio.runs / name / "config.json").read_text())
    assert Path(config["eval_prompts"]).read_text().split("\n")[:2] == ["a black chair", "a purple dumbbell"]
    wall = float((studio.runs / name / "metrics.csv").read_text().splitlines()[-1].split(",")[1])
    assert wall < seconds - 2 * pause  # wall_seconds: the train steps alone
    assert re.search(r"Held-out geometry at step 2 \(2 prompts × 1 seed not trained on\): [+-][\d.e+-]+ vs the base, "
                     r"95% interval \[[+-][\d.e+-]+, [+-][\d.e+-]+\]: \*\*(a gain|no measurable change|a measurable drop)", status), status
    assert "held-out" in _jobs(studio.client)[name] and _jobs(studio.client)[name]["held-out"]


def test_held_out_prompts_must_not_be_training_prompts(studio):
    with pytest.raises(Exception, match="'a red chair' is also a training prompt"):
        studio.client.predict(**{**TINY, "eval_every": 2}, steps=2, prompt_source="my own list", prompts="a red chair",
                              heldout_prompts="a blue flower\na red chair", api_name="/finetune")
    with pytest.raises(Exception, match="held-out prompt list is empty"):
        studio.client.predict(**{**TINY, "eval_every": 2}, steps=2, heldout_prompts=" ", api_name="/finetune")


@pytest.mark.parametrize("delta, se, words", [
    (0.05, 0.01, "**a gain**"), (0.01, 0.02, "**no measurable change (the interval holds 0)**"),
    (-0.05, 0.01, "**a measurable drop**"), (0.05, float("nan"), "no interval (one prompt)"),
])
def test_the_held_out_sentence_calls_a_gain_only_when_the_interval_excludes_zero(delta, se, words):
    import pandas as pd

    from app import heldout

    frame = pd.DataFrame([{"step": 0, "label": "base", "reward/alignment": 0.5, "delta/reward/alignment": 0.0,
                           "delta_se/reward/alignment": 0.0},
                          {"step": 10, "label": "run", "reward/alignment": 0.5 + delta, "delta/reward/alignment": delta,
                           "delta_se/reward/alignment": se}])
    text = heldout.summary("alignment", frame, 4, 2)
    assert text.startswith("Held-out alignment at step 10 (4 prompts × 2 seeds not trained on): ") and words in text, text
    if se == se:
        low, high = delta - 1.96 * se, delta + 1.96 * se
        assert f"95% interval [{heldout._num(low)}, {heldout._num(high)}]" in text
    assert heldout.summary("alignment", frame.head(1)) == ""  # only the base: nothing to say yet


def test_presets_fill_the_form_and_the_default_is_the_demo(monkeypatch):
    from app import finetune, presets

    assert list(presets.PRESETS)[0] == presets.DEMO == "Demo: Nabla-R2D3 on alignment (10 steps)"
    params = inspect.signature(finetune.start_finetune).parameters
    demo = presets.PRESETS[presets.DEMO]
    for key in ("method", "reward", "steps", "lr", "batch_size", "sampler_steps", "eval_every", "prompts", "heldout_prompts"):
        assert params[key].default == demo[key], key  # an API call without settings runs the demo
    assert params["method"].default == "nabla-r2d3"
    monkeypatch.setattr(finetune, "FORM_FIELDS", [*finetune.FIXED_PARAMS, "nabla_beta", "draft_k"])
    monkeypatch.setattr(finetune, "_READABLE", {"nabla_beta"})
    for name, values in presets.PRESETS.items():
        updates = dict(zip(finetune.FORM_FIELDS, finetune.on_preset(name)))
        for key in finetune.FIXED_PARAMS:
            assert updates[key]["value"] == values[key], (name, key)
        assert "value" not in updates["draft_k"]  # a field the preset does not name is left as it is
        cfg = finetune.build_config({k: u.get("value") for k, u in updates.items()}, None)  # a valid run
        assert (cfg.method, cfg.reward, cfg.steps) == (values["method"], values["reward"], values["steps"])
    assert dict(zip(finetune.FORM_FIELDS, finetune.on_preset(presets.DEMO)))["nabla_beta"]["value"] == finetune.readable(demo["nabla_beta"])
    with pytest.raises(ValueError, match="Preset 'x': choose one of"):
        finetune.preset_values("x")
    assert finetune.readable(5e7) == "5e7" and finetune.readable(2.73e5) == "2.73e5" and finetune.readable(1e-3) == "0.001"
