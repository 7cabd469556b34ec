"""The Finetune tab through gradio_client against a served studio: a run is a server job (started with
/finetune, followed with /follow from any client, listed by /jobs, stopped with /stop, continued with /resume);
a 2-step run saves a loadable adapter (listed for Generate at once); runs queue one at a time; bad inputs."""

import inspect
import json
import time
import types
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("gradio")

# tiny runs: each step is a few seconds on a CPU
TINY = dict(reward="geometry", batch_size=1, sampler_steps=4, render_resolution=32)


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
    assert "Run finished" in status and f"run: {name}" in status

    run = studio.runs / name
    assert json.loads((run / "config.json").read_text())["nabla"]["beta"] == 1000  # the knob reached the config
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert _jobs(studio.client)[name]["state"] == "finished" and _jobs(studio.client)[name]["steps"] == 2
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
    assert finetune.on_reward_change("colorfulness")[0]["value"] == 2.73e5
    assert "value" not in finetune.on_reward_change("no-such")[0]  # a reward typed in: the value is kept
    bound = inspect.signature(finetune.start_finetune).bind(method="nabla-r2d3", reward="colorfulness")
    bound.apply_defaults()
    values = dict(bound.arguments)
    assert finetune.build_config(values, None).nabla.beta == 2.73e5  # an API call without nabla_beta
    assert finetune.build_config({**values, "nabla_beta": 10.0}, None).nabla.beta == 10.0


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
