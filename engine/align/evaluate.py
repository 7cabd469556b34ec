"""Held-out evaluation of alignment runs: the base model and each run side by side, same prompts, same seeds.

    python -m engine.align.evaluate --run runs/a [--run runs/b ...] [--prompts FILE] [--seeds 2] [--out eval.csv]

Every asset (prompt x seed) is sampled, rendered once at ``resolution`` from the 4 evaluation views
(azimuth 45/135/225/315, elevation 15: between the 4 views the model generates) and scored. Metrics,
one flat dict of floats with stable names (the trainer appends them to ``eval.csv``):

- ``reward/<name>``: every reward of the settings (the offline ones always, real ones given weights):
  mean over assets of the mean over views, in the reward's own units.
- ``alignment``: cosine of the evaluator's asset embedding (unit mean of its view embeddings) with the prompt's.
- ``category_acc``, ``color_acc``: prior preservation: the evaluator's zero-shot category and main colour
  of each asset against the prompt's (prompts outside the procedural world's grammar do not count; NaN if none parse).
- ``kid_vs_base``: KID of the unit evaluator features of the views, these samples vs the base model's
  samples of the same prompts and seeds (about 0 for the base itself; can be slightly negative).
- ``diversity``: mean distance between the unit evaluator features of the same view of two seeds of one
  prompt, over seed pairs, views and prompts (engine.metrics.diversity): 0 = identical; NaN with one seed.
- ``dnc``: depth-normal consistency of the renders (the geometry reward with its defaults).
- ``seconds_per_asset``: sampling + decoding time per asset (the only figure that is not reproducible).
- ``assets``: prompts x seeds.
- ``eps_kl`` (with ``eps_kl=True``): mean over the sampler's steps of mean (ε_θ − ε_base)² at the states the model
  itself visited (guided ε; the base's at the same inputs): the ε-space KL to the base up to the sampler's weights.
- ``delta/<m>`` and ``delta_se/<m>`` for every reward, ``alignment`` and ``dnc``: the paired change from the base
  (same prompts, seeds and noise), the mean over prompts of each prompt's mean difference over its seeds, and
  that mean's standard error over prompts (prompts are the unit sampled; seeds of one prompt are not
  independent). 0 and 0 for the base itself; NaN standard error with one prompt.

Everything else is a function of the model, the settings and the thread count: the base is sampled once
(adapters disabled) and cached, so each later ``evaluate()`` costs one sampling pass over the assets.
With ``base_cache=DIR`` the base's scores are also kept on disk, keyed by everything they depend on (the
base weights' fingerprint, the settings, the judge's weights, torch's version, thread count and device),
so the runs of a comparison sample their shared base once instead of once each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.nn.functional import normalize

from ..core.cameras import evaluation_views
from ..core.io import atomic_save, tensors_digest
from ..data.world import parse
from ..evaluator import DEFAULT_EVALUATOR, load_evaluator
from ..generate import generate, load_model
from ..metrics import diversity, kid
from ..models import lora
from ..prompts import EVAL_PROMPTS, read_prompts, validate_prompt
from ..render import render
from ..rewards import (
    BUILT_IN,
    REWARDS,
    build_reward,
    list_rewards,
    parse_ensemble,
    parse_weight_paths,
    score_assets,
)
from .config import RunConfig
from .run_folder import RunFolder

DEFAULT_REWARDS = ("geometry", "alignment", "colorfulness")
FIXED_METRICS = ("alignment", "category_acc", "color_acc", "kid_vs_base", "diversity", "dnc", "seconds_per_asset", "assets")


@dataclass
class EvalSettings:
    """What an evaluation samples and scores. ``seeds``: one asset per prompt and seed."""

    prompts: list[str] = field(default_factory=lambda: read_prompts(None, EVAL_PROMPTS))  # 24 held-out pairs
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int = 20  # sampler steps
    guidance: float | None = None  # None: the model's default
    rewards: tuple[str, ...] = DEFAULT_REWARDS  # + every reward named in reward_weights
    reward_weights: dict[str, str] = field(default_factory=dict)  # real rewards: name -> local weights path
    resolution: int = 128  # render size of the evaluation views
    batch_size: int = 8  # assets sampled together (changes the numbers only by float round-off)
    evaluator: str | None = None  # the judging evaluator's folder (None: checkpoints/tiny-base/evaluator)
    eps_kl: bool = False  # also the ε-space distance to the base along each sample's own trajectory (one more pass per step)

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str) or not self.prompts:
            raise ValueError(f"prompts = {self.prompts!r:.80}: give a non-empty list of prompts (e.g. read from a prompt file).")
        self.prompts = [validate_prompt(p) for p in self.prompts]
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds = {self.seeds!r}: give a non-empty list of integer seeds >= 0, e.g. [0, 1].")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds = {self.seeds!r}: repeated seeds would score the same asset twice; make them distinct.")
        for name, low in (("steps", 1), ("resolution", 16), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be >= {low}; the default is "
                                 f"{EvalSettings.__dataclass_fields__[name].default}.")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 1):
            raise ValueError(f"guidance = {self.guidance!r}: must be >= 1; leave it unset for the model's default.")
        unknown = [n for n in (*self.rewards, *self.reward_weights) if n not in REWARDS]
        if unknown:
            raise ValueError(f"Unknown reward {unknown[0]!r}; choose from {', '.join(REWARDS)}.")

    def reward_names(self) -> tuple[str, ...]:
        """The rewards scored: ``rewards`` plus every one given weights, in that order, once each."""
        return tuple(dict.fromkeys((*self.rewards, *self.reward_weights)))


def run_settings(config: RunConfig, *, seeds: list[int] | None = None, eps_kl: bool = False) -> EvalSettings:
    """A run's held-out settings: its eval prompts and seeds (or ``seeds``), sampler steps and guidance, the offline
    rewards plus every built-in one it trains (e.g. geometry_official), and the real rewards it has weights for."""
    built_in = tuple(n for n, _ in parse_ensemble(config.reward) if n in BUILT_IN)
    return EvalSettings(prompts=read_prompts(config.eval_prompts, EVAL_PROMPTS),
                        seeds=list(range(config.eval_seeds)) if seeds is None else list(seeds), steps=config.sampler_steps,
                        guidance=config.guidance, reward_weights=dict(config.reward_weights),
                        rewards=tuple(dict.fromkeys((*DEFAULT_REWARDS, *built_in))), eps_kl=eps_kl)


@dataclass
class _Scores:
    """Per-asset results of one sampling pass, assets in prompt-major order (prompt 0's seeds first)."""

    features: Tensor  # [A, V, C] unit evaluator features of the views (KID, diversity)
    alignment: Tensor  # [A]
    category_ok: Tensor  # [A] 1/0, NaN where the prompt does not parse
    color_ok: Tensor  # [A]
    dnc: Tensor  # [A]
    rewards: dict[str, Tensor]  # name -> [A]
    seconds: float  # sampling + decoding, all assets
    eps_kl: Tensor | None = None  # [A] with settings.eps_kl


class RunEvaluator:
    """Evaluates a model on fixed held-out prompts and seeds, against its base sampled once at construction.

    ``model`` may carry LoRA adapters (engine.models.lora): the base is sampled with them disabled;
    ``evaluate()`` scores the model as it is at the call (its active adapter).
    """

    def __init__(self, model, settings: EvalSettings, base_cache: str | Path | None = None):
        self.model, self.settings = model, settings
        device = model.device
        weights = settings.reward_weights
        names = settings.reward_names()
        available = {info.name: info for info in list_rewards(weights)}
        missing = [available[n] for n in names if not available[n].available]
        if missing:
            raise ValueError(f"Reward {missing[0].name!r} cannot run here: {missing[0].detail}. Give its weights "
                             f"(reward_weights / --weights {missing[0].name}=PATH) or leave it out.")
        self.judge = load_evaluator(settings.evaluator or DEFAULT_EVALUATOR).to(device)
        self.rewards = {n: self._build_reward(n, weights.get(n)).to(device) for n in names}
        self.geometry = self.rewards["geometry"] if "geometry" in self.rewards else build_reward("geometry")  # for dnc
        self.cameras = evaluation_views().to(device)
        specs = [parse(p) for p in settings.prompts]
        self.truth = [(s.category, s.color) if s else None for s in specs]
        with torch.no_grad():
            self.prompt_embeds = self.judge.encode_text(settings.prompts)  # [P, D] unit
            self.labels = self.judge.label_embeds()  # encoded once, not per batch
        cached = Path(base_cache) / f"base-{self._base_key()}.safetensors" if base_cache else None
        self.base = _load_scores(cached, tuple(self.rewards)) if cached else None
        if self.base is None:
            with lora.adapters_disabled(model):
                self.base = self._sample_and_score(base=True)
            if cached:
                _save_scores(self.base, cached)
        self._base_metrics = self._summarise(self.base)
        self.last = self.base

    def _base_key(self) -> str:
        """A digest of everything the base's scores depend on."""
        what = {"base": _weights_digest(self.model), "model": type(self.model).__name__, "settings": asdict(self.settings),
                "judge": _weights_digest(self.judge), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "device": str(self.model.device)}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def _build_reward(self, name: str, weights: str | None):
        if name == "alignment" and weights is None:
            return build_reward("alignment", evaluator=self.judge)  # the judge's weights, loaded once
        return build_reward(name, **({"weights": weights} if weights else {}))

    def base_metrics(self) -> dict[str, float]:
        """The base model's metrics (computed once, at construction)."""
        return dict(self._base_metrics)

    def evaluate(self) -> dict[str, float]:
        """The model as it is now (its active adapter), on the same prompts and seeds as the base."""
        self.last = self._sample_and_score()
        return self._summarise(self.last)

    def asset_rows(self, which: str = "run") -> list[dict]:
        """Per-asset scores of the base (``"base"``) or of the last ``evaluate()`` (``"run"``): prompt index, seed,
        every reward, alignment, dnc and the two accuracies (1/0, NaN outside the world's grammar), prompt-major.
        Paired with the base's rows by (prompt, seed): what bootstrap intervals over prompts x seeds resample."""
        scores = self.base if which == "base" else self.last
        S = len(self.settings.seeds)
        columns = {**{f"reward/{n}": v for n, v in scores.rewards.items()}, "alignment": scores.alignment, "dnc": scores.dnc,
                   "category_ok": scores.category_ok, "color_ok": scores.color_ok}
        if scores.eps_kl is not None:
            columns["eps_kl"] = scores.eps_kl
        return [{"prompt": a // S, "seed": self.settings.seeds[a % S], **{k: float(v[a]) for k, v in columns.items()}}
                for a in range(len(scores.alignment))]

    def metric_names(self) -> list[str]:
        """The metric keys every call returns, in order."""
        paired = [f"reward/{n}" for n in self.rewards] + ["alignment", "dnc"]
        return ([f"reward/{n}" for n in self.rewards] + list(FIXED_METRICS) + (["eps_kl"] if self.settings.eps_kl else [])
                + [f"{kind}/{m}" for m in paired for kind in ("delta", "delta_se")])

    # -- sampling and scoring ------------------------------------------------------------------------
    @torch.no_grad()
    def _sample_and_score(self, base: bool = False) -> _Scores:
        s = self.settings
        pairs = [(i, seed) for i in range(len(s.prompts)) for seed in s.seeds]
        parts: dict[str, list[Tensor]] = {}
        seconds = 0.0
        for start in range(0, len(pairs), s.batch_size):
            chunk = pairs[start:start + s.batch_size]
            prompts = [s.prompts[i] for i, _ in chunk]
            gen = generate(self.model, prompts, [seed for _, seed in chunk], steps=s.steps, guidance=s.guidance, record=s.eps_kl)
            seconds += gen.seconds
            scores = self._score_batch(gen.gaussians, [i for i, _ in chunk], prompts)
            if s.eps_kl:  # the base against itself is 0 by definition: no second pass
                scores["eps_kl"] = torch.zeros(len(chunk)) if base else self._eps_kl(gen.trajectory, prompts)
            for key, value in scores.items():
                parts.setdefault(key, []).append(value.cpu())
        cat = {k: torch.cat(v) for k, v in parts.items()}
        rewards = {n: cat.pop(f"reward/{n}") for n in self.rewards}
        return _Scores(rewards=rewards, seconds=seconds, **cat)

    def _eps_kl(self, traj, prompts: list[str]) -> Tensor:
        """[B] mean over a trajectory's steps of mean (ε_θ − ε_base)² at the states the model visited (guided ε as
        sampled; the base's at the same inputs): the ε-space KL to the base, up to the sampler's weights."""
        from .rollout import guided_eps

        B, N = traj.latents.shape[:2]
        model = self.model
        cond, uncond = model.encode_prompts(prompts), model.encode_prompts([""]).repeat(B)
        # one call per sampler step, as sampling makes them: the same numbers as one call over all B x N states
        # (bit for bit here), 1.35x faster on the CPU (smaller activations stay in cache)
        with lora.adapters_disabled(model):
            ref = torch.stack([guided_eps(model, traj.latents[:, j], traj.timesteps[j].repeat(B), cond, uncond, traj.guidance)
                               for j in range(N)], 1)
        return (traj.model_outputs.float() - ref.float()).pow(2).flatten(2).mean(2).mean(1)

    def _score_batch(self, gaussians, prompt_idx: list[int], prompts: list[str]) -> dict[str, Tensor]:
        """Scores of B assets rendered from the evaluation views."""
        out = render(gaussians, self.cameras, self.settings.resolution)  # rgb [B, V, 3, H, W]
        B, V = out.rgb.shape[:2]
        feats = normalize(self.judge.features(out.rgb.flatten(0, 1)), dim=-1).reshape(B, V, -1)
        embeds = self.judge.asset_embeds(out.rgb)  # [B, D]
        labels = self.judge.classify_embeds(embeds, self.labels)
        truth = [self.truth[i] for i in prompt_idx]
        scores = {
            "features": feats,
            "alignment": (embeds * self.prompt_embeds[prompt_idx]).sum(-1),
            "category_ok": _matches(labels["category"], [t and t[0] for t in truth]),
            "color_ok": _matches(labels["color"], [t and t[1] for t in truth]),
        }
        scores["dnc"] = score_assets(self.geometry, out, prompts, self.cameras)
        for name, reward in self.rewards.items():
            scores[f"reward/{name}"] = scores["dnc"] if reward is self.geometry else score_assets(reward, out, prompts, self.cameras)
        return scores

    def _summarise(self, run: _Scores) -> dict[str, float]:
        P, S = len(self.settings.prompts), len(self.settings.seeds)
        A = P * S
        metrics = {f"reward/{n}": float(v.mean()) for n, v in run.rewards.items()}
        metrics["alignment"] = float(run.alignment.mean())
        metrics["category_acc"] = _nanmean(run.category_ok)
        metrics["color_acc"] = _nanmean(run.color_ok)
        metrics["kid_vs_base"] = kid(run.features.flatten(0, 1), self.base.features.flatten(0, 1))[0]
        metrics["diversity"] = diversity(run.features.reshape(P, S, *run.features.shape[1:])) if S > 1 else float("nan")
        metrics["dnc"] = float(run.dnc.mean())
        metrics["seconds_per_asset"] = run.seconds / A
        metrics["assets"] = float(A)
        if run.eps_kl is not None:
            metrics["eps_kl"] = float(run.eps_kl.mean())
        paired = {**{f"reward/{n}": (v, self.base.rewards[n]) for n, v in run.rewards.items()},
                  "alignment": (run.alignment, self.base.alignment), "dnc": (run.dnc, self.base.dnc)}
        for name, (now, base) in paired.items():
            metrics[f"delta/{name}"], metrics[f"delta_se/{name}"] = paired_change(now.reshape(P, S), base.reshape(P, S))
        return metrics


def paired_change(now: Tensor, base: Tensor) -> tuple[float, float]:
    """Mean and standard error over prompts of the per-prompt mean difference ``now - base`` ([P, S] each)."""
    per_prompt = (now.double() - base.double()).mean(1)
    se = per_prompt.std(unbiased=True) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else torch.tensor(float("nan"))
    return float(per_prompt.mean()), float(se)


def _weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's base weights as they are (all of them: denoiser, decoder, ...; LoRA weights left out,
    peft's ``base_layer`` wrapping ignored)."""
    return tensors_digest((name.replace(".base_layer", ""), t) for name, t in sorted(module.state_dict().items())
                          if "lora_" not in name)


_SCORE_FIELDS = ("features", "alignment", "category_ok", "color_ok", "dnc")


def _save_scores(scores: _Scores, path: Path) -> None:
    tensors = {k: getattr(scores, k).contiguous() for k in _SCORE_FIELDS}
    tensors |= {f"reward/{n}": v.contiguous() for n, v in scores.rewards.items()}
    if scores.eps_kl is not None:
        tensors["eps_kl"] = scores.eps_kl.contiguous()
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata={"seconds": repr(scores.seconds)}))


