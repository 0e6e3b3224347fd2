"""summary.md of a gpu_check results directory: the machine, each step's status, and what it measured.

    python -m bench.gpu_summary bench/results/h100-80gb-hbm3-2026-11-25

Reads only the files the steps wrote (steps.json, tests.xml or tests-cases.jsonl, kernels.json,
attention.json, train_matrix.json, run-metrics.jsonl); a missing file leaves its section out. A directory that
holds several runs' results in subfolders (a lease split into several calls) gets one summary of
all of them: the benchmark rows are pooled, each a measurement of its own call.
"""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def _load(path: Path):
    """The JSON in `path`, or None where it is missing, empty or cut: a benchmark step stopped by its
    time limit leaves pytest-benchmark's file empty, and the other sections must still be written."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def environment_section(steps: dict) -> list[str]:
    env = steps.get("environment", {})
    keys = ["device", "nvidia_smi", "driver", "capability", "sm_count", "memory_gib", "cuda_runtime", "torch",
            "triton", "liger_kernel", "flash_attn", "zstandard", "python", "date"]
    return ["## Machine", "", *[f"- {k}: {env[k]}" for k in keys if k in env], ""]


def steps_section(all_steps: list[tuple[str, dict]]) -> list[str]:
    rows = [(where, s) for where, steps in all_steps for s in steps.values() if "step" in s]
    limits = any("limit_s" in s for _, s in rows)  # recorded since the budgeted check
    lines = [f"| {where} | {s['step']} | {s['status']} | {s['wall_s']:.0f} |"
             + (f" {s.get('limit_s', '-')} |" if limits else "") for where, s in rows]
    head = "| results in | step | status | wall s |" + (" limit s |" if limits else "")
    return ["## Steps", "", head, "|---|---|---|---|" + ("---|" if limits else ""), *lines, ""]


def cases_section(paths: list[Path], root: Path) -> list[str]:
    """The native tests from bench/case_log.py's lines, where no tests.xml was written (the step was
    stopped by its time limit): what ran before the limit."""
    lines = []
    for path in paths:
        cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        counts = {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "failed", "skipped")}
        lines += [f"{path.relative_to(root)}: {len(cases)} tests finished before the step ended, {counts['passed']} "
                  f"passed, {counts['failed']} failed, {counts['skipped']} skipped, "
                  f"{sum(c['seconds'] for c in cases):.0f} s.", ""]
        lines += [f"- FAILED {c['nodeid']}" for c in cases if c["outcome"] == "failed"][:40]
    return lines


def tests_section(paths: list[Path], root: Path) -> list[str]:
    lines = []
    for path in paths:
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
        failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
        lines += [f"{path.relative_to(root)}: {counts['tests']} tests, {counts['failures']} failed, "
                  f"{counts['errors']} errors, {counts['skipped']} skipped, {float(counts['time']):.0f} s.", ""]
        lines += [f"- FAILED {name}" for name in failed[:40]]
    return lines


def _benchmarks(paths: list[Path]) -> list[dict]:
    return [b for path in paths for b in (_load(path) or {"benchmarks": []})["benchmarks"]]


def kernels_section(paths: list[Path]) -> list[str]:
    rows = defaultdict(dict)
    for b in _benchmarks(paths):
        p, info = b["params"], b["extra_info"]
        rows[(b["param"].rsplit("-", 2)[0], p.get("pass_"))][p.get("provider")] = info
    if not rows:
        return []
    lines = ["## RMSNorm and SwiGLU (bf16): GB/s over the fewest bytes, fraction of copy bandwidth", "",
             "| case | pass | triton | torch | compile | liger | triton / best peer | triton % of copy BW |",
             "|---|---|---|---|---|---|---|---|"]
    for (case, pass_), by in sorted(rows.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        def gbps(p, by=by):
            return f"{by[p]['gbps']:.0f}" if p in by else "-"

        peers = [by[p]["gbps"] for p in ("torch", "compile", "liger") if p in by]
        ratio = f"{by['triton']['gbps'] / max(peers):.2f}" if "triton" in by and peers else "-"
        frac = f"{100 * by['triton']['fraction_of_copy_bandwidth']:.0f}%" if "triton" in by else "-"
        lines.append(f"| {case} | {pass_} | {gbps('triton')} | {gbps('torch')} | {gbps('compile')} | "
                     f"{gbps('liger')} | {ratio} | {frac} |")
    return [*lines, ""]


def attention_section(paths: list[Path]) -> list[str]:
    rows = defaultdict(dict)
    stats = []
    for b in _benchmarks(paths):
        p, info = b["params"], b["extra_info"]
        if "provider" in p:
            rows[(b["param"].rsplit("-", 2)[0], p.get("pass_"))][p["provider"]] = info.get("tflops")
        else:
            stats.append((b["name"], info))
    if not rows and not stats:
        return []
    providers = sorted({prov for by in rows.values() for prov in by})
    lines = ["## Attention (bf16): TFLOP/s", "",
             "| case | pass | " + " | ".join(providers) + " | triton / sdpa_flash |",
             "|---|---|" + "---|" * (len(providers) + 1)]
    for (case, pass_), by in sorted(rows.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        cells = [f"{by[p]:.0f}" if by.get(p) else "-" for p in providers]
        ratio = f"{by['triton'] / by['sdpa_flash']:.2f}" if by.get("triton") and by.get("sdpa_flash") else "-"
        lines.append(f"| {case} | {pass_} | " + " | ".join(cells) + f" | {ratio} |")
    for name, info in stats:
        keys = {k: v for k, v in info.items() if "overhead" in k or k.endswith("_ms")}
        lines.append(f"\n{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in keys.items() if isinstance(v, float)))
    return [*lines, ""]


def train_matrix_section(paths: list[Path]) -> list[str]:
    found = [_load(p) for p in paths]
    if not found:
        return []
    data = {**found[0], "results": [r for d in found for r in d["results"]]}
    lines = [f"## {data['preset']} train steps, bf16 autocast, batch {data['batch_size']} x {data['seq_len']}, "
             f"{data['steps']} steps on the same batches"
             + (f" of {data['data']} tokens" if data.get("data") == "random" else ""), "",
             f"Datasheet bf16 peak {data.get('datasheet_peak_tflops')} TFLOP/s; an 8192^3 bf16 matmul measured "
             f"{data.get('measured_matmul_tflops', 0):.0f} TFLOP/s here.", "",
             "| attention-norm-mlp | tokens/s | MFU | peak GiB | first step s | loss at last step | vs torch |",
             "|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        if "error" in r:
            lines.append(f"| {r['combo']} | error: {r['error'][:150]} | | | | | |")
            continue
        at = f" (step {r['loss_compared_at_step']})" if "loss_compared_at_step" in r else ""
        lines.append(f"| {r['combo']} | {r['tokens_per_s']:,.0f} | {r.get('mfu', float('nan')):.3f} | "
                     f"{r.get('peak_memory_gib', float('nan')):.1f} | {r['first_step_s']:.1f} | "
                     f"{r['losses'][-1]:.4f} | {r['final_loss_minus_reference']:+.4f}{at} |")
    counts = {r.get("flops_per_token_counts") for r in data["results"] if "error" not in r}
    if counts and counts != {None}:
        lines += ["", f"MFU counts {', '.join(sorted(c for c in counts if c))} FLOPs per token; results without "
                  "that note counted 6N + 6 L d T (causal attention)."]
    return [*lines, ""]


def run_section(out: Path) -> list[str]:
    found = sorted(out.rglob("run-metrics.jsonl"))
    if not found:
        return []
    path = found[0]
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return ["## paper-162m run", "", "no metrics were logged", ""]
    evals = [r for r in records if "copy_acc" in r]
    speed = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    last = records[-1]
    lines = ["## paper-162m run (CUDA defaults, stdlib corpus, 32k BPE)", "",
             f"- {last['step']} steps, {last['tokens']:,} tokens in "
             f"{last.get('elapsed_s', float('nan')) / 60:.1f} min; "
             f"median {statistics.median(speed):,.0f} tokens/s" if speed else f"- {last['step']} steps"]
    if evals:
        e = evals[-1]
        best = max(evals, key=lambda r: r["copy_gain"])
        lines += [f"- last eval (step {e['step']}): val loss {e['val_loss']:.3f}, copy acc {e['copy_acc']:.2f} "
                  f"(control {e['copy_control_acc']:.2f}), token acc {e['copy_token_acc']:.2f}, "
                  f"repeat acc {e['repeat_acc']:.2f}",
                  f"- best copy gain {best['copy_gain']:+.2f} at step {best['step']}",
                  "", "| step | val loss | copy acc | control | repeat acc | induction max per layer |",
                  "|---|---|---|---|---|---|"]
        for r in evals:
            ind = " ".join(f"{x:.2f}" for x in r.get("induction_max", []))
            lines.append(f"| {r['step']} | {r['val_loss']:.3f} | {r['copy_acc']:.2f} | {r['copy_control_acc']:.2f} | "
                         f"{r['repeat_acc']:.2f} | {ind} |")
    if (path.parent / "run-curves.png").is_file():
        lines += ["", f"![run]({(path.parent / 'run-curves.png').relative_to(out)})"]
    return [*lines, ""]


def write_summary(out: Path) -> Path:
    all_steps = [(p.parent, _load(p)["steps"]) for p in sorted(out.rglob("steps.json"))]
    env = next((s["environment"] for _, s in all_steps if "environment" in s), {})
    lines = [f"# gpu_check on {env.get('device', 'an unknown device')}, {env.get('date', '')}", "",
             "Written by `bash scripts/gpu_check.sh` (bench/gpu_check.py); every number below was measured by "
             "it on the machine named here.", ""]
    lines += environment_section({"environment": env})
    lines += steps_section([(str(folder.relative_to(out)) if folder != out else ".", s) for folder, s in all_steps])
    tests = tests_section(sorted(out.rglob("tests.xml")), out)
    cut = [p for p in sorted(out.rglob("tests-cases.jsonl")) if not (p.parent / "tests.xml").is_file()]
    tests += cases_section(cut, out)
    lines += ["## Native kernel and model tests", "", *tests, ""] if tests else []
    lines += kernels_section(sorted(out.rglob("kernels*.json")))
    lines += attention_section(sorted(out.rglob("attention*.json")))
    lines += train_matrix_section(sorted(out.rglob("train_matrix*.json"))) + run_section(out)
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(write_summary(Path(sys.argv[1])))
