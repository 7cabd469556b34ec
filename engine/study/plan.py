"""The comparison's plan: the arguments checked, the held-out reward, each method's sweep and every run's
RunConfig, and the comparison folder's record (``comparison.json``), which a resumed study must match."""

from __future__ import annotations

import json
import math

from ..align.config import RunConfig
from ..align.knobs import sweep_grid
from ..align.methods import METHODS
from ..core.io import atomic_write_json
from ..rewards import parse_ensemble, parse_weight_paths, reward_span

SWEEP_LRS = (3e-4, 1e-3, 3e-3)  # the sweep's first learning-rate grid; an Adam step moves each weight by about lr
LR_LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # where the learning-rate grid may extend

OWN_KEYS = {"method": "--methods", "reward": "--reward", "seed": "--seeds", "steps": "--steps"}  # never by --set
# a resumed or re-reported comparison must have been made with these settings; methods, seeds and --minutes may change
MUST_MATCH = ("reward", "steps", "sweep", "sweep_steps", "sweep_lrs", "sweep_seed", "set", "reward_weights", "threads")


class UsageError(ValueError):
    """A bad argument: one message, exit status 2, nothing trained."""


class NothingToSummarise(RuntimeError):
    """Every run failed: exit status 1."""


# Named baselines: a registered method with knobs pinned (its own run folders and row; swept over the learning
# rate only). DRaFT-1 beside DRaFT-K (K tuned by --sweep): Nabla-R2D3 behaves like DRaFT-1 with a soft anchor
# early on, so the comparison must show whether the anchor buys a better front.
VARIANTS = {"draft-1": ("draft", ("draft.k=1",))}


def registered(method: str) -> str:
    """The registry name behind a study method name (a variant's base method)."""
    return VARIANTS[method][0] if method in VARIANTS else method


