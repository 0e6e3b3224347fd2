"""Test set-up shared by the whole suite.

Triton kernels run on CPU tensors only through the Triton interpreter, which reads
TRITON_INTERPRET when triton is first imported: so it is set here, before anything imports
triton, on any machine without CUDA. On a GPU machine the kernels compile for real.
"""

import os
import shutil
import sysconfig
from pathlib import Path

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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small byte-level corpus (a few standard-library modules), shared by the trainer tests."""
    from grokcopy.data.prepare import bytes_tokenizer, collect_sources, prepare

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in ("os.py", "argparse.py", "random.py", "textwrap.py", "shlex.py")]
    out = tmp_path_factory.mktemp("corpus") / "bytes"
    sources = collect_sources(files)
    prepare(sources, out, tokenizer=bytes_tokenizer(), val_fraction=0.4, progress=False)
    return out


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Make torch.empty return NaN-filled floating tensors while the test runs.

    The launchers allocate every output (and partial sums) with torch.empty, so an element a kernel forgets to write
    stays NaN and fails the finiteness check. The returned list records each poisoned allocation,
    so a test can assert that its outputs went through it.
    """
    real_empty = torch.empty
    poisoned = []

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
            poisoned.append(tuple(t.shape))
        return t

    monkeypatch.setattr(torch, "empty", nan_empty)
    return poisoned
