"""DiffSplat (PixArt-Sigma and SD1.5 variants) from the released weights, behind the tiny model's interface.

Everything here follows research/diffsplat.md: the stock diffusers ``PixArtTransformer2DModel`` /
``UNet2DConditionModel`` with joint self-attention over the 4 views (an attention processor, no new
parameters), Plücker channels with DiffSplat's pixel-mapping quirk, the GSVAE decoder (a diffusers
``AutoencoderKL`` with 12-channel output), latents / scaling factor -> clamp -> splatter maps ->
Gaussians. Text: T5 (300 tokens, with mask) for PixArt, CLIP (77 tokens) for SD1.5, from a local
folder or a cache of precomputed embeddings.

Released layout (``huggingface-cli download chenguolin/DiffSplat --local-dir DIR`` or DiffSplat's
``download_ckpt.py --model_type pas|sd15``)::

    DIR/gsdiff_gobj83k_pas_fp16__render/checkpoints/013020/transformer_ema/{config.json,diffusion_pytorch_model.safetensors}
    DIR/gsvae_gobj265k_sdxl_fp16/checkpoints/039030/model.safetensors
    DIR/gsdiff_gobj83k_sd15__render/checkpoints/013020/unet_ema/{config.json,diffusion_pytorch_model.safetensors}
    DIR/gsvae_gobj265k_sd/checkpoints/<iteration>/model.safetensors

A folder is validated (key sets, shapes, dtypes from the safetensors headers) before anything heavy
loads. A ``config.json`` beside a GSVAE ``model.safetensors`` overrides the SDXL/SD VAE architecture.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PixArtTransformer2DModel, UNet2DConditionModel
from torch import Tensor

from ..core.cameras import canonical_views, diffsplat_plucker
from ..core.io import atomic_save
from ..core.sampling import BETAS, SD15_BETAS
from .base import Condition, SplatDiffusionModel
from .multiview import set_multiview_attention

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_FLOAT_DTYPES = {"F32", "F16", "BF16"}
RENDER_SIZE = 256  # DiffSplat's splatter and render resolution; the Plücker maps are made at this size

# The SDXL / SD1.5 VAE architecture with DiffSplat's 12-channel input and output (research §4.1)
GSVAE_CONFIG = dict(
    in_channels=12, out_channels=12, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, norm_num_groups=32, act_fn="silu",
)
# DiffSplat's multi-view UNet blocks are the stock ones with another class name (research §6)
_MV_BLOCKS = {"CrossAttnDownBlockMV2D": "CrossAttnDownBlock2D", "UNetMidBlockMV2DCrossAttn": "UNetMidBlock2DCrossAttn",
              "CrossAttnUpBlockMV2D": "CrossAttnUpBlock2D"}


@dataclass(frozen=True)
class Release:
    """Where a released DiffSplat variant's files are and the constants it was trained with."""

    name: str
    denoiser: str  # glob under the weights folder; the highest iteration wins
    gsvae: str
    download: str  # download_ckpt.py --model_type
    text_repo: str  # Hugging Face repository of its text encoder
    text_kind: str  # "t5" or "clip"
    max_tokens: int
    scaling_factor: float
    guidance_default: float
    betas: dict


RELEASES = {
    "diffsplat-pas": Release("diffsplat-pas", "gsdiff_gobj83k_pas_fp16__render/checkpoints/*/transformer_ema",
                             "gsvae_gobj265k_sdxl_fp16/checkpoints/*/model.safetensors", "pas",
                             "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers", "t5", 300, 0.13025, 4.5, BETAS),
    "diffsplat-sd15": Release("diffsplat-sd15", "gsdiff_gobj83k_sd15__render/checkpoints/*/unet_ema",
                              "gsvae_gobj265k_sd/checkpoints/*/model.safetensors", "sd15",
                              "stable-diffusion-v1-5/stable-diffusion-v1-5", "clip", 77, 0.18215, 7.5, SD15_BETAS),
}


def _download_hint(release: Release) -> str:
    return (f"Get them with DiffSplat's `python download_ckpt.py --model_type {release.download} --local_dir DIR` or "
            f"`huggingface-cli download chenguolin/DiffSplat --include '{release.denoiser.split('/')[0]}/*' "
            f"'{release.gsvae.split('/')[0]}/*' --local-dir DIR`.")


def _latest(root: Path, pattern: str) -> Path | None:
    """The match of ``pattern`` with the highest iteration number (DiffSplat's loader does the same)."""
    hits = sorted(root.glob(pattern), key=lambda p: [int(s) if s.isdigit() else -1 for s in p.parts])
    return hits[-1] if hits else None


