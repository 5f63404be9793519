"""scripts/ui-screenshots.py against a real `mlflow server` and headless Chromium: the runs table lists the job
runs, a run's page shows its data set and its system metrics (the script checks the pages' text and exits 1 when
something is missing). Slow (a tiny grid, a server, four pages); skipped without Chromium."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no Chromium (apt-get install -y chromium)")
def test_screenshots_show_runs_datasets_and_system_metrics(tmp_path):
    out = tmp_path / "ui"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ui-screenshots.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("runs-table.png", "grid-runs.png", "run-overview.png", "run-system-metrics.png"):
        png = (out / name).read_bytes()
        assert png[:4] == b"\x89PNG" and len(png) > 20_000, name  # a drawn page, not a blank one
    assert "never showed" not in proc.stdout
