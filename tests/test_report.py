"""evals.report on fake run directories (synthetic metrics, no training): figures and the markdown."""

import json

from grokcopy.evals import report
from tests.test_onsets import synthetic_records


def fake_run(path, lr, batch, shift, seed=0, noise=None):
    """A run directory whose copy gain and layer-1 induction rise `shift` steps after the template's;
    with `noise`, every eval also logs a noise scale of `noise` sequences (|G|^2 1, tr(Sigma) `noise`)."""
    path.mkdir(parents=True)
    config = {"preset": "tiny", "seed": seed, "lr": lr, "batch_size": batch, "grad_accum": 1, "world_size": 1,
              "weight_decay": 0.1, "seq_len": 256, "model": {"dropout": 0.0, "n_layers": 2}}
    (path / "config.json").write_text(json.dumps(config))
    records = synthetic_records()
    lines = []
    for r in records:
        late = next(x for x in records if x["step"] == min(r["step"] - shift, 6000)) if r["step"] > shift else None
        gains = late or {"copy_gain": 0.0, "copy_acc": 0.05, "induction_max": [0.01, 0.0], "induction": r["induction"]}
        noise_keys = {} if noise is None else {"noise_scale": noise, "grad_sq": 1.0, "grad_trace_cov": noise,
                                               "noise_scale_steps": 500}
        lines.append(json.dumps({**r, "copy_gain": gains["copy_gain"], "copy_acc": gains["copy_acc"],
                                 "induction_max": gains["induction_max"], **noise_keys}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_report_writes_figures_and_onsets(tmp_path):
    runs = [fake_run(tmp_path / f"lr{lr:g}-bs{b}", lr, b, shift)
            for lr, b, shift in ((1e-3, 4, 1000), (3e-3, 4, 0), (1e-3, 8, 500), (3e-3, 8, 200))]
    out = tmp_path / "report"
    assert report.main([*map(str, runs), "--out", str(out)]) == 0
    for name in ("overlay-steps", "overlay-tokens", "onset-vs-lr", "onset-lr-batch",
                 "lr0.001-bs4-curves", "lr0.003-bs4-layers"):
        assert (out / f"{name}.png").stat().st_size > 5_000, name
    text = (out / "report.md").read_text()
    # copy onset 3000 + shift; layer 1 reaches the 0.3 threshold there too (0.9 * 0.5), layer 0 never;
    # the token gain is not shifted (the fake runs shift exact copy gain and induction only): surge 2900
    assert ("| lr0.003-bs4 | 0.003 | 4 | 0.1 | 0 | 6000 | 2.200 | 0.85 | +0.80 | +0.50 | 1200 | 3000 | 2900 "
            "| -, 3000 |") in text
    assert "| 4000 | 2900 | -, 4000 |" in text and "| 3500 | 2900 | -, 3500 |" in text
    assert "![onset-lr-batch.png](onset-lr-batch.png)" in text
    surge = tmp_path / "surge"  # the onset figures can draw the copy surge instead
    assert report.main([*map(str, runs), "--out", str(surge), "--onset", "copy_surge"]) == 0
    assert (surge / "onset-lr-batch.png").read_bytes() != (out / "onset-lr-batch.png").read_bytes()


def test_layer_heatmaps_draw_the_scores_a_run_logged(tmp_path):
    """Runs from before previous-token / prefix-matching logging get the induction panel only; runs
    with --train-stats-every get two more panels, from their own (non-eval) records."""
    from matplotlib.image import imread

    records = report.eval_records(synthetic_records())
    report.plot_layer_heatmaps(records, [None, 3000], tmp_path / "three.png", "three panels")
    old = [{k: v for k, v in r.items() if k not in ("previous_token_max", "prefix_matching_max")} for r in records]
    report.plot_layer_heatmaps(old, [None, 3000], tmp_path / "one.png", "one panel")
    assert imread(tmp_path / "three.png").shape[0] > 2 * imread(tmp_path / "one.png").shape[0]
    train = [{"step": s, "train_previous_token_max": [0.1, 0.9], "train_prefix_matching_max": [0.0, 0.5]}
             for s in range(10, 6000, 40)]
    report.plot_layer_heatmaps(records + train, [None, 3000], tmp_path / "five.png", "five panels")
    assert imread(tmp_path / "five.png").shape[0] > imread(tmp_path / "three.png").shape[0] * 1.4


def test_report_gives_the_spread_over_seeds(tmp_path):
    runs = [fake_run(tmp_path / f"seed{seed}", 3e-3, 4, shift, seed) for seed, shift in ((0, 0), (1, 1000), (2, 500))]
    out = tmp_path / "report"
    assert report.main([*map(str, runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    # copy onsets 3000, 4000 and 3500 (the template's 3000 + shift): mean 3,500 over the range, all 3 seeds
    assert "| 0.003 | 4 | 0.1 | 0 | 2 | 0, 1, 2 | 1,200 [1,200-1,200] (3 of 3) | 3,500 [3,000-4,000] (3 of 3) |" in text


def test_report_fits_onset_laws_and_draws_the_noise_scale(tmp_path):
    """Onsets that follow steps = S_min (1 + B_noise / B) exactly: the critical-batch law has spread 1.00x,
    the steps and tokens laws do not; two seeds per configuration give the seeds' spread."""
    runs, b_noise = [], 4
    for batch in (4, 8, 16):
        onset = 2400 * (1 + b_noise / batch)  # 4800, 3600, 3000: the copy onset is the template's 3000 + shift
        for seed, extra in ((0, 0), (1, 100)):
            runs.append(fake_run(tmp_path / f"bs{batch}-seed{seed}", 3e-3, batch, int(onset - 3000 + extra), seed,
                                 noise=b_noise))
    out = tmp_path / "report"
    assert report.main([*map(str, runs), "--out", str(out)]) == 0
    assert (out / "noise-scale.png").stat().st_size > 5_000
    text = (out / "report.md").read_text()
    assert "## Which law sets the onset" in text
    # mean onsets 4850, 3650, 3050 against S_min (1 + 4 / B) = 4800, 3600, 3000: nearly constant invariant
    critical = next(line for line in text.splitlines() if line.startswith("| critical batch"))
    assert float(critical.split("|")[2].strip().rstrip("x")) < 1.02
    steps = next(line for line in text.splitlines() if line.startswith("| steps |"))
    assert float(steps.split("|")[2].strip().rstrip("x")) == 1.59  # 4850 / 3050
    assert "Seeds' own spread (worst configuration): 1.03x" in text  # 3100 / 3000
    assert "| 4.0 [4.0-4.0] |" in text, "B_noise pooled before the onset, over seeds"
