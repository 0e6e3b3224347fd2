"""Predict a run's copy surge step before it happens, from what train.py logs at each eval, and score
the prediction with leave-one-seed-out over a grid of runs (issue 31, claim 5).

A **forecaster** reads a run only up to some eval (a `RunSeries` truncated there: the prefix) and
answers with a step at which it expects the surge. Every forecaster answers at every eval, so it
can be scored at a fixed **lead**: the forecast made at the last eval at least `lead` steps before
the run's actual surge. Because the prefix is cut before the forecaster sees it, a forecaster
cannot read the future (tests/test_onset_predictor.py checks it with a run whose later records are
garbage).

Forecasters (each fitted on the training runs alone):
- `MedianSurge`, the trivial one: the median surge step of the training runs, among those later
  than the prefix's last eval (the surge has not come yet, and the forecaster knows it);
- `TokensLaw`: the median surge in tokens of the training runs, divided by this run's batch: the
  law the 2026-11-25 grid found (claim 2), knowing nothing of the run but its recipe;
- `PrecursorLag(series)`: the first eval at which a logged series crosses a level (the previous-token
  score of the best head below the last layer, the induction score, or the val loss going *down*
  through a level), plus the median lag from that crossing to the surge in the training runs. The
  level is chosen on the training runs from a fixed list (the one whose lag varies least, by the
  training runs' mean absolute error). Before the crossing it answers "not before now + lag": the
  crossing has not come, and the surge comes a lag after it;
- `CriticalBatchLaw`: McCandlish et al.'s S = S_min (1 + B_noise / B): S_min from the training runs'
  surges, B_noise pooled from this run's own records of the last 1,500 steps (evals/noise_scale.py).

`leave_one_seed_out(runs, forecaster, leads)` fits on every seed but one, forecasts the held-out
seed's runs, and returns per-run `Forecast`s (`fit_elsewhere` fits on one set of runs, another grid,
and forecasts another); `score` turns them into mean absolute errors in
steps. `config_seed_error` is the yardstick: the error of guessing a run's surge as the mean of the
*other* seeds of its own configuration, i.e. the seed spread itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from grokcopy.evals import metric_keys as mk
from grokcopy.evals.noise_scale import pooled_noise_scale
from grokcopy.evals.onsets import copy_surge_step, eval_records

LEADS = (300, 900, 1500)  # steps before the surge at which forecasts are scored: 1, 3 and 5 evals of tiny


@dataclass
class RunSeries:
    """What a forecaster may read of one run: its recipe and its eval records (possibly a prefix)."""

    name: str
    config: tuple  # (lr, batch, weight_decay, dropout, n_layers): runs differing only in seed share it
    seed: int
    batch: int  # sequences per optimizer step
    seq_len: int
    evals: list[dict]  # eval records, in step order
    surge: int | None  # the actual copy surge step of the *whole* run (never read by a forecaster)

    @property
    def steps(self) -> list[int]:
        return [r[mk.STEP] for r in self.evals]

    def prefix(self, n: int) -> RunSeries:
        """The run as seen at its n-th eval: records after it gone, the surge hidden."""
        return replace(self, evals=self.evals[:n], surge=None)


def run_series(name: str, config: dict, records: list[dict]) -> RunSeries:
    """A RunSeries from a run's config.json and metrics.jsonl records."""
    evals = eval_records(records)
    batch = config["batch_size"] * config.get("grad_accum", 1) * config.get("world_size", 1)
    key = (config["lr"], batch, config["weight_decay"], config["model"]["dropout"], config["model"]["n_layers"])
    return RunSeries(name, key, config.get("seed", 0), batch, config["seq_len"], evals, copy_surge_step(records))


def previous_token_below_last(record: dict) -> float:
    """The best previous-token head in any layer but the last: the half of the copy circuit that must
    sit below an induction head to feed it (docs/TINY.md: the race for it decides a tiny run)."""
    return max(record[mk.best_head(mk.PREVIOUS_TOKEN)][:-1])


def best_induction(record: dict) -> float:
    return max(record[mk.best_head(mk.INDUCTION)])


def falling_val_loss(record: dict) -> float:
    """The val loss negated, so that 'crosses a level upwards' means 'falls below it'."""
    return -record[mk.VAL_LOSS]


# series name -> (its value at an eval, the levels a PrecursorLag may choose from)
SERIES: dict[str, tuple[Callable[[dict], float], tuple[float, ...]]] = {
    "previous-token score": (previous_token_below_last, (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)),
    "induction score": (best_induction, (0.02, 0.03, 0.05, 0.08)),
    "val loss": (falling_val_loss, tuple(-v for v in (3.8, 3.6, 3.4, 3.2, 3.0, 2.8))),
}


