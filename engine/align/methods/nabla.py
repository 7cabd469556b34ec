"""Nabla-R2D3: the forward residual ∇-DB loss with a forward-looking reward gradient.

For a sampled transition x_j -> x_{j+1} (research/nabla-r2d3.md §1.3):

    mean (s_θ − κ s_ref − g_{j+1})² + λ mean (ε_θ(x_j) − ε_old(x_j))²,
    s = ∇_{x_{j+1}} log N(x_{j+1}; μ(x_j), std_j²) = (μ − x_{j+1}) / std_j²,
    g_{j+1} = w(t) · clip(β ∇_{x_{j+1}} R̄(decode(x̂0^θ(x_{j+1})))),   detached,

so s_θ − s_ref = (μ_θ − μ_ref) / std² = −c_j (ε_θ − ε_ref): the policy's ε is pulled to ε_ref − g / c_j.
Differences from the reference code, on purpose (§8): the look-ahead predicts x̂0 at ᾱ(t_{j+1})
(``lookahead="reference"`` reproduces its double shift), batches of any size, on-policy unless ``lag``,
per-sample seeds, no duplicate terminal transition in the stratified subsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.sampling import Trajectory
from ...models.base import Condition
from ..knobs import bad_value, knob
from ..rollout import GraphPlan, Rollout, _bc, alpha_bar, stratified_steps
from .base import Method, mean_metrics

# β multiplies the raw reward gradient, so its default is per unit of the reward's usual range: on the tiny model
# the last sampler step's score coefficient (~1e3) needs ~1e6-1e7 per unit before the samples move. Measured
# (base v2, colorfulness, batch 2, 10 sampler steps, lr 1e-3, 10 steps): 3e7 per unit reached 111 (as ReFL),
# 3e6 reached 87, 3e3 stayed at the base; the shipped comparison's sweep picked its top value, 3e7, scores rising.
BETA_PER_RANGE = 3e7


@dataclass
class NablaConfig:
    """Nabla-R2D3: forward residual ∇-DB with the forward-looking reward gradient (research/nabla-r2d3.md §1.3-1.6)."""

    beta: float | None = knob(None, f"reward temperature: target p ∝ p_ref · exp(β r); unset: {BETA_PER_RANGE:.0e}".replace("e+0", "e") + " per unit "
                              "of the reward's usual range", title="β (beta)", low=0, sweep=(3e6, 3e7, 3e8), strength=1,
                              per_reward_range=BETA_PER_RANGE)
    # on-policy ε_θ equals the sampled ε_old, so the term and its gradient are exactly 0: it acts only with `lag`
    reg: float = knob(1e3, "λ: ε-space trust region to the sampling policy", title="λ (reg)", low=0, active_with="lag")
    strength: float = knob(1.0, "κ: weight of the reference score", title="κ (strength)", low=0)
    timestep_fraction: float = knob(0.4, "K = int(N · fraction) transitions per trajectory, the terminal one always",
                                    low=0, open_low=True, high=1)
    low_variance: bool = knob(True, "one transition per stratum of the trajectory (plus the terminal one)")
    adaptive_scaling: str = knob("squared", "g · ᾱ(t_next) (\"squared\"), · sqrt(ᾱ) (\"sqrt\") or \"none\"",
                                 choices=("squared", "sqrt", "none"))
    alpha_prod_clip: bool = knob(False, "ᾱ ← ᾱ^1.5, zero where ᾱ^1.5 <= 0.05")
    reward_grad_clip: float = knob(0.0, "per-sample L2 clip of β∇r before scaling (0 = off)", low=0)
    n_reward_avg: int = knob(1, "noisy copies of the renders whose reward gradients are averaged", low=1)
    image_noise: float = knob(2e-3, "std of the noise on those copies", low=0)
    reward_views: int = knob(0, "score this many of the views per transition (0 = all; 2 = the memory-saving mode)", low=0)
    loss: str = knob("l2", "\"l2\" or \"l1\"", choices=("l2", "l1"))
    # "score": the residual in score units, as the paper (the last sampler step's c_j ~ 1e3 makes it most of the
    # loss); "eps": divided by c_j, each transition weighs alike. Same fixed point (engine/align/theory/THEORY.md §3)
    weighting: str = knob("score", "\"score\": the residual in score units (the paper's); \"eps\": divided by c_j, "
                          "every transition weighs alike (same fixed point)", choices=("score", "eps"))
    lookahead: str = knob("next", "x̂0 at ᾱ(t_{j+1}); \"reference\" reproduces the reference's double shift (§8 B1)",
                          choices=("next", "reference"))
    # off by default: measured (bench/nabla_lag.py, alignment, 3 seeds) the lag gained less held-out alignment (paired
    # difference −0.012 [−0.023, −0.003]) and forgot no less; with it the λ trust region acts
    lag: bool = knob(False, "train on the previous round's samples (the reference's one-round lag, §2.4)")

    def validate(self, steps: int) -> None:
        if int(steps * self.timestep_fraction) < 1:
            raise bad_value("nabla.timestep_fraction", self.timestep_fraction, f"trains no transition of {steps} sampler steps",
                            "raise it so that steps x fraction >= 1")


_TRAJ = ("latents", "next_latents", "timesteps", "model_outputs", "means", "stds")


class NablaR2D3(Method):
    title = "Nabla-R2D3"
    config = NablaConfig
    name = "nabla-r2d3"
    config_field = "nabla"
    summary = "residual ∇-DB with forward-looking reward gradients (Nabla-R2D3)"
    needs = ("trajectory", "reward_grad", "reference", "old_outputs")

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.previous: Rollout | None = None

    def picks(self, step, indices):
        """[B, K] the transitions each trajectory trains (the terminal one first)."""
        tr = self.ctx.transitions
        K = int(tr.steps * self.cfg.timestep_fraction)
        return stratified_steps(tr.steps, K, self.ctx.generators(step, "nabla-steps", indices), self.cfg.low_variance)

    def graph_plan(self, step, indices):
        if self.cfg.lag:  # trains on the previous round's samples: the passes that made them are gone
            return None
        picks = self.picks(step, indices)
        ahead = picks + 1 if self.cfg.lookahead == "next" else None  # ε_θ(x_{j+1}, t_{j+1}) is the sampler's next pass
        return GraphPlan.calls(len(indices), self.ctx.transitions.steps, picks, ahead)

    def losses(self, rollout, step):
        cfg, ctx = self.cfg, self.ctx
        data = rollout
        if cfg.lag:  # train on the previous round's samples (the reference's schedule)
            data, self.previous = self.previous, rollout
            if data is None:
                return
        tr, traj = ctx.transitions, data.trajectory
        picks = self.picks(step, data.indices)
        B, K = picks.shape
        rows = torch.arange(B)
        # every look-ahead first: a kept sampler pass may be one transition's look-ahead and another's policy term
        targets = [self.reward_gradient(data, picks[:, k], step, k) for k in range(K)]
        # the base's ε at every trained transition, in one pass (k-major)
        flat = picks.t().flatten()
        eps_refs = ctx.reference_eps(data.select(rows.repeat(K)), traj.latents[rows.repeat(K), flat], tr.timesteps[flat]).split(B)
        for k in range(K):
            j = picks[:, k]
            x_next, eps_old = traj.next_latents[rows, j], traj.model_outputs[rows, j]
            g, info = targets[k]
            eps_ref = eps_refs[k]
            policy = ctx.policy_pass(data, j)
            x, eps = policy.x.detach(), policy.eps
            # s_θ − κ s_ref = (μ_θ − μ_ref)/std² + (1−κ) s_ref, the first term in its exact closed form
            # −c_j (ε_θ − ε_ref) (no difference of large numbers in float32)
            s_diff = -_bc(tr.score_coefficient(j), x) * (eps - eps_ref)
            if cfg.strength != 1:
                s_diff = s_diff + (1 - cfg.strength) * (tr.mean(j, x, eps_ref) - x_next) / _bc(tr.std[j], x) ** 2
            resid = s_diff - g
            if cfg.weighting == "eps":  # the same residual in ε units: each transition weighs alike
                resid = resid / _bc(tr.score_coefficient(j), resid)
            fwd = resid.pow(2).mean() if cfg.loss == "l2" else resid.abs().mean()
            reg = (eps - eps_old).pow(2).mean()
            shift = g / _bc(tr.score_coefficient(j), g)
            loss = (fwd + cfg.reg * reg) / K
            # the regime (step_metrics): this chunk's pull on the denoiser's output, and residual vs target sizes
            (pull,) = torch.autograd.grad(loss, eps, retain_graph=True)
            yield loss, {
                "loss_fwd": fwd.item(), "loss_reg": reg.item(), "target_shift": shift.pow(2).mean().sqrt().item(), **info,
                "_pull": pull.norm().item(), "_rms_diff": s_diff.detach().pow(2).mean().sqrt().item(),
                "_rms_target": g.pow(2).mean().sqrt().item(),
            }

    def step_metrics(self, rows):
        """Besides the means: where the step's gradient comes from. ``terminal_grad_share``: the terminal
        transition's share of the loss gradient's norm at the denoiser output (Σ over chunks of its norm);
        ``terminal_residual_ratio``: RMS(s_θ − κ s_ref) / RMS(g) at the terminal transition. While that ratio is
        far below 1 the loss is about −2⟨s_θ − κ s_ref, g⟩ and its gradient points along g whatever β is (Adam
        cancels β's scale): β only shapes the fixed point once the policy's score has moved to g's size."""
        terminal, hidden = rows[0], ("_pull", "_rms_diff", "_rms_target")
        pulls = sum(r["_pull"] for r in rows)
        out = mean_metrics([{k: v for k, v in r.items() if k not in hidden} for r in rows])
        out["terminal_grad_share"] = terminal["_pull"] / pulls if pulls > 0 else float("nan")
        target = terminal["_rms_target"]
        out["terminal_residual_ratio"] = terminal["_rms_diff"] / target if target > 0 else float("nan")
        return out

    def reward_gradient(self, data: Rollout, j, step: int, k: int):
        """β ∇_{x_{j+1}} R̄(x̂0^θ(x_{j+1})), clipped and ᾱ-weighted per sample; detached."""
        cfg, ctx, tr = self.cfg, self.ctx, self.ctx.transitions
        model, N = ctx.model, tr.steps
        if cfg.lookahead == "next":
            terminal = j == N - 1
            t_net = tr.timesteps[(j + 1).clamp(max=N - 1)]
            t_x0 = t_net
            weight = torch.where(terminal, alpha_bar(model, torch.zeros_like(j)), alpha_bar(model, t_net))
        else:  # the reference: network at t_j − Δ, x̂0 with ᾱ(max(t_j − 2Δ, 1)), weight ᾱ(t_j − Δ)
            delta = tr.timesteps[0] - tr.timesteps[1]
            terminal = torch.zeros_like(j, dtype=torch.bool)
            t_net = (tr.timesteps[j] - delta).clamp(min=0)
            t_x0 = (tr.timesteps[j] - 2 * delta).clamp(min=1)
            weight = alpha_bar(model, t_net)
        gens = ctx.generators(step, f"nabla-reward-{k}", data.indices)
        cams = ctx.reward.cameras(ctx.shared(step, "nabla-cameras", k))
        x = data.trajectory.next_latents[torch.arange(len(data)), j].detach().requires_grad_(True)
        ahead = None
        with torch.enable_grad():
            x0 = x
            if not terminal.all():
                nt = (~terminal).nonzero().flatten()
                if cfg.lookahead == "next":  # ε_θ(x_{j+1}, t_{j+1}) is the sampler's pass at step j + 1
                    ahead = ctx.policy_pass(data, j[nt] + 1, rows=nt, input_grad=True)
                    xa, eps = ahead.x, ahead.eps
                else:
                    xa = x[nt]
                    eps = ctx.eps(data.select(nt), xa, t_net[nt])
                ab = _bc(alpha_bar(model, t_x0[nt]), xa)
                x0 = x.index_copy(0, nt, (xa - (1 - ab).sqrt() * eps) / ab.sqrt())
            renders = ctx.reward.render(x0, cams)
            total, V = 0.0, ctx.reward.views
            for _ in range(cfg.n_reward_avg):
                views = None
                if cfg.reward_views and cfg.reward_views < V:
                    views = torch.stack([torch.randperm(V, generator=g)[: cfg.reward_views] for g in gens])
                scores, _ = ctx.reward.score(renders, data.prompts, cams, views=views, image_noise=cfg.image_noise, generators=gens)
                total = total + scores
            total = total / cfg.n_reward_avg
            leaves = [x, *(ahead.leaves() if ahead else [])]
            # the kept passes stay for the policy terms' backward
            grads = torch.autograd.grad(total.sum(), leaves, retain_graph=ahead is not None, allow_unused=True)
        grad = grads[0] if grads[0] is not None else torch.zeros_like(x)
        if ahead is not None:
            grad[nt] = ahead.scatter_grads(list(grads[1:]), grad[nt])
        g = cfg.beta * grad.detach()
        if cfg.reward_grad_clip > 0:
            norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
            g = g * _bc((cfg.reward_grad_clip / norms).clamp(max=1.0), g)
        if cfg.adaptive_scaling != "none":
            w = weight.to(g)
            if cfg.alpha_prod_clip:
                w = w**1.5
                w = torch.where(w <= 0.05, torch.zeros_like(w), w)
            g = g * _bc(w if cfg.adaptive_scaling == "squared" else w.sqrt(), g)
        return g, {"lookahead_reward": total.mean().item(), "reward_grad_norm": g.flatten(1).norm(dim=1).mean().item()}

    def state(self):
        """The lagged round's samples, so that a resumed lagged run trains on them as an uninterrupted one."""
        d = self.previous
        if d is None:
            return {}, {}
        tensors = {f"traj.{k}": getattr(d.trajectory, k) for k in _TRAJ}
        tensors |= {"cond.embeds": d.cond.embeds, "cond.mask": d.cond.mask, "uncond.embeds": d.uncond.embeds,
                    "uncond.mask": d.uncond.mask, "rewards": d.rewards}
        return {"prompts": d.prompts, "indices": d.indices, "guidance": d.guidance,
                "traj": {"guidance": d.trajectory.guidance, "scheduler": d.trajectory.scheduler}}, tensors

    def load_state(self, meta, tensors):
        if not meta:
            return
        traj = Trajectory(**{k: tensors[f"traj.{k}"] for k in _TRAJ}, **meta["traj"])
        self.previous = Rollout(meta["prompts"], Condition(tensors["cond.embeds"], tensors["cond.mask"]),
                                Condition(tensors["uncond.embeds"], tensors["uncond.mask"]), traj, tensors["rewards"],
                                {}, meta["indices"], meta["guidance"])
