"""The base-model training command: every stage on a tiny config of the v2 recipe, resuming after an
interruption, snapshots of an unfinished run, and the evaluation bench's figures."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import engine.train_base as tb
from bench import eval_base
from engine.core.gaussians import quats_from_rotmat
from engine.core.sampling import sample
from engine.core.text import default_text_encoder
from engine.evaluator import load_evaluator
from engine.models.tiny import TinySplatModel

TINY = dict(num_objects=6, evaluator_images=6, ae_steps=4, ae_batch_views=4, diffusion_steps=4, diffusion_batch=2,
            evaluator_steps=2, evaluator_batch=4, checkpoint_every=2, transformer_layers=1, warmup_steps=2,
            ae_normal_weight=1.0)  # the normal-loss path stays exercised (the v2 preset turns it off)


def _argv(root, work="work", out="out"):
    return ["--work", str(root / work), "--out", str(root / out), "--preset", "v2", "--config", str(root / "config.json")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "config.json").write_text(json.dumps(TINY))
    tb.main(_argv(root))
    return root


def test_training_exports_loadable_models(first_run):
    out = first_run / "out"
    model = TinySplatModel.from_pretrained(out)
    assert len(model.autoencoder.config.scaling_factor) == 8 and min(model.autoencoder.config.scaling_factor) > 0
    assert model.guidance_default == tb.PRESETS["v2"].get("guidance_default", tb.TrainBaseConfig.guidance_default)
    cond = model.encode_prompts(["a red chair"])
    latents = sample(model, cond, model.encode_prompts([""]), steps=2, generator=torch.Generator().manual_seed(0)).latents
    assert model.decode(latents).shape == (1, 4, 12, 64, 64)
    assert load_evaluator(out / "evaluator").classify(torch.ones(1, 3, 64, 64))["category"]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["ae_steps"] == 4 and saved["cache_text"] is True and saved["ae_normal_weight"] == 1.0
    logs = (first_run / "work" / "diffusion_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logs] == [2, 4]


def test_interrupted_training_resumes_to_the_same_weights(first_run, tmp_path, monkeypatch):
    shutil.copytree(first_run / "work" / "data", tmp_path / "work" / "data")
    shutil.copy(first_run / "config.json", tmp_path / "config.json")
    calls = {"n": 0}
    real = tb.ae_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        return real(*args, **kwargs)

    monkeypatch.setattr(tb, "ae_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        tb.main(_argv(tmp_path))
    monkeypatch.setattr(tb, "ae_loss", real)
    tb.main(_argv(tmp_path))
    for part in ("autoencoder", "transformer"):
        a = load_file(str(first_run / "out" / part / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(tmp_path / "out" / part / "diffusion_pytorch_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_a_new_recipe_keeps_the_evaluator_when_its_settings_are_unchanged(first_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(first_run / "out", out)
    judge = (out / "evaluator" / "diffusion_pytorch_model.safetensors").read_bytes()
    monkeypatch.setattr(tb, "stage_evaluator", lambda *a, **k: pytest.fail("the evaluator was retrained"))
    tb.main(_argv(first_run, out=out) + ["--stage", "export"])  # same evaluator settings: kept, not retrained
    assert (out / "evaluator" / "diffusion_pytorch_model.safetensors").read_bytes() == judge
    assert tb.kept_evaluator(tb.config_from("v2", TINY), out)
    assert not tb.kept_evaluator(tb.config_from("v2", TINY | {"evaluator_steps": 3}), out)
    assert not tb.kept_evaluator(tb.config_from("v2", TINY), tmp_path / "empty")


def test_snapshot_writes_the_ema_weights_without_training(first_run, tmp_path):
    before = (first_run / "work" / "diffusion_state.safetensors").stat().st_mtime_ns
    tb.main(_argv(first_run) + ["--snapshot", str(tmp_path / "snap")])
    assert (first_run / "work" / "diffusion_state.safetensors").stat().st_mtime_ns == before
    snap = load_file(str(tmp_path / "snap" / "transformer" / "diffusion_pytorch_model.safetensors"))
    shipped = load_file(str(first_run / "out" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(snap[k], shipped[k]) for k in shipped)  # the run is finished: its EMA is what was exported
    assert json.loads((tmp_path / "snap" / "train_config.json").read_text())["snapshot_diffusion_step"] == 4
    TinySplatModel.from_pretrained(tmp_path / "snap")


def test_a_different_config_is_refused_in_the_same_work_folder(first_run, tmp_path):
    cfg = tmp_path / "other.json"
    cfg.write_text(json.dumps(TINY | {"seed": 1}))
    with pytest.raises(SystemExit, match="different config"):
        tb.main(["--work", str(first_run / "work"), "--stage", "data", "--preset", "v2", "--config", str(cfg)])
    cfg.write_text(json.dumps(TINY | {"guidance_default": 3.0}))  # an export setting, not a training one
    tb.main(["--work", str(first_run / "work"), "--snapshot", str(tmp_path / "snap"), "--preset", "v2", "--config", str(cfg)])
    assert TinySplatModel.from_pretrained(tmp_path / "snap").guidance_default == 3.0
    cfg.write_text(json.dumps({"diffusion_stepz": 3}))
    with pytest.raises(SystemExit, match="diffusion_stepz"):
        tb.main(["--work", str(tmp_path / "w"), "--config", str(cfg)])


def test_surfel_normals_are_the_third_rotation_axis_whatever_the_quaternion_sign():
    R = torch.linalg.qr(torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(0)))[0]
    R = R * torch.linalg.det(R).sign()[:, None, None]
    q = quats_from_rotmat(R).T[None, :, :, None]  # [1, 4, 6, 1] as splatter channels
    for sign in (1, -1):
        n = tb.surfel_normals(sign * q)[0, :, :, 0].T
        assert torch.allclose(n, R[:, :, 2], atol=1e-5)


def test_cached_caption_tokens_match_the_encoder_where_the_mask_is_on():
    enc = default_text_encoder()
    prompts = ["a red chair", "", "a render of a blue car with black wheels", "a red chair"]
    emb, mask = enc.tokens(prompts)
    cached = tb.CaptionTokens(enc)
    c_emb, c_mask = cached.tokens(prompts)
    assert torch.equal(c_mask, mask) and len(cached.cache) == 3
    assert torch.allclose(c_emb * mask[..., None], emb * mask[..., None], atol=1e-5)
    assert not c_emb[mask == 0].any()


def test_learning_rate_warms_up_then_follows_a_cosine_to_the_floor():
    f = [tb.lr_factor(i, 100, 10, 0.1) for i in range(100)]
    assert f[0] == pytest.approx(0.1, abs=0.01) and max(f) == f[9] > 0.95 and f[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))


def test_diversity_is_zero_for_identical_seeds_and_grows_with_differences():
    base = torch.randn(3, 1, 4, 16, generator=torch.Generator().manual_seed(0))
    assert eval_base.diversity(base.expand(3, 4, 4, 16)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(3, 4, 4, 16, generator=torch.Generator().manual_seed(1))
    assert eval_base.diversity(base.expand(3, 4, 4, 16) + 0.1 * other) < eval_base.diversity(other)
    with pytest.raises(ValueError, match="2 seeds"):
        eval_base.diversity(base)


def test_eval_base_compares_two_checkpoints_with_one_judge(first_run, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red chair\n")
    out = str(first_run / "out")
    eval_base.main(["--prompts", str(prompts), "--seeds", "2", "--steps", "2", "--timing", "0",
                    "--checkpoint", out, "--checkpoint", out, "--sheet", str(tmp_path / "sheet.png")])
    result = json.loads(capsys.readouterr().out)
    assert result["evaluator"].endswith("evaluator") and result["diversity_ground_truth"] > 0
    a, b = result["models"]
    assert a == b and a["checkpoint"] == out  # the same folder twice: the same figures, judged the same way
    assert {"category_accuracy", "diversity", "diversity_ratio", "autoencoder_psnr", "autoencoder_dnc", "dnc"} <= a.keys()
    from PIL import Image

    sheets = sorted(tmp_path.glob("sheet.*.png"))  # one per checkpoint: a row per prompt, colours | normals per seed
    assert len(sheets) == 2 and Image.open(sheets[0]).size == (260 + 2 * 2 * 128, 128)
