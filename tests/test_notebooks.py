"""Every example notebook runs top to bottom on the bundled default, on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
BUDGET_S = 600  # per cell; each notebook takes about a minute


def test_there_are_four_notebooks_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_model_form.ipynb",
        "02_train_and_splice.ipynb",
        "03_steering.ipynb",
        "04_probing.ipynb",
    ]
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        assert not any(c.get("outputs") for c in cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path):
    notebook = nbformat.read(path, as_version=4)
    # the venv's own kernel ("python3" resolves to the running interpreter); cwd: a scratch folder
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=BUDGET_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
