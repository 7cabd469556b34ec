"""One run config: the shared settings, and one knob set per registered method.

Saved as ``config.json`` in the run folder, so every curve traces back to the exact settings and seed. A
method's knobs are its own config dataclass (declared in its module, engine/align/methods/), kept under the
method's group key: ``config.nabla.beta``, ``"nabla": {...}`` in config.json. ``RunConfig.from_dict`` refuses
unknown keys and fills the groups a config predates with their defaults; ``apply_overrides(["nabla.beta=1e4",
"lr=1e-3"])`` sets fields from the command line with the field's own type; ``validate()`` says value, reason
and fix, and fills knobs whose default depends on the reward (Nabla-R2D3's β).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .knobs import bad_value as _bad
from ..core.io import atomic_write_json
from .knobs import check_knobs, reward_scaled


def _choice(name: str, value, options: tuple) -> None:
    if value not in options:
        raise _bad(name, value, "unknown option", f"choose one of {', '.join(map(str, options))}")


def method_groups() -> dict[str, type]:
    """{group key: knob dataclass} of every registered method, in registry order."""
    from .methods import METHODS

    return {cls.config_field: cls.config for cls in METHODS.values()}


def _default_knobs() -> dict[str, Any]:
    return {group: cls() for group, cls in method_groups().items()}


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
    # one knob set per registered method, by group key (only the chosen method's is used); read as config.nabla
    knobs: dict[str, Any] = field(default_factory=_default_knobs, repr=False)

    def __post_init__(self):
        self.knobs = {group: copy.copy(value) for group, value in self.knobs.items()}  # never shared with a copy

    def __getattr__(self, name: str):
        # only reached when ordinary lookup fails: a method's knob group; one registered after this config was
        # made starts at its defaults
        knobs = self.__dict__.get("knobs")
        if knobs is not None:
            if name in knobs:
                return knobs[name]
            cls = method_groups().get(name)
            if cls is not None:
                return knobs.setdefault(name, cls())
        raise AttributeError(f"{type(self).__name__!s} has no field or method group {name!r}")

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
        knobs, group_key = self.method_config(), METHODS[self.method].config_field
        span = _reward_span(self.reward)
        for name, value in reward_scaled(knobs, group_key, span).items():
            setattr(knobs, name, value)  # e.g. Nabla-R2D3's beta, per unit of this reward's range
        check_knobs(knobs, group_key)
        if hasattr(knobs, "validate"):
            knobs.validate(self.sampler_steps)
        group = getattr(knobs, "group_size", 1)
        if self.batch_size % group:
            raise _bad("batch_size", self.batch_size, f"must be a multiple of {self.method}'s group_size {group}",
                       f"use {group * max(1, self.batch_size // group)}")
        return self

    def method_config(self):
        from .methods import METHODS

        return getattr(self, METHODS[self.method].config_field)

    # -- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The config.json layout: the shared fields, then one object per method group."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "knobs"}
        for group in {**method_groups(), **self.knobs}:
            out[group] = dataclasses.asdict(getattr(self, group))
        return out

    def identity(self) -> dict:
        """What makes two configs the same run: every setting except the step budget (a run may be trained
        longer: nothing in a step depends on the total) and the knobs of methods it does not use (a resumed run
        must not be refused because another method's default changed)."""
        from .methods import METHODS

        mine = METHODS[self.method].config_field if self.method in METHODS else None
        others = {*method_groups(), *self.knobs} - {mine}
        return {k: v for k, v in self.to_dict().items() if k not in others and k != "steps"}

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return _build(cls, data, "")

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

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
    return list(method_groups())


def _field_type(owner: type, name: str):
    if owner is RunConfig and name in method_groups():
        return method_groups()[name]
    return typing.get_type_hints(owner)[name]


def _reward_span(spec: str) -> float | None:
    """The reward's usual range (an ensemble's: the sum of |weights| of its range-normalised terms); None when the
    spec is not a registered reward (e.g. the theory world's)."""
    from ..rewards import reward_span

    try:
        return reward_span(spec)
    except (KeyError, ValueError):
        return None


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
    if cls is RunConfig:  # method groups go into knobs (a group the file predates keeps its defaults)
        groups = method_groups()
        data = dict(data)
        data.pop("knobs", None)
        knobs = {g: _build(groups[g], data.pop(g), f"{g}.") for g in list(data) if g in groups}
        return RunConfig(**{k: v for k, v in _build_fields(cls, data, prefix).items()}, knobs={**_default_knobs(), **knobs})
    return cls(**_build_fields(cls, data, prefix))


def _build_fields(cls, data: dict, prefix: str) -> dict:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)} - {"knobs"}
    if cls is RunConfig:
        names |= set(method_groups())
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"Unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(names))}.")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        kwargs[key] = _build(tp, value, f"{prefix}{key}.") if dataclasses.is_dataclass(tp) else value
    return kwargs
