"""Rewards: the interface, the offline rewards, the real ones on tiny random open_clip models, ensembles."""

import json
import math
import random
import socket

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.core.cameras import canonical_views
from engine.core.gaussians import Gaussians
from engine.data.primitives import Scene
from engine.data.raycast import raycast_views, splatter_maps
from engine.data.world import HELD_OUT, ObjectSpec, build, caption
from engine.render import RenderOutput, render
from engine.rewards import (
    REWARDS,
    AestheticReward,
    AlignmentReward,
    ClipScoreReward,
    ColorfulnessReward,
    Ensemble,
    GeometryReward,
    HPSv2Reward,
    MissingWeights,
    Reward,
    RewardInputs,
    build_ensemble,
    build_reward,
    list_rewards,
    parse_ensemble,
    score_assets,
)
from engine.rewards.__main__ import main as rewards_cli
from engine.rewards.openclip import load_clip, model_source, preprocess
from engine.rewards.preference import AestheticHead
from engine.metrics import depth_normal_consistency
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


def test_geometry_official_variant_scores_raw_normals_and_depth(mushroom):
    """The official code's DNC by name: raw (alpha-long) normals count their length, raw depth is not divided by
    alpha: normals shorter than 1 and depth falling off at soft edges score lower (0.69 vs 0.89 on this mushroom)."""
    inp = _inputs(mushroom)
    ours, official = GeometryReward().score_inputs(inp), build_reward("geometry_official").score_inputs(inp)
    assert (official < ours - 0.05).all() and (official > 0.5).all()
    manual = depth_normal_consistency(inp.depth, inp.normal, inp.alpha, inp.cameras, raw=True)
    torch.testing.assert_close(official, manual)
    faint = RewardInputs(**{**vars(inp), "normal": inp.normal * 0.5})
    torch.testing.assert_close(build_reward("geometry_official").score_inputs(faint), official * 0.5)  # length counts
    torch.testing.assert_close(GeometryReward().score_inputs(faint), ours)  # ours normalises it away
    assert {i.name: i for i in list_rewards()}["geometry_official"].available


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


# ---------------------------------------------------- real rewards: open_clip models saved in the released layouts

# a tiny open_clip CLIP with open_clip's real tokenizer (49408 tokens), in the config file open_clip's repositories ship
TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
# where each reward's files are released: HPSv2's {"state_dict": fp16 tensors} pickle, the laion CLIPs' safetensors,
# the OpenAI ViT-L-14 as open_clip's .bin beside LAION's aesthetic head
RELEASED = {"hpsv2": "HPS_v2.1_compressed.pt", "clip": "open_clip_model.safetensors", "aesthetic": "open_clip_pytorch_model.bin"}
AESTHETIC_HEAD = "sac+logos+ava1-l14-linearMSE.pth"


def _tiny_folder(path, name: str) -> None:
    """A random tiny open_clip CLIP saved as reward ``name``'s weights are released, with its config beside it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    torch.manual_seed(0)
    sd = open_clip.create_model(f"local-dir:{path}", load_weights=False).state_dict()
    if name == "hpsv2":
        torch.save({"state_dict": {k: v.half() for k, v in sd.items()}, "epoch": 3}, path / RELEASED[name])
    elif name == "clip":
        save_file(sd, str(path / RELEASED[name]))
    else:
        torch.save(sd, path / RELEASED[name])
        torch.save(AestheticHead(TINY["embed_dim"]).state_dict(), path / AESTHETIC_HEAD)


def _open_clips_own(path, name: str):
    """The reference: the model as open_clip loads the folder itself, or as HPSv2's own code loads its file."""
    if name == "hpsv2":  # hpsv2.img_score: create the model, then load_state_dict(torch.load(cp)["state_dict"])
        model = open_clip.create_model(f"local-dir:{path}", load_weights=False)
        model.load_state_dict(torch.load(path / RELEASED[name], weights_only=True)["state_dict"])
        return model.eval()
    return open_clip.create_model(f"local-dir:{path}").eval()


@pytest.mark.parametrize("name", ["hpsv2", "clip", "aesthetic"])
def test_scores_equal_open_clips_own(tmp_path, name):
    _tiny_folder(tmp_path, name)
    reward = build_reward(name, weights=tmp_path)
    ref = _open_clips_own(tmp_path, name)
    images = torch.rand(3, 3, 48, 40)
    prompts = ["a red chair", "An astronaut riding a horse, 4k!!", "x" * 100]  # the last one is truncated
    fit = {"hpsv2": "pad", "clip": "crop", "aesthetic": "stretch"}[name]
    with torch.no_grad():
        embeds = ref.encode_image(preprocess(images, 32, fit, antialias=name != "aesthetic"), normalize=True)
        if name == "aesthetic":
            head = AestheticHead(TINY["embed_dim"])
            head.load_state_dict(torch.load(tmp_path / AESTHETIC_HEAD, weights_only=True))
            expected = head.eval()(embeds)[:, 0]
        else:
            tokens = open_clip.get_tokenizer(f"local-dir:{tmp_path}")(prompts)
            expected = (embeds * ref.encode_text(tokens, normalize=True)).sum(-1)
        assert torch.allclose(reward(images, prompts), expected, atol=1e-6)
    # fp32 and frozen whatever the file stored; gradients reach the images
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in reward.parameters())
    images.requires_grad_()
    reward(images, prompts).sum().backward()
    assert images.grad.abs().sum() > 0
    if name == "aesthetic":  # only the image tower is loaded
        assert not any(k.startswith(("token_embedding", "transformer.")) for k in reward.state_dict())


