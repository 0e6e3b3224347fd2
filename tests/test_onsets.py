"""Onset definitions on synthetic curves with known answers."""

import numpy as np

from grokcopy.evals.onsets import (
    centred,
    copy_onset_step,
    copy_surge_step,
    induction_onset_steps,
    loss_plateau_step,
    run_onsets,
    smoothed,
)


def synthetic_records():
    """Evals every 100 steps: loss falls to a plateau at step 1000, copy gain and layer-1 induction
    rise as a sigmoid centred at step 3000; layer 0 never forms an induction head."""
    records = []
    for step in range(100, 6001, 100):
        loss = max(3.0, 8.0 - 0.5 * (step / 100)) - (0.8 if step >= 3000 else 0.0)
        rise = 1 / (1 + np.exp(-(step - 3000) / 100))
        records.append({"step": step, "tokens": 512 * step, "loss": loss, "val_loss": loss,
                        "copy_gain": 0.8 * rise, "copy_acc": 0.8 * rise + 0.05, "copy_control_acc": 0.05,
                        "copy_token_acc": 0.3 + 0.5 * rise, "copy_control_token_acc": 0.3,
                        "repeat_acc": 0.9 * rise,
                        "induction_max": [0.01, 0.9 * rise], "induction": [[0.01, 0.0], [0.9 * rise, 0.0]],
                        "previous_token_max": [0.05, 0.6], "prefix_matching_max": [0.01, 0.5 * rise]})
    return records


def test_smoothed_is_a_trailing_mean_and_centred_a_centred_one():
    assert np.allclose(smoothed([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    assert np.allclose(centred([1, 2, 3, 7], 3), [1.5, 2, 4, 5])


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
    # token gain 0.5 * sigmoid: raw it first passes 0.1 at step 2900 (0.13); the centred mean agrees
    assert onsets["copy_surge"] == copy_surge_step(records) == 2900
    assert copy_surge_step(records, level=0.6) is None, "never reaches the level"


def test_copy_onset_ignores_noise():
    """One case in 200 flickering (gain 0.005) is no onset; a lone spike is smoothed below half the surge."""
    flicker = [{"step": 100 * i, "copy_gain": 0.005 * (i % 2)} for i in range(1, 30)]
    assert copy_onset_step(flicker) is None
    gains = [0.0] * 10 + [0.06] + [0.0] * 9 + [0.02, 0.04, 0.08, 0.1, 0.1, 0.1]  # spike at step 1100
    records = [{"step": 100 * (i + 1), "copy_gain": g} for i, g in enumerate(gains)]
    # centred means: 0.02 at the spike; 0.047 (step 2200) then 0.073 (step 2300) against half of 0.1
    assert copy_onset_step(records) == 2300
