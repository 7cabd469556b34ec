"""LoRA adapters (engine/models/lora.py): training surface, switching, saving and loading in peft's format,
and the refusals that protect a user from a wrong, unsafe or broken adapter."""

import json
import shutil

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from engine.generate import load_model
from engine.generate import main as generate_cli
from engine.models.base import Condition
from engine.models.lora import (
    DEFAULT_TARGETS,
    active_adapter,
    adapter_names,
    adapter_scale,
    adapter_state,
    adapters_disabled,
    add_lora,
    base_fingerprint,
    denoiser_of,
    load_adapter,
    load_adapter_state,
    lora_parameters,
    read_adapter_info,
    remove_adapter,
    save_adapter,
    set_adapter_scale,
    use_adapter,
)
from engine.models.multiview import set_multiview_attention
from engine.models.splatter_ae import SplatterAutoencoder
from engine.models.tiny import DEFAULT_CHECKPOINT, TinySplatModel, tiny_transformer
from tests.test_diffsplat import release  # noqa: F401  (the tiny random DiffSplat releases, a fixture)

SHIPPED_TRANSFORMER = DEFAULT_CHECKPOINT / "transformer"


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return TinySplatModel(tiny_transformer(num_layers=1, heads=2, head_dim=8), SplatterAutoencoder(width=16)).eval()


def inputs(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *model.latent_shape, generator=g)
    cond = Condition(torch.randn(n, 5, 384, generator=g), torch.ones(n, 5, dtype=torch.long))
    return x, torch.tensor([700, 100][:n]), cond


def eps(model, seed=0):
    with torch.no_grad():
        return model.eps(*inputs(model, seed=seed))


def transformer_inputs(n_images=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_images, 14, 16, 16, generator=g), dict(
        encoder_hidden_states=torch.randn(n_images, 7, 384, generator=g), timestep=torch.full((n_images,), 500),
        encoder_attention_mask=torch.ones(n_images, 7, dtype=torch.long), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False)


@pytest.fixture
def saved(tmp_path):
    """A tiny model with a random (output-changing) adapter, saved; returns (folder, its eps)."""
    model = tiny_model()
    add_lora(model, rank=4, init="random")
    folder = save_adapter(model, tmp_path / "adapter", meta={"method": "nabla-r2d3", "reward": "geometry", "step": 7, "run": "runs/x"})
    return folder, eps(model)


# ------------------------------------------------------------------------------------------ training

def test_only_lora_parameters_train_and_receive_gradients():
    model = tiny_model()
    params = add_lora(model, rank=4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params} and all(p.dtype == torch.float32 for p in params)
    # rank 4 on every targeted layer of one PixArt block + embedders + proj_out: 17 layers, A and B each
    assert len(params) == 34 and sum(p.numel() for p in params) == 5536
    model.eps(*inputs(model)).square().mean().backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    lora = dict(denoiser_of(model).named_parameters())
    a = [p for n, p in lora.items() if ".lora_A." in n]
    b = [p for n, p in lora.items() if ".lora_B." in n]
    assert all(p.grad is not None for p in params)
    assert all(p.grad.abs().sum() > 0 for p in b)
    assert all(p.grad.abs().sum() == 0 for p in a)  # B = 0 at init, so A's gradient is 0 until B moves


def test_init_keeps_the_base_output_and_is_reproducible():
    model = tiny_model()
    base = eps(model)
    add_lora(model, rank=4, init="gaussian")
    assert torch.equal(eps(model), base)  # peft's LoRA B starts at zero
    state = adapter_state(model)
    a = torch.cat([v.flatten() for k, v in state.items() if ".lora_A." in k])
    assert all(v.abs().max() == 0 for k, v in state.items() if ".lora_B." in k)
    assert abs(a.std().item() - 1 / 4) < 0.02  # "gaussian": A ~ N(0, 1/rank)
    add_lora(model, name="kaiming", init="default")
    assert torch.equal(eps(model), base)
    add_lora(model, name="random", init="random")
    assert not torch.allclose(eps(model), base)


    def init_after_seed(seed):
        m = tiny_model()
        torch.manual_seed(seed)
        add_lora(m, rank=4)
        return adapter_state(m)

    first, again, other = init_after_seed(3), init_after_seed(3), init_after_seed(4)
    assert all(torch.equal(first[k], again[k]) for k in first) and not all(torch.equal(first[k], other[k]) for k in first)


