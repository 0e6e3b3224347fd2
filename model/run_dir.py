"""The run directory: the one owner of its format. train.py writes it; inspect, report, experiment,
HF export and sampling read it, all through `RunDir`.

    <run>/.lock                     flock held by the training process (dropped by the kernel at exit)
    <run>/config.json               the resolved configuration, with the recipe changes made on resume
    <run>/metrics.jsonl             one JSON object per logged step (tb/ and W&B get the same records)
    <run>/copy_cases.npz            the fixed copy-eval set
    <run>/checkpoints/step-N.pt     model, optimizer, step, every rank's sampler and RNG state, config
    <run>/checkpoints/SHA256SUMS    a checksum line per checkpoint (`sha256sum -c` reads it)
    <run>/final.json                written once training has finished
    <run>/curves.png, <run>/tb/, <run>/wandb/ and <run>/wandb-id (with --wandb)

Every file is written atomically (temp file, fsync, rename; data/atomic.py), so a kill at any moment
leaves the old version or the new one. A checkpoint counts only once its checksum is listed:
loading verifies it, and a damaged latest checkpoint is reported by name and the newest good one is
used instead (a run written before checksums existed loads unverified, with a warning).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from grokcopy.data.atomic import write_atomically
from grokcopy.evals import metric_keys as mk

CHECKPOINT_RE = re.compile(r"^step-(\d+)\.pt$")
CHECKSUMS = "SHA256SUMS"
# The only non-torch objects in a checkpoint are numpy RNG states (a uint32 array): allowing these
# keeps torch.load's weights_only safety (no arbitrary code from a pickle).
NUMPY_RNG_GLOBALS = [np.zeros(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class RunDirInUse(RuntimeError):
    """Another process is training into this run directory."""


class NotARunError(ValueError):
    """The directory is not a grokcopy run directory; the message says why."""


class CheckpointError(ValueError):
    """A checkpoint file is damaged or not a grokcopy checkpoint; the message names it."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it (torch.save writes sequentially)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class RunDir:
    """A run directory on disk. Creating the object touches nothing; `lock()` creates the directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.final_path = self.path / "final.json"
        self.copy_cases_path = self.path / "copy_cases.npz"
        self.curves_path = self.path / "curves.png"
        self.tensorboard_dir = self.path / "tb"
        self.wandb_id_path = self.path / "wandb-id"  # the W&B run a resume continues
        self.checkpoints_dir = self.path / "checkpoints"
        self._lock: IO | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- the lock: one trainer per run directory ----------------------------------------------------

    def lock(self) -> None:
        """Take the run directory (created if missing) for this process until it exits. Raises RunDirInUse."""
        if self.path.exists() and not self.path.is_dir():
            raise NotARunError(f"{self.path} is a file, not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise RunDirInUse(f"{self.path} is in use by another training process (pid {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle
        self._remove_stale_temporaries()

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def in_use(self) -> bool:
        """Whether some process holds the lock; a missing directory is not in use."""
        if not (self.path / ".lock").is_file():
            return False
        probe = RunDir(self.path)
        try:
            probe.lock()
        except RunDirInUse:
            return True
        probe.unlock()
        return False

    def _remove_stale_temporaries(self) -> None:
        """A kill during an atomic write leaves its temp file (.NAME.*.tmp); under the lock no writer is
        running, so these are grokcopy's own leftovers."""
        for folder in (self.path, self.checkpoints_dir):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
                tmp.unlink(missing_ok=True)

    # --- config.json ----------------------------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        write_atomically(self.config_path, lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()))

    def read_config(self) -> dict:
        """config.json as a dict. Raises NotARunError naming what is wrong."""
        if not self.path.is_dir():
            raise NotARunError(f"{self.path}: no such directory")
        if not self.config_path.is_file():
            raise NotARunError(f"{self.path} is not a grokcopy run directory (no config.json)")
        try:
            config = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise NotARunError(f"{self.config_path} is not valid JSON ({e})") from None
        if not isinstance(config, dict) or not {"preset", "model"} <= set(config):
            raise NotARunError(f"{self.path} is not a grokcopy run directory (config.json has no preset and model)")
        return config

    # --- metrics.jsonl --------------------------------------------------------------------------------

    def _metrics_lines(self) -> list[tuple[str, dict | None]]:
        """(raw line, its record or None when the line is not a metrics record), in file order."""
        if not self.metrics_path.is_file():
            return []
        lines = []
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            ok = isinstance(record, dict) and isinstance(record.get(mk.STEP), int)
            lines.append((line, record if ok else None))
        return lines

    def read_metrics(self) -> tuple[list[dict], int]:
        """(records, unreadable lines). A line that is not a JSON object is counted, not fatal: the last
        one may be the record a running (or killed) trainer was writing."""
        lines = self._metrics_lines()
        return [r for _, r in lines if r is not None], sum(r is None for _, r in lines)

    def metrics_damage(self) -> tuple[list[int], bool]:
        """(1-based numbers of unreadable lines before the last one, whether the last line is cut):
        a cut last line is a write a kill interrupted; an unreadable line elsewhere is damage."""
        lines = self._metrics_lines()
        damaged = [i + 1 for i, (_, r) in enumerate(lines[:-1]) if r is None]
        return damaged, bool(lines) and lines[-1][1] is None

    def truncate_metrics(self, step: int) -> None:
        """Drop the records logged after `step` (where a resumed run continues) and a cut last line,
        atomically: a kill during the rewrite leaves the old file, never an empty one. A damaged line
        among the kept ones stays as it is (it is the user's record; readers count it)."""
        lines = self._metrics_lines()
        if lines and lines[-1][1] is None:
            lines = lines[:-1]
        kept = [raw for raw, r in lines if r is None or r[mk.STEP] <= step]
        while kept and kept[-1] in {raw for raw, r in lines if r is None}:  # nothing after it was kept
            kept.pop()
        text = "".join(raw + "\n" for raw in kept)
        write_atomically(self.metrics_path, lambda f: f.write(text.encode()))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # --- checkpoints ----------------------------------------------------------------------------------

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step:08d}.pt"

    def checkpoints(self) -> list[Checkpoint]:
        """The checkpoint files on disk, oldest first (verified or not)."""
        found = []
        for p in self.checkpoints_dir.glob("step-*.pt") if self.checkpoints_dir.is_dir() else []:
            m = CHECKPOINT_RE.match(p.name)
            if m:
                found.append(Checkpoint(int(m.group(1)), p))
        return sorted(found, key=lambda c: c.step)

    def _checksums(self) -> dict[str, str]:
        path = self.checkpoints_dir / CHECKSUMS
        if not path.is_file():
            return {}
        sums = {}
        for line in path.read_text(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            if re.fullmatch(r"[0-9a-f]{64}", digest) and name:
                sums[name] = digest
        return sums

    def _write_checksums(self, sums: dict[str, str]) -> None:
        text = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
        write_atomically(self.checkpoints_dir / CHECKSUMS, lambda f: f.write(text.encode()))

    def save_checkpoint(self, state: dict, step: int, keep: int) -> Path:
        """Write `state` as step-N.pt (atomically), list its checksum, and keep the newest `keep`."""
        path = self.checkpoint_path(step)
        digest: dict[str, str] = {}

        def write(f):
            hashing = _HashingWriter(f)
            torch.save(state, hashing)
            digest["sha256"] = hashing.sha256.hexdigest()

        write_atomically(path, write)
        sums = self._checksums()
        sums[path.name] = digest["sha256"]
        old = self.checkpoints()[:-keep]
        for c in old:
            sums.pop(c.path.name, None)
        self._write_checksums(sums)  # before the deletions: a listed file that is gone is only skipped
        for c in old:
            c.path.unlink(missing_ok=True)
        return path

    def verify(self, path: Path) -> None:
        """Raise CheckpointError unless `path`'s bytes match its listed checksum. A directory with no
        checksum list at all predates checksums: accepted (load_checkpoint warns)."""
        sums = self._checksums()
        if not sums and not (self.checkpoints_dir / CHECKSUMS).is_file():
            return
        listed = sums.get(path.name)
        if listed is None:
            raise CheckpointError(f"{path}: no checksum listed in {CHECKSUMS} (its write did not finish)")
        if file_sha256(path) != listed:
            raise CheckpointError(f"{path}: checksum mismatch, the file is damaged")

    def has_checksums(self) -> bool:
        return (self.checkpoints_dir / CHECKSUMS).is_file()

    def load_state(self, path: Path | None = None, map_location: Any = "cpu",
                        warn: Callable[[str], None] = lambda message: None) -> tuple[dict, Checkpoint]:
        """Verify and load a checkpoint: `path`, or the newest one that verifies. A damaged newer one is
        reported through `warn` by name, with the one used instead. Raises CheckpointError when none
        can be loaded (FileNotFoundError when there are none)."""
        candidates = [Checkpoint(checkpoint_step(path), Path(path))] if path else self.checkpoints()[::-1]
        if not candidates:
            raise FileNotFoundError(f"{self.path}: no checkpoints/step-*.pt")
        if not self.has_checksums():
            warn(f"warning: {self.checkpoints_dir} has no {CHECKSUMS} (written by an older grokcopy): "
                 "loading without verification")
        problems = []
        for c in candidates:
            try:
                self.verify(c.path)
                state = load_checkpoint_file(c.path, map_location)
            except CheckpointError as e:
                problems.append(str(e))
                if path:
                    raise
                continue
            if problems:
                warn("warning: " + "; ".join(problems) + f". Using {c.path.name} instead.")
            return state, c
        raise CheckpointError("no loadable checkpoint: " + "; ".join(problems))

    def checkpoint_configs(self, path: Path) -> tuple[dict, dict]:
        """(train config, model config) stored in a checkpoint, read through a memory map: the tensors
        stay on disk, so this is cheap for any model size. Raises CheckpointError."""
        try:
            with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 (damage shows as many exception types)
            raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__})") from None
        if not isinstance(state, dict) or "model_config" not in state:
            raise CheckpointError(f"{path}: not a grokcopy checkpoint (no model_config)")
        return state.get("config", {}), state["model_config"]

    # --- final.json -----------------------------------------------------------------------------------

    def write_final(self, final: dict) -> None:
        write_atomically(self.final_path, lambda f: f.write((json.dumps(final) + "\n").encode()))

    def read_final(self) -> dict | None:
        """final.json, None when the run has not finished. Raises NotARunError when it is damaged."""
        if not self.final_path.is_file():
            return None
        try:
            final = json.loads(self.final_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise NotARunError(f"{self.final_path} is not valid JSON ({e})") from None
        if not isinstance(final, dict) or not isinstance(final.get("step"), int):
            raise NotARunError(f"{self.final_path} has no step")
        return final


class MetricsLog:
    """Appends each record to metrics.jsonl and hands the same record to every sink (TensorBoard,
    Weights & Biases: objects with write(record) and close()), so all of them hold the same numbers."""

    def __init__(self, run: RunDir, sinks: list | None = None):
        self.run, self.sinks = run, list(sinks or [])

    def write(self, record: dict) -> None:
        self.run.append_metrics(record)
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def checkpoint_step(path: str | os.PathLike) -> int:
    m = CHECKPOINT_RE.match(Path(path).name)
    if not m:
        raise CheckpointError(f"{path}: not a checkpoint file name (step-NNNNNNNN.pt)")
    return int(m.group(1))


def load_checkpoint_file(path: Path, map_location: Any = "cpu") -> dict:
    """torch.load of a checkpoint (weights only), with any failure named by file."""
    try:
        with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch reports truncation, zip damage and unpickling errors in many types
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path}: not a grokcopy checkpoint (no model / model_config)")
    return state


