"""One run config: the shared settings, and one nested dataclass of knobs per method.

Saved as ``config.json`` in the run folder, so every curve traces back to the exact settings and seed.
``RunConfig.from_dict`` refuses unknown keys; ``apply_overrides(["nabla.beta=1e4", "lr=1e-3"])`` sets
fields from the command line with the field's own type; ``validate()`` says value, reason and fix.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


def _bad(name: str, value, reason: str, fix: str) -> ValueError:
    return ValueError(f"{name} = {value!r}: {reason}; {fix}.")


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise _bad(name, value, "must be in (0, 1]", "it is the share of sampler steps trained per trajectory, e.g. 0.4")


@dataclass
class NablaConfig:
    """Nabla-R2D3: forward residual ∇-DB with the forward-looking reward gradient (research/nabla-r2d3.md §1.3-1.6)."""

    # On the tiny model 3e3 barely moves the samples: the last sampler step's score coefficient (~1e3) needs
    # ~1e6 per unit of the reward's range (bench/compare_methods.py). The inline comment is the studio's help.
    beta: float = 3e3  # reward temperature: target p ∝ p_ref · exp(β r)
    reg: float = 1e3  # λ: ε-space trust region to the sampling policy (only bites off-policy, see `lag`)
    strength: float = 1.0  # κ: weight of the reference score
    timestep_fraction: float = 0.4  # K = int(N · fraction) transitions per trajectory, the terminal one always
    low_variance: bool = True  # one transition per stratum of the trajectory (plus the terminal one)
    adaptive_scaling: str = "squared"  # g · ᾱ(t_next) ("squared"), · sqrt(ᾱ) ("sqrt") or "none"
    alpha_prod_clip: bool = False  # ᾱ ← ᾱ^1.5, zero where ᾱ^1.5 <= 0.05
    reward_grad_clip: float = 0.0  # per-sample L2 clip of β∇r before scaling (0 = off)
    n_reward_avg: int = 1  # noisy copies of the renders whose reward gradients are averaged
    image_noise: float = 2e-3  # std of the noise on those copies
    reward_views: int = 0  # score this many of the views per transition (0 = all; 2 = the memory-saving mode)
    loss: str = "l2"  # "l2" or "l1"
    # "score": the residual in score units, as the paper (the last sampler step's c_j ~ 1e3 makes it most of the
    # loss); "eps": divided by c_j, each transition weighs alike. Same fixed point (engine/align/theory/THEORY.md §3)
    weighting: str = "score"
    lookahead: str = "next"  # x̂0 at ᾱ(t_{j+1}); "reference" reproduces the reference's double shift (§8 B1)
    lag: bool = False  # train on the previous round's samples (the reference's one-round lag, §2.4)

    def validate(self, steps: int) -> None:
        if self.beta < 0:
            raise _bad("nabla.beta", self.beta, "must be >= 0", "it scales the reward gradient; the tiny model moves at ~1e6 per unit of reward range")
        if self.reg < 0:
            raise _bad("nabla.reg", self.reg, "must be >= 0", "use 0 to turn the regulariser off")
        if self.strength < 0:
            raise _bad("nabla.strength", self.strength, "must be >= 0", "1.0 is the method's κ")
        _check_fraction("nabla.timestep_fraction", self.timestep_fraction)
        if int(steps * self.timestep_fraction) < 1:
            raise _bad("nabla.timestep_fraction", self.timestep_fraction, f"trains no transition of {steps} sampler steps",
                       "raise it so that steps x fraction >= 1")
        _choice("nabla.adaptive_scaling", self.adaptive_scaling, ("squared", "sqrt", "none"))
        _choice("nabla.loss", self.loss, ("l2", "l1"))
        _choice("nabla.weighting", self.weighting, ("score", "eps"))
        _choice("nabla.lookahead", self.lookahead, ("next", "reference"))
        if self.reward_grad_clip < 0:
            raise _bad("nabla.reward_grad_clip", self.reward_grad_clip, "must be >= 0", "0 turns the clip off")
        if self.n_reward_avg < 1:
            raise _bad("nabla.n_reward_avg", self.n_reward_avg, "must be >= 1", "1 scores the renders once")
        if self.image_noise < 0:
            raise _bad("nabla.image_noise", self.image_noise, "must be >= 0", "the reference uses 2e-3")
        if self.reward_views < 0:
            raise _bad("nabla.reward_views", self.reward_views, "must be >= 0", "0 scores every view")


@dataclass
class ReflConfig:
    """ReFL: reward of the one-step x̂0 from a random late step, its gradient into θ (research/rl-trainers.md §4.1)."""

    first_fraction: float = 0.75  # the step is drawn from [first_fraction · N, N - 2]
    kl: float = 0.0  # ε-space pull to the base model (0 = the reference's plain ReFL)

    def validate(self, steps: int) -> None:
        _check_fraction("refl.first_fraction", self.first_fraction)
        if steps < 3:
            raise _bad("steps", steps, "ReFL needs at least 3 sampler steps", "use the default 20")
        _nonneg("refl.kl", self.kl)


@dataclass
class DraftConfig:
    """DRaFT-K: backprop the final reward through the last K sampler steps; ``lv``: DRaFT-LV (§4.2)."""

    k: int = 1
    lv: bool = False  # K = 1 with `lv_samples` re-noisings of the detached final sample
    lv_samples: int = 2
    kl: float = 0.0

    def validate(self, steps: int) -> None:
        if not 1 <= self.k <= steps:
            raise _bad("draft.k", self.k, f"must be in [1, {steps}] (the sampler steps)", "K = 1 is the usual choice")
        if self.lv_samples < 1:
            raise _bad("draft.lv_samples", self.lv_samples, "must be >= 1", "the paper uses 2")
        _nonneg("draft.kl", self.kl)


@dataclass
class AlignPropConfig:
    """AlignProp: backprop through a random number K of final steps, drawn once per rollout, with checkpointing (§4.3)."""

    k_min: int = 1
    k_max: int = 4
    checkpointing: bool = True
    kl: float = 0.0

    def validate(self, steps: int) -> None:
        if not 1 <= self.k_min <= self.k_max <= steps:
            raise _bad("alignprop.k_min/k_max", (self.k_min, self.k_max), f"need 1 <= k_min <= k_max <= {steps}",
                       "e.g. k_min=1 k_max=4")
        _nonneg("alignprop.kl", self.kl)


@dataclass
class DdpoConfig:
    """DDPO: PPO-clip on the recorded transitions' log-probabilities, per-prompt advantages (§5)."""

    clip_range: float = 1e-4
    adv_clip: float = 5.0
    timestep_fraction: float = 1.0  # of the N - 1 steps (the last, near-deterministic one is never trained)
    buffer_size: int = 16  # per-prompt reward history for the advantage statistics
    min_count: int = 8  # below this many rewards for a prompt, use the batch's statistics

    def validate(self, steps: int) -> None:
        _positive("ddpo.clip_range", self.clip_range)
        _positive("ddpo.adv_clip", self.adv_clip)
        _check_fraction("ddpo.timestep_fraction", self.timestep_fraction)
        if self.buffer_size < 1 or self.min_count < 1:
            raise _bad("ddpo.buffer_size/min_count", (self.buffer_size, self.min_count), "must be >= 1", "e.g. 16 and 8")