def locate_release(name: str, weights: str | Path) -> tuple[Path, Path]:
    """(denoiser folder, GSVAE file) in a DiffSplat download folder, or FileNotFoundError naming them."""
    release = RELEASES[name]
    root = Path(weights).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: no folder {root}. It should hold DiffSplat's released checkpoints. {_download_hint(release)}")
    denoiser, gsvae = _latest(root, release.denoiser), _latest(root, release.gsvae)
    missing = []
    if denoiser is None or not (denoiser / "config.json").is_file() or not (denoiser / "diffusion_pytorch_model.safetensors").is_file():
        missing.append(f"{release.denoiser}/{{config.json, diffusion_pytorch_model.safetensors}}")
    if gsvae is None:
        missing.append(release.gsvae)
    if missing:
        raise FileNotFoundError(f"{name}: {root} lacks {' and '.join(missing)}. {_download_hint(release)}")
    return denoiser, gsvae


# ------------------------------------------------------------------------------------------ validation

def safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) from a safetensors file's header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {str(e)[:200]}).") from e


def check_tensors(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[tuple[int, ...], str]], source: str) -> None:
    """Same keys, shapes, and float dtypes, or one ValueError listing what differs."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: {list(found[k][0])} vs {list(s)}" for k, s in expected.items() if k in found and found[k][0] != tuple(s)]
    dtypes = [f"{k}: {found[k][1]}" for k in expected if k in found and found[k][1] not in _FLOAT_DTYPES]
    problems = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                f"{len(wrong)} with other shapes (e.g. {wrong[:2]})" if wrong else "",
                f"non-float tensors (e.g. {dtypes[:2]})" if dtypes else ""]
    if any(problems):
        raise ValueError(f"{source} does not match its model: " + "; ".join(p for p in problems if p) + ".")


def _expected_shapes(build) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _load_tensors(path: Path, keys: list[str] | None = None, strip: str = "") -> dict[str, Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = keys if keys is not None else list(f.keys())
        return {k[len(strip):]: f.get_tensor(k) for k in names}


# -------------------------------------------------------------------------------------------- denoisers

def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder / 'config.json'} is not a readable JSON config ({e}).") from e


def _init_args(cls, raw: dict) -> dict:
    """The config entries ``cls`` takes (the released configs carry extra keys diffusers would warn about)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in raw.items() if k in params and k != "self"}


def pixart_config(raw: dict) -> dict:
    """The released transformer_ema config as stock PixArtTransformer2DModel arguments (the MV class name,
    DiffSplat's concat flags and the EMA bookkeeping keys are dropped)."""
    cfg = _init_args(PixArtTransformer2DModel, raw)
    if raw.get("in_channels") != 10:
        raise ValueError(f"Expected a text-conditioned DiffSplat-PixArt transformer with 10 input channels (4 latent + 6 Plücker), "
                         f"got in_channels={raw.get('in_channels')} (image-conditioned checkpoints are not supported).")
    return cfg


def unet_config(raw: dict) -> dict:
    """The released unet_ema config as stock UNet2DConditionModel arguments (MV block names mapped back)."""
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
    cfg["down_block_types"] = [_MV_BLOCKS.get(b, b) for b in cfg.get("down_block_types", [])]
    cfg["up_block_types"] = [_MV_BLOCKS.get(b, b) for b in cfg.get("up_block_types", [])]
    if "mid_block_type" in cfg:
        cfg["mid_block_type"] = _MV_BLOCKS.get(cfg["mid_block_type"], cfg["mid_block_type"])
    cfg = _init_args(UNet2DConditionModel, cfg)
    if cfg.get("in_channels") != 10:
        raise ValueError(f"Expected a text-conditioned DiffSplat-SD1.5 UNet with 10 input channels, got {cfg.get('in_channels')}.")
    return cfg


def prepare_denoiser(name: str, folder: Path):
    """Check a release's transformer (PixArt) or UNet (SD1.5) against its config without loading it;
    returns ``load(dtype)``."""
    raw = _read_config(folder)
    cls, cfg = (PixArtTransformer2DModel, pixart_config(raw)) if name == "diffsplat-pas" else (UNet2DConditionModel, unet_config(raw))
    weights = folder / "diffusion_pytorch_model.safetensors"
    check_tensors(_expected_shapes(lambda: cls.from_config(cfg)), safetensors_header(weights), str(weights))

    def load(dtype: torch.dtype = torch.float32):
        model = cls.from_config(cfg)
        model.load_state_dict(_load_tensors(weights), strict=True)
        if dtype != torch.float32:
            model = model.to(dtype)
        return model.eval().requires_grad_(False)

    return load


