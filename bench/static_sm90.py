"""Compile every kernel x launch config for sm_90a without a GPU, and read registers, spills and
shared memory off the compiler: evidence about Hopper that costs no GPU time.

    python -m bench.static_sm90 --out bench/results/static-sm90a     # table.json + table.md

How: a stand-in Triton driver answers "the current target is CUDA sm_90" (GPUTarget("cuda", 90,
32)), and each launcher in kernels/ is called on CPU tensors of the model's shapes with kernel
launches replaced by `warmup` (compile, do not run); an autotuned kernel compiles every config in
its list. Each compiled kernel's PTX then goes through the ptxas that this Triton uses for sm_90
(`ptxas -v --gpu-name=sm_90a`; triton >= 3.9 calls it ptxas-blackwell) for registers and spill
bytes; shared memory is Triton's own launch requirement (metadata.shared, dynamic shared memory).

Occupancy is computed for an H100 SM: 65,536 registers (allocated per warp in units of 256), 64
resident warps, 32 blocks, 228 KB of shared memory (227 KB at most per block, 1 KB reserved per
block). The shapes are the model's: attention bf16 at head dim 64 (T = 1024) and 128 (T = 4096),
plain and with statistics (2 targets, as --train-stats-every uses), each through pointers and through
TMA descriptors (USE_TMA; the `tma` column says whether the PTX really issues cp.async.bulk.tensor);
RMSNorm at D = 768, 4096, 8192 and 11008 (not a model width: it shows where the row-in-registers
design stops), both backwards (STREAMING=True/False) and the dweight column reduction; SwiGLU at
I = 3072 and 11008.

Needs triton's NVIDIA backend (the CPU wheel has it) and no GPU; TRITON_INTERPRET must be unset.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SM90 = {"regs": 65536, "warps": 64, "blocks": 32, "smem": 228 * 1024, "smem_per_block": 227 * 1024,
        "smem_reserved_per_block": 1024, "reg_unit": 256}
ATTENTION_SHAPES = [(64, 1024), (128, 4096)]  # (head dim, sequence length)
NORM_WIDTHS = [768, 4096, 8192, 11008]  # model widths (162M, 7B, 70B); 11008 is Llama-7B's MLP width
SWIGLU_WIDTHS = [3072, 11008]


class StandInDriver:
    """Just enough of a Triton driver to compile for sm_90 on a machine without a GPU."""

    def __init__(self):
        import torch
        from triton.backends.compiler import GPUTarget

        self.target, self.torch = GPUTarget("cuda", 90, 32), torch

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return self.torch.device("cpu")

    def is_active(self):
        return True


@contextlib.contextmanager
def compile_only(record: list, compile: bool = True):
    """Within: launches compile instead of running, every autotune config is compiled, and the
    launchers accept CPU tensors. Each compiled kernel is appended to `record` as (name, kwargs,
    kernel); with compile=False nothing is compiled and kernel is None (a cheap list of variants)."""
    import importlib

    from triton.runtime import autotuner, driver, jit

    # importlib: `kernels.rms_norm` as an attribute is the function that kernels/__init__ exports
    modules = [importlib.import_module(f"grokcopy.kernels.{name}")
               for name in ("flash_attention", "rms_norm", "swiglu", "linear_cross_entropy", "rotary")]
    real_run, real_tune_run = jit.JITFunction.run, autotuner.Autotuner.run
    saved_checks = {m: m.check_inputs for m in modules}

    def compile_run(self, *args, grid, warmup, pickable=True, **kwargs):
        kernel = real_run(self, *args, grid=grid, warmup=True, **kwargs) if compile else None
        plain = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in kwargs.items()
                 if k.isupper() or k.startswith("num_")}
        record.append((self.fn.__name__, {**plain, "pickable": pickable}, kernel))
        return kernel

    def compile_every_config(self, *args, **kwargs):
        """Every config in the list; those the kernel's own pruning keeps are marked pickable."""
        kwargs.pop("warmup", None)
        self.nargs = dict(zip(self.arg_names, args, strict=False))
        kept = self.prune_configs(kwargs)
        for config in self.configs:
            if config.pre_hook is not None:  # e.g. the TMA descriptors' block shapes follow the tile
                config.pre_hook({**self.nargs, **kwargs, **config.all_kwargs()})
            self.fn.run(*args, warmup=True, pickable=config in kept, **{**kwargs, **config.all_kwargs()})
        self.best_config = kept[0]  # what a real run would leave for a caller to read

    previous_driver = driver._active  # None until first use; reset_active() would build a CUDA driver
    driver.set_active(StandInDriver())
    jit.JITFunction.run, autotuner.Autotuner.run = compile_run, compile_every_config
    for module in saved_checks:
        module.check_inputs = lambda *a, **k: None  # the tensors are on the CPU by design
    try:
        yield
    finally:
        jit.JITFunction.run, autotuner.Autotuner.run = real_run, real_tune_run
        for module, check in saved_checks.items():
            module.check_inputs = check
        driver._active = previous_driver


