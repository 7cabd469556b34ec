"""Rewards: the interface, the offline rewards, the real ones on tiny random open_clip models, ensembles."""

import importlib.util
import json
import math
import random

import pytest
import torch

from engine.cameras import canonical_views
from engine.data.primitives import Scene
from engine.data.raycast import raycast_views, splatter_maps
from engine.data.world import HELD_OUT, ObjectSpec, build, caption
from engine.gaussians import Gaussians
from engine.render import RenderOutput, render
from engine.rewards import (REWARDS, AestheticReward, AlignmentReward, ClipScoreReward, ColorfulnessReward, Ensemble,
                            GeometryReward, HPSv2Reward, MissingWeights, Reward, RewardInputs, build_ensemble, build_reward,
                            list_rewards, parse_ensemble, score_assets)
from engine.rewards.__main__ import main as rewards_cli
from engine.rewards.openclip import ClipConfig, ClipTokenizer, OpenClip, load_open_clip, preprocess
from engine.rewards.preference import AestheticHead
from engine.splatter import decode_splatter

CAMS = canonical_views()


def _object_renders(spec: ObjectSpec, res: int = 48, jitter: float = 0.0) -> RenderOutput:
    """Renders [1, 4] of the ground-truth splats of a world object, optionally with jittered rotations."""
    g = decode_splatter(splatter_maps(Scene.pack(build(spec)), CAMS, res)[None], CAMS)
    if jitter:
        noise = torch.randn(g.quats.shape, generator=torch.Generator().manual_seed(1))
        g = Gaussians(g.means, g.scales, torch.nn.functional.normalize(g.quats + jitter * noise, dim=-1), g.opacities, g.colors)
    with torch.no_grad():
        return render(g, CAMS, 64)


@pytest.fixture(scope="module")
def mushroom():
    return _object_renders(ObjectSpec("mushroom", "red", "white", 0))


def _inputs(renders: RenderOutput, prompt: str = "a red mushroom") -> RewardInputs:
    flat = renders.flatten()
    return RewardInputs(flat.rgb, [prompt] * len(flat.rgb), flat.alpha, flat.depth, flat.normal, CAMS)


