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
from grokcopy.evals.scores import target_mass_scores
from grokcopy.model.run_dir import load_checkpoint, resolve_checkpoint

WINDOWS, WINDOW, FIRST_QUERY = 16, 256, 10


def offset_targets(batch: int, T: int, offset: int) -> torch.Tensor:
    """Key t - offset for queries t >= FIRST_QUERY, -1 (not scored) before: int64 [batch, T, 1]."""
    t = torch.arange(T)
    return torch.where(t >= FIRST_QUERY, t - offset, -1).expand(batch, T)[:, :, None].clone()


@torch.no_grad()
def layer_rows(model, idx: torch.Tensor) -> list[str]:
    """One line per layer of `model` on token windows idx [B, T] int64."""
    inputs: list[torch.Tensor] = []
    hooks = [block.attn.register_forward_hook(lambda m, args, out: inputs.append(args[0])) for block in model.blocks]
    model(idx)
    for hook in hooks:
        hook.remove()
    # [offset, layer, head]: the model's own attention-stats path, as the run's previous-token score
    mass = torch.stack([target_mass_scores(model, idx, offset_targets(*idx.shape, o), "cpu") for o in (0, 1, 2)])
    rows = []
    for layer, x in enumerate(inputs):
        body = x[:, 1:]  # without the sink position
        shared = (body.mean((0, 1)).norm() / body.norm(dim=-1).mean()).item()
        per_head = mass[:, layer].T.tolist()  # [head, offset]
        heads = [f"head {h}: t {m[0]:.2f} t-1 {m[1]:.2f} t-2 {m[2]:.2f}" for h, m in enumerate(per_head)]
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
