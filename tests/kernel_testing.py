"""Helpers shared by the kernel tests: test inputs in several memory layouts, float64 leaves, and
the relative-error check every kernel is held to."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make(shape, dtype, layout="contiguous", scale=1.0):
    """Fresh normal values (never zeros) of `shape` and `dtype`, laid out as `layout` says."""
    if layout == "contiguous":
        return (torch.randn(shape, device=DEVICE) * scale).to(dtype)
    if layout == "transposed":  # unit stride along the first dimension, not the last
        t = (torch.randn(shape[::-1], device=DEVICE) * scale).to(dtype)
        t = t.permute(*reversed(range(len(shape))))
    elif layout == "sliced":  # rows padded and offset inside a wider buffer
        t = (torch.randn(*shape[:-1], shape[-1] + 7, device=DEVICE) * scale).to(dtype)
        t = t[..., 3 : 3 + shape[-1]]
    else:
        raise ValueError(layout)
    assert t.shape == shape and not t.is_contiguous()
    return t


def float64_leaf(t):
    return t.detach().double().requires_grad_()


def assert_rel_close(out, ref, tol, what):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite elements (unwritten outputs stay NaN)"
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
