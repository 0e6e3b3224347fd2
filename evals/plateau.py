"""Claim 1's test, stated in numbers: has the val loss flattened before the copy surge?

"Flat" at an eval means: over the last `window` evals (ending at that eval), the least-squares slope
of the val loss against steps is within `k` standard errors of zero, |slope| < k x SE(slope). The
standard error comes from the scatter of those evals about their own line, so the test asks whether
the loss still falls measurably more than it wobbles, with no threshold tuned to one run's scale. A
window of 5 evals (1,500 steps at tiny's eval_every 300) and k = 2 (a two-sided 95% test on 3 degrees
of freedom would need about 3.2, so 2 calls a loss flat somewhat *more* readily) are the defaults.

A loss that falls smoothly along a curve is not flat by this test however slowly it falls, because
its points sit close to their line; a loss whose fall is lost in its eval-to-eval noise is. The
slope itself (val loss per 1,000 steps) is reported beside the verdict, so a reader can see how
slowly a non-flat loss was still falling.

`flat_before(steps, losses, surge)` answers claim 1 for one run: how many steps before the surge the
loss had been flat by this test without a break (0: the window just before the surge was not flat;
None for the whole answer when there are fewer than `window` evals before the surge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLATEAU_TEST_WINDOW = 5  # evals per slope fit
PLATEAU_TEST_K = 2.0  # flat when |slope| < k x its standard error


@dataclass
class SlopeWindow:
    """The least-squares line through one window of evals: it ends at `step`."""

    step: int  # the window's last eval step
    slope: float  # val loss per step
    stderr: float  # standard error of the slope (from the residuals; 0 for a perfect line)

    def flat(self, k: float = PLATEAU_TEST_K) -> bool:
        """|slope| < k x stderr: the fall is not distinguishable from the scatter."""
        return abs(self.slope) < k * self.stderr


def slope_and_stderr(steps: list[int] | np.ndarray, losses: list[float] | np.ndarray) -> tuple[float, float]:
    """(slope, its standard error) of the ordinary least-squares line losses ~ a + slope x steps.
    Needs at least 3 points (the error has n - 2 degrees of freedom)."""
    x, y = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    n = len(x)
    if n < 3:
        raise ValueError(f"a slope's standard error needs >= 3 points, got {n}")
    dx = x - x.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ (y - y.mean())) / sxx
    residuals = y - y.mean() - slope * dx
    stderr = float(np.sqrt(residuals @ residuals / (n - 2) / sxx))
    return slope, stderr


def slope_windows(steps: list[int], losses: list[float], window: int = PLATEAU_TEST_WINDOW) -> list[SlopeWindow]:
    """One SlopeWindow per eval from the `window`-th on, each over the `window` evals ending there."""
    return [SlopeWindow(steps[end - 1], *slope_and_stderr(steps[end - window:end], losses[end - window:end]))
            for end in range(window, len(steps) + 1)]


@dataclass
class PlateauVerdict:
    """Claim 1 for one run: the loss before its surge (or before its last eval, without one)."""

    until: int  # the step tested up to: the last eval before the surge, or the run's last eval
    flat_for: int | None  # steps the loss had been flat without a break at `until`; None: too few evals
    first_flat: int | None  # the first window end (step) that was flat, up to `until`; None: never
    slope_per_1k: float | None  # the slope of the window ending at `until`, val loss per 1,000 steps
    stderr_per_1k: float | None


def flat_before(steps: list[int], losses: list[float], surge: int | None, *, window: int = PLATEAU_TEST_WINDOW,
                k: float = PLATEAU_TEST_K) -> PlateauVerdict:
    """How long the val loss had been flat (the test above) when the surge came.

    The windows tested are those ending before the surge step (a window ending at the surge's own eval
    would mix the surge's loss drop in). A flat stretch of windows ending at evals e_i .. e_j (j the last
    before the surge) means the loss was flat from the first eval of e_i's window on, so flat_for counts
    from that eval: e_j - (steps of e_i's window start)."""
    before = [i for i, s in enumerate(steps) if surge is None or s < surge]
    steps_b, losses_b = [steps[i] for i in before], [losses[i] for i in before]
    if len(steps_b) < window:
        return PlateauVerdict(steps_b[-1] if steps_b else 0, None, None, None, None)
    windows = slope_windows(steps_b, losses_b, window)
    flat = [w.flat(k) for w in windows]
    first_flat = next((w.step for w, f in zip(windows, flat, strict=True) if f), None)
    start = len(windows)  # the first window of the flat stretch that reaches the end
    while start > 0 and flat[start - 1]:
        start -= 1
    flat_for = 0 if start == len(windows) else steps_b[-1] - steps_b[start]  # window `start` begins at eval start
    last = windows[-1]
    return PlateauVerdict(steps_b[-1], flat_for, first_flat, 1000 * last.slope, 1000 * last.stderr)