def _check_gradient(fn, x: torch.Tensor, directions: int = 2, eps: float = 1e-6) -> None:
    """Autograd's directional derivative equals the central finite difference (float64)."""
    x = x.detach().double().requires_grad_()
    (grad,) = torch.autograd.grad(fn(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    for _ in range(directions):
        d = torch.randn(x.shape, generator=g, dtype=x.dtype)
        with torch.no_grad():
            fd = (fn(x + eps * d).sum() - fn(x - eps * d).sum()) / (2 * eps)
        assert torch.allclose((grad * d).sum(), fd, rtol=1e-4, atol=1e-7), ((grad * d).sum().item(), fd.item())


# ------------------------------------------------------------------------------------------- interface

def test_interface_validates_inputs(mushroom):
    inp = _inputs(mushroom)
    geo = GeometryReward()
    with pytest.raises(ValueError, match="needs depth, normal"):
        geo(inp.images, alpha=inp.alpha, cameras=inp.cameras)
    with pytest.raises(ValueError, match=r"images must be \[N, 3, H, W\]"):
        ColorfulnessReward()(inp.images[:, :2])
    with pytest.raises(ValueError, match="alpha must be"):
        ColorfulnessReward()(inp.images, alpha=inp.alpha[:, :, :10])
    with pytest.raises(ValueError, match="one prompt per render"):
        ColorfulnessReward()(inp.images, ["one prompt"])
    with pytest.raises(ValueError, match="float"):
        ColorfulnessReward()((inp.images * 255).to(torch.uint8))
    for name in ("geometry", "colorfulness"):
        r = build_reward(name)
        assert isinstance(r, Reward) and r.info().name == name
        assert r(inp.images, inp.prompts, alpha=inp.alpha, depth=inp.depth, normal=inp.normal, cameras=inp.cameras).shape == (4,)


def test_every_reward_declares_itself():
    for name, cls in REWARDS.items():
        assert cls.name == name and cls.value_range[0] < cls.value_range[1] and cls.description
        assert set(cls.needs) <= {"images", "prompts", "alpha", "depth", "normal", "cameras"}


# ------------------------------------------------------------------------------------------- geometry

def test_geometry_prefers_flat_oriented_splats():
    spec = ObjectSpec("cup", "blue", None, 0)
    flat = score_assets(GeometryReward(), _object_renders(spec), ["a cup"], CAMS)
    jittered = score_assets(GeometryReward(), _object_renders(spec, jitter=0.5), ["a cup"], CAMS)
    assert flat.item() > 0.8 and jittered.item() < flat.item() - 0.1


def test_geometry_angle_mask(mushroom):
    inp = _inputs(mushroom)
    full = GeometryReward().score_inputs(inp)
    masked = GeometryReward(max_angle=60).score_inputs(inp)
    assert not torch.allclose(full, masked) and (masked > full - 0.05).all()  # grazing pixels are the noisy ones
    with pytest.raises(ValueError, match="max_angle"):
        GeometryReward(max_angle=120)


@pytest.mark.parametrize("detach_depth", [True, False])
def test_geometry_gradient(mushroom, detach_depth):
    inp = _inputs(mushroom)
    reward = GeometryReward(detach_depth=detach_depth, max_angle=70)
    cams = inp.cameras.to(torch.float64)
    alpha, depth = inp.alpha.double(), inp.depth.double()
    _check_gradient(lambda n: reward(inp.images.double(), alpha=alpha, depth=depth, normal=n, cameras=cams), inp.normal)
    if not detach_depth:  # through depth = alpha * z, as the renderer moves them (d/d depth grows as 1/alpha)
        z = depth / alpha.clamp_min(1e-6)
        _check_gradient(lambda z: reward(inp.images.double(), alpha=alpha, depth=alpha * z, normal=inp.normal.double(), cameras=cams), z)


# --------------------------------------------------------------------------------------- colorfulness

def test_colorfulness_orders_images():
    grey = torch.full((1, 3, 16, 16), 0.5)
    pastel = torch.tensor([0.8, 0.6, 0.6]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    vivid = torch.zeros(1, 3, 16, 16)
    vivid[:, 0, :, :8] = 1
    vivid[:, 1, :, 8:] = 1
    s = ColorfulnessReward()(torch.cat([grey, pastel, vivid]))
    assert s[0] < 1 and s[0] < s[1] < s[2] and s[2] > 100


def test_colorfulness_only_counts_the_object():
    img = torch.ones(1, 3, 16, 16)
    img[:, :, 4:12, 4:12] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    alpha = torch.zeros(1, 1, 16, 16)
    alpha[:, :, 4:12, 4:12] = 1
    solid = ColorfulnessReward()(img, alpha=alpha)
    assert solid.item() == pytest.approx(0.3 * math.hypot(0.8 * 255, 0.5 * 1.0 * 255 - 0.1 * 255), rel=1e-3)
    assert ColorfulnessReward()(img).item() > solid.item()  # the white background adds spread


def test_colorfulness_gradient(mushroom):
    inp = _inputs(mushroom)
    _check_gradient(lambda x: ColorfulnessReward()(x, alpha=inp.alpha.double()), inp.images)


# ------------------------------------------------------------------------------------------ alignment

def test_alignment_ranks_matching_prompt_first():
    rng = random.Random(0)
    specs = [ObjectSpec(c, col, None, i) for i, (c, col) in enumerate(sorted(HELD_OUT)[:8])]
    prompts = [caption(s, rng) for s in specs]
    images = torch.stack([raycast_views(Scene.pack(build(s)), CAMS[:1], 64)["rgb"][0] for s in specs])
    reward = AlignmentReward()
    scores = torch.stack([reward(images, [p] * len(specs)) for p in prompts])  # [prompt, image]
    wins = (scores.diagonal()[None, :] > scores).sum() / (len(specs) * (len(specs) - 1))
    assert wins > 0.9


def test_alignment_gradient_and_cache(mushroom):
    reward = AlignmentReward()
    reward.evaluator.double()
    images = mushroom.flatten().rgb[:2]
    _check_gradient(lambda x: reward(x, ["a red mushroom", "a blue cup"]), images)
    assert set(reward._prompts.cache) == {"a red mushroom", "a blue cup"}
    with pytest.raises(ValueError, match="needs prompts"):
        reward(images)
    with pytest.raises(FileNotFoundError, match="No evaluator"):
        AlignmentReward("/nonexistent")


# --------------------------------------------------------------------------- multi-view and ensembles

class _RecordingReward(Reward):
    name = "recording"

    def score(self, inputs):
        self.seen = inputs.images[:, 0, 0, 0].clone()
        return inputs.images[:, 0, 0, 0]


def _marked_renders(B=3, V=4):
    rgb = torch.zeros(B, V, 3, 4, 4)
    rgb[:, :, 0, 0, 0] = torch.arange(B * V, dtype=torch.float32).view(B, V)  # value = view id
    z = torch.zeros(B, V, 1, 4, 4)
    return RenderOutput(rgb, z, z, torch.zeros(B, V, 3, 4, 4))


def test_score_assets_aggregates_and_subsamples():
    r = _RecordingReward()
    renders = _marked_renders()
    assert torch.equal(score_assets(r, renders, ["a"] * 3, CAMS), torch.tensor([1.5, 5.5, 9.5]))
    assert torch.equal(score_assets(r, renders, ["a"] * 3, CAMS, aggregate="max"), torch.tensor([3.0, 7.0, 11.0]))
    s = score_assets(r, renders, ["a"] * 3, CAMS, views=2, generator=torch.Generator().manual_seed(0))
    seen = r.seen.view(3, 2)
    assert len(r.seen) == 6 and torch.equal(s, seen.mean(1))
    assert all(len(set(row.tolist())) == 2 and all(4 * b <= v < 4 * b + 4 for v in row.tolist()) for b, row in enumerate(seen))
    again = score_assets(r, renders, ["a"] * 3, CAMS, views=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)
    with pytest.raises(ValueError, match="views must be"):
        score_assets(r, renders, ["a"] * 3, CAMS, views=5)
    with pytest.raises(ValueError, match="one prompt per asset"):
        score_assets(r, renders, ["a"], CAMS)


def test_ensemble_normalises_and_weights(mushroom):
    inp = _inputs(mushroom)
    geo, col = GeometryReward(), ColorfulnessReward()
    ens = Ensemble([(geo, 2.0), (col, 0.5)])
    parts = ens.components(inp)
    expected = 2.0 * parts["geometry"] + 0.5 * parts["colorfulness"] / 110.0
    assert torch.allclose(parts["total"], expected) and torch.allclose(ens.score_inputs(inp), expected)
    assert ens.needs == ("images", "alpha", "depth", "normal", "cameras") and ens.value_range == (0.0, 2.5)
    raw = Ensemble([(geo, 1.0), (col, 1.0)], normalisation="none").score_inputs(inp)
    assert torch.allclose(raw, parts["geometry"] + parts["colorfulness"])

    class Lower(ColorfulnessReward):
        name, higher_is_better = "dullness", False

    flipped = Ensemble([(Lower(), 1.0)]).score_inputs(inp)
    assert torch.allclose(flipped, 1 - parts["colorfulness"] / 110.0)
    with pytest.raises(ValueError, match="once"):
        Ensemble([(geo, 1.0), (GeometryReward(), 1.0)])


def test_ensemble_specs():
    assert parse_ensemble("geometry:0.5, colorfulness") == [("geometry", 0.5), ("colorfulness", 1.0)]
    with pytest.raises(ValueError, match="Unknown reward 'beauty'"):
        parse_ensemble("beauty:1")
    with pytest.raises(ValueError, match="Bad weight"):
        parse_ensemble("geometry:lots")
    assert isinstance(build_ensemble("colorfulness"), ColorfulnessReward)
    ens = build_ensemble("alignment:1,geometry:0.5,colorfulness:0.25", {"geometry": {"max_angle": 60}})
    assert isinstance(ens, Ensemble) and ens.terms[1].reward.max_angle == 60
    renders = _object_renders(ObjectSpec("apple", "green", None, 3))
    s = score_assets(ens, renders, ["a green apple"], CAMS, views=2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1,) and torch.isfinite(s).all()


# ------------------------------------------------------------------- real rewards on tiny random models

TINY = ClipConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_head_width=16,
                  text_width=32, text_heads=4, text_layers=2, context_length=16, vocab_size=512 + 4 + 2)
MERGES = [("r", "e"), ("c", "h"), ("ch", "a"), ("e", "d</w>")]


def _tiny_folder(path, filename, text=True, save="pickle"):
    """A random tiny open_clip model saved as its checkpoint would be, with config and merges beside it."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = OpenClip(TINY, text=text)
    sd = model.state_dict()
    if save == "pickle":
        torch.save({"state_dict": {"module." + k: v.half() for k, v in sd.items()}, "epoch": 3}, path / filename)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path / filename))
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY.to_open_clip()}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    return model


def test_tokenizer_format():
    tok = ClipTokenizer(MERGES, context_length=16)
    ids = tok(["A  RED chair!", "red " * 40])
    assert ids.shape == (2, 16) and tok.vocab_size == TINY.vocab_size
    sot, eot = tok.sot, tok.eot
    first = ids[0].tolist()
    assert first[0] == sot and first.index(eot) == len(tok.encode("a red chair!")) + 1 and first[-1] == 0
    assert tok.encode("red") == [tok.encoder["re"], tok.encoder["d</w>"]] and tok.encode("a") == [tok.encoder["a</w>"]]
    assert tok.encode("chair") == [tok.encoder["cha"], tok.encoder["i"], tok.encoder["r</w>"]]
    assert ids[1, -1] == eot and (ids[1] != 0).all()  # truncated, still closed by end-of-text


def test_preprocess_fits():
    x = torch.rand(2, 3, 40, 60)
    for fit in ("crop", "pad", "stretch"):
        assert preprocess(x, 32, fit).shape == (2, 3, 32, 32)
    padded = preprocess(torch.ones(1, 3, 20, 40), 32, "pad", mean=(0, 0, 0), std=(1, 1, 1))
    assert padded[0, :, :8].abs().max() == 0 and padded[0, :, 8:24].min() > 0.99
    assert preprocess(x.half(), 32).dtype == torch.float32


def test_hpsv2_loads_released_layout(tmp_path):
    model = _tiny_folder(tmp_path / "hps", "HPS_v2.1_compressed.pt")
    reward = build_reward("hpsv2", weights=tmp_path / "hps")
    assert isinstance(reward, HPSv2Reward) and reward.model.visual.proj.dtype == torch.float32
    assert not any(p.requires_grad for p in reward.parameters())
    images = torch.rand(3, 3, 64, 64, requires_grad=True)
    s = reward(images, ["a red chair", "a red chair", "a cat"])
    assert s.shape == (3,) and s.abs().max() <= 1 + 1e-5
    s.sum().backward()
    assert images.grad.abs().sum() > 0
    # same numbers as the model it was saved from (fp16 storage aside)
    with torch.no_grad():
        ref = model.half().float().encode_image(preprocess(images, 32, "pad"))
        assert torch.allclose(reward.image_embeds(images), ref, atol=1e-5)
    with pytest.raises(MissingWeights, match="HPS_v2_compressed.pt"):
        build_reward("hpsv2", weights=tmp_path / "hps", version="v2.0")


def test_clip_and_aesthetic_load(tmp_path):
    _tiny_folder(tmp_path / "clip", "open_clip_model.safetensors", save="safetensors")
    clip = ClipScoreReward.from_weights(tmp_path / "clip")
    images = torch.rand(2, 3, 48, 40)
    assert clip(images, ["a red chair", "a cup"]).shape == (2,)
    ok, detail = ClipScoreReward.available(tmp_path / "clip")
    assert ok and "merges.txt" in detail

    _tiny_folder(tmp_path / "aes", "open_clip_pytorch_model.bin", text=False)
    head = AestheticHead(TINY.embed_dim).eval()
    torch.save(head.state_dict(), tmp_path / "aes" / "sac+logos+ava1-l14-linearMSE.pth")
    aes = build_reward("aesthetic", weights=tmp_path / "aes")
    assert isinstance(aes, AestheticReward) and not aes.model.has_text
    assert aes(images).shape == (2,)
    with torch.no_grad():
        emb = aes.model.encode_image(preprocess(images, 32, "stretch", antialias=False))
        assert torch.allclose(aes(images), head(emb)[:, 0], atol=1e-6)


@pytest.mark.parametrize("name", ["hpsv2", "aesthetic", "clip"])
def test_real_reward_gradients(tmp_path, name):
    filename = {"hpsv2": "HPS_v2.1_compressed.pt", "aesthetic": "open_clip_model.safetensors", "clip": "open_clip_model.safetensors"}[name]
    _tiny_folder(tmp_path, filename, save="pickle" if name == "hpsv2" else "safetensors")
    if name == "aesthetic":
        from safetensors.torch import save_file

        save_file(AestheticHead(TINY.embed_dim).state_dict(), str(tmp_path / "sac+logos+ava1-l14-linearMSE.safetensors"))
    reward = build_reward(name, weights=tmp_path).double()
    _check_gradient(lambda x: reward(x, ["a red chair", "a blue cup"]), torch.rand(2, 3, 40, 40))


def test_missing_and_wrong_weights(tmp_path):
    with pytest.raises(MissingWeights, match=r"HPS_v2\.1_compressed\.pt.*xswu/HPSv2"):
        HPSv2Reward.from_weights(tmp_path)
    with pytest.raises(MissingWeights, match="sac\\+logos"):
        _tiny_folder(tmp_path / "only_clip", "open_clip_model.safetensors", save="safetensors")
        AestheticReward.from_weights(tmp_path / "only_clip")
    # a checkpoint of another size is refused before anything loads, naming the mismatch
    _tiny_folder(tmp_path / "other", "HPS_v2.1_compressed.pt")
    (tmp_path / "other" / "open_clip_config.json").unlink()
    with pytest.raises(ValueError, match="does not match the expected model"):
        HPSv2Reward.from_weights(tmp_path / "other", model_name="ViT-B-32")
    (tmp_path / "bad.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain tensor checkpoint"):
        load_open_clip(tmp_path / "bad.bin", TINY)
    with pytest.raises(ValueError, match="Unsupported open_clip configuration"):
        ClipConfig.from_open_clip({"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext"}, "text_cfg": {}})


def test_list_rewards_and_cli(tmp_path, capsys):
    infos = {i.name: i for i in list_rewards()}
    assert set(infos) == set(REWARDS) and all(infos[n].available for n in ("geometry", "alignment", "colorfulness"))
    _tiny_folder(tmp_path, "HPS_v2.1_compressed.pt")
    assert {i.name: i for i in list_rewards({"hpsv2": tmp_path})}["hpsv2"].available
    assert rewards_cli(["--list", "--json", "--weights", f"hpsv2={tmp_path}"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(REWARDS) and rows[3]["available"]
    assert rewards_cli(["--list"]) == 0
    assert "geometry      available" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        rewards_cli(["--weights", "beauty=/x"])


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None or importlib.util.find_spec("torchvision") is None,
                    reason="open_clip (and a torchvision that loads) not installed")
def test_matches_open_clip(tmp_path):
    try:
        import open_clip
        from open_clip import factory
    except Exception as e:  # a torchvision built for another torch fails here
        pytest.skip(f"open_clip does not import: {e}")
    factory._MODEL_CONFIGS["r2d3-tiny"] = TINY.to_open_clip() | {"text_cfg": {**TINY.to_open_clip()["text_cfg"], "vocab_size": 49408}}
    ref = open_clip.create_model("r2d3-tiny", pretrained=None).eval()
    torch.save(ref.state_dict(), tmp_path / "m.bin")
    ours = load_open_clip(tmp_path / "m.bin", ClipConfig(**{**TINY.__dict__, "vocab_size": 49408}))
    from engine.rewards.openclip import open_clip_vocab

    prompts = ["a red chair", "An astronaut riding a horse, 4k!!", "x" * 100]
    tokens = open_clip.get_tokenizer("ViT-B-32")(prompts)[:, :16]
    assert torch.equal(ClipTokenizer.from_file(open_clip_vocab())(prompts)[:, :16], tokens)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.encode_image(img, normalize=False), ref.encode_image(img), atol=1e-5)