def launch_model_shapes() -> None:
    """Call every launcher at the model's shapes (bf16, CPU tensors: nothing runs)."""
    import torch

    from grokcopy.kernels.flash_attention import flash_attention_backward, flash_attention_forward
    from grokcopy.kernels.rms_norm import BACKWARDS, rms_norm_backward, rms_norm_forward
    from grokcopy.kernels.swiglu import swiglu_backward, swiglu_forward

    bf16 = torch.bfloat16
    for head_dim, T in ATTENTION_SHAPES:
        q, k, v = (torch.empty(1, 2, T, head_dim, dtype=bf16) for _ in range(3))
        targets = torch.zeros(1, T, 2, dtype=torch.int64)
        out, lse, _, _ = flash_attention_forward(q, k, v, causal=True)
        flash_attention_forward(q, k, v, causal=True, targets=targets)
        # the opt-in TMA-descriptor forward (GROKCOPY_ATTENTION_TMA=1), plain and with statistics
        flash_attention_forward(q, k, v, causal=True, use_tma=True)
        flash_attention_forward(q, k, v, causal=True, targets=targets, use_tma=True)
        flash_attention_backward(out, q, k, v, out, lse, causal=True)
    for D in NORM_WIDTHS:
        x, w, rstd = torch.empty(16, D, dtype=bf16), torch.empty(D, dtype=bf16), torch.empty(16)
        rms_norm_forward(x, w, 1e-6)
        rms_norm_forward(x, w, 1e-6, residual=torch.empty(16, D))  # fp32 residual stream, bf16 branch
        for kind in BACKWARDS:  # the streaming backward and the recomputing one it may replace
            rms_norm_backward(x, x, w, rstd, 1e-6, backward=kind)
            # the fused op's: fp32 residual stream, its gradient also written in bf16 for the branch
            rms_norm_backward(x, torch.empty(16, D), w, rstd, 1e-6, residual_grad=torch.empty(16, D),
                              branch_dtype=bf16, backward=kind)
    for I in SWIGLU_WIDTHS:
        gate, up = torch.empty(16, I, dtype=bf16), torch.empty(16, I, dtype=bf16)
        swiglu_forward(gate, up, torch.empty_like(gate))
        swiglu_backward(gate, gate, up, torch.empty_like(gate), torch.empty_like(up))


def variant_key(name: str, kwargs: dict) -> tuple:
    """What identifies a variant: the kernel and its launch keywords (constexprs, warps, stages)."""
    return (name, tuple(sorted((k, v) for k, v in kwargs.items() if k != "pickable")))


def planned_variants() -> dict[tuple, bool]:
    """{variant_key: pickable} of everything the launchers would compile at the model's shapes, found
    without compiling (seconds): the table must cover exactly these."""
    record: list = []
    with compile_only(record, compile=False):
        launch_model_shapes()
    return {variant_key(name, kwargs): kwargs["pickable"] for name, kwargs, _ in record}


def table_key(row: dict) -> tuple:
    return (row["kernel"], tuple(tuple(kv) for kv in row["launch"]))


def ptxas_path() -> str:
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):  # triton >= 3.9 compiles sm_90 with the first
        if (bin_dir / name).is_file():
            return str(bin_dir / name)
    raise FileNotFoundError(f"no ptxas in {bin_dir}")


