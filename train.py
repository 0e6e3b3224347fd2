"""Train a grokcopy Llama and watch copying emerge.

    torchrun --standalone --nproc-per-node=1 train.py                 # the embedded default (CPU)
    torchrun --standalone --nproc-per-node=8 train.py --preset paper-162m --data DIR
    python train.py --preset tiny --max-steps 100 --out runs/try       # one process, no torchrun

Configuration: `--preset NAME` (model shape and recipe), then `--config FILE.toml` (flat keys named
like the flags, with underscores), then flags; later ones win. Re-running a command on an existing
run directory resumes from its latest checkpoint. DDP over torch.distributed (gloo on CPU, nccl on
CUDA); optional FSDP2 (`--fsdp`) and `--compile`.

Writes to the run directory: config.json, metrics.jsonl (one JSON object per logged step),
copy_cases.npz (the fixed copy-eval set), checkpoints/step-*.pt, curves.png, and with TensorBoard
installed tb/ (event files of the same metrics).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import signal
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from data import TokenDataset, WindowSampler
from data.prepare import ensure_default_corpus
from evals.copying import copy_metrics, load_or_make_copy_cases, make_repeat_batch, repeat_metrics
from evals.curves import plot_curves, read_metrics, run_summary
from evals.scores import batch_text_scores, text_scores, text_targets
from evals.tensorboard import TensorBoardLog, tensorboard_available
from model import PRESETS, Llama, LlamaConfig
from model.checkpoint import RunDirInUse, checkpoint_path, list_checkpoints, lock_run_dir, save_atomically
from model.hf import load_hf_weights, model_shape_from_hf, read_hf_config

MODEL_FIELDS = {f.name for f in fields(LlamaConfig)}
# Fault injection for the crash-resume test: SIGKILL this process right after this step.
CRASH_AT_STEP = int(os.environ.get("GROKCOPY_CRASH_AT_STEP", 0))


@dataclass
class TrainConfig:
    """Everything a run is made of, except the model shape (LlamaConfig). Each field is a flag."""

    preset: str = "tiny"
    out: str = ""  # run directory; default runs/<preset>
    data: str = ""  # a prepared corpus directory; default: the embedded Python-stdlib corpus
    max_steps: int = 1000
    batch_size: int = 8  # sequences per rank per micro-step
    grad_accum: int = 1
    global_batch: int = 0  # if set: sequences per optimizer step, all ranks; sets grad_accum
    seq_len: int = 256
    lr: float = 1e-3
    min_lr: float = -1.0  # cosine floor; < 0: a tenth of lr
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    # every N steps (0: never) the training forward also returns the previous-token and
    # prefix-matching mass of rank 0's batch (the attention-stats path: the Triton kernel on
    # attention=triton, else the torch reference, the same math in other rounding)
    train_stats_every: int = 0
    ckpt_every: int = 1000
    keep_ckpts: int = 3
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (= bf16) | fp32 | bf16: autocast dtype of the forward pass
    compile: bool = False
    fsdp: bool = False
    quiet: bool = False
    init_from_hf: str = ""  # an HF Llama directory: its shape and weights start a fresh run
    tensorboard: bool | None = None  # event files in <run>/tb; None: on when tensorboard is installed


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


# ---------------------------------------------------------------------------------------------
# Configuration: preset < config file < flags


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, LlamaConfig]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="TOML file of field = value (flags override it)")
    for f in [*fields(TrainConfig), *(f for f in fields(LlamaConfig) if f.name in MODEL_FIELDS)]:
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool, "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float, "str": str, "int | None": int}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper())
    args = vars(parser.parse_args(argv))
    overrides = {}
    if args.pop("config"):
        overrides.update(load_toml(Path(parser.parse_args(argv).config)))
    overrides.update({k: v for k, v in args.items() if v is not None})
    return resolve_config(overrides)


def load_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    with open(path, "rb") as f:
        try:
            values = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    known = {f.name for f in fields(TrainConfig)} | MODEL_FIELDS
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown}")
    return values


def resolve_config(overrides: dict) -> tuple[TrainConfig, LlamaConfig]:
    """Merge preset, file and flag values; validate every field before anything runs."""
    name = overrides.get("preset", TrainConfig.preset)
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is unknown; choose from {sorted(PRESETS)}")
    preset = PRESETS[name]
    train_values = {**preset.train, **{k: v for k, v in overrides.items() if k not in MODEL_FIELDS}}
    model_flags = {k: v for k, v in overrides.items() if k in MODEL_FIELDS}
    hf_shape = hf_model_shape(train_values.get("init_from_hf", ""), model_flags)
    model_values = {**preset.model.to_dict(), **hf_shape, **model_flags}
    unknown = sorted(set(train_values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    try:
        model_cfg = LlamaConfig.from_dict(model_values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model config: {e}") from None
    cfg = TrainConfig(**train_values)
    if cfg.min_lr < 0:  # the default, or asked for: the cosine floor follows lr
        cfg.min_lr = 0.1 * cfg.lr
    validate(cfg, model_cfg)
    return cfg, model_cfg


def hf_model_shape(path: str, model_flags: dict) -> dict:
    """The model shape of --init-from-hf's config.json ({} without one): it replaces the preset's
    shape, and a shape flag that contradicts it is an error."""
    if not path:
        return {}
    try:
        shape = model_shape_from_hf(read_hf_config(path))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--init-from-hf {path}: {e}") from None
    hf_kv_heads = shape["n_kv_heads"] or shape["n_heads"]  # None means as many as n_heads
    for name, value in model_flags.items():
        theirs = hf_kv_heads if name == "n_kv_heads" else shape.get(name, value)
        if value != theirs:
            raise ConfigError(f"--{name.replace('_', '-')} {value!r} contradicts --init-from-hf {path}, whose "
                              f"{name} is {theirs!r}")
    return shape


def validate(cfg: TrainConfig, model_cfg: LlamaConfig) -> None:
    checks = [
        ("lr", cfg.lr > 0, "must be > 0"),
        ("min_lr", 0 <= cfg.min_lr <= cfg.lr, f"must be in [0, lr={cfg.lr}]"),
        ("max_steps", cfg.max_steps >= 1, "must be >= 1"),
        ("batch_size", cfg.batch_size >= 1, "must be >= 1"),
        ("grad_accum", cfg.grad_accum >= 1, "must be >= 1"),
        ("global_batch", cfg.global_batch >= 0, "must be >= 0 (0: batch_size x grad_accum x ranks)"),
        ("seq_len", 36 <= cfg.seq_len <= model_cfg.context,
         f"must be in [36, context={model_cfg.context}] (copy cases need 36 tokens)"),
        ("warmup_steps", cfg.warmup_steps >= 0, "must be >= 0"),
        ("schedule", cfg.schedule in ("cosine", "constant"), "must be 'cosine' or 'constant'"),
        ("weight_decay", cfg.weight_decay >= 0, "must be >= 0"),
        ("beta1", 0 <= cfg.beta1 < 1, "must be in [0, 1)"),
        ("beta2", 0 <= cfg.beta2 < 1, "must be in [0, 1)"),
        ("grad_clip", cfg.grad_clip >= 0, "must be >= 0 (0: no clipping)"),
        ("log_every", cfg.log_every >= 1, "must be >= 1"),
        ("eval_every", cfg.eval_every >= 0, "must be >= 0 (0: no evals)"),
        ("train_stats_every", cfg.train_stats_every >= 0, "must be >= 0 (0: never)"),
        ("ckpt_every", cfg.ckpt_every >= 0, "must be >= 0 (0: only at the end and on a signal)"),
        ("keep_ckpts", cfg.keep_ckpts >= 1, "must be >= 1"),
        ("device", cfg.device in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda"),
        ("dtype", cfg.dtype in ("auto", "fp32", "bf16"), "must be auto, fp32 or bf16"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(cfg, name)!r} {why}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but CUDA is not available on this machine")
    if cfg.tensorboard and not tensorboard_available():
        raise ConfigError("--tensorboard, but the tensorboard package is not installed (pip install -e '.[tb]')")


def finish_config(cfg: TrainConfig, model_cfg: LlamaConfig, world: int, data_vocab: int) -> None:
    """Checks that need the number of ranks and the data: run once the process group is up."""
    if cfg.global_batch:
        per_step = cfg.batch_size * world
        if cfg.global_batch % per_step:
            raise ConfigError(f"--global-batch {cfg.global_batch} is not divisible by batch_size x ranks = "
                              f"{cfg.batch_size} x {world}")
        cfg.grad_accum = cfg.global_batch // per_step
    if data_vocab > model_cfg.vocab_size:
        raise ConfigError(f"--data has vocab_size {data_vocab}, larger than the model's vocab_size "
                          f"{model_cfg.vocab_size}")


# ---------------------------------------------------------------------------------------------
# Pieces of the loop


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then constant or cosine decay to cfg.min_lr at max_steps.

    The schedule is a pure function of the step, so the scheduler's whole state is the step.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only, not on norm weights or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=fused or None)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather(obj, world: int) -> list:
    """Every rank's `obj`, on every rank (one entry when not distributed)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def model_shape(model_config: dict) -> dict:
    """A model config without its backend choices: a run may resume on other kernels (say CPU -> GPU)."""
    return {k: v for k, v in model_config.items() if k not in ("attention", "norm", "mlp")}


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal digests mean bit-identical models."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)).items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks once per step (then checkpoints and exits)."""

    def __init__(self):
        self.received: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signum


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, model_cfg = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # --- distributed set-up: torchrun sets RANK/WORLD_SIZE; plain `python train.py` is rank 0 of 1
    distributed = "RANK" in os.environ
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if distributed:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    master = rank == 0
    try:
        return train(cfg, model_cfg, device, rank, world, master)
    except ConfigError as e:
        if master:
            print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            # FSDP2's module state and DTensor meshes hold the process group in reference cycles;
            # collected only at interpreter exit, its gloo threads were torn down mid-shutdown and
            # a rank aborted ("terminate called without an active exception", 1 run in 16)
            gc.collect()
            dist.destroy_process_group()


