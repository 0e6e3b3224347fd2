"""`python tests/train_killed_at_step.py N ARGS...`: train.py ARGS, SIGKILLed by itself as soon as
step N is done (logged, and checkpointed if one was due): fault injection for the crash-resume
tests, kept out of train.py."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402

kill_after = int(sys.argv[1])
real_train_step = train.train_step


def train_step(train_model, model, optimizer, sampler, cfg, step, *args, **kwargs):
    if step == kill_after:  # step N is complete: the call for step N + 1 never runs
        os.kill(os.getpid(), signal.SIGKILL)
    return real_train_step(train_model, model, optimizer, sampler, cfg, step, *args, **kwargs)


train.train_step = train_step
sys.exit(train.main(sys.argv[2:]))
