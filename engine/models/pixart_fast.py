"""A lean forward of diffusers' ``PixArtTransformer2DModel`` for multi-view models: the same function of the
same weights (LoRA adapters included), computed with fewer and larger operations.

What it does differently from the stock forward (each exact up to float summation order):

- the V views of an object stay one sequence of V·N tokens all the way: joint self-attention needs no
  regrouping, and the per-object timestep modulation broadcasts over every token;
- cross-attention takes all V·N queries of an object against its prompt's keys once, instead of repeating
  the prompt V times, with the query and output projections moved onto the few keys and values; prompt
  tokens that every row masks out are dropped (their −10000 bias gives them a weight of exactly 0 in float32);
- q, k and v of self-attention come from one matrix product with the three weights stacked;
- a LoRA layer runs as one linear with its adapter folded in, W + s·B·A, kept until a weight changes; its
  backward gives A and B their gradients from rank-r products, as peft's unfolded layer does;
- the feed-forward runs on token chunks small enough to stay in cache, its tanh-GELU (with the
  bias of the product before it) in a native kernel (engine.models.gelu).

Only what the tiny model uses is supported (``ada_norm_single``, no additional conditions, no dropout at
train time, plain LoRA); :func:`supports` says whether a transformer qualifies, and anything else runs the
stock forward.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from torch import Tensor, nn

from .gelu import gelu_tanh


class Unsupported(TypeError):
    """The transformer uses something the lean forward does not implement: run the stock forward."""


MASK_BIAS = -10000.0  # diffusers' bias for a masked prompt token
FF_CHUNK = 1024  # tokens per feed-forward pass: its 2 MiB hidden state is reused, not re-mapped (4096: 10% slower sampling)


def supports(transformer) -> bool:
    cfg = transformer.config
    return (cfg.norm_type == "ada_norm_single" and not cfg.use_additional_conditions and transformer.caption_projection is not None
            and all(b.only_cross_attention is False and b.attn2 is not None and b.pos_embed is None for b in transformer.transformer_blocks))


def _parts(layer: nn.Module) -> tuple[nn.Linear, list[tuple[Tensor, Tensor, float]]]:
    """A linear layer's base and its active LoRA adapters [(A, B, scale)] (none for a plain Linear)."""
    if isinstance(layer, nn.Linear):
        return layer, []
    if not isinstance(layer, LoraLayer) or not isinstance(layer.get_base_layer(), nn.Linear):
        raise Unsupported(f"{type(layer).__name__} is not a linear layer the lean forward knows")
    base = layer.get_base_layer()
    if layer.disable_adapters or layer.merged:
        return base, []
    adapters = []
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}) or layer.lora_B[name].bias is not None:
            raise Unsupported("LoRA variants (DoRA, ...) and LoRA biases run the stock forward")
        dropout = layer.lora_dropout[name]
        if not isinstance(dropout, nn.Identity) and dropout.training and dropout.p > 0:
            raise Unsupported("LoRA dropout at train time runs the stock forward")
        adapters.append((layer.lora_A[name].weight, layer.lora_B[name].weight, float(layer.scaling[name])))
    return base, adapters


class _FoldedLoRA(torch.autograd.Function):
    """y = x (W + Σ s·B·A)ᵀ + b for a frozen W and b: one matrix product forward, with the folded weight given
    precomputed; backward as unfolded LoRA (x's gradient through the folded weight, A's and B's from products
    of rank r), so training costs no full-size weight gradient. ``spans``: the output rows of each adapter."""

    @staticmethod
    def forward(ctx, x, weight, bias, spans, *adapters):
        ctx.save_for_backward(x, weight, *adapters)
        ctx.spans = spans
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, *adapters = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        xs = x.reshape(-1, x.shape[-1])
        grads = []
        for (lo, hi, scale), A, B in zip(ctx.spans, adapters[0::2], adapters[1::2]):
            gi = g[:, lo:hi]
            grads.append(scale * (gi @ B).t() @ xs if _wanted(ctx, 4 + len(grads), A) else None)
            grads.append(scale * gi.t() @ (xs @ A.t()) if _wanted(ctx, 4 + len(grads), B) else None)
        gx = grad @ weight if ctx.needs_input_grad[0] else None
        return gx, None, None, None, *grads


def _wanted(ctx, index: int, leaf: Tensor) -> bool:
    """Whether this backward pass needs ``leaf``'s gradient: a pass that asks only for an input's gradient
    (Nabla-R2D3's look-ahead, torch.autograd.grad) skips the adapters' products. Asks the autograd engine
    (a private hook of PyTorch's; without it, every gradient is computed)."""
    if not ctx.needs_input_grad[index]:
        return False
    try:
        return torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(leaf).node)
    except (AttributeError, RuntimeError):
        return True