@dataclass
class GrpoConfig:
    """GRPO-style: groups of samples per prompt, group-relative advantages, clip, optional KL; DAPO options (§3)."""

    group_size: int = 4
    clip_low: float = 1e-4
    clip_high: float = 1e-4  # > clip_low is DAPO's clip-higher, e.g. 1.4e-4
    adv_clip: float = 5.0
    std: str = "global"  # advantage scale: "global" (Flow-GRPO) or "group"
    kl: float = 0.0  # β_KL · ||μ_θ - μ_ref||² / (2 std²)
    dynamic_sampling: bool = False  # drop groups whose rewards do not vary (DAPO)
    min_group_std: float = 1e-6
    average: str = "transition"  # "transition" (DAPO's token-level mean) or "sample"
    timestep_fraction: float = 0.6

    def validate(self, steps: int) -> None:
        if self.group_size < 2:
            raise _bad("grpo.group_size", self.group_size, "must be >= 2", "groups compare samples of one prompt")
        _positive("grpo.clip_low", self.clip_low)
        _positive("grpo.clip_high", self.clip_high)
        _positive("grpo.adv_clip", self.adv_clip)
        _choice("grpo.std", self.std, ("global", "group"))
        _choice("grpo.average", self.average, ("transition", "sample"))
        _nonneg("grpo.kl", self.kl)
        _check_fraction("grpo.timestep_fraction", self.timestep_fraction)


