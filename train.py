"""Train a grokcopy Llama and watch copying emerge.

    torchrun --standalone --nproc-per-node=1 train.py                 # the embedded default (CPU)
    torchrun --standalone --nproc-per-node=8 train.py --preset paper-162m --data DIR
    python train.py --preset tiny --max-steps 100 --out runs/try       # one process, no torchrun

Configuration: `--preset NAME` (model shape and recipe), then `--config FILE.toml` (flat keys named
like the flags, with underscores), then flags; later ones win. Re-running a command on an existing
run directory resumes from its latest good checkpoint; a recipe that differs from the checkpoint's is
refused unless `--change-recipe` says it is meant (then config.json records the change and its step).
DDP over torch.distributed (gloo on CPU, nccl on CUDA); optional FSDP2 (`--fsdp`) and `--compile`.

The run directory's format belongs to model/run_dir.py (RunDir).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import random
import signal
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NoReturn

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

from grokcopy.cli import run_cli
from grokcopy.data import Corpus, CorpusError, DataError, WindowSampler, open_corpus
from grokcopy.data.corpus import corpus_identity, identity_changes, meta_identity
from grokcopy.data.prepare import ensure_default_corpus
from grokcopy.evals import metric_keys as mk
from grokcopy.evals.copying import (
    MIN_SEQ_LEN,
    CopyCases,
    copy_metrics,
    load_or_make_copy_cases,
    make_repeat_batch,
    repeat_metrics,
    trained_tokens,
)
from grokcopy.evals.curves import plot_curves, race_warning, run_summary
from grokcopy.evals.noise_scale import NoiseScaleMeter
from grokcopy.evals.onsets import COPY_SURGE_LEVEL, copy_token_gain
from grokcopy.evals.scores import batch_text_scores, text_scores, text_targets
from grokcopy.evals.tensorboard import TensorBoardLog, tensorboard_available
from grokcopy.evals.wandb_log import WandbLog, wandb_available
from grokcopy.model import PRESETS, Llama, LlamaConfig
from grokcopy.model.config import ConfigError, TrainConfig, check_type, field_types, scalar_type
from grokcopy.model.hf import load_hf_weights, model_shape_from_hf, read_hf_config
from grokcopy.model.run_dir import CheckpointError, MetricsLog, NotARunError, RunDir, RunDirInUse

MODEL_FIELDS = {f.name for f in fields(LlamaConfig)}


# What a resumed run may change freely (how it is run and logged); anything else in TrainConfig is
# the recipe, which changes only with --change-recipe (and never the data order's world size).
RUN_FIELDS = {"out", "max_steps", "log_every", "eval_every", "train_stats_every", "ckpt_every", "keep_ckpts",
              "device", "dtype", "compile", "deterministic", "fsdp", "quiet", "init_from_hf", "tensorboard",
              "change_recipe", "restart", "preset", "global_batch", "wandb", "wandb_project"}


# ---------------------------------------------------------------------------------------------
# Configuration: preset < config file < flags, each value checked against its annotated type

FLAG_HELP = {
    "change_recipe": "on resume: continue with recipe values (LR, batch, data, ...) or a corpus that differ from "
                     "the checkpoint's; the change is recorded in config.json",
    "restart": "start over in an --out that holds an earlier run's config.json, metrics.jsonl or final.json but "
               "no checkpoint (its records are dropped; lines of yours in metrics.jsonl are kept). Without it "
               "such an --out is refused. A run with checkpoints is never restarted: it resumes",
}


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, LlamaConfig]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="TOML file of field = value (flags override it)")
    hints = {**field_types(TrainConfig), **field_types(LlamaConfig)}
    for f in [*fields(TrainConfig), *fields(LlamaConfig)]:
        flag = "--" + f.name.replace("_", "-")
        kind, _ = scalar_type(hints[f.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=FLAG_HELP.get(f.name))
        else:
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper())
    args = vars(parser.parse_args(argv))
    overrides = {}
    config_file = args.pop("config")
    if config_file:
        overrides.update(load_toml(Path(config_file)))
    overrides.update({k: v for k, v in args.items() if v is not None})
    return resolve_config(overrides)


def load_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    hints = {**field_types(TrainConfig), **field_types(LlamaConfig)}
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown}")
    return {k: check_type(k, v, hints[k], f"--config {path}:") for k, v in values.items()}


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
    if cfg.min_lr is None:  # the cosine floor follows lr
        cfg.min_lr = cfg.min_lr_ratio * cfg.lr
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
    hf_kv_heads = LlamaConfig(**{**LlamaConfig().to_dict(), **shape}).kv_heads
    for name, value in model_flags.items():
        theirs = hf_kv_heads if name == "n_kv_heads" else shape.get(name, value)
        if value != theirs:
            raise ConfigError(f"--{name.replace('_', '-')} {value!r} contradicts --init-from-hf {path}, whose "
                              f"{name} is {theirs!r}")
    return shape


def validate(cfg: TrainConfig, model_cfg: LlamaConfig) -> None:
    hints = field_types(TrainConfig)
    for f in fields(TrainConfig):  # values from a preset or a caller are typed too, not only the file's
        check_type(f.name, getattr(cfg, f.name), hints[f.name], "--" + f.name.replace("_", "-") + ":")
    # every float must be a number: nan fails each range check below, but inf passes `> 0` (an LR
    # of inf trains to nan in one step), so finiteness is checked for all of them, model fields too
    for name, value in [*asdict(cfg).items(), *model_cfg.to_dict().items()]:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} {value!r} must be a finite number")
    checks = [
        ("lr", cfg.lr > 0, "must be > 0"),
        ("min_lr_ratio", 0 <= cfg.min_lr_ratio <= 1, "must be in [0, 1]"),  # before the min_lr it sets
        ("min_lr", 0 <= cfg.min_lr <= cfg.lr, f"must be in [0, lr={cfg.lr}]"),
        ("max_steps", cfg.max_steps >= 1, "must be >= 1"),
        ("batch_size", cfg.batch_size >= 1, "must be >= 1"),
        ("grad_accum", cfg.grad_accum >= 1, "must be >= 1"),
        ("global_batch", cfg.global_batch >= 0, "must be >= 0 (0: batch_size x grad_accum x ranks)"),
        ("seq_len", MIN_SEQ_LEN <= cfg.seq_len <= model_cfg.context,
         f"must be in [{MIN_SEQ_LEN}, context={model_cfg.context}] (copy cases need {MIN_SEQ_LEN} tokens)"),
        ("warmup_steps", cfg.warmup_steps >= 0, "must be >= 0"),
        ("schedule", cfg.schedule in ("cosine", "constant"), "must be 'cosine' or 'constant'"),
        ("weight_decay", cfg.weight_decay >= 0, "must be >= 0"),
        ("beta1", 0 <= cfg.beta1 < 1, "must be in [0, 1)"),
        ("beta2", 0 <= cfg.beta2 < 1, "must be in [0, 1)"),
        ("eps", cfg.eps > 0, "must be > 0"),
        ("grad_clip", cfg.grad_clip >= 0, "must be >= 0 (0: no clipping)"),
        ("seed", cfg.seed >= 0, "must be >= 0"),
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
    if cfg.wandb and not wandb_available():
        raise ConfigError("--wandb, but the wandb package is not installed (pip install -e '.[wandb]')")


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


def recipe_changes(saved: dict, cfg: TrainConfig) -> dict[str, list]:
    """{field: [checkpoint's value, this run's value]} for every recipe field that differs."""
    now = asdict(cfg)
    return {k: [v, now[k]] for k, v in saved.items() if k in now and k not in RUN_FIELDS and v != now[k]}


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
    """A model config without its backend choices (a run may resume on other kernels, say CPU -> GPU),
    with the defaults of fields added since it was written (a checkpoint from before nope_every)."""
    full = LlamaConfig.from_dict(model_config).to_dict()
    return {k: v for k, v in full.items() if k not in ("attention", "norm", "mlp", "loss")}


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


def load_corpus(cfg: TrainConfig, model_cfg: LlamaConfig, world: int, master: bool) -> tuple[Path, Corpus]:
    """--data, or the embedded corpus, prepared on first use (rank 0 builds, the others wait)."""
    if cfg.data:
        data_dir = Path(cfg.data)
        if not (data_dir / "meta.json").is_file():
            raise ConfigError(f"--data {data_dir}: not a prepared corpus (no meta.json); "
                              "make one with `python -m grokcopy.data.prepare`")
    else:
        # the model's vocab picks the tokenizer: 257 is raw bytes, anything else a BPE of that size
        corpus = {"bytes_level": model_cfg.vocab_size == 257, "vocab_size": model_cfg.vocab_size}
        if master:
            ensure_default_corpus(**corpus, progress=not cfg.quiet)
        if world > 1:
            dist.barrier()
        data_dir = ensure_default_corpus(**corpus, progress=False)
    corpus = open_corpus(data_dir)  # meta.json checked against the shard headers before anything trains
    finish_config(cfg, model_cfg, world, corpus.meta["vocab_size"])
    return data_dir, corpus


@dataclass
class Resume:
    """Where a run continues: nothing (a fresh run) or a verified checkpoint's state."""

    state: dict | None
    step: int = 0
    tokens: int = 0


