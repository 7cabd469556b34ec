"""The engine's fast paths compute what the plain ones do: the lean transformer forward (with LoRA folded
in), the native GELU, and training on the sampler's kept passes instead of running them again."""

import pytest
import torch
import torch.nn.functional as F

from engine.align import METHODS
from engine.core.sampling import sample
from engine.models import lora
from engine.models.gelu import gelu_tanh, native_gelu_available
from engine.models.splatter_ae import SplatterAutoencoder
from engine.models.tiny import TinySplatModel, tiny_transformer
from tests.test_align import trainer

pytestmark = pytest.mark.usefixtures("_one_thread")


@pytest.fixture(scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_layer_model():
    torch.manual_seed(0)
    return TinySplatModel(tiny_transformer(num_layers=2, heads=2, head_dim=16), SplatterAutoencoder(width=16)).eval()


def both_forwards(model, x, t, cond):
    model.lean_forward = False
    stock = model.eps(x, t, cond)
    model.lean_forward = True
    return stock, model.eps(x, t, cond)


def inputs(model, batch=3):
    cond = model.encode_prompts(["a red chair", "a blue car with yellow wheels", ""][:batch])
    return torch.randn(batch, *model.latent_shape), torch.tensor([999, 500, 3][:batch]), cond


def test_lean_forward_matches_the_stock_transformer_with_and_without_adapters():
    model = two_layer_model()
    x, t, cond = inputs(model)
    with torch.no_grad():
        stock, lean = both_forwards(model, x, t, cond)
        torch.testing.assert_close(lean, stock, rtol=1e-5, atol=1e-5)
        params = lora.add_lora(model, init="random")
        stock, lean = both_forwards(model, x, t, cond)
        torch.testing.assert_close(lean, stock, rtol=1e-5, atol=1e-5)
        with lora.adapters_disabled(model):
            base_stock, base_lean = both_forwards(model, x, t, cond)
        torch.testing.assert_close(base_lean, base_stock, rtol=1e-5, atol=1e-5)
        assert (base_lean - lean).abs().max() > 1e-3  # the adapter is really off, then on again
    # gradients reach the adapter (not the frozen base) and the input as through peft's layers
    grads = {}
    for lean_forward in (False, True):
        model.lean_forward = lean_forward
        xg = x.clone().requires_grad_()
        model.eps(xg, t, cond).square().mean().backward()
        grads[lean_forward] = [p.grad.clone() for p in params] + [xg.grad]
        for p in params:
            p.grad = None
    for stock_grad, lean_grad in zip(grads[False], grads[True]):
        torch.testing.assert_close(lean_grad, stock_grad, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_lean_forward_follows_every_change_of_the_adapter_weights():
    """The folded weights are cached between calls: an optimiser step, a copy into the adapter or another
    adapter must all be seen at once."""
    model = two_layer_model()
    x, t, cond = inputs(model, 2)
    params = lora.add_lora(model, init="random")
    opt = torch.optim.SGD(params, lr=0.5)
    with torch.no_grad():
        before = model.eps(x, t, cond)
    model.eps(x, t, cond).square().mean().backward()
    opt.step()
    with torch.no_grad():
        stock, lean = both_forwards(model, x, t, cond)
        torch.testing.assert_close(lean, stock, rtol=1e-5, atol=1e-5)
        assert (lean - before).abs().max() > 1e-4
        for p in params:
            p.copy_(torch.randn_like(p) * 0.1)
        stock, lean = both_forwards(model, x, t, cond)
        torch.testing.assert_close(lean, stock, rtol=1e-5, atol=1e-5)
        lora.add_lora(model, init="random", name="other")  # becomes the active adapter
        stock, lean = both_forwards(model, x, t, cond)
        torch.testing.assert_close(lean, stock, rtol=1e-5, atol=1e-5)


def test_lean_forward_follows_changes_of_the_base_weights_and_trains_them():
    """Stacked plain weights (q, k, v; k, v) are cached between calls too: a step on the base weights (base
    training, where autograd must reach them) and an in-place copy must both be seen."""
    model = two_layer_model()
    x, t, cond = inputs(model, 2)
    with torch.no_grad():
        before = model.eps(x, t, cond)  # fills the cache
    params = [p for p in model.transformer.parameters()]
    grads = {}
    for lean_forward in (False, True):
        model.lean_forward = lean_forward
        model.eps(x, t, cond).square().mean().backward()
        grads[lean_forward] = [p.grad.clone() for p in params]
        model.zero_grad(set_to_none=True)
    for stock_grad, lean_grad in zip(grads[False], grads[True]):
        torch.testing.assert_close(lean_grad, stock_grad, rtol=1e-4, atol=1e-6)
    attn = model.transformer.transformer_blocks[0].attn1
    with torch.no_grad():
        attn.to_k.weight.add_(0.05 * torch.randn_like(attn.to_k.weight))
        attn.to_v.bias.copy_(torch.randn_like(attn.to_v.bias))
        stock, lean = both_forwards(model, x, t, cond)
    torch.testing.assert_close(lean, stock, rtol=1e-5, atol=1e-5)
    assert (lean - before).abs().max() > 1e-4


def test_native_gelu_matches_pytorch_forward_and_backward():
    if not native_gelu_available():
        pytest.skip("no C compiler: gelu_tanh is PyTorch's own here")
    x = torch.cat([torch.linspace(-200, 200, 40001), torch.randn(10000) * 3, torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = F.gelu(a, approximate="tanh"), gelu_tanh(b)
    torch.testing.assert_close(yb, ya, rtol=2e-6, atol=3e-6)
    g = torch.randn_like(x)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=3e-6)
    assert gelu_tanh(torch.tensor([float("nan")])).isnan().all()
    # with a bias per column, added in the kernel: the same values and gradients as adding it first
    x2, bias = torch.randn(64, 96) * 3, torch.randn(96)
    a, ab, b, bb = x2.clone().requires_grad_(), bias.clone().requires_grad_(), x2.clone().requires_grad_(), bias.clone().requires_grad_()
    ya, yb = F.gelu(a + ab, approximate="tanh"), gelu_tanh(b, bb)
    torch.testing.assert_close(yb, ya, rtol=2e-6, atol=3e-6)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=3e-6)
    torch.testing.assert_close(bb.grad, ab.grad, rtol=1e-5, atol=3e-5)
    big = torch.randn(300, 700)  # split over threads
    torch.set_num_threads(2)
    try:
        torch.testing.assert_close(gelu_tanh(big), F.gelu(big, approximate="tanh"), rtol=2e-6, atol=3e-6)
    finally:
        torch.set_num_threads(1)


def test_sampler_keeps_the_asked_calls_and_samples_the_same_chain():
    model = two_layer_model()
    lora.add_lora(model, init="random")
    cond, null = model.encode_prompts(["a red chair", "a cup", "a tree"]), model.encode_prompts([""])
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    plain = sample(model, cond, null, steps=4, generator=gens(), record=True)
    keep = torch.zeros(3, 4, dtype=torch.bool)
    keep[0, 1] = keep[2, 1] = keep[1, 3] = True
    wants = torch.zeros_like(keep)
    wants[2, 1] = True
    kept = sample(model, cond, null, steps=4, generator=gens(), record=True, keep=keep, input_grad=wants)
    torch.testing.assert_close(kept.latents, plain.latents, rtol=1e-4, atol=1e-5)
    assert sorted(kept.graphs) == [1, 3] and not kept.latents.requires_grad
    by_rows = {tuple(g.rows.tolist()): g for g in kept.graphs[1]}
    assert set(by_rows) == {(0,), (2,)} and by_rows[(2,)].latents.requires_grad and not by_rows[(0,)].latents.requires_grad
    g = by_rows[(2,)]
    assert g.eps.requires_grad and torch.equal(g.eps.detach(), kept.trajectory.model_outputs[2:3, 1])
    chained = sample(model, cond, null, steps=4, generator=gens(), grad_from=2)
    assert chained.latents.requires_grad and not chained.graphs
    torch.testing.assert_close(chained.latents.detach(), plain.latents, rtol=1e-4, atol=1e-5)


def _gradients(tmp_path, method, reuse):
    t = trainer(tmp_path, method, f"reuse_calls={reuse}", "batch_size=4", name=f"{method}-{reuse}")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in t.params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    roll = t.rollout(1, keep_graphs=True)
    kept = bool(roll.graphs) or roll.chained is not None
    losses, infos = zip(*t.method.losses(roll, 1))
    torch.stack(list(losses)).sum().backward()
    return torch.cat([p.grad.flatten() for p in t.params.values()]), infos, kept


@pytest.mark.parametrize("method", list(METHODS))
def test_training_on_the_kept_sampler_passes_gives_the_recomputed_gradients(tmp_path, method):
    recomputed, infos0, kept0 = _gradients(tmp_path, method, 0)
    reused, infos1, kept1 = _gradients(tmp_path, method, 32)
    # methods trained on the final samples with fresh noise (NFT, DPO, DGPO) have no sampler pass to keep
    assert not kept0 and kept1 == ("final" not in METHODS[method].needs)
    # kept calls run as a batch of their own, so the chain differs in summation order; DRaFT and AlignProp carry that
    # through two sampler steps and the renders into the reward gradient: measured 1.0e-4 (before the compositing
    # kernel's inline exp) and 1.07e-4 relative (after), every other method <= 3e-7
    assert (reused - recomputed).norm() <= 3e-4 * recomputed.norm() and recomputed.norm() > 0
    for a, b in zip(infos0, infos1):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key


def test_a_small_reuse_budget_keeps_only_that_many_calls(tmp_path):
    t = trainer(tmp_path, "ddpo", "reuse_calls=3", "batch_size=4")
    roll = t.rollout(0, keep_graphs=True)
    assert sum(len(g.rows) for calls in roll.graphs.values() for g in calls) == 3


def test_kept_calls_change_a_training_rollout_only_by_float_rounding(tmp_path):
    """Kept calls run as a batch of their own: trajectories differ from the plain rollout (the same for
    every method) only in summation order."""
    plain = trainer(tmp_path, "ddpo", "reuse_calls=0", "batch_size=4", name="plain").rollout(3, keep_graphs=True)
    for method in ("nabla-r2d3", "refl", "ddpo"):  # stratified, one late step, every step
        kept = trainer(tmp_path, method, "batch_size=4", name=method).rollout(3, keep_graphs=True)
        assert kept.prompts == plain.prompts and kept.graphs
        torch.testing.assert_close(kept.trajectory.next_latents, plain.trajectory.next_latents, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(kept.rewards, plain.rewards, rtol=1e-4, atol=1e-5)