@dataclass
class NftConfig:
    """DiffusionNFT: the forward-process, negative-aware objective on ε-model outputs (§2.8, option iii: CFG'd)."""

    beta: float = 1.0  # NFT's mixing strength (not the KL weight)
    kl: float = 1e-4  # ε-space KL to the base model
    adv_clip: float = 5.0
    group_size: int = 4
    timesteps: int = 4  # trained noise levels per sample, drawn from the sampler's steps
    min_step: int = 6  # train only steps j >= min_step (σ/α <= 12, research §2.8 (b))
    old_decay_rate: float = 0.001  # old-policy EMA: η = min(rate · step, max) (the official "type 1")
    old_decay_max: float = 0.5

    def validate(self, steps: int) -> None:
        _positive("nft.beta", self.beta)
        _nonneg("nft.kl", self.kl)
        _positive("nft.adv_clip", self.adv_clip)
        if self.group_size < 2:
            raise _bad("nft.group_size", self.group_size, "must be >= 2", "advantages compare samples of one prompt")
        if not 0 <= self.min_step < steps:
            raise _bad("nft.min_step", self.min_step, f"must be in [0, {steps - 1}]", "6 keeps σ/α <= 12")
        if not 1 <= self.timesteps <= steps - self.min_step:
            raise _bad("nft.timesteps", self.timesteps, f"must be in [1, {steps - self.min_step}]", "e.g. 4")
        if not 0 <= self.old_decay_max < 1 or self.old_decay_rate < 0:
            raise _bad("nft.old_decay_max", self.old_decay_max, "must be in [0, 1) with a rate >= 0", "0.5 as the official code")


def _choice(name: str, value, options: tuple) -> None:
    if value not in options:
        raise _bad(name, value, "unknown option", f"choose one of {', '.join(map(str, options))}")


def _nonneg(name: str, value: float) -> None:
    if value < 0:
        raise _bad(name, value, "must be >= 0", "use 0 to turn it off")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise _bad(name, value, "must be > 0", "see the method's defaults in the README")


