"""Fused linear + cross-entropy (kernels/linear_cross_entropy.py) against F.cross_entropy on the
materialised fp32 logits: the loss within 1e-4 relative, the gradients within each dtype's tolerance,
for vocabularies that are not a multiple of the block, token counts that are not a multiple of the
chunk, ignored targets, and every target ignored."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DEVICE, assert_rel_close, float64_leaf

from grokcopy import kernels
from grokcopy.kernels.reference import linear_cross_entropy_reference

# the module, not the function of the same name that grokcopy.kernels exports
lce_module = importlib.import_module("grokcopy.kernels.linear_cross_entropy")

GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
D = 24


def problem(n, vocab, dtype, ignored_every=0):
    x = torch.randn(n, D, device=DEVICE).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, D, device=DEVICE) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device=DEVICE)
    if ignored_every:
        targets[::ignored_every] = -100
    return x, weight, targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("n", "vocab", "chunk_rows", "max_block_v"), [
    (37, 1000, 16, 4096),  # 3 chunks, the last of 5 rows; one block of 1024 for 1000 columns
    (20, 257, None, 128),  # the default chunk (all rows); 3 blocks per row, the last with 1 column
], ids=["V1000-N37-chunk16", "V257-N20-block128"])
def test_matches_cross_entropy_on_fp32_logits(dtype, n, vocab, chunk_rows, max_block_v, monkeypatch):
    monkeypatch.setattr(lce_module, "MAX_BLOCK_V", max_block_v)
    x, weight, targets = problem(n, vocab, dtype, ignored_every=4)
    loss = kernels.linear_cross_entropy(x, weight, targets, chunk_rows=chunk_rows)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.shape == ()
    # the torch path: logits in the inputs' dtype (as the LM head's matmul makes them), CE on them in fp32
    ref = linear_cross_entropy_reference(x.detach(), weight.detach(), targets)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-4, atol=0)
    # gradients against float64 on the same values
    x64, w64 = float64_leaf(x), float64_leaf(weight)
    linear_cross_entropy_reference(x64, w64, targets).backward()
    assert x.grad.dtype == dtype and weight.grad.dtype == dtype
    assert_rel_close(x.grad, x64.grad, GRAD_TOL[dtype], "dx")
    assert_rel_close(weight.grad, w64.grad, GRAD_TOL[dtype], "dweight")


def test_every_target_ignored_gives_nan_and_zero_gradients_like_torch():
    x, weight, targets = problem(6, 50, torch.float32)
    targets.fill_(-100)
    loss = kernels.linear_cross_entropy(x, weight, targets)
    loss.backward()
    x_ref, w_ref = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = F.cross_entropy(x_ref @ w_ref.T, targets)
    ref.backward()
    assert torch.isnan(loss) and torch.isnan(ref)
    assert torch.equal(x.grad, x_ref.grad) and torch.equal(weight.grad, w_ref.grad)
    assert not x.grad.any() and not weight.grad.any()


def test_custom_ignore_index_and_scaled_backward():
    x, weight, _ = problem(11, 70, torch.float32)
    targets = torch.randint(0, 70, (22,), device=DEVICE)[::2]  # a strided view
    targets[3] = 5  # a real class that is also the ignore index below
    loss = kernels.linear_cross_entropy(x, weight, targets, ignore_index=5, chunk_rows=4)
    (loss * 0.25).backward()  # the backward scales the stored gradients by the incoming one
    x64, w64 = float64_leaf(x), float64_leaf(weight)
    ref = linear_cross_entropy_reference(x64, w64, targets, ignore_index=5)
    (ref * 0.25).backward()
    torch.testing.assert_close(loss.detach().double(), ref.detach(), rtol=1e-5, atol=0)
    assert_rel_close(x.grad, x64.grad, 1e-5, "dx")
    assert_rel_close(weight.grad, w64.grad, 1e-5, "dweight")


def test_autocast_casts_like_the_lm_head():
    """fp32 hidden states and an fp32 weight under bf16 autocast: bf16 logits as F.linear would make
    them, fp32 gradients for the fp32 leaves."""
    device_type = torch.device(DEVICE).type
    x, weight, targets = problem(17, 300, torch.float32, ignored_every=5)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        loss = kernels.linear_cross_entropy(x, weight, targets, chunk_rows=8)
        ref = linear_cross_entropy_reference(x.detach(), weight.detach(), targets)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-4, atol=0)
    x64, w64 = float64_leaf(x.detach().bfloat16()), float64_leaf(weight.detach().bfloat16())
    linear_cross_entropy_reference(x64, w64, targets).backward()
    assert x.grad.dtype == weight.grad.dtype == torch.float32
    assert_rel_close(x.grad, x64.grad, 1e-2, "dx")
    assert_rel_close(weight.grad, w64.grad, 1e-2, "dweight")


def test_no_grad_computes_the_same_loss_without_gradients():
    x, weight, targets = problem(9, 40, torch.float32, ignored_every=3)
    with_grads = kernels.linear_cross_entropy(x, weight, targets)
    with torch.no_grad():
        without = kernels.linear_cross_entropy(x, weight, targets)
    assert not without.requires_grad
    assert torch.equal(without, with_grads.detach())


def test_fullgraph_compile_matches_eager():
    """The custom op traces whole (no graph break) and differentiates through its registered backward."""
    torch._dynamo.reset()
    x, weight, targets = problem(10, 33, torch.float32, ignored_every=3)
    x2, w2 = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    eager = kernels.linear_cross_entropy(x, weight, targets, chunk_rows=4)
    compiled_fn = torch.compile(kernels.linear_cross_entropy, fullgraph=True, backend="aot_eager")
    compiled = compiled_fn(x2, w2, targets, chunk_rows=4)
    eager.backward()
    compiled.backward()
    assert torch.equal(compiled, eager)
    assert torch.equal(x2.grad, x.grad) and torch.equal(w2.grad, weight.grad)


def test_rejects_bad_shapes():
    x, weight, targets = problem(4, 10, torch.float32)
    with pytest.raises(ValueError, match="targets must be int64"):
        kernels.linear_cross_entropy(x, weight, targets.int())
    with pytest.raises(ValueError, match=r"x \[N, D\] and weight \[V, D\]"):
        kernels.linear_cross_entropy(x, weight[:, :5], targets)
