"""Checkpoint files: `<run dir>/checkpoints/step-00001000.pt`, written atomically.

A checkpoint holds everything a resumed run needs to continue bit-identically: model, optimizer,
scheduler, step, each rank's data-sampler state and RNG states, and the resolved run config.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from typing import IO

import numpy as np
import torch

from data.atomic import write_atomically
from model.config import LlamaConfig
from model.llama import Llama

CHECKPOINT_RE = re.compile(r"step-(\d+)\.pt$")
# The only non-torch objects in a checkpoint are numpy RNG states (a uint32 array): allowing these
# lets load_checkpoint keep torch.load's weights_only safety (no arbitrary code from a pickle).
NUMPY_RNG_GLOBALS = [np.zeros(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    found = []
    for p in (Path(run_dir) / "checkpoints").glob("step-*.pt"):
        m = CHECKPOINT_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


class RunDirInUse(RuntimeError):
    """Another process is training into this run directory."""


def lock_run_dir(run_dir: str | os.PathLike) -> IO:
    """Lock `run_dir` (created if missing) for this process: two trainers writing one run directory
    would interleave metrics and overwrite each other's checkpoints. The lock is an flock on
    <run dir>/.lock, so the kernel drops it when the process ends, kill -9 included. Keep the
    returned file open for as long as the lock should hold. Raises RunDirInUse."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RunDirInUse(f"{run_dir} is in use by another training process (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def run_dir_in_use(run_dir: str | os.PathLike) -> bool:
    """Whether some process holds `run_dir`'s lock (see lock_run_dir); a missing directory is not in use."""
    if not (Path(run_dir) / ".lock").is_file():
        return False
    try:
        lock_run_dir(run_dir).close()  # closing the file releases the lock we just took
    except RunDirInUse:
        return True
    return False


def save_atomically(obj: dict, path: Path) -> None:
    """torch.save through a temp file, fsync and rename: a kill never leaves a half checkpoint."""
    write_atomically(path, lambda f: torch.save(obj, f))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory's latest checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{path}: a directory with no checkpoints/step-*.pt in it")
        return found[-1]
    raise FileNotFoundError(f"{path}: no such checkpoint file or run directory")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[Llama, LlamaConfig]:
    """(model, config) from a checkpoint file or a run directory (then its latest checkpoint)."""
    with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
        ckpt = torch.load(resolve_checkpoint(path), map_location=map_location, weights_only=True)
    cfg = LlamaConfig.from_dict(ckpt["model_config"])
    model = Llama(cfg)
    model.load_state_dict(ckpt["model"])
    return model, cfg
