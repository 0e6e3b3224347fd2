"""Small helpers shared by every kernel file: interpreter detection, dtype rules, input checks."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch._library.triton import is_wrap_triton_enabled
from torch._subclasses.fake_tensor import is_fake

SUPPORTED_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotuned(configs: list[triton.Config]) -> list[triton.Config]:
    """A kernel's autotune list, or only its first config under GROKCOPY_AUTOTUNE=0: a GPU test run
    then compiles one kernel per shape instead of tuning dozens (correctness does not depend on the
    config), and a resume repeats the tiles of the run it continues, so it stays bit-identical."""
    return configs[:1] if os.environ.get("GROKCOPY_AUTOTUNE", "1") == "0" else configs


def kernel_op(name: str, fake: Callable) -> Callable:
    """Decorator: register a function that launches Triton kernels as the torch op grokcopy::<name>.

    On a GPU it is a `torch.library.triton_op`: torch.compile traces into the function and records
    each kernel launched through `launch` in its graph, so inductor schedules it among its
    own kernels (no opaque call, no forced materialisation around it) and compiles it with its own
    argument types (hence `fp32_scalar`). Under the interpreter it is a `torch.library.custom_op`
    with `fake` as its shape function, because there `wrap_triton` hands back the bare kernel
    (an interpreted kernel lacks the metadata the traceable wrapper needs) and tracing the op on
    fake tensors would run the interpreter on them (checked on torch 2.13). Both kinds take the same
    schema, autograd registration and launchers, so the numbers are the same either way. The schema
    is inferred from the function's annotations: triton_op ignores an explicit one (torch 2.13).
    """

    def register(fn: Callable) -> Callable:
        qualname = f"grokcopy::{name}"
        if interpreting():
            op = torch.library.custom_op(qualname, fn, mutates_args=())
            op.register_fake(fake)
            return op
        return torch.library.triton_op(qualname, fn, mutates_args=())

    return register


def launch(kernel, like: torch.Tensor):
    """`kernel`, to launch on tensors like `like`: wrapped by `torch.library.wrap_triton` while
    torch.compile traces a `kernel_op` (then the tensors are fake), so that the launch is recorded in
    its graph; the bare kernel otherwise. An eager launch through the wrapper would go through
    torch's kernel-tracing machinery (and it refuses autotune configs with pre-hooks)."""
    # Inside a kernel_op's eager call torch turns wrapping off: that cheap flag is read first, as
    # is_fake costs more than the rest of a launch's host work (2026-12-02, CPU profile).
    if interpreting() or not is_wrap_triton_enabled() or not is_fake(like):
        return kernel
    return torch.library.wrap_triton(kernel)


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand dtype for `tl.dot` on blocks loaded from tensors of `dtype`.

    The interpreter has no bf16 arithmetic (a bf16 `tl.dot` multiplies bit patterns), so it gets
    fp32 operands; a GPU gets the native dtype so the tensor cores run at full rate.
    """
    if interpreting() or dtype == torch.float32:
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def check_inputs(name: str, *tensors: torch.Tensor, dtypes=SUPPORTED_FLOAT_DTYPES, same_dtype: bool = True) -> None:
    """Raise a clear error when `tensors` differ in device (or in dtype, with `same_dtype`), or
    have an unsupported dtype.

    `name` is the public op name, so the message says which call was wrong.
    """
    first = tensors[0]
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: argument {i} is {type(t).__name__}, expected a torch.Tensor")
        if t.dtype not in dtypes:
            raise TypeError(f"{name}: argument {i} has dtype {t.dtype}; supported: {list(dtypes)}")
        if t.device != first.device:
            raise ValueError(f"{name}: argument {i} is on {t.device} but argument 0 is on {first.device}")
        if same_dtype and t.dtype != first.dtype:
            raise TypeError(f"{name}: argument {i} has dtype {t.dtype} but argument 0 has {first.dtype}")
    if first.device.type == "cpu" and not interpreting():
        raise RuntimeError(
            f"{name}: Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 set before triton is "
            "imported to run them on CPU through the interpreter"
        )


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` [..., D] viewed as [rows, D] with unit stride along D; copies only when no such view exists.

    Row-wise kernels take a row stride, so a sliced or batched tensor is read in place; only a
    last dimension that is not contiguous (a transpose, an expanded gradient) costs a copy.
    """
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 or rows.shape[-1] == 1 else rows.contiguous()


@triton.jit
def fp32_scalar(x):
    """A float scalar argument as fp32. Every kernel passes its float scalars (eps, softmax_scale)
    through this first: Triton types a Python float as fp32, but inductor, recompiling a user kernel
    inside a compiled graph, passes it as fp64, and fp64 then spreads through everything it touches
    (on an H100 an fp64 softmax_scale made the softmax state fp64 and tl.dot rejected the fp64
    accumulator). tl.cast, not x.to: under the interpreter x arrives as a plain Python float."""
    return tl.cast(x, tl.float32)


# The interpreter converts fp32 to bf16 by truncating the mantissa, where a GPU rounds to nearest
# even: a bias of half a bf16 ulp in every stored value. Kernels cast through `cast_rne`, which
# rounds by hand under the interpreter and compiles to the plain conversion on a GPU.
EMULATE_BF16_RNE: tl.constexpr = tl.constexpr(interpreting())


@triton.jit
def cast_rne(x, dtype: tl.constexpr):
    """fp32 block `x` converted to `dtype`, rounding to nearest even on a GPU and in the interpreter."""
    if EMULATE_BF16_RNE and dtype == tl.bfloat16:
        # Add just under half a bf16 ulp (plus one when the kept lsb is odd: ties go to even) and
        # keep the top 16 bits, the usual bit trick; reinterpreting those bits (rather than
        # converting) keeps subnormals, which the interpreter's converter flushes to zero. NaN
        # payloads could carry into the sign bit, so NaN goes through the plain conversion.
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        y = tl.where(x != x, x.to(dtype), bits.to(tl.uint16).to(tl.bfloat16, bitcast=True))
    else:
        y = x.to(dtype)
    return y
