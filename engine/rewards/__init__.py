"""2D rewards on multi-view renders, behind one interface (see ``base``), and a registry by name.

Offline rewards (``geometry``, ``alignment``, ``colorfulness``) run anywhere; the real ones
(``hpsv2``, ``aesthetic``, ``clip``) need their weights on this machine. ``python -m engine.rewards
--list`` shows which can run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .base import (
    Ensemble,
    EnsembleTerm,
    Reward,
    RewardInfo,
    RewardInputs,
    flatten_renders,
    normalise,
    score_assets,
)
from .offline import AlignmentReward, ColorfulnessReward, GeometryOfficialReward, GeometryReward
from .preference import AestheticReward, ClipScoreReward, HPSv2Reward, MissingWeights

__all__ = [
    "reward_span", "parse_weight_paths",
    "Reward", "RewardInfo", "RewardInputs", "Ensemble", "EnsembleTerm", "MissingWeights", "REWARDS",
    "build_reward", "build_ensemble", "parse_ensemble", "list_rewards", "score_assets", "flatten_renders", "normalise",
    "GeometryReward", "GeometryOfficialReward", "ColorfulnessReward", "AlignmentReward", "ClipScoreReward", "HPSv2Reward", "AestheticReward",
]

REWARDS: dict[str, type[Reward]] = {
    cls.name: cls for cls in (GeometryReward, AlignmentReward, ColorfulnessReward, HPSv2Reward, AestheticReward, ClipScoreReward,
                              GeometryOfficialReward)
}
OFFLINE = ("geometry", "alignment", "colorfulness")  # the offline rewards every evaluation scores
BUILT_IN = ("geometry", "colorfulness", "geometry_official")  # need nothing but the renders


def _cls(name: str) -> type[Reward]:
    if name not in REWARDS:
        raise ValueError(f"Unknown reward {name!r}; choose from {', '.join(REWARDS)}.")
    return REWARDS[name]


def build_reward(name: str, **options: Any) -> Reward:
    """A reward by name. Options go to its constructor (offline rewards) or ``from_weights`` (real ones),
    e.g. ``build_reward("hpsv2", weights="~/weights/hps")`` or ``build_reward("geometry", max_angle=60)``."""
    cls = _cls(name)
    if name in OFFLINE or name in BUILT_IN:
        if name == "alignment" and "weights" in options:
            options = {"evaluator": options.pop("weights"), **options}
        return cls(**options)
    return cls.from_weights(**options)


def parse_ensemble(spec: str) -> list[tuple[str, float]]:
    """``"hpsv2:1,geometry:0.5"`` -> [("hpsv2", 1.0), ("geometry", 0.5)]; a missing weight is 1."""
    terms = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        _cls(name.strip())
        try:
            terms.append((name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise ValueError(f"Bad weight in reward spec {part!r}: expected name:number.") from None
    if not terms:
        raise ValueError(f"Empty reward spec {spec!r}.")
    return terms


def parse_weight_paths(items: list[str], flag: str = "--reward-weights", hint: str = "") -> dict[str, str]:
    """``["hpsv2=~/w/hps.pt", ...]`` -> {"hpsv2": "/home/.../w/hps.pt"}: real rewards' local weights from a command
    line (ValueError naming ``flag`` for an item that is not NAME=PATH)."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"{flag} {item!r}: expected NAME=PATH{hint}.")
        out[name.strip()] = str(Path(path.strip()).expanduser())
    return out


def reward_span(spec: str) -> float:
    """The usual range of a reward spec's scores: a bare reward's ``value_range`` width, or for an ensemble of
    range-normalised terms the sum of |weights|. Knobs that multiply the raw reward (Nabla-R2D3's β) scale by it."""
    terms = parse_ensemble(spec)
    if len(terms) == 1 and ":" not in spec:
        lo, hi = _cls(terms[0][0]).value_range
        return float(hi - lo)
    return float(sum(abs(w) for _, w in terms))


def build_ensemble(spec: str | Sequence[tuple[str, float]], options: dict[str, dict[str, Any]] | None = None,
                   normalisation: str = "range") -> Reward:
    """One reward for a spec such as ``"hpsv2:1,alignment:0.5,geometry:0.5"``; a single term without a
    weight gives the bare reward. ``options`` maps reward names to their build options."""
    terms = parse_ensemble(spec) if isinstance(spec, str) else list(spec)
    options = options or {}
    if len(terms) == 1 and isinstance(spec, str) and ":" not in spec:
        return build_reward(terms[0][0], **options.get(terms[0][0], {}))
    return Ensemble([(build_reward(n, **options.get(n, {})), w) for n, w in terms], normalisation=normalisation)


def list_rewards(weights: dict[str, str | Path] | None = None) -> list[RewardInfo]:
    """Every reward with whether it can run here (its weights found) and where from, without loading it."""
    weights = weights or {}
    infos = []
    for name, cls in REWARDS.items():
        if name in BUILT_IN:
            ok, detail = True, "built in"
        else:
            ok, detail = cls.available(weights.get(name))
        infos.append(RewardInfo(name, cls.higher_is_better, tuple(cls.value_range), tuple(cls.needs), cls.description, ok, detail))
    return infos
