"""Onset definitions on synthetic curves with known answers."""

import numpy as np

from evals.onsets import copy_onset_step, induction_onset_steps, loss_plateau_step, run_onsets, smoothed


def synthetic_records():
    """Evals every 100 steps: loss falls to a plateau at step 1000, copy gain and layer-1 induction
    rise as a sigmoid centred at step 3000; layer 0 never forms an induction head."""
    records = []
    for step in range(100, 6001, 100):
        loss = max(3.0, 8.0 - 0.5 * (step / 100)) - (0.8 if step >= 3000 else 0.0)
        rise = 1 / (1 + np.exp(-(step - 3000) / 100))
        records.append({"step": step, "tokens": 512 * step, "loss": loss, "val_loss": loss,
                        "copy_gain": 0.8 * rise, "copy_acc": 0.8 * rise + 0.05, "copy_control_acc": 0.05,
                        "repeat_acc": 0.9 * rise,
                        "induction_max": [0.01, 0.9 * rise], "induction": [[0.01, 0.0], [0.9 * rise, 0.0]]})
    return records


def test_smoothed_is_a_trailing_mean():
    assert np.allclose(smoothed([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])


def test_loss_plateau_step():
    steps = list(range(0, 200, 10))
    losses = [10 - i if i < 8 else 2.0 for i in range(20)]  # falls 1 per eval until step 80, then flat
    # smooth 1 (no smoothing), window 2: step 70 (loss 3) still drops 1 within 2 evals, step 80 does not
    assert loss_plateau_step(steps, losses, smooth=1, window=2, rel_drop=0.01) == 80
    # with a 3-eval trailing mean the smoothed curve reaches its floor two evals later
    assert loss_plateau_step(steps, losses, smooth=3, window=2, rel_drop=0.01) == 100
    assert loss_plateau_step(steps, [10 - i for i in range(20)], window=2) is None, "never flat"


def test_copy_and_induction_onsets():
    records = synthetic_records()
    assert copy_onset_step(records) == 3000  # sigmoid centre = half of the maximum
    assert induction_onset_steps(records, threshold=0.45) == [None, 3000]
    assert induction_onset_steps(records, threshold=0.2)[1] == 2900  # 0.9 * sigmoid(-1) = 0.24
    onsets = run_onsets(records)
    assert onsets["plateau"] == 1200  # floor at step 1000, + 2 evals for the 3-eval trailing mean
    assert onsets["copy_onset"] == 3000
    assert copy_onset_step([{"step": 1, "copy_gain": 0.0}]) is None
