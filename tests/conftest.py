"""Test set-up shared by the whole suite.

Triton kernels run on CPU tensors only through the Triton interpreter, which reads
TRITON_INTERPRET when triton is first imported: so it is set here, before anything imports
triton, on any machine without CUDA. On a GPU machine the kernels compile for real.
"""

import os
import shutil

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores on CI: let each test use both unless a test says otherwise, and keep results
# reproducible from run to run.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
