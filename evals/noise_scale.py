"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, "An Empirical Model
of Large-Batch Training", appendix A): the batch size above which a larger batch buys little more
progress per step. Near it, the copy surge should stop tracking tokens and start tracking steps.

A gradient averaged over B examples has E|g_B|^2 = |G|^2 + tr(Sigma) / B. Two batch sizes, each
squared norm measured on the same step, give unbiased estimates of both terms:

    |G|^2     ~ (B_big |g_big|^2 - B_small |g_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|g_small|^2 - |g_big|^2) / (1 / B_small - 1 / B_big)

train.py has both for free when it accumulates gradients: the first micro-batch's gradient (B_small
sequences, B_small x ranks under FSDP, which reduces every micro-step) and the accumulated one
(B_big = batch x grad_accum x ranks). Single-step estimates are noisy, so the squared norms are
averaged over all steps between two evals and the ratio is taken of the averages, as the paper does
with its moving averages. Batch sizes are counted in sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grokcopy.evals import metric_keys as mk


def noise_scale(g2_small: float, g2_big: float, b_small: float, b_big: float) -> tuple[float, float, float]:
    """(B_simple, |G|^2, tr(Sigma)) from mean squared gradient norms at two batch sizes."""
    if not b_big > b_small > 0:
        raise ValueError(f"need b_big > b_small > 0, got {b_small}, {b_big}")
    g2 = (b_big * g2_big - b_small * g2_small) / (b_big - b_small)
    trace = (g2_small - g2_big) / (1.0 / b_small - 1.0 / b_big)
    return trace / g2 if g2 > 0 else float("inf"), g2, trace


@dataclass
class NoiseScaleMeter:
    """Sums |g_small|^2 and |g_big|^2 over steps; `read()` gives the estimate and starts a new window."""

    b_small: float
    b_big: float
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    steps: int = 0

    def add(self, g2_small: float, g2_big: float) -> None:
        self.sums[0] += g2_small
        self.sums[1] += g2_big
        self.steps += 1

    def read(self) -> dict:
        """{noise_scale, grad_sq, grad_trace_cov, noise_scale_steps} over the window (empty if no steps)."""
        if not self.steps:
            return {}
        b_simple, g2, trace = noise_scale(self.sums[0] / self.steps, self.sums[1] / self.steps, self.b_small,
                                          self.b_big)
        result = {mk.NOISE_SCALE: b_simple, mk.GRAD_SQ: g2, mk.GRAD_TRACE_COV: trace, mk.NOISE_SCALE_STEPS: self.steps}
        self.sums, self.steps = [0.0, 0.0], 0
        return result


def pooled_noise_scale(records: list[dict], until_step: int | None = None, after_step: int | None = None
                       ) -> float | None:
    """B_simple over a stretch of a run: the sum of tr(Sigma) over the sum of |G|^2 of the eval records
    up to `until_step` (all when None) and after `after_step` (from the start when None), each weighted
    by the steps it averages. From the start, the first evals weigh most: early in training |G|^2 is
    10-100x its later size, so the pooled value is mostly the warmup's; `after_step` measures a
    stretch of its own (the approach to the surge, say). Pooling the two terms
    before the ratio, not averaging the ratios, keeps one noisy window (|G|^2 near 0) from dominating.
    None ("not measurable") when no record in the stretch holds them, or when either pooled estimate
    is not positive: both are differences of two noisy norms, and one at or below zero means the two
    batch sizes did not resolve it, not that the noise scale is zero or negative."""
    trace = g2 = 0.0
    for r in records:
        if mk.GRAD_SQ not in r or (until_step is not None and r[mk.STEP] > until_step) or (
                after_step is not None and r[mk.STEP] <= after_step):
            continue
        trace += r[mk.GRAD_TRACE_COV] * r[mk.NOISE_SCALE_STEPS]
        g2 += r[mk.GRAD_SQ] * r[mk.NOISE_SCALE_STEPS]
    return trace / g2 if g2 > 0 and trace > 0 else None