def test_add_lora_refuses_bad_settings():
    model = tiny_model()
    for kwargs, match in [({"rank": 0}, "rank"), ({"alpha": -1}, "alpha"), ({"init": "pissa2"}, "init"), ({"dropout": 1.0}, "dropout"),
                          ({"targets": ["no_such_layer"]}, "do not fit"), ({"name": "a.b"}, "name")]:
        with pytest.raises(ValueError, match=match):
            add_lora(model, **kwargs)
    assert adapter_names(model) == [] and all(p.requires_grad for p in model.parameters())
    add_lora(model)
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        add_lora(model)


def test_multiview_attention_survives_lora():
    model = tiny_model()
    add_lora(model, init="random")
    x, t, cond = inputs(model, n=1)
    x2 = x.clone()
    x2[:, 3] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model.eps(x2, t[:1], cond)[:, 0], model.eps(x, t[:1], cond)[:, 0])  # view 0 sees view 3


# ----------------------------------------------------------------------------------------- switching

def test_two_adapters_switch_and_disabling_gives_the_base():
    base = eps(tiny_model())
    single = {}
    for name, seed in (("a", 1), ("b", 2)):
        m = tiny_model()
        torch.manual_seed(seed)
        add_lora(m, name=name, init="random", rank=2 + seed)
        single[name] = eps(m)
    model = tiny_model()
    torch.manual_seed(1)
    add_lora(model, name="a", init="random", rank=3)
    torch.manual_seed(2)
    add_lora(model, name="b", init="random", rank=4)
    assert adapter_names(model) == ["a", "b"] and active_adapter(model) == "b"
    assert torch.equal(eps(model), single["b"])
    use_adapter(model, "a")
    assert torch.equal(eps(model), single["a"]) and active_adapter(model) == "a"
    assert all(p.requires_grad for p in lora_parameters(model, "a")) and not any(p.requires_grad for p in lora_parameters(model, "b"))
    with adapters_disabled(model):
        assert torch.equal(eps(model), base) and active_adapter(model) is None
    assert torch.equal(eps(model), single["a"]) and all(p.requires_grad for p in lora_parameters(model, "a"))
    use_adapter(model, None)
    assert torch.equal(eps(model), base)
    with pytest.raises(ValueError, match="No adapter named 'c'"):
        use_adapter(model, "c")
    use_adapter(model, "b")
    remove_adapter(model, "b")
    assert adapter_names(model) == ["a"] and active_adapter(model) is None and torch.equal(eps(model), base)


@pytest.mark.parametrize("lean", [True, False])
def test_adapter_scale_walks_from_the_base_to_the_adapter(lean):
    """alpha 0 gives the base's output and 1 the adapter's, on the lean forward (whose folded weight W + s·B·A is
    cached: a scale change must fold anew, also after a call at another scale) and on diffusers' stock one."""
    model = tiny_model()
    model.lean_forward = lean
    base = eps(model)
    add_lora(model, rank=4, init="random")
    full = eps(model)
    assert not torch.allclose(full, base)
    set_adapter_scale(model, "default", 0.0)
    assert torch.equal(eps(model), base) and adapter_scale(model, "default") == 0.0
    set_adapter_scale(model, "default", 0.5)
    half = eps(model)
    assert not torch.allclose(half, base) and not torch.allclose(half, full)
    assert adapter_scale(model, "default") == 0.5
    set_adapter_scale(model, "default", 1.0)
    assert torch.equal(eps(model), full)
    with pytest.raises(ValueError, match="not a finite number"):
        set_adapter_scale(model, "default", float("nan"))
    with pytest.raises(ValueError, match="No adapter named 'x'"):
        set_adapter_scale(model, "x", 0.5)


def test_adapter_state_round_trip_is_strict():
    model = tiny_model()
    add_lora(model, init="random")
    state, out = adapter_state(model), eps(model)
    for p in lora_parameters(model):
        p.data.zero_()
    assert not torch.equal(eps(model), out)
    load_adapter_state(model, state)
    assert torch.equal(eps(model), out)
    state[next(iter(state))] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="other shapes"):
        load_adapter_state(model, state)
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state(model, dict(list(adapter_state(model).items())[1:]))


