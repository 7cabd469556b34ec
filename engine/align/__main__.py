"""python -m engine.align --method nabla-r2d3 --reward geometry --steps 100 --out outputs/runs/x [--set nabla.beta=1e4]

Data parallel: torchrun --nproc_per_node=N -m engine.align ... (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import RunConfig
from .knobs import knob_fields
from .methods import METHODS


def knob_help() -> str:
    """Every method and its knobs, from the methods' own declarations (engine/align/methods/)."""
    lines = ["methods and their knobs (--set GROUP.KNOB=VALUE; the run's own fields: --set KNOB=VALUE):"]
    for name, cls in METHODS.items():
        lines.append(f"  {name} ({cls.title}): {cls.summary}")
        for k in knob_fields(cls.config, cls.config_field):
            default = "from the reward" if k.default is None else repr(k.default)
            lines.append(f"    {k.dotted} = {default}" + (f"  {k.meta.note}" if k.meta.note else ""))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.align", description="Finetune a text-to-3D model's LoRA on a 2D reward.",
                                epilog=knob_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=list(METHODS), default=None)
    p.add_argument("--reward", help="a reward or an ensemble spec, e.g. geometry or 'alignment:1,geometry:0.5'")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--prompts", help="training prompts, one per line (default assets/prompts/train.txt)")
    p.add_argument("--config", help="start from a run's config.json")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any config field, e.g. nabla.beta=1e4 lr=3e-4")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--model", help="tiny (default), diffsplat-pas or diffsplat-sd15")
    p.add_argument("--weights", help="base model folder (tiny: default the shipped checkpoint; diffsplat-*: the download folder)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="the denoiser's precision")
    p.add_argument("--reward-weights", nargs="*", default=[], metavar="NAME=PATH", help="local weights of real rewards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_config(args) -> RunConfig:
    from pathlib import Path

    if args.config:
        config = RunConfig.load(args.config)
    elif args.resume and (Path(args.out) / "config.json").exists():
        config = RunConfig.load(Path(args.out) / "config.json")
    else:
        config = RunConfig()
    sets = list(args.set)
    for key in ("method", "reward", "steps", "prompts", "model", "weights", "device", "dtype"):
        value = getattr(args, key)
        if value is not None:
            sets.insert(0, f"{key}={value}")
    config = config.apply_overrides(sets)
    for item in args.reward_weights:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--reward-weights {item!r}: expected NAME=PATH.")
        config.reward_weights[name] = path
    return config.validate()


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from .trainer import Trainer, TrainingError

    try:
        trainer = Trainer(build_config(args), args.out, resume=args.resume)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        last = trainer.train(progress=not args.quiet)
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    if trainer.world.main:
        print(json.dumps({"out": str(trainer.out), "step": trainer.step, **({k: last[k] for k in ("reward_mean", "loss")} if last else {})}))


if __name__ == "__main__":
    main()
