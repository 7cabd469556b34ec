"""An open_clip-compatible CLIP (ViT image tower + causal text transformer) and its BPE tokenizer.

The parameter names and shapes are open_clip's (``visual.conv1.weight``,
``visual.transformer.resblocks.0.attn.in_proj_weight``, ``token_embedding.weight``, ...), so open_clip
checkpoints, HPSv2's and LAION's, load into it unchanged. It exists because the open_clip package
imports torchvision, and the only torchvision on PyPI is built against CUDA torch: it fails to load on
the CPU torch this project pins. The maths is open_clip's ``CLIP`` with the default
(class-token) pooling; ``tests/test_rewards.py`` checks it against open_clip where that imports.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipConfig:
    """open_clip's model configuration (the fields its ``model_configs/*.json`` use for ViT CLIPs)."""

    embed_dim: int
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    vision_head_width: int = 64
    text_width: int = 768
    text_heads: int = 12
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    quick_gelu: bool = False

    # keys open_clip configs may carry that change the architecture; we refuse rather than guess
    _UNSUPPORTED = ("timm_model_name", "hf_model_name", "attentional_pool", "attn_pooler_queries", "no_ln_pre",
                    "final_ln_after_pool", "ls_init_value", "patch_dropout", "output_tokens", "act_kwargs",
                    "norm_kwargs", "embed_cls", "pad_id", "proj_bias", "proj_type", "layers_per_stage")

    @classmethod
    def from_open_clip(cls, cfg: dict) -> "ClipConfig":
        """From an open_clip model config (or an ``open_clip_config.json`` holding one under ``model_cfg``)."""
        cfg = cfg.get("model_cfg", cfg)
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        bad = [k for k in cls._UNSUPPORTED if k in vision or k in text]
        bad += [k for k in ("custom_text", "multimodal_cfg") if cfg.get(k)]
        if text.get("pool_type", "argmax") != "argmax" or vision.get("pool_type", "tok") != "tok":
            bad.append("pool_type")
        if bad or "embed_dim" not in cfg or isinstance(vision.get("layers"), (list, tuple)):
            raise ValueError(f"Unsupported open_clip configuration (only plain ViT CLIPs are): {sorted(set(bad)) or cfg}.")
        return cls(
            embed_dim=cfg["embed_dim"], image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 16),
            vision_width=vision.get("width", 768), vision_layers=vision.get("layers", 12),
            vision_head_width=vision.get("head_width", 64), text_width=text.get("width", 512),
            text_heads=text.get("heads", 8), text_layers=text.get("layers", 12),
            context_length=text.get("context_length", 77), vocab_size=text.get("vocab_size", 49408),
            mlp_ratio=vision.get("mlp_ratio", 4.0), quick_gelu=bool(cfg.get("quick_gelu", False)),
        )

    def to_open_clip(self) -> dict:
        return {
            "embed_dim": self.embed_dim, "quick_gelu": self.quick_gelu,
            "vision_cfg": {"image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                           "head_width": self.vision_head_width, "patch_size": self.patch_size, "mlp_ratio": self.mlp_ratio},
            "text_cfg": {"context_length": self.context_length, "vocab_size": self.vocab_size, "width": self.text_width,
                         "heads": self.text_heads, "layers": self.text_layers},
        }


# open_clip's model_configs for the towers the rewards use; "-quickgelu" selects OpenAI's activation
CONFIGS = {
    "ViT-B-32": ClipConfig(512, 224, 32, 768, 12, 64, 512, 8, 12),
    "ViT-B-16": ClipConfig(512, 224, 16, 768, 12, 64, 512, 8, 12),
    "ViT-L-14": ClipConfig(768, 224, 14, 1024, 24, 64, 768, 12, 12),
    "ViT-H-14": ClipConfig(1024, 224, 14, 1280, 32, 80, 1024, 16, 24),
}


def get_config(name: str) -> ClipConfig:
    base, quick = (name[: -len("-quickgelu")], True) if name.endswith("-quickgelu") else (name, False)
    if base not in CONFIGS:
        raise ValueError(f"Unknown CLIP model {name!r}; known: {', '.join(CONFIGS)} (each also with -quickgelu), "
                         "or put an open_clip_config.json beside the weights.")
    return ClipConfig(**{**asdict(CONFIGS[base]), "quick_gelu": quick})


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters (packed in_proj), computed with scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.normal_(self.in_proj_weight, std=width ** -0.5)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        B, L, D = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, D))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, hidden), gelu=QuickGELU() if quick_gelu else nn.GELU(), c_proj=nn.Linear(hidden, width)))

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)])

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        for block in self.resblocks:
            x = block(x, causal)
        return x


class VisionTower(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        w, grid = cfg.vision_width, cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, w) * w ** -0.5)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, w // cfg.vision_head_width, cfg.mlp_ratio, cfg.quick_gelu)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.randn(w, cfg.embed_dim) * w ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, grid^2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)[:, 0] @ self.proj


