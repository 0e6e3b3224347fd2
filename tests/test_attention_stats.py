"""Statistics from the attention forward kernel (lse, entropy, target mass) and the target helpers."""

import math

import pytest
import torch
from test_flash_attention import DEVICE, TOL, make_qkv, reference_fwd_bwd

from grokcopy.evals.targets import induction_targets, previous_token_targets, repeat_targets
from grokcopy.kernels import (
    attention_stats_reference,
    flash_attention,
    flash_attention_forward,
    flash_attention_with_stats,
)

# Statistics are fp32 whatever the input dtype; the reference gets the same rounded inputs in
# float64, so only fp32 arithmetic separates them (~1e-6 seen).
STAT_TOL = {"atol": 2e-5, "rtol": 2e-5}


def random_targets(B, T, S, K):
    """Mix of valid keys (past and future), -1 and out-of-range indices (both mean: no target)."""
    targets = torch.randint(0, S, (B, T, K), device=DEVICE)
    targets[torch.rand(B, T, K, device=DEVICE) < 0.2] = -1
    targets[torch.rand(B, T, K, device=DEVICE) < 0.05] = S + 3
    return targets


def assert_stats_close(stats, ref):
    # -inf lse (rows that see no key) must match exactly; everything else to fp32 accuracy.
    assert torch.equal(stats.lse.isinf(), ref.lse.isinf())
    finite = ref.lse.isfinite()
    torch.testing.assert_close(stats.lse[finite].double(), ref.lse[finite], **STAT_TOL)
    torch.testing.assert_close(stats.entropy.double(), ref.entropy, **STAT_TOL)
    torch.testing.assert_close(stats.target_mass.double(), ref.target_mass, **STAT_TOL)


STAT_CASES = [
    # B, Hq, Hkv, T, S, D, causal, dtype, K
    (2, 4, 2, 129, 129, 64, True, torch.float32, 1),
    (1, 2, 2, 17, 129, 32, True, torch.bfloat16, 3),
    (1, 2, 1, 129, 17, 32, True, torch.float32, 2),
    (1, 2, 2, 40, 70, 128, False, torch.float16, 1),
    (1, 2, 2, 300, 300, 32, True, torch.float32, 0),
]


@pytest.mark.parametrize("B,Hq,Hkv,T,S,D,causal,dtype,K", STAT_CASES)
def test_stats_match_reference(B, Hq, Hkv, T, S, D, causal, dtype, K):
    q, k, v = make_qkv(B, Hq, Hkv, T, S, D, dtype)
    targets = random_targets(B, T, S, K) if K else None
    out, stats = flash_attention_with_stats(q, k, v, targets=targets, causal=causal)
    ref_out, ref_stats = attention_stats_reference(*(t.detach().double() for t in (q, k, v)),
                                                   targets=targets, causal=causal)
    assert stats.lse.shape == stats.entropy.shape == (B, Hq, T)
    assert stats.target_mass.shape == (B, Hq, T, K)
    assert all(t.dtype == torch.float32 and not t.requires_grad for t in stats)
    torch.testing.assert_close(out.detach().double(), ref_out, atol=TOL[dtype]["out"][0],
                               rtol=TOL[dtype]["out"][1])
    assert_stats_close(stats, ref_stats)
    if K:
        # The random targets include masked future keys: the test only means something if some
        # of them were hit and some were not.
        assert (ref_stats.target_mass > 0).any() and (ref_stats.target_mass == 0).any()


def test_stats_output_matches_plain_and_is_differentiable():
    B, Hq, Hkv, T, D = 1, 4, 2, 129, 64
    q, k, v = make_qkv(B, Hq, Hkv, T, T, D, torch.float16, layout="token_major")
    targets = previous_token_targets(B, T, device=DEVICE)
    out, stats = flash_attention_with_stats(q, k, v, targets=targets)
    plain = flash_attention(q, k, v)
    torch.testing.assert_close(out, plain, atol=0, rtol=0)
    dout = torch.randn(B, Hq, T, D, device=DEVICE).to(torch.float16)
    out.backward(dout)
    _, ref_dq, ref_dk, ref_dv = reference_fwd_bwd(q, k, v, dout, causal=True)
    for grad, ref in [(q.grad, ref_dq), (k.grad, ref_dk), (v.grad, ref_dv)]:
        torch.testing.assert_close(grad.double(), ref, atol=TOL[torch.float16]["grad"][0],
                                   rtol=TOL[torch.float16]["grad"][1])


