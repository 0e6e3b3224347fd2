"""The copy-surge forecasters (evals/onset_predictor.py) on synthetic runs with known surges."""

import math

import numpy as np
import pytest

from grokcopy.evals.onset_predictor import (
    CriticalBatchLaw,
    MedianSurge,
    PrecursorLag,
    TokensLaw,
    config_seed_error,
    fit_elsewhere,
    forecasts_for,
    leave_one_seed_out,
    run_series,
    score,
)


def synthetic_run(surge: int | None, *, crossing: int | None = None, seed: int = 0, batch: int = 8,
                  lr: float = 1e-2, b_noise: float = 40.0, last: int = 6000, name: str = "run"):
    """A run with an eval every 300 steps: the layer-1 previous-token score jumps from 0.1 to 0.6 at
    `crossing`, the token-level copy gain from 0 to 0.25 at `surge` (so its 3-eval centred mean first
    reaches 0.1 exactly there), and the noise-scale terms give B_simple = `b_noise`."""
    records = []
    for step in range(300, last + 1, 300):
        up = surge is not None and step >= surge
        pt = 0.6 if crossing is not None and step >= crossing else 0.1
        records.append({"step": step, "val_loss": 4.0 - step / 1e4, "copy_gain": 0.0, "copy_acc": 0.0,
                        "copy_token_acc": 0.2 + (0.25 if up else 0.0), "copy_control_token_acc": 0.2,
                        "previous_token_max": [0.05, pt, 0.05], "induction_max": [0.0, 0.0, 0.3 if up else 0.0],
                        "grad_sq": 1.0, "grad_trace_cov": b_noise, "noise_scale": b_noise, "noise_scale_steps": 300})
    config = {"lr": lr, "batch_size": batch, "weight_decay": 0.1, "seq_len": 256, "seed": seed,
              "model": {"dropout": 0.0, "n_layers": 3}}
    return run_series(name, config, records)


def test_run_series_reads_the_surge_and_the_recipe():
    run = synthetic_run(2100, crossing=1500, batch=16, seed=2)
    assert run.surge == 2100 and run.batch == 16 and run.seed == 2
    assert run.prefix(3).steps == [300, 600, 900] and run.prefix(3).surge is None


def test_precursor_lag_learns_the_lag_and_forecasts_exactly_after_the_crossing():
    train = [synthetic_run(c + 600, crossing=c, seed=s) for s, c in enumerate((900, 1500, 2400, 3000))]
    forecaster = PrecursorLag("previous-token score").fit(train)
    assert forecaster.lag == 600
    assert forecaster.level in (0.2, 0.3, 0.4, 0.5, 0.6)  # every level between 0.1 and 0.6 fits equally
    test = synthetic_run(4200, crossing=3600)
    f = forecasts_for(test, forecaster, leads=(300, 900))
    assert f.at_lead[300] == (3900, 4200)  # the crossing at 3600 is known at 3900: 3600 + 600
    # 900 before the surge (3300) the crossing has not come: "not before the next eval plus the lag"
    assert f.at_lead[900] == (3300, 3300 + 300 + 600)


def test_a_forecaster_never_reads_past_its_prefix():
    train = [synthetic_run(c + 600, crossing=c, seed=s) for s, c in enumerate((900, 1500, 2400))]
    run = synthetic_run(3000, crossing=2400)
    garbage = synthetic_run(3000, crossing=2400)
    for r in garbage.evals:
        if r["step"] > 2100:  # everything after the forecast made 900 steps ahead
            r.update(previous_token_max=[9.0, 9.0, 9.0], val_loss=-1.0, grad_trace_cov=-5.0)
    garbage.surge = run.surge  # the scoring knows the true surge; the forecaster must not need it
    for make in (MedianSurge, TokensLaw, CriticalBatchLaw, lambda: PrecursorLag("previous-token score"),
                 lambda: PrecursorLag("val loss")):
        forecaster = make().fit(train)
        assert forecasts_for(run, forecaster, (900,)).at_lead == forecasts_for(garbage, forecaster, (900,)).at_lead


