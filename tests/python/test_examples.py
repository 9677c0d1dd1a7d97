"""The Python examples run from a fresh clone: each script exits 0 and prints its result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "python"


def run(script: str, *args: str, timeout: float = 120) -> str:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert r.returncode == 0, f"{script} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_deepface_embed():
    out = run("deepface_embed.py")
    assert "Total params: 137,774,071" in out
    assert "embedding layer: F7 (None, 4096)" in out
    assert "OK: the perturbed copy of face 0 is its nearest face" in out


def test_genomic_prediction():
    out = run("genomic_prediction.py")
    assert "LocallyConnected1D" in out
    assert "saved to .h5 and reloaded: max |reloaded - trained| = 0" in out
    line = next(l for l in out.splitlines() if l.startswith("OK: held-out correlation"))
    assert float(line.split()[-1]) > 0.5, line


def test_ray_predict_script():
    """The command-line path (starts and stops its own local Ray instance, so this is the
    module's one Ray start-up); ray_predict() itself is tested in test_distributed.py."""
    out = run("ray_predict.py", "--samples", "64", timeout=300)
    assert "OK: Ray predictions equal single-process predict" in out
