"""The numba.cuda kernels, run in numba's CUDA simulator, agree with the CPU backend.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, so the comparison runs
in a child process (tests/field/cudasim_compare.py) and reports JSON back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_simulated_gpu_matches_cpu() -> None:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "tests.field.cudasim_compare"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 1
    for shape, r in results.items():
        assert r["backend"] == "gpu", shape
        assert r["potential_rel"] < 1e-5, (shape, r)
        assert r["current_rel"] < 1e-5, (shape, r)
        assert r["field_rel"] < 1e-4, (shape, r)
        assert abs(r["gpu_iterations"] - r["cpu_iterations"]) <= 1, (shape, r)
        assert r["gpu_mismatch"] < 1e-3 and r["gpu_residual"] <= 1e-6, (shape, r)