def open_run_dir(cfg: TrainConfig, model_cfg: LlamaConfig, data_dir: Path, corpus: Corpus, world: int,
                 master: bool, log) -> tuple[RunDir, Resume]:
    """Lock the run directory (rank 0; a non-empty directory that is not a grokcopy run is refused
    before anything in it is touched), load its newest good checkpoint and check that this run may
    continue it, on the same corpus; refuse a fresh start over an earlier run's history unless
    --restart; write config.json and cut metrics.jsonl back to the checkpoint's step."""
    run = RunDir(cfg.out or f"runs/{cfg.preset}")
    # Rank 0 alone decides what --out holds: the other ranks would look while rank 0 writes there (its
    # lock and marker, a fresh run's config.json) and could refuse a run rank 0 accepted; a refusal on
    # rank 0 ends them all (torchrun stops the other ranks when one fails).
    try:
        if master:  # held until this process ends; a second trainer on the same --out stops here
            run.lock()
    except RunDirInUse as e:
        raise ConfigError(f"--out {e}: wait for it to finish or choose another --out") from None
    except NotARunError as e:
        raise ConfigError(f"--out {e}") from None
    run.corpus = corpus_identity(corpus)  # stamped into every checkpoint (RunDir.save_checkpoint)
    resume, checkpoints = Resume(None), run.checkpoints()
    if checkpoints and cfg.restart:
        raise ConfigError(f"--restart: --out {run.path} has checkpoints (the newest {checkpoints[-1].path.name}), so "
                          "this command resumes it; grokcopy never deletes a checkpoint to start over: choose "
                          "another --out, or move checkpoints/ away yourself")
    if checkpoints:
        try:
            state, checkpoint = run.load_state(warn=log)
        except CheckpointError as e:
            raise ConfigError(f"--out {run.path}: {e}; move the damaged files away to start afresh") from None
        resume = Resume(state, state["step"], state.get("tokens", state["step"] * tokens_per_step(cfg, world)))
        check_resume(cfg, model_cfg, state, world, run, log)
    elif master and run.history() and not cfg.restart:
        raise ConfigError(f"--out {run.path} holds an earlier run ({', '.join(run.history())}) but no checkpoint to "
                          "resume from; pass --restart to start it over (its records are dropped, lines of yours in "
                          "metrics.jsonl kept), or choose another --out")
    if master:
        if resume.state is None:
            run.clear_history()  # --restart, or nothing there: a fresh run's files start empty
        history = run.read_config().get("recipe_changes", []) if resume.state and run.config_path.is_file() else []
        changes = recipe_changes(resume.state["config"], cfg) if resume.state else {}
        old_corpus = recorded_corpus(resume.state, run) if resume.state else None
        if old_corpus and old_corpus["sha256"] != run.corpus["sha256"]:
            changes["corpus"] = [old_corpus["sha256"], run.corpus["sha256"]]
        if changes:
            history = [*history, {"step": resume.step, "changes": changes}]
        run.write_config({**asdict(cfg), "model": model_cfg.to_dict(), "data_dir": str(data_dir),
                          "world_size": world, "data_meta": corpus.meta, "corpus": run.corpus,
                          "recipe_changes": history})
        run.truncate_metrics(resume.step)  # drops grokcopy's records after the checkpoint (and a cut one)
    return run, resume