class Folded:
    """``layers`` (Linear or peft LoRA Linear, same input) as one linear map: their weights stacked along the
    output, every active adapter folded in. Calling it computes their concatenated outputs in one matrix
    product; gradients reach the adapters (not the frozen base) as they would through peft's layers."""

    def __init__(self, *layers: nn.Module):
        parts = [_parts(m) for m in layers]
        bases = [b for b, _ in parts]
        self.train = torch.is_grad_enabled() and any(p.requires_grad for _, a in parts for A, B, _ in a for p in (A, B))
        if self.train and any(b.weight.requires_grad or (b.bias is not None and b.bias.requires_grad) for b in bases):
            raise Unsupported("training base weights and an adapter together runs the stock forward")
        self.weight, self.bias = _stacked(layers, parts)
        self.spans, self.adapters, lo = [], [], 0
        for b, a in parts:
            hi = lo + b.weight.shape[0]
            for A, B, s in a:
                self.spans.append((lo, hi, s))
                self.adapters += [A, B]
            lo = hi

    def effective_weight(self) -> Tensor:
        """The stacked weight with the adapters folded in, attached to their graph when they train (for
        algebra on the weight itself rather than a product with it)."""
        if not self.train:
            return self.weight
        correction = torch.zeros_like(self.weight)
        for (lo, hi, s), A, B in zip(self.spans, self.adapters[0::2], self.adapters[1::2]):
            delta = B @ A
            correction[lo:hi] += s * (delta - delta.detach())  # value 0: the folded weight already holds it
        return self.weight + correction

    def __call__(self, x: Tensor, bias: bool = True) -> Tensor:
        """The outputs for ``x``; ``bias=False`` leaves the bias out (for a consumer that adds it itself)."""
        b = self.bias if bias else None
        if self.train:
            return _FoldedLoRA.apply(x, self.weight, b, self.spans, *self.adapters)
        return F.linear(x, self.weight, b)


_FOLDED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _stacked(layers, parts) -> tuple[Tensor, Tensor | None]:
    """The stacked, folded weight and bias of ``layers``. Folding an adapter, or stacking plain layers, costs
    a few small products or copies per layer and call, so the result is kept until a tensor it was made from
    changes (an optimiser step, a copy into the weights, another adapter): the key holds every source
    tensor's identity and version counter, and the cache holds the tensors so an identity cannot be reused.
    Plain layers whose weights autograd must see (base training) are stacked afresh on every call."""
    bases = [b for b, _ in parts]
    biases = [b.bias for b in bases]
    plain = not any(a for _, a in parts)
    if len(bases) == 1 and plain:
        return bases[0].weight, biases[0]
    if plain and torch.is_grad_enabled() and any(t is not None and t.requires_grad for b in bases for t in (b.weight, b.bias)):
        return torch.cat([b.weight for b in bases]), None if any(v is None for v in biases) else torch.cat(biases)
    sources = [t for b, a in parts for t in (b.weight, b.bias, *(x for A, B, _ in a for x in (A, B))) if t is not None]
    key = (tuple((id(t), t._version) for t in sources), tuple(s for _, a in parts for *_, s in a), len(layers))
    hit = _FOLDED.get(layers[0])
    if hit is None or hit[0] != key:
        with torch.no_grad():
            weights = [b.weight + sum(s * (B @ A).to(b.weight.dtype) for A, B, s in a) if a else b.weight for b, a in parts]
            weight = weights[0] if len(weights) == 1 else torch.cat(weights)
            bias = biases[0] if len(biases) == 1 else (None if any(v is None for v in biases) else torch.cat(biases))
        hit = _FOLDED[layers[0]] = (key, sources, weight, bias)
    return hit[2], hit[3]


def linear(x: Tensor, *layers: nn.Module) -> Tensor:
    return Folded(*layers)(x)


