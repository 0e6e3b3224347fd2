"""report.md's claim sections (evals/claim_tables.py) on synthetic runs."""

import pytest

from grokcopy.evals.claim_tables import forecast_lines, plateau_lines, regime, regime_lines
from grokcopy.evals.noise_scale import pooled_noise_scale
from tests.test_onset_predictor import synthetic_run


def test_regime_is_the_side_of_b_noise_the_batch_is_on():
    assert regime(8, 40.0).startswith("tokens") and regime(64, 40.0).startswith("steps")
    assert regime(8, None) == "not measurable"


def test_claim_sections_one_row_per_run_and_the_forecasters_only_with_seeds():
    runs = [synthetic_run(c + 600, crossing=c, seed=s, b_noise=b, name=f"r{s}")
            for s, (c, b) in enumerate(((900, 40.0), (1500, 4.0), (2400, 40.0)))]
    runs.append(synthetic_run(None, seed=0, name="never"))
    plateau = plateau_lines(runs)
    rows = [line for line in plateau if line.startswith(("| r0 ", "| r1 ", "| r2 ", "| never "))]
    assert len(rows) == 4
    # the synthetic loss falls on a straight line: never flat
    assert all("never flat" in line or "too few" in line for line in rows)
    regimes = regime_lines(runs)
    assert any("| r1 | 8 | 4.0 | 2.00 | steps (B > B_noise) | 4.0 |" in line for line in regimes)
    assert any("| r0 | 8 | 40.0 | 0.20 | tokens (B < B_noise) | 40.0 |" in line for line in regimes)
    forecasts = forecast_lines(runs)
    assert any(line.startswith("| median surge step (trivial) |") for line in forecasts)
    assert forecast_lines([r for r in runs if r.seed == 0]) == []  # one seed: nothing to leave out


def test_forecasters_fitted_on_another_grid_score_every_run_here():
    train = [synthetic_run(c + 600, crossing=c, seed=s, name=f"old{s}") for s, c in enumerate((900, 1500, 2400))]
    test = [synthetic_run(3600, crossing=3000, name="new0"), synthetic_run(None, name="new1")]
    lines = forecast_lines(test, fitted_on=train)
    row = next(line for line in lines if line.startswith("| previous-token score crossing"))
    # lag 600 learnt on the old runs: exact 300 steps ahead; the run without a crossing is no false alarm
    assert row.split(" | ")[1] == "0 (1)" and "0 of 1" in row


def test_pooled_noise_scale_over_a_stretch():
    # two windows of 300 steps: B_simple 2 early (|G|^2 large), 40 later; from the start the early one weighs most
    records = [{"step": 300, "grad_sq": 1.0, "grad_trace_cov": 2.0, "noise_scale_steps": 300},
               {"step": 600, "grad_sq": 0.05, "grad_trace_cov": 2.0, "noise_scale_steps": 300}]
    assert pooled_noise_scale(records) == pytest.approx(4.0 / 1.05)
    assert pooled_noise_scale(records, after_step=300) == pytest.approx(40.0)
    assert pooled_noise_scale(records, until_step=300) == pytest.approx(2.0)
    assert pooled_noise_scale(records, until_step=300, after_step=300) is None