def ptxas_report(ptx: str, ptxas: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        proc = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                              capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    text = proc.stderr + proc.stdout
    if proc.returncode:
        return {"ptxas_error": text.strip()[-500:]}

    def number(pattern):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"), "stack_frame": number(r"(\d+) bytes stack frame")}


def occupancy(registers: int, warps: int, shared: int) -> dict:
    regs_per_warp = -(-registers * 32 // SM90["reg_unit"]) * SM90["reg_unit"]
    by_regs = SM90["regs"] // (regs_per_warp * warps) if registers else SM90["blocks"]
    by_warps = SM90["warps"] // warps
    by_smem = SM90["smem"] // (shared + SM90["smem_reserved_per_block"]) if shared else SM90["blocks"]
    blocks = min(by_regs, by_warps, by_smem, SM90["blocks"])
    limiter = min((by_regs, "registers"), (by_warps, "warps"), (by_smem, "shared memory"))[1]
    return {"blocks_per_sm": blocks, "occupancy": blocks * warps / SM90["warps"], "limited_by": limiter}


def variant_row(name: str, kwargs: dict, kernel, ptxas: str) -> dict:
    warps = kernel.metadata.num_warps
    row = {"kernel": name, **{k: v for k, v in kwargs.items() if not k.startswith("num_") and k != "pickable"},
           "pickable": kwargs["pickable"], "launch": [list(kv) for kv in variant_key(name, kwargs)[1]],
           "num_warps": warps, "num_stages": kernel.metadata.num_stages, "shared": kernel.metadata.shared}
    row.update(ptxas_report(kernel.asm["ptx"], ptxas))
    row["tma"] = "cp.async.bulk.tensor" in kernel.asm["ptx"]  # the copy engine moves tiles (Hopper TMA)
    row["fits"] = row["shared"] <= SM90["smem_per_block"]
    row["spills"] = bool(row.get("spill_stores") or row.get("spill_loads"))
    if "registers" in row:
        row.update(occupancy(row["registers"], warps, row["shared"]))
    return row


def analyse() -> dict:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("error: unset TRITON_INTERPRET: this tool compiles for a GPU")
    import torch
    import triton

    record: list = []
    with compile_only(record):
        launch_model_shapes()
    ptxas = ptxas_path()
    seen, unique = set(), []
    for name, kwargs, kernel in record:  # a launcher may compile the same variant twice
        key = (name, kernel.hash)
        if key not in seen:
            seen.add(key)
            unique.append((name, kwargs, kernel))
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        rows = list(pool.map(lambda r: variant_row(*r, ptxas), unique))
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return {"target": "sm_90a", "triton": triton.__version__, "torch": torch.__version__, "ptxas": version,
            "sm": SM90, "variants": rows}


def write_markdown(table: dict, path: Path) -> None:
    rows = table["variants"]
    spilling = [r for r in rows if r["spills"]]
    too_big = [r for r in rows if not r["fits"]]
    lines = [f"# Static sm_90a resource table ({len(rows)} kernel variants)", "",
             f"Written by `python -m bench.static_sm90` with triton {table['triton']}, {table['ptxas']}: no GPU "
             "involved. Registers and spills from `ptxas -v --gpu-name=sm_90a`, shared memory from Triton's launch "
             "metadata, occupancy for an H100 SM (65,536 registers, 64 warps, 228 KB).", "",
             f"{len(spilling)} variants spill, {len(too_big)} need more than 227 KB of shared memory; "
             f"{sum(r['pickable'] and (r['spills'] or not r['fits']) for r in rows)} of those are left for the "
             "autotuner to pick (the others are marked (pruned): the kernel's own `early_config_prune` drops "
             "them for that launch).", "",
             "| kernel | constexprs | warps | stages | regs | spill st/ld B | shared KB | blocks/SM | occupancy |",
             "|---|---|---|---|---|---|---|---|---|"]
    skip = {"kernel", "pickable", "launch", "num_warps", "num_stages", "shared", "registers", "spill_stores",
            "spill_loads", "stack_frame", "fits", "spills", "blocks_per_sm", "occupancy", "limited_by", "ptxas_error",
            "tma"}
    for r in sorted(rows, key=lambda r: (r["kernel"], json.dumps({k: r[k] for k in r if k not in skip}))):
        consts = " ".join(f"{k}={v}" for k, v in r.items() if k not in skip)
        flag = (" **spills**" if r["spills"] else "") + (" **> 227 KB**" if not r["fits"] else "")
        name = r["kernel"] + ("" if r["pickable"] else " (pruned)") + (" [TMA]" if r.get("tma") else "")
        lines.append(f"| {name} | {consts} | {r['num_warps']} | {r['num_stages']} | {r.get('registers', '?')} "
                     f"| {r.get('spill_stores', 0)}/{r.get('spill_loads', 0)}{flag} | {r['shared'] / 1024:.1f} | "
                     f"{r.get('blocks_per_sm', '?')} | {r.get('occupancy', 0):.2f} ({r.get('limited_by', '')}) |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static_sm90", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/static-sm90a"))
    args = parser.parse_args(argv)
    table = analyse()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    write_markdown(table, args.out / "table.md")
    rows = table["variants"]
    bad = [r for r in rows if r["pickable"] and (r["spills"] or not r["fits"])]
    print(f"{len(rows)} variants: {sum(r['spills'] for r in rows)} spill, {sum(not r['fits'] for r in rows)} "
          f"need > 227 KB shared; {len(bad)} of them pickable; {args.out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
