"""Random-weight DiffSplat releases of any size, for tests and benchmarks without the real weights.

``make_pas_release`` / ``make_sd15_release`` / ``make_text_encoder`` write tiny random PixArt-Sigma / SD1.5 /
GSVAE / text encoders in the released folder layout, for ``engine.generate.load_model`` (module structure and
key names are the real ones, stock diffusers classes, research/diffsplat.md §4-6; only the sizes are small;
``sample_size`` 8 gives 64 x 64 splatter maps, 16,384 Gaussians). ``full_pas_model`` builds
DiffSplat-PixArt-Sigma at its real size in memory (28 layers x 1152, 0.61B parameters; SDXL-VAE GSVAE
decoder, 256 px splatter maps, 262,144 Gaussians) with T5 replaced by :class:`RandomText`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PixArtTransformer2DModel, UNet2DConditionModel
from safetensors.torch import save_file

from .base import Condition
from .diffsplat import GSVAE_CONFIG, RELEASES, DiffSplatModel

WORDS = "a an the red green blue white black chair car mushroom with stem cup toy robot of and".split()
TINY_GSVAE = dict(in_channels=12, out_channels=12, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  block_out_channels=[8, 8, 16, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4, act_fn="silu")
EMA_KEYS = {"decay": 0.9999, "min_decay": 0.0, "optimization_step": 13020, "update_after_step": 0, "use_ema_warmup": True,
            "inv_gamma": 1.0, "power": 0.75}


def _tokenizer(folder: Path, max_len: int, kind: str) -> int:
    """T5: a real sentencepiece model with the tokenizer_config PixArt's T5 folder has; CLIP: a word-level
    fast tokenizer. Returns the vocabulary size."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "t5":
        import sentencepiece as spm

        corpus = folder.parent / "corpus.txt"
        corpus.write_text("\n".join(["a red chair", "a blue car with yellow wheels", "a toy robot", "a red mushroom with a white stem"] * 50))
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=28, model_type="unigram",
                                       pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
        corpus.unlink()
        (folder / "spiece.vocab").unlink()
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "T5Tokenizer", "model_max_length": max_len, "extra_ids": 0,
            "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    else:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|startoftext|>", "<unk>"] + WORDS)}
        tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=max_len).save_pretrained(folder)
    return len(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))


def make_text_encoder(folder: Path, kind: str, width: int = 16) -> Path:
    """A pipeline-style folder: tokenizer/ + text_encoder/ (tiny T5 encoder or CLIP text model)."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(1)
    vocab = _tokenizer(folder / "tokenizer", 300 if kind == "t5" else 77, kind)
    if kind == "t5":
        model = T5EncoderModel(T5Config(vocab_size=vocab, d_model=width, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    else:
        model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, max_position_embeddings=77, eos_token_id=0, bos_token_id=1))
    model.save_pretrained(folder / "text_encoder")
    return folder


def _gsvae(path: Path) -> None:
    """DiffSplat's whole-module GSVAE dump: vae.* (encoder and decoder) plus the training-only tiny decoder."""
    torch.manual_seed(2)
    vae = AutoencoderKL(**TINY_GSVAE)
    tensors = {f"vae.{k}": v.contiguous() for k, v in vae.state_dict().items()}
    tensors["tiny_decoder.layers.0.weight"] = torch.zeros(8, 4, 3, 3)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(TINY_GSVAE))  # tiny architecture override (the release has none)


def make_pas_release(root: Path, iteration: str = "013020", sample_size: int = 8, text_width: int = 16) -> Path:
    torch.manual_seed(0)
    cfg = dict(num_attention_heads=2, attention_head_dim=8, in_channels=10, out_channels=8, num_layers=2, sample_size=sample_size,
               patch_size=2, caption_channels=text_width, cross_attention_dim=16, norm_type="ada_norm_single",
               activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6,
               num_embeds_ada_norm=1000, interpolation_scale=1, use_additional_conditions=None)
    model = PixArtTransformer2DModel(**cfg)
    folder = root / f"gsdiff_gobj83k_pas_fp16__render/checkpoints/{iteration}/transformer_ema"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    released = {"_class_name": "PixArtTransformerMV2DModel", "_diffusers_version": "0.32.0", "_name_or_path": "PixArt-Sigma-XL-2-512-MS",
                **cfg, "view_concat_condition": False, "input_concat_plucker": True, "input_concat_binary_mask": False, **EMA_KEYS}
    (folder / "config.json").write_text(json.dumps(released, indent=2))
    _gsvae(root / "gsvae_gobj265k_sdxl_fp16/checkpoints/039030")
    return root


def make_sd15_release(root: Path, sample_size: int = 8, text_width: int = 16) -> Path:
    torch.manual_seed(0)
    cfg = dict(sample_size=sample_size, in_channels=10, out_channels=4, block_out_channels=[16, 32], layers_per_block=1,
               down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
               mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=text_width, attention_head_dim=4, norm_num_groups=8)
    model = UNet2DConditionModel(**cfg)
    folder = root / "gsdiff_gobj83k_sd15__render/checkpoints/013020/unet_ema"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    mv = {"CrossAttnDownBlock2D": "CrossAttnDownBlockMV2D", "CrossAttnUpBlock2D": "CrossAttnUpBlockMV2D",
          "UNetMidBlock2DCrossAttn": "UNetMidBlockMV2DCrossAttn"}
    released = {"_class_name": "UNetMV2DConditionModel", "_diffusers_version": "0.32.0", **cfg,
                "down_block_types": [mv.get(b, b) for b in cfg["down_block_types"]],
                "up_block_types": [mv.get(b, b) for b in cfg["up_block_types"]], "mid_block_type": mv[cfg["mid_block_type"]], **EMA_KEYS}
    (folder / "config.json").write_text(json.dumps(released, indent=2))
    _gsvae(root / "gsvae_gobj265k_sd/checkpoints/020000")
    return root


PIXART_SIGMA_512 = dict(  # research/diffsplat.md §5.2 with DiffSplat's overrides
    num_attention_heads=16, attention_head_dim=72, in_channels=10, out_channels=8, num_layers=28, sample_size=32, patch_size=2,
    caption_channels=4096, cross_attention_dim=1152, norm_type="ada_norm_single", activation_fn="gelu-approximate",
    attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000, interpolation_scale=1,
    use_additional_conditions=False,
)


class RandomText:
    """Stands in for T5-XXL: fixed random embeddings per prompt, with a 300-token mask."""

    def __init__(self, dim: int = 4096, tokens: int = 300):
        self.dim, self.tokens = dim, tokens

    def __call__(self, prompts: list[str]) -> Condition:
        g = torch.Generator().manual_seed(len(prompts))
        mask = torch.zeros(len(prompts), self.tokens, dtype=torch.long)
        mask[:, :12] = 1
        return Condition(torch.randn(len(prompts), self.tokens, self.dim, generator=g) * 0.2, mask)


def full_pas_model(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiffSplatModel:
    """DiffSplat-PixArt-Sigma at its real size with random weights (seed 0), the transformer in ``dtype``, the
    GSVAE in fp32, text from :class:`RandomText`."""
    torch.manual_seed(0)
    denoiser = PixArtTransformer2DModel(**PIXART_SIGMA_512).to(device, dtype).eval().requires_grad_(False)
    gsvae = AutoencoderKL(**GSVAE_CONFIG).to(device).eval().requires_grad_(False)
    return DiffSplatModel(RELEASES["diffsplat-pas"], denoiser, gsvae, RandomText()).to(device)
