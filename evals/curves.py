"""Curves of a run: the summary printed at the end of training and the loss / copy-gain plot."""

from __future__ import annotations

from pathlib import Path

from grokcopy.evals import metric_keys as mk
from grokcopy.evals.onsets import COPY_SURGE_LEVEL, copy_token_gain, eval_records, run_onsets


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures are files, and no display is needed (CI, servers).

    Imported on first use so that importing grokcopy does not import matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_summary(records: list[dict], wall_s: float) -> str:
    """Steps, tokens, time, final loss, copy gain over time, and the run's onsets (evals/onsets.py:
    the same definitions as evals.report and evals.inspect)."""
    last = records[-1]
    evals = eval_records(records)
    lines = [
        f"steps {last[mk.STEP]:,}  tokens {last['tokens']:,}  wall {wall_s / 60:.1f} min  "
        f"final loss {last['loss']:.3f}" + (f"  val loss {evals[-1][mk.VAL_LOSS]:.3f}" if evals else ""),
    ]
    if evals:
        every = max(1, len(evals) // 10)
        lines.append("copy gain by step: " + "  ".join(
            f"{r[mk.STEP]}:{r[mk.COPY_GAIN]:+.2f}" for r in evals[::every] + ([evals[-1]] if len(evals) % every else [])
        ))
        best = max(evals, key=lambda r: r[mk.COPY_GAIN])
        onsets = run_onsets(records)
        at = lambda step: "none" if step is None else f"step {step:,}"
        lines.append(
            f"loss plateau: {at(onsets['plateau'])}; copy surge (token-level gain >= {COPY_SURGE_LEVEL}): "
            f"{at(onsets['copy_surge'])}; copy onset (half of the maximum gain): {at(onsets['copy_onset'])}")
        lines.append(
            f"copy acc {evals[-1][mk.COPY_ACC]:.2f} (control {evals[-1][mk.COPY_CONTROL_ACC]:.2f}), best gain "
            f"{best[mk.COPY_GAIN]:+.2f} at step {best[mk.STEP]}"
        )
        lines.append(
            f"repeat acc {evals[-1][mk.REPEAT_ACC]:.2f}; induction score (max head) per layer: "
            + ", ".join(f"{v:.2f}" for v in evals[-1][mk.best_head(mk.INDUCTION)])
        )
        lines += circuit_note(evals[-1], onsets["copy_surge"])
    return "\n".join(lines)


# A previous-token head this strong in the last layer, before any copy surge, is the early sign of
# a run that lost the race for it. Over the 27 full-length runs of the issue-15 search still on disk
# (docs/TINY.md round 6) it came at step 600-1,200 in 10 of the 15 that surged late or never, and in
# 1 of the 16 that surged by mid-run (2 layers with the attention bias, surge at 47%).
LATE_PREVIOUS_TOKEN_LEVEL = 0.3


def last_layer_previous_token(eval_record: dict) -> float | None:
    """The last layer's previous-token score (max head) when that layer holds the model's strongest
    previous-token head, else None (also for one-layer models and records without the scores)."""
    prev = eval_record.get(mk.best_head(mk.PREVIOUS_TOKEN))
    if not prev or len(prev) < 2 or max(prev) != prev[-1]:
        return None
    return prev[-1]


def circuit_note(last_eval: dict, copy_surge: int | None) -> list[str]:
    """Where the previous-token head sits, and why a run without a surge did not copy when that head
    is in the last layer: an induction head reads a previous-token head of an earlier layer, so one
    in the last layer leaves nowhere to build it. Small all-RoPE models lose this race on some seeds
    (docs/TINY.md: the race is decided in the first ~1,000 steps); a last layer without RoPE
    (nope_every = n_layers, `tiny`'s since round 7) cannot take the head."""
    prev = last_eval.get(mk.best_head(mk.PREVIOUS_TOKEN))
    if not prev:
        return []
    lines = ["previous-token score (max head) per layer: " + ", ".join(f"{v:.2f}" for v in prev)]
    if copy_surge is None and last_layer_previous_token(last_eval) is not None:
        lines.append(f"no copy surge: the strongest previous-token head formed in layer {len(prev) - 1}, the last, "
                     "which leaves no later layer for an induction head to read it; another --seed may surge, and "
                     f"--nope-every {len(prev)} (the last layer without RoPE) keeps the head out of it (docs/TINY.md)")
    return lines


def race_warning(eval_record: dict, surged: bool) -> str | None:
    """The line to print during training when an eval shows the previous-token head forming in the
    last layer (score >= LATE_PREVIOUS_TOKEN_LEVEL) and no eval so far has reached the copy surge
    (`surged`): the user learns at step ~900 what the closing summary would tell them at the end."""
    score = last_layer_previous_token(eval_record)
    if surged or score is None or score < LATE_PREVIOUS_TOKEN_LEVEL:
        return None
    last = len(eval_record[mk.best_head(mk.PREVIOUS_TOKEN)]) - 1
    return (f"step {eval_record[mk.STEP]:,}: the strongest previous-token head ({score:.2f}) is forming in layer "
            f"{last}, the last, where no later layer can build an induction head on it; small models that do this "
            f"rarely show copying by mid-run (docs/TINY.md, rounds 5-6). Another --seed is a fresh draw; "
            f"--nope-every {last + 1} (the last layer without RoPE) prevents it (round 7).")


def plot_curves(records: list[dict], path: str | Path, title: str = "") -> None:
    """Loss (train, val) and copy gain / repeat accuracy against steps on twin axes, onset marked."""
    plt = pyplot()

    evals = [r for r in records if mk.COPY_GAIN in r]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot([r[mk.STEP] for r in records], [r[mk.LOSS] for r in records], color="tab:blue", lw=1, alpha=0.6,
            label="train loss")
    ax.plot([r[mk.STEP] for r in evals], [r[mk.VAL_LOSS] for r in evals], color="tab:blue", lw=2, label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss", color="tab:blue")
    right = ax.twinx()
    steps = [r[mk.STEP] for r in evals]
    right.plot(steps, [r[mk.COPY_GAIN] for r in evals], color="tab:red", lw=2, marker="o", ms=3, label="copy gain")
    right.plot(steps, [r[mk.COPY_TOKEN_ACC] for r in evals], color="tab:purple", lw=1.5, label="copy token acc")
    right.plot(steps, [r[mk.REPEAT_ACC] for r in evals], color="tab:orange", lw=1.5, ls="--", label="repeat acc")
    right.plot(steps, [max(r[mk.best_head(mk.INDUCTION)]) for r in evals], color="tab:green", lw=1.5, ls=":",
               label="induction score (best head)")
    right.set_ylabel("copying", color="tab:red")
    right.set_ylim(-0.05, 1.05)
    onsets = run_onsets(records)
    for key, label, color in (("plateau", "loss plateau", "tab:blue"), ("copy_surge", "copy surge", "tab:red")):
        if onsets[key] is not None:
            right.axvline(onsets[key], color=color, ls="--", lw=1)
            right.annotate(f"{label}\nstep {onsets[key]}", (onsets[key], 0.9), fontsize=8, ha="right", color=color)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="center right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)




def overlay_value(record: dict, key: str) -> float:
    """A metrics record's value for an overlay panel, the two derived panels included."""
    if key == "induction_best":
        return max(record[mk.best_head(mk.INDUCTION)])
    if key == "copy_token_gain":
        return copy_token_gain(record)
    return record[key]


def plot_overlay(runs: dict[str, list[dict]], path: str | Path, x: str = mk.STEP, title: str = "",
                 groups: dict[str, str] | None = None) -> None:
    """Several runs on one figure against `x` ("step" or "tokens"): val loss, copy gain (exact and
    token level), repeat accuracy and the best head's induction score, one panel each. `groups`
    (run name -> label) draws the runs of one label (a configuration's seeds) in one colour, named once."""
    plt = pyplot()

    panels = [(mk.VAL_LOSS, "val loss"), (mk.COPY_GAIN, "copy gain"), ("copy_token_gain", "copy token gain"),
              (mk.REPEAT_ACC, "repeat acc"), ("induction_best", "induction score (best head)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=110)
    labels = groups or {name: name for name in runs}
    colours = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(labels[name] for name in runs))}
    named: set[str] = set()
    for name, records in runs.items():
        evals = [r for r in records if mk.COPY_GAIN in r]
        xs = [r[x] for r in evals]
        label = labels[name]
        for ax, (key, _) in zip(axes, panels, strict=True):
            ys = [overlay_value(r, key) for r in evals]
            ax.plot(xs, ys, lw=1.5 if groups is None else 1.0, color=colours[label],
                    label=None if label in named else label)
        named.add(label)
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set_xlabel("optimizer step" if x == "step" else x)
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