def test_base_fingerprint_ignores_lora_and_precision_but_sees_the_weights():
    model = tiny_model()
    before = base_fingerprint(model)
    add_lora(model, init="random")
    assert base_fingerprint(model) == before
    assert base_fingerprint(tiny_model().to(torch.bfloat16)) == before  # one checkpoint, any float precision
    assert base_fingerprint(tiny_model(seed=1)) != before
    with torch.no_grad():
        denoiser_of(model).proj_out.base_layer.weight[0, 0] += 1.0  # in place: the cache must notice
    assert base_fingerprint(model) != before


# -------------------------------------------------------------------------------------- save / load

def test_saved_adapter_loads_into_a_fresh_model_with_identical_outputs(saved):
    folder, out = saved
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "r2d3_adapter.json"]
    info = read_adapter_info(folder)
    assert info["base_model"] == "tiny" and info["base_fingerprint"] == base_fingerprint(tiny_model())
    assert (info["rank"], info["alpha"], info["method"], info["reward"], info["step"], info["run"]) == (4, 4, "nabla-r2d3", "geometry", 7, "runs/x")
    assert info["targets"] == sorted(DEFAULT_TARGETS)
    fresh = tiny_model()
    assert load_adapter(fresh, folder) == "default"
    assert torch.equal(eps(fresh), out) and active_adapter(fresh) == "default"
    assert load_adapter(fresh, folder, "second", activate=False) == "second"
    assert active_adapter(fresh) == "default" and not any(p.requires_grad for p in lora_parameters(fresh, "second"))


def test_save_replaces_an_adapter_folder_and_refuses_anything_else(saved, tmp_path):
    folder, _ = saved
    model = tiny_model()
    add_lora(model)
    save_adapter(model, folder, meta={"step": 8})
    assert read_adapter_info(folder)["step"] == 8 and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an adapter folder"):
        save_adapter(model, other)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="meta may not set"):
        save_adapter(model, tmp_path / "x", meta={"rank": 3})


def test_adapter_loads_with_plain_peft_onto_the_shipped_denoiser(tmp_path):
    model = TinySplatModel.from_pretrained()
    torch.manual_seed(0)
    add_lora(model, init="random")
    save_adapter(model, tmp_path / "adapter")
    x, kwargs = transformer_inputs()
    with torch.no_grad():
        ours = model.transformer(x, **kwargs)[0]
        peft_model = PeftModel.from_pretrained(PixArtTransformer2DModel.from_pretrained(SHIPPED_TRANSFORMER), tmp_path / "adapter")
        set_multiview_attention(peft_model.base_model.model, 4)
        theirs = peft_model(x, **kwargs)[0]
        fresh = TinySplatModel.from_pretrained()
        load_adapter(fresh, tmp_path / "adapter")
        reloaded = fresh.transformer(x, **kwargs)[0]
        with adapters_disabled(model):
            base = model.transformer(x, **kwargs)[0]
    assert torch.equal(theirs, ours) and torch.equal(reloaded, ours) and not torch.allclose(base, ours)