def _load_scores(path: Path, rewards: tuple[str, ...]) -> _Scores | None:
    """The cached scores, or None when there are none (or they are unreadable: they are then sampled again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            if not {*_SCORE_FIELDS, *(f"reward/{n}" for n in rewards)} <= names:
                return None
            seconds = float(f.metadata()["seconds"])
            fields = {k: f.get_tensor(k) for k in _SCORE_FIELDS}
            eps_kl = f.get_tensor("eps_kl") if "eps_kl" in names else None
            return _Scores(rewards={n: f.get_tensor(f"reward/{n}") for n in rewards}, seconds=seconds, eps_kl=eps_kl, **fields)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None


def _matches(predicted: list[str], truth: list[str | None]) -> Tensor:
    return torch.tensor([float("nan") if t is None else float(p == t) for p, t in zip(predicted, truth)])


def _nanmean(x: Tensor) -> float:
    known = x[~x.isnan()]
    return float(known.mean()) if len(known) else float("nan")


# -- run folders ---------------------------------------------------------------------------------------
def check_run(folder: str | Path) -> tuple[RunConfig, dict]:
    """A run folder's config and adapter info, or a FileNotFoundError / ValueError that says what is missing."""
    run = RunFolder(folder)
    folder = run.path
    if not folder.is_dir():
        raise FileNotFoundError(f"Run folder {folder} does not exist; give a folder made by `python -m engine.align --out DIR`.")
    if not run.config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a run folder (made by `python -m engine.align --out DIR`).")
    if not run.adapter.is_dir():
        raise FileNotFoundError(f"{folder} has no adapter/: the run has not saved an adapter yet (it saves one every "
                                "checkpoint_every steps and at the end).")
    try:
        config = run.load_config()
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{folder}/config.json cannot be read as a run config: {err}") from None
    return config, lora.read_adapter_info(run.adapter)


