"""Diffusion-DPO (engine/align/methods/dpo.py): exact resume, log 2 at the first step, the preference's sign, ties."""

import csv
import math

import torch

from engine.align import Trainer
from engine.align.methods.dpo import preference_pairs
from tests.test_align import Brightness, _one_thread, config, trainer, weights  # noqa: F401  (fixtures)


def _grads(t, roll, step=0):
    for p in t.params.values():
        p.grad = None
    losses, infos = zip(*t.method.losses(roll, step))
    torch.stack(list(losses)).sum().backward()
    return torch.cat([p.grad.flatten() for p in t.params.values()]), losses, infos


def test_loss_at_the_first_step_is_log_2_and_reversed_preferences_flip_the_gradient(tmp_path):
    t = trainer(tmp_path, "dpo", "batch_size=4", "dpo.timesteps=3")  # 2 pairs x 3 noise levels
    roll = t.rollout(0)
    g, losses, infos = _grads(t, roll)
    # policy = reference: Δ = 0 for every (pair, step) term, so each term's loss is log 2 and their mean too
    assert sum(loss.item() for loss in losses) == torch.tensor(math.log(2)).item()
    assert all(i["dpo_loss"] == torch.tensor(math.log(2)).item() and i["dpo_logit"] == 0 for i in infos)
    assert infos[0]["pairs"] == 2 and g.norm() > 0
    # the gradient there is β/4 · ∇(e_w − e_l): swapping chosen and rejected negates it, doubling β doubles it
    roll.rewards = -roll.rewards
    flipped, _, _ = _grads(t, roll)
    # g is the small difference of two large gradients, so a few of its elements carry their rounding (up to 2e-3
    # relative on an AMD EPYC, where the kernels sum in another order): compare the vectors as a whole
    assert (flipped + g).norm() <= 1e-4 * g.norm()
    roll.rewards = -roll.rewards
    t.method.cfg.beta *= 2
    doubled, _, _ = _grads(t, roll)
    torch.testing.assert_close(doubled, 2 * g, rtol=1e-4, atol=1e-6 * g.abs().max().item())


def test_pairs_are_best_and_worst_of_each_group_and_ties_are_skipped(tmp_path):
    rewards = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.4, 0.4, 0.4, 0.4, 0.3, 0.3 + 1e-7, 0.3, 0.3])
    chosen, rejected, gaps = preference_pairs(rewards, 4, 1e-6)
    assert chosen.tolist() == [1] and rejected.tolist() == [0] and abs(gaps.item() - 0.4) < 1e-6
    chosen, rejected, _ = preference_pairs(rewards, 4, 0.0)  # a flat group is never a pair
    assert chosen.tolist() == [1, 9] and rejected.tolist() == [0, 8]
    t = trainer(tmp_path, "dpo", "batch_size=4")
    roll = t.rollout(0)
    roll.rewards = torch.zeros(4)  # flat groups: nothing to learn
    assert list(t.method.losses(roll, 0)) == []
    roll.rewards = torch.tensor([0.0, 0.0, 1.0, 0.0])  # one pair of two: the mean is over the pairs used
    losses, infos = zip(*t.method.losses(roll, 0))
    assert infos[0]["pairs"] == 1 and sum(loss.item() for loss in losses) == torch.tensor(math.log(2)).item()


def test_run_folder_resume_equals_an_uninterrupted_run(tmp_path, weights):  # noqa: F811
    knobs = ["checkpoint_every=1", "dpo.timesteps=2"]
    straight = Trainer(config("dpo", *knobs, steps=4, weights=weights), tmp_path / "straight", reward=Brightness())
    list(straight.run())
    part = Trainer(config("dpo", *knobs, steps=4, weights=weights), tmp_path / "part", reward=Brightness())
    for m in part.run():
        if m["step"] == 2:
            part.request_stop()
    assert part.step == 2
    again = Trainer(config("dpo", *knobs, steps=4, weights=weights), tmp_path / "part", resume=True, reward=Brightness())
    assert again.step == 2
    list(again.run())
    read = lambda d: list(csv.DictReader((tmp_path / d / "metrics.csv").open()))  # noqa: E731
    a, b = read("straight"), read("part")
    assert [r["step"] for r in b] == ["1", "2", "3", "4"] and float(a[-1]["dpo_logit"]) != 0
    skip = {"wall_seconds", "sample_seconds", "update_seconds"}
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in skip} == {k: v for k, v in rb.items() if k not in skip}
    for name, p in straight.params.items():
        assert torch.equal(p, again.params[name])