def _heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, H·D] -> [B, H, T, D] (a view)."""
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def _self_attention(attn, x: Tensor) -> Tensor:
    qkv = linear(x, attn.to_q, attn.to_k, attn.to_v)  # [B, T, 3C]
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, attn.heads, C3 // (3 * attn.heads)).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    return linear(_merge_heads(out), attn.to_out[0])


def _cross_attention(attn, x: Tensor, text: Tensor, bias: Tensor | None) -> Tensor:
    """Cross-attention of the V·N tokens of each object to its few prompt tokens, with q's and the output's
    projections moved onto the keys and values (associativity: (x Wq) kᵀ = x (k Wq)ᵀ and p (v Woᵀ)): products
    of the T tokens with H·L prompt columns instead of two T x C x C projections."""
    H = attn.heads
    k, v = (_heads(t, H) for t in linear(text, attn.to_k, attn.to_v).chunk(2, dim=-1))  # [B, H, L, D]
    B, _, L, D = k.shape
    to_q, to_out = Folded(attn.to_q), Folded(attn.to_out[0])
    wq, wo = to_q.effective_weight(), to_out.effective_weight()  # [H·D, C_in], [C_out, H·D]
    kq = torch.einsum("bhld,hdc->bhlc", k, wq.view(H, D, -1)) * attn.scale  # scores = x · kq + kb
    scores = torch.bmm(x, kq.reshape(B, H * L, -1).transpose(1, 2)).view(B, -1, H, L)
    if to_q.bias is not None:
        scores = scores + (torch.einsum("bhld,hd->bhl", k, to_q.bias.view(H, D)) * attn.scale)[:, None]
    if bias is not None:
        scores = scores + bias.view(B, 1, 1, L)
    vo = torch.einsum("bhld,chd->bhlc", v, wo.view(-1, H, D))  # each value through its head's output columns
    out = torch.bmm(_softmax_last(scores).view(B, -1, H * L), vo.reshape(B, H * L, -1))
    return out if to_out.bias is None else out + to_out.bias


def _softmax_last(x: Tensor) -> Tensor:
    """Softmax over a short last dimension (a few prompt tokens), where PyTorch's kernel is ~6x slower than
    these four passes; the shift by the (detached) maximum changes nothing but the range."""
    e = (x - x.detach().amax(-1, keepdim=True)).exp_()
    return e / e.sum(-1, keepdim=True)


def _feed_forward(ff, x: Tensor) -> Tensor:
    approximate = ff.net[0].approximate
    up, down = Folded(ff.net[0].proj), Folded(ff.net[2])
    if approximate == "tanh":  # the bias goes into the GELU kernel: the product writes its output once
        hidden = lambda c: gelu_tanh(up(c, bias=False), up.bias)  # noqa: E731
    else:
        hidden = lambda c: F.gelu(up(c), approximate=approximate)  # noqa: E731
    flat = x.reshape(-1, x.shape[-1])
    parts = [down(hidden(c)) for c in flat.split(FF_CHUNK)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).view(*x.shape[:-1], -1)


def _block(block, h: Tensor, text: Tensor, bias: Tensor | None, t6: Tensor) -> Tensor:
    B, _, C = h.shape
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (block.scale_shift_table[None] + t6.view(B, 6, C)).chunk(6, dim=1)
    n = torch.addcmul(shift_msa, block.norm1(h), 1 + scale_msa)
    h = torch.addcmul(h, gate_msa, _self_attention(block.attn1, n))
    h = h + _cross_attention(block.attn2, h, text, bias)
    n = torch.addcmul(shift_mlp, block.norm2(h), 1 + scale_mlp)
    return torch.addcmul(h, gate_mlp, _feed_forward(block.ff, n))


def multiview_forward(transformer, x: Tensor, timesteps: Tensor, text: Tensor, mask: Tensor, views: int) -> Tensor:
    """The transformer's output for B objects of ``views`` images each, as the stock forward gives it with joint
    self-attention over the views (engine.models.multiview).

    x [B·V, C_in, h, w]; timesteps [B] (one per object); text [B, L, D_text] and mask [B, L] once per object.
    Returns [B·V, C_out, h, w].
    """
    tr, cfg = transformer, transformer.config
    B = text.shape[0]
    keep = mask.bool().any(0)
    if not keep.all():  # no row attends to these prompt tokens: leave them out
        text, mask = text[:, keep], mask[:, keep]
    bias = None if mask.bool().all() else ((1 - mask.to(x.dtype)) * MASK_BIAS)[:, None, None, :]

    h = tr.pos_embed(x)  # [B·V, N, C]
    N, C = h.shape[1:]
    h = h.reshape(B, views * N, C)
    t6, emb = tr.adaln_single(timesteps, {"resolution": None, "aspect_ratio": None}, batch_size=B, hidden_dtype=h.dtype)
    text = tr.caption_projection(text.to(h.dtype))  # [B, L, C]
    for block in tr.transformer_blocks:
        h = _block(block, h, text, bias, t6)
    shift, scale = (tr.scale_shift_table[None] + emb[:, None]).chunk(2, dim=1)
    h = torch.addcmul(shift, tr.norm_out(h), 1 + scale)
    h = tr.proj_out(h)  # [B, V·N, p·p·C_out]
    p, side = cfg.patch_size, x.shape[-1] // cfg.patch_size
    h = h.reshape(B * views, x.shape[-2] // p, side, p, p, tr.out_channels)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(B * views, tr.out_channels, x.shape[-2], x.shape[-1])
