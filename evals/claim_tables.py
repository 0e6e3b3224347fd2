"""report.md's sections for the paper's claims with a stated test (docs/REPRODUCTION.md), one per run:

- claim 1, the plateau: how long before its copy surge each run's val loss was flat by
  evals/plateau.py's test (slope within k standard errors of zero over a window of evals);
- claim 2, the critical batch: each run's batch against its own gradient noise scale B_noise (pooled
  over the 1,500 steps up to the surge, or up to the run's end without one; evals/noise_scale.py),
  and the regime that puts it in: below B_noise McCandlish et al.'s model says the surge costs a
  number of tokens, above it a number of steps;
- claim 5, onset prediction: every forecaster of evals/onset_predictor.py scored leave-one-seed-out,
  against the seed spread and the trivial median.

Each function takes report.py's rows (dicts with "name", "batch", "copy_surge", ...) or RunSeries and
returns markdown lines; an empty list when the runs cannot answer (no seeds to leave out, say).
"""

from __future__ import annotations

from grokcopy.evals import metric_keys as mk
from grokcopy.evals.noise_scale import pooled_noise_scale
from grokcopy.evals.onset_predictor import (
    FORECASTERS,
    LEADS,
    RunSeries,
    config_seed_error,
    fit_elsewhere,
    leave_one_seed_out,
    score,
    surged,
)
from grokcopy.evals.plateau import PLATEAU_TEST_K, PLATEAU_TEST_WINDOW, flat_before


def plateau_lines(runs: list[RunSeries]) -> list[str]:
    """Claim 1: per run, the flat stretch before the surge and the slope of the last window before it."""
    lines = ["", "## Claim 1: was the loss flat before the surge?", "",
             f"Flat: the least-squares slope of the val loss over {PLATEAU_TEST_WINDOW} evals is within "
             f"{PLATEAU_TEST_K:g} standard errors of zero (evals/plateau.py). Tested on the evals before the copy "
             "surge (before the run's end without one); the slope is that of the last window, in val loss per "
             "1,000 steps.", "",
             "| run | copy surge | tested up to | flat for (steps before it) | first flat window ends | "
             "slope / 1k steps (SE) |", "|---|---|---|---|---|---|"]
    for run in runs:
        verdict = flat_before(run.steps, [r[mk.VAL_LOSS] for r in run.evals], run.surge)
        flat = ("too few evals" if verdict.flat_for is None
                else "never flat" if verdict.first_flat is None
                else f"{verdict.flat_for:,}")
        slope = ("-" if verdict.slope_per_1k is None
                 else f"{verdict.slope_per_1k:+.3f} ({verdict.stderr_per_1k:.3f})")
        lines.append(f"| {run.name} | {_step(run.surge)} | {verdict.until:,} | {flat} | "
                     f"{_step(verdict.first_flat)} | {slope} |")
    return lines


def regime(batch: int, b_noise: float | None) -> str:
    """'tokens' (batch below B_noise), 'steps' (above) or 'not measurable'."""
    if b_noise is None:
        return "not measurable"
    return "tokens (B < B_noise)" if batch < b_noise else "steps (B > B_noise)"


APPROACH_STEPS = 1500  # claim 2's B_noise: pooled over the steps just before the surge (5 evals of tiny)


