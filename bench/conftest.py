"""Fixtures shared by the GPU kernel benchmarks: a CUDA guard, the device's measured copy bandwidth,
and `measure`, which times a callable and records throughput in pytest-benchmark's extra_info.

Nothing here is autouse: benchmarks that do not ask for these fixtures (bench/test_data.py) are
unaffected, and without CUDA every benchmark that does ask is skipped with the reason "needs CUDA".
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import triton
from triton.testing import do_bench

# Bytes of the device-to-device copy that calibrates bandwidth: far beyond any L2 cache.
COPY_BYTES = 1 << 30


@pytest.fixture(scope="session")
def cuda_device() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def copy_bandwidth_gbps(cuda_device) -> float:
    """GB/s of a 1 GiB device-to-device copy on this GPU, measured in this session.

    Counts the read and the write (2 GiB moved), the same way kernel throughput is counted below,
    so a kernel's fraction of it says how close it is to what the memory system delivers here.
    """
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=cuda_device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


@pytest.fixture
def measure(cuda_device, copy_bandwidth_gbps, benchmark):
    """`measure(fn, bytes_moved, flops=None, **extra) -> ms`: time `fn` and record the result.

    Two timings, both synchronised:
    - the median of `triton.testing.do_bench` (CUDA events around each call, the L2 cache flushed
      between calls): the kernel-level number, from which GB/s (and TFLOP/s when `flops` is given)
      and the fraction of the measured copy bandwidth are derived into benchmark.extra_info;
    - pytest-benchmark's own rounds over `fn` followed by torch.cuda.synchronize(), which include
      Python and launch overhead as a training step sees it.
    `bytes_moved` is the fewest bytes the operation must move: each input read once, each output
    written once.
    """

    def run(fn: Callable[[], object], bytes_moved: int, flops: int | None = None, **extra) -> float:
        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
        gbps = bytes_moved / (ms * 1e-3) / 1e9

        def synced():
            fn()
            torch.cuda.synchronize()

        benchmark.pedantic(synced, rounds=20, warmup_rounds=3, iterations=1)
        benchmark.extra_info.update(
            device=torch.cuda.get_device_name(cuda_device),
            torch=torch.__version__,
            triton=triton.__version__,
            do_bench_median_ms=ms,
            bytes_moved=bytes_moved,
            gbps=gbps,
            copy_bandwidth_gbps=copy_bandwidth_gbps,
            fraction_of_copy_bandwidth=gbps / copy_bandwidth_gbps,
            **extra,
        )
        if flops is not None:
            benchmark.extra_info["tflops"] = flops / (ms * 1e-3) / 1e12
        return ms

    return run
