"""Held-out evaluation of alignment runs: reproducible metrics, base vs adapters, run folders, the command line."""

import json
import math

import pandas as pd
import pytest
import torch

from engine.align.config import RunConfig
from engine.align.evaluate import (
    FIXED_METRICS,
    EvalSettings,
    RunEvaluator,
    evaluate_runs,
    main,
)
from engine.metrics import diversity
from engine.models import lora
from engine.models.splatter_ae import SplatterAutoencoder
from engine.models.tiny import TinySplatModel, tiny_transformer

PROMPTS = ["a red chair", "a blue car"]
REWARD_COLUMNS = ["reward/geometry", "reward/alignment", "reward/colorfulness"]
PAIRED = REWARD_COLUMNS + ["alignment", "dnc"]
METRICS = REWARD_COLUMNS + list(FIXED_METRICS) + [f"{kind}/{m}" for m in PAIRED for kind in ("delta", "delta_se")]


def settings(**kw):
    return EvalSettings(**{"prompts": PROMPTS, "seeds": [0, 1], "steps": 4, "resolution": 32} | kw)


def random_model(seed: int = 0) -> TinySplatModel:
    torch.manual_seed(seed)
    return TinySplatModel(tiny_transformer(num_layers=1, heads=2, head_dim=8), SplatterAutoencoder(width=16)).eval()


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds_per_asset"}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.values(), b.values()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A saved random base and two run folders made on it (each with its own random adapter), plus a
    run made on another base."""
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for base_seed, names in ((0, ("run_a", "run_b")), (1, ("other_base",))):
        base = root / f"base{base_seed}"
        random_model(base_seed).save_pretrained(base)
        for k, name in enumerate(names):
            model = TinySplatModel.from_pretrained(base)
            torch.manual_seed(10 + k)
            lora.add_lora(model, rank=2, init="random")
            lora.save_adapter(model, root / name / "adapter", meta={"method": "nabla-r2d3", "reward": "geometry", "step": 5})
            RunConfig(weights=str(base), reward="geometry").save(root / name / "config.json")
            folders[name] = root / name
    return folders


@pytest.fixture(scope="module")
def evaluator():
    """A random tiny model's evaluator; batches of 3 assets, so a batch spans two prompts."""
    return RunEvaluator(random_model(), settings(batch_size=3))