def prepare_gsvae(path: Path):
    """Check the GSVAE in DiffSplat's whole-module dump (keys ``vae.*``; ``tiny_decoder.*``, used only in
    DiffSplat's training, is ignored): decoder and post-quant conv complete, any encoder keys right.
    Returns ``load()`` giving the fp32 AutoencoderKL."""
    override = path.parent / "config.json"
    cfg = {**GSVAE_CONFIG, **({k: v for k, v in _read_config(path.parent).items() if not k.startswith("_")} if override.exists() else {})}
    header = safetensors_header(path)
    vae_keys = {k[len("vae."):]: v for k, v in header.items() if k.startswith("vae.")}
    expected = _expected_shapes(lambda: AutoencoderKL(**cfg))
    needed = {k: s for k, s in expected.items() if k.startswith(("decoder.", "post_quant_conv."))}
    present = {k: v for k, v in vae_keys.items() if k in needed or k not in expected}
    check_tensors(needed, present, f"{path} (vae.decoder.* / vae.post_quant_conv.*)")
    optional = {k: s for k, s in expected.items() if k not in needed and k in vae_keys}
    check_tensors(optional, {k: vae_keys[k] for k in optional}, f"{path} (vae.encoder.*)")

    def load() -> AutoencoderKL:
        vae = AutoencoderKL(**cfg)
        vae.load_state_dict(_load_tensors(path, ["vae." + k for k in {**needed, **optional}], strip="vae."), strict=False)
        return vae.float().eval().requires_grad_(False)

    return load


# ------------------------------------------------------------------------------------------------ text

def text_encoder_dirs(folder: str | Path) -> tuple[Path, Path]:
    """(tokenizer folder, encoder folder) of a pipeline folder or a single model folder, checked to exist."""
    folder = Path(folder).expanduser()
    tok_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
    enc_dir = folder / "text_encoder" if (folder / "text_encoder").is_dir() else folder
    if not (enc_dir / "config.json").is_file():
        raise FileNotFoundError(f"No text encoder at {folder}: expected text_encoder/config.json + weights (and tokenizer/), "
                                f"or a folder with config.json, weights and tokenizer files.")
    return tok_dir, enc_dir


