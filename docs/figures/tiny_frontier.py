"""Draw docs/figures/tiny-frontier.png: final exact copy accuracy against wall time for every run of
the eight rounds of the preset search of issue 15 (docs/tiny-search-2.csv to -9.csv; docs/TINY.md).

    python docs/figures/tiny_frontier.py

x: wall time of each run in minutes (validation rows: the whole README command, corpus preparation
included; screens: the training process, on a machine shared with other work, see `contended`),
y: exact copy accuracy (6-token suffix) at the run's last eval.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
# each round of the search: its runs, the marker of its screens, the colour of its validation runs
ROUNDS = {"round 1": ("tiny-search-2.csv", "o", "tab:orange"),
          "round 2 (sink)": ("tiny-search-3.csv", "^", "tab:red"),
          "round 3 (depth, width, batch)": ("tiny-search-4.csv", "s", "tab:purple"),
          "round 4 (attention bias)": ("tiny-search-5.csv", "D", "tab:brown"),
          "round 5 (the race at step 900)": ("tiny-search-6.csv", "h", "tab:green"),
          "round 6 (more race levers)": ("tiny-search-7.csv", "P", "tab:cyan"),
          "round 7 (NoPE last layer)": ("tiny-search-8.csv", "v", "tab:pink"),
          "round 8 (compile, floor lr/100, 7,000 steps)": ("tiny-search-9.csv", "<", "tab:olive")}
COLORS = {"screen": "tab:gray", "long": "tab:blue", "validate": "tab:red", "reference": "black"}


def main() -> None:
    fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
    points = []
    for search, (name, screen_marker, validate_color) in ROUNDS.items():
        path = HERE.parent / name
        if not path.is_file():
            continue
        rows = [r for r in csv.DictReader(open(path)) if r["final_copy_acc"] not in ("", "None")]
        for phase, color in COLORS.items():
            sel = [r for r in rows if r["phase"] == phase]
            if not sel:
                continue
            xs = [float(r["wall_s"]) / 60 for r in sel]
            ys = [float(r["final_copy_acc"]) for r in sel]
            points += list(zip(xs, ys, strict=True))
            marker = "X" if phase == "reference" else ("*" if phase == "validate" else screen_marker)
            color = validate_color if phase == "validate" else color
            ax.scatter(xs, ys, c=color, marker=marker, s=90 if marker == "*" else 30, zorder=3,
                       label=f"{search}: {phase}" if phase != "reference" else "old default (issue 15)")
    # the frontier: the best final copy accuracy reached at or below each wall time
    frontier, best = [], -1.0
    for x, y in sorted(points):
        if y > best:
            frontier.append((x, y))
            best = y
    if frontier:
        fx, fy = zip(*frontier, strict=True)
        ax.step(fx, fy, where="post", color="tab:green", lw=1.5, label="frontier", zorder=2)
    ax.axvline(10, color="gray", ls="--", lw=1)
    ax.annotate("10-minute budget", (10, 0.3), fontsize=8, ha="right", rotation=90)
    for level, text in ((0.5, "goal 0.5"), (0.2, "fallback bar 0.2")):
        ax.axhline(level, color="gray", ls=":", lw=1)
        ax.annotate(text, (0.2, level + 0.01), fontsize=8)
    ax.set_xlabel("wall time (min), 2-core machine: screens ran beside other runs (round 2: 2-3x slower than alone)")
    ax.set_ylabel("final exact copy accuracy (6-token suffix)")
    ax.set_ylim(-0.02, 0.55)
    ax.set_xlim(0, max(15, max((p[0] for p in points), default=0) + 1))
    ax.set_title("tiny preset search (issue 15): exact copy at the end of each run vs wall time")
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.92))
    fig.tight_layout()
    fig.savefig(HERE / "tiny-frontier.png")


if __name__ == "__main__":
    main()
