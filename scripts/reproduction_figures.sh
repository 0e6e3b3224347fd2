#!/usr/bin/env bash
# docs/REPRODUCTION.md's figures, redrawn from the runs' committed metrics (no training):
#
#   bash scripts/reproduction_figures.sh                        # docs/results/reproduction -> docs/figures/reproduction
#   bash scripts/reproduction_figures.sh --collect runs/experiments   # first copy an experiment's metrics in
#
# --collect SRC copies each run's config.json, metrics.jsonl and final.json (not its checkpoints) from
# an `evals.experiment --out SRC` tree into docs/results/reproduction, with the experiments' links
# (SRC/<experiment>/<label> -> runs/<run name>), so that the reports read the same tree layout.
# Full reports (every run's curves and layer heatmaps) go to reports/reproduction/<experiment>, and
# reports/reproduction/grid for every run together (its report.md has the claims' stated tests);
# the figures the page shows are copied to docs/figures/reproduction/<experiment>-<figure>.png.
# RESULTS, FIGURES and REPORTS override those three folders (tests/test_reproduction_results.py).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
results="${RESULTS:-docs/results/reproduction}"
figures="${FIGURES:-docs/figures/reproduction}"
reports="${REPORTS:-reports/reproduction}"

if [[ "${1:-}" == "--collect" ]]; then
    src="${2:?usage: --collect SRC (an evals.experiment --out directory)}"
    for run in "$src"/runs/*/; do
        [[ -f "$run/final.json" ]] || { echo "skip $run (not finished: no final.json)"; continue; }
        dest="$results/runs/$(basename "$run")"
        mkdir -p "$dest"
        cp "$run/config.json" "$run/metrics.jsonl" "$run/final.json" "$dest/"
    done
    for link in "$src"/*/*; do
        [[ -L "$link" ]] || continue
        target="$results/runs/$(basename "$(readlink "$link")")"
        [[ -d "$target" ]] || continue  # an unfinished run is not collected
        mkdir -p "$results/$(basename "$(dirname "$link")")"
        ln -sfn "../runs/$(basename "$target")" "$results/$(basename "$(dirname "$link")")/$(basename "$link")"
    done
fi

mkdir -p "$figures"
for experiment in "$results"/*/; do
    name="$(basename "$experiment")"
    [[ "$name" == runs ]] && continue
    # the copy surge (token-level gain >= 0.1) and an induction threshold of 0.1: docs/REPRODUCTION.md says why
    "$py" -m grokcopy.evals.report "$experiment"* --out "$reports/$name" --threshold 0.1 --onset copy_surge
    for figure in overlay-steps overlay-tokens onset-vs-lr onset-lr-batch noise-scale surge-aligned; do
        if [[ -f "$reports/$name/$figure.png" ]]; then cp "$reports/$name/$figure.png" "$figures/$name-$figure.png"; fi
    done
done
# the whole grid at once: report.md's claim tables over every run (the plateau test, the critical-batch
# regimes, the surge forecasters left one seed out) and the figures drawn from all runs together
"$py" -m grokcopy.evals.report "$results"/runs/* --out "$reports/grid" --threshold 0.1 --onset copy_surge
for figure in surge-aligned noise-scale overlay-tokens; do
    if [[ -f "$reports/grid/$figure.png" ]]; then cp "$reports/grid/$figure.png" "$figures/grid-$figure.png"; fi
done
# each run's own curves and layer heatmap for the baseline's seeds (a report names a run by its link),
# and the layer heatmaps of the 6-layer runs: depth/ (an eval every 300 steps) and depth-eval100/, the
# same seed-0 run observed every 100 steps up to step 3,290 (a directory of its own, not a link: it
# was stopped after its surge, so it is no grid run and --collect does not copy it)
for run in "$reports"/baseline/baseline*-curves.png "$reports"/baseline/baseline*-layers.png; do
    [[ -f "$run" ]] || continue  # no finished baseline run yet
    cp "$run" "$figures/$(basename "$run")"
done
for run in "$reports"/depth/layers6*-layers.png "$reports"/depth-eval100/*-layers.png; do
    [[ -f "$run" ]] || continue
    cp "$run" "$figures/$(basename "$(dirname "$run")")-$(basename "$run")"
done
echo "figures in $figures, full reports in $reports"