class HFTextEncoder:
    """T5 (PixArt) or CLIP (SD1.5) prompt embeddings from a local folder, padded to ``max_tokens``.

    ``folder`` holds ``tokenizer/`` and ``text_encoder/`` (a diffusers pipeline folder) or is one model
    folder with its tokenizer files."""

    def __init__(self, folder: str | Path, kind: str, max_tokens: int, dtype: torch.dtype = torch.float32, device="cpu"):
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        tok_dir, enc_dir = text_encoder_dirs(folder)
        self.kind, self.max_tokens = kind, max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        cls = T5EncoderModel if kind == "t5" else CLIPTextModel
        self.model = cls.from_pretrained(str(enc_dir), local_files_only=True, dtype=dtype).to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Condition:
        # DiffSplat's training embeddings were made from lower-cased, stripped captions
        texts = [p.lower().strip() for p in prompts] if self.kind == "t5" else list(prompts)
        tok = self.tokenizer(texts, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        # SD1.5's CLIP text model runs without an attention mask; T5 gets it (and so does PixArt's cross-attention)
        out = self.model(ids, attention_mask=mask if self.kind == "t5" else None).last_hidden_state
        return Condition(out.float(), mask)


class PromptCache:
    """Precomputed prompt embeddings (a safetensors file) for users without the text encoder (T5-XXL is 9 GB)."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"No prompt cache at {self.path}.")
        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata() or {}
            self.embeds, self.mask = f.get_tensor("embeds"), f.get_tensor("mask")
        try:
            prompts = json.loads(meta["prompts"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{self.path} is not a prompt cache (no prompt list in its metadata).") from e
        self.index = {p: i for i, p in enumerate(prompts)}
        self.model = meta.get("model", "")

    def __call__(self, prompts: list[str]) -> Condition:
        missing = [p for p in prompts if p not in self.index]
        if missing:
            raise KeyError(f"Prompt(s) not in the cache {self.path}: {missing[:3]}. Add them with `python -m engine.models.diffsplat "
                           f"cache-prompts` on a machine with the text encoder.")
        rows = torch.tensor([self.index[p] for p in prompts])
        return Condition(self.embeds[rows].float(), self.mask[rows])


def cache_prompts(encoder, prompts: list[str], path: str | Path, model: str = "", dtype: torch.dtype = torch.float16) -> Path:
    """Write the embeddings of ``prompts`` (plus the empty prompt, for guidance) to a cache file, atomically."""
    from safetensors.torch import save_file

    prompts = list(dict.fromkeys([""] + list(prompts)))
    cond = encoder(prompts)
    tensors = {"embeds": cond.embeds.to(dtype).contiguous().cpu(), "mask": cond.mask.contiguous().cpu()}
    return atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata={"prompts": json.dumps(prompts), "model": model}))


def find_text_encoder(release: Release, text_encoder: str | Path | None) -> Path:
    if text_encoder is not None:
        text_encoder_dirs(text_encoder)
        return Path(text_encoder)
    from huggingface_hub import snapshot_download

    try:  # the encoder's pipeline folder in the local Hugging Face cache, if it is there
        return Path(snapshot_download(release.text_repo, local_files_only=True,
                                      allow_patterns=["tokenizer/*", "text_encoder/*"]))
    except Exception:
        raise FileNotFoundError(
            f"{release.name} needs its {release.text_kind.upper()} text encoder: pass --text-encoder DIR (a folder with tokenizer/ "
            f"and text_encoder/, e.g. {release.text_repo}), or --prompt-cache FILE made by `python -m engine.models.diffsplat "
            f"cache-prompts` on a machine that has the encoder.") from None


# ----------------------------------------------------------------------------------------------- model

class DiffSplatModel(SplatDiffusionModel):
    """A released DiffSplat variant with the embedded model's interface (eps, decode, to_gaussians, ...)."""

    def __init__(self, release: Release, denoiser, gsvae: AutoencoderKL, text, *, decode_chunk: int = 1):
        cameras = canonical_views()
        size = denoiser.config.sample_size
        super().__init__(cameras, diffsplat_plucker(cameras, size, RENDER_SIZE), gsvae.config.latent_channels, size,
                         guidance_default=release.guidance_default, noise_schedule=release.betas)
        self.name, self.release = release.name, release
        self.denoiser, self.gsvae, self.text = denoiser, gsvae, text
        self.decode_chunk = decode_chunk
        set_multiview_attention(self.denoiser, self.num_views)

    @classmethod
    def from_release(cls, name: str, weights: str | Path, *, text_encoder: str | Path | None = None,
                     prompt_cache: str | Path | None = None, dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu"):
        """Validate, then load. ``dtype`` is the denoiser's (fp32, fp16 or bf16); the GSVAE decodes in fp32."""
        if name not in RELEASES:
            raise ValueError(f"Unknown DiffSplat variant {name!r}; choose from {', '.join(RELEASES)}.")
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
            dtype = DTYPES[dtype]
        release = RELEASES[name]
        denoiser_dir, gsvae_path = locate_release(name, weights)
        # everything cheap first (files, configs, tensor headers, the text encoder's folder), then the loading
        load_denoiser, load_gsvae = prepare_denoiser(name, denoiser_dir), prepare_gsvae(gsvae_path)
        text_dir = None if prompt_cache is not None else find_text_encoder(release, text_encoder)
        denoiser, gsvae = load_denoiser(dtype), load_gsvae()
        text = PromptCache(prompt_cache) if prompt_cache is not None else HFTextEncoder(text_dir, release.text_kind, release.max_tokens, device=device)
        return cls(release, denoiser, gsvae, text).to(device)

    def encode_prompts(self, prompts: list[str]) -> Condition:
        cond = self.text(prompts)
        return Condition(cond.embeds.to(self.device), cond.mask.to(self.device))

    def network_output(self, latents: Tensor, timesteps: Tensor, cond: Condition) -> Tensor:
        B, V = latents.shape[:2]
        x, t = self.denoiser_input(latents, timesteps)
        dtype = next(self.denoiser.parameters()).dtype
        text = cond.embeds.to(self.device, dtype).repeat_interleave(V, 0)
        if self.name == "diffsplat-pas":
            out = self.denoiser(x.to(dtype), encoder_hidden_states=text, timestep=t,
                                encoder_attention_mask=cond.mask.to(self.device).repeat_interleave(V, 0),
                                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        else:
            out = self.denoiser(x.to(dtype), t, encoder_hidden_states=text, return_dict=False)[0]
        return out.float().reshape(B, V, *out.shape[1:])

    def decode(self, latents: Tensor) -> Tensor:
        B, V = latents.shape[:2]
        z = latents.flatten(0, 1).float() / self.release.scaling_factor
        maps = torch.cat([self.gsvae.decode(c).sample for c in z.split(self.decode_chunk)]).clamp(-1, 1)
        return maps.reshape(B, V, *maps.shape[1:])


def main(argv=None) -> None:
    """``python -m engine.models.diffsplat cache-prompts``: precompute prompt embeddings for a machine without the encoder."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache-prompts", help="encode prompts (one per line) into a cache file")
    c.add_argument("--model", choices=list(RELEASES), default="diffsplat-pas")
    c.add_argument("--text-encoder", required=True, help="folder with tokenizer/ and text_encoder/")
    c.add_argument("--prompts", type=Path, required=True, help="text file, one prompt per line")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    release = RELEASES[args.model]
    prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    encoder = HFTextEncoder(args.text_encoder, release.text_kind, release.max_tokens, device=args.device)
    print(cache_prompts(encoder, prompts, args.out, model=args.model))


if __name__ == "__main__":
    main()
