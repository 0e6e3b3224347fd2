"""The production path: the Llama under bf16 autocast, for every backend combination, against fp32 torch.

This is what a GPU run computes (CUDA defaults: bf16 autocast, Triton norm and MLP); on the CPU the
Triton kernels run through the interpreter, on a GPU machine they compile natively. The residual
stream stays fp32 while each branch returns bf16 (model/llama.py), so the fused norm meets mixed
dtypes here and nowhere in the fp32 tests.
"""

import itertools

import pytest
import torch

from grokcopy.model import Llama, LlamaConfig

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# layer 1 without RoPE (tiny's last layer is a NoPE layer): every combination runs both kinds
SHAPE = dict(vocab_size=97, n_layers=2, n_heads=4, n_kv_heads=2, d_model=64, d_mlp=128, context=64, nope_every=2)
COMBOS = list(itertools.product(["torch", "sdpa", "triton"], ["torch", "triton"], ["torch", "triton"]))
# bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per operation); through two layers
# the normwise error of the loss is ~1e-5 and of each gradient up to 8e-3 (seen under the interpreter,
# every combination). Bounds at ~4x what was seen: a wrong dtype path (a branch summed in bf16, a
# weight rounded to bf16, a missing cast) moves the gradients by far more.
LOSS_RTOL = 2e-3
GRAD_RTOL = 3e-2


@pytest.fixture(scope="module")
def fp32_reference():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**SHAPE, attention="torch", norm="torch", mlp="torch")).to(DEVICE)
    idx = torch.randint(0, SHAPE["vocab_size"], (2, 33), device=DEVICE)
    loss = model.loss(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return model.state_dict(), idx, loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention,norm,mlp", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_bf16_autocast_matches_fp32(attention, norm, mlp, fp32_reference):
    state, idx, ref_loss, ref_grads = fp32_reference
    model = Llama(LlamaConfig(**SHAPE, attention=attention, norm=norm, mlp=mlp)).to(DEVICE)
    model.load_state_dict(state)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        logits = model(idx[:, :-1])
    assert logits.dtype == torch.bfloat16
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    assert abs(loss.item() - ref_loss) <= LOSS_RTOL * ref_loss, (loss.item(), ref_loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        err = ((p.grad - ref_grads[name]).norm() / ref_grads[name].norm()).item()
        assert err <= GRAD_RTOL, f"{name}: gradient relative error {err:.2e} > {GRAD_RTOL}"


def test_residual_stream_stays_fp32_under_autocast():
    """Each block's output (the residual stream) is fp32 on every norm backend; the norm output is bf16."""
    for norm in ("torch", "triton"):
        model = Llama(LlamaConfig(**SHAPE, norm=norm, mlp="torch", attention="sdpa")).to(DEVICE)
        seen: list[torch.dtype] = []
        model.blocks[0].register_forward_hook(lambda mod, args, out, seen=seen: seen.append(out[0].dtype))
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            model(torch.randint(0, 97, (1, 8), device=DEVICE))
        assert seen == [torch.float32], (norm, seen)


def test_stats_forward_keeps_no_score_matrix_for_backward():
    """--train-stats-every on sdpa: the statistics come from a no-grad chunked pass, so autograd saves no
    [B, H, T, T] tensor (the fp32 torch path used to keep them for backward: 1.6 GB at paper-162m)."""
    from grokcopy.evals.scores import text_targets

    model = Llama(LlamaConfig(**SHAPE, attention="sdpa", norm="torch", mlp="torch")).to(DEVICE)
    idx = torch.randint(0, 97, (2, 64), device=DEVICE)
    T = idx.shape[1]
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, stats = model(idx, attention_targets=text_targets(idx))
    assert len(stats) == SHAPE["n_layers"] and stats[0].target_mass.shape[:3] == (2, 4, T)
    assert not [s for s in saved if len(s) == 4 and s[-2:] == (T, T)], saved