def train(cfg: TrainConfig, model_cfg: LlamaConfig, device, rank: int, world: int, master: bool) -> int:
    log = (lambda *a: None) if not master else (lambda *a: print(*a, flush=True))

    # --- data: the embedded corpus is prepared on first use (rank 0 builds, the others wait)
    if cfg.data:
        data_dir = Path(cfg.data)
        if not (data_dir / "meta.json").is_file():
            raise ConfigError(f"--data {data_dir}: not a prepared corpus (no meta.json); "
                              "make one with `python -m data.prepare`")
    else:
        # the model's vocab picks the tokenizer: 257 is raw bytes, anything else a BPE of that size
        corpus = {"bytes_level": model_cfg.vocab_size == 257, "vocab_size": model_cfg.vocab_size}
        if master:
            ensure_default_corpus(**corpus, progress=not cfg.quiet)
        if world > 1:
            dist.barrier()
        data_dir = ensure_default_corpus(**corpus, progress=False)
    meta = json.loads((data_dir / "meta.json").read_text())
    finish_config(cfg, model_cfg, world, meta["vocab_size"])
    train_data, val_data = TokenDataset(data_dir / "train"), TokenDataset(data_dir / "val")
    sampler = WindowSampler(train_data, cfg.seq_len + 1, seed=cfg.seed, rank=rank, world_size=world)

    # --- run directory and resume
    run_dir = Path(cfg.out or f"runs/{cfg.preset}")
    if master:  # held until this process ends; a second trainer on the same --out stops here
        try:
            run_dir_lock = lock_run_dir(run_dir)  # noqa: F841 (the open file is the lock)
        except RunDirInUse as e:
            raise ConfigError(f"--out {e}: wait for it to finish or choose another --out") from None
    checkpoints = list_checkpoints(run_dir)
    resume = torch.load(checkpoints[-1], map_location="cpu", weights_only=False) if checkpoints else None
    if resume is not None and model_shape(resume["model_config"]) != model_shape(model_cfg.to_dict()):
        raise ConfigError(f"--out {run_dir} holds a run of another model shape; choose another --out")
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {**asdict(cfg), "model": model_cfg.to_dict(), "data_dir": str(data_dir), "world_size": world,
                    "data_meta": meta}
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")

    # --- model, optimizer
    torch.manual_seed(cfg.seed)
    model = Llama(model_cfg).to(device)
    if cfg.init_from_hf and resume is None:  # a resumed run continues from its checkpoint instead
        load_hf_weights(model, cfg.init_from_hf)
        log(f"initialised from the weights in {cfg.init_from_hf}")
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    train_model = model
    if world > 1 and not cfg.fsdp:
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    if cfg.compile:
        train_model = torch.compile(train_model)
    optimizer = make_optimizer(model, cfg, fused=device.type == "cuda")
    # auto = bf16 autocast on CUDA and on the CPU alike: on the 2-core CPU it is 1.3x faster than
    # fp32 for `tiny` (8.2 vs 6.1 steps/s, one thread) and it is what showed the copy surge.
    use_bf16 = cfg.dtype in ("auto", "bf16")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)

    step = 0
    if resume is not None:
        set_model_state_dict(model, resume["model"], options=full)
        set_optimizer_state_dict(model, optimizer, resume["optimizer"], options=full)
        sampler.load_state_dict(resume["sampler"][rank])
        set_rng_state(resume["rng"][rank])
        step = resume["step"]
        log(f"resuming {run_dir} from step {step} ({checkpoints[-1].name})")
    del resume

    metrics_path = run_dir / "metrics.jsonl"
    if master:  # drop what was logged after the checkpoint we resume from (and a line cut by a kill)
        kept = [r for r in read_metrics(metrics_path)[0] if r["step"] <= step] if step else []
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tensorboard = None
    if master and (cfg.tensorboard if cfg.tensorboard is not None else tensorboard_available()):
        tensorboard = TensorBoardLog(run_dir / "tb", purge_step=step + 1 if step else None)

    def save_checkpoint() -> bool:
        """Write a checkpoint, unless a parameter is not finite (then write nothing, return False):
        a diverged update must never replace the last good checkpoint."""
        finite = torch.tensor(float(all(bool(torch.isfinite(p).all()) for p in model.parameters())), device=device)
        if world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # FSDP: each rank holds a shard
        if not finite:
            return False
        state = {
            "model": get_model_state_dict(model, options=full),
            "optimizer": get_optimizer_state_dict(model, optimizer, options=full),
            "sampler": gather(sampler.state_dict(), world),
            "rng": gather(rng_state(), world),
        }
        if master:
            state.update(step=step, config=asdict(cfg), model_config=model_cfg.to_dict())
            save_atomically(state, checkpoint_path(run_dir, step))
            for old in list_checkpoints(run_dir)[: -cfg.keep_ckpts]:
                old.unlink()
        if world > 1:
            dist.barrier()
        return True

    def diverged(what: str) -> int:
        last = list_checkpoints(run_dir)
        log(f"error: {what} at step {step + 1}; stopping. The last good checkpoint is "
            f"{last[-1] if last else '(none yet)'}; lower --lr or check the data.")
        return 3

    # --- evals: fixed copy cases stored in the run directory, repeated random tokens, val loss.
    # Every rank evaluates (an FSDP forward is a collective, so all ranks must take part); the
    # inputs are deterministic, so all ranks compute the same numbers and rank 0 logs them.
    eot = meta["tokenizer"]["eot_id"]
    copy_cases = load_or_make_copy_cases(run_dir / "copy_cases.npz", val_data, cfg.seq_len, eot, save=master)
    repeat_tokens, repeat_periods = make_repeat_batch(meta["vocab_size"], cfg.seq_len)
    val_windows = WindowSampler(val_data, cfg.seq_len + 1, seed=999).next_batch(32)

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad(), autocast:
            val = torch.as_tensor(val_windows, device=device)
            result = {"val_loss": float(model.loss(val[:, :-1], val[:, 1:])),
                      **copy_metrics(model, copy_cases, device),
                      **repeat_metrics(model, repeat_tokens, repeat_periods, device),
                      **text_scores(model, val[:, :-1], device)}
        model.train()
        return result

    # --- the loop
    stop = StopSignal()
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world
    bar = None
    if master and not cfg.quiet:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True)
    t_start, t_last = time.time(), time.time()
    last_copy, last_tokens_per_s = float("nan"), float("nan")  # shown in the progress bar
    model.train()
    while step < cfg.max_steps:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        train_stats = None
        for micro in range(cfg.grad_accum):
            batch = torch.as_tensor(sampler.next_batch(cfg.batch_size), device=device)
            sync = micro == cfg.grad_accum - 1 or world == 1 or cfg.fsdp
            with (contextlib.nullcontext() if sync else train_model.no_sync()), autocast:
                if micro == 0 and cfg.train_stats_every and (step + 1) % cfg.train_stats_every == 0:
                    targets = text_targets(batch[:, :-1])
                    logits, stats = train_model(batch[:, :-1], attention_targets=targets)
                    train_stats = batch_text_scores(stats, targets)
                else:
                    logits = train_model(batch[:, :-1])
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        # one all-reduce carries the loss and the stop flag, so every rank decides alike
        stop_flag = torch.tensor(float(stop.received is not None), device=device)
        flags = torch.stack([loss_sum / cfg.grad_accum, stop_flag])
        if world > 1:
            dist.all_reduce(flags)
            flags[0] /= world
        step_loss, stopping = float(flags[0]), bool(flags[1] > 0)
        if not math.isfinite(step_loss):
            return diverged(f"loss is {step_loss}")
        if not math.isfinite(float(grad_norm)):  # stop before the update poisons the parameters
            return diverged(f"gradient norm is {float(grad_norm)}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step == CRASH_AT_STEP:
            os.kill(os.getpid(), signal.SIGKILL)

        record = None
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.time()
            interval = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            record = {"step": step, "tokens": step * tokens_per_step, "loss": step_loss, "lr": lr,
                      "grad_norm": float(grad_norm), "tokens_per_s": interval * tokens_per_step / (now - t_last),
                      "elapsed_s": now - t_start}
            t_last = now
        if train_stats is not None:
            record = {**(record or {"step": step, "tokens": step * tokens_per_step, "loss": step_loss}),
                      **train_stats}
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            record = {**(record or {"step": step, "tokens": step * tokens_per_step, "loss": step_loss}),
                      **evaluate()}
            last_copy = record["copy_acc"]
            t_last = time.time()  # evals do not count against throughput
        if master and record is not None:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if tensorboard is not None:  # the same record, so both hold the same numbers
                tensorboard.write(record)
        if bar is not None:
            bar.update(1)
            if record is not None and "tokens_per_s" in record:
                last_tokens_per_s = record["tokens_per_s"]
            bar.set_postfix(loss=f"{step_loss:.3f}", copy=f"{last_copy:.2f}", tok_s=f"{last_tokens_per_s:.0f}",
                            refresh=False)
        if stopping or step == cfg.max_steps or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
            if not save_checkpoint():
                step -= 1  # the message names the step whose update diverged
                return diverged("parameters are not finite after the update")
        if stopping:
            log(f"\nstopped by signal at step {step}; checkpoint saved in {run_dir / 'checkpoints'}")
            return 0
    if bar is not None:
        bar.close()
    if tensorboard is not None:
        tensorboard.close()

    # every rank's parameters must be identical after DDP training: check it rather than assume it
    digests = gather(parameter_digest(model), world)
    if master:
        (run_dir / "final.json").write_text(json.dumps({"step": step, "param_sha256_per_rank": digests}) + "\n")
        if len(set(digests)) != 1:
            log(f"error: parameters differ across ranks after training: {digests}")
            return 4
    if master:
        records = read_metrics(metrics_path)[0]
        log(run_summary(records, wall_s=time.time() - t_start))
        if any("copy_gain" in r for r in records):
            plot_curves(records, run_dir / "curves.png", title=f"{run_dir.name} ({cfg.preset})")
            log(f"curves: {run_dir / 'curves.png'}")
    if world > 1:  # the ranks leave together: none tears its connections down while rank 0 still writes
        dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
