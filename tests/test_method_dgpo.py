"""DGPO (engine/align/methods/dgpo.py): its objective at step 0, its symmetry, its gradient, exact resume."""

import csv
import math

import pytest
import torch

from engine.align import Trainer
from engine.align.methods.dgpo import group_weights
from tests.test_align import Brightness, _one_thread, config, tiny_model  # noqa: F401  (_one_thread: autouse fixture)

DGPO = ["dgpo.group_size=2", "dgpo.min_step=2", "dgpo.timesteps=2"]


def dgpo_trainer(tmp_path, *extra, steps=2, name="run", **kw):
    cfg = config("dgpo", *DGPO, *extra, steps=steps, weights=kw.pop("weights", None))
    return Trainer(cfg, tmp_path / name, reward=Brightness(), **({"model": tiny_model()} if cfg.weights is None else {}), **kw)


def grads(t, roll, step=0):
    """The LoRA gradient of the method's losses for ``roll`` (as the trainer accumulates them), and the losses."""
    for p in t.params.values():
        p.grad = None
    values = []
    for loss, info in t.method.losses(roll, step):
        loss.backward()
        values.append((loss.item(), info))
    return torch.cat([p.grad.flatten() for p in t.params.values()]), values


def test_group_weights_are_normalised_per_side_and_ties_are_left_out():
    rewards = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.9, 0.1, 0.1, 0.1], dtype=torch.float64)
    w, used = group_weights(rewards, 4, adv_clip=5.0)
    w = w.view(3, 4)
    assert used.tolist() == [True, False, True]
    for g in (0, 2):
        assert w[g].clamp_min(0).sum().item() == pytest.approx(1) and w[g].clamp_max(0).sum().item() == pytest.approx(-1)
    assert (w[1] == 0).all()
    assert w[0].argmax() == 1 and w[0].argmin() == 0  # the best sample weighs most among positives


def test_loss_at_step_0_is_log_2_per_group_and_mirrored_rewards_flip_the_gradient(tmp_path):
    t = dgpo_trainer(tmp_path, "batch_size=4")  # 2 groups of 2
    roll = t.rollout(0)
    g, values = grads(t, roll)
    assert len(values) >= 1 and all(info["dgpo_used"] == 1.0 for _, info in values)
    for _, info in values:  # policy = base (LoRA B = 0): Δ = 0 exactly, −log σ(0) = log 2 for every group and level
        assert info["dgpo_logit"] == 0.0 and info["dgpo_loss"] == pytest.approx(math.log(2), abs=1e-12)
    assert sum(v for v, _ in values) == pytest.approx(math.log(2), rel=1e-6)  # the chunks add up to the mean
    assert g.norm() > 0
    roll.rewards = -roll.rewards  # each group's better sample becomes its worse one
    g_flip, _ = grads(t, roll)
    torch.testing.assert_close(g_flip, -g, rtol=1e-5, atol=1e-10)
    roll.rewards = torch.zeros_like(roll.rewards)  # every group ties: no preference, no loss
    assert list(t.method.losses(roll, 0)) == []


def test_gradient_is_that_of_the_reported_loss_away_from_the_base(tmp_path):
    # the loss differentiates a surrogate (sg(σ(−βΔ)) w e_θ, the form that works across processes) but reports
    # −log σ(βΔ): a central difference of the reported value along the gradient must match the gradient
    t = dgpo_trainer(tmp_path, "dgpo.beta=300")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in t.params.values():
            p.add_(0.02 * torch.randn_like(p))
    roll = t.rollout(0)
    g, values = grads(t, roll)
    assert abs(values[0][1]["dgpo_logit"]) > 1e-3  # away from the base: the sigmoid's weight is not 1/2
    direction = g / g.norm()

    def value_at(h):
        with torch.no_grad():
            offset = 0
            for p in t.params.values():
                p.add_(h * direction[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
            out = sum(loss.item() for loss, _ in t.method.losses(roll, 0))
            offset = 0
            for p in t.params.values():
                p.sub_(h * direction[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
        return out

    h = 3e-3  # (with the sigmoid's weight taken at +βΔ instead, the two differ by 16%)
    numeric = (value_at(h) - value_at(-h)) / (2 * h)
    assert numeric == pytest.approx(g.norm().item(), rel=0.02)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    weights = tmp_path / "tiny"
    tiny_model().save_pretrained(weights)
    knobs = ["checkpoint_every=1"]
    straight = dgpo_trainer(tmp_path, *knobs, steps=3, name="straight", weights=str(weights))
    list(straight.run())
    part = dgpo_trainer(tmp_path, *knobs, steps=3, name="part", weights=str(weights))
    for m in part.run():
        if m["step"] == 1:
            part.request_stop()
    assert part.step == 1
    again = dgpo_trainer(tmp_path, *knobs, steps=3, name="part", weights=str(weights), resume=True)
    assert again.step == 1
    list(again.run())
    read = lambda d: list(csv.DictReader((tmp_path / d / "metrics.csv").open()))  # noqa: E731
    a, b = read("straight"), read("part")
    assert [r["step"] for r in b] == ["1", "2", "3"]
    skip = {"wall_seconds", "sample_seconds", "update_seconds"}
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in skip} == {k: v for k, v in rb.items() if k not in skip}
    assert all(float(r["dgpo_used"]) == 1.0 for r in a)
    for name, p in straight.params.items():
        assert torch.equal(p, again.params[name])
