"""open_clip models for the rewards, from local files only.

open_clip builds the models (``create_model``) and tokenizes (``get_tokenizer``); this adapter adds
what the rewards need around it:

- no network: the architecture is an open_clip built-in name or the ``open_clip_config.json`` beside
  the weights, never a pretrained tag, and configurations that need a Hugging Face text model or
  tokenizer are refused (open_clip's own BPE vocabulary ships in its wheel);
- the checkpoint's keys and shapes are checked against the model before anything loads, with a
  message that names the mismatch; torch pickles are read with ``weights_only=True``;
- fp32 weights, loaded into a model built on the meta device (no random initialisation of a
  billion parameters that the checkpoint then overwrites);
- differentiable preprocessing of render tensors, equal to open_clip's eval transforms.

open_clip is imported only when a model is built: importing it takes seconds (torchvision,
transformers), and ``python -m engine.rewards --list`` needs none of it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONFIG_FILE = "open_clip_config.json"
# entries some open_clip checkpoints carry that the model may not hold (an old saved causal mask, a logit bias)
_IGNORED_KEYS = ("attn_mask", "logit_bias")


def model_source(weights: Path, model_name: str) -> str:
    """What open_clip builds for ``weights``: its folder when an open_clip_config.json lies beside it (as in
    open_clip's Hugging Face repositories), else the built-in configuration ``model_name``."""
    import open_clip

    source = f"local-dir:{weights.parent}" if (weights.parent / CONFIG_FILE).is_file() else model_name
    cfg = open_clip.get_model_config(source)
    if cfg is None:
        raise ValueError(f"Unknown open_clip model {model_name!r}: not one of open_clip's built-in configurations "
                         f"(open_clip.list_models()), and there is no {CONFIG_FILE} beside {weights}.")
    text = cfg.get("text_cfg", {})
    hub = [f"{k}={text[k]!r}" for k in ("hf_model_name", "hf_tokenizer_name") if text.get(k)]
    if hub:  # transformers would fetch these from the hub; the rewards load nothing from the network
        raise ValueError(f"open_clip model {source} needs a Hugging Face text model or tokenizer ({', '.join(hub)}), "
                         "which is not downloaded here. Use a CLIP with open_clip's own text tower and tokenizer "
                         "(ViT-B-32, ViT-B-16, ViT-L-14, ViT-H-14, ...).")
    return source


class _QuietFactory(logging.Filter):
    """Drops open_clip's "no pretrained weights loaded, initialised randomly" warnings: we load the weights."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.module == "factory" and "open_clip" in record.pathname)


@contextmanager
def _quiet_open_clip():
    quiet = _QuietFactory()
    logging.getLogger().addFilter(quiet)  # open_clip logs through the root logger
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch pickle read with ``weights_only=True``
    (a top-level ``state_dict`` entry, as in HPSv2's files, and DDP's ``module.`` prefixes are unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # TorchScript archives (OpenAI's .pt), pickles with code, corrupt files
            raise ValueError(f"{path} is not a plain tensor checkpoint that can be read safely ({type(e).__name__}: "
                             f"{str(e)[:200]}). Use open_clip's .safetensors or .bin weights.") from e
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path} does not hold a dictionary of tensors.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def check_state_dict(model: nn.Module, sd: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The checkpoint's tensors for ``model``, after checking key set, shapes and dtypes (clear error otherwise)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = {k: v for k, v in sd.items() if k in expected or not k.endswith(_IGNORED_KEYS)}
    for k in ("logit_scale", "logit_bias"):  # a scalar saved as [1] or the reverse, as open_clip's loader allows
        if k in sd and k in expected and sd[k].numel() == 1:
            sd[k] = sd[k].reshape(expected[k])
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k}: {list(sd[k].shape)} vs {list(s)}" for k, s in expected.items() if k in sd and tuple(sd[k].shape) != s]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} with other shapes (e.g. {wrong[:2]})" if wrong else ""]
        raise ValueError(f"{source} does not match the expected model: " + "; ".join(p for p in parts if p)
                         + ". Is it the right file for this model name?")
    bad_dtype = [k for k, v in sd.items() if not v.is_floating_point()]
    if bad_dtype:
        raise ValueError(f"{source}: non-float tensors {bad_dtype[:3]}.")
    return sd


def load_clip(path: str | Path, source: str, image_only: bool = False) -> nn.Module:
    """An fp32 open_clip model (``image_only``: its image tower, ``model.visual``) with the weights of a
    checkpoint file, checked before loading. ``source`` comes from :func:`model_source`."""
    import open_clip

    sd = read_state_dict(path)
    with _quiet_open_clip(), torch.device("meta"):
        model = open_clip.create_model(source, load_weights=False, device="meta")
    if image_only:
        model = model.visual
        sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    sd = check_state_dict(model, sd, f"{path} (open_clip {source})")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, assign=True)
    _rebuild_causal_masks(model, source)
    return model.eval()


def _rebuild_causal_masks(model: nn.Module, source: str) -> None:
    """Non-persistent buffers are not in checkpoints, so a meta-built model lacks them: open_clip's CLIP has
    one, the text tower's causal mask (``TextTransformer.build_causal_mask``), made here the same way."""
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and name.split(".")[-1] == "attn_mask":
            owner = model.get_submodule(name.rpartition(".")[0])
            owner.register_buffer("attn_mask", torch.full(buffer.shape, float("-inf")).triu_(1), persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"open_clip model {source} holds tensors that are neither in the checkpoint nor rebuilt here "
                         f"({left[:3]}); these rewards support open_clip's CLIP models (ViT-B-32, ViT-L-14, ViT-H-14, ...).")


class PackedSelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` for batch-first self-attention, with the same parameters and results, and its
    projections on contiguous ``[N, L, E]`` tensors. torch's own path transposes to ``[L, N, E]`` first, which
    turns each projection into a batched matmul over a per-token copy of the weight: on the CPU, open_clip's
    ViT-B-32 took 1.3x longer forward and 1.6-2.9x longer backward than with this class."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True,
                is_causal=False):
        if (need_weights or key_padding_mask is not None or is_causal or not (query is key is value) or not self.batch_first
                or not self._qkv_same_embed_dim or self.bias_k is not None or self.add_zero_attn or query.dim() != 3):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)
        n, length, dim = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # torch's MHA: True = masked out; SDPA: True = kept
            attn_mask = ~attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim)), None


def pack_attention(model: nn.Module) -> nn.Module:
    """Swaps every batch-first ``nn.MultiheadAttention`` in ``model`` for :class:`PackedSelfAttention` (in
    place: the class only, the parameters stay)."""
    for module in model.modules():
        if type(module) is nn.MultiheadAttention and module.batch_first:
            module.__class__ = PackedSelfAttention
    return model


def get_tokenizer(source: str):
    """open_clip's tokenizer for ``source`` (its SimpleTokenizer: the BPE vocabulary ships in the wheel)."""
    import open_clip

    return open_clip.get_tokenizer(source)


# ---------------------------------------------------------------------------------------- preprocessing

def preprocess(images: Tensor, size: int, fit: Literal["crop", "pad", "stretch"] = "crop", *, antialias: bool = True,
               mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073),
               std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)) -> Tensor:
    """Differentiable CLIP preprocessing on tensors: [N, 3, H, W] in [0, 1] -> [N, 3, size, size].

    ``crop``: bicubic resize of the short side + centre crop (open_clip's eval transform, the same sizes
    and offsets as torchvision's ``Resize`` and ``CenterCrop``);
    ``pad``: the long side to ``size`` and black padding (HPSv2's ResizeMaxSize, open_clip's ``longest``);
    ``stretch``: straight to size x size (open_clip's ``squash``; the aesthetic reference without antialias).
    """
    x = images.to(torch.promote_types(images.dtype, torch.float32))  # fp32 at least: bf16 is too coarse for rewards
    H, W = x.shape[-2:]
    if fit == "stretch":
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)
    elif fit in ("crop", "pad"):
        if fit == "crop":  # torchvision's rule: the short side to size, the long one truncated
            h, w = (size, int(size * W / H)) if H <= W else (int(size * H / W), size)
        else:
            scale = size / max(H, W)
            h, w = max(1, round(H * scale)), max(1, round(W * scale))
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
        if fit == "crop":
            top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
            x = x[..., top:top + size, left:left + size]
        else:
            ph, pw = size - h, size - w
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    else:
        raise ValueError(f"fit must be 'crop', 'pad' or 'stretch', got {fit!r}.")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def pixels_for(visual: nn.Module, images: Tensor, fit: Literal["crop", "pad", "stretch"], antialias: bool = True) -> Tensor:
    """Renders preprocessed for an open_clip image tower: its input size, mean and std, its dtype."""
    cfg = visual.preprocess_cfg
    h, w = (cfg["size"], cfg["size"]) if isinstance(cfg["size"], int) else cfg["size"]
    if h != w:
        raise ValueError(f"Only square CLIP inputs are supported, this model takes {h}x{w}.")
    pixels = preprocess(images, h, fit, antialias=antialias, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    return pixels.to(next(visual.parameters()).dtype)