def test_median_and_tokens_laws():
    train = [synthetic_run(s, seed=i, batch=b) for i, (s, b) in enumerate(((1200, 16), (2400, 8), (4800, 4)))]
    median = MedianSurge().fit(train)
    assert median.forecast(synthetic_run(None).prefix(1)) == 2400  # at step 300: the median of all three
    assert median.forecast(synthetic_run(None).prefix(10)) == 4800  # at 3000: only 4800 is still to come
    assert median.forecast(synthetic_run(None).prefix(20)) == 6300  # none left: the next eval
    tokens = TokensLaw().fit(train)  # every run surged at 19,200 sequences
    assert tokens.forecast(synthetic_run(None, batch=32).prefix(1)) == 600


def test_critical_batch_law_uses_the_runs_own_noise_scale():
    # S = S_min (1 + B_noise / B) with S_min = 600: B_noise 40, batch 8 -> 3600; B_noise 8, batch 8 -> 1200
    train = [synthetic_run(3600, b_noise=40.0, seed=0), synthetic_run(1200, b_noise=8.0, seed=1)]
    law = CriticalBatchLaw().fit(train)
    assert law.s_min == pytest.approx(600)
    assert law.forecast(synthetic_run(None, b_noise=24.0, batch=8).prefix(2)) == pytest.approx(2400)
    # an unmeasurable noise scale (|G|^2 estimate <= 0) falls back to the tokens law
    noisy = synthetic_run(None, b_noise=24.0, batch=8)
    for r in noisy.evals:
        r["grad_sq"] = -1.0
    assert law.forecast(noisy.prefix(2)) == TokensLaw().fit(train).forecast(noisy.prefix(2))


def test_leave_one_seed_out_never_trains_on_the_held_out_seed():
    # seed 0's runs surge at 1200 and seeds 1, 2 at 3000: a forecaster that saw seed 0 would say 1200 for it
    runs = [synthetic_run(1200 if s == 0 else 3000, seed=s, name=f"s{s}-{k}") for s in range(3) for k in range(2)]
    forecasts = leave_one_seed_out(runs, MedianSurge, leads=(600,))
    assert len(forecasts) == 6
    by_seed = {f.run.seed: f.at_lead[600][1] for f in forecasts}
    assert by_seed[0] == 3000  # trained on seeds 1 and 2 only
    assert by_seed[1] == by_seed[2] == 3000  # median of 1200, 1200, 3000, 3000 later than 2400: 3000
    result = score(forecasts, leads=(600,))
    assert result.mae[600] == pytest.approx((2 * 1800 + 0) / 6)
    assert result.scored[600] == 6 and result.censored == 0


def test_score_counts_false_alarms_on_runs_that_never_surged():
    train = [synthetic_run(c + 600, crossing=c, seed=1) for c in (900, 1500)]
    forecaster = PrecursorLag("previous-token score").fit(train)
    crossed = forecasts_for(synthetic_run(None, crossing=1200), forecaster)  # says 1800: a false alarm
    never = forecasts_for(synthetic_run(None), forecaster)  # never crosses: says "later than now"
    result = score([crossed, never])
    assert (result.false_alarms, result.censored) == (1, 2)
    assert all(v is None for v in result.mae.values())


def test_config_seed_error_is_the_seed_spread_in_steps():
    runs = [synthetic_run(s, seed=i) for i, s in enumerate((1200, 1800, 3000))]
    runs.append(synthetic_run(2000, batch=16, seed=0))  # alone in its configuration: not scored
    runs.append(synthetic_run(None, seed=3))  # no surge: not scored
    error, n = config_seed_error(runs)
    assert n == 3
    assert error == pytest.approx(np.mean([abs(1200 - 2400), abs(1800 - 2100), abs(3000 - 1500)]))
    assert math.isfinite(error)


def test_fit_elsewhere_fits_once_on_the_other_runs():
    train = [synthetic_run(s, seed=0) for s in (1200, 1800, 2400)]
    test = [synthetic_run(4200, seed=0), synthetic_run(1200, seed=1)]
    forecasts = fit_elsewhere(train, test, MedianSurge, leads=(300,))
    assert [f.at_lead[300][1] for f in forecasts] == [3900 + 300, 1800]  # none later than 3900: the next eval
