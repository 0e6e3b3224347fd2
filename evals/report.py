"""Figures and a markdown summary of one or more runs (an experiment's run directories).

    python -m grokcopy.evals.report runs/experiments/lr/* --out reports/lr

Writes to OUT:
- <run>-curves.png: val loss and copy accuracy / gains against steps on twin axes, the loss
  plateau, copy onset and copy surge marked (definitions in evals/onsets.py);
- <run>-layers.png: layer x step heatmaps of the best head's induction score (each layer's
  induction onset marked) and, when logged, previous-token and prefix-matching scores;
- overlay-steps.png, overlay-tokens.png: every run on one figure (evals.curves.plot_overlay);
- onset-vs-lr.png (when the runs have more than one LR): copy onset step, and LR x onset step,
  against LR, one line per batch size (the mean over seeds, bars from the earliest to the latest);
- onset-lr-batch.png (when the runs vary both LR and batch size): heatmap of the copy onset step
  (mean over seeds);
- surge-aligned.png (when a run surged): the previous-token score below the last layer, the best
  induction score and the val loss of every surged run against steps from its own copy surge: what
  the surge forecasters (evals/onset_predictor.py) read, lined up on what they forecast;
- noise-scale.png (when the runs logged it, train.py --grad-accum >= 2): the gradient noise scale
  B_simple against steps, each run's batch size as a dashed line of its colour;
- report.md: a table of every run's settings, final numbers and onsets; with several seeds, the
  onsets over seeds; with several LRs or batch sizes, how well each candidate law of the onset fits
  (evals/onset_laws.py); the claims' stated tests (evals/claim_tables.py): the plateau test before
  each surge, each batch against its run's B_noise, and, with several seeds, the surge forecasters
  scored leave-one-seed-out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grokcopy.cli import UsageError, run_cli
from grokcopy.evals import metric_keys as mk
from grokcopy.evals.claim_tables import APPROACH_STEPS, forecast_lines, plateau_lines, regime_lines
from grokcopy.evals.curves import plot_overlay, pyplot
from grokcopy.evals.noise_scale import pooled_noise_scale
from grokcopy.evals.onset_laws import OnsetConfig, law_table
from grokcopy.evals.onset_predictor import best_induction, previous_token_below_last, run_series
from grokcopy.evals.onsets import COPY_SURGE_LEVEL, INDUCTION_THRESHOLD, copy_token_gain, eval_records, run_onsets
from grokcopy.model.run_dir import RunDir
from grokcopy.ownership import KIND_NAMES, is_inside, output_kind

# report.md's first line, by which a later report knows the file in --out as its own
REPORT_TITLE = "# Run report"
# the layer x step panels of <run>-layers.png, drawn when the records have the key
LAYER_SCORES = ((mk.best_head(mk.INDUCTION), "induction (repeated random tokens)"),
                (mk.best_head(mk.PREVIOUS_TOKEN), "previous token (val text)"),
                (mk.best_head(mk.PREFIX_MATCHING), "prefix matching (val text)"),
                ("train_previous_token_max", "previous token (training batches, --train-stats-every)"),
                ("train_prefix_matching_max", "prefix matching (training batches, --train-stats-every)"))


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(config.json, metrics records) of a run directory. Raises NotARunError."""
    run = RunDir(run_dir)
    return run.read_config(), run.read_metrics()[0]