class OpenClip(nn.Module):
    """CLIP in open_clip's layout. ``text=False`` builds the image tower only (e.g. the aesthetic reward)."""

    def __init__(self, cfg: ClipConfig, text: bool = True):
        super().__init__()
        self.config, self.has_text = cfg, text
        self.visual = VisionTower(cfg)
        if text:
            w = cfg.text_width
            self.token_embedding = nn.Embedding(cfg.vocab_size, w)
            self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, w) * 0.01)
            self.transformer = Transformer(w, cfg.text_layers, cfg.text_heads, cfg.mlp_ratio, cfg.quick_gelu)
            self.ln_final = nn.LayerNorm(w)
            self.text_projection = nn.Parameter(torch.randn(w, cfg.embed_dim) * w ** -0.5)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            nn.init.normal_(self.token_embedding.weight, std=0.02)

    def encode_image(self, pixels: Tensor, normalize: bool = True) -> Tensor:
        """Preprocessed pixels [B, 3, S, S] -> image features [B, embed_dim]."""
        x = self.visual(pixels)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """Token ids [B, context_length] -> text features [B, embed_dim], pooled at the end-of-text token."""
        if not self.has_text:
            raise RuntimeError("This CLIP was built without its text tower.")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x, causal=True))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(-1)] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


# ---------------------------------------------------------------------------------------------- weights

_IGNORED_KEYS = ("attn_mask", "logit_bias")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch pickle read with ``weights_only=True``
    (a top-level ``state_dict`` entry and DDP's ``module.`` prefixes are unwrapped)."""
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
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def check_state_dict(model: nn.Module, sd: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The checkpoint's tensors for ``model``, after checking key set and shapes (clear error otherwise)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(_IGNORED_KEYS)}
    if not getattr(model, "has_text", True):
        sd = {k: v for k, v in sd.items() if k.startswith("visual.")}
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


def load_open_clip(path: str | Path, config: ClipConfig, text: bool = True) -> OpenClip:
    """An fp32 :class:`OpenClip` with the weights of an open_clip checkpoint, checked before loading."""
    sd = read_state_dict(path)
    with torch.device("meta"):
        model = OpenClip(config, text=text)
    sd = check_state_dict(model, sd, str(path))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, assign=True)
    return model.eval()


# ---------------------------------------------------------------------------------------- preprocessing

def preprocess(images: Tensor, size: int, fit: Literal["crop", "pad", "stretch"] = "crop", *, antialias: bool = True,
               mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD) -> Tensor:
    """Differentiable CLIP preprocessing on tensors: [N, 3, H, W] in [0, 1] -> [N, 3, size, size].

    ``crop``: bicubic resize of the short side + centre crop (open_clip's eval transform);
    ``pad``: the long side to ``size`` and zero padding (HPSv2's ResizeMaxSize);
    ``stretch``: straight to size x size (the reference's aesthetic scorer).
    """
    x = images.to(torch.promote_types(images.dtype, torch.float32))  # fp32 at least: bf16 is too coarse for rewards
    H, W = x.shape[-2:]
    if fit == "stretch":
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)
    elif fit in ("crop", "pad"):
        scale = size / (min(H, W) if fit == "crop" else max(H, W))
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
        if fit == "crop":
            top, left = (h - size) // 2, (w - size) // 2
            x = x[..., top:top + size, left:left + size]
        else:
            ph, pw = size - h, size - w
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    else:
        raise ValueError(f"fit must be 'crop', 'pad' or 'stretch', got {fit!r}.")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# -------------------------------------------------------------------------------------------- tokenizer

@lru_cache(1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters (BPE works on these)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in keep]
    # the order matters: it is the order of the first 256 vocabulary entries
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer (lower-cased, 77 tokens with start/end markers, zero padding)."""

    SPLIT = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

    def __init__(self, merges: list[tuple[str, str]], context_length: int = 77):
        import regex

        chars = list(_byte_to_unicode().values())
        vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]
        self.context_length = context_length
        self.vocab_size = len(vocab)
        self._pattern = regex.compile(self.SPLIT, regex.IGNORECASE)
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 77) -> "ClipTokenizer":
        """From open_clip's ``bpe_simple_vocab_16e6.txt.gz`` or a Hugging Face ``merges.txt`` (same merges)."""
        path = Path(path)
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        lines = raw.decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]  # first line is a header; CLIP keeps 48894 merges
        merges = [tuple(line.split()) for line in lines if line.strip()]
        if not merges or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not a BPE merges file.")
        return cls(merges, context_length)

    def _bpe(self, token: str) -> list[str]:
        if token in self._cache:
            return self._cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    @staticmethod
    def clean(text: str) -> str:
        try:
            import ftfy

            text = ftfy.fix_text(text)
        except ImportError:  # ftfy only repairs mojibake; plain prompts do not need it
            pass
        text = html.unescape(html.unescape(text)).strip()
        return " ".join(text.split()).lower()

    def encode(self, text: str) -> list[int]:
        table = _byte_to_unicode()
        ids = []
        for piece in self._pattern.findall(self.clean(text)):
            piece = "".join(table[b] for b in piece.encode("utf-8"))
            ids += [self.encoder[t] for t in self._bpe(piece)]
        return ids

    def __call__(self, texts: list[str]) -> Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot] + self.encode(text) + [self.eot]
            if len(ids) > self.context_length:  # truncate, keeping the end-of-text token last
                ids = ids[: self.context_length - 1] + [self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def open_clip_vocab() -> Path | None:
    """open_clip's BPE vocabulary file when the package is installed (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.exists() else None


def read_open_clip_config(folder: Path) -> ClipConfig | None:
    path = folder / "open_clip_config.json"
    return ClipConfig.from_open_clip(json.loads(path.read_text())) if path.exists() else None