def regime_lines(runs: list[RunSeries]) -> list[str]:
    """Claim 2: each run's batch against its B_noise and the regime; empty when no run logged it."""
    if not any(mk.GRAD_SQ in r for run in runs for r in run.evals):
        return []
    lines = ["", "## Claim 2: which side of the critical batch each run is on", "",
             f"B_noise before the surge: B_simple pooled over the {APPROACH_STEPS:,} steps up to the copy surge (up "
             "to the run's end without one), in sequences; the regime is read from it. From the start: pooled from "
             "step 0, as the 2026-11-25 page did, which the first evals dominate (|G|^2 is largest early). "
             "'-': not measurable (the pooled |G|^2 or tr(Sigma) estimate is not positive).", "",
             "| run | batch | B_noise before the surge | batch / B_noise | regime | B_noise from the start "
             "| copy surge | surge in tokens (M) |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        end = run.surge if run.surge is not None else run.steps[-1]
        near = pooled_noise_scale(run.evals, end, after_step=end - APPROACH_STEPS)
        start = pooled_noise_scale(run.evals, run.surge)
        ratio = "-" if near is None else f"{run.batch / near:.2f}"
        tokens = "-" if run.surge is None else f"{run.surge * run.batch * run.seq_len / 1e6:.1f}"
        lines.append(f"| {run.name} | {run.batch} | {_number(near)} | {ratio} | {regime(run.batch, near)} | "
                     f"{_number(start)} | {_step(run.surge)} | {tokens} |")
    return lines


def forecast_lines(runs: list[RunSeries], leads: tuple[int, ...] = LEADS,
                   fitted_on: list[RunSeries] | None = None) -> list[str]:
    """Claim 5: every forecaster's leave-one-seed-out error at each lead, with the yardsticks; with
    `fitted_on` (other runs), fitted on those instead and scored on every run here."""
    if fitted_on is not None:
        return transfer_lines(fitted_on, runs, leads)
    if len({r.seed for r in runs}) < 2 or len(surged(runs)) < 3:
        return []
    spread, spread_n = config_seed_error(runs)
    censored = len(runs) - len(surged(runs))
    lead_cols = " | ".join(f"error {lead:,} steps ahead" for lead in leads)
    lines = ["", "## Forecasting the copy surge (leave one seed out)", "",
             f"{len(runs)} runs, {len(surged(runs))} with a surge. Each forecaster is fitted on every seed but one "
             "and forecasts the held-out seed's runs from their records up to the last eval at least the lead "
             "before the surge (evals/onset_predictor.py). Error: mean absolute error in steps over the surged "
             f"runs with an eval that far ahead (how many in brackets). False alarms: of the {censored} runs "
             "without a surge, those forecast (committed, at their last eval minus the longest lead) to surge "
             "before their end.", "",
             f"| forecaster | {lead_cols} | false alarms | levels chosen (per held-out seed) |",
             "|---|" + "---|" * len(leads) + "---|---|"]
    for make in FORECASTERS.values():
        forecasts = leave_one_seed_out(runs, make, leads)
        result = score(forecasts, leads)
        errors = " | ".join("-" if result.mae[lead] is None else f"{result.mae[lead]:,.0f} ({result.scored[lead]})"
                            for lead in leads)
        fitted = [make().fit([r for r in runs if r.seed != seed]) for seed in sorted({r.seed for r in runs})]
        levels = ", ".join(f"{abs(f.level):g} + {f.lag:,.0f}" if getattr(f, "level", None) is not None else "-"
                           for f in fitted) if hasattr(fitted[0], "level") else ""
        lines.append(f"| {make().name} | {errors} | {result.false_alarms} of {result.censored} | {levels} |")
    lines += ["", f"Seed spread: guessing each surged run's surge as the mean of the other seeds of its own "
              f"configuration errs by {'-' if spread is None else f'{spread:,.0f}'} steps on average "
              f"({spread_n} runs)."]
    return lines


def transfer_lines(train: list[RunSeries], test: list[RunSeries], leads: tuple[int, ...] = LEADS) -> list[str]:
    """Claim 5 across grids: every forecaster fitted on `train`, scored on `test`."""
    if len(surged(train)) < 3 or not test:
        return []
    lead_cols = " | ".join(f"error {lead:,} steps ahead" for lead in leads)
    lines = ["", "## Forecasting the copy surge (fitted on other runs)", "",
             f"Each forecaster is fitted on {len(train)} other runs ({len(surged(train))} with a surge; "
             f"`--forecast-from`) and forecasts these {len(test)} ({len(surged(test))} with a surge), as in the "
             "leave-one-seed-out table: mean absolute error in steps (runs scored).", "",
             f"| forecaster | {lead_cols} | false alarms | level + lag |", "|---|" + "---|" * len(leads) + "---|---|"]
    for make in FORECASTERS.values():
        result = score(fit_elsewhere(train, test, make, leads), leads)
        errors = " | ".join("-" if result.mae[lead] is None else f"{result.mae[lead]:,.0f} ({result.scored[lead]})"
                            for lead in leads)
        fitted = make().fit(train)
        level = (f"{abs(fitted.level):g} + {fitted.lag:,.0f}" if getattr(fitted, "level", None) is not None
                 else "-" if hasattr(fitted, "level") else "")
        lines.append(f"| {fitted.name} | {errors} | {result.false_alarms} of {result.censored} | {level} |")
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _step(step: int | None) -> str:
    return "-" if step is None else f"{step:,}"
