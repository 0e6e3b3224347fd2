"""evals.onset_laws: a law the onsets follow exactly has spread 1; the others and the seed floor."""

import pytest

from grokcopy.evals.noise_scale import pooled_noise_scale
from grokcopy.evals.onset_laws import OnsetConfig, law_spreads, law_table, seed_spread


def test_the_law_the_onsets_follow_has_spread_one():
    # LR x steps is constant (intensity), the batch does not matter
    configs = [OnsetConfig(lr, batch, [round(30 / lr)] * 2, b_noise=10.0) for lr in (1e-3, 3e-3, 1e-2)
               for batch in (4, 8)]
    spreads = law_spreads(configs)
    assert spreads["LR x steps"] == pytest.approx(1.0)
    assert spreads["steps"] == pytest.approx(10.0)
    assert spreads["tokens (S x B)"] == pytest.approx(20.0)
    assert law_table(configs)[2].startswith("| LR x steps | 1.00x |"), "the best law comes first"


def test_seed_floor_and_configurations_left_out():
    configs = [OnsetConfig(1e-2, 4, [1000, 1500]), OnsetConfig(1e-2, 8, [800, None]), OnsetConfig(1e-2, 16, [600, 660])]
    assert seed_spread(configs) == pytest.approx(1.5)
    spreads = law_spreads(configs)
    assert spreads["steps"] == pytest.approx(1250 / 630), "the configuration with an unreached seed is left out"
    assert spreads["critical batch: S / (1 + B_noise/B)"] is None, "no B_noise measured"
    assert "left out, some seed had no onset: LR 0.01 batch 8" in law_table(configs)[-1]


def test_pooled_noise_scale_weights_windows_by_steps():
    records = [{"step": 300, "grad_sq": 1.0, "grad_trace_cov": 10.0, "noise_scale_steps": 300},
               {"step": 600, "grad_sq": 0.001, "grad_trace_cov": 9.0, "noise_scale_steps": 300},
               {"step": 900, "grad_sq": 1.0, "grad_trace_cov": 30.0, "noise_scale_steps": 100},
               {"step": 950, "loss": 2.0}]
    assert pooled_noise_scale(records, until_step=600) == pytest.approx(19.0 / 1.001)  # not the mean of 10 and 9000
    assert pooled_noise_scale(records) == pytest.approx((3000 + 2700 + 3000) / (300 + 0.3 + 100))
    assert pooled_noise_scale(records[3:]) is None
    unresolved = [{"step": 300, "grad_sq": 1.0, "grad_trace_cov": -3.0, "noise_scale_steps": 300}]
    assert pooled_noise_scale(unresolved) is None, "a negative tr(Sigma) estimate is not a noise scale"