def surged(runs: list[RunSeries]) -> list[RunSeries]:
    return [r for r in runs if r.surge is not None]


class Forecaster:
    """fit(training runs) once, then forecast(prefix) -> the expected surge step, at any eval."""

    name = "forecaster"

    def fit(self, runs: list[RunSeries]) -> Forecaster:
        raise NotImplementedError

    def forecast(self, prefix: RunSeries) -> float:
        raise NotImplementedError

    def committed(self, prefix: RunSeries) -> bool:
        """Whether the forecast names the surge's step (True) or only bounds it from below (a
        precursor not yet seen): a run without a surge is a false alarm only for a committed forecast."""
        return True


@dataclass
class MedianSurge(Forecaster):
    """The median training surge later than the prefix's last eval (one eval on when none is later)."""

    name = "median surge step (trivial)"
    surges: list[int] = field(default_factory=list)

    def fit(self, runs: list[RunSeries]) -> MedianSurge:
        self.surges = sorted(r.surge for r in surged(runs))
        return self

    def forecast(self, prefix: RunSeries) -> float:
        now = prefix.steps[-1] if prefix.evals else 0
        later = [s for s in self.surges if s > now]
        return float(np.median(later)) if later else now + eval_gap(prefix)


def eval_gap(prefix: RunSeries) -> int:
    """Steps between evals (300 when fewer than two evals are known)."""
    steps = prefix.steps
    return steps[-1] - steps[-2] if len(steps) >= 2 else 300


@dataclass
class TokensLaw(Forecaster):
    """The training runs' median surge in tokens over this run's tokens per step; never before now."""

    name = "tokens law (median surge tokens / batch)"
    tokens: float = 0.0

    def fit(self, runs: list[RunSeries]) -> TokensLaw:
        self.tokens = float(np.median([r.surge * r.batch * r.seq_len for r in surged(runs)]))
        return self

    def forecast(self, prefix: RunSeries) -> float:
        now = prefix.steps[-1] if prefix.evals else 0
        return max(self.tokens / (prefix.batch * prefix.seq_len), now + eval_gap(prefix))


@dataclass
class CriticalBatchLaw(Forecaster):
    """S = S_min (1 + B_noise / B), S_min the training runs' median of S / (1 + B_noise / B) with each
    run's B_noise pooled over the `window` steps up to its surge; this run's B_noise pooled over the
    prefix's last `window` steps (from step 0 the warmup's large |G|^2 would dominate it). Without a
    measurable B_noise (yet) it answers as the tokens law does."""

    name = "critical-batch law, B_noise of the last 1,500 steps"
    window: int = 1500
    s_min: float = 0.0
    fallback: TokensLaw = field(default_factory=TokensLaw)

    def fit(self, runs: list[RunSeries]) -> CriticalBatchLaw:
        self.fallback.fit(runs)
        values = []
        for r in surged(runs):
            b_noise = pooled_noise_scale(r.evals, r.surge, after_step=r.surge - self.window)
            if b_noise is not None:
                values.append(r.surge / (1 + b_noise / r.batch))
        self.s_min = float(np.median(values)) if values else 0.0
        return self

    def forecast(self, prefix: RunSeries) -> float:
        b_noise = pooled_noise_scale(prefix.evals, after_step=prefix.steps[-1] - self.window) if prefix.evals else None
        if b_noise is None or not self.s_min:
            return self.fallback.forecast(prefix)
        now = prefix.steps[-1]
        return max(self.s_min * (1 + b_noise / prefix.batch), now + eval_gap(prefix))


def crossing_step(run: RunSeries, value: Callable[[dict], float], level: float) -> int | None:
    """The first eval step at which value(record) >= level (None: never, within the records)."""
    return next((r[mk.STEP] for r in run.evals if value(r) >= level), None)


@dataclass
class PrecursorLag(Forecaster):
    """The first crossing of a level by a logged series, plus the training runs' median lag to the surge."""

    series: str = "previous-token score"
    level: float | None = None  # chosen by fit
    lag: float = 0.0
    before: MedianSurge = field(default_factory=MedianSurge)  # where no level fits the training runs

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.series} crossing + median lag"

    def fit(self, runs: list[RunSeries]) -> PrecursorLag:
        self.before.fit(runs)
        value, levels = SERIES[self.series]
        best = None
        for level in levels:
            pairs = [(c, r.surge) for r in surged(runs) if (c := crossing_step(r, value, level)) is not None]
            # a level most surged runs cross, and cross ahead of the surge: otherwise it predicts nothing
            if len(pairs) < max(2, 0.75 * len(surged(runs))):
                continue
            lags = [s - c for c, s in pairs]
            lag = float(np.median(lags))
            if lag <= 0:
                continue
            error = float(np.mean([abs(x - lag) for x in lags]))
            if best is None or error < best[0]:
                best = (error, level, lag)
        if best is not None:
            _, self.level, self.lag = best
        return self

    def forecast(self, prefix: RunSeries) -> float:
        if self.level is None:
            return self.before.forecast(prefix)
        now = prefix.steps[-1]
        crossed = crossing_step(prefix, SERIES[self.series][0], self.level)
        if crossed is None:  # the earliest it can come: the crossing at the next eval, then the lag
            return now + eval_gap(prefix) + self.lag
        return max(crossed + self.lag, now + eval_gap(prefix))

    def committed(self, prefix: RunSeries) -> bool:
        return self.level is None or crossing_step(prefix, SERIES[self.series][0], self.level) is not None


