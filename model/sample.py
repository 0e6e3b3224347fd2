"""See what a run's model writes, and watch it copy.

    python -m grokcopy.model.sample RUN_DIR --prompt "def " --max-new-tokens 200 [--temperature 0.8 --top-k 50 --seed 0]
    python -m grokcopy.model.sample RUN_DIR --copy-demo [--case 3]

Loads the run's newest checkpoint that verifies (or a step-*.pt file) and the tokenizer of the corpus
it was trained on. `--copy-demo` prints one of the run's held-out copy cases (the paper's protocol:
a 12-token prefix that occurs once in the window, then its 6-token suffix; the prefix is given again)
with the model's greedy continuation beside the true suffix, so copying can be seen with one's eyes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from grokcopy.cli import UsageError, run_cli
from grokcopy.evals.copying import PREFIX_TOKENS, SUFFIX_TOKENS, CopyCases
from grokcopy.model.hf import run_tokenizer
from grokcopy.model.llama import Llama
from grokcopy.model.run_dir import load_checkpoint, resolve_checkpoint


@torch.no_grad()
def generate(model: Llama, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Append max_new_tokens tokens to idx [B, T] (int64): greedy at temperature 0, else sampled from
    softmax(logits / temperature) over the top_k most likely. The context is cropped to the model's."""
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(idx[:, -model.cfg.context:])[:, -1].float()
        if temperature == 0:
            next_token = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        idx = torch.cat([idx, next_token], dim=1)
    return idx


def load_run(source: str) -> tuple[Llama, object, dict]:
    """(model, tokenizers.Tokenizer, the run's config.json) of a run directory or checkpoint file."""
    run, _ = resolve_checkpoint(source)
    model, _ = load_checkpoint(source, warn=lambda message: print(message, file=sys.stderr))
    config = run.read_config()
    tokenizer = run_tokenizer(config)
    if tokenizer is None:
        raise UsageError(f"the run's tokenizer is gone from {config['data_dir']} (its corpus moved?): "
                         "prepare the corpus there again, or sample token ids with the model directly")
    return model, tokenizer[0], config


def copy_demo(model: Llama, tokenizer, run_path: Path, case: int) -> str:
    """One held-out copy case, the model's greedy suffix beside the true one."""
    cases_file = run_path / "copy_cases.npz"
    if not cases_file.is_file():
        raise UsageError(f"{cases_file} is missing: the run has not evaluated yet (train past its first eval)")
    cases = CopyCases.load(cases_file).copy
    if not 0 <= case < len(cases):
        raise UsageError(f"--case {case}: the run has copy cases 0 to {len(cases) - 1}")
    sequence = cases[case]
    prompt, suffix = sequence[:-SUFFIX_TOKENS], sequence[-SUFFIX_TOKENS:]
    device = next(model.parameters()).device
    produced = generate(model, torch.as_tensor(prompt, device=device)[None], SUFFIX_TOKENS, temperature=0)
    produced = produced[0, -SUFFIX_TOKENS:].cpu()
    window, prefix = prompt[:-PREFIX_TOKENS], prompt[-PREFIX_TOKENS:]
    first = next(i for i in range(len(window) - PREFIX_TOKENS + 1)
                 if np.array_equal(window[i : i + PREFIX_TOKENS], prefix))
    text = lambda ids: tokenizer.decode([int(t) for t in ids])  # noqa: E731
    hits = (produced.numpy() == suffix).sum()
    return "\n".join([
        f"copy case {case} of {run_path / 'copy_cases.npz'}",
        f"in the context, earlier: ...{text(window[max(0, first - 20):first])}[{text(prefix)}]"
        f"[{text(window[first + PREFIX_TOKENS:first + PREFIX_TOKENS + SUFFIX_TOKENS])}]...",
        f"the prefix, given again:  {text(prefix)!r}",
        f"true suffix:              {text(suffix)!r}",
        f"model's greedy suffix:    {text(produced)!r}   ({hits} of {SUFFIX_TOKENS} tokens right"
        + (", copied exactly)" if hits == SUFFIX_TOKENS else ")"),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grokcopy.model.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory (its newest good checkpoint) or a checkpoint file")
    parser.add_argument("--prompt", default="def ", help="text to continue (default 'def ')")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0: the whole vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copy-demo", action="store_true", help="show one held-out copy case instead")
    parser.add_argument("--case", type=int, default=0, help="which copy case (0-199) with --copy-demo")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.temperature < 0 or args.top_k < 0:
        raise UsageError("--max-new-tokens must be >= 1, --temperature and --top-k >= 0")
    model, tokenizer, _ = load_run(args.source)
    if args.copy_demo:
        print(copy_demo(model, tokenizer, resolve_checkpoint(args.source)[0].path, args.case))
        return 0
    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        raise UsageError("--prompt is empty after tokenisation; give some text")
    generator = torch.Generator().manual_seed(args.seed)
    out = generate(model, torch.tensor([ids], device=next(model.parameters()).device), args.max_new_tokens,
                   args.temperature, args.top_k or None, generator)
    print(tokenizer.decode(out[0].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
