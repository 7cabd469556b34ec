"""The shared trainer: every method runs through this one loop.

    sample (recorded; no grad but for the calls the method's GraphPlan keeps) -> decode -> render from the
    reward rig -> rewards -> the method's losses -> backward -> all-reduce -> non-finite check -> clip ->
    AdamW on the LoRA parameters -> metrics -> checkpoint / samples / evaluation

A run lives in a folder a person can read without the code: ``config.json``, ``metrics.csv`` (one row per
optimiser step), ``eval.csv``, ``adapter/`` (peft format), ``samples/step_NNNN.png`` and ``checkpoint/``
(adapter, optimiser, method state, step: written atomically); engine.align.run_folder owns that layout.
Randomness depends only on (seed, step, sample), so ``resume=True`` continues to the metrics an
uninterrupted run gives (same thread count).
``Trainer.run()`` yields each step's metrics and honours ``request_stop()`` between steps.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Iterator

import imageio.v3 as iio
import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..core.io import atomic_save
from ..core.sampling import sample
from ..generate import generate, load_model, model_views
from ..models import lora
from ..preview import view_strips
from ..prompts import EVAL_PROMPTS, prompt_notice, read_prompts, validate_prompt
from ..render import render
from ..rewards import build_ensemble, list_rewards, parse_ensemble
from .config import RunConfig
from .knobs import inactive_knobs
from .methods import METHODS, Context
from .rollout import GraphPlan, RewardPath, Rollout, Transitions, seeded
from .run_folder import RunFolder

log = logging.getLogger(__name__)
SAMPLE_PROMPTS = 4  # fixed prompts (and seeds 0..3) drawn into samples/step_NNNN.png


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class World:
    """torch.distributed when launched by torchrun (gloo on CPU, NCCL on CUDA), else one process."""

    def __init__(self, device: str):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def gather_objects(self, items: list) -> list:
        if self.size == 1:
            return list(items)
        parts = [None] * self.size
        dist.all_gather_object(parts, list(items))
        return [x for p in parts for x in p]

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        if self.size > 1:
            for t in tensors:
                dist.all_reduce(t)
                t.div_(self.size)

    def mean_metrics(self, metrics: dict, keys: list[str]) -> dict:
        """``keys`` of this process's metrics averaged over processes (the others are global already)."""
        if self.size > 1:
            t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
            dist.all_reduce(t)
            metrics.update(zip(keys, (t / self.size).tolist()))
        return metrics

    def any(self, flag: bool) -> bool:
        if self.size == 1:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t)
        return bool(t.item() > 0)


