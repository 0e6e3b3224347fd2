"""Every tensor that train.py, model/ and evals/ create is created on the device of the tensors it
meets: a factory call (torch.tensor, zeros, arange, ...) without `device=` makes a CPU tensor, which
on a GPU run fails at the first op that mixes it with CUDA tensors (as the loss/stop flag of
train.py once did, at step 1 of every CUDA run). The CPU test suite cannot see that failure, so
this test reads the source instead: each such call needs `device=`, or a place on the allow-list
below with the reason it is meant to be on the host.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "linspace", "eye",
             "rand", "randn", "randint", "randperm"}
# (file, the call as ast.unparse writes it): why it belongs on the host
ALLOWED = {
    ("model/llama.py", "torch.ones(dim)"): "a parameter at construction; the module is moved with .to(device)",
    ("evals/copying.py", "torch.as_tensor(tokens)"): "make_repeat_batch returns host data; callers move it",
    ("evals/copying.py", "torch.as_tensor(periods)"): "make_repeat_batch returns host data; callers move it",
    ("train.py", "torch.as_tensor(front(self.repeat_tokens.numpy()))"): "the repeat batch (host data, with the sink "
                                                                           "in front); repeat_metrics moves it",
}


def calls_without_device(source: str) -> set[str]:
    """The torch factory calls in `source` that pass no device=, as ast.unparse writes them."""
    return {ast.unparse(node) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
            and not any(kw.arg == "device" for kw in node.keywords)}


def factory_calls_without_device() -> set[tuple[str, str]]:
    paths = [ROOT / "train.py", *sorted((ROOT / "model").glob("*.py")), *sorted((ROOT / "evals").glob("*.py"))]
    return {(str(p.relative_to(ROOT)), call) for p in paths for call in calls_without_device(p.read_text())}


def test_every_tensor_factory_names_its_device():
    unexpected = factory_calls_without_device() - set(ALLOWED)
    assert not unexpected, (
        "tensor factories without device= (a CPU tensor on a GPU run); pass device=, or allow-list with a "
        f"reason: {sorted(unexpected)}")


def test_allow_list_has_no_stale_entries():
    stale = set(ALLOWED) - factory_calls_without_device()
    assert not stale, f"allow-listed calls that no longer exist: {sorted(stale)}"


def test_the_check_catches_the_step_one_bug():
    """The line that crashed every CUDA run at step 1 is flagged; its fix is not."""
    bug = "flags = torch.stack([loss_sum, torch.tensor(float(stop.received is not None))]).to(device)"
    fix = "flags = torch.stack([loss_sum, torch.tensor(float(stop.received is not None), device=device)])"
    assert calls_without_device(bug) == {"torch.tensor(float(stop.received is not None))"}
    assert calls_without_device(fix) == set()