def test_preprocess_equals_open_clips_transforms():
    """The tensor preprocessing gives open_clip's eval-transform pixels (tensors go through its transforms as they are)."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    for H, W in ((48, 40), (37, 64), (64, 64), (32, 51), (20, 32)):
        x = torch.rand(1, 3, H, W)
        for fit, mode in (("crop", "shortest"), ("stretch", "squash")):
            ref = open_clip.image_transform(32, is_train=False, mean=mean, std=std, resize_mode=mode)(x[0])
            assert torch.allclose(preprocess(x, 32, fit, mean=mean, std=std)[0], ref, atol=1e-5), (H, W, fit)
    # pad (HPSv2's ResizeMaxSize, open_clip's "longest"), where no resampling is needed; open_clip takes a PIL image here
    x = torch.randint(0, 256, (1, 3, 20, 32)).float() / 255
    pil = Image.fromarray((x[0] * 255).byte().permute(1, 2, 0).numpy())
    ref = open_clip.image_transform(32, is_train=False, mean=mean, std=std, resize_mode="longest")(pil)
    assert torch.allclose(preprocess(x, 32, "pad", mean=mean, std=std)[0], ref, atol=1e-6)
    assert preprocess(x.half(), 32).dtype == torch.float32


@pytest.mark.parametrize("name", ["hpsv2", "aesthetic", "clip"])
def test_real_reward_gradients(tmp_path, name):
    _tiny_folder(tmp_path, name)
    reward = build_reward(name, weights=tmp_path).double()
    _check_gradient(lambda x: reward(x, ["a red chair", "a blue cup"]), torch.rand(2, 3, 40, 40))


def test_nothing_is_downloaded(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a reward tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in RELEASED:
        _tiny_folder(tmp_path / name, name)
        assert build_reward(name, weights=tmp_path / name)(torch.rand(1, 3, 32, 32), ["a cup"]).shape == (1,)
    # without a config beside the file: open_clip's built-in ViT-H-14 and its tokenizer, from the installed package
    assert model_source(tmp_path / "x.pt", "ViT-H-14") == "ViT-H-14"
    tokenizer = open_clip.get_tokenizer("ViT-H-14")
    assert tokenizer.context_length == 77 and tokenizer(["a cup"])[0, :4].tolist() == [49406, 320, 1937, 49407]


def test_missing_and_wrong_weights(tmp_path):
    with pytest.raises(MissingWeights, match=r"HPS_v2\.1_compressed\.pt.*xswu/HPSv2"):
        HPSv2Reward.from_weights(tmp_path)
    _tiny_folder(tmp_path / "hps", "hpsv2")
    with pytest.raises(MissingWeights, match="HPS_v2_compressed.pt"):
        build_reward("hpsv2", weights=tmp_path / "hps", version="v2.0")
    _tiny_folder(tmp_path / "only_clip", "clip")
    with pytest.raises(MissingWeights, match="sac\\+logos"):
        AestheticReward.from_weights(tmp_path / "only_clip")
    # a checkpoint of another size is refused before anything loads, naming the mismatch
    (tmp_path / "hps" / "open_clip_config.json").unlink()
    with pytest.raises(ValueError, match=r"ViT-H-14\) does not match the expected model.*positional_embedding: \[16, 32\] vs \[77, 1024\]"):
        HPSv2Reward.from_weights(tmp_path / "hps")
    (tmp_path / "bad.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain tensor checkpoint"):
        load_clip(tmp_path / "bad.bin", "ViT-B-32")
    with pytest.raises(ValueError, match="Unknown open_clip model 'ViT-Q-99'"):
        ClipScoreReward.from_weights(tmp_path / "hps" / RELEASED["hpsv2"], model_name="ViT-Q-99")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {**TINY, "text_cfg": {"hf_model_name": "bert-base-uncased", "hf_tokenizer_name": "bert-base-uncased"}}}))
    with pytest.raises(ValueError, match="needs a Hugging Face text model or tokenizer"):
        model_source(tmp_path / "hub" / "open_clip_model.safetensors", "ViT-B-32")


def test_list_rewards_and_cli(tmp_path, capsys):
    infos = {i.name: i for i in list_rewards()}
    assert set(infos) == set(REWARDS) and all(infos[n].available for n in ("geometry", "alignment", "colorfulness"))
    _tiny_folder(tmp_path, "hpsv2")
    assert {i.name: i for i in list_rewards({"hpsv2": tmp_path})}["hpsv2"].available
    assert rewards_cli(["--list", "--json", "--weights", f"hpsv2={tmp_path}"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(REWARDS) and rows[3]["available"]
    assert rewards_cli(["--list"]) == 0
    assert "geometry      available" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        rewards_cli(["--weights", "beauty=/x"])


@pytest.mark.parametrize("mask", [None, "causal_float", "causal_bool"])
def test_packed_attention_equals_torch_multihead_attention(mask):
    """The rewards swap open_clip's nn.MultiheadAttention for a faster CPU path: same outputs and gradients."""
    import copy

    from engine.rewards.openclip import PackedSelfAttention, pack_attention

    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    fast = pack_attention(torch.nn.Sequential(copy.deepcopy(ref)))[0]
    assert type(fast) is PackedSelfAttention
    attn_mask = {None: None, "causal_float": torch.full((7, 7), float("-inf")).triu_(1),
                 "causal_bool": torch.ones(7, 7, dtype=torch.bool).triu_(1)}[mask]
    x = torch.randn(3, 7, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a = ref(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
    b = fast(x2, x2, x2, need_weights=False, attn_mask=attn_mask)[0]
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.in_proj_weight.grad, ref.in_proj_weight.grad, atol=1e-5, rtol=1e-5)
