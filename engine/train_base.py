"""Trains the embedded base model and its evaluator from scratch, in resumable stages.

    python -m engine.train_base --work outputs/train_base --out checkpoints/tiny-base [--stage all] [--preset v2|v1]

Stages (each skips what is already done and resumes from its last checkpoint):
    data         ground-truth splatter images of the procedural world (and evaluator renders)
    autoencoder  splatter autoencoder (64x64x12 <-> 8x16x16 per view)
    latents      encode the dataset; fix the latent scaling factor
    diffusion    the multi-view PixArt denoiser on latents, text-conditioned, 10% null prompts for CFG
    evaluator    the contrastive text-object evaluator (its own seeds)
    export       save_pretrained into --out
``--preset`` picks a recipe (v1, v2; ``PRESETS``), ``--config`` overrides its fields. The config is written to
``work/config.json``; the same seed and config give the same weights on the same machine, library versions
and ``--threads``. ``--snapshot DIR`` writes the EMA weights of an unfinished run, for evaluating it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .core.io import atomic_write_text
from .core.sampling import make_scheduler
from .core.text import default_text_encoder
from .data.dataset import build_chunks, load_chunks, load_specs, save_tensors
from .data.world import ObjectSpec, caption
from .evaluator import Evaluator, evaluator_captions, train_evaluator_step
from .models.splatter_ae import SplatterAutoencoder
from .models.tiny import Condition, TinySplatModel, tiny_transformer

STAGES = ("data", "autoencoder", "latents", "diffusion", "evaluator", "export")


@dataclass
class TrainBaseConfig:
    seed: int = 0
    num_objects: int = 8000
    resolution: int = 64
    evaluator_images: int = 12000
    evaluator_seed_base: int = 1_000_000
    ae_steps: int = 2000
    ae_batch_views: int = 32
    ae_lr: float = 1e-3
    ae_kl_weight: float = 1e-6
    diffusion_steps: int = 2500
    diffusion_batch: int = 16
    diffusion_lr: float = 4e-4
    cfg_dropout: float = 0.1
    prediction_type: str = "v_prediction"  # the network's target; samplers always see ε (see TinySplatModel.eps)
    ema_decay: float = 0.998
    transformer_layers: int = 8
    evaluator_steps: int = 1500
    evaluator_batch: int = 128
    checkpoint_every: int = 200
    # Added for v2; the defaults are v1's recipe, so the v1 config still makes the v1 weights.
    ae_channel_weights: tuple[float, ...] = (1, 1, 1, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 1.5, 2.0)  # see AE_CHANNELS
    ae_normal_weight: float = 0.0  # 1 - |cos| between the decoded and true surfel normals (what DNC sees)
    warmup_steps: int = 200
    lr_floor: float = 0.1  # the cosine ends at this fraction of the peak learning rate
    cache_text: bool = False  # token embeddings computed once per caption (each alone, so resumes stay exact)
    guidance_default: float = 2.0  # written to model_index.json; not a training setting


# The recipe of each shipped base model. `--preset` picks one; `--config` overrides fields on top.
PRESETS: dict[str, dict] = {
    "v1": {},
    # v2 keeps v1's autoencoder loss: a first v2 run weighting scale/rotation like rgb (1.0) plus a normal loss
    # (1.0) reconstructed green at correlation 0.32 (v1: 0.96), and its samples lost their colour (0.50 colour
    # accuracy at diffusion step 3,500), for autoencoder DNC 0.64 vs 0.62.
    "v2": dict(
        ae_steps=3000, diffusion_steps=9000, warmup_steps=500, ema_decay=0.999, cache_text=True, checkpoint_every=50,
    ),
}
# Fields that do not change the weights: a work folder may be resumed or exported with other values.
NOT_TRAINING = ("guidance_default", "checkpoint_every")
# What the evaluator is trained from. The evaluator is the judge of bench/eval_base.py, so a new base model
# whose recipe leaves these unchanged keeps the evaluator already in --out: both versions face the same judge.
EVALUATOR_FIELDS = ("seed", "resolution", "evaluator_images", "evaluator_seed_base", "evaluator_steps", "evaluator_batch")


AE_CHANNELS = "rgb 3 | scale 3 | rotation 4 (w first) | opacity 1 | depth 1"


def config_from(preset: str = "v2", overrides: dict | None = None) -> TrainBaseConfig:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    fields = PRESETS[preset] | (overrides or {})
    unknown = sorted(set(fields) - set(TrainBaseConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"Unknown config fields {unknown}; the fields are those of TrainBaseConfig.")
    cfg = TrainBaseConfig(**fields)
    cfg.ae_channel_weights = tuple(float(w) for w in cfg.ae_channel_weights)
    if len(cfg.ae_channel_weights) != 12:
        raise ValueError(f"ae_channel_weights needs 12 values ({AE_CHANNELS}), got {len(cfg.ae_channel_weights)}.")
    return cfg


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up, then a cosine from 1 down to ``floor`` at ``total``."""
    warm = min(1.0, (step + 1) / warmup)
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total)))