def resolve_checkpoint(path: str | os.PathLike) -> tuple[RunDir, Path | None]:
    """(run directory, checkpoint file) for a checkpoint file or a run directory (file None: its
    newest good checkpoint). Raises FileNotFoundError naming the path."""
    path = Path(path)
    if path.is_file():
        checkpoint_step(path)  # a name check: step-NNNNNNNN.pt
        return RunDir(path.parent.parent), path
    if path.is_dir():
        run = RunDir(path)
        if not run.checkpoints():
            raise FileNotFoundError(f"{path}: a directory with no checkpoints/step-*.pt in it")
        return run, None
    raise FileNotFoundError(f"{path}: no such checkpoint file or run directory")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu",
                    warn: Callable[[str], None] = lambda message: None):
    """(model, config) from a checkpoint file or a run directory (its newest checkpoint that verifies),
    checksum-verified like a resume. Raises FileNotFoundError or CheckpointError naming the file."""
    from grokcopy.model.config import LlamaConfig
    from grokcopy.model.llama import Llama

    run, file = resolve_checkpoint(path)
    state, _ = run.load_state(file, map_location=map_location, warn=warn)
    cfg = LlamaConfig.from_dict(state["model_config"])
    model = Llama(cfg)
    model.load_state_dict(state["model"])
    return model, cfg
