"""Knobs: a method's settings declared once, with everything the rest of the project needs to know about them.

A method's config is a dataclass whose fields are made with :func:`knob`::

    @dataclass
    class DraftConfig:
        k: int = knob(1, "sampler steps the reward gradient goes back through", low=1, sweep=(1, 2, 4), strength=1)

The metadata is read by the command line's help (``python -m engine.align --help``), the config's
validation (ranges and choices, with the knob's own help in the message), the studio's widgets (title,
help, dropdown choices), the study's sweep (the grid, the "strength" knob of Pareto fronts) and reward-aware
defaults (a value per unit of the reward's usual range, for knobs that multiply the raw reward).
Cross-knob rules (e.g. ``k_min <= k_max``) stay in the config's own ``validate(steps)``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    """What a knob declares besides its default."""

    help: str = ""
    title: str | None = None  # the studio's label, e.g. "β (beta)"; default: the field's name
    choices: tuple | None = None  # a closed set of values (the studio shows a dropdown)
    low: float | None = None  # inclusive bounds (``open_low``: low itself is refused)
    high: float | None = None
    open_low: bool = False
    sweep: tuple | None = None  # the study's grid for this knob (the default among them); per reward unit if scaled
    sweep_with: tuple[str, ...] = ()  # other knobs of the same config set to the same value (GRPO's symmetric clip)
    # the method's strength knob, the axis of its Pareto front (at most one per method): +1 when a larger value
    # moves further from the base (β), -1 when it holds closer (a KL weight); 0: not the strength
    strength: int = 0
    per_reward_range: float | None = None  # a None default means this value / (the reward's usual range)
    active_with: str | None = None  # a bool knob of the same config without which this one has no effect
    inert: str | None = None  # why the knob has no effect in this trainer at all (the study does not sweep it)

    @property
    def note(self) -> str:
        """The help plus when the knob acts, for help texts and the studio."""
        when = f" (acts only with {self.active_with} = true)" if self.active_with else ""
        if self.inert:
            when += f" (no effect in this trainer: {self.inert})"
        return f"{self.help}{when}"


def knob(default: Any, help: str = "", **meta: Any) -> Any:
    """A dataclass field with :class:`Knob` metadata (``default`` may be a value or None)."""
    return dataclasses.field(default=default, metadata={"knob": Knob(help=help, **meta)})


@dataclass(frozen=True)
class KnobField:
    """One knob of a config class: its name, type, default and declaration."""

    group: str  # the RunConfig key of the method's knobs (nabla, draft, ...)
    name: str
    type: type
    default: Any
    meta: Knob

    @property
    def dotted(self) -> str:  # the --set name, e.g. nabla.beta
        return f"{self.group}.{self.name}"

    @property
    def title(self) -> str:
        return self.meta.title or self.name


def knob_fields(config_cls: type, group: str) -> list[KnobField]:
    """Every field of a method's config class, in order (a field made without :func:`knob` gets empty metadata)."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if args and type(None) in typing.get_args(tp) else tp
        out.append(KnobField(group, f.name, base, f.default, f.metadata.get("knob", Knob())))
    return out


def bad_value(name: str, value, reason: str, fix: str) -> ValueError:
    """The project's config error: value, reason and what to do."""
    return ValueError(f"{name} = {value!r}: {reason}; {fix}.")


