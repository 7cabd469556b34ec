"""The base-model training command: every stage on a tiny config, and resuming after an interruption."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import engine.train_base as tb
from engine.evaluator import load_evaluator
from engine.models.tiny import TinySplatModel
from engine.sampling import sample

TINY = dict(num_objects=6, evaluator_images=6, ae_steps=4, ae_batch_views=4, diffusion_steps=4, diffusion_batch=2,
            evaluator_steps=2, evaluator_batch=4, checkpoint_every=2, transformer_layers=1)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "config.json").write_text(json.dumps(TINY))
    tb.main(["--work", str(root / "work"), "--out", str(root / "out"), "--config", str(root / "config.json")])
    return root


def test_training_exports_loadable_models(first_run):
    out = first_run / "out"
    model = TinySplatModel.from_pretrained(out)
    assert len(model.autoencoder.config.scaling_factor) == 8 and min(model.autoencoder.config.scaling_factor) > 0
    cond = model.encode_prompts(["a red chair"])
    latents = sample(model, cond, model.encode_prompts([""]), steps=2, generator=torch.Generator().manual_seed(0)).latents
    assert model.decode(latents).shape == (1, 4, 12, 64, 64)
    assert load_evaluator(out / "evaluator").classify(torch.ones(1, 3, 64, 64))["category"]
    assert json.loads((out / "train_config.json").read_text())["ae_steps"] == 4
    logs = (first_run / "work" / "diffusion_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logs] == [2, 4]


def test_interrupted_training_resumes_to_the_same_weights(first_run, tmp_path, monkeypatch):
    shutil.copytree(first_run / "work" / "data", tmp_path / "work" / "data")
    calls = {"n": 0}
    real = tb.ae_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        return real(*args, **kwargs)

    monkeypatch.setattr(tb, "ae_loss", flaky)
    argv = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--config", str(first_run / "config.json")]
    with pytest.raises(KeyboardInterrupt):
        tb.main(argv)
    monkeypatch.setattr(tb, "ae_loss", real)
    tb.main(argv)
    for part in ("autoencoder", "transformer"):
        a = load_file(str(first_run / "out" / part / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(tmp_path / "out" / part / "diffusion_pytorch_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_a_different_config_is_refused_in_the_same_work_folder(first_run, tmp_path):
    cfg = tmp_path / "other.json"
    cfg.write_text(json.dumps(TINY | {"seed": 1}))
    with pytest.raises(SystemExit, match="different config"):
        tb.main(["--work", str(first_run / "work"), "--stage", "data", "--config", str(cfg)])