def parse_methods(text: str) -> list[str]:
    """``all`` (every registered method, engine.align.methods.METHODS, then the named variants) or a comma list."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError("--methods is empty; give all or a comma list, e.g. refl,nabla-r2d3.")
    if names == ["all"]:
        return [*METHODS, *VARIANTS]
    unknown = [m for m in names if m not in METHODS and m not in VARIANTS]
    if unknown:
        raise UsageError(f"--methods: unknown method {unknown[0]!r}; choose all or from {', '.join([*METHODS, *VARIANTS])}.")
    return list(dict.fromkeys(names))


def check_args(args) -> None:
    if args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: must be >= 1 (the number of seeds per method).")
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps}: must be >= 1 (optimiser steps per run).")
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        raise UsageError(f"--minutes {args.minutes}: must be > 0 (training wall time per run), or left out.")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be >= 1.")
    if args.sweep_steps is not None and args.sweep_steps < 2:
        raise UsageError(f"--sweep-steps {args.sweep_steps}: must be >= 2 (step 1's reward is sampled before any update, "
                         "so it cannot tell settings apart).")
    if args.sweep_seed < 0:
        raise UsageError(f"--sweep-seed {args.sweep_seed}: must be >= 0.")
    sweep_lrs(args)
    for item in args.set:
        key = item.partition("=")[0].strip()
        if key in OWN_KEYS:
            raise UsageError(f"--set {item}: {key} is set by the script's own {OWN_KEYS[key]}; leave it out of --set.")


def sweep_lrs(args) -> tuple[float, ...]:
    """The sweep's first learning-rate grid: ``--sweep-lrs`` (at least two values of the ladder), or the default."""
    text = getattr(args, "sweep_lrs", None)
    if not text:
        return SWEEP_LRS
    try:
        values = tuple(sorted({float(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise UsageError(f"--sweep-lrs {text}: give numbers separated by commas, e.g. 3e-5,1e-4,3e-4.") from None
    off = [v for v in values if v not in LR_LADDER]
    if len(values) < 2 or off:
        raise UsageError(f"--sweep-lrs {text}: give at least two values of the ladder {', '.join(f'{v:g}' for v in LR_LADDER)}"
                         + (f" ({', '.join(f'{v:g}' for v in off)} is not on it)" if off else "") + ".")
    return values


def reward_weights(items: list[str]) -> dict[str, str]:
    try:
        return parse_weight_paths(items)
    except ValueError as err:
        raise UsageError(str(err)) from None


def heldout_reward(spec: str, weights: dict[str, str]):
    """The trained reward from an eval.csv row: ``reward/<name>`` for a bare reward; for an ensemble the same
    weighted sum of range-normalised terms the trainer optimises (affine per term, so the mean over assets
    of the ensemble is this function of the per-term means), and whether higher is better. Also checks the
    spec can run and be evaluated."""
    from ..align.evaluate import DEFAULT_REWARDS
    from ..rewards import BUILT_IN, list_rewards, normalise

    try:
        terms = parse_ensemble(spec)
    except (ValueError, KeyError) as err:
        raise UsageError(f"--reward {spec!r}: {err}") from None
    infos = {i.name: i for i in list_rewards(weights)}
    missing = [f"{n}: {infos[n].detail.rstrip('.')}" for n, _ in terms if not infos[n].available]
    if missing:
        raise UsageError(f"--reward {spec!r} cannot run here: {'; '.join(missing)}.")
    scored = set(DEFAULT_REWARDS) | set(BUILT_IN) | set(weights)  # the trainer's evaluation adds built-in trained terms
    unscored = [n for n, _ in terms if n not in scored]
    if unscored:
        raise UsageError(f"--reward {spec!r}: the evaluation does not score {unscored[0]!r}; give its weights with --reward-weights.")
    if len(terms) == 1 and ":" not in spec:
        name = terms[0][0]
        return (lambda row: float(row[f"reward/{name}"])), infos[name].higher_is_better

    def ensemble(row) -> float:
        return float(sum(w * float(normalise(infos[n], float(row[f"reward/{n}"]))) for n, w in terms))
    return ensemble, True


def sweep_plan(method: str, reward: str) -> tuple[tuple[str, ...], tuple]:
    """(dotted knobs set together, values) the study sweeps for ``method`` on ``reward``: the grid the method's
    config declares (engine.align.knobs.sweep_grid), values per unit of the reward's range divided by the
    reward's span (engine.rewards.reward_span). ((), ()) when it declares none: only the learning rate is swept."""
    if method in VARIANTS:  # its defining knob is pinned: only the learning rate is tuned
        return (), ()
    cls = METHODS[method]
    return sweep_grid(cls.config, cls.config_field, reward_span(reward))


def knob_value(cfg: RunConfig, dotted: str):
    """``cfg``'s value of a dotted knob, e.g. ``nabla.beta``."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


class Plan:
    """The comparison's settings, derived from the arguments, and every run's RunConfig."""

    def __init__(self, args):
        check_args(args)
        self.args = args
        self.methods = parse_methods(args.methods)
        self.seeds = list(range(args.seeds))
        self.steps = args.steps
        self.budget = args.minutes * 60.0 if args.minutes else None
        self.sweep_steps = args.sweep_steps or max(2, args.steps // 4)
        self.sweep_lrs = sweep_lrs(args)
        self.weights = reward_weights(args.reward_weights)
        self.sets = list(args.set)
        self.user_keys = {s.partition("=")[0].strip() for s in self.sets}
        self.heldout, self.higher_is_better = heldout_reward(args.reward, self.weights)
        self.reward_span = reward_span(args.reward)  # the spec is checked just above
        self.reward_terms = {name for name, _ in parse_ensemble(args.reward)}
        self.sweeps = {m: sweep_plan(m, args.reward) for m in self.methods}
        if args.sweep:
            for m in self.methods:
                clash = sorted(self.user_keys & {"lr", *self.sweeps[m][0]})
                if clash:
                    raise UsageError(f"--set {clash[0]}: --sweep tunes {clash[0]} for {m}; leave it out of --set or drop --sweep.")
        # a config per method with the study's defaults, checked before anything trains
        self.base_configs = {m: self.config(m, 0) for m in self.methods}
        self.eval_every = self.base_configs[self.methods[0]].eval_every

    def _defaults(self) -> list[str]:
        d = ["eval_at_end=true"]
        if "eval_every" not in self.user_keys:
            d.append(f"eval_every={max(1, self.steps // 5)}")
        return d

    def knob_fields(self, method: str) -> tuple[str, ...]:
        """The dotted knobs the sweep sets together for the method (empty: lr only)."""
        return self.sweeps[method][0]

    def knob_values(self, method: str) -> tuple:
        """The sweep's values of the method's knob for this reward."""
        return self.sweeps[method][1]

    def config(self, method: str, seed: int, extra: list[str] = (), *, steps: int | None = None, sweep: bool = False) -> RunConfig:
        """A run's config: the study's settings, then --set, then the sweep's or the pick's ``extra``. Knobs left
        unset are the engine's (a per-reward-range default such as Nabla-R2D3's β is filled by RunConfig.validate)."""
        own = [f"method={registered(method)}", f"reward={self.args.reward}", f"seed={seed}", f"steps={steps or self.steps}"]
        pinned = list(VARIANTS[method][1]) if method in VARIANTS else []  # after --set: they define the variant
        sweep_sets = ["eval_every=0", "eval_at_end=false", "sample_every=0"] if sweep else []
        try:
            cfg = RunConfig().apply_overrides(own + self._defaults() + self.sets + pinned + sweep_sets + list(extra))
            cfg.reward_weights.update(self.weights)
            return cfg.validate()
        except ValueError as err:
            raise UsageError(f"{method}: {err}") from None

    def record(self) -> dict:
        a = self.args
        return {"reward": a.reward, "steps": a.steps, "sweep": a.sweep, "sweep_steps": self.sweep_steps if a.sweep else None,
                "sweep_lrs": list(self.sweep_lrs) if a.sweep else None,
                "sweep_seed": a.sweep_seed if a.sweep else None, "set": self.sets, "reward_weights": self.weights,
                "threads": a.threads, "methods": self.methods, "seeds": a.seeds, "minutes": a.minutes}


def prepare_out(plan: Plan) -> None:
    """Checks the comparison folder (new and empty, or holding this comparison with --resume / --report-only) and
    writes its ``comparison.json``."""
    out, record = plan.args.out, plan.record()
    saved = out / "comparison.json"
    if plan.args.report_only and not saved.exists():
        raise UsageError(f"--report-only: {out} holds no comparison (no comparison.json); nothing to report.")
    if saved.exists():
        if not (plan.args.resume or plan.args.report_only):
            raise UsageError(f"{out} already holds a comparison; pass --resume to continue it, or choose another --out.")
        previous = json.loads(saved.read_text())
        if previous.get("sweep") and "sweep_lrs" not in previous:  # recorded before --sweep-lrs: the default grid
            previous["sweep_lrs"] = list(SWEEP_LRS)
        diff = [k for k in MUST_MATCH if previous.get(k) != record[k]]
        if diff:
            raise UsageError(f"{out} holds a comparison made with other settings (differs in: {', '.join(diff)}: "
                             f"{', '.join(f'{k}={previous.get(k)!r}' for k in diff)}); resume with the same settings, "
                             "or choose another --out. Methods, seeds and --minutes may change.")
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no comparison; choose an empty or new --out folder.")
    if plan.args.report_only:
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, record)
