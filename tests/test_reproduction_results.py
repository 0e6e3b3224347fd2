"""docs/REPRODUCTION.md's figures redraw from the committed metrics alone (scripts/reproduction_figures.sh),
and every figure the page shows is one the script draws."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_reproduction_figure_redraws_from_committed_metrics(tmp_path):
    page = (ROOT / "docs" / "REPRODUCTION.md").read_text()
    shown = set(re.findall(r"\(figures/reproduction/([^)]+\.png)\)", page))
    assert shown, "the page shows figures of the committed runs"
    env = {**os.environ, "PYTHON": sys.executable, "FIGURES": str(tmp_path / "figures"),
           "REPORTS": str(tmp_path / "reports"), "MPLBACKEND": "Agg"}
    subprocess.run(["bash", str(ROOT / "scripts" / "reproduction_figures.sh")], cwd=ROOT, env=env, check=True,
                   capture_output=True, text=True)
    drawn = {p.name for p in (tmp_path / "figures").iterdir()}
    assert shown <= drawn, f"shown but not drawn from docs/results: {sorted(shown - drawn)}"
    assert shown <= {p.name for p in (ROOT / "docs" / "figures" / "reproduction").iterdir()}, "committed too"
