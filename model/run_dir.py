"""The run directory: the one owner of its format. train.py writes it; inspect, report, experiment,
HF export and sampling read it, all through `RunDir`.

    <run>/.grokcopy-run             the mark that grokcopy made this directory a run (grokcopy/ownership.py)
    <run>/.lock                     flock held by the training process (dropped by the kernel at exit)
    <run>/config.json               the resolved configuration, the corpus identity, the recipe changes made on resume
    <run>/metrics.jsonl             one JSON object per logged step (tb/ and W&B get the same records)
    <run>/copy_cases.npz            the fixed copy-eval set
    <run>/checkpoints/step-N.pt     model, optimizer, step, every rank's sampler and RNG state, config, corpus
    <run>/checkpoints/step-N.pt.sha256   the checkpoint's own checksum (`sha256sum -c` reads it)
    <run>/checkpoints/SHA256SUMS    a checksum line per checkpoint, for `sha256sum -c` over the folder
    <run>/final.json                written once training has finished
    <run>/curves.png, <run>/tb/, <run>/wandb/ and <run>/wandb-id (with --wandb)

Every file is written atomically (temp file, fsync, rename; data/atomic.py), so a kill at any moment
leaves the old version or the new one. Each checkpoint carries its own checksum: step-N.pt.sha256 is
in place before step-N.pt is renamed into place, so no checkpoint ever exists without one, and
deleting SHA256SUMS changes nothing. Every reader (train's resume, sample, inspect, HF export) goes
through `verify_checkpoint`; a damaged or unverifiable file is named and skipped (the newest good one
is used instead, said so) or refused. A checkpoint from before the sidecars (grokcopy up to
2026-11) is verified against SHA256SUMS instead; one that neither verifies is never loaded.

Ownership: `lock()` refuses a non-empty directory that is not a grokcopy run before touching
anything in it, and temp-file cleanup deletes only the temp names of files RunDir itself writes.
Resume cuts from metrics.jsonl only grokcopy's own records past the checkpoint, every other byte kept.
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

from grokcopy.data.atomic import atomic_file, write_atomically
from grokcopy.evals import metric_keys as mk
from grokcopy.ownership import MKSTEMP_PART, RUN_MARKER, describe_contents, output_kind, write_marker

CHECKPOINT_RE = re.compile(r"^step-(\d+)\.pt$")
CHECKSUMS = "SHA256SUMS"
SIDECAR_SUFFIX = ".sha256"
# The only non-torch objects in a checkpoint are numpy RNG states (a uint32 array): allowing these
# keeps torch.load's weights_only safety (no arbitrary code from a pickle).
NUMPY_RNG_GLOBALS = [np.zeros(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
# Every record grokcopy logs has these keys, and json.dumps starts it with the step: a line without
# them is not grokcopy's (a user's note, a line in another encoding) and resume leaves it alone.
RECORD_KEYS = (mk.STEP, mk.TOKENS, mk.LOSS)
RECORD_START = b'{"' + mk.STEP.encode() + b'": '
# The files RunDir writes atomically; only the temp files of these names are grokcopy's to delete.
_RUN_FILES = ("config.json", "metrics.jsonl", "final.json", "copy_cases.npz", "wandb-id", RUN_MARKER)
_CHECKPOINT_FILES = (r"step-\d+\.pt", rf"step-\d+\.pt{re.escape(SIDECAR_SUFFIX)}", CHECKSUMS)
_RUN_TEMP = re.compile(rf"\.({'|'.join(map(re.escape, _RUN_FILES))})\.{MKSTEMP_PART}\.tmp")
_CHECKPOINT_TEMP = re.compile(rf"\.({'|'.join(_CHECKPOINT_FILES)})\.{MKSTEMP_PART}\.tmp")


class RunDirInUse(RuntimeError):
    """Another process is training into this run directory."""


class NotARunError(ValueError):
    """The directory is not a grokcopy run directory; the message says why."""


class CheckpointError(ValueError):
    """A checkpoint file is damaged, unverifiable or not a grokcopy checkpoint; the message names it."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it (torch.save writes sequentially).
    A failed write's OSError is kept: torch.save reports it as its own RuntimeError ("unexpected pos"),
    which names neither the file nor the cause."""

    def __init__(self, f: IO[bytes]):
        self.f, self.sha256, self.bytes, self.error = f, hashlib.sha256(), 0, None

    def write(self, data) -> int:
        try:
            written = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.sha256.update(data)
        self.bytes += len(data)
        return written

    def flush(self) -> None:
        self.f.flush()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(checkpoint: Path) -> Path:
    """step-N.pt's own checksum file, step-N.pt.sha256, in `sha256sum` format."""
    return checkpoint.with_name(checkpoint.name + SIDECAR_SUFFIX)