def recorded_corpus(state: dict, run: RunDir) -> dict | None:
    """The identity of the corpus a checkpoint trained on: stamped in it, or for a checkpoint from
    before the stamp, what config.json recorded (its corpus, or the shard list of its data_meta)."""
    if state.get("corpus"):
        return state["corpus"]
    try:
        config = run.read_config()
    except NotARunError:
        return None
    return config.get("corpus") or meta_identity(config.get("data_meta", {}))


def check_resume(cfg: TrainConfig, model_cfg: LlamaConfig, state: dict, world: int, run: RunDir, log) -> None:
    theirs, ours = model_shape(state["model_config"]), model_shape(model_cfg.to_dict())
    if theirs != ours:
        listed = ", ".join(f"{k} {theirs[k]!r} -> {ours[k]!r}" for k in theirs if theirs[k] != ours[k])
        raise ConfigError(f"--out {run.path} holds a run of another model shape ({listed}); choose another --out")
    if len(state["sampler"]) != world:
        raise ConfigError(f"--out {run.path} was trained on {len(state['sampler'])} rank(s), this run has {world}: "
                          "resume with the same number of processes")
    if cfg.max_steps < state["step"]:
        raise ConfigError(f"--max-steps {cfg.max_steps} is below the step the run has reached ({state['step']}) "
                          f"in {run.path}: raise it to continue, or choose another --out")
    changes = recipe_changes(state["config"], cfg)
    if changes and not cfg.change_recipe:
        listed = ", ".join(f"--{k.replace('_', '-')} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigError(f"--out {run.path} was trained with another recipe ({listed}); pass the same values, "
                          "or --change-recipe to continue with these (recorded in config.json)")
    old = recorded_corpus(state, run)
    if old is None:
        log(f"note: {run.path} does not record which corpus it trained on (an older grokcopy): the data cannot be "
            "checked against it this time; from now on it is recorded")
    elif old["sha256"] != run.corpus["sha256"] and not cfg.change_recipe:
        raise ConfigError(f"--data {cfg.data or '(the default corpus)'} is not the corpus {run.path} trained on "
                          f"({identity_changes(old, run.corpus)} differ: re-prepared or replaced); pass the corpus "
                          "the run trained on, or --change-recipe to continue on this one (recorded in config.json)")


