"""Weights & Biases sink: the metrics.jsonl records, under the same names as TensorBoard's tags.

train.py hands each record to `WandbLog.write` where it appends it to metrics.jsonl (MetricsLog), so
W&B, TensorBoard and the file hold the same numbers. Off unless `--wandb`; needs the `wandb` extra
(`pip install -e '.[wandb]'`). `WANDB_MODE=offline` writes the run under <run>/wandb with no network
(`wandb sync` uploads it later). A resumed run continues the same W&B run: its id is kept in the run
directory (RunDir.wandb_id_path).
"""

from __future__ import annotations

import importlib.util
import uuid

from grokcopy.evals import metric_keys as mk
from grokcopy.evals.tensorboard import scalar_tags
from grokcopy.model.run_dir import RunDir


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


class WandbLog:
    """One W&B run per run directory; only rank 0 should make one."""

    def __init__(self, run: RunDir, project: str, config: dict):
        import wandb

        if run.wandb_id_path.is_file():
            run_id = run.wandb_id_path.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]  # W&B ids: lower-case letters and digits
            run.wandb_id_path.write_text(run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(project=project, name=run.path.name, id=run_id, resume="allow", config=config,
                              dir=str(run.path))

    def write(self, record: dict) -> None:
        data = scalar_tags(record)
        if mk.INDUCTION in record:  # the layer x head matrix, as TensorBoard's induction/heads image
            data["induction/heads"] = self.wandb.Table(
                columns=[f"head {h}" for h in range(len(record[mk.INDUCTION][0]))], data=record[mk.INDUCTION])
        self.run.log(data, step=record[mk.STEP])

    def close(self) -> None:
        self.run.finish()
