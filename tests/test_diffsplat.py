"""DiffSplat loaders on tiny random models saved in the released layout; cameras and Plücker maps
against the closed forms of research/diffsplat.md §2."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.core.cameras import (
    DIFFSPLAT_FOCAL,
    canonical_views,
    diffsplat_plucker,
    orbit_cameras,
    plucker_rays,
)
from engine.core.sampling import BETAS, SD15_BETAS
from engine.generate import generate, load_model, write_asset
from engine.generate import main as generate_cli
from engine.models.diffsplat import PromptCache, cache_prompts, locate_release
from tests.diffsplat_fixtures import (
    make_pas_release,
    make_sd15_release,
    make_text_encoder,
)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffsplat")
    make_pas_release(root)
    make_sd15_release(root)
    make_text_encoder(root / "t5", "t5")
    make_text_encoder(root / "clip", "clip")
    return root


@pytest.fixture(scope="module")
def pas(release):
    return load_model("diffsplat-pas", release, text_encoder=release / "t5", device="cpu")


# ------------------------------------------------------------------------------------ cameras, Plücker

def _closed_form_c2w(elev_deg: float, azim_deg: float, r: float = 1.4) -> torch.Tensor:
    """research §2.1: kiui orbit with e_k = -elevation, OpenGL look-at, then columns 1, 2 negated."""
    e, a = math.radians(-elev_deg), math.radians(azim_deg)
    campos = torch.tensor([r * math.cos(e) * math.sin(a), -r * math.sin(e), r * math.cos(e) * math.cos(a)], dtype=torch.float64)
    forward = campos / campos.norm()
    right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), forward)
    right = right / right.norm()
    up = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, -up, -forward, campos
    return c2w


def test_cameras_match_closed_form():
    cams = canonical_views()
    assert torch.allclose(cams.intrinsics[0].double(), torch.tensor([DIFFSPLAT_FOCAL, DIFFSPLAT_FOCAL, 0.5, 0.5], dtype=torch.float64))
    for v, az in enumerate((0, 90, 180, 270)):
        assert torch.allclose(cams.c2w[v].double(), _closed_form_c2w(10, az), atol=1e-6)
    flat = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]))  # view 0 at elevation 0 (research §2.1 example)
    assert torch.allclose(flat.c2w[0].double(), torch.tensor(
        [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.4], [0, 0, 0, 1]], dtype=torch.float64), atol=1e-6)


def test_plucker_quirk_matches_closed_form():
    cams = canonical_views()
    H = W = 256
    p = plucker_rays(cams, H, W, diffsplat_quirk=True)
    assert p.shape == (4, 6, 256, 256)
    for v in range(4):
        c2w = _closed_form_c2w(10, 90 * v)
        R, o = c2w[:3, :3], c2w[:3, 3]
        for i, j in ((0, 0), (255, 255), (17, 200), (128, 3)):
            # bug=True: u = j/(W-1), x = (u + 0.5 - cx)/fx with cx = 0.5
            x, y = (j / (W - 1)) / DIFFSPLAT_FOCAL, (i / (H - 1)) / DIFFSPLAT_FOCAL
            d = R @ torch.tensor([x, y, 1.0], dtype=torch.float64)
            d = d / d.norm()
            assert torch.allclose(p[v, 3:, i, j].double(), d, atol=1e-5)
            assert torch.allclose(p[v, :3, i, j].double(), torch.linalg.cross(o, d), atol=1e-5)
    # pixel (0, 0) looks straight down the optical axis (camera z): the rays cover one image quadrant only
    assert torch.allclose(p[0, 3:, 0, 0].double(), _closed_form_c2w(10, 0)[:3, 2], atol=1e-5)
    small = diffsplat_plucker(cams, 32)
    ref = torch.nn.functional.interpolate(p, size=(32, 32), mode="bilinear", align_corners=False)
    assert small.shape == (4, 6, 32, 32) and torch.equal(small, ref)


# ------------------------------------------------------------------------------------------ PixArt-Σ

def test_pas_generates_end_to_end(pas, tmp_path):
    assert pas.name == "diffsplat-pas" and pas.guidance_default == 4.5 and pas.noise_schedule == BETAS
    assert pas.latent_shape == (4, 4, 8, 8)
    result = generate(pas, ["a red chair"], [0], steps=3, record=True)
    assert result.maps.shape == (1, 4, 12, 64, 64) and result.maps.abs().max() <= 1
    assert result.gaussians.means.shape == (1, 4 * 64 * 64, 3)
    traj = result.trajectory
    assert traj.latents.shape == (1, 3, 4, 4, 8, 8) and torch.equal(traj.next_latents[:, -1], result.latents)
    again = generate(pas, ["a red chair"], [0], steps=3)
    assert torch.equal(again.latents, result.latents)
    files = write_asset(result.gaussians[0:1], tmp_path / "asset", frames=4, resolution=64)
    assert all(f.exists() and f.stat().st_size > 0 for f in files.values())


def test_pas_matches_its_parts(pas, release):
    """eps = the stock transformer's first 4 output channels on [latents | Plücker], views attending jointly."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 4, 8, 8)
    cond = pas.encode_prompts(["a blue car"])
    assert cond.embeds.shape == (1, 300, 16) and 3 < cond.mask.sum() < 20 and cond.mask[0, -1] == 0  # padded to 300 tokens
    eps = pas.eps(x, torch.tensor([500]), cond)
    out = pas.network_output(x, torch.tensor([500]), cond)
    assert out.shape == (1, 4, 8, 8, 8) and torch.equal(eps, out[:, :, :4])
    x2 = x.clone()
    x2[:, 3] += 1.0
    assert not torch.allclose(pas.eps(x2, torch.tensor([500]), cond)[:, 0], eps[:, 0])  # view 0 sees view 3