def tokens_per_step(cfg: TrainConfig, world: int) -> int:
    return cfg.batch_size * cfg.seq_len * cfg.grad_accum * world


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX) with PyTorch's AVX512
    kernels on (ATEN_CPU_CAPABILITY can lower them). The probes are private torch.cpu functions, so a
    torch without them reads as "no", which costs speed, never correctness."""
    def probe(name: str) -> bool:
        return bool(getattr(torch.cpu, name, lambda: False)())

    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and (
        probe("_is_avx512_bf16_supported") or probe("_is_amx_tile_supported"))


def forward_dtype(flag: str, device: torch.device) -> torch.dtype:
    """The forward pass's compute dtype for --dtype: bf16 (under autocast) or fp32.

    `auto` is bf16 on CUDA, and on a CPU only where the CPU has native bf16. Elsewhere oneDNN emulates
    bf16, and `tiny` trained 6.6x slower in bf16 than in fp32 (1.5k against 9.8k tokens/s, one thread,
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 on an AVX512-BF16 EPYC): the README's default
    run would take some 45 minutes instead of 7 on CPUs without it (Intel's client CPUs, AMD's
    before Zen 4)."""
    if flag == "fp32" or (flag == "auto" and device.type == "cpu" and not cpu_has_native_bf16()):
        return torch.float32
    return torch.bfloat16


def use_deterministic_algorithms(cfg: TrainConfig, device: torch.device, log) -> None:
    """Make every kernel of the step sum in a fixed order, so that a run and its kill -9 + resume are
    bit-identical at a fixed thread count (--deterministic; default: on for the CPU only).

    Eager CPU kernels already are. The one compiled op that is not (found by bisection, issue 28):
    inductor fuses the embedding's backward (a scatter-add of the token gradients into the rows of
    their tokens) into the first norm's backward and writes it with `atomic_add_vec` inside an
    OpenMP loop, so at two threads or more the float additions to a row shared by two threads land
    in a run-dependent order. In deterministic mode inductor lowers that index_put to aten's, which
    accumulates serially on the CPU; nothing else in the compiled step changes. warn_only: an op
    without a deterministic kernel warns instead of stopping a run, and uninitialised memory is not
    filled (torch.empty stays free; nothing here reads memory it did not write).

    On CUDA it also needs cuBLAS's fixed workspace (set here, before cuBLAS starts), inductor's
    deterministic mode (no benchmark-chosen reduction configs), and the Triton kernels' first config
    instead of an autotuned one (GROKCOPY_AUTOTUNE=0, read when the kernels are imported, so it must
    be in the environment: we only warn)."""
    on = cfg.deterministic if cfg.deterministic is not None else device.type == "cpu"
    if not on:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        import torch._inductor.config as inductor_config

        if hasattr(inductor_config, "deterministic"):  # torch >= 2.6
            inductor_config.deterministic = True
        if os.environ.get("GROKCOPY_AUTOTUNE", "1") != "0":
            log("note: --deterministic on CUDA: set GROKCOPY_AUTOTUNE=0 too, or the Triton kernels' autotuner "
                "may pick another launch config (another summation order) after a resume")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def build_model(cfg: TrainConfig, model_cfg: LlamaConfig, device: torch.device, world: int, fresh: bool, log):
    """(model, the module the loop calls: DDP / FSDP2 / compiled, optimizer), seeded from cfg.seed."""
    torch.manual_seed(cfg.seed)
    model = Llama(model_cfg).to(device)
    if cfg.init_from_hf and fresh:  # a resumed run continues from its checkpoint instead
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
        missing = compile_unavailable(device)
        if missing:
            log(f"note: --compile is on but {missing}; training without it (slower), --no-compile silences this")
        else:
            log("torch.compile: the first step compiles the model (about 30 s for tiny on a CPU)")
            train_model = torch.compile(train_model)
    return model, train_model, make_optimizer(model, cfg, fused=device.type == "cuda")


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None. On the CPU inductor writes C++ and needs a compiler
    (g++, or $CXX); `tiny` compiles by default, and a machine without one must still train."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor}"
    if device.type == "cpu":
        try:
            from torch._inductor import cpp_builder

            cpp_builder.get_cpp_compiler()
        except Exception:  # InvalidCxxCompiler, or a torch that moved the function: train eagerly
            return "no C++ compiler was found for inductor on the CPU (install g++ or set CXX)"
    return None


FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def restore(model, optimizer, sampler: WindowSampler, state: dict, rank: int) -> None:
    set_model_state_dict(model, state["model"], options=FULL_STATE)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=FULL_STATE)
    sampler.load_state_dict(state["sampler"][rank])
    set_rng_state(state["rng"][rank])


def save_checkpoint(run: RunDir, model, optimizer, sampler, cfg: TrainConfig, model_cfg: LlamaConfig,
                    step: int, tokens: int, world: int, master: bool) -> bool:
    """Write a checkpoint, unless a parameter is not finite (then write nothing, return False):
    a diverged update must never replace the last good checkpoint."""
    device = next(model.parameters()).device
    finite = torch.tensor(float(all(bool(torch.isfinite(p).all()) for p in model.parameters())), device=device)
    if world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # FSDP: each rank holds a shard
    if not finite:
        return False
    state = {
        "model": get_model_state_dict(model, options=FULL_STATE),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=FULL_STATE),
        "sampler": gather(sampler.state_dict(), world),
        "rng": gather(rng_state(), world),
    }
    if master:
        state.update(step=step, tokens=tokens, config=asdict(cfg), model_config=model_cfg.to_dict())
        run.save_checkpoint(state, step, keep=cfg.keep_ckpts)
    if world > 1:
        dist.barrier()
    return True


class EvalSet:
    """The fixed eval inputs: copy cases stored in the run directory, repeated random tokens and 32
    validation windows. Every rank evaluates (an FSDP forward is a collective, so all ranks must
    take part); the inputs are deterministic, so all ranks compute the same numbers."""

    def __init__(self, run: RunDir, corpus: Corpus, seq_len: int, master: bool, log, sink: bool = False):
        eot = corpus.meta["tokenizer"]["eot_id"]
        self.copy_cases = load_or_make_copy_cases(run.copy_cases_path, corpus.val, seq_len, eot, save=master,
                                                  warn=log)
        # with a sink, the same copy cases get it in front (their input is then seq_len tokens long),
        # and the repeated-token sequences are made one token shorter to make room for it
        pool = trained_tokens(corpus.train, corpus.meta["vocab_size"], exclude=eot, at_least=seq_len // 2)
        self.repeat_tokens, self.repeat_periods = make_repeat_batch(corpus.meta["vocab_size"], seq_len - sink,
                                                                    tokens=pool)
        if sink:
            front = lambda a: np.concatenate([np.full((len(a), 1), eot, dtype=np.int64), a], axis=1)  # noqa: E731
            self.copy_cases = CopyCases(front(self.copy_cases.copy), front(self.copy_cases.control))
            self.repeat_tokens = torch.as_tensor(front(self.repeat_tokens.numpy()))
        self.val_windows = WindowSampler(corpus.val, seq_len + 1, seed=999, sink=eot if sink else None).next_batch(32)


@torch.no_grad()
def evaluate(model: Llama, evals: EvalSet, autocast, device: torch.device) -> dict:
    """Val loss, the copy metrics, repeated-token accuracy and induction scores, and the text scores."""
    model.eval()
    with autocast:
        val = torch.as_tensor(evals.val_windows, device=device)
        result = {mk.VAL_LOSS: float(model.loss(val[:, :-1], val[:, 1:])),
                  **copy_metrics(model, evals.copy_cases, device),
                  **repeat_metrics(model, evals.repeat_tokens, evals.repeat_periods, device),
                  **text_scores(model, val[:, :-1], device)}
    model.train()
    return result


@dataclass
class StepResult:
    """One optimizer step's numbers, left on the device: reading one (`loss`, ...) waits for the step
    to finish, so the loop reads them only at read steps (`reads_after`), all pending steps in one
    transfer (`read_steps`).

    values: [loss, grad_norm, first_micro_grad_sq, stop] fp32, agreed across ranks. grad_norm is the
    accumulated gradient's, before clipping; first_micro_grad_sq is |g|^2 of the first micro-batch's
    gradient alone (nan with grad_accum 1); stop > 0: a rank received SIGTERM/SIGINT (only on steps
    that carried the flag, see train_step), so every rank checkpoints and leaves after this step.
    """

    values: torch.Tensor
    train_stats: dict | None
    host: list[float] | None = None  # `values` once read

    def read(self) -> list[float]:
        if self.host is None:
            self.host = self.values.tolist()
        return self.host

    @property
    def loss(self) -> float:
        return self.read()[0]

    @property
    def grad_norm(self) -> float:
        return self.read()[1]

    @property
    def first_micro_grad_sq(self) -> float:
        return self.read()[2]

    @property
    def stop(self) -> bool:
        return self.read()[3] > 0

    @property
    def finite(self) -> bool:
        """Whether the update was taken (train_step skips it when the loss or gradient norm is not finite)."""
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def read_steps(results: list[StepResult]) -> None:
    """Fetch the values of every step in `results` with one device-to-host transfer."""
    todo = [r for r in results if r.host is None]
    if todo:
        for r, row in zip(todo, torch.stack([r.values for r in todo]).tolist(), strict=True):
            r.host = row


def reads_after(step: int, cfg: TrainConfig) -> bool:
    """Whether the loop reads the device after completing `step` (1-based): at log, eval, train-stats and
    checkpoint steps and the last step. Every other step runs without a host sync."""
    return (step % cfg.log_every == 0 or step == cfg.max_steps
            or any(every and step % every == 0 for every in (cfg.eval_every, cfg.train_stats_every, cfg.ckpt_every)))


def noise_scale_meter(cfg: TrainConfig, world: int) -> NoiseScaleMeter | None:
    """The gradient-noise-scale meter (evals/noise_scale.py), when grad_accum gives two batch sizes."""
    if cfg.grad_accum < 2:
        return None
    small = cfg.batch_size * (world if cfg.fsdp else 1)  # FSDP reduces every micro-step; DDP only the last
    return NoiseScaleMeter(small, cfg.batch_size * cfg.grad_accum * world)


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of `t`: FSDP2's norms are DTensors (full_tensor is a collective on the device)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def grad_sq(model) -> torch.Tensor:
    """|g|^2 of the current gradients, fp32 [] on the device (not read: no host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return full(torch.nn.utils.get_total_norm(grads)).float() ** 2


def guarded_step(optimizer: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """optimizer.step() where `ok` (bool [] on the device) holds, else nothing: never a poisoned update.

    A fused AdamW (CUDA) takes the decision on the device: its kernel skips the update where
    `found_inf` is 1 and undoes the step count, the mechanism GradScaler uses, so no host sync.
    Other optimizers read `ok` (a sync, free on the CPU, the only place train.py makes them).
    """
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~ok).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(ok):
        optimizer.step()


def train_step(train_model, model, optimizer, sampler: WindowSampler, cfg: TrainConfig, step: int, autocast,
               stop: StopSignal | None, world: int) -> StepResult:
    """One optimizer step over grad_accum micro-batches, with no host sync on CUDA: the loss, the
    gradient norm and the decision to update stay on the device (StepResult). The update is skipped
    when the loss or the gradient norm is not finite (the loop stops the run at its next read), so
    the parameters are never poisoned. `stop` is given on the steps the loop reads (None on the
    others): its flag is then agreed across ranks in the step's one all-reduce."""
    device = next(model.parameters()).device
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    loss_sum, train_stats = torch.zeros((), device=device), None
    first_sq = torch.full((), float("nan"), device=device)
    for micro in range(cfg.grad_accum):
        windows = sampler.next_batch(cfg.batch_size)
        if device.type == "cuda":  # a pageable copy would wait for the queued GPU work: pin, copy async
            batch = torch.from_numpy(windows).pin_memory().to(device, non_blocking=True)
        else:
            batch = torch.as_tensor(windows, device=device)
        sync = micro == cfg.grad_accum - 1 or world == 1 or cfg.fsdp
        with (contextlib.nullcontext() if sync else train_model.no_sync()), autocast:
            if micro == 0 and cfg.train_stats_every and (step + 1) % cfg.train_stats_every == 0:
                targets = text_targets(batch[:, :-1])
                loss, stats = train_model(batch[:, :-1], attention_targets=targets, targets=batch[:, 1:])
                train_stats = batch_text_scores(stats, targets)
            else:
                loss = train_model(batch[:, :-1], targets=batch[:, 1:])
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach()
        if micro == 0 and cfg.grad_accum > 1:  # the noise scale's small batch: this micro-batch alone
            first_sq = grad_sq(model) * cfg.grad_accum**2
    grad_norm = full(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
    # The stop flag crosses from the host only on read steps (a host-to-device copy waits for the
    # queue): a signal is acted on at the next read step, at most log_every - 1 steps after it
    # arrived (about 1 s for paper-162m at log_every 10 on an H100), well inside a scheduler's grace.
    stop_flag = torch.zeros((), device=device) if stop is None else \
        torch.tensor(float(stop.received is not None), device=device)
    # one all-reduce (on the device, not read here) carries the loss, the stop flag and the first
    # micro-batch's |g|^2 (a mean over ranks: under DDP each rank's first micro-batch is its own),
    # so every rank takes the same update decision and stops at the same step
    flags = torch.stack([loss_sum / cfg.grad_accum, stop_flag, first_sq])
    if world > 1:
        dist.all_reduce(flags)
        flags[0] /= world
        flags[2] /= world
    values = torch.stack([flags[0], grad_norm.to(flags.dtype), flags[2], flags[1]])
    guarded_step(optimizer, values[:2].isfinite().all())
    optimizer.zero_grad(set_to_none=True)
    return StepResult(values, train_stats)


class Progress:
    """The tqdm bar on rank 0: loss, token-level copy gain, the best induction score, tokens/s."""

    def __init__(self, cfg: TrainConfig, step: int, master: bool):
        self.bar = None
        if master and not cfg.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True)
        self.shown = {"loss": float("nan"), "copy": float("nan"), "induction": float("nan"), "tok_s": float("nan")}
        # race_warning: said at most once, never after a surge, and only in the first half of the run
        # (its claim is about a surge by mid-run; a run resumed past it has its answer)
        self.surged = self.warned = False
        self.mid_run = cfg.max_steps // 2

    def update(self, loss: float | None, record: dict | None) -> None:
        """One step done; `loss` is the step's loss where the loop read it (None: keep the last one shown,
        as reading it every step would wait for the device every step)."""
        if self.bar is None:
            return
        if loss is not None:
            self.shown["loss"] = loss
        if record and mk.COPY_TOKEN_ACC in record:
            self.shown["copy"] = copy_token_gain(record)
            self.shown["induction"] = max(record[mk.best_head(mk.INDUCTION)])
            self.surged = self.surged or self.shown["copy"] >= COPY_SURGE_LEVEL
            early = record.get(mk.STEP, 0) <= self.mid_run
            warning = race_warning(record, self.surged) if early and not self.warned else None
            if warning:
                self.bar.write(warning)
                self.warned = True
        if record and mk.TOKENS_PER_S in record:
            self.shown["tok_s"] = record[mk.TOKENS_PER_S]
        self.bar.update(1)
        self.bar.set_postfix(loss=self.shown_as("loss", ".3f"), copy_gain=self.shown_as("copy", "+.2f"),
                             induction=self.shown_as("induction", ".2f"), tok_s=self.shown_as("tok_s", ".0f"),
                             refresh=False)

    def shown_as(self, key: str, spec: str) -> str:
        """The value formatted, or '-' until the first eval (copy, induction) or read (loss, tok_s)."""
        value = self.shown[key]
        return "-" if math.isnan(value) else format(value, spec)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """tokens/s between logged steps, with eval time left out."""

    def __init__(self):
        self.start = self.last = time.time()

    def record(self, step: int, cfg: TrainConfig, tokens: int, per_step: int, res: StepResult) -> dict:
        now = time.time()
        interval = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
        rate, self.last = interval * per_step / (now - self.last), now
        return {mk.STEP: step, mk.TOKENS: tokens, mk.LOSS: res.loss, mk.LR: lr_at(step - 1, cfg),
                mk.GRAD_NORM: res.grad_norm, mk.TOKENS_PER_S: rate, mk.ELAPSED_S: now - self.start}

    def skip_eval_time(self) -> None:
        self.last = time.time()


class LossWatch:
    """Whether a step's numbers can still train. Uniform guessing scores ln(vocab_size): a fresh
    model starts there and a training run stays below it. Non-finite numbers stop the run; a loss
    above STOP x ln(vocab_size) stops it too (the model then gives the right token a probability of
    vocab_size^-10 on average: confidently wrong everywhere); above WARN x ln(vocab_size) it warns
    once. Measured (2026-12-02, 60 steps, --warmup-steps 0): tiny at --lr 10 jumps to 2154 = 311 x
    ln(1024) at step 2 and is still at 178 at step 60; the test model (d32, vocab 257) spikes to
    23.4 = 4.2 x ln(257) at --lr 1 and recovers to 3.0, its loss at --lr 3e-3 being 3.1: a spike a
    run survives warns, it does not stop."""

    STOP, WARN = 10.0, 3.0

    def __init__(self, vocab_size: int, warn):
        self.uniform, self.warn, self.warned = math.log(vocab_size), warn, False

    def check(self, res: StepResult) -> str | None:
        """Why the run must stop after this step, or None."""
        if not math.isfinite(res.loss):
            return f"loss is {res.loss}"
        if not math.isfinite(res.grad_norm):
            return f"gradient norm is {res.grad_norm}"
        if res.loss > self.STOP * self.uniform:
            return (f"loss is {res.loss:.4g}, over {self.STOP:g} x ln(vocab_size) = {self.STOP * self.uniform:.4g} "
                    f"(uniform guessing scores {self.uniform:.3g}): the run has diverged")
        if res.loss > self.WARN * self.uniform and not self.warned:
            self.warned = True
            self.warn(f"warning: loss is {res.loss:.4g}, over {self.WARN:g} x ln(vocab_size) = "
                      f"{self.WARN * self.uniform:.4g} (uniform guessing scores {self.uniform:.3g}): the LR may be "
                      f"too high; the run stops if it passes {self.STOP * self.uniform:.4g}")
        return None


class Diverged(RuntimeError):
    """Training cannot go on (a non-finite or exploding loss): a runtime error, exit status 1."""


def diverged(run: RunDir, what: str, step: int, log) -> NoReturn:
    """Stop the run: raises Diverged, which main() prints as one `error:` line on stderr (exit 1)."""
    last = run.checkpoints()
    raise Diverged(f"{what} at step {step}; stopping. The last good checkpoint is "
                   f"{last[-1].path if last else '(none yet)'}; lower --lr or check the data")


def finish(run: RunDir, model, cfg: TrainConfig, step: int, world: int, master: bool, wall_s: float, log) -> int:
    """final.json with every rank's parameter digest (they must agree after DDP training), the
    summary and curves.png."""
    digests = gather(parameter_digest(model), world)
    if not master:
        return 0
    run.write_final({"step": step, "param_sha256_per_rank": digests})
    if len(set(digests)) != 1:
        log(f"error: parameters differ across ranks after training: {digests}")
        return 4
    records = run.read_metrics()[0]
    log(run_summary(records, wall_s=wall_s))
    if any(mk.COPY_GAIN in r for r in records):
        plot_curves(records, run.curves_path, title=f"{run.path.name} ({cfg.preset})")
        log(f"curves: {run.curves_path}")
    return 0


# ---------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, model_cfg: LlamaConfig, device, rank: int, world: int, master: bool) -> int:
    log = (lambda *a: None) if not master else (lambda *a: print(*a, flush=True))
    data_dir, corpus = load_corpus(cfg, model_cfg, world, master)
    run, resume = open_run_dir(cfg, model_cfg, data_dir, corpus, world, master, log)
    sampler = WindowSampler(corpus.train, cfg.seq_len + 1, seed=cfg.seed, rank=rank, world_size=world,
                            sink=corpus.meta["tokenizer"]["eot_id"] if cfg.sink else None)
    use_deterministic_algorithms(cfg, device, log)
    model, train_model, optimizer = build_model(cfg, model_cfg, device, world, resume.state is None, log)
    step, tokens, per_step = resume.step, resume.tokens, tokens_per_step(cfg, world)
    if resume.state is not None:
        restore(model, optimizer, sampler, resume.state, rank)
        log(f"resuming {run.path} from step {step}")
    del resume
    metrics = MetricsLog(run, sinks(cfg, model_cfg, run, step)) if master else None
    evals = EvalSet(run, corpus, cfg.seq_len, master, log, sink=cfg.sink)
    dtype = forward_dtype(cfg.dtype, device)
    if cfg.dtype == "auto" and dtype == torch.float32:
        log("dtype auto: fp32, as this CPU has no native bf16 (AVX512-BF16 or AMX); --dtype bf16 forces it")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    save = lambda: save_checkpoint(run, model, optimizer, sampler, cfg, model_cfg, step, tokens, world, master)  # noqa: E731
    stop, progress, clock = StopSignal(), Progress(cfg, step, master), Throughput()
    noise = noise_scale_meter(cfg, world)
    watch = LossWatch(model_cfg.vocab_size, log)

    model.train()
    pending: list[StepResult] = []  # steps whose numbers are still on the device
    while step < cfg.max_steps:
        reading = reads_after(step + 1, cfg)
        res = train_step(train_model, model, optimizer, sampler, cfg, step, autocast, stop if reading else None,
                         world)
        step, tokens = step + 1, tokens + per_step
        pending.append(res)
        if not reading:  # the step is queued on the device; nothing is read until the next read step
            progress.update(None, None)
            continue
        read_steps(pending)  # one host sync for every step since the last read
        first, what = next(((i, why) for i, r in enumerate(pending) if (why := watch.check(r))), (None, None))
        if first is not None:  # a non-finite update (and any later one) was skipped: the parameters are clean
            return diverged(run, what, step - len(pending) + first + 1, log)
        if noise is not None:
            for r in pending:
                noise.add(r.first_micro_grad_sq, r.grad_norm**2)
        pending.clear()
        record = clock.record(step, cfg, tokens, per_step, res) if step % cfg.log_every == 0 or \
            step == cfg.max_steps else None
        if res.train_stats is not None or (cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps)):
            record = record or {mk.STEP: step, mk.TOKENS: tokens, mk.LOSS: res.loss}
            record.update(res.train_stats or {})
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            record.update({**evaluate(model, evals, autocast, device), **(noise.read() if noise else {})})
            clock.skip_eval_time()
        if metrics is not None and record is not None:
            metrics.write(record)
        progress.update(res.loss, record)
        if res.stop or step == cfg.max_steps or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
            if not save():
                return diverged(run, "parameters are not finite after the update", step, log)
        if res.stop:
            log(f"\nstopped by signal at step {step}; checkpoint saved in {run.checkpoints_dir}")
            return 0
    progress.close()
    if metrics is not None:
        metrics.close()
    code = finish(run, model, cfg, step, world, master, time.time() - clock.start, log)
    if world > 1:  # the ranks leave together: none tears its connections down while rank 0 still writes
        dist.barrier()
    return code


def sinks(cfg: TrainConfig, model_cfg: LlamaConfig, run: RunDir, step: int) -> list:
    """Where each metrics record goes besides metrics.jsonl: TensorBoard when installed (or asked for),
    Weights & Biases when asked for."""
    out = []
    if cfg.tensorboard if cfg.tensorboard is not None else tensorboard_available():
        out.append(TensorBoardLog(run.tensorboard_dir, purge_step=step + 1 if step else None))
    if cfg.wandb:
        out.append(WandbLog(run, cfg.wandb_project, {**asdict(cfg), "model": model_cfg.to_dict()}))
    return out


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
    except (ConfigError, CorpusError) as e:  # the data's problems a user fixes: exit 2, as flags
        if master:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, Diverged) as e:  # a damaged shard, a run that diverged: one line, exit 1
        if master:
            print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if distributed:
            # FSDP2's module state and DTensor meshes hold the process group in reference cycles;
            # collected only at interpreter exit, its gloo threads were torn down mid-shutdown and
            # a rank aborted ("terminate called without an active exception", 1 run in 16)
            gc.collect()
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_cli(main))
