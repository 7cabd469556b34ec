"""Alignment benchmarks on this machine: what one optimiser step of every method costs, how fast sampling
and held-out evaluation run, and (``--against REV``) all of it against another revision in the same run.

    python bench/align.py                          # every method's step at the study's settings, this tree
    python bench/align.py --against HEAD~3         # steps, sampling and evaluation: REV vs this tree, alternating
    python bench/align.py --against REV --only sampling eval --repeats 2
    python bench/align.py --against REV --only step --profile   # with torch.profiler's breakdown of one step
    python bench/align.py --against REV --only metrics --steps 5  # the same seed's metrics in both trees
    python bench/align.py --pair                   # two runs side by side (1 thread each) vs one run with 2 threads
    python bench/align.py --live 30 --checkpoints 3,10,30   # held-out reward vs wall time (minutes)

Settings: the study's (batch 4, 10 sampler steps, 64 px reward renders from 4 views, geometry), one torch
thread, unless ``--set`` / ``--threads`` say otherwise. Every measurement runs in a fresh process (its own
peak memory, nothing carried over) and prints one JSON line:

- ``step``: median seconds per optimiser step after a warm-up step, the split (sampling / denoiser calls /
  decode + render / reward; backward passes are the rest), denoiser rows per trajectory, peak RSS, the
  step's cost as a ratio to sampling the same trajectories, and with ``--profile`` torch.profiler's
  breakdown of one more step (shares of self CPU time: matrix products, attention, convolutions, the
  native kernels, the rest; and the top ops);
- ``sampling``: seconds per asset of 20-step CFG sampling at batch 1 and 8, the denoiser's model FLOPs per
  asset (as the stock diffusers forward counts them: linear layers, convolutions and attention), the
  achieved GFLOP/s, and this machine's fp32 GEMM rate measured in the same process at the same thread
  count (a 1024³ matrix product): the fraction is the physical limit the denoiser is measured against; and
  ``heavy_share``: the share of one CFG call that its matrix products, attention and convolutions take when
  each is replayed alone at its own shapes (the rest is what fusing element-wise work could remove);
- ``eval``: seconds for one held-out evaluation of a run (a LoRA-adapted model, ``--eval-prompts`` held-out
  prompts x 2 seeds at the run's sampler steps, 128 px), the base's once-per-run pass apart;
- ``metrics`` (``--only metrics``, with ``--against``): ``--steps`` optimiser steps of each method from the
  same seed in both trees, and the largest relative difference of reward, loss and gradient norm per step
  and of the trained adapter's norm: how far float summation order moves the results.

With ``--against REV`` each measurement runs on a git worktree of REV and on this tree, alternating
(REV first, then this tree, then the other order on the next repeat), and a table of before / after /
ratio closes the output. Timings on a shared machine drift; ratios from one run hold, absolute times do not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["batch_size=4", "sampler_steps=10", "render_resolution=64", "reward_views=4", "reward=geometry"]
KINDS = ("step", "sampling", "eval", "metrics")


# ------------------------------------------------------------------------------- measurements (child)
# where each name the measurements import lives: this tree's layout first, then the one before engine/core/ (b9be9cb),
# so that --against can measure a revision from before the throughput work (4785236)
LAYOUTS = {"guided_eps": ("engine.core.sampling", "engine.sampling"), "sample": ("engine.core.sampling", "engine.sampling"),
           "lora": ("engine.models.lora", "engine.align.lora"), "EVAL_PROMPTS": ("engine.prompts", "engine.align.trainer"),
           "read_prompts": ("engine.prompts", "engine.align.trainer")}


def engine_name(name: str):
    import importlib

    for module in LAYOUTS[name]:
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        return found if module.endswith(f".{name}") else getattr(found, name)
    raise ImportError(f"{name} is in none of {', '.join(LAYOUTS[name])}")


class Clock:
    """Wall time and rows per part of a step, gathered by wrapping the model's and reward's calls."""

    def __init__(self):
        self.seconds = {"denoiser": 0.0, "render": 0.0, "reward": 0.0}
        self.forward_rows = self.backward_rows = 0
        self._depth = 0

    def wrap(self, owner, name: str, part: str, count_rows: bool = False):
        import torch

        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            clock._depth += 1
            t0 = time.perf_counter()
            try:
                out = original(*args, **kwargs)
            finally:
                clock._depth -= 1
            if clock._depth == 0:
                clock.seconds[part] += time.perf_counter() - t0
            if count_rows:
                rows = args[1].shape[0] if isinstance(owner, type) else args[0].shape[0]
                clock.forward_rows += rows
                if torch.is_grad_enabled() and out.requires_grad:
                    clock.backward_rows += rows
            return out

        setattr(owner, name, timed)


def profile_step(trainer, top: int = 8) -> dict:
    """torch.profiler's breakdown of one optimiser step: share of self CPU time by op group and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step()
    events = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1.0
    groups = {"matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"), "attention": ("scaled_dot_product",),
              "convolution": ("convolution",), "native kernels": ("_Native",)}
    shares = {g: 0.0 for g in (*groups, "other")}
    for name, t in events:
        group = next((g for g, keys in groups.items() if any(k in name for k in keys)), "other")
        shares[group] += t / total
    ops = sorted(events, key=lambda e: -e[1])[:top]
    return {"profile_s": round(total, 2), "profile_shares": {g: round(v, 3) for g, v in shares.items()},
            "profile_top": {n[:60]: round(t / total, 3) for n, t in ops}}