@dataclass
class Forecast:
    """One held-out run's forecasts: lead (steps before the surge) -> (step forecast at, forecast)."""

    run: RunSeries
    at_lead: dict[int, tuple[int, float] | None]  # None: the run has no eval that far before its surge
    at_end: float | None = None  # a run without a surge: the committed forecast at its last eval - max(leads)


def forecasts_for(run: RunSeries, forecaster: Forecaster, leads: tuple[int, ...] = LEADS) -> Forecast:
    """The forecaster's answer at each lead before the run's surge, from the prefix it had then."""
    steps = run.steps
    if run.surge is None:  # scored only as "did it say the surge comes within the run"
        cut = steps[-1] - max(leads)
        n = sum(s <= cut for s in steps)
        committed = n and forecaster.committed(run.prefix(n))
        return Forecast(run, {}, forecaster.forecast(run.prefix(n)) if committed else None)
    at_lead: dict[int, tuple[int, float] | None] = {}
    for lead in leads:
        n = sum(s <= run.surge - lead for s in steps)
        at_lead[lead] = (steps[n - 1], forecaster.forecast(run.prefix(n))) if n else None
    return Forecast(run, at_lead)


def leave_one_seed_out(runs: list[RunSeries], make: Callable[[], Forecaster],
                       leads: tuple[int, ...] = LEADS) -> list[Forecast]:
    """For each seed: fit a fresh forecaster on the other seeds' runs, forecast this seed's runs."""
    out = []
    for seed in sorted({r.seed for r in runs}):
        train = [r for r in runs if r.seed != seed]
        if not surged(train):
            continue
        forecaster = make().fit(train)
        out += [forecasts_for(r, forecaster, leads) for r in runs if r.seed == seed]
    return out


def fit_elsewhere(train: list[RunSeries], test: list[RunSeries], make: Callable[[], Forecaster],
                  leads: tuple[int, ...] = LEADS) -> list[Forecast]:
    """Fit one forecaster on `train` (another grid, say) and forecast every run of `test`."""
    forecaster = make().fit(train)
    return [forecasts_for(r, forecaster, leads) for r in test]


@dataclass
class Score:
    """Mean absolute error (steps) of the forecasts at each lead over the surged runs scored there,
    and for runs without a surge how many were forecast to surge before their end (false alarms)."""

    mae: dict[int, float | None]
    scored: dict[int, int]  # runs with an eval that far before their surge
    false_alarms: int
    censored: int


def score(forecasts: list[Forecast], leads: tuple[int, ...] = LEADS) -> Score:
    mae, scored = {}, {}
    for lead in leads:
        errors = [abs(f.at_lead[lead][1] - f.run.surge) for f in forecasts if f.at_lead.get(lead)]
        mae[lead] = float(np.mean(errors)) if errors else None
        scored[lead] = len(errors)
    censored = [f for f in forecasts if f.run.surge is None]
    alarms = sum(f.at_end is not None and f.at_end <= f.run.steps[-1] for f in censored)
    return Score(mae, scored, alarms, len(censored))


def config_seed_error(runs: list[RunSeries]) -> tuple[float | None, int]:
    """(mean absolute error, runs scored) of guessing each surged run's surge as the mean surge of the
    other surged seeds of its configuration: the seed spread, as an error in steps."""
    errors = []
    for r in surged(runs):
        others = [o.surge for o in surged(runs) if o.config == r.config and o is not r]
        if others:
            errors.append(abs(r.surge - float(np.mean(others))))
    return (float(np.mean(errors)) if errors else None), len(errors)


FORECASTERS: dict[str, Callable[[], Forecaster]] = {
    "median": MedianSurge,
    "tokens": TokensLaw,
    "critical-batch": CriticalBatchLaw,
    "previous-token": lambda: PrecursorLag("previous-token score"),
    "val-loss": lambda: PrecursorLag("val loss"),
    "induction": lambda: PrecursorLag("induction score"),
}