def surfel_normals(quats: torch.Tensor) -> torch.Tensor:
    """[N, 4, H, W] w-first quaternion channels -> [N, 3, H, W] unit third axes (a flat Gaussian's normal)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=1, eps=1e-6).unbind(1)
    return torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], 1)


def _step_seed(seed: int, stream: int, step: int) -> int:
    """Batches are a pure function of (seed, stream, step), so a resumed run draws what an unbroken one would."""
    return (seed * 1_000_003 + stream) * 10_000_019 + step


def _save_state(path: Path, tensors: dict, meta: dict) -> None:
    save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, {"meta": json.dumps(meta)})


def _load_state(path: Path) -> tuple[dict, dict] | None:
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(path)), meta


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict:
    out = {}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                out[f"opt.{i}.{k}"] = st[k]
        if "step" in st:
            out[f"opt.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    return out


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict) -> None:
    for i, p in enumerate(opt.param_groups[0]["params"]):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {"exp_avg": tensors[f"opt.{i}.exp_avg"].to(p.device), "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].to(p.device),
                            "step": tensors[f"opt.{i}.step"].reshape(()).clone()}


def _train_loop(name, work: Path, module: torch.nn.Module, opt, steps: int, step_fn, every: int, ema: torch.nn.Module | None = None, decay=0.0):
    """Generic resumable loop: step_fn(step) -> loss float. State saved as safetensors every ``every`` steps."""
    ckpt = work / f"{name}_state.safetensors"
    start = 0
    state = _load_state(ckpt)
    if state is not None:
        tensors, meta = state
        module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        _restore_optimizer(opt, tensors)
        start = meta["step"]
        torch.set_rng_state(tensors["rng"])
    log = (work / f"{name}_log.jsonl").open("a")
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=name, mininterval=5)
    t0, losses = time.time(), []
    for step in bar:
        losses.append(step_fn(step))
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), module.parameters()):
                    pe.lerp_(pm, 1 - decay)
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            tensors = {f"model.{k}": v for k, v in module.state_dict().items()}
            if ema is not None:
                tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
            tensors |= _optimizer_tensors(opt) | {"rng": torch.get_rng_state()}
            _save_state(ckpt, tensors, {"step": step + 1})
            log.write(json.dumps({"step": step + 1, "loss": sum(losses) / len(losses), "seconds": round(time.time() - t0, 1)}) + "\n")
            log.flush()
            losses = []
    return module


def stage_data(cfg: TrainBaseConfig, work: Path) -> None:
    build_chunks(work / "data", "maps", cfg.num_objects, 0, "train", cfg.resolution)


def stage_evaluator_data(cfg: TrainBaseConfig, work: Path) -> None:
    build_chunks(work / "data" / "evaluator", "images", cfg.evaluator_images, cfg.evaluator_seed_base, "all", cfg.resolution)


def ae_loss(ae: SplatterAutoencoder, maps: torch.Tensor, cfg: TrainBaseConfig) -> torch.Tensor:
    mean, logvar = ae.encode(maps)
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
    recon = ae.decoder(z)
    hit = (maps[:, 10:11] > 0).float()
    mask = torch.cat([hit.expand(-1, 10, -1, -1), torch.ones_like(hit), hit], 1)
    weights = torch.tensor(cfg.ae_channel_weights, dtype=maps.dtype, device=maps.device).view(1, 12, 1, 1)
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
    loss = ((recon - maps).abs() * weights * mask).mean() + cfg.ae_kl_weight * kl
    if cfg.ae_normal_weight:
        # The normal is invariant to the quaternion's sign, which plain L1 on the channels is not.
        cos = (surfel_normals(recon[:, 6:10]) * surfel_normals(maps[:, 6:10])).sum(1, keepdim=True).abs()
        loss = loss + cfg.ae_normal_weight * ((1 - cos) * hit).sum() / hit.sum().clamp_min(1)
    return loss


def stage_autoencoder(cfg: TrainBaseConfig, work: Path, device: str = "cpu") -> SplatterAutoencoder:
    data: dict[str, torch.Tensor] = {}  # loaded on the first step: a finished stage needs no data

    def views() -> torch.Tensor:
        if "views" not in data:
            data["views"] = load_chunks(work / "data", "maps")[0].flatten(0, 1)  # [N*4, 12, R, R] float16
        return data["views"]

    torch.manual_seed(cfg.seed)
    ae = SplatterAutoencoder().to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
    g = torch.Generator()

    def step(i):
        g.manual_seed(_step_seed(cfg.seed, 1, i))
        for group in opt.param_groups:
            group["lr"] = cfg.ae_lr * 0.5 * (1 + math.cos(math.pi * i / cfg.ae_steps))
        idx = torch.randint(len(views()), (cfg.ae_batch_views,), generator=g)
        loss = ae_loss(ae, views()[idx].float().to(device), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return _train_loop("autoencoder", work, ae, opt, cfg.ae_steps, step, cfg.checkpoint_every)


def stage_latents(cfg: TrainBaseConfig, work: Path, ae: SplatterAutoencoder, device: str = "cpu") -> None:
    """Encodes the dataset (posterior means) once; the diffusion stage trains on these."""
    out = work / "latents.safetensors"
    if out.exists():
        return
    maps, _ = load_chunks(work / "data", "maps")
    lat = []
    with torch.no_grad():
        for i in tqdm(range(0, len(maps), 64), desc="latents", mininterval=5):
            lat.append(ae.encode(maps[i : i + 64].flatten(0, 1).float().to(device))[0].cpu())
    lat = torch.cat(lat).reshape(len(maps), 4, *lat[0].shape[1:])
    save_tensors({"latents": lat}, out)


def load_latents(work: Path) -> tuple[torch.Tensor, list[float], list[float], list[ObjectSpec]]:
    """Latents [N, V, C, h, w] with their per-channel mean and 1/std (the autoencoder's shift and scale)."""
    lat = load_file(str(work / "latents.safetensors"))["latents"]
    mean = lat.mean(dim=(0, 1, 3, 4)).double()
    std = lat.double().std(dim=(0, 1, 3, 4))
    return lat, mean.tolist(), (1.0 / std).tolist(), load_specs(work / "data", "maps")


class CaptionTokens:
    """The text encoder's token embeddings, computed once per caption. Each caption is encoded alone, so an
    embedding does not depend on the batch it first came in (a resumed run sees the same numbers). Padding
    positions are zeros: the transformer's attention mask hides them."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.cache: dict[str, torch.Tensor] = {}

    def tokens(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for p in prompts:
            if p not in self.cache:
                emb, mask = self.encoder.tokens([p])
                self.cache[p] = emb[0, : int(mask.sum())].clone()
        length = self.encoder.max_tokens
        emb = torch.zeros(len(prompts), length, self.cache[prompts[0]].shape[-1])
        mask = torch.zeros(len(prompts), length, dtype=torch.long)
        for k, p in enumerate(prompts):
            n = len(self.cache[p])
            emb[k, :n], mask[k, :n] = self.cache[p], 1
        return emb, mask


def _tiny_model(cfg: TrainBaseConfig, ae: SplatterAutoencoder) -> TinySplatModel:
    return TinySplatModel(tiny_transformer(num_layers=cfg.transformer_layers), ae, prediction_type=cfg.prediction_type,
                          guidance_default=cfg.guidance_default)


def stage_diffusion(cfg: TrainBaseConfig, work: Path, ae: SplatterAutoencoder, device: str = "cpu"):
    latents, shift, scale, specs = load_latents(work)
    ae.register_to_config(scaling_factor=scale, shift_factor=shift)
    latents = ae.to_diffusion(latents)
    torch.manual_seed(cfg.seed)
    model = _tiny_model(cfg, ae)
    ema = _tiny_model(cfg, ae)
    ema.transformer.load_state_dict(model.transformer.state_dict())
    ema.requires_grad_(False)
    model.to(device)
    ema.to(device)
    params = list(model.transformer.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.diffusion_lr, weight_decay=0.01)
    sched = make_scheduler("ddim")  # only its training-time noise schedule is used
    ac = sched.alphas_cumprod.to(device)
    text = CaptionTokens(default_text_encoder()) if cfg.cache_text else default_text_encoder()
    g = torch.Generator()
    rng = random.Random()

    def step(i):
        g.manual_seed(_step_seed(cfg.seed, 2, i))
        rng.seed(_step_seed(cfg.seed, 3, i))
        for group in opt.param_groups:
            group["lr"] = cfg.diffusion_lr * lr_factor(i, cfg.diffusion_steps, cfg.warmup_steps, cfg.lr_floor)
        idx = torch.randint(len(latents), (cfg.diffusion_batch,), generator=g)
        x0 = latents[idx].to(device)
        prompts = ["" if rng.random() < cfg.cfg_dropout else caption(specs[j], rng) for j in idx.tolist()]
        emb, mask = text.tokens(prompts)
        t = torch.randint(0, 1000, (len(idx),), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        a = ac[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = model.network_output(xt, t, Condition(emb.to(device), mask.to(device)))
        target = noise if cfg.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    _train_loop("diffusion", work, model.transformer, opt, cfg.diffusion_steps, step, cfg.checkpoint_every,
                ema=ema.transformer, decay=cfg.ema_decay)
    return ema


def stage_evaluator(cfg: TrainBaseConfig, work: Path, device: str = "cpu") -> Evaluator:
    images, specs = load_chunks(work / "data" / "evaluator", "images")
    torch.manual_seed(cfg.seed)
    ev = Evaluator().to(device)
    opt = torch.optim.AdamW(ev.parameters(), lr=2e-3, weight_decay=0.05)
    g = torch.Generator()
    rng = random.Random()
    text = default_text_encoder()
    cache: dict[str, torch.Tensor] = {}

    def embed(prompts):
        new = sorted({p for p in prompts if p not in cache})
        if new:
            for p, e in zip(new, text.pooled(new)):
                cache[p] = e
        return torch.stack([cache[p] for p in prompts]).to(device)

    def step(i):
        g.manual_seed(_step_seed(cfg.seed, 4, i))
        rng.seed(_step_seed(cfg.seed, 5, i))
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * i / cfg.evaluator_steps))
        idx = torch.randint(len(images), (cfg.evaluator_batch,), generator=g)
        prompts = [evaluator_captions(specs[j], rng) for j in idx.tolist()]
        loss = train_evaluator_step(ev, images[idx].float().to(device) / 255, prompts, embed, specs=[specs[j] for j in idx.tolist()])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return _train_loop("evaluator", work, ev, opt, cfg.evaluator_steps, step, cfg.checkpoint_every)


def export_snapshot(cfg: TrainBaseConfig, work: Path, out: Path) -> int:
    """Writes the diffusion stage's current EMA weights (with the finished autoencoder) as a tiny-base folder,
    without training; for evaluating a run that is still going. Returns the diffusion step."""
    states = {name: _load_state(work / f"{name}_state.safetensors") for name in ("autoencoder", "diffusion")}
    if states["autoencoder"] is None or states["autoencoder"][1]["step"] < cfg.ae_steps or not (work / "latents.safetensors").exists():
        raise SystemExit(f"{work}: the autoencoder and latents stages are not finished yet; nothing to snapshot.")
    if states["diffusion"] is None:
        raise SystemExit(f"{work}: the diffusion stage has no checkpoint yet (one every {cfg.checkpoint_every} steps).")
    ae = SplatterAutoencoder()
    ae.load_state_dict({k[6:]: v for k, v in states["autoencoder"][0].items() if k.startswith("model.")})
    _, shift, scale, _ = load_latents(work)
    ae.register_to_config(scaling_factor=scale, shift_factor=shift)
    model = _tiny_model(cfg, ae.eval())
    model.transformer.load_state_dict({k[4:]: v for k, v in states["diffusion"][0].items() if k.startswith("ema.")})
    step = states["diffusion"][1]["step"]
    model.save_pretrained(out)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg) | {"snapshot_diffusion_step": step}, indent=2))
    return step


def kept_evaluator(cfg: TrainBaseConfig, out: Path) -> bool:
    """Whether ``out`` already holds an evaluator trained with ``cfg``'s evaluator settings."""
    saved = out / "train_config.json"
    if not (out / "evaluator" / "config.json").exists() or not saved.exists():
        return False
    old = json.loads(saved.read_text())
    return all(old.get(k) == getattr(cfg, k) for k in EVALUATOR_FIELDS)


def _same_training(saved: dict, cfg: TrainBaseConfig) -> bool:
    """Whether a work folder's config trains what ``cfg`` trains (fields added later count at their defaults)."""
    now = json.loads(json.dumps(asdict(cfg)))
    old = json.loads(json.dumps(asdict(TrainBaseConfig()))) | saved
    return all(old.get(k) == v for k, v in now.items() if k not in NOT_TRAINING)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("outputs/train_base"))
    p.add_argument("--out", type=Path, default=Path("checkpoints/tiny-base"))
    p.add_argument("--stage", choices=("all",) + STAGES, default="all")
    p.add_argument("--preset", choices=tuple(PRESETS), default="v2", help="the recipe (v2: the shipped weights; v1: the first release)")
    p.add_argument("--config", type=Path, help="JSON with TrainBaseConfig fields to override on top of the preset")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the shipped weights were trained on the CPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads; a resumed run is bit-exact on the same count")
    p.add_argument("--snapshot", type=Path, help="write the current EMA weights of an unfinished run to this folder and stop")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = config_from(args.preset, json.loads(args.config.read_text()) if args.config else None)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    saved = args.work / "config.json"
    if saved.exists() and not _same_training(json.loads(saved.read_text()), cfg):
        raise SystemExit(f"{saved} holds a different config; use a new --work folder or the same config.")
    if args.snapshot:
        print(json.dumps({"snapshot": str(args.snapshot), "diffusion_step": export_snapshot(cfg, args.work, args.snapshot)}))
        return
    atomic_write_text(saved, json.dumps(asdict(cfg), indent=2))
    run = lambda s: args.stage in ("all", s)  # noqa: E731
    t0 = time.time()
    if run("data"):
        stage_data(cfg, args.work)
    ae = None
    if any(run(s) for s in ("autoencoder", "latents", "diffusion", "export")):
        ae = stage_autoencoder(cfg, args.work, args.device).eval()
    if run("latents") or run("diffusion") or run("export"):
        stage_latents(cfg, args.work, ae, args.device)
    model = stage_diffusion(cfg, args.work, ae, args.device) if (run("diffusion") or run("export")) else None
    keep = args.stage != "evaluator" and kept_evaluator(cfg, args.out)
    if keep:
        print(f"Keeping the evaluator in {args.out / 'evaluator'}: it was trained with these evaluator settings "
              f"({', '.join(EVALUATOR_FIELDS)}); `--stage evaluator` retrains it.")
    if run("evaluator") and not keep:
        stage_evaluator_data(cfg, args.work)
    ev = stage_evaluator(cfg, args.work, args.device) if (run("evaluator") or run("export")) and not keep else None
    if run("export"):
        model.to("cpu").save_pretrained(args.out)
        if ev is not None:
            ev.to("cpu").save_pretrained(args.out / "evaluator")
        (args.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    print(json.dumps({"stage": args.stage, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