def measure_step(method: str, steps: int, overrides: list[str], profiled: bool = False) -> dict:
    from engine.align import RunConfig, Trainer
    from engine.models.base import SplatDiffusionModel

    cfg = RunConfig(method=method, steps=steps + 1 + profiled, sample_every=0, checkpoint_every=0).apply_overrides(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        breakdown = {}
        if profiled:  # after one warm-up step, before the timed ones (no wrappers in the way)
            trainer.train_step()
            breakdown = profile_step(trainer)
        clock = Clock()
        clock.wrap(SplatDiffusionModel, "eps", "denoiser", count_rows=True)
        clock.wrap(trainer.path, "render", "render")
        clock.wrap(trainer.path, "score", "reward")
        rows, splits = [], []
        for i, m in enumerate(trainer.run()):
            if i == 0 and not profiled:  # warm-up (first renders build the native core, caches fill)
                clock.__init__()
                continue
            rows.append(m)
            splits.append(dict(clock.seconds, fwd=clock.forward_rows, bwd=clock.backward_rows))
            clock.__init__()
    step = statistics.median(r["sample_seconds"] + r["update_seconds"] for r in rows)
    sample = statistics.median(r["sample_seconds"] for r in rows)
    med = lambda k: statistics.median(s[k] for s in splits)  # noqa: E731
    return {
        "method": method, "reward": cfg.reward, "batch": cfg.batch_size, "sampler_steps": cfg.sampler_steps,
        "step_s": round(step, 3), "sampling_s": round(sample, 3), "denoiser_s": round(med("denoiser"), 3),
        "render_s": round(med("render"), 3), "reward_s": round(med("reward"), 3),
        "denoiser_fwd_per_traj": med("fwd") / cfg.batch_size, "denoiser_bwd_per_traj": med("bwd") / cfg.batch_size,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "step_over_sampling": round(step / sample, 2), **breakdown,
    }


def gemm_gflops(repeats: int = 10, n: int = 1024) -> float:
    """This process's fp32 matrix-product rate at the current thread count (best of ``repeats``)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _model_flops(model, x, t, cond, uncond, guidance) -> int:
    """FLOPs of one CFG call as the stock forward computes it (the model's own arithmetic)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    guided_eps = engine_name("guided_eps")

    def attention(q, k, v, *args, **kwargs):  # QKᵀ and PV (the CPU flash kernel has no formula of its own)
        return 4 * q[0] * q[1] * q[2] * k[2] * q[3]

    ops = {getattr(torch.ops.aten, n): attention for n in ("_scaled_dot_product_flash_attention_for_cpu",)
           if hasattr(torch.ops.aten, n)}
    lean = getattr(model, "lean_forward", None)
    if lean is not None:
        model.lean_forward = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=ops) as counter:
            guided_eps(model, x, t, cond, uncond, guidance)
    finally:
        if lean is not None:
            model.lean_forward = lean
    return counter.get_total_flops()


HEAVY_OPS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu", "convolution")


def _heavy_floor(model, x, t, cond, uncond, guidance, repeats: int = 5) -> tuple[float, float]:
    """(seconds of one CFG call, seconds of its matrix products, attention and convolutions alone): every such
    op the call dispatches, replayed on its own with copies of its inputs (warm, best of ``repeats``). The rest of
    the call (element-wise passes, layer norms, the GELU, copies, dispatch) is what fusing could remove; the
    heavy ops' time is the floor of the stock kernels at the model's shapes."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    guided_eps = engine_name("guided_eps")

    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in HEAVY_OPS:
                calls.append((func, [a.clone() if isinstance(a, torch.Tensor) else a for a in args], dict(kwargs or {})))
            return func(*args, **(kwargs or {}))

    def best(fn, n):
        fn()
        return min(_timed(lambda: [fn() for _ in range(n)]) / n for _ in range(repeats))

    with torch.no_grad():
        with Record():
            guided_eps(model, x, t, cond, uncond, guidance)
        whole = best(lambda: guided_eps(model, x, t, cond, uncond, guidance), 3)
        heavy = sum(best(lambda: func(*args, **kwargs), 10) for func, args, kwargs in calls)
    return whole, heavy


def measure_sampling(batches: list[int], steps: int, repeats: int) -> dict:
    import torch

    sample = engine_name("sample")
    from engine.generate import load_model

    model = load_model("tiny")
    prompts = ["a red chair", "a blue car with yellow wheels", "a green mushroom with a white stem", "a yellow lamp",
               "a purple rocket", "a white snowman", "an orange cup", "a black umbrella"]
    out = {"steps": steps, "guidance": model.guidance_default}
    for B in batches:
        cond = model.encode_prompts([prompts[i % len(prompts)] for i in range(B)])
        null = model.encode_prompts([""])
        gens = lambda: [torch.Generator().manual_seed(i) for i in range(B)]  # noqa: E731
        run = lambda: sample(model, cond, null, steps=steps, guidance=model.guidance_default, generator=gens())  # noqa: E731
        run()
        per_asset = statistics.median(_timed(run) for _ in range(repeats)) / B
        flops = _model_flops(model, torch.randn(B, *model.latent_shape), torch.tensor(500), cond, null.repeat(B),
                             model.guidance_default) * steps / B
        out[f"b{B}_s_per_asset"] = round(per_asset, 4)
        out[f"b{B}_gflop_per_asset"] = round(flops / 1e9, 2)
        out[f"b{B}_gflops"] = round(flops / per_asset / 1e9, 1)
        call, heavy = _heavy_floor(model, torch.randn(B, *model.latent_shape), torch.tensor(500), cond, null.repeat(B),
                                   model.guidance_default)
        out[f"b{B}_heavy_share"] = round(heavy / call, 3)  # of one CFG call: matrix products + attention alone
    out["gemm_gflops"] = round(gemm_gflops(), 1)
    for B in batches:
        out[f"b{B}_gemm_fraction"] = round(out[f"b{B}_gflops"] / out["gemm_gflops"], 3)
    return out


def measure_eval(prompt_count: int, steps: int, seeds: int) -> dict:
    import torch

    from engine.align.evaluate import EvalSettings, RunEvaluator
    from engine.generate import load_model
    lora, EVAL_PROMPTS, read_prompts = (engine_name(n) for n in ("lora", "EVAL_PROMPTS", "read_prompts"))

    model = load_model("tiny")
    torch.manual_seed(0)
    lora.add_lora(model, init="random")  # an adapter that changes the output, as a trained run's does
    settings = EvalSettings(prompts=read_prompts(None, EVAL_PROMPTS)[:prompt_count], seeds=list(range(seeds)), steps=steps)
    t0 = time.perf_counter()
    evaluator = RunEvaluator(model, settings)
    base = time.perf_counter() - t0
    run = _timed(evaluator.evaluate)
    assets = prompt_count * seeds
    return {"assets": assets, "steps": steps, "evaluate_s": round(run, 2), "evaluate_s_per_asset": round(run / assets, 3),
            "base_s": round(base, 2)}


def measure_metrics(method: str, steps: int, overrides: list[str]) -> dict:
    """Every training metric of ``steps`` optimiser steps from seed 0, and the adapter's final weights' norm."""
    import torch

    from engine.align import RunConfig, Trainer

    cfg = RunConfig(method=method, steps=steps, sample_every=0, checkpoint_every=0).apply_overrides(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        rows = list(trainer.run())
        norm = torch.sqrt(sum(p.detach().double().pow(2).sum() for p in trainer.params.values())).item()
    keys = ("reward_mean", "loss", "grad_norm")
    return {"method": method, **{k: [r[k] for r in rows] for k in keys}, "lora_norm": norm}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.kind == "step":
        out = measure_step(args.method, args.steps, args.set, args.profile)
    elif args.kind == "metrics":
        out = measure_metrics(args.method, args.steps, args.set)
    elif args.kind == "sampling":
        out = measure_sampling([1, 8], 20, args.repeats_inner)
    else:
        cfg_steps = next((int(s.split("=")[1]) for s in args.set if s.startswith("sampler_steps=")), 20)
        out = measure_eval(args.eval_prompts, cfg_steps, 2)
    print(json.dumps({"kind": args.kind, **out, "threads": torch.get_num_threads()}), flush=True)


# ------------------------------------------------------------------------------------ driver (parent)
def _command(root: Path, kind: str, args, method: str | None = None, threads: int | None = None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--root", str(root), "--threads",
           str(threads or args.threads), "--steps", str(args.steps), "--eval-prompts", str(args.eval_prompts), "--set", *args.set]
    return cmd + (["--method", method] if method else []) + (["--profile"] if args.profile else [])


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _run(cmd: list[str], threads: int) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads))
    if out.returncode != 0:
        return {"error": out.stderr[-600:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _items(args) -> list[tuple[str, str | None]]:
    items = [(k, m) for k in ("step", "metrics") if k in args.only for m in args.methods]
    return items + [(k, None) for k in ("sampling", "eval") if k in args.only]


KEYS = {"step": ("step_s", "sampling_s"), "sampling": ("b1_s_per_asset", "b8_s_per_asset"), "eval": ("evaluate_s",), "metrics": ()}


def against(args) -> None:
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.against], capture_output=True, text=True)
    if rev.returncode != 0:
        sys.exit(f"error: {args.against!r} is not a revision of this repository ({rev.stderr.strip()}).")
    with tempfile.TemporaryDirectory(prefix="r2d3-against-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), args.against], check=True)
        try:
            results: dict[tuple, dict[str, list[dict]]] = {}
            for r in range(args.repeats):
                for kind, method in _items(args):
                    order = [("before", tree), ("after", ROOT)]
                    for label, root in order if r % 2 == 0 else order[::-1]:
                        res = _run(_command(root, kind, args, method), args.threads)
                        res.update(tree=label, rev=rev.stdout.strip() if label == "before" else "this tree")
                        print(json.dumps(res), flush=True)
                        results.setdefault((kind, method), {}).setdefault(label, []).append(res)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    print(f"\n| measurement | before ({rev.stdout.strip()}) | after | before / after |\n|---|---|---|---|")
    for (kind, method), by in results.items():
        for key in KEYS[kind]:
            values = {label: [x[key] for x in runs if key in x] for label, runs in by.items()}
            if not values.get("before") or not values.get("after"):
                print(f"| {kind} {method or ''} {key} | failed | | |")
                continue
            b, a = statistics.median(values["before"]), statistics.median(values["after"])
            print(f"| {kind} {method or ''} {key} | {b:.3f} | {a:.3f} | {b / a:.2f}x |")
    for (kind, method), by in results.items():
        if kind == "metrics" and by.get("before") and by.get("after"):
            b, a = by["before"][0], by["after"][0]
            if "error" in b or "error" in a:
                print(f"| metrics {method} | failed | | |")
                continue
            cells = []
            for k in ("reward_mean", "loss", "grad_norm", "lora_norm"):
                x, y = (v[k] if isinstance(v[k], list) else [v[k]] for v in (b, a))
                delta, scale = max(abs(p - q) for p, q in zip(x, y)), max(abs(p) for p in x)
                cells.append(f"{k}: {delta:.1e} of {scale:.2g}")  # largest |before - after| of largest |before|
            print(f"| metrics {method}, {len(b['loss'])} steps: largest difference of largest value | " + " | ".join(cells) + " |")
    for (kind, _), by in results.items():
        if kind == "sampling":
            for label in ("before", "after"):
                x = by[label][-1]
                if "gemm_gflops" in x:
                    print(f"| sampling GEMM fraction, {label} | batch 1: {x['b1_gemm_fraction']:.0%} ({x['b1_gflops']} GFLOP/s) | "
                          f"batch 8: {x['b8_gemm_fraction']:.0%} ({x['b8_gflops']} GFLOP/s) | fp32 GEMM {x['gemm_gflops']} GFLOP/s |")
                    if "b1_heavy_share" in x:
                        print(f"| heavy ops' share of a CFG call, {label} | batch 1: {x['b1_heavy_share']:.0%} | "
                              f"batch 8: {x['b8_heavy_share']:.0%} | |")


def pair(args) -> None:
    """Two runs side by side with one thread each vs one run with two threads: steps per minute of both."""
    for method in args.methods:
        alone = _run(_command(ROOT, "step", args, method, threads=2), 2)
        procs = [subprocess.Popen(_command(ROOT, "step", args, method, threads=1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=_env(1)) for _ in range(2)]
        both = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        one_run = 60 / alone["step_s"]
        side_by_side = sum(60 / b["step_s"] for b in both)
        print(json.dumps({"method": method, "one_run_2_threads_step_s": alone["step_s"],
                          "two_runs_1_thread_step_s": [b["step_s"] for b in both],
                          "steps_per_min_one_run": round(one_run, 2), "steps_per_min_two_runs": round(side_by_side, 2),
                          "winner": "two runs, one thread each" if side_by_side > one_run else "one run, two threads"}), flush=True)


def live(minutes: float, checkpoints: list[float], overrides: list[str], held_out: int) -> dict:
    from engine.align import RunConfig, Trainer

    cfg = RunConfig(method="nabla-r2d3", steps=10**6, sample_every=0, checkpoint_every=0).apply_overrides(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")

        def held_out_reward():  # fixed prompts and noise, never trained on (steps far beyond the run)
            return sum(trainer.rollout(10**8 + i).rewards.mean().item() for i in range(held_out)) / held_out

        curve = [{"minutes": 0.0, "step": 0, "held_out_reward": held_out_reward()}]
        marks = sorted(checkpoints + [minutes])
        for m in trainer.run():
            done = m["wall_seconds"] / 60
            while marks and done >= marks[0]:
                marks.pop(0)
                curve.append({"minutes": round(done, 2), "step": m["step"], "held_out_reward": held_out_reward(),
                              "train_reward": m["reward_mean"]})
                print(json.dumps(curve[-1]), flush=True)
            if not marks:
                trainer.request_stop()
    gain = lambda c: c["held_out_reward"] - curve[0]["held_out_reward"]  # noqa: E731
    return {"curve": curve, "gains": {str(c["minutes"]): gain(c) for c in curve[1:]},
            "first_over_last": gain(curve[1]) / gain(curve[-1]) if gain(curve[-1]) else None, "config": overrides}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=None, help="methods whose step is timed (default: every one; --pair: nabla-r2d3 refl)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up step)")
    p.add_argument("--set", nargs="*", default=None, help=f"config overrides (default: the study's, {' '.join(STUDY)})")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--against", metavar="REV", help="also measure git revision REV (a worktree), alternating with this tree")
    p.add_argument("--only", nargs="*", choices=KINDS, default=None,
                   help="with --against: which measurements (default: step sampling eval; metrics: the same seed's training metrics in both trees)")
    p.add_argument("--repeats", type=int, default=1, help="with --against: rounds of every measurement")
    p.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts in the evaluation measurement (x 2 seeds)")
    p.add_argument("--profile", action="store_true", help="also torch.profiler's breakdown of one step per method")
    p.add_argument("--pair", action="store_true", help="two runs with one thread each vs one run with two threads")
    p.add_argument("--live", type=float, help="minutes of a live Nabla-R2D3 run")
    p.add_argument("--checkpoints", default="3", help="minutes at which the live run's held-out reward is measured")
    p.add_argument("--held-out", type=int, default=3, help="held-out batches (of batch_size prompts) per measurement")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.set = STUDY if args.set is None else args.set
    args.repeats_inner = 3
    if args.child:  # one measurement, importing the engine of --root
        sys.path.insert(0, args.root)
        args.kind = args.child
        child(args)
        return
    sys.path.insert(0, str(ROOT))
    from engine.align import METHODS

    args.methods = args.methods or (["nabla-r2d3", "refl"] if args.pair else list(METHODS))
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if args.live:
        marks = [float(x) for x in args.checkpoints.split(",") if x]
        print(json.dumps(live(args.live, marks, args.set, args.held_out)))
    elif args.pair:
        pair(args)
    elif args.against:
        args.only = args.only or ["step", "sampling", "eval"]
        against(args)
    else:
        for method in args.methods:
            print(json.dumps(_run(_command(ROOT, "step", args, method), args.threads) | {"method": method}), flush=True)


if __name__ == "__main__":
    main()
