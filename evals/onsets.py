"""When things happen in a run: loss plateau, copy onset and per-layer induction onset, in steps.

All three read the eval records of a run's metrics.jsonl (records holding "copy_gain"):
- loss plateau step: the val loss is smoothed by a trailing mean over `smooth` evals; the plateau
  starts at the first eval i (steps[i]) after which the smoothed loss falls by less than
  `rel_drop` (a fraction of its value) over the next `window` evals. None if it never flattens
  within the records. It marks where the fast early loss drop ends and the slow phase begins.
- copy onset step: the first eval at which copy gain (copy_acc - copy_control_acc, exact suffixes),
  smoothed by a centred mean over `smooth` evals, reaches half of its maximum over the run; None
  when that maximum stays below `min_gain` (a few cases of 200: a "maximum" that small is noise).
  It depends on where the run stops: a run cut mid-surge has a smaller maximum, so an earlier onset.
- copy surge step: the first eval at which the token-level copy gain (copy_token_acc -
  copy_control_token_acc), smoothed the same way, reaches the fixed level `level` (0.1: about three
  times its pre-surge value in the tiny runs). A fixed level compares runs of different lengths, and
  token accuracy moves before exact 6-token suffixes do, so it is the less noisy of the two at CPU scale.
- induction onset step of layer l: the first eval at which the best head of layer l has an
  induction score (repeated random tokens, evals.copying.repeat_metrics) >= `threshold`; None if
  it never does. 0.3 sits far above chance (about 1 / context) and below a formed head (> 0.8).
"""

from __future__ import annotations

import numpy as np

from grokcopy.evals import metric_keys as mk

PLATEAU_SMOOTH = 3  # evals in the trailing mean
PLATEAU_WINDOW = 5  # evals looked ahead
PLATEAU_REL_DROP = 0.01  # less than 1% further drop over the window = plateau
INDUCTION_THRESHOLD = 0.3
COPY_SMOOTH = 3  # evals in the centred mean of the copy curves
MIN_COPY_GAIN = 0.03  # 6 of the 200 copy cases: pre-surge noise reaches 0.02 in the smoothed gain
COPY_SURGE_LEVEL = 0.1


def half_max_step(steps: list[int], values: list[float]) -> int | None:
    """First step at which `values` reaches half of its maximum (None if the maximum is <= 0)."""
    if not values or max(values) <= 0:
        return None
    half = 0.5 * max(values)
    return next(s for s, v in zip(steps, values, strict=True) if v >= half)


def copy_token_gain(record: dict) -> float:
    """Token-level copy accuracy above the control's (the control has no earlier copy to read)."""
    return record[mk.COPY_TOKEN_ACC] - record[mk.COPY_CONTROL_TOKEN_ACC]


def eval_records(records: list[dict]) -> list[dict]:
    """The records that carry eval results (train.py logs them every eval_every steps)."""
    return [r for r in records if mk.COPY_GAIN in r]


def smoothed(values: list[float], smooth: int) -> np.ndarray:
    """Trailing mean over up to `smooth` values (the first ones average what exists so far)."""
    v = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(len(v))
    lo = np.maximum(0, i + 1 - smooth)
    return (c[i + 1] - c[lo]) / (i + 1 - lo)


def loss_plateau_step(steps: list[int], losses: list[float], *, smooth: int = PLATEAU_SMOOTH,
                      window: int = PLATEAU_WINDOW, rel_drop: float = PLATEAU_REL_DROP) -> int | None:
    """First step whose smoothed loss drops by less than `rel_drop` over the next `window` evals."""
    s = smoothed(losses, smooth)
    for i in range(len(s) - window):
        if s[i] - s[i + window] < rel_drop * abs(s[i]):
            return steps[i]
    return None


def centred(values: list[float], smooth: int) -> np.ndarray:
    """Centred mean over up to `smooth` values (fewer at the ends)."""
    v = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(len(v))
    lo, hi = np.maximum(0, i - smooth // 2), np.minimum(len(v), i + smooth - smooth // 2)
    return (c[hi] - c[lo]) / (hi - lo)


def copy_onset_step(records: list[dict], *, smooth: int = COPY_SMOOTH, min_gain: float = MIN_COPY_GAIN
                    ) -> int | None:
    """First eval step whose smoothed copy gain is >= half its run maximum (None: maximum < min_gain)."""
    evals = eval_records(records)
    gain = centred([r[mk.COPY_GAIN] for r in evals], smooth)
    if len(gain) == 0 or gain.max() < min_gain:
        return None
    return half_max_step([r[mk.STEP] for r in evals], gain.tolist())


def copy_surge_step(records: list[dict], *, level: float = COPY_SURGE_LEVEL, smooth: int = COPY_SMOOTH
                    ) -> int | None:
    """First eval step whose smoothed token-level copy gain is >= `level`."""
    evals = eval_records(records)
    gain = centred([copy_token_gain(r) for r in evals], smooth)
    return next((r[mk.STEP] for r, g in zip(evals, gain, strict=True) if g >= level), None)


def induction_onset_steps(records: list[dict], threshold: float = INDUCTION_THRESHOLD) -> list[int | None]:
    """Per layer: the first eval step whose best-head induction score is >= `threshold`."""
    evals = eval_records(records)
    if not evals:
        return []
    onsets: list[int | None] = []
    for layer in range(len(evals[0][mk.best_head(mk.INDUCTION)])):
        onsets.append(next((r[mk.STEP] for r in evals if r[mk.best_head(mk.INDUCTION)][layer] >= threshold), None))
    return onsets


def run_onsets(records: list[dict], threshold: float = INDUCTION_THRESHOLD) -> dict:
    """{"plateau", "copy_onset", "copy_surge": step, "induction_onsets": [step per layer]} (None: not reached)."""
    evals = eval_records(records)
    return {
        "plateau": loss_plateau_step([r[mk.STEP] for r in evals], [r[mk.VAL_LOSS] for r in evals]),
        "copy_onset": copy_onset_step(records),
        "copy_surge": copy_surge_step(records),
        "induction_onsets": induction_onset_steps(records, threshold),
    }
