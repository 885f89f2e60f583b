"""Every example notebook runs top to bottom on the bundled default, on a CPU, and is committed
executed, with each plotly figure stored as a PNG too (``scripts/run_notebooks.py``) so that it
shows in viewers that run no JavaScript."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
BUDGET_S = 600  # per cell; each notebook takes about a minute
PLOTLY = "application/vnd.plotly.v1+json"


def test_the_notebooks_are_committed_executed_with_static_figures():
    assert [p.name for p in NOTEBOOKS] == [
        "01_model_form.ipynb",
        "02_train_and_splice.ipynb",
        "03_steering.ipynb",
        "04_probing.ipynb",
        "05_save_load_hooked_sae.ipynb",
        "06_attribution_graph.ipynb",
    ]
    for path in NOTEBOOKS:
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in cells), f"{path.name}: not executed"
        figures = [o for c in cells for o in c.outputs if PLOTLY in o.get("data", {})]
        assert figures, f"{path.name}: no figure"
        for output in figures:
            assert "image/png" in output["data"], f"{path.name}: a figure without its PNG"
        errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{path.name}: stored an error"


def test_one_training_helper_serves_every_notebook():
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        assert "def train(" not in source, path.name
        if "train" in path.name or "steering" in path.name or "probing" in path.name:
            assert "train_matched(" in source, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path):
    notebook = nbformat.read(path, as_version=4)
    environment = notebook.metadata.get("mxd_saelens", {}).get("environment")
    if environment == "circuits" and importlib.util.find_spec("circuit_tracer") is None:
        pytest.skip("runs in the circuits environment (make test-circuits runs it there)")
    os.environ.pop("PLOTLY_RENDERER", None)  # the default renderer: no image export needed
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
