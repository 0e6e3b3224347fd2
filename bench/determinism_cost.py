"""What --deterministic costs on the CPU: the compiled `tiny` step with torch's deterministic algorithms on
against off, in one process, in alternating blocks of steps, so both sides see the same machine load.

    python -m bench.determinism_cost --blocks 20 --threads 2

Prints each pair of blocks and the median (and range) of the time ratio deterministic / not. A whole-
process timing would be mostly compilation (about 30 s for tiny) and the machine's drift; paired
blocks in one process leave only the step. Both sides compile their own graph: dynamo guards on the
deterministic flag, and inductor reads it when it lowers the backward (the embedding's scatter-add:
train.use_deterministic_algorithms says why).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from grokcopy.model import PRESETS, Llama


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=20, help="pairs of timed blocks")
    parser.add_argument("--steps", type=int, default=10, help="forward + backward steps per block")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the default run uses two)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.utils.deterministic.fill_uninitialized_memory = False  # as train.py sets it
    preset = PRESETS["tiny"]
    seq_len = preset.train["seq_len"]
    torch.manual_seed(0)
    base = Llama(preset.model)
    batch = torch.randint(0, preset.model.vocab_size, (args.batch_size, seq_len + 1))
    models = {on: copy.deepcopy(base) for on in (True, False)}
    compiled = {on: torch.compile(models[on]) for on in models}

    def step(on: bool) -> None:
        torch.use_deterministic_algorithms(on, warn_only=True)
        models[on].zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compiled[on](batch[:, :-1], targets=batch[:, 1:])
        loss.backward()

    for on in (True, False):  # compile both, then warm up
        for _ in range(3):
            step(on)
    ratios, seconds = [], {True: [], False: []}
    for block in range(args.blocks):
        for on in ((True, False) if block % 2 else (False, True)):  # alternate which side goes first
            start = time.perf_counter()
            for _ in range(args.steps):
                step(on)
            seconds[on].append(time.perf_counter() - start)
        ratios.append(seconds[True][-1] / seconds[False][-1])
        print(f"block {block}: deterministic {seconds[True][-1]:.3f} s, not {seconds[False][-1]:.3f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    tokens = args.steps * args.batch_size * seq_len
    print(f"time ratio deterministic / not: median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}] over {args.blocks} pairs of {args.steps} steps; "
          f"tokens/s (fwd+bwd, median block): {tokens / statistics.median(seconds[True]):,.0f} deterministic, "
          f"{tokens / statistics.median(seconds[False]):,.0f} not")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
