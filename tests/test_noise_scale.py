"""The gradient noise scale estimator on a problem whose noise scale is known exactly.

Per-example loss 0.5 |w - x|^2 with x ~ N(mu, sigma^2 I) in d dimensions: the per-example gradient is
w - x, so G = w - mu and Sigma = sigma^2 I, and B_simple = d sigma^2 / |w - mu|^2. The estimator sees
only squared norms of batch-mean gradients at two batch sizes, as train.py gives it."""

import pytest
import torch

from grokcopy.evals.noise_scale import NoiseScaleMeter, noise_scale


@pytest.mark.parametrize("true_scale", [4.0, 64.0, 1000.0])
def test_estimator_recovers_a_known_noise_scale(true_scale):
    g = torch.Generator().manual_seed(0)
    d, sigma = 256, 1.0
    offset = (d * sigma**2 / true_scale) ** 0.5  # |w - mu| giving B_simple = true_scale
    w = torch.zeros(d)
    mu = torch.full((d,), offset / d**0.5)
    b_small, accum = 8, 4
    meter = NoiseScaleMeter(b_small, b_small * accum)
    for _ in range(2000):  # steps; each: accum micro-batches of b_small examples
        micro = [(w - (mu + sigma * torch.randn(b_small, d, generator=g))).mean(0) for _ in range(accum)]
        meter.add(float(micro[0].pow(2).sum()), float(torch.stack(micro).mean(0).pow(2).sum()))
    estimate = meter.read()
    assert estimate["noise_scale_steps"] == 2000
    assert estimate["noise_scale"] == pytest.approx(true_scale, rel=0.1)
    assert estimate["grad_trace_cov"] == pytest.approx(d * sigma**2, rel=0.05)
    assert meter.read() == {}  # a new window starts empty


def test_noise_scale_formula_and_its_guard():
    # E|g_B|^2 = |G|^2 + tr / B exactly: |G|^2 = 2, tr = 40 -> B_simple 20
    assert noise_scale(2 + 40 / 4, 2 + 40 / 16, 4, 16) == pytest.approx((20.0, 2.0, 40.0))
    with pytest.raises(ValueError, match="b_big > b_small"):
        noise_scale(1.0, 1.0, 4, 4)
