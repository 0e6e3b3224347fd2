"""Which law sets the copy onset across learning rates and batch sizes (the paper's open question 2).

Each candidate law says that some function of a run's onset step S, peak LR, batch B (sequences per
update) and gradient noise scale B_noise is the same for every configuration:

- steps:                      S
- tokens:                     S x B
- LR x steps (intensity):     LR x S
- critical batch:             S / (1 + B_noise / B)
- LR x critical batch:        LR x S / (1 + B_noise / B)

"Critical batch" is McCandlish et al. 2018's trade-off, S = S_min (1 + B_noise / B): far below
B_noise every token counts (the tokens law), far above it every update does (the steps law).

A law is judged by its **spread**: the largest over the smallest of its invariant over the
configurations, each from the mean onset of its seeds. A perfect law has spread 1; the seeds'
own spread (the largest over the smallest onset among one configuration's seeds, the worst
configuration) is the floor below which no law can be told apart from noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class OnsetConfig:
    """One configuration's seeds: their onset steps (None: no onset in the run) and its B_noise."""

    lr: float
    batch: int  # sequences per optimizer update
    onsets: list[int | None]
    b_noise: float | None = None  # sequences; None when not measured

    @property
    def reached(self) -> list[int]:
        return [s for s in self.onsets if s is not None]


LAWS: dict[str, tuple[Callable[[float, float, int, float], float], bool]] = {
    # name -> (invariant(S, lr, batch, b_noise), needs b_noise)
    "steps": (lambda s, lr, b, bn: s, False),
    "tokens (S x B)": (lambda s, lr, b, bn: s * b, False),
    "LR x steps": (lambda s, lr, b, bn: lr * s, False),
    "critical batch: S / (1 + B_noise/B)": (lambda s, lr, b, bn: s / (1 + bn / b), True),
    "LR x S / (1 + B_noise/B)": (lambda s, lr, b, bn: lr * s / (1 + bn / b), True),
}


def seed_spread(configs: list[OnsetConfig]) -> float | None:
    """The noise floor: max over configurations of (latest / earliest onset among its seeds)."""
    ratios = [max(c.reached) / min(c.reached) for c in configs if len(c.reached) >= 2]
    return max(ratios) if ratios else None


def law_spreads(configs: list[OnsetConfig]) -> dict[str, float | None]:
    """law name -> spread of its invariant over the configurations where every seed reached the onset
    (None: fewer than two such configurations, or the law needs a B_noise that is missing)."""
    usable = [c for c in configs if c.reached and len(c.reached) == len(c.onsets)]
    spreads: dict[str, float | None] = {}
    for name, (invariant, needs_noise) in LAWS.items():
        if len(usable) < 2 or (needs_noise and any(c.b_noise is None or not math.isfinite(c.b_noise)
                                                   for c in usable)):
            spreads[name] = None
            continue
        values = [invariant(sum(c.reached) / len(c.reached), c.lr, c.batch, c.b_noise or 0.0) for c in usable]
        spreads[name] = max(values) / min(values) if min(values) > 0 else None
    return spreads


def law_table(configs: list[OnsetConfig]) -> list[str]:
    """Markdown lines: each law's spread, best first, and the seeds' spread for comparison."""
    spreads = law_spreads(configs)
    left_out = [c for c in configs if len(c.reached) != len(c.onsets)]
    lines = ["| law (the same for every configuration) | spread (max / min over configurations) |", "|---|---|"]
    for name, value in sorted(spreads.items(), key=lambda kv: (kv[1] is None, kv[1] or 0.0)):
        lines.append(f"| {name} | {'-' if value is None else f'{value:.2f}x'} |")
    floor = seed_spread(configs)
    lines += ["", f"Seeds' own spread (worst configuration): {'-' if floor is None else f'{floor:.2f}x'}. "
              f"Configurations used: {len(configs) - len(left_out)} of {len(configs)}"
              + (" (left out, some seed had no onset: "
                 + ", ".join(f"LR {c.lr:g} batch {c.batch}" for c in left_out) + ")" if left_out else "") + "."]
    return lines