def test_pas_precision_options(release):
    m = load_model("diffsplat-pas", release, text_encoder=release / "t5", dtype="bf16", device="cpu")
    assert next(m.denoiser.parameters()).dtype == torch.bfloat16 and next(m.gsvae.parameters()).dtype == torch.float32
    eps = m.eps(torch.randn(1, 4, 4, 8, 8), torch.tensor([999]), m.encode_prompts(["a cup"]))
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()
    with pytest.raises(ValueError, match="dtype"):
        load_model("diffsplat-pas", release, text_encoder=release / "t5", dtype="int8", device="cpu")


def test_prompt_cache_replaces_the_text_encoder(pas, release, tmp_path):
    path = cache_prompts(pas.text, ["a red chair"], tmp_path / "prompts.safetensors", model="diffsplat-pas", dtype=torch.float32)
    cached = load_model("diffsplat-pas", release, prompt_cache=path, device="cpu")
    assert isinstance(cached.text, PromptCache) and set(cached.text.index) == {"", "a red chair"}
    a = generate(pas, ["a red chair"], [3], steps=2).latents
    b = generate(cached, ["a red chair"], [3], steps=2).latents
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(KeyError, match="not in the cache"):
        cached.encode_prompts(["a green robot"])


# ---------------------------------------------------------------------------------------------- SD1.5

def test_sd15_generates_end_to_end(release):
    m = load_model("diffsplat-sd15", release, text_encoder=release / "clip", device="cpu")
    assert m.guidance_default == 7.5 and m.noise_schedule == SD15_BETAS and m.release.scaling_factor == 0.18215
    assert not torch.allclose(m.alphas_cumprod, load_model("tiny").alphas_cumprod)  # SD1.5's own schedule
    cond = m.encode_prompts(["a toy robot"])
    assert cond.embeds.shape == (1, 77, 16)
    result = generate(m, ["a toy robot"], [0], steps=2, record=True)
    assert result.maps.shape == (1, 4, 12, 64, 64) and result.trajectory.model_outputs.shape == (1, 2, 4, 4, 8, 8)


# ----------------------------------------------------------------------------------------- validation

