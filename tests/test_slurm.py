"""scripts/slurm/train_paper_162m.sbatch: its torchrun command line parses, by torchrun's own parser
and by train.py's, with the paper's batch reachable on the nodes it asks for."""

import os
import shlex
import subprocess
from pathlib import Path

from torch.distributed.run import get_args_parser

import train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm" / "train_paper_162m.sbatch"


def command_line(**slurm_env) -> list[str]:
    env = {**os.environ, "GROKCOPY_SBATCH_DRY_RUN": "1", "PATH": os.environ["PATH"], **slurm_env}
    stub = Path(os.environ.get("TMPDIR", "/tmp")) / "grokcopy-scontrol"  # stands in for Slurm's scontrol
    stub.mkdir(exist_ok=True)
    (stub / "scontrol").write_text("#!/bin/sh\necho node001\necho node002\n")
    (stub / "scontrol").chmod(0o755)
    env["PATH"] = f"{stub}:{env['PATH']}"
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def test_sbatch_torchrun_line_parses():
    cmd = command_line(SLURM_NNODES="2", SLURM_JOB_NODELIST="node[001-002]", SLURM_JOB_ID="42")
    assert cmd[0] == "torchrun"
    args = get_args_parser().parse_args(cmd[1:])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("2", "8", "c10d")
    assert args.rdzv_endpoint == "node001:29500" and args.rdzv_id == "42" and args.training_script == "train.py"
    cfg, model_cfg = train.parse_args(args.training_script_args)
    assert cfg.preset == "paper-162m" and model_cfg.n_layers == 12 and cfg.global_batch == 32
    world = 2 * 8
    assert cfg.global_batch % (cfg.batch_size * world) == 0  # train.finish_config's rule: grad_accum fits
    train.finish_config(cfg, model_cfg, world, data_vocab=32000)
    assert cfg.grad_accum * cfg.batch_size * world == 32


def test_sbatch_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