class Trainer:
    """One finetuning run. ``model``: an already loaded base (the studio's), else loaded from the config;
    ``reward``: a Reward object instead of building ``config.reward`` from the registry; ``path``: a whole
    reward path instead of rendering for ``reward`` (an analytic world scores its samples directly, see
    ``engine.align.theory``); ``prompts``: the training prompts instead of ``config.prompts``."""

    def __init__(self, config: RunConfig, out: str | Path, *, resume: bool = False, model=None, reward=None,
                 eval_cache: str | Path | None = None, path=None, prompts: list[str] | None = None):
        self.config = config.validate()
        self.eval_cache = eval_cache  # a folder where the base's held-out scores are kept and shared between runs
        self.out = Path(out)
        self.folder = RunFolder(self.out)
        self.world = World(config.device)
        if self.config.batch_size % self.world.size:
            raise ValueError(f"batch_size = {config.batch_size}: must divide over {self.world.size} processes.")
        self.local_batch = self.config.batch_size // self.world.size
        group = getattr(self.config.method_config(), "group_size", 1)
        if self.local_batch % group:
            raise ValueError(f"batch_size = {config.batch_size}: each of {self.world.size} processes needs whole groups of {group}.")
        self._check_folder(resume)
        knobs = config.method_config()
        for k, why in inactive_knobs(knobs, METHODS[config.method].config_field):
            log.info("%s = %r has no effect in this run: %s.", k.dotted, getattr(knobs, k.name), why)
        self.prompts = [validate_prompt(p) for p in prompts] if prompts is not None else read_prompts(config.prompts)
        outside = [p for p in self.prompts if prompt_notice(p)] if config.model == "tiny" else []
        if outside:
            log.warning("%d of %d prompts are outside the tiny model's world (e.g. %r): they train, but its rewards may mean little.",
                        len(outside), len(self.prompts), outside[0])
        if path is not None:
            self.reward = path.reward
        else:
            self.reward = reward.freeze() if reward is not None else self._build_reward()
        self.model = model if model is not None else load_model(config.model, config.weights, dtype=config.dtype, device=config.device)
        self.model.eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the adapter's init depends on the run seed only
            torch.manual_seed(seeded(config.seed, "lora-init").initial_seed())
            params = lora.add_lora(self.model, rank=config.lora_rank, alpha=config.lora_alpha)
        names = [n for n, _ in _named(self.model, params)]
        self.params = dict(zip(names, params))
        self.guidance = config.guidance if config.guidance is not None else self.model.guidance_default
        self.transitions = Transitions.for_model(self.model, config.sampler_steps)
        self.path = path if path is not None else RewardPath(
            self.model, self.reward, resolution=config.render_resolution, views=config.reward_views,
            azimuth_range=config.view_azimuth_range, elevation_jitter=config.view_elevation_jitter, aggregate=config.aggregate)
        ctx = Context(self.model, self.params, self.path, self.transitions, config, self.world.gather,
                      self.world.gather_objects, lambda: lora.adapters_disabled(self.model), self.world.size)
        self.method = METHODS[config.method](config.method_config(), ctx)
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.step, self.wall, self.skipped = 0, 0.0, 0
        self._saved_step = -1
        self._stop = False
        self._evaluator = None
        with torch.no_grad():
            self._null = self.model.encode_prompts([""])
        if resume:
            self._load_checkpoint()
            if self.step > self.config.steps:
                raise ValueError(f"{self.out} has trained {self.step} steps already; give steps >= {self.step} "
                                 f"to resume it (more trains it longer).")
            if self.world.main and self.folder.load_config().steps != self.config.steps:
                self.folder.save_config(self.config)  # trained longer (or the cut run's plan changed): its new total
        elif self.world.main:
            self.folder.save_config(config)

    # -- setup -------------------------------------------------------------------------------------
    def _check_folder(self, resume: bool) -> None:
        if self.folder.holds_run():
            try:
                previous = self.folder.load_config()
            except (ValueError, json.JSONDecodeError) as err:
                raise ValueError(f"{self.out} holds a config.json this version cannot read ({err}); use another --out.") from None
            if not resume:
                raise ValueError(f"{self.out} already holds a run; pass --resume to continue it, or choose another --out.")
            before, now = previous.identity(), self.config.identity()
            if before != now:
                diff = [k for k in {**before, **now} if before.get(k) != now.get(k)]
                raise ValueError(f"{self.out} holds a run with another config (differs in: {', '.join(diff)}); "
                                 "resume it with the same settings, or choose another --out.")
        elif self.folder.foreign_files():
            raise ValueError(f"{self.out} is not empty and holds no run; choose an empty or new --out folder.")

    def _build_reward(self):
        names = [n for n, _ in parse_ensemble(self.config.reward)]
        info = {i.name: i for i in list_rewards(self.config.reward_weights)}
        missing = [f"{n}: {info[n].detail}" for n in names if not info[n].available]
        if missing:
            raise ValueError(f"Reward {self.config.reward!r} cannot run here: {'; '.join(missing)}.")
        options = {n: dict(self.config.reward_options.get(n, {})) for n in names}
        for n, w in self.config.reward_weights.items():
            if n in names:
                options[n]["weights"] = w
        reward = build_ensemble(self.config.reward, options).to(self.config.device)
        return reward.freeze()

    # -- the loop ----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current step (checkpoint and adapter are saved)."""
        self._stop = True

    def run(self) -> Iterator[dict]:
        """Trains to ``config.steps``, yielding each step's metrics; saves on the way and at the end."""
        cfg = self.config
        if self.step == 0 and cfg.sample_every and self.world.main:
            self.save_samples()
        if self.step == 0 and cfg.eval_every and self.world.main:
            self.record_eval("base")
        try:
            while self.step < cfg.steps and not self._stop:
                metrics = self.train_step()
                n = self.step
                if self.world.main:
                    self._append_metrics(metrics)
                    if cfg.checkpoint_every and n % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                    if cfg.sample_every and n % cfg.sample_every == 0:
                        self.save_samples()
                    if cfg.eval_every and n % cfg.eval_every == 0:
                        self.record_eval("run")
                yield metrics
        finally:
            if self.world.main and self.step > 0 and self._saved_step != self.step:
                self.save_checkpoint()
        if self.world.main and cfg.eval_at_end and not (cfg.eval_every and self.step % cfg.eval_every == 0):
            self.record_eval("run")

    def train_step(self) -> dict:
        cfg, step = self.config, self.step
        t0 = time.perf_counter()
        rollout = self.rollout(step, keep_graphs=True)
        t_sample = time.perf_counter() - t0
        self.optimizer.zero_grad(set_to_none=True)
        total, rows, bad = 0.0, [], None
        pending = []  # with kept sampler calls: one backward at the end, so no kept call is traversed twice
        for loss, info in self.method.losses(rollout, step):
            if not torch.isfinite(loss):
                bad = f"{loss.item()} ({info})"
                break
            if rollout.graphs:
                pending.append(loss)
            else:
                loss.backward()
            total += loss.item()
            rows.append(info)
        if pending and bad is None:
            torch.stack(pending).sum().backward()
        pending, rollout.graphs, rollout.chained = [], {}, None  # free the kept graphs
        if self.world.any(bad is not None):  # every process stops together
            raise TrainingError(
                f"The {cfg.method} loss became {bad or 'non-finite on another process'} at step {step + 1}; the last good "
                f"checkpoint in {self.folder.checkpoint} is kept. Lower lr or the method's scale (e.g. nabla.beta) and resume.")
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params.values()]
        self.world.mean_(grads)
        for p, g in zip(self.params.values(), grads):
            p.grad = g
        finite = all(torch.isfinite(g).all() for g in grads)
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm).item() if finite else float("nan")
        if not rows:
            pass  # nothing to learn this step (the first round of a lagged run, or only flat groups)
        elif finite:
            self.optimizer.step()
        else:
            self.skipped += 1
            log.warning("step %d: non-finite gradients, update skipped (%d so far)", step + 1, self.skipped)
        self.method.after_step(step, rollout)
        self.step += 1
        elapsed = time.perf_counter() - t0
        self.wall += elapsed
        rewards = self.world.gather(rollout.rewards.float())
        metrics = {
            "step": self.step, "wall_seconds": round(self.wall, 3), "samples_seen": self.step * cfg.batch_size,
            "reward_mean": rewards.mean().item(), "reward_std": rewards.std(unbiased=False).item(),
            "reward_min": rewards.min().item(), "reward_max": rewards.max().item(),
            **{f"reward/{k}": self.world.gather(v.float()).mean().item() for k, v in rollout.components.items()},
            "loss": total, "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"], "skipped_updates": self.skipped,
            "sample_seconds": round(t_sample, 3), "update_seconds": round(elapsed - t_sample, 3),
        }
        method_metrics = self.method.step_metrics(rows) if rows else {}
        metrics.update(method_metrics)
        return self.world.mean_metrics(metrics, ["loss", *method_metrics])

    def batch_prompts(self, step: int) -> tuple[list[str], list[int]]:
        """This process's prompts and global sample indices for ``step`` (groups of one prompt for
        group methods); the same for every method with the same seed."""
        cfg = self.config
        group = getattr(cfg.method_config(), "group_size", 1)
        rng = random.Random(f"{cfg.seed}-{step}-prompts")
        chosen = [p for p in (rng.choice(self.prompts) for _ in range(cfg.batch_size // group)) for _ in range(group)]
        lo = self.world.rank * self.local_batch
        return chosen[lo: lo + self.local_batch], list(range(lo, lo + self.local_batch))

    def rollout(self, step: int, *, keep_graphs: bool = False) -> Rollout:
        """This step's samples and rewards. ``keep_graphs``: keep the sampler calls the method will
        differentiate (its GraphPlan, at most ``config.reuse_calls``) with their autograd graphs."""
        prompts, indices = self.batch_prompts(step)
        with torch.no_grad():
            cond = self.model.encode_prompts(prompts)
        uncond = self._null.repeat(len(prompts))
        generators = [seeded(self.config.seed, step, "noise", i) for i in indices]
        plan = self.method.graph_plan(step, indices) if keep_graphs and self.config.reuse_calls else None
        plan = plan.capped(self.config.reuse_calls) if plan is not None else GraphPlan()
        if plan.chain_from is not None and len(prompts) * (self.config.sampler_steps - plan.chain_from) > self.config.reuse_calls:
            plan.chain_from = None  # over budget: the method replays the chain itself
        with self.method.sampling():
            out = sample(self.model, cond, uncond, steps=self.config.sampler_steps, guidance=self.guidance,
                         generator=generators, record=True, keep=plan.keep, input_grad=plan.input_grad,
                         grad_from=plan.chain_from, checkpoint=plan.checkpoint)
        cams = self.path.cameras(seeded(self.config.seed, step, "reward-cameras"))
        with torch.no_grad():
            rewards, parts = self.path(out.latents.detach(), prompts, cams)
        return Rollout(prompts, cond, uncond, out.trajectory, rewards, parts, indices, self.guidance, out.graphs,
                       out.latents if plan.chain_from is not None else None)

    # -- files -------------------------------------------------------------------------------------
    def _append_metrics(self, metrics: dict) -> None:
        self.folder.append_metrics(metrics)

    def record_eval(self, label: str) -> dict:
        """A held-out evaluation of the base (``"base"``, at step 0) or of the model now (``"run"``) into
        eval.csv and eval_assets.csv; returns its metrics."""
        ev = self.evaluator()
        metrics = ev.base_metrics() if label == "base" else ev.evaluate()
        self.folder.append_eval(0 if label == "base" else self.step, label, metrics, ev.asset_rows(label))
        return metrics

    def evaluator(self):
        if self._evaluator is None:
            from .evaluate import RunEvaluator, run_settings

            self._evaluator = RunEvaluator(self.model, run_settings(self.config), base_cache=self.eval_cache)
        return self._evaluator

    @torch.no_grad()
    def save_samples(self) -> Path:
        """4-view strips (RGB over normals) of fixed prompts and seeds 0..3 with the current weights."""
        prompts = read_prompts(self.config.eval_prompts, EVAL_PROMPTS)[:SAMPLE_PROMPTS]
        gen = generate(self.model, prompts, list(range(len(prompts))), steps=self.config.sampler_steps, guidance=self.guidance)
        views = render(gen.gaussians, model_views().to(gen.latents.device), 128)
        rows = [np.concatenate(view_strips(views, i), axis=0) for i in range(len(prompts))]
        return atomic_save(self.folder.sample_file(self.step), lambda tmp: iio.imwrite(tmp, np.concatenate(rows, axis=0)))

    def save_adapter(self) -> Path:
        meta = {"method": self.config.method, "reward": self.config.reward, "step": self.step, "run": str(self.out)}
        return lora.save_adapter(self.model, self.folder.adapter, meta=meta)

    def save_checkpoint(self) -> None:
        """Adapter + optimiser + method state + counters, swapped in atomically; also refreshes adapter/."""
        meta, tensors = self.method.state()
        with self.folder.writing_checkpoint() as new:
            save_file({f"lora.{n}": p.detach().cpu().contiguous() for n, p in self.params.items()}
                      | {f"method.{n}": t.detach().cpu().contiguous() for n, t in tensors.items()}, new / "state.safetensors")
            torch.save(self.optimizer.state_dict(), new / "optimizer.pt")
            (new / "trainer.json").write_text(json.dumps({"step": self.step, "wall_seconds": self.wall, "skipped": self.skipped,
                                                          "method": meta}))
        self.save_adapter()
        self._saved_step = self.step

    def _load_checkpoint(self) -> None:
        folder = self.folder.checkpoint_to_load()
        if folder is None:
            if self.world.main:
                log.warning("%s has no checkpoint yet: starting from step 0.", self.out)
                self.folder.save_config(self.config)
                self.folder.clear_rows()
            return
        state = json.loads((folder / "trainer.json").read_text())
        tensors = load_file(folder / "state.safetensors")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(tensors[f"lora.{n}"])
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.method.load_state(state["method"], {k[7:]: v for k, v in tensors.items() if k.startswith("method.")})
        self.step, self.wall, self.skipped = state["step"], state["wall_seconds"], state["skipped"]
        self._saved_step = self.step
        if self.world.main:  # rows written after the checkpoint will be written again
            self.folder.truncate(self.step)

    def train(self, progress: bool = True) -> dict | None:
        """Runs to the end with a tqdm bar showing the reward; Ctrl-C saves and returns."""
        from tqdm.auto import tqdm

        last = None
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not (progress and self.world.main), desc=self.config.method)
        try:
            for last in self.run():
                bar.update(1)
                bar.set_postfix(reward=f"{last['reward_mean']:.4f}", loss=f"{last['loss']:.3g}")
        except KeyboardInterrupt:
            log.warning("Interrupted: saved step %d to %s; continue with --resume.", self.step, self.out)
        finally:
            bar.close()
        return last


def _named(model, params):
    ids = {id(p): p for p in params}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]