def test_missing_files_name_what_to_download(tmp_path, release):
    with pytest.raises(FileNotFoundError, match="download_ckpt.py --model_type pas"):
        locate_release("diffsplat-pas", tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(release / "gsdiff_gobj83k_pas_fp16__render", partial / "gsdiff_gobj83k_pas_fp16__render")
    with pytest.raises(FileNotFoundError, match=r"gsvae_gobj265k_sdxl_fp16/checkpoints/\*/model.safetensors"):
        load_model("diffsplat-pas", partial, text_encoder=release / "t5", device="cpu")
    if not _t5_cached():  # with neither a folder nor the HF cache
        with pytest.raises(FileNotFoundError, match="T5 text encoder.*--prompt-cache"):
            load_model("diffsplat-pas", release, device="cpu")
    with pytest.raises(FileNotFoundError, match="No text encoder"):
        load_model("diffsplat-pas", release, text_encoder=tmp_path, device="cpu")
    with pytest.raises(ValueError, match="needs --weights"):
        load_model("diffsplat-sd15")


def _t5_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache("PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers", "text_encoder/config.json"), str)


def test_newest_iteration_wins_and_shapes_are_checked(tmp_path, release):
    root = tmp_path / "r"
    make_pas_release(root)
    newer = root / "gsdiff_gobj83k_pas_fp16__render/checkpoints/026040/transformer_ema"
    shutil.copytree(root / "gsdiff_gobj83k_pas_fp16__render/checkpoints/013020/transformer_ema", newer)
    assert locate_release("diffsplat-pas", root)[0] == newer
    # a weights file that does not fit its config is refused before loading, naming the tensor
    weights = newer / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    sd["pos_embed.proj.weight"] = torch.zeros(16, 11, 2, 2)
    save_file(sd, str(weights))
    with pytest.raises(ValueError, match=r"other shapes.*pos_embed\.proj\.weight"):
        load_model("diffsplat-pas", root, text_encoder=release / "t5", device="cpu")
    sd.pop("pos_embed.proj.weight")
    save_file(sd, str(weights))
    with pytest.raises(ValueError, match="1 missing"):
        load_model("diffsplat-pas", root, text_encoder=release / "t5", device="cpu")
    cfg = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps(cfg | {"in_channels": 11}))
    with pytest.raises(ValueError, match="image-conditioned"):
        load_model("diffsplat-pas", root, text_encoder=release / "t5", device="cpu")
    (newer / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    (newer / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model("diffsplat-pas", root, text_encoder=release / "t5", device="cpu")


def test_gsvae_needs_a_complete_decoder(tmp_path, release):
    root = tmp_path / "r"
    shutil.copytree(release / "gsdiff_gobj83k_pas_fp16__render", root / "gsdiff_gobj83k_pas_fp16__render")
    shutil.copytree(release / "gsvae_gobj265k_sdxl_fp16", root / "gsvae_gobj265k_sdxl_fp16")
    path = root / "gsvae_gobj265k_sdxl_fp16/checkpoints/039030/model.safetensors"
    sd = load_file(str(path))
    save_file({k: v for k, v in sd.items() if not k.startswith("vae.decoder.conv_out")}, str(path))
    with pytest.raises(ValueError, match=r"vae\.decoder.*missing.*conv_out"):
        load_model("diffsplat-pas", root, text_encoder=release / "t5", device="cpu")


def test_generate_command(release, tmp_path, capsys):
    out = tmp_path / "cli"
    generate_cli(["--model", "diffsplat-pas", "--weights", str(release), "--text-encoder", str(release / "t5"),
                  "--prompt", "a red mushroom", "--steps", "2", "--frames", "4", "--resolution", "64", "--out", str(out)])
    settings = json.loads((out / "generation.json").read_text())
    assert settings["model"] == "diffsplat-pas" and settings["guidance"] == 4.5 and (out / "asset.ply").exists()
    with pytest.raises(SystemExit) as e:
        generate_cli(["--model", "diffsplat-sd15", "--weights", str(tmp_path / "none"), "--prompt", "a cup", "--out", str(out)])
    assert e.value.code == 2 and "download_ckpt.py --model_type sd15" in capsys.readouterr().err