def plot_run(records: list[dict], onsets: dict, path: Path, title: str) -> None:
    """Val loss (left axis) and copy acc / gain (right axis) against steps; plateau and onset marked."""
    plt = pyplot()
    evals = eval_records(records)
    steps = [r[mk.STEP] for r in evals]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(steps, [r[mk.VAL_LOSS] for r in evals], color="tab:blue", lw=2, label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("val loss", color="tab:blue")
    right = ax.twinx()
    right.plot(steps, [r[mk.COPY_ACC] for r in evals], color="tab:red", lw=2, label="copy acc")
    right.plot(steps, [r[mk.COPY_GAIN] for r in evals], color="tab:red", lw=1, ls="--", label="copy gain")
    token_gain = [copy_token_gain(r) for r in evals]
    right.plot(steps, token_gain, color="tab:orange", lw=1.5, label="copy token gain")
    top = max(0.3, *token_gain, *[r[mk.COPY_ACC] for r in evals])
    right.set_ylim(-0.05 * top, 1.1 * top)
    right.set_ylabel("copy accuracy / gain", color="tab:red")
    marks = (("plateau", "loss plateau", "tab:blue", 0.97), ("copy_onset", "copy onset", "tab:red", 0.8),
             ("copy_surge", "copy surge", "tab:orange", 0.63))
    for key, label, color, height in marks:
        if onsets[key] is not None:
            ax.axvline(onsets[key], color=color, ls=":", lw=1.2)
            ax.annotate(f"{label}\nstep {onsets[key]}", (onsets[key], height), xycoords=("data", "axes fraction"),
                        fontsize=8, ha="left", va="top", color=color)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    # below the axes: inside, it would cover the onset labels wherever they fall
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(labels), fontsize=8,
              frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def column_edges(steps: list[int]) -> list[float]:
    """Cell edges for columns at `steps`: each spans half-way to its neighbours, so uneven spacing
    is drawn truthfully."""
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    middles = [(a + b) / 2 for a, b in zip(steps[:-1], steps[1:], strict=True)]
    return [steps[0] - (steps[1] - steps[0]) / 2, *middles, steps[-1] + (steps[-1] - steps[-2]) / 2]


def plot_layer_heatmaps(records: list[dict], onsets: list[int | None], path: Path, title: str) -> None:
    """One panel per score of LAYER_SCORES the records hold: layers (rows) x steps (columns), the
    best head's score; the induction onsets as white ticks on the induction panel."""
    plt = pyplot()
    panels = [(key, label, [r for r in records if key in r]) for key, label in LAYER_SCORES]
    panels = [p for p in panels if p[2]]
    layers = len(panels[0][2][0][panels[0][0]])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 0.9 + (0.4 * layers + 0.6) * len(panels)), dpi=110,
                             sharex=True, squeeze=False)
    for ax, (key, label, rows) in zip(axes[:, 0], panels, strict=True):
        grid = [[r[key][layer] for r in rows] for layer in range(layers)]
        mesh = ax.pcolormesh(column_edges([r[mk.STEP] for r in rows]), range(layers + 1), grid, vmin=0, vmax=1,
                             cmap="viridis")
        ax.set_yticks([i + 0.5 for i in range(layers)], [f"layer {i}" for i in range(layers)], fontsize=8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(mesh, ax=ax, label="best head", pad=0.01)
        if key != mk.best_head(mk.INDUCTION):
            continue
        for layer, onset in enumerate(onsets):
            if onset is not None:
                ax.plot([onset, onset], [layer, layer + 1], color="white", lw=2)
                ax.annotate(f"{onset}", (onset, layer + 0.5), color="white", fontsize=8, ha="left", va="center")
    axes[-1, 0].set_xlabel("optimizer step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


ONSET_NAMES = {"copy_onset": "copy onset step", "copy_surge": "copy surge step"}


def by_config(rows: list[dict]) -> dict[tuple[float, int], list[dict]]:
    """(LR, batch) -> its rows (one per seed)."""
    groups: dict[tuple[float, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["lr"], r["batch"]), []).append(r)
    return groups


def reached(group: list[dict], onset: str) -> list[int]:
    """The `onset` steps of the runs in `group` that reached it."""
    return [r[onset] for r in group if r[onset] is not None]


def plot_onset_vs_lr(rows: list[dict], path: Path, onset: str = "copy_onset") -> None:
    """Onset step (`onset`: copy_onset or copy_surge), and LR x onset step (the learning 'intensity'
    spent), against LR per batch size: the mean over the seeds that reached it, bars from the
    earliest seed to the latest."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    groups = by_config(rows)
    for batch in sorted({b for _, b in groups}):
        points = sorted((lr, reached(group, onset)) for (lr, b), group in groups.items() if b == batch)
        points = [(lr, steps) for lr, steps in points if steps]
        if not points:
            continue
        lrs = [lr for lr, _ in points]
        for ax, scale in ((axes[0], [1.0] * len(lrs)), (axes[1], lrs)):
            means = [k * sum(r) / len(r) for k, (_, r) in zip(scale, points, strict=True)]
            low = [m - k * min(r) for m, k, (_, r) in zip(means, scale, points, strict=True)]
            high = [k * max(r) - m for m, k, (_, r) in zip(means, scale, points, strict=True)]
            ax.errorbar(lrs, means, yerr=[low, high], marker="o", capsize=3, label=f"batch {batch}")
    for ax, label in zip(axes, (ONSET_NAMES[onset], f"LR x {ONSET_NAMES[onset]}"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("peak LR")
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_onset_heatmap(rows: list[dict], path: Path, onset: str = "copy_onset") -> None:
    """Onset step (`onset`, mean over seeds) on an (LR, batch size) grid, each cell labelled with how
    many of its seeds reached it; blank: no run, "none": runs that never reached it."""
    plt = pyplot()
    groups = by_config(rows)
    lrs, batches = sorted({lr for lr, _ in groups}), sorted({b for _, b in groups})
    grid = [[float("nan")] * len(batches) for _ in lrs]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    for (lr, batch), group in groups.items():
        steps = reached(group, onset)
        i, j = lrs.index(lr), batches.index(batch)
        if steps:
            grid[i][j] = sum(steps) / len(steps)
        ax.text(j, i, (f"{grid[i][j]:.0f}" if steps else "none") + f"\n{len(steps)}/{len(group)}",
                ha="center", va="center", fontsize=8, color="tab:cyan" if steps else "gray")
    image = ax.imshow(grid, origin="lower", cmap="magma_r")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_xlabel("global batch (sequences per optimizer step)")
    ax.set_ylabel("peak LR")
    fig.colorbar(image, ax=ax, label=ONSET_NAMES[onset] + " (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_noise_scale(runs: dict[str, list[dict]], rows: list[dict], path: Path, onset: str) -> None:
    """B_simple (log scale) against steps for every run that logged it, coloured by batch size; each
    batch size as a dashed line, each run's onset as a dot on its curve."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    batches = sorted({r["batch"] for r in rows})
    colours = {b: f"C{i}" for i, b in enumerate(batches)}
    labelled: set[int] = set()
    for r in rows:
        points = [(e[mk.STEP], e[mk.NOISE_SCALE]) for e in eval_records(runs[r["name"]])
                  if mk.NOISE_SCALE in e and 0 < e[mk.NOISE_SCALE] < float("inf")]
        if not points:
            continue
        label = None if r["batch"] in labelled else f"batch {r['batch']}"
        labelled.add(r["batch"])
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colours[r["batch"]], lw=1, alpha=0.8,
                label=label)
        if r[onset] is not None:
            at = min(points, key=lambda p: abs(p[0] - r[onset]))
            ax.plot([at[0]], [at[1]], "o", color=colours[r["batch"]], ms=5)
    for b in batches:
        ax.axhline(b, color=colours[b], ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("B_simple (sequences)")
    ax.set_title(f"gradient noise scale; dashed: the batch sizes; dots: {ONSET_NAMES[onset]}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_surge_aligned(runs: dict[str, list[dict]], rows: list[dict], path: Path) -> None:
    """Three panels against steps from each surged run's copy surge: the previous-token score below the
    last layer, the best induction score and the val loss, one line per run, coloured by batch size."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110, sharex=True)
    colours = {b: f"C{i}" for i, b in enumerate(sorted({r["batch"] for r in rows}))}
    labelled: set[int] = set()
    for r in (r for r in rows if r["copy_surge"] is not None):
        evals = eval_records(runs[r["name"]])
        x = [e[mk.STEP] - r["copy_surge"] for e in evals]
        label = None if r["batch"] in labelled else f"batch {r['batch']}"
        labelled.add(r["batch"])
        for ax, value in zip(axes, (previous_token_below_last, best_induction, lambda e: e[mk.VAL_LOSS]), strict=True):
            ax.plot(x, [value(e) for e in evals], color=colours[r["batch"]], lw=1, alpha=0.7, label=label)
    titles = ("previous-token score, best head below the last layer", "induction score, best head", "val loss")
    for ax, title in zip(axes, titles, strict=True):
        ax.axvline(0, color="gray", ls=":", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("steps from the copy surge")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def onset_law_lines(rows: list[dict], onset: str) -> list[str]:
    """The onset-laws section of report.md (evals/onset_laws.py); empty when LR and batch are both fixed."""
    if len({r["lr"] for r in rows}) < 2 and len({r["batch"] for r in rows}) < 2:
        return []
    configs = []
    for (lr, batch), group in by_config(rows).items():
        noise = [r["b_noise"] for r in group if r["b_noise"] is not None]
        configs.append(OnsetConfig(lr, batch, [r[onset] for r in group], sum(noise) / len(noise) if noise else None))
    return ["", "## Which law sets the onset", "",
            f"Over the runs' (LR, batch) configurations, the {ONSET_NAMES[onset]} (mean over seeds) against "
            "candidate laws (evals/onset_laws.py). B_noise: each run's gradient noise scale pooled over the "
            f"{APPROACH_STEPS:,} steps up to its onset "
            "(up to its last eval without one), averaged over seeds.", "", *law_table(configs)]


def _fmt(value) -> str:
    return "-" if value is None else str(value)


CONFIG_KEYS = ("lr", "batch", "weight_decay", "dropout", "n_layers")


def mean_range(values: list[float], fmt: str) -> str:
    """'mean [min-max]' of `values`, each number formatted with `fmt`; '-' when there are none."""
    if not values:
        return "-"
    return f"{sum(values) / len(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def spread(values: list) -> str:
    """'mean [min-max] (k of n)' of the reached values; '-' when none is reached."""
    hits = [v for v in values if v is not None]
    return f"{mean_range(hits, ',.0f')} ({len(hits)} of {len(values)})"


def config_label(row: dict) -> str:
    """'LR 0.01, batch 8, wd 0.1, dropout 0, 3 layers': a configuration, whatever its seed."""
    return (f"LR {row['lr']:g}, batch {row['batch']}, wd {row['weight_decay']:g}, dropout {row['dropout']:g}, "
            f"{row['n_layers']} layers")


def token_spread(group: list[dict]) -> str:
    """The copy surge in millions of tokens over seeds: 'mean [min-max]'."""
    return mean_range([r["copy_surge"] * r["batch"] * r["seq_len"] / 1e6 for r in group if r["copy_surge"] is not None],
                      ".1f")


def noise_spread(group: list[dict]) -> str:
    """B_noise before the onset (noise_before) over seeds: 'mean [min-max]', in sequences."""
    return mean_range([r["b_noise"] for r in group if r["b_noise"] is not None], ".1f")


def seed_spread(rows: list[dict]) -> list[str]:
    """The onsets of each configuration over its seeds: mean, range and how many seeds reached it."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in CONFIG_KEYS), []).append(r)
    if all(len(g) == 1 for g in groups.values()):
        return []
    lines = ["", "## Over seeds", "", "Onsets in steps: mean [min-max] (seeds that reached it).", "",
             "| LR | batch | wd | dropout | layers | seeds | loss plateau | copy onset | copy surge "
             "| copy surge (M tokens) | B_noise before the onset | final copy acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, group in groups.items():
        lines.append(f"| {key[0]:g} | {key[1]} | {key[2]:g} | {key[3]:g} | {key[4]} | "
                     f"{', '.join(str(r['seed']) for r in group)} | {spread([r['plateau'] for r in group])} | "
                     f"{spread([r['copy_onset'] for r in group])} | {spread([r['copy_surge'] for r in group])} | "
                     f"{token_spread(group)} | {noise_spread(group)} | "
                     f"{mean_range([r[mk.COPY_ACC] for r in group], '.2f')} |")
    return lines


def noise_before(evals: list[dict], onset: int | None) -> float | None:
    """B_noise pooled over the APPROACH_STEPS up to `onset` (up to the last eval without one): from step
    0 the warmup's large |G|^2 would dominate it (evals/claim_tables.py)."""
    end = onset if onset is not None else evals[-1][mk.STEP]
    return pooled_noise_scale(evals, end, after_step=end - APPROACH_STEPS)


def check_report_args(run_dirs: list[Path], out: Path) -> None:
    """Raise UsageError, before anything is written, for an --out that is a grokcopy output (a run, a
    corpus, an export) or lies inside a run, for a report.md there that this command did not write
    (its first line is REPORT_TITLE), and for a run given twice or two runs of one name: the table,
    the figures and the seed statistics are keyed by the run's name, so one would count twice or
    replace the other."""
    kind = output_kind(out)
    inside = [r for r in run_dirs if is_inside(out, r)]
    if kind or inside:
        what = KIND_NAMES[kind] if kind else f"inside the run {inside[0]}"
        raise UsageError(f"--out {out} is {what}: a report is written into its own directory; choose another")
    mine = out / "report.md"
    if mine.is_file() and not mine.read_bytes().startswith(REPORT_TITLE.encode() + b"\n"):
        raise UsageError(f"--out {out} holds a report.md this command did not write; nothing was touched: "
                         "choose another --out")
    seen: dict[str | Path, Path] = {}
    for run_dir in run_dirs:
        for key, same in ((run_dir.resolve(), "the same run"), (run_dir.name, "two runs of the same name")):
            other = seen.setdefault(key, run_dir)
            if other is not run_dir:
                raise UsageError(f"{other} and {run_dir} are {same}: the report would count it twice or draw one "
                                 "over the other; give each run once, under names of its own")


def write_report(run_dirs: list[Path], out: Path, threshold: float = INDUCTION_THRESHOLD,
                 onset: str = "copy_onset", forecast_from: list[Path] | None = None) -> Path:
    """All figures and OUT/report.md for `run_dirs`; returns the markdown's path. `onset` (copy_onset
    or copy_surge) is the step the onset-vs-LR figures draw. `forecast_from`: run directories (another
    grid) to fit the surge forecasters on, instead of leaving one seed of these out."""
    check_report_args(run_dirs, out)
    out.mkdir(parents=True, exist_ok=True)
    runs, rows, series = {}, [], []
    for run_dir in run_dirs:
        config, records = load_run(run_dir)
        name = run_dir.name
        evals = eval_records(records)
        if not evals:
            print(f"{run_dir}: no eval records yet, left out", file=sys.stderr)
            continue
        onsets = run_onsets(records, threshold)
        runs[name] = records
        series.append(run_series(name, config, records))
        plot_run(records, onsets, out / f"{name}-curves.png", name)
        plot_layer_heatmaps(records, onsets["induction_onsets"], out / f"{name}-layers.png", name)
        last = evals[-1]
        rows.append({"name": name, "lr": config["lr"], "batch": config["batch_size"] * config.get("grad_accum", 1)
                     * config.get("world_size", 1), "weight_decay": config["weight_decay"],
                     "dropout": config["model"]["dropout"], mk.STEP: last[mk.STEP], mk.VAL_LOSS: last[mk.VAL_LOSS],
                     mk.COPY_ACC: last[mk.COPY_ACC], mk.COPY_GAIN: last[mk.COPY_GAIN],
                     "copy_token_gain": copy_token_gain(last), "seed": config.get("seed", 0),
                     "n_layers": config["model"].get("n_layers"),
                     "seq_len": config["seq_len"], "b_noise": noise_before(evals, onsets[onset]),
                     **onsets})
    if not rows:
        raise ValueError("none of the run directories has eval records")
    groups = {r["name"]: config_label(r) for r in rows}  # a configuration's seeds share a colour
    if len(set(groups.values())) == len(groups):
        groups = None
    plot_overlay(runs, out / "overlay-steps.png", x=mk.STEP, groups=groups)
    plot_overlay(runs, out / "overlay-tokens.png", x="tokens", groups=groups)
    figures = ["overlay-steps.png", "overlay-tokens.png"]
    if len({r["lr"] for r in rows}) > 1:
        plot_onset_vs_lr(rows, out / "onset-vs-lr.png", onset)
        figures.append("onset-vs-lr.png")
        if len({r["batch"] for r in rows}) > 1:
            plot_onset_heatmap(rows, out / "onset-lr-batch.png", onset)
            figures.append("onset-lr-batch.png")
    if any(r["copy_surge"] is not None for r in rows):
        plot_surge_aligned(runs, rows, out / "surge-aligned.png")
        figures.append("surge-aligned.png")
    if any(r["b_noise"] is not None for r in rows):
        plot_noise_scale(runs, rows, out / "noise-scale.png", onset)
        figures.append("noise-scale.png")

    lines = [
        REPORT_TITLE, "",
        "Onsets in optimizer steps (definitions: evals/onsets.py). Loss plateau: first eval after which the "
        "smoothed val loss falls by less than 1% over the next 5 evals. Copy onset: first eval whose smoothed "
        "copy gain (exact suffixes) is >= half its maximum in the run. Copy surge: first eval whose smoothed "
        f"token-level copy gain is >= {COPY_SURGE_LEVEL}. Induction onset: first eval whose best head in that "
        f"layer scores >= {threshold}. '-': not reached.", "",
        "| run | LR | batch (global) | wd | dropout | last step | val loss | copy acc | copy gain | token gain "
        "| loss plateau | copy onset | copy surge | induction onset per layer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        layers = ", ".join(_fmt(s) for s in r["induction_onsets"])
        lines.append(f"| {r['name']} | {r['lr']:g} | {r['batch']} | {r['weight_decay']:g} | {r['dropout']:g} "
                     f"| {r[mk.STEP]} | {r[mk.VAL_LOSS]:.3f} | {r[mk.COPY_ACC]:.2f} | {r[mk.COPY_GAIN]:+.2f} "
                     f"| {r['copy_token_gain']:+.2f} | {_fmt(r['plateau'])} | {_fmt(r['copy_onset'])} "
                     f"| {_fmt(r['copy_surge'])} | {layers} |")
    lines += seed_spread(rows)
    lines += onset_law_lines(rows, onset)
    fitted_on = None if forecast_from is None else [run_series(d.name, *load_run(d)) for d in forecast_from]
    lines += plateau_lines(series) + regime_lines(series) + forecast_lines(series, fitted_on=fitted_on)
    lines += ["", "## Figures", ""]
    lines += [f"![{f}]({f})" for f in figures]
    for r in rows:
        lines += ["", f"### {r['name']}", "", f"![curves]({r['name']}-curves.png)",
                  f"![layers]({r['name']}-layers.png)"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grokcopy.evals.report", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (config.json + metrics.jsonl)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=INDUCTION_THRESHOLD, help="induction onset threshold")
    parser.add_argument("--onset", default="copy_onset", choices=sorted(ONSET_NAMES),
                        help="the onset the onset-vs-LR figures draw (default copy_onset)")
    parser.add_argument("--forecast-from", nargs="+", type=Path, default=None, metavar="RUN",
                        help="run directories (another grid) to fit the surge forecasters on; default: "
                             "leave one seed of RUNS out")
    args = parser.parse_args(argv)
    print(write_report(args.runs, args.out, args.threshold, args.onset, args.forecast_from))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