@dataclass
class RunConfig:
    """Everything that defines a finetuning run. Nested: one knob set per method (only the chosen one is used)."""

    method: str = "nabla-r2d3"
    reward: str = "geometry"  # any spec the rewards registry accepts: "geometry", "alignment:1,geometry:0.5"
    reward_weights: dict[str, str] = field(default_factory=dict)  # real rewards: name -> local weights path
    # build options per reward. Geometry trains on its full gradient: with the depth detached (the reference's
    # pseudo-target, the registry's default) a step along the gradient lowered DNC on the tiny model
    reward_options: dict[str, dict] = field(default_factory=lambda: {"geometry": {"detach_depth": False}})
    model: str = "tiny"
    weights: str | None = None  # base model folder (default: the shipped checkpoint)
    prompts: str | None = None  # prompt file, one per line (default: assets/prompts/train.txt)
    steps: int = 100  # optimiser steps
    batch_size: int = 4  # trajectories per optimiser step, over all processes
    sampler_steps: int = 20
    guidance: float | None = None  # None: the model's default
    lr: float = 1e-4  # 1e-3 degraded geometry within 6 steps; 1e-4 raised it (see the README)
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    lora_rank: int = 8
    lora_alpha: float | None = None  # None: = rank
    seed: int = 0
    render_resolution: int = 128
    reward_views: int = 4  # cameras on the reward rig (evenly spaced azimuths)
    view_azimuth_range: float = 20.0  # the rig turns by U(-range/2, range/2) degrees per draw
    view_elevation_jitter: float = 5.0  # elevation 10 ± jitter/2... degrees (the generation views' elevation)
    aggregate: str = "mean"  # over views: "mean" or "max"
    checkpoint_every: int = 10
    sample_every: int = 10  # 4-view strips of fixed prompts into samples/ (0 = off)
    eval_every: int = 0  # held-out evaluation into eval.csv (0 = only at the end when eval_at_end)
    eval_at_end: bool = False
    eval_prompts: str | None = None  # default: assets/prompts/eval_held_out.txt
    eval_seeds: int = 2
    device: str = "cpu"
    dtype: str = "fp32"  # the denoiser's precision (DiffSplat on a GPU: bf16); rewards always fp32
    # sampler calls (sample x step) kept with their autograd graph so that the loss differentiates the pass
    # that sampled instead of running it again (~60 MB each on the tiny model); 0 recomputes every one
    reuse_calls: int = 32
    nabla: NablaConfig = field(default_factory=NablaConfig)
    refl: ReflConfig = field(default_factory=ReflConfig)
    draft: DraftConfig = field(default_factory=DraftConfig)
    alignprop: AlignPropConfig = field(default_factory=AlignPropConfig)
    ddpo: DdpoConfig = field(default_factory=DdpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    nft: NftConfig = field(default_factory=NftConfig)

    # -- checks ------------------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        from .methods import METHODS

        if self.method not in METHODS:
            raise _bad("method", self.method, "unknown method", f"choose one of {', '.join(METHODS)}")
        for name in ("steps", "batch_size", "sampler_steps", "lora_rank", "render_resolution", "reward_views", "eval_seeds"):
            if getattr(self, name) < 1:
                raise _bad(name, getattr(self, name), "must be >= 1", "see `python -m engine.align --help`")
        for name in ("checkpoint_every", "sample_every", "eval_every", "reuse_calls"):
            if getattr(self, name) < 0:
                raise _bad(name, getattr(self, name), "must be >= 0", "0 turns it off")
        if self.lr <= 0:
            raise _bad("lr", self.lr, "must be > 0", "LoRA learning rates are usually 1e-4 to 1e-3")
        if self.max_grad_norm <= 0:
            raise _bad("max_grad_norm", self.max_grad_norm, "must be > 0", "1.0 is the usual clip")
        if self.guidance is not None and self.guidance < 1:
            raise _bad("guidance", self.guidance, "must be >= 1", "leave it unset for the model's default")
        _choice("aggregate", self.aggregate, ("mean", "max"))
        _choice("dtype", self.dtype, ("fp32", "bf16", "fp16"))
        self.method_config().validate(self.sampler_steps)
        group = getattr(self.method_config(), "group_size", 1)
        if self.batch_size % group:
            raise _bad("batch_size", self.batch_size, f"must be a multiple of {self.method}'s group_size {group}",
                       f"use {group * max(1, self.batch_size // group)}")
        return self

    def method_config(self):
        from .methods import METHODS

        return getattr(self, METHODS[self.method].config_field)

    # -- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return _build(cls, data, "")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def apply_overrides(self, items: list[str]) -> "RunConfig":
        """``["nabla.beta=1e4", "lr=3e-4"]`` -> a new config with those fields set (typed as the fields)."""
        data = self.to_dict()
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value, e.g. nabla.beta=1e4.")
            *path, last = key.strip().split(".")
            node, owner = data, type(self)
            for part in path:
                if part not in node or not isinstance(node[part], dict):
                    raise ValueError(f"--set {item!r}: unknown group {part!r}; groups: {', '.join(_groups())}.")
                owner, node = _field_type(owner, part), node[part]
            if last not in node:
                raise ValueError(f"--set {item!r}: unknown knob {last!r}; {'.'.join(path) or 'run'} has: {', '.join(node)}.")
            node[last] = _parse(raw.strip(), _field_type(owner, last), key)
        return type(self).from_dict(data)


def _groups() -> list[str]:
    return [f.name for f in fields(RunConfig) if dataclasses.is_dataclass(_field_type(RunConfig, f.name))]


def _field_type(owner: type, name: str):
    return typing.get_type_hints(owner)[name]


def _parse(raw: str, tp, key: str):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if raw.lower() in ("none", "null") and type(None) in typing.get_args(tp):
        return None
    base = args[0] if args and typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) else tp
    try:
        if base is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if base is int:
            return int(float(raw)) if float(raw).is_integer() else int(raw)
        if base is float:
            return float(raw)
        if base is str:
            return raw
    except ValueError:
        raise ValueError(f"--set {key}={raw}: expected a {getattr(base, '__name__', base)}.") from None
    raise ValueError(f"--set {key}: this knob cannot be set from the command line.")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ValueError(f"config{prefix or ''}: expected an object, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"Unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(names))}.")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        kwargs[key] = _build(tp, value, f"{prefix}{key}.") if dataclasses.is_dataclass(tp) else value
    return cls(**kwargs)