def test_base_against_itself_is_reproducible(evaluator):
    base = evaluator.base_metrics()
    assert list(base) == evaluator.metric_names() == METRICS
    assert all(isinstance(v, float) for v in base.values())
    assert base["assets"] == 4 and base["seconds_per_asset"] > 0
    assert abs(base["kid_vs_base"]) < 0.05  # the same features on both sides, up to KID's random subsets
    assert base["diversity"] > 0 and 0 <= base["category_acc"] <= 1 and 0 <= base["color_acc"] <= 1
    assert base["dnc"] == base["reward/geometry"]
    assert all(base[f"delta/{m}"] == 0 and base[f"delta_se/{m}"] == 0 for m in PAIRED)
    assert same(without_time(evaluator.evaluate()), without_time(base))  # sampled again: the same numbers
    rows = evaluator.asset_rows("base")
    assert [(r["prompt"], r["seed"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sum(r["alignment"] for r in rows) / 4 == pytest.approx(base["alignment"], rel=1e-5)
    assert evaluator.asset_rows("run") == rows  # the last evaluation: the base's weights again


def test_base_cache_samples_the_base_once_per_setting(tmp_path, monkeypatch):
    """A comparison's runs share their base's scores on disk; another setting or other weights sample anew."""
    model = random_model()
    first = RunEvaluator(model, settings(), base_cache=tmp_path)
    assert len(list(tmp_path.glob("base-*.safetensors"))) == 1
    calls = []
    original = RunEvaluator._sample_and_score
    monkeypatch.setattr(RunEvaluator, "_sample_and_score", lambda self, **kw: calls.append(1) or original(self, **kw))
    again = RunEvaluator(model, settings(), base_cache=tmp_path)
    assert calls == [] and same(again.base_metrics(), first.base_metrics())
    assert same(without_time(again.evaluate()), without_time(first.evaluate()))  # the run is still scored against it
    calls.clear()
    RunEvaluator(model, settings(seeds=[0, 2]), base_cache=tmp_path)
    RunEvaluator(random_model(seed=1), settings(), base_cache=tmp_path)
    decoder_changed = random_model()
    with torch.no_grad():  # the same denoiser with another decoder is another base
        next(p for n, p in decoder_changed.named_parameters() if not n.startswith("transformer")).add_(0.1)
    RunEvaluator(decoder_changed, settings(), base_cache=tmp_path)
    assert calls == [1, 1, 1] and len(list(tmp_path.glob("base-*.safetensors"))) == 4
    for path in tmp_path.glob("base-*.safetensors"):
        path.write_bytes(b"not safetensors")  # a damaged cache is sampled again, not trusted
    calls.clear()
    resampled = RunEvaluator(model, settings(), base_cache=tmp_path).base_metrics()
    assert same(without_time(resampled), without_time(first.base_metrics())) and calls == [1]


def test_an_adapter_changes_the_metrics_and_not_the_base(evaluator):
    before = evaluator.base_metrics()
    torch.manual_seed(3)
    lora.add_lora(evaluator.model, rank=2, init="random")
    try:
        tuned = evaluator.evaluate()
    finally:
        lora.remove_adapter(evaluator.model, "default")
    assert tuned["kid_vs_base"] > before["kid_vs_base"] + 1e-4
    assert tuned["alignment"] != before["alignment"] and tuned["reward/colorfulness"] != before["reward/colorfulness"]
    for m in PAIRED:  # paired change: its mean is the change of the means; its error is over the 2 prompts
        # the means are float32: their difference is exact only to float32 rounding of the larger (colorfulness ~100)
        rounding = 5e-7 * max(abs(tuned[m]), abs(before[m]), 1.0)
        assert tuned[f"delta/{m}"] == pytest.approx(tuned[m] - before[m], rel=1e-5, abs=rounding)
        assert tuned[f"delta_se/{m}"] > 0
    assert same(evaluator.base_metrics(), before)


def test_evaluate_runs_gives_base_and_each_run(runs):
    model = TinySplatModel.from_pretrained(runs["run_a"].parent / "base0")
    table = evaluate_runs([runs["run_a"], runs["run_b"]], settings(), model=model)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["label", "run"] + METRICS
    assert table["label"].tolist() == ["base", "run_a", "run_b"]
    assert table["run"].tolist() == ["", str(runs["run_a"]), str(runs["run_b"])]
    kid_base, kid_a, kid_b = table["kid_vs_base"].tolist()
    assert abs(kid_base) < 0.05 and kid_a > kid_base and kid_b > kid_base and kid_a != kid_b
    assert lora.adapter_names(model) == [] and lora.active_adapter(model) is None  # the given model as it was


def test_command_prints_json_and_writes_csv(runs, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "table" / "eval.csv"
    main(["--run", str(runs["run_a"]), "--prompts", str(prompts), "--seeds", "2", "--steps", "4", "--resolution", "32",
          "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == ["base", "run_a"]
    assert printed["run_a"]["run"] == str(runs["run_a"]) and printed["base"]["assets"] == 4
    table = pd.read_csv(out, keep_default_na=False)
    assert table["label"].tolist() == ["base", "run_a"] and list(table.columns) == ["label", "run"] + METRICS
    assert table["kid_vs_base"].tolist() == pytest.approx([printed["base"]["kid_vs_base"], printed["run_a"]["kid_vs_base"]])
    assert [p.name for p in out.parent.iterdir()] == ["eval.csv"]  # no temporary file left behind


def test_the_trainer_appends_base_and_run_rows_to_eval_csv(runs, tmp_path):
    from engine.align.trainer import Trainer

    prompts = tmp_path / "held_out.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    config = RunConfig(method="refl", reward="geometry", weights=str(runs["run_a"].parent / "base0"), steps=1, batch_size=2,
                       sampler_steps=4, render_resolution=24, sample_every=0, checkpoint_every=0, eval_every=1,
                       eval_prompts=str(prompts), eval_seeds=2)
    for _ in Trainer(config, tmp_path / "run").run():
        pass
    table = pd.read_csv(tmp_path / "run" / "eval.csv")
    assert list(table.columns) == ["step", "label"] + METRICS
    assert table["step"].tolist() == [0, 1] and table["label"].tolist() == ["base", "run"]
    assert table["assets"].tolist() == [4, 4]


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("no_adapter", "has no adapter/"),
    ("empty_prompts", "has no prompts"),
    ("zero_seeds", "--seeds 0"),
    ("other_base", "different base models"),
    ("bad_weights", "expected NAME=PATH"),
])
def test_command_refuses_bad_input(runs, tmp_path, capsys, case, message):
    run = str(runs["run_a"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    (tmp_path / "no_adapter").mkdir()
    RunConfig().save(tmp_path / "no_adapter" / "config.json")
    args = {
        "missing": ["--run", str(tmp_path / "nowhere")],
        "no_adapter": ["--run", str(tmp_path / "no_adapter")],
        "empty_prompts": ["--run", run, "--prompts", str(empty)],
        "zero_seeds": ["--run", run, "--seeds", "0"],
        "other_base": ["--run", run, "--run", str(runs["other_base"])],
        "bad_weights": ["--run", run, "--weights", "hpsv2"],
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--out", str(tmp_path / "eval.csv")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "eval.csv").exists()


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="Unknown reward 'nope'"):
        settings(rewards=("nope",))
    with pytest.raises(ValueError, match="seeds"):
        settings(seeds=[])
    with pytest.raises(ValueError, match="prompts"):
        settings(prompts=[])
    with pytest.raises(ValueError, match="steps = 0"):
        settings(steps=0)
    with pytest.raises(ValueError, match="cannot run here"):  # before any sampling
        RunEvaluator(random_model(), settings(rewards=("hpsv2",), reward_weights={"hpsv2": "/nowhere/hps.pt"}))


def test_diversity_is_the_mean_distance_between_seeds_of_a_prompt():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 3, 4, 8, generator=g)  # prompts, seeds, views, channels
    unit = torch.nn.functional.normalize(feats, dim=-1)
    pairs = [(a, b) for a in range(3) for b in range(a + 1, 3)]
    expected = torch.stack([(unit[:, a] - unit[:, b]).norm(dim=-1).mean() for a, b in pairs]).mean()
    assert diversity(feats) == pytest.approx(float(expected), rel=1e-6)
    assert diversity(feats[:, :1].expand(-1, 3, -1, -1)) == 0  # every seed the same asset
    with pytest.raises(ValueError, match="at least 2 seeds"):
        diversity(feats[:, :1])


def test_paired_change_is_over_prompts():
    from engine.align.evaluate import paired_change

    now, base = torch.tensor([[3.0, 5.0], [1.0, 1.0], [2.0, 4.0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    mean, se = paired_change(now, base)  # per-prompt changes 3, 0, 2
    assert mean == pytest.approx(5 / 3) and se == pytest.approx(torch.tensor([3.0, 0, 2]).std().item() / 3 ** 0.5)
    assert math.isnan(paired_change(now[:1], base[:1])[1])


def test_eps_kl_measures_the_adapters_distance_to_the_base_along_its_own_samples():
    model = random_model()
    ev = RunEvaluator(model, settings(eps_kl=True))
    assert ev.base_metrics()["eps_kl"] == 0 and "eps_kl" in ev.metric_names()
    torch.manual_seed(3)
    lora.add_lora(model, rank=2, init="random")
    tuned = ev.evaluate()
    assert tuned["eps_kl"] > 0 and list(tuned) == ev.metric_names()
    assert all(r["eps_kl"] > 0 for r in ev.asset_rows("run"))
    # by definition: the mean over steps and elements of (ε as sampled - the base's guided ε at the same states)²
    from engine.align.rollout import guided_eps
    from engine.generate import generate

    s = ev.settings
    prompts = [s.prompts[0]] * len(s.seeds)
    with torch.no_grad():
        traj = generate(model, prompts, s.seeds, steps=s.steps, guidance=s.guidance, record=True).trajectory
        B, N = traj.latents.shape[:2]
        with lora.adapters_disabled(model):
            ref = guided_eps(model, traj.latents.flatten(0, 1), traj.timesteps.repeat(B),
                             model.encode_prompts(prompts).select(torch.arange(B).repeat_interleave(N)),
                             model.encode_prompts([""]).repeat(B * N), traj.guidance)
    expected = (traj.model_outputs.flatten(0, 1) - ref).pow(2).flatten(1).mean(1).reshape(B, N).mean(1)
    torch.testing.assert_close(ev._eps_kl(traj, prompts), expected, rtol=1e-5, atol=1e-9)
    lora.set_adapter_scale(model, "default", 0.0)  # the base's own weights again: no distance
    assert ev.evaluate()["eps_kl"] == pytest.approx(0, abs=1e-10)
