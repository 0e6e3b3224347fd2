"""Claim 1's plateau test (evals/plateau.py) on synthetic val-loss curves with known answers."""

import numpy as np
import pytest

from grokcopy.evals.plateau import flat_before, slope_and_stderr, slope_windows


def test_slope_and_stderr_match_the_textbook_formulas():
    rng = np.random.default_rng(0)
    x = np.arange(0, 3000, 300)
    y = 4.0 - 2e-4 * x + rng.normal(0, 0.01, len(x))
    slope, stderr = slope_and_stderr(x, y)
    fit, cov = np.polyfit(x, y, 1, cov="unscaled")
    residuals = y - np.polyval(fit, x)
    assert slope == pytest.approx(fit[0])
    assert stderr == pytest.approx(np.sqrt(cov[0, 0] * residuals @ residuals / (len(x) - 2)))
    assert slope_and_stderr([0, 1, 2], [3.0, 2.0, 1.0]) == (pytest.approx(-1.0), pytest.approx(0.0))
    with pytest.raises(ValueError):
        slope_and_stderr([0, 1], [1.0, 2.0])


def test_a_falling_line_is_never_flat_and_noise_alone_is():
    steps = list(range(300, 6001, 300))
    falling = [4.0 - 1e-4 * s + 0.001 * (-1) ** i for i, s in enumerate(steps)]  # slope >> its scatter
    assert not any(w.flat() for w in slope_windows(steps, falling))
    rng = np.random.default_rng(1)
    noise = list(3.0 + rng.normal(0, 0.02, len(steps)))  # no trend at all
    assert sum(w.flat() for w in slope_windows(steps, noise)) >= 0.8 * (len(steps) - 4)


def test_flat_before_counts_the_flat_stretch_that_reaches_the_surge():
    # falls steeply until step 1500, then flat up to noise; the surge at 4200
    rng = np.random.default_rng(2)
    steps = list(range(300, 7001, 300))
    losses = [max(3.0, 4.5 - 1e-3 * s) + rng.normal(0, 0.005) for s in steps]
    verdict = flat_before(steps, losses, surge=4200)
    assert verdict.until == 3900  # the last eval before the surge
    # flat from about 1500 on: the stretch reaching 3900 starts within an eval or two of it
    assert 3900 - 1800 - 300 <= verdict.flat_for <= 3900 - 1500 + 300
    assert 1500 <= verdict.first_flat <= 3000
    assert abs(verdict.slope_per_1k) < 2 * verdict.stderr_per_1k


def test_flat_before_a_loss_still_falling_is_zero_and_too_few_evals_is_none():
    steps = list(range(300, 7001, 300))
    losses = [4.0 - 2e-4 * s + 0.002 * (-1) ** i for i, s in enumerate(steps)]
    verdict = flat_before(steps, losses, surge=3000)
    assert verdict.flat_for == 0 and verdict.first_flat is None
    assert verdict.slope_per_1k == pytest.approx(-0.2, abs=0.01)
    # a surge at the 4th eval leaves 3 evals before it: fewer than the 5-eval window
    assert flat_before(steps, losses, surge=1200).flat_for is None
    # no surge: tested up to the last eval
    assert flat_before(steps, losses, surge=None).until == steps[-1] == 6900