def _read_sums(path: Path) -> dict[str, str]:
    """{file name: sha256} of a `sha256sum` format file ({} when it is missing)."""
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        if re.fullmatch(r"[0-9a-f]{64}", digest) and name:
            sums[name] = digest
    return sums


def _sums_text(sums: dict[str, str]) -> bytes:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())).encode()


def verify_checkpoint(path: str | os.PathLike) -> None:
    """The one check every reader of a checkpoint makes: raise CheckpointError, naming the file,
    unless its bytes match the checksum it carries (step-N.pt.sha256 beside it) or, for a
    checkpoint written before the sidecars, its line in SHA256SUMS. A checkpoint with neither is
    refused too: verification cannot be switched off by deleting a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        listed, source = _read_sums(sidecar).get(path.name), sidecar.name
        if listed is None:
            raise CheckpointError(f"{path}: its checksum file {sidecar.name} is damaged (no checksum of {path.name})")
    else:  # written before each checkpoint carried its checksum
        listed, source = _read_sums(path.parent / CHECKSUMS).get(path.name), CHECKSUMS
        if listed is None:
            raise CheckpointError(
                f"{path}: carries no checksum (no {sidecar.name}, not listed in {CHECKSUMS}): its write did not "
                "finish, or its checksum file was deleted, so it is not loaded unverified; to vouch for it "
                f"yourself, run `sha256sum {path.name} > {sidecar.name}` in {path.parent}")
    if file_sha256(path) != listed:
        raise CheckpointError(f"{path}: checksum mismatch with {source}, the file is damaged")


def _is_record(line: bytes) -> dict | None:
    """The grokcopy metrics record a line of metrics.jsonl holds, or None (damaged, or not grokcopy's)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not all(k in record for k in RECORD_KEYS):
        return None
    step = record[mk.STEP]
    return record if isinstance(step, int) and not isinstance(step, bool) else None


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
        # what the run trains on (data/corpus.py corpus_identity): stamped into every checkpoint saved
        self.corpus: dict | None = None
        self._lock: IO | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- the lock: one trainer per run directory, and only in a directory that is a run ---------------

    def check_owned(self) -> None:
        """Raise NotARunError unless the directory is missing, empty or a grokcopy run. Touches nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise NotARunError(f"{self.path} is a file, not a directory")
        holder = next((d for d in self.path.resolve().parents if output_kind(d) in ("corpus", "export")), None)
        if holder is not None:  # a run inside them would be read (prepare) or ship (export) with them
            raise NotARunError(f"{self.path} lies inside {holder}, which is {describe_contents(holder)}; nothing "
                               "was touched. Train into a directory of its own (did you swap --data and --out?)")
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return
        kind = output_kind(self.path)
        if kind == "run":
            return
        hint = " (did you swap --data and --out?)" if kind == "corpus" else ""
        raise NotARunError(f"{self.path} is not empty and not a grokcopy run: it is {describe_contents(self.path)}"
                           f"{hint}; nothing in it was touched. Train into a new or empty directory")

    def lock(self) -> None:
        """Take the run directory (created and marked as a run if missing or empty) for this process
        until it exits. Raises NotARunError for a directory grokcopy did not make a run, before
        anything in it is touched, and RunDirInUse."""
        self.check_owned()
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / RUN_MARKER).is_file():  # before any other file: a run is never unmarked
            write_marker(self.path, "run")
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
        """Whether some process holds the lock; a directory without a .lock is not in use. Writes nothing."""
        try:
            handle = open(self.path / ".lock")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    def _remove_stale_temporaries(self) -> None:
        """A kill during an atomic write leaves its temp file (.NAME.XXXXXXXX.tmp); under the lock no
        writer is running. Only the temp files of names RunDir writes are deleted (a user's `.notes.tmp`
        stays), and a checkpoint's checksum left without its checkpoint (a kill between the two renames)."""
        for folder, pattern in ((self.path, _RUN_TEMP), (self.checkpoints_dir, _CHECKPOINT_TEMP)):
            for tmp in folder.iterdir() if folder.is_dir() else []:
                if pattern.fullmatch(tmp.name) and tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink(missing_ok=True)
        for sidecar in self.checkpoints_dir.glob(f"step-*.pt{SIDECAR_SUFFIX}") if self.checkpoints_dir.is_dir() else []:
            checkpoint = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
            if CHECKPOINT_RE.match(checkpoint.name) and not checkpoint.exists():
                sidecar.unlink(missing_ok=True)

    # --- history: what a run left besides its checkpoints ----------------------------------------------

    def history(self) -> list[str]:
        """What an earlier run left here (config.json, metrics records, final.json), for a refusal."""
        found = ["config.json"] if self.config_path.is_file() else []
        records = self.read_metrics()[0]
        if records:
            found.append(f"metrics.jsonl with {len(records)} records up to step {records[-1][mk.STEP]}")
        if self.final_path.is_file():
            found.append("final.json")
        return found

    def clear_history(self) -> None:
        """Start over (train --restart): drop grokcopy's own records and the files a finished run
        leaves (final.json, curves.png, copy_cases.npz, wandb-id); a user's lines in metrics.jsonl stay."""
        self.truncate_metrics(0)
        for path in (self.final_path, self.curves_path, self.copy_cases_path, self.wandb_id_path):
            path.unlink(missing_ok=True)

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

    def _metrics_lines(self) -> list[tuple[bytes, dict | None]]:
        """(raw line, its record or None when the line is not a grokcopy record), in file order;
        blank lines left out."""
        if not self.metrics_path.is_file():
            return []
        return [(line, _is_record(line)) for line in self.metrics_path.read_bytes().split(b"\n") if line.strip()]

    def read_metrics(self) -> tuple[list[dict], int]:
        """(records, other lines). A line that is not a grokcopy record is counted, not fatal: the last
        one may be the record a running (or killed) trainer was writing, others a user's notes."""
        lines = self._metrics_lines()
        return [r for _, r in lines if r is not None], sum(r is None for _, r in lines)

    def metrics_damage(self) -> tuple[list[int], bool]:
        """(1-based numbers of lines before the last one that are not grokcopy records, whether the last
        line is cut): a cut last line is a write a kill interrupted; another such line is damage, or a
        line someone added."""
        lines = self._metrics_lines()
        damaged = [i + 1 for i, (_, r) in enumerate(lines[:-1]) if r is None]
        return damaged, bool(lines) and lines[-1][1] is None

    def truncate_metrics(self, step: int) -> None:
        """Drop grokcopy's records logged after `step` (where a resumed run continues) and a record a
        kill cut short at the end; every other byte stays (a user's notes, lines in another encoding,
        a damaged record), and the file ends with a newline so the next record starts a line. Atomic:
        a kill during the rewrite leaves the old file, never an empty one."""
        if not self.metrics_path.is_file():
            return
        data = self.metrics_path.read_bytes()
        lines = data.split(b"\n")  # the last: the unterminated last line (b"" after a final newline)
        kept = []
        for i, raw in enumerate(lines):
            record = _is_record(raw)
            if record is not None and record[mk.STEP] > step:
                continue
            if i == len(lines) - 1 and (not raw or record is None and raw.startswith(RECORD_START)):
                continue  # nothing after the last newline, or grokcopy's record cut by a kill
            kept.append(raw)
        text = b"".join(raw + b"\n" for raw in kept)
        if text != data:
            write_atomically(self.metrics_path, lambda f: f.write(text))

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

    def save_checkpoint(self, state: dict, step: int, keep: int) -> Path:
        """Write `state` (stamped with the run's corpus identity) as step-N.pt with its own checksum,
        list it in SHA256SUMS, and keep the newest `keep`. The checksum file is renamed into place
        before the checkpoint, so a checkpoint never exists without it. A write that fails (a full
        disk) raises OSError naming the file; the older checkpoints are untouched."""
        path = self.checkpoint_path(step)
        if self.corpus is not None:
            state = {**state, "corpus": self.corpus}
        with atomic_file(path) as f:
            hashing = _HashingWriter(f)
            try:
                torch.save(state, hashing)
            except Exception:
                if hashing.error is not None:  # the OS's reason, not torch's "unexpected pos"
                    raise hashing.error from None
                raise
            digest = hashing.sha256.hexdigest()
            write_atomically(sidecar_path(path), lambda s: s.write(_sums_text({path.name: digest})))
        sums = _read_sums(self.checkpoints_dir / CHECKSUMS)
        sums[path.name] = digest
        old = self.checkpoints()[:-keep]
        for c in old:
            sums.pop(c.path.name, None)
        write_atomically(self.checkpoints_dir / CHECKSUMS, lambda f: f.write(_sums_text(sums)))
        for c in old:  # the checkpoint before its checksum: a checkpoint is never left without one
            c.path.unlink(missing_ok=True)
            sidecar_path(c.path).unlink(missing_ok=True)
        return path

    def verify(self, path: Path) -> None:
        """verify_checkpoint(path): raise CheckpointError unless it matches the checksum it carries."""
        verify_checkpoint(path)

    def load_state(self, path: Path | None = None, map_location: Any = "cpu",
                   warn: Callable[[str], None] = lambda message: None) -> tuple[dict, Checkpoint]:
        """Verify and load a checkpoint: `path`, or the newest one that verifies. A damaged newer one is
        reported through `warn` by name, with the one used instead. Raises CheckpointError when none
        can be loaded (FileNotFoundError when there are none)."""
        candidates = [Checkpoint(checkpoint_step(path), Path(path))] if path else self.checkpoints()[::-1]
        if not candidates:
            raise FileNotFoundError(f"{self.path}: no checkpoints/step-*.pt")
        problems = []
        for c in candidates:
            try:
                verify_checkpoint(c.path)
                state = _load_checkpoint_file(c.path, map_location)
            except CheckpointError as e:
                problems.append(str(e))
                if path:
                    raise
                continue
            except FileNotFoundError:  # rotated away by a running trainer since it was listed
                if path:
                    raise
                continue
            if problems:
                warn("warning: " + "; ".join(problems) + f". Using {c.path.name} instead.")
            return state, c
        raise CheckpointError("no loadable checkpoint: " + "; ".join(problems))

    def checkpoint_configs(self, path: Path) -> tuple[dict, dict]:
        """(train config, model config) stored in a verified checkpoint, read through a memory map:
        the tensors stay on disk. Raises CheckpointError."""
        verify_checkpoint(path)
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


def _load_checkpoint_file(path: Path, map_location: Any = "cpu") -> dict:
    """torch.load of a checkpoint verify_checkpoint passed (weights only), any failure named by file."""
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