def check_knobs(config, group: str) -> None:
    """Each knob's declared type, choices and bounds (ValueError naming the knob, its help and the fix)."""
    for k in knob_fields(type(config), group):
        value, m = getattr(config, k.name), k.meta
        about = f" ({m.help})" if m.help else ""
        if value is None:
            if k.default is None:
                continue  # filled from the reward (per_reward_range) before use
            raise bad_value(k.dotted, value, "must be set", f"its default is {k.default!r}")
        if k.type is bool and not isinstance(value, bool):
            raise bad_value(k.dotted, value, "must be true or false", f"the default is {k.default!r}{about}")
        if k.type in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad_value(k.dotted, value, "must be a number", f"the default is {k.default!r}{about}")
        if k.type is int and isinstance(value, float) and not value.is_integer():
            raise bad_value(k.dotted, value, "must be a whole number", f"the default is {k.default!r}")
        if m.choices is not None and value not in m.choices:
            raise bad_value(k.dotted, value, "unknown option", f"choose one of {', '.join(map(str, m.choices))}{about}")
        below = m.low is not None and (value < m.low or (m.open_low and value == m.low))
        if below or (m.high is not None and value > m.high):
            raise bad_value(k.dotted, value, f"must be {_bounds(m)}", _fix(k))


def _bounds(m: Knob) -> str:
    if m.low is not None and m.high is not None:
        return f"in {'(' if m.open_low else '['}{m.low:g}, {m.high:g}]"
    return f"{'>' if m.open_low else '>='} {m.low:g}" if m.low is not None else f"<= {m.high:g}"


def _fix(k: KnobField) -> str:
    default = "" if k.default is None else f"the default is {k.default!r}"
    return "; ".join(filter(None, [default, k.meta.help])) or "see python -m engine.align --help"


def reward_scaled(config, group: str, span: float | None) -> dict[str, float]:
    """{knob: value} for the knobs left None that are declared per unit of the reward's range: per_reward_range /
    span, to 3 significant digits. ValueError when such a knob is unset and the reward's span is unknown."""
    out = {}
    for k in knob_fields(type(config), group):
        if getattr(config, k.name) is None and k.meta.per_reward_range is not None:
            if not span:
                raise bad_value(k.dotted, None, "has no default for this reward (its usual range is unknown)",
                                f"set it, e.g. --set {k.dotted}=1e3")
            out[k.name] = scaled_default(k, span)
    return out


def scaled_default(k: KnobField, span: float) -> float:
    """A per-reward-range knob's value for a reward whose usual range is ``span`` (3 significant digits)."""
    return float(f"{k.meta.per_reward_range / span:.3g}")


def inactive_knobs(config, group: str) -> list[tuple[KnobField, str]]:
    """(knob, why) for the knobs of ``config`` set to something that does nothing: their ``active_with`` switch is
    off, or they are inert in this trainer and set away from their default."""
    out = []
    for k in knob_fields(type(config), group):
        if k.meta.active_with and not getattr(config, k.meta.active_with):
            out.append((k, f"it acts only with {k.group}.{k.meta.active_with} = true"))
        elif k.meta.inert and getattr(config, k.name) != k.default:
            out.append((k, k.meta.inert))
    return out


def strength_knob(config_cls: type, group: str) -> KnobField | None:
    """The knob declared as the method's strength (the axis of its Pareto front), if any."""
    return next((k for k in knob_fields(config_cls, group) if k.meta.strength), None)


def sweep_knob(config_cls: type, group: str) -> KnobField | None:
    """The knob the study sweeps for this method (the first with a grid that is not inert), if any."""
    return next((k for k in knob_fields(config_cls, group) if k.meta.sweep and not k.meta.inert), None)


def sweep_grid(config_cls: type, group: str, span: float | None = None) -> tuple[tuple[str, ...], tuple]:
    """(dotted knobs set together, values) of the study's sweep for a method; values per unit of the reward's
    range are divided by ``span`` (3 significant digits). ((), ()) when the method declares no grid."""
    k = sweep_knob(config_cls, group)
    if k is None:
        return (), ()
    values = k.meta.sweep
    if k.meta.per_reward_range is not None:
        if not span:
            raise bad_value(k.dotted, None, "its sweep is per unit of the reward's range, which is unknown", "give a reward")
        values = tuple(float(f"{v / span:.3g}") for v in values)
    return (k.dotted, *(f"{group}.{n}" for n in k.meta.sweep_with)), tuple(values)
