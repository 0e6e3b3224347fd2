"""The keys of a metrics.jsonl record: the one place a metric is named and said what it means.

The trainer writes every `log_every` steps a training record (STEP ... ELAPSED_S) and, at every
eval, one record that adds the eval keys. Writers (train.py, evals/copying.py, evals/scores.py,
evals/noise_scale.py) and readers (evals/onsets.py, curves.py, report.py, inspect.py and the
TensorBoard / W&B writers) use these names, so a renamed metric fails at import, not silently as
an empty plot. `describe` says what any key means; tests check that every key a real run writes
has a description.
"""

from __future__ import annotations

# What each key means is said once, in DESCRIPTIONS below.
# Every record
STEP = "step"
TOKENS = "tokens"
LOSS = "loss"
LR = "lr"
GRAD_NORM = "grad_norm"
TOKENS_PER_S = "tokens_per_s"
ELAPSED_S = "elapsed_s"

# Eval records
VAL_LOSS = "val_loss"
COPY_ACC = "copy_acc"
COPY_ACC_PAPER50 = "copy_acc_paper50"
COPY_CONTROL_ACC = "copy_control_acc"
COPY_TOKEN_ACC = "copy_token_acc"
COPY_CONTROL_TOKEN_ACC = "copy_control_token_acc"
COPY_GAIN = "copy_gain"
REPEAT_ACC = "repeat_acc"

# Head scores: [layer][head] matrices; best_head(name) is the max over heads, one value per layer.
# TRAIN_PREFIX marks those measured on training batches (--train-stats-every).
INDUCTION = "induction"
PREVIOUS_TOKEN = "previous_token"
PREFIX_MATCHING = "prefix_matching"
HEAD_SCORES = (INDUCTION, PREVIOUS_TOKEN, PREFIX_MATCHING)
TRAIN_PREFIX = "train_"

# Gradient noise scale (evals/noise_scale.py), when grad_accum >= 2
NOISE_SCALE = "noise_scale"
GRAD_SQ = "grad_sq"
GRAD_TRACE_COV = "grad_trace_cov"
NOISE_SCALE_STEPS = "noise_scale_steps"


def best_head(score: str) -> str:
    """The key of a head score's per-layer maximum over heads: best_head("induction") == "induction_max"."""
    return f"{score}_max"


TRAINING_RECORD = (STEP, TOKENS, LOSS, LR, GRAD_NORM, TOKENS_PER_S, ELAPSED_S)

DESCRIPTIONS: dict[str, str] = {
    STEP: "optimizer steps taken",
    TOKENS: "training tokens seen (all ranks and accumulation steps, cumulative over resumes)",
    LOSS: "training loss of this step's batch",
    LR: "learning rate of this step",
    GRAD_NORM: "global L2 norm of the accumulated gradient before clipping",
    TOKENS_PER_S: "training tokens per second since the last logged step, evals left out",
    ELAPSED_S: "wall seconds since this trainer process started",
    VAL_LOSS: "loss on 32 held-out windows",
    COPY_ACC: "exact copy accuracy: all 6 suffix tokens right (paper protocol)",
    COPY_ACC_PAPER50: "exact copy accuracy over the first 50 cases (the paper's sample size)",
    COPY_CONTROL_ACC: "exact copy accuracy when the prefix follows an unrelated window",
    COPY_TOKEN_ACC: "per-token accuracy over the 6-token suffix",
    COPY_CONTROL_TOKEN_ACC: "per-token accuracy over the suffix in the control",
    COPY_GAIN: "copy_acc - copy_control_acc: what copying adds to exact copy accuracy",
    REPEAT_ACC: "next-token accuracy over the second copy of repeated random trained tokens",
    INDUCTION: "attention on the token after the previous occurrence, per layer and head",
    PREVIOUS_TOKEN: "attention on the previous token in held-out text, per layer and head",
    PREFIX_MATCHING: "attention on the token after an earlier occurrence in held-out text, per layer and head",
    NOISE_SCALE: "gradient noise scale B_simple = tr(Sigma)/|G|^2, in sequences",
    GRAD_SQ: "|G|^2 estimate behind noise_scale",
    GRAD_TRACE_COV: "tr(Sigma) estimate behind noise_scale",
    NOISE_SCALE_STEPS: "steps averaged into noise_scale since the previous eval",
}


def describe(key: str) -> str | None:
    """What a record key means, or None for a key nothing here defines."""
    if key in DESCRIPTIONS:
        return DESCRIPTIONS[key]
    base = key.removeprefix(TRAIN_PREFIX)
    measured_on = " (on training batches)" if base != key else ""
    if base in HEAD_SCORES:
        return DESCRIPTIONS[base] + measured_on
    if base.endswith("_max") and base.removesuffix("_max") in HEAD_SCORES:
        return "best head per layer of " + base.removesuffix("_max") + measured_on
    return None
