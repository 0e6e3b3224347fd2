"""Train steps of one model shape for every backend combination, in one process, on the same batches.

    python -m bench.train_matrix --preset paper-162m --data DIR --steps 50 --json out.json
    python -m bench.train_matrix --preset tiny --data random --steps 5 --combos triton-triton-triton  # CPU, interpreter
    python -m bench.train_matrix --data random --combos sdpa-torch-torch+compile auto-auto-auto+compile \
        --budget-s 180 --json out.json                  # gpu_check --budget: the headline in a time budget

For each combination of attention (auto | torch | sdpa | flash_attn | triton) x norm x mlp (auto |
torch | triton), with and without `torch.compile` as `--compile` asks (or the names `--combos`
lists, in that order): build the model from the same seed, run `--steps` AdamW steps in bf16
autocast on the same `--batch-size` x seq_len windows of `--data` (`random`: uniform random tokens,
for a machine without the prepared corpus; throughput does not depend on the text), and record
tokens/s (median step time after `--warmup` steps), MFU, peak memory and the loss at the last step.
The first combination is the reference the others' losses are compared with: all compute the same
function, so they must agree to bf16 rounding. The first step, where compilation and autotuning
happen, is timed apart (`first_step_s`) and never enters the median.

With `--budget-s`, the cases share that many seconds: each case gets the time left over the cases
left, stops stepping when its share is spent (after at least `--warmup` + 3 timed steps), and a case
that cannot start in time is recorded as skipped. The JSON is rewritten after every case, so a kill
loses only the case in flight.

MFU counts 6 N + 12 L H Q T FLOPs per token (N without the input embedding; full attention), as
nanoGPT and torchtitan count it (bench/step_model.py), against the device's dense bf16 peak: the
datasheet's when the device is known (`PEAK_TFLOPS`), and also against an 8192^3 bf16 matmul
measured in this run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.step_model import flops_per_token
from grokcopy.data import TokenDataset, WindowSampler
from grokcopy.model import PRESETS, Llama, LlamaConfig
from grokcopy.model.backends import available
from grokcopy.model.config import ATTENTION_BACKENDS, MLP_BACKENDS, NORM_BACKENDS

# Dense bf16 tensor-core peak (no sparsity) from NVIDIA's datasheets, TFLOP/s.
PEAK_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H200": 989.4, "H100 PCIe": 756.0, "A100": 312.0}


def datasheet_peak(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def measured_matmul_tflops(device: torch.device) -> float:
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=25, rep=100, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


# Compiling paper-162m takes about a minute per combination, so the compiled half of the matrix is
# the combinations a user would pick: the peers (torch, SDPA) and grokcopy's kernels.
COMPILED = [("torch", "torch", "torch"), ("sdpa", "torch", "torch"), ("sdpa", "triton", "triton"),
            ("triton", "triton", "triton")]


def combos(device_type: str, compile_modes: list[bool]) -> list[tuple[str, str, str, bool]]:
    attentions = ["torch", "sdpa", "flash_attn", "triton"] if device_type == "cuda" else ["torch", "sdpa", "triton"]
    out = []
    for compiled in compile_modes:
        for a, n, m in itertools.product(attentions, ["torch", "triton"], ["torch", "triton"]):
            if compiled and (a, n, m) not in COMPILED:
                continue
            if available("attention", a) and available("norm", n) and available("mlp", m):
                out.append((a, n, m, compiled))
    return out


def combo_name(c: tuple[str, str, str, bool]) -> str:
    return "-".join(c[:3]) + ("+compile" if c[3] else "")


def parse_combo(name: str) -> tuple[str, str, str, bool]:
    """'auto-auto-auto+compile' -> ("auto", "auto", "auto", True); ValueError naming what is wrong."""
    parts = name.removesuffix("+compile").split("-")
    if len(parts) != 3:
        raise ValueError(f"{name!r} is not attention-norm-mlp[+compile]")
    for part, allowed in zip(parts, (ATTENTION_BACKENDS, NORM_BACKENDS, MLP_BACKENDS), strict=True):
        if part not in allowed:
            raise ValueError(f"{name!r}: {part!r} is none of {list(allowed)}")
    return (*parts, name.endswith("+compile"))


def run_combo(combo, preset: str, batches: list[torch.Tensor], warmup: int, device: torch.device,
              budget_s: float = float("inf")) -> dict:
    """One combination's steps; stops early (after warmup + 3 timed steps) once `budget_s` is spent."""
    attention, norm, mlp, compiled = combo
    start = time.perf_counter()
    cfg = LlamaConfig(**{**PRESETS[preset].model.to_dict(), "attention": attention, "norm": norm, "mlp": mlp})
    torch.manual_seed(0)
    model = Llama(cfg).to(device)
    # model.loss is the forward and the loss the trainer uses (the fused cross-entropy where the
    # model has one), so the compiled case compiles both
    step_loss = torch.compile(model.loss) if compiled else model.loss
    opt = torch.optim.AdamW(model.parameters(), lr=PRESETS[preset].train.get("lr", 1e-3), betas=(0.9, 0.95),
                            weight_decay=0.1, fused=device.type == "cuda" or None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    first_step_s = None
    for i, batch in enumerate(batches):
        if i >= warmup + 3 and time.perf_counter() - start > budget_s:
            break
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = step_loss(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if i == 0:
            first_step_s = dt  # compilation and autotuning land here
        if i >= warmup:
            times.append(dt)
    tokens = batches[0].shape[0] * (batches[0].shape[1] - 1)
    step_s = statistics.median(times)
    result = {
        "combo": combo_name(combo), "attention": attention, "norm": norm, "mlp": mlp, "compile": compiled,
        "tokens_per_step": tokens, "median_step_s": step_s, "tokens_per_s": tokens / step_s,
        "first_step_s": first_step_s, "compile_and_autotune_s": first_step_s - step_s,
        "steps_run": len(losses), "case_wall_s": time.perf_counter() - start, "losses": [float(x) for x in losses],
        "flops_per_token": flops_per_token(cfg, batches[0].shape[1] - 1),
        "flops_per_token_counts": "6N + 12 L H Q T (nanoGPT, torchtitan)",
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, step_loss, opt
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper-162m", choices=sorted(PRESETS))
    parser.add_argument("--data", required=True, help="a prepared corpus directory, or `random` (uniform tokens)")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    parser.add_argument("--combos", nargs="*", help="names like sdpa-triton-triton or auto-auto-auto+compile, run "
                        "in this order (default: the matrix --compile asks for)")
    parser.add_argument("--budget-s", type=float, default=0, help="seconds all cases share (0: no limit)")
    parser.add_argument("--json", help="write the results here (rewritten after every case)")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print the combinations")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup}: the warm-up steps are not timed")
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    try:
        named = [parse_combo(c) for c in args.combos or []]
    except ValueError as e:
        print(f"error: --combos {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(combo_name(c) for c in named or combos("cuda", modes)))
        return 0
    deadline = time.perf_counter() + (args.budget_s or float("inf"))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = PRESETS[args.preset].train
    seq_len, batch_size = train.get("seq_len", 256), args.batch_size or train.get("batch_size", 8)
    vocab = PRESETS[args.preset].model.vocab_size
    if args.data == "random":
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g).to(device)
                   for _ in range(args.steps)]
    else:
        sampler = WindowSampler(TokenDataset(Path(args.data) / "train"), seq_len + 1, seed=0)
        batches = [torch.as_tensor(sampler.next_batch(batch_size), device=device) for _ in range(args.steps)]
    todo = named or combos(device.type, modes)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"preset": args.preset, "device": device_name, "torch": torch.__version__, "batch_size": batch_size,
              "seq_len": seq_len, "steps": args.steps, "data": args.data, "budget_s": args.budget_s, "results": []}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        report["datasheet_peak_tflops"] = datasheet_peak(device_name)
        report["measured_matmul_tflops"] = measured_matmul_tflops(device)
    reference = None
    for i, combo in enumerate(todo):
        share = (deadline - time.perf_counter()) / (len(todo) - i)
        if share < 10:  # not even a compiled model's first step would fit: say so rather than start it
            r = {"combo": combo_name(combo), "error": f"skipped: {share:.0f} s of the budget left for it"}
        else:
            try:
                r = run_combo(combo, args.preset, batches, args.warmup, device, share)
            except Exception as e:  # a failing combination is a finding, not the end of the matrix
                r = {"combo": combo_name(combo), "error": f"{type(e).__name__}: {e}"[:2000]}
        if "error" not in r:
            reference = reference or r
            # at the last step both ran (a budget can stop cases at different steps)
            n = min(len(r["losses"]), len(reference["losses"]))
            r["loss_compared_at_step"] = n
            r["final_loss_minus_reference"] = r["losses"][n - 1] - reference["losses"][n - 1]
            for key, peak in (("mfu", report.get("datasheet_peak_tflops")),
                              ("mfu_vs_measured_matmul", report.get("measured_matmul_tflops"))):
                if peak:
                    r[key] = r["tokens_per_s"] * r["flops_per_token"] / (peak * 1e12)
        report["results"].append(r)
        line = r.get("error") or (f"{r['tokens_per_s']:>10,.0f} tok/s  mfu {r.get('mfu', float('nan')):.3f}  "
                                  f"peak {r.get('peak_memory_gib', float('nan')):5.1f} GiB  first step "
                                  f"{r['first_step_s']:6.1f} s  loss {r['losses'][-1]:.4f} after "
                                  f"{r['steps_run']} steps ({r['final_loss_minus_reference']:+.4f} at step "
                                  f"{r['loss_compared_at_step']})")
        print(f"{r['combo']:<32} {line}", flush=True)
        if args.json:  # after every case, atomically: a kill loses only the case in flight
            tmp = Path(args.json).with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=1) + "\n")
            tmp.replace(args.json)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