def _base_of(config: RunConfig, info: dict) -> tuple:
    """What identifies the base a run was made on: the model and its weights' fingerprint (else the folder)."""
    return (config.model, info.get("base_fingerprint") or config.weights)


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name; the whole path where names repeat or would read as the base."""
    names = [Path(d).name for d in run_dirs]
    if len(set(names)) != len(names) or "base" in names:
        return [str(d) for d in run_dirs]
    return names


def evaluate_runs(run_dirs, settings: EvalSettings, *, model=None):
    """The base and each run, one row each (a pandas DataFrame: ``label``, ``run``, then the metrics).

    One base model is loaded (from the runs' config.json; or ``model``) and every run's adapter is
    loaded into it and switched on in turn. Runs made on different bases are refused. A given ``model``
    is left as it was: the runs' adapters are removed and its active adapter restored.
    """
    import pandas as pd

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("Give at least one run folder.")
    runs = [check_run(d) for d in run_dirs]
    bases = {d: _base_of(c, i) for d, (c, i) in zip(run_dirs, runs)}
    if len(set(bases.values())) > 1:
        listing = "; ".join(f"{d}: {b[0]} {b[1]}" for d, b in bases.items())
        raise ValueError(f"These runs were made on different base models ({listing}); evaluate each base's runs separately.")
    if model is None:
        config = runs[0][0]
        model = load_model(config.model, config.weights, dtype=config.dtype, device=config.device)
    previous, names = lora.active_adapter(model), []
    try:
        for folder in run_dirs:
            names.append(lora.load_adapter(model, RunFolder(folder).adapter, name=_free_name(model), activate=False))
        evaluator = RunEvaluator(model, settings)
        rows = [{"label": "base", "run": "", **evaluator.base_metrics()}]
        for label, folder, name in zip(run_labels(run_dirs), run_dirs, names):
            lora.use_adapter(model, name)
            rows.append({"label": label, "run": str(folder), **evaluator.evaluate()})
    finally:
        for name in names:
            lora.remove_adapter(model, name)
        lora.use_adapter(model, previous)
    return pd.DataFrame(rows)


def _free_name(model) -> str:
    taken = set(lora.adapter_names(model))
    return next(f"eval_{k}" for k in range(len(taken) + 1) if f"eval_{k}" not in taken)


def write_csv_atomic(frame, path: Path) -> None:
    atomic_save(path, lambda tmp: frame.to_csv(tmp, index=False))


# -- command line ----------------------------------------------------------------------------------------
def _json_ready(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m engine.align.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, type=Path, help="a run folder (repeat for several)")
    p.add_argument("--prompts", type=Path, help="prompt file, one per line (default: assets/prompts/eval_held_out.txt)")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per prompt")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--guidance", type=float, help="CFG scale (default: the model's)")
    p.add_argument("--resolution", type=int, default=128, help="render size of the evaluation views")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH", help="weights of a real reward (scored too)")
    p.add_argument("--out", type=Path, help="CSV to write (default: evaluation.csv beside the first run folder)")
    args = p.parse_args(argv)
    try:
        if args.seeds < 1:
            raise ValueError(f"--seeds {args.seeds}: must be >= 1 (the number of seeds per prompt).")
        settings = EvalSettings(prompts=read_prompts(args.prompts, EVAL_PROMPTS), seeds=list(range(args.seeds)), steps=args.steps,
                                guidance=args.guidance, resolution=args.resolution, reward_weights=parse_weight_paths(
                                    args.weights, "--weights", ", e.g. hpsv2=~/weights/HPS_v2.1_compressed.pt"))
        table = evaluate_runs(args.run, settings)
    except (FileNotFoundError, ValueError) as err:
        p.exit(2, f"error: {err}\n")
    out = args.out or args.run[0].resolve().parent / "evaluation.csv"
    write_csv_atomic(table, out)
    print(json.dumps({row.pop("label"): _json_ready(row) for row in table.to_dict("records")}))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
