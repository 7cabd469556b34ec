"""The Finetune tab through gradio_client against a served studio: a 2-step run that streams its metric
rows and saves a loadable adapter (listed for Generate at once), Stop mid-run, and bad inputs."""

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


def test_two_step_finetune_streams_rows_and_saves_a_loadable_adapter(studio):
    from app import finetune, generate
    from app.catalogue import catalogue
    from engine.generate import load_model
    from engine.models import lora

    t0 = time.perf_counter()
    job = studio.client.submit(method="nabla-r2d3", steps=2, sample_every=1, nabla_beta=1000, api_name="/finetune", **TINY)
    updates = list(job)  # every streamed update, the final one last
    status, figure, samples, table, zipped = job.result()
    seconds = time.perf_counter() - t0
    streamed = [len(_rows(u[3])) for u in updates if u[3] and u[3].get("data") is not None]
    assert 1 in streamed and 2 in streamed  # one row per step, as they happen
    rows = _rows(table)
    assert [r["step"] for r in rows] == [1, 2] and all("reward_mean" in r and "loss" in r for r in rows)
    assert "Run finished" in status and "run: " in status

    run = next(studio.runs.glob("*-nabla-r2d3-geometry"))
    label = f"run: {run.name}"
    assert json.loads((run / "config.json").read_text())["nabla"]["beta"] == 1000  # the knob reached the config
    assert (run / "checkpoint" / "trainer.json").is_file() and len((run / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_0000.png", "step_0001.png", "step_0002.png"]
    # listed for Generate (and Compare) at once, and loadable into a fresh base
    assert label in catalogue().entries() and label in generate.lora_choices("tiny")
    assert lora.read_adapter_info(run / "adapter")["step"] == 2
    lora.load_adapter(load_model("tiny"), run / "adapter", "x")
    with zipfile.ZipFile(zipped) as z:
        assert {"adapter_config.json", "adapter_model.safetensors", "r2d3_adapter.json"} <= set(z.namelist())
    # the before | now strip: two sample strips side by side
    import imageio.v3 as iio

    before = iio.imread(run / "samples" / "step_0000.png")
    assert iio.imread(samples).shape[1] == 2 * before.shape[1] + 8
    assert figure is not None
    assert not finetune.JOBS.busy and finetune.JOBS.current() is None
    print(f"2-step finetune through the API: {seconds:.1f} s")


def test_stop_mid_run_saves_a_resumable_run(studio):
    from app import finetune

    job = studio.client.submit(method="refl", steps=50, sample_every=0, api_name="/finetune", **TINY)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first streamed metric row
        outs = job.outputs()
        if outs and outs[-1][3] and outs[-1][3].get("data"):
            break
        time.sleep(0.5)
    else:
        pytest.fail("no metric row within 120 s")
    message = studio.client.predict(api_name="/stop_finetune")
    assert "Stopping after step" in message
    status, _, _, table, zipped = job.result(timeout=120)
    done = len(_rows(table))
    assert f"stopped at step {done}/50" in status and "--resume" in status and Path(zipped).is_file()
    run = next(studio.runs.glob("*-refl-geometry"))
    assert json.loads((run / "checkpoint" / "trainer.json").read_text())["step"] == done < 50
    assert len((run / "metrics.csv").read_text().splitlines()) == done + 1
    assert not finetune.JOBS.busy
    assert "No finetune of yours" in studio.client.predict(api_name="/stop_finetune")


@pytest.mark.parametrize("kwargs, message", [
    (dict(reward="hpsv2"), "cannot run here"),
    (dict(method="nabla-r2d3", nabla_beta=-1), r"nabla.beta = -1.0: must be >= 0"),
    (dict(method="grpo", batch_size=2), "multiple of grpo's group_size 4"),
    (dict(method="draft", draft_k=9), r"draft.k = 9: must be in \[1, 4\]"),
    (dict(prompt_source="my own list", prompts="\n# nothing\n"), "prompt list is empty"),
    (dict(prompt_source="my own list", prompts="a red chair\n" + "x" * 400), "Prompt 2"),
    (dict(lr=0), "lr = 0.0: must be > 0"),
])
def test_bad_inputs_get_clear_messages(studio, kwargs, message):
    args = {**TINY, "steps": 2, **kwargs}
    with pytest.raises(Exception, match=message):
        studio.client.predict(api_name="/finetune", **args)
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
    assert set(inspect.signature(finetune.run_finetune).parameters) >= set(knobs)  # every knob is an API parameter
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
    bound = inspect.signature(finetune.run_finetune).bind(method="nabla-r2d3", reward="colorfulness")
    bound.apply_defaults()
    values = {k: v for k, v in bound.arguments.items() if k not in ("request", "progress")}
    assert finetune.build_config(values, None).nabla.beta == 2.73e5  # an API call without nabla_beta
    assert finetune.build_config({**values, "nabla_beta": 10.0}, None).nabla.beta == 10.0


def test_a_closed_page_ends_the_run_saved_and_frees_the_server(tmp_path):
    """The page goes away mid-run (gradio drops the event's generator): the run still ends after its step,
    its folder is saved, and the next finetune can start. Also: the user's own prompt list is kept for --resume."""
    from app import catalogue, finetune

    catalogue.set_runs_dir(tmp_path / "runs")
    try:
        gen = finetune.run_finetune(method="refl", steps=50, sample_every=0, prompt_source=finetune.OWN,
                                    prompts="a red chair\n\n# a comment\na blue car", **TINY)
        next(update for update in gen if len(update[3]))  # the first metric row (the first yield has none)
        job = finetune.JOBS.current()
        gen.close()  # what dropping the event does
        job.thread.join(timeout=120)
        assert not job.thread.is_alive() and not finetune.JOBS.busy and finetune.JOBS.current() is None
        run = job.info["out"]
        step = json.loads((run / "checkpoint" / "trainer.json").read_text())["step"]
        assert 1 <= step < 50 and (run / "adapter" / "adapter_model.safetensors").is_file()
        config = json.loads((run / "config.json").read_text())
        assert Path(config["prompts"]).read_text().split("\n")[:2] == ["a red chair", "a blue car"]
    finally:
        catalogue.set_runs_dir(tmp_path / "unused")