def test_stats_buffers_are_fully_written():
    B, Hq, Hkv, T, S, D, K = 2, 2, 1, 129, 17, 32, 3
    q, k, v = (t.detach() for t in make_qkv(B, Hq, Hkv, T, S, D, torch.float32))
    targets = random_targets(B, T, S, K)
    nan = float("nan")
    _, lse, entropy, target_mass = flash_attention_forward(
        q, k, v, targets=targets, lse=torch.full((B, Hq, T), nan, device=DEVICE),
        entropy=torch.full((B, Hq, T), nan, device=DEVICE), target_mass=torch.full((B, Hq, T, K), nan, device=DEVICE))
    for name, t in [("lse", lse), ("entropy", entropy), ("target_mass", target_mass)]:
        assert not t.isnan().any(), f"{name} has unwritten (NaN) elements"
    _, ref = attention_stats_reference(q.double(), k.double(), v.double(), targets=targets)
    assert_stats_close(type(ref)(lse, entropy, target_mass), ref)


def test_perfect_copy_head_and_uniform_head_have_known_stats():
    """Hand-built q/k with known answers, no reference involved.

    Keys are one-hot position codes (k_j = e_j). Head 0 is a perfect induction head on a sequence
    repeated with period L: for t >= L its query is 40 * e_(t-L+1), so it puts probability
    1 / (1 + t e^-40) ~ 1 on key t - L + 1. Head 1's query is 0: uniform over the t + 1 visible keys,
    so mass 1 / (t + 1) on any one key and entropy ln(t + 1).
    """
    L, D = 16, 32
    T = 2 * L
    k = torch.eye(T, D, device=DEVICE)[None, None].expand(1, 2, T, D).contiguous()
    q = torch.zeros(1, 2, T, D, device=DEVICE)
    t = torch.arange(L, T, device=DEVICE)
    q[0, 0, t, t - L + 1] = 40.0
    v = torch.randn(1, 2, T, D, device=DEVICE)
    tokens = torch.randperm(1000, device=DEVICE)[:L].repeat(2)[None]
    targets = induction_targets(tokens)
    assert torch.equal(targets, repeat_targets(1, T, L, device=DEVICE))

    _, stats = flash_attention_with_stats(q, k, v, targets=targets, causal=True, softmax_scale=1.0)
    mass, entropy = stats.target_mass[0, :, :, 0], stats.entropy[0]
    # Head 0: induction score ~ 1 on the second half, 0 where there is no target.
    assert mass[0, L:].min() > 0.999
    assert mass[0, L:].mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(mass[0, :L], torch.zeros(L, device=DEVICE))
    assert entropy[0, L:].max() < 1e-4
    # Head 1: uniform attention.
    positions = torch.arange(T, dtype=torch.float32, device=DEVICE)
    torch.testing.assert_close(entropy[1], torch.log(positions + 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mass[1, L:], 1.0 / (positions[L:] + 1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stats.lse[0, 1], torch.log(positions + 1), atol=1e-5, rtol=1e-5)


def test_entropy_is_accurate_for_peaked_attention_with_large_scores():
    # Scores ~ 1e3 with a gap of 16 between the top key and the 32 others: entropy ~ 6e-5. Computing
    # it as lse - E[s] would cancel two fp32 numbers ~ 1e3 (ulp 6e-5): an error as large as the answer.
    # The kernel's sums relative to the running max keep it to fp32 relative accuracy.
    T, D = 33, 32
    k = torch.zeros(1, 1, T, D, device=DEVICE)
    k[..., 0] = 1000.0
    k[0, 0, 5, 0] = 1016.0
    q = torch.zeros(1, 1, T, D, device=DEVICE)
    q[..., 0] = 1.0
    v = torch.randn(1, 1, T, D, device=DEVICE)
    _, stats = flash_attention_with_stats(q, k, v, causal=False, softmax_scale=1.0)
    _, ref = attention_stats_reference(q.double(), k.double(), v.double(), causal=False, softmax_scale=1.0)
    assert ref.entropy.max() < 1e-4
    torch.testing.assert_close(stats.entropy.double(), ref.entropy, atol=1e-7, rtol=1e-3)


# ---- target helpers -------------------------------------------------------------------------------


def induction_targets_loop(tokens):
    """Obvious O(T^2) version of induction_targets, for comparison."""
    B, T = tokens.shape
    out = torch.full((B, T), -1, dtype=torch.int64)
    for b in range(B):
        for t in range(T):
            for j in range(t - 1, -1, -1):
                if tokens[b, j] == tokens[b, t]:
                    out[b, t] = j + 1
                    break
    return out[:, :, None]


def test_induction_targets_known_answers():
    tokens = torch.tensor([[5, 7, 5, 7, 9, 5], [3, 3, 3, 1, 2, 1]])
    expected = torch.tensor([[-1, -1, 1, 2, -1, 3], [-1, 1, 2, -1, -1, 4]])[:, :, None]
    assert torch.equal(induction_targets(tokens), expected)


def test_induction_targets_match_loop_on_random_tokens_with_repeats():
    tokens = torch.randint(0, 5, (3, 64), dtype=torch.int32)  # small vocabulary: many repeats
    targets = induction_targets(tokens)
    assert targets.dtype == torch.int64 and targets.shape == (3, 64, 1)
    assert torch.equal(targets, induction_targets_loop(tokens))


def test_induction_targets_on_repeated_random_sequence():
    L = 512
    first = torch.randperm(50_000)[:L]
    tokens = torch.stack([first.repeat(2), torch.randperm(50_000)[:L].repeat(2)])
    targets = induction_targets(tokens)[..., 0]
    t = torch.arange(L, 2 * L)
    assert torch.equal(targets[:, L:], (t - L + 1).expand(2, L))
    assert torch.equal(targets[:, :L], torch.full((2, L), -1))


def test_previous_token_and_repeat_targets():
    assert previous_token_targets(2, 4).tolist() == [[[-1], [0], [1], [2]]] * 2
    assert repeat_targets(1, 7, 3).tolist() == [[[-1], [-1], [-1], [1], [2], [3], [4]]]
    with pytest.raises(ValueError, match="period must be >= 1"):
        repeat_targets(1, 7, 0)
    with pytest.raises(ValueError, match="integer"):
        induction_targets(torch.rand(2, 5))


@pytest.mark.parametrize(
    "targets,exc,match",
    [
        (torch.zeros(1, 8, 1, device=DEVICE), TypeError, "int32/int64"),
        (torch.zeros(1, 7, 1, dtype=torch.int64, device=DEVICE), ValueError, r"targets must be \[B, T, K\]"),
        (torch.zeros(1, 8, dtype=torch.int64, device=DEVICE), ValueError, r"targets must be \[B, T, K\]"),
        (torch.zeros(1, 8, 1, dtype=torch.int64, device="meta"), ValueError, "targets are on meta"),
    ],
    ids=["float", "wrong-T", "2d", "device"],
)
def test_bad_targets_raise_clear_errors(targets, exc, match):
    q, k, v = (torch.randn(1, 2, 8, 32, device=DEVICE) for _ in range(3))
    with pytest.raises(exc, match=match):
        flash_attention_with_stats(q, k, v, targets=targets)


def test_no_targets_gives_empty_target_mass():
    q, k, v = (torch.randn(1, 2, 8, 32, device=DEVICE) for _ in range(3))
    _, stats = flash_attention_with_stats(q, k, v)
    assert stats.target_mass.shape == (1, 2, 8, 0)
    assert stats.entropy.max() <= math.log(8) + 1e-5
