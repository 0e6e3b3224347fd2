"""Where each layer of a checkpoint attends, and how much of its input every token shares.

    python docs/tiny_layer_anatomy.py RUN/checkpoints/step-00002000.pt [more ...] [--data CORPUS_DIR]

The table of docs/TINY.md round 6 ("Why the head never forms in layer 0"). For each layer, on 16
windows of the corpus's validation split (each starting with the end-of-text sink, as `tiny` trains):

- shared fraction: the norm of the attention input's mean over positions and windows, divided by the
  mean norm of one position's input. A RoPE head can attend by offset whatever the tokens only
  through such a shared direction in its queries and keys.
- per head, the attention mass on offsets 0, 1 and 2 (t, t-1, t-2), averaged over queries 10-255.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from grokcopy.data.corpus import open_corpus
from grokcopy.model.llama import apply_rope, rope_tables
from grokcopy.model.run_dir import load_checkpoint, resolve_checkpoint

WINDOWS, WINDOW, FIRST_QUERY = 16, 256, 10


def layer_rows(model, idx: torch.Tensor) -> list[str]:
    """One line per layer of `model` on token windows idx [B, T] int64."""
    cfg = model.cfg
    inputs: list[torch.Tensor] = []
    hooks = [block.attn.register_forward_hook(lambda m, args, out: inputs.append(args[0])) for block in model.blocks]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    B, T = idx.shape
    cos, sin = rope_tables(T, cfg.head_dim, cfg.rope_theta, idx.device)
    queries = torch.arange(FIRST_QUERY, T)
    rows = []
    for layer, (block, x) in enumerate(zip(model.blocks, inputs, strict=True)):
        body = x[:, 1:]  # without the sink position
        shared = (body.mean((0, 1)).norm() / body.norm(dim=-1).mean()).item()
        with torch.no_grad():
            q, k, _ = block.attn.wqkv(x).split(
                [cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim], dim=-1)
            q = apply_rope(q.view(B, T, cfg.n_heads, cfg.head_dim), cos, sin).transpose(1, 2)
            k = apply_rope(k.view(B, T, cfg.kv_heads, cfg.head_dim), cos, sin).transpose(1, 2)
            k = k.repeat_interleave(cfg.n_heads // cfg.kv_heads, dim=1)
            scores = (q @ k.transpose(-1, -2)) / cfg.head_dim**0.5
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)
            probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
        heads = []
        for head in range(cfg.n_heads):
            mass = [probs[:, head, queries, queries - offset].mean().item() for offset in (0, 1, 2)]
            heads.append(f"head {head}: t {mass[0]:.2f} t-1 {mass[1]:.2f} t-2 {mass[2]:.2f}")
        rows.append(f"  layer {layer}: shared fraction {shared:.2f} | " + " | ".join(heads))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files (RUN/checkpoints/step-*.pt)")
    parser.add_argument("--data", default="", help="the corpus directory (default: the run's own, from its config)")
    args = parser.parse_args()
    for path in args.checkpoints:
        run, _ = resolve_checkpoint(path)
        config = run.read_config()
        model, _ = load_checkpoint(path)
        model.eval()
        val = open_corpus(args.data or config["data_dir"]).val
        starts = np.random.default_rng(0).integers(0, len(val) - WINDOW, WINDOWS)
        idx = torch.as_tensor(np.stack([val.read(int(s), WINDOW) for s in starts]).astype(np.int64))
        if config.get("sink"):
            idx[:, 0] = config["data_meta"]["tokenizer"]["eot_id"]
        print(path)
        print("\n".join(layer_rows(model, idx)))


if __name__ == "__main__":
    main()
