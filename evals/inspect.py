"""Summarise a run directory: what was trained, how far it got, when copying appeared.

    python -m grokcopy.evals.inspect RUN_DIR [--json] [--induction-threshold 0.3]

Reads only what is on disk, so it works on a run that is still training (a half-written last
line of metrics.jsonl is skipped and counted), on a crashed one and on a finished one. Prints the
configuration (preset, model shape, parameters, data), steps and tokens done, the latest and best
copy accuracy and gain, the step at which copy accuracy first reached 50%, each layer's induction
onset (the first eval at which its best head's induction score reaches the threshold), throughput,
the checkpoints on disk, and whether the run can be resumed and whether it finished (final.json).
Exits 1 when RUN_DIR is not a grokcopy run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from grokcopy.cli import run_cli
from grokcopy.evals import metric_keys as mk
from grokcopy.evals.onsets import INDUCTION_THRESHOLD, induction_onset_steps
from grokcopy.model.config import LlamaConfig
from grokcopy.model.llama import Llama
from grokcopy.model.run_dir import CheckpointError, NotARunError, RunDir, verify_checkpoint

COPY_ACC_MILESTONE = 0.5
RECIPE_FIELDS = ("lr", "schedule", "warmup_steps", "weight_decay", "batch_size", "seq_len", "grad_accum", "max_steps")
RECENT_RECORDS = 10  # throughput is the mean over this many of the latest logged intervals


def wall_seconds(records: list[dict]) -> float:
    """Training wall time over every process of the run: elapsed_s restarts at each resume."""
    total, last = 0.0, 0.0
    for r in records:
        if mk.ELAPSED_S in r:
            if r[mk.ELAPSED_S] < last:
                total += last
            last = r[mk.ELAPSED_S]
    return total + last


def first_step(evals: list[dict], reached) -> int | None:
    """The step of the first eval record for which `reached(record)` holds."""
    return next((r[mk.STEP] for r in evals if reached(r)), None)


def count_parameters(model_config: dict) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return Llama(LlamaConfig.from_dict(model_config)).num_parameters()


def inspect_run(run_dir: str | os.PathLike, induction_threshold: float = INDUCTION_THRESHOLD) -> dict:
    """Everything the report shows, as a JSON-ready dict. Raises NotARunError.

    The model shape and recipe come from the newest checkpoint that verifies when there is one (it is
    what a resume continues; config.json may have been edited since), else from config.json. Every
    checkpoint is verified against the checksum it carries (run_dir.verify_checkpoint, the check
    every reader makes), so a damaged or unverifiable one is listed with its problem."""
    run = RunDir(run_dir)
    run_dir = run.path
    config = run.read_config()
    records, unreadable = run.read_metrics()
    damaged_lines, last_line_cut = run.metrics_damage()
    evals = [r for r in records if mk.COPY_ACC in r]
    last = records[-1] if records else {mk.STEP: 0, mk.TOKENS: 0}
    model = config["model"]
    meta = config.get("data_meta", {})
    metrics_file = run.metrics_path
    world = config.get("world_size", 1)

    checkpoints = []
    for c in run.checkpoints():
        try:
            size = c.path.stat().st_size
            problem = None
            verify_checkpoint(c.path)
        except FileNotFoundError:  # rotated away by the running trainer since we listed it
            continue
        except CheckpointError as e:
            problem = str(e)
        checkpoints.append({mk.STEP: c.step, "path": str(c.path), "bytes": size, "problem": problem})
    good = [c for c in checkpoints if c["problem"] is None]
    final = run.read_final()
    # what a resume would continue: the newest good checkpoint's own config, not an edited config.json
    source, edited = "config.json", []
    if good:
        saved, saved_model = run.checkpoint_configs(Path(good[-1]["path"]))  # verified again: one path
        edited = sorted([k for k in saved if k in config and config[k] != saved[k] and k != "out"]
                        + [f"model.{k}" for k in saved_model if config["model"].get(k) != saved_model[k]])
        config = {**config, **saved, "model": saved_model}
        model = saved_model
        source = f"checkpoint step {good[-1][mk.STEP]:,}"
    recent = [r[mk.TOKENS_PER_S] for r in records if mk.TOKENS_PER_S in r][-RECENT_RECORDS:]

    copy = None
    if evals:
        latest = evals[-1]
        best_acc = max(evals, key=lambda r: r[mk.COPY_ACC])
        best_gain = max(evals, key=lambda r: r[mk.COPY_GAIN])
        copy = {
            "evals": len(evals),
            "latest": {k: latest[k] for k in (mk.STEP, mk.COPY_ACC, mk.COPY_GAIN, mk.COPY_CONTROL_ACC)},
            "best_acc": {mk.STEP: best_acc[mk.STEP], mk.COPY_ACC: best_acc[mk.COPY_ACC]},
            "best_gain": {mk.STEP: best_gain[mk.STEP], mk.COPY_GAIN: best_gain[mk.COPY_GAIN]},
            "acc_50_step": first_step(evals, lambda r: r[mk.COPY_ACC] >= COPY_ACC_MILESTONE),
        }
    induction = None
    if evals:
        induction = {
            "threshold": induction_threshold,
            "onset_step": induction_onset_steps(evals, induction_threshold),
            "latest_max": evals[-1][mk.best_head(mk.INDUCTION)],
        }
    model_cfg = LlamaConfig.from_dict(model)
    return {
        "run_dir": str(run_dir),
        "preset": config["preset"],
        "model": {**model, "kv_heads": model_cfg.kv_heads, "parameters": count_parameters(model),
                  "nope_layers": model_cfg.nope_layers},
        "data": {"dir": config.get("data_dir"), "tokenizer": meta.get("tokenizer", {}).get("kind"),
                 "vocab_size": meta.get("vocab_size"),
                 "train_tokens": meta.get("splits", {}).get("train", {}).get("tokens")},
        "recipe": {**{k: config[k] for k in RECIPE_FIELDS}, "dropout": model["dropout"], "world_size": world,
                   "tokens_per_step": config["batch_size"] * config["seq_len"] * config["grad_accum"] * world},
        "config_source": source,
        "config_json_differs": edited,
        "progress": {mk.STEP: last[mk.STEP], mk.TOKENS: last[mk.TOKENS], "wall_s": wall_seconds(records),
                     "metrics_lines": len(records), "unreadable_lines": unreadable,
                     "damaged_lines": damaged_lines, "last_line_cut": last_line_cut,
                     "last_write_s_ago": time.time() - metrics_file.stat().st_mtime
                     if metrics_file.is_file() else None},
        mk.TOKENS_PER_S: sum(recent) / len(recent) if recent else None,
        "copy": copy,
        mk.INDUCTION: induction,
        "checkpoints": checkpoints,
        "resumable": bool(good),  # config.json is there, or we would not have got here
        "finished": final is not None,
        "final_step": final[mk.STEP] if final else None,
        "tensorboard": (run_dir / "tb").is_dir(),
    }


def _step(step: int | None) -> str:
    return "never" if step is None else f"step {step:,}"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def format_report(r: dict) -> str:
    """The report as the lines the CLI prints."""
    m, d, rec, p = r["model"], r["data"], r["recipe"], r["progress"]
    lines = [
        f"run       {r['run_dir']}  (preset {r['preset']})",
        f"model     {m['n_layers']} layers x d{m['d_model']}"
        + (f" (no RoPE in layer {', '.join(map(str, m['nope_layers']))})" if m["nope_layers"] else "")
        + f", {m['n_heads']} heads ({m['kv_heads']} KV), "
        f"MLP {m['d_mlp']}, vocab {m['vocab_size']}, context {m['context']}, "
        f"{'tied' if m['tie_embeddings'] else 'untied'} embeddings: {m['parameters'] / 1e6:.2f}M parameters",
        f"data      {d['dir']} ({d['tokenizer']}, vocab {d['vocab_size']}"
        + (f", {d['train_tokens'] / 1e6:.1f}M train tokens)" if d["train_tokens"] else ")"),
        f"recipe    lr {rec['lr']:g} {rec['schedule']}, warmup {rec['warmup_steps']}, weight decay "
        f"{rec['weight_decay']:g}, dropout {rec['dropout']:g}; {rec['batch_size']} x {rec['seq_len']} tokens x "
        f"{rec['grad_accum']} accum x {rec['world_size']} rank(s) = {rec['tokens_per_step']:,} tokens/step",
        f"progress  step {p[mk.STEP]:,} of {rec['max_steps']:,} ({100 * p[mk.STEP] / rec['max_steps']:.0f}%), "
        f"{p['tokens'] / 1e6:.1f}M tokens, {_duration(p['wall_s'])} of training"
        + (f"; metrics.jsonl last written {_duration(p['last_write_s_ago'])} ago"
           if p["last_write_s_ago"] is not None else "; no metrics.jsonl yet")
        + ("; the last line of metrics.jsonl is cut (a write a stop interrupted)" if p["last_line_cut"] else "")
        + (f"; lines of metrics.jsonl that are not grokcopy records (DAMAGED, or added by hand): "
           f"{p['damaged_lines'][:10]}" if p["damaged_lines"] else ""),
    ]
    if r["config_json_differs"]:
        lines.append(f"config    from the {r['config_source']}; config.json says otherwise for "
                     f"{', '.join(r['config_json_differs'])} (a resume follows the checkpoint)")
    if r[mk.TOKENS_PER_S] is not None:
        lines.append(f"speed     {r[mk.TOKENS_PER_S]:,.0f} tokens/s (mean of the last {RECENT_RECORDS} logged "
                     "intervals)")
    if r["copy"]:
        c = r["copy"]
        lines.append(
            f"copy      latest acc {c['latest'][mk.COPY_ACC]:.3f} (gain {c['latest'][mk.COPY_GAIN]:+.3f}, control "
            f"{c['latest'][mk.COPY_CONTROL_ACC]:.3f}) at step {c['latest'][mk.STEP]:,} ({c['evals']} evals)\n"
            f"          best acc {c['best_acc'][mk.COPY_ACC]:.3f} at step {c['best_acc'][mk.STEP]:,}; best gain "
            f"{c['best_gain'][mk.COPY_GAIN]:+.3f} at step {c['best_gain'][mk.STEP]:,}; acc first >= 50%: "
            f"{_step(c['acc_50_step'])}")
        ind = r[mk.INDUCTION]
        lines.append(
            "induction onset (first eval where the layer's best head scores >= "
            f"{ind['threshold']:g}; --induction-threshold): "
            + ", ".join(f"layer {i} {_step(s)}" for i, s in enumerate(ind["onset_step"]))
            + "\n          latest best head per layer: " + ", ".join(f"{v:.2f}" for v in ind["latest_max"]))
    else:
        lines.append("copy      no evals logged yet")
    ckpts = ", ".join(f"step {c[mk.STEP]:,} ({c['bytes'] / 1e6:.1f} MB)" + (" DAMAGED" if c["problem"] else "")
                      for c in r["checkpoints"]) or "none"
    good = [c for c in r["checkpoints"] if c["problem"] is None]
    lines.append(f"checkpoints {ckpts}; resumable: "
                 + (f"yes, from step {good[-1][mk.STEP]:,}" if r["resumable"] else "no"))
    lines += [f"          {c['problem']}" for c in r["checkpoints"] if c["problem"]]
    if r["finished"]:
        lines.append(f"finished  yes, at step {r['final_step']:,} (final.json)")
    else:
        lines.append("finished  no final.json: still training, stopped by a signal, or crashed")
    if r["tensorboard"]:
        lines.append(f"tensorboard --logdir {Path(r['run_dir']) / 'tb'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grokcopy.evals.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (train.py --out)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--induction-threshold", type=float, default=INDUCTION_THRESHOLD,
                        help=f"induction score a layer's best head must reach for its onset "
                             f"(default {INDUCTION_THRESHOLD})")
    args = parser.parse_args(argv)
    try:
        report = inspect_run(args.run_dir, args.induction_threshold)
    except NotARunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
