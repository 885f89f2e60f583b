"""Every benchmark script imports and answers ``--help``: a script that a rename in the
package broke fails here, not on the day someone reruns it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "__init__.py")
# scripts a command line runs; common.py is their shared helper
RUNNABLE = [p for p in SCRIPTS if p.name != "common.py"]


def test_every_script_is_listed():
    names = {p.stem for p in SCRIPTS}
    assert {"common", "memory", "probing", "train_step", "evaluate_layers"} <= names
    assert len(RUNNABLE) == len(SCRIPTS) - 1


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_imports(script: Path):
    module = importlib.import_module(f"benchmarks.{script.stem}")
    if script in RUNNABLE:
        assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


@pytest.mark.parametrize("script", RUNNABLE, ids=lambda p: p.stem)
def test_script_help_exits_0_with_usage(script: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.lstrip().lower().startswith("usage:"), done.stdout[:500]
    assert script.name in done.stdout.splitlines()[0]