def test_a_plain_peft_adapter_loads_with_a_warning(tmp_path):
    torch.manual_seed(0)
    peft_model = get_peft_model(PixArtTransformer2DModel.from_pretrained(SHIPPED_TRANSFORMER),
                                LoraConfig(r=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "plain")
    set_multiview_attention(peft_model.base_model.model, 4)
    model = TinySplatModel.from_pretrained()
    with pytest.warns(UserWarning, match="plain peft adapter"):
        load_adapter(model, tmp_path / "plain")
    assert read_adapter_info(tmp_path / "plain")["base_fingerprint"] is None
    x, kwargs = transformer_inputs()
    with torch.no_grad():
        assert torch.equal(model.transformer(x, **kwargs)[0], peft_model(x, **kwargs)[0])


# ------------------------------------------------------------------------------------------ refusals

def _refused(model, folder, error, match, **kwargs):
    before = eps(model)
    with pytest.raises(error, match=match):
        load_adapter(model, folder, **kwargs)
    assert adapter_names(model) == [] and torch.equal(eps(model), before)  # nothing was loaded


def test_adapter_for_another_base_is_refused(saved):
    _refused(tiny_model(seed=1), saved[0], ValueError, r"made for the base model 'tiny' with fingerprint [0-9a-f]{16}")


def test_pickle_and_missing_files_are_refused(saved, tmp_path):
    folder, _ = saved
    model = tiny_model()
    _refused(model, tmp_path / "nowhere", FileNotFoundError, "No adapter folder")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "adapter_config.json", pickled)
    torch.save(load_file(folder / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    _refused(model, pickled, ValueError, "adapter_model.bin is a pickle")
    (pickled / "adapter_model.bin").unlink()
    _refused(model, pickled, FileNotFoundError, "adapter_model.safetensors is missing")
    (folder / "adapter_config.json").unlink()
    _refused(model, folder, FileNotFoundError, "adapter_config.json is missing")


def test_wrong_shapes_corrupt_files_and_size_are_refused(saved, tmp_path):
    folder, _ = saved
    model = tiny_model()
    _refused(model, folder, ValueError, "over the 0 MB limit", max_bytes=100)
    weights = folder / "adapter_model.safetensors"
    good = weights.read_bytes()
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(5, *tensors[key].shape[1:])
    save_file(tensors, weights)
    _refused(model, folder, ValueError, "with other shapes")
    weights.write_bytes(good[: len(good) // 2])
    _refused(model, folder, ValueError, "adapter_model.safetensors")
    weights.write_bytes(b"not a safetensors file at all")
    _refused(model, folder, ValueError, "not a readable safetensors file")
    weights.write_bytes(good)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"r": 8}))
    _refused(model, folder, ValueError, "mixes two adapters")
    (folder / "r2d3_adapter.json").unlink()  # a plain peft folder whose config no longer fits its weights
    with pytest.warns(UserWarning):
        _refused(model, folder, ValueError, "other shapes")


def test_loading_under_a_taken_name_is_refused(saved):
    model = tiny_model()
    load_adapter(model, saved[0])
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        load_adapter(model, saved[0])
    assert adapter_names(model) == ["default"]


# ---------------------------------------------------------------------------------------- DiffSplat

def test_bf16_diffsplat_pixart_trains_fp32_lora(release):
    model = load_model("diffsplat-pas", release, text_encoder=release / "t5", dtype="bf16", device="cpu")
    params = add_lora(model)
    assert params and all(p.dtype == torch.float32 for p in params)
    out = model.eps(torch.randn(1, 4, 4, 8, 8), torch.tensor([500]), model.encode_prompts(["a red chair"]))
    out.square().mean().backward()
    assert out.dtype == torch.float32 and all(p.grad is not None for p in params)


def test_sd15_unet_targets_and_round_trip(release, tmp_path):
    model = load_model("diffsplat-sd15", release, text_encoder=release / "clip", device="cpu")
    add_lora(model, init="random")
    adapted = {k.rsplit(".lora_", 1)[0] for k in adapter_state(model)}
    assert "down_blocks.0.attentions.0.proj_in" in adapted and "time_embedding.linear_1" in adapted  # 1x1 conv, embedder
    assert "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj" in adapted
    assert not any("resnets" in k or "conv_in" in k for k in adapted)
    cond = model.encode_prompts(["a blue car"])
    x = torch.randn(1, 4, 4, 8, 8)
    with torch.no_grad():
        out = model.eps(x, torch.tensor([300]), cond)
    save_adapter(model, tmp_path / "sd15")
    fresh = load_model("diffsplat-sd15", release, text_encoder=release / "clip", device="cpu")
    load_adapter(fresh, tmp_path / "sd15")
    with torch.no_grad():
        assert torch.equal(fresh.eps(x, torch.tensor([300]), cond), out)


# ------------------------------------------------------------------------------------------ the CLI

def test_generate_command_with_lora(tmp_path, capsys):
    import imageio.v3 as iio

    model = TinySplatModel.from_pretrained()
    torch.manual_seed(0)
    add_lora(model, init="random")
    save_adapter(model, tmp_path / "adapter")
    args = ["--prompt", "a red chair", "--steps", "2", "--frames", "1", "--resolution", "32"]
    generate_cli(args + ["--out", str(tmp_path / "base")])
    generate_cli(args + ["--lora", str(tmp_path / "adapter"), "--out", str(tmp_path / "tuned")])
    assert json.loads((tmp_path / "tuned" / "generation.json").read_text())["lora"] == str(tmp_path / "adapter")
    assert json.loads((tmp_path / "base" / "generation.json").read_text())["lora"] is None
    assert (iio.imread(tmp_path / "base" / "views.png") != iio.imread(tmp_path / "tuned" / "views.png")).any()

    other = tiny_model()
    add_lora(other)
    save_adapter(other, tmp_path / "other")
    with pytest.raises(SystemExit) as exit_info:
        generate_cli(args + ["--lora", str(tmp_path / "other"), "--out", str(tmp_path / "refused")])
    assert exit_info.value.code == 2 and "was made for the base model" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
