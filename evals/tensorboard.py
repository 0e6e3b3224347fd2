"""TensorBoard event files of a run: the metrics.jsonl records, as scalars and an induction image.

train.py hands each record to `TensorBoardLog.write` right where it appends the record to
metrics.jsonl, so the two hold the same numbers (TensorBoard stores scalars as float32). Needs the
`tensorboard` package (the `tb` extra); view with `tensorboard --logdir RUN_DIR/tb`.

Tags: train/{loss,lr,grad_norm,tokens_per_s,tokens,elapsed_s}, eval/{val_loss,repeat_acc},
copy/{copy_acc,copy_gain,...}, <score>_max/layer_N (best head per layer of induction_max,
previous_token_max, prefix_matching_max and the train_* scores), and at each eval the image
induction/heads: the layer x head matrix of induction scores.
"""

from __future__ import annotations

import importlib.util
import os

from grokcopy.evals import metric_keys as mk
from grokcopy.evals.curves import pyplot

EVAL_KEYS = (mk.VAL_LOSS, mk.REPEAT_ACC)


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def scalar_tags(record: dict) -> dict[str, float]:
    """The scalars of one metrics record, by TensorBoard tag (`step` is the x axis, not a scalar)."""
    scalars = {}
    for key, value in record.items():
        if key.endswith("_max") and isinstance(value, list):  # best head per layer of a score
            scalars.update({f"{key}/layer_{i}": float(v) for i, v in enumerate(value)})
        elif key != mk.STEP and isinstance(value, int | float):
            group = "copy" if key.startswith("copy_") else "eval" if key in EVAL_KEYS else "train"
            scalars[f"{group}/{key}"] = float(value)
    return scalars


def induction_figure(induction: list[list[float]], step: int):
    """A matplotlib heatmap of induction scores [layers][heads] on a fixed 0..1 colour scale."""
    plt = pyplot()

    n_layers, n_heads = len(induction), len(induction[0])
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * n_heads, 1.0 + 0.4 * n_layers), dpi=100)
    image = ax.imshow(induction, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    if n_layers * n_heads <= 256:  # numbers stay readable up to about a 16 x 16 grid
        for layer, row in enumerate(induction):
            for head, score in enumerate(row):
                ax.text(head, layer, f"{score:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if score > 0.6 else "white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"induction score, step {step}", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


class TensorBoardLog:
    """Writes metrics records to event files in `log_dir`. Only rank 0 should make one.

    `purge_step`: on resume, the first step that will be logged again; TensorBoard hides what an
    earlier process logged from there on, as train.py drops those lines from metrics.jsonl.
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, record: dict) -> None:
        step = record[mk.STEP]
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, step)
        if mk.INDUCTION in record:
            self.writer.add_figure("induction/heads", induction_figure(record[mk.INDUCTION], step), step)
        # flushed every record, so a killed run loses nothing that metrics.jsonl has
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
